// The rules for an interval "safely below" an idle timeout, shared by `discover`, the
// middlebox presets and the adaptive heartbeat. Two cases, two fractions:
//   - a DECLARED timeout (a `middlebox:` preset or duration, the kernel keepalive budget):
//     SAFE_FRACTION, half of it. Half leaves room for the jitter spread of heartbeats, one
//     lost probe (the next one still lands before the timeout), and a middlebox that counts
//     its timer from a packet earlier than ours.
//   - a PROVEN idle (the longest idle that canary connections survived: discover's lower
//     bound, the `every: auto` learner's): LEARNED_FRACTION of it, by heartbeatBelowProven().

export const SAFE_FRACTION = 0.5;

/**
 * The share of a proven-safe idle used as the heartbeat interval. Higher than SAFE_FRACTION:
 * the path was seen to keep a connection that long, and 0.75 plus the heartbeat's default 10%
 * jitter still probes before that idle ends. The `every: auto` learner also re-probes, and
 * drops to its min at once when a client is lost to the path.
 */
export const LEARNED_FRACTION = 0.75;

/** Below this a heartbeat interval is rounded down to HEARTBEAT_FINE_STEP_MS, above it to whole seconds. */
const HEARTBEAT_FINE_BELOW_MS = 10_000;
const HEARTBEAT_FINE_STEP_MS = 100;

/**
 * The heartbeat interval below an idle of `provenMs` that is known to survive:
 * LEARNED_FRACTION of it, rounded down to 100 ms below 10 s and to whole seconds above (a
 * figure a person can read and write back into a config), never above `provenMs` and never 0.
 */
export function heartbeatBelowProven(provenMs: number): number {
  const targetMs = provenMs * LEARNED_FRACTION;
  const stepMs = targetMs < HEARTBEAT_FINE_BELOW_MS ? HEARTBEAT_FINE_STEP_MS : 1_000;
  const roundedMs = Math.floor(targetMs / stepMs) * stepMs;
  // Only an idle under 134 ms rounds to 0: keep its fraction, to the millisecond.
  return roundedMs > 0 ? roundedMs : Math.max(1, Math.floor(targetMs));
}

/** The interval to use below a declared idle timeout of `timeoutMs`: whole seconds (as the kernel's keepalive), at least 1 s. */
export function safeIntervalMs(timeoutMs: number): number {
  return Math.max(1_000, Math.floor((timeoutMs * SAFE_FRACTION) / 1_000) * 1_000);
}

/** "150s", "2.8s": the JSON form of a recommendation, in seconds as INTERFACE.md writes it; a duration the config reads back. */
export function formatSeconds(ms: number): string {
  return `${ms / 1_000}s`;
}
