// One rule for "safely below a middlebox's idle timeout", shared by `discover`, the
// presets and the adaptive heartbeat: half of the idle known to survive. Half leaves room
// for the jitter spread of heartbeats, one lost probe (the next one still lands before
// the timeout), and a middlebox that counts its timer from a packet earlier than ours.

export const SAFE_FRACTION = 0.5;

/** The interval to use below an idle timeout of `timeoutMs`: whole seconds, at least 1 s. */
export function safeIntervalMs(timeoutMs: number): number {
  return Math.max(1_000, Math.floor((timeoutMs * SAFE_FRACTION) / 1_000) * 1_000);
}

/** "150s": the JSON form of a recommendation (whole seconds). */
export function formatSeconds(ms: number): string {
  return `${Math.round(ms / 1_000)}s`;
}

