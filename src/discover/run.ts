import { Clock } from '../clock.js';
import { formatDuration } from '../config/duration.js';
import { formatHostPort } from '../config/hostport.js';
import type { HostPort } from '../config/schema.js';
import { Canary, type CanaryOutcome, type DeathKind } from './canary.js';
import type { CanaryProbe } from './probes.js';
import { formatSeconds, heartbeatBelowProven, safeIntervalMs } from './recommend.js';
import { DEFAULT_SEARCH, IdleSearch, type Bracket } from './search.js';

// The `discover` command: a preflight canary proves the upstream answers the probe at
// once, then the search (search.ts) runs canaries (canary.ts) in parallel until the
// bracket is narrow enough, and the result is printed as text or, with --json, as one
// JSON object on the last line of stdout. Progress goes to stderr.

export interface DiscoverOptions {
  readonly upstream: HostPort;
  readonly protocol: string;
  readonly probe: CanaryProbe;
  readonly maxMs: number;
  readonly minMs: number;
  readonly parallel: number;
  readonly probeTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly json: boolean;
}

export interface DiscoverReport {
  readonly upstream: string;
  readonly idleTimeoutSeconds: { readonly min: number; readonly max: number } | null;
  readonly recommended: { readonly heartbeatEvery: string; readonly keepaliveIdle: string };
}

export interface DiscoverIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  /** Clock period; tests may shorten it. */
  readonly tickMs?: number;
}

/** Canaries that could not connect or answer, past which the run gives up. */
const MAX_FAILURES = 8;
const PROGRESS_EVERY_MS = 10_000;

export async function runDiscover(options: DiscoverOptions, io: DiscoverIo): Promise<number> {
  const clock = new Clock(io.tickMs ?? 100);
  const where = formatHostPort(options.upstream);
  const preflight = await watch(clock, [startCanary(options, 0, clock)]);
  if (preflight[0]!.kind !== 'survived') {
    io.err(`keepalive-proxy discover: ${where} does not answer the ${options.protocol} probe: ${describeFailure(preflight[0]!)}\n`);
    return 1;
  }
  const outcome = await search(options, clock, io);
  if (typeof outcome === 'string') {
    io.err(`keepalive-proxy discover: ${where}: ${outcome}\n`);
    return 1;
  }
  const report = toReport(where, outcome.bracket, options.maxMs);
  io.out(describeReport(report, outcome.bracket, outcome.deaths, options.maxMs) + '\n');
  if (options.json) io.out(JSON.stringify(report) + '\n');
  return 0;
}

export function toReport(upstream: string, bracket: Bracket, maxMs: number): DiscoverReport {
  // The longest idle proven to survive: the bracket's lower bound, or --max when nothing dropped.
  const provenMs = bracket.maxMs === null ? maxMs : bracket.minMs;
  return {
    upstream,
    idleTimeoutSeconds: bracket.maxMs === null ? null : { min: bracket.minMs / 1_000, max: bracket.maxMs / 1_000 },
    recommended: { heartbeatEvery: formatSeconds(heartbeatBelowProven(provenMs)), keepaliveIdle: formatSeconds(safeIntervalMs(provenMs)) },
  };
}

interface SearchOutcome {
  readonly bracket: Bracket;
  readonly deaths: ReadonlyMap<DeathKind, number>;
}

function search(options: DiscoverOptions, clock: Clock, io: DiscoverIo): Promise<SearchOutcome | string> {
  const planner = new IdleSearch({ ...DEFAULT_SEARCH, maxMs: options.maxMs, minMs: options.minMs, parallel: options.parallel });
  const canaries = new Map<number, Canary>();
  const deaths = new Map<DeathKind, number>();
  const started = clock.preciseNow();
  let failures = 0;
  let lastProgress = '';
  let lastProgressAt = 0;
  return new Promise((resolve) => {
    let settled = false;
    const settle = (value: SearchOutcome | string): void => {
      if (settled) return;
      settled = true;
      unsubscribe();
      for (const canary of canaries.values()) canary.cancel();
      canaries.clear();
      resolve(value);
    };
    const progress = (now: number): void => {
      const { minMs, maxMs } = planner.bracket;
      const bracket = maxMs === null ? `longer than ${formatDuration(minMs)}` : `between ${formatDuration(minMs)} and ${formatDuration(maxMs)}`;
      const state = `${canaries.size} idle connections, idle timeout ${bracket}`;
      if (state === lastProgress && now - lastProgressAt < PROGRESS_EVERY_MS) return;
      lastProgress = state;
      lastProgressAt = now;
      const line = `discover: ${Math.round((clock.preciseNow() - started) / 1_000)}s elapsed, ${state}`;
      io.err(line + '\n');
    };
    const onOutcome = (canary: Canary, outcome: CanaryOutcome): void => {
      if (settled || canaries.get(canary.idleMs) !== canary) return;
      canaries.delete(canary.idleMs);
      const failed = outcome.kind === 'failed' ? outcome.reason : diedBeforeShortestIdle(outcome, options.minMs);
      if (failed !== null) {
        planner.forget(canary.idleMs);
        if (++failures > MAX_FAILURES) return settle(`${failures} probe connections failed; last: ${failed}`);
      } else if (outcome.kind === 'survived') {
        planner.record(canary.idleMs, true, outcome.idleMs);
      } else if (outcome.kind === 'died') {
        planner.record(canary.idleMs, false, outcome.idleMs);
        deaths.set(outcome.how, (deaths.get(outcome.how) ?? 0) + 1);
      }
      step(clock.now());
    };
    const step = (now: number): void => {
      for (const ms of planner.moot()) {
        canaries.get(ms)?.cancel();
        canaries.delete(ms);
      }
      if (planner.finished) return settle({ bracket: planner.bracket, deaths });
      for (const ms of planner.plan()) {
        const canary = startCanary(options, ms, clock);
        canaries.set(ms, canary);
        void canary.done.then((outcome) => onOutcome(canary, outcome));
      }
      if (canaries.size === 0) return settle({ bracket: planner.bracket, deaths });
      progress(now);
    };
    const unsubscribe = clock.subscribe((now) => {
      for (const canary of canaries.values()) canary.tick(now);
      progress(now);
    });
    step(clock.now());
  });
}

/**
 * A connection ended while idle before the shortest idle tried (`--min`): the server or a
 * hop refuses to keep new connections at all (it closed or reset them right after the
 * preflight worked), which is not an idle timeout this search can bracket.
 */
function diedBeforeShortestIdle(outcome: CanaryOutcome, minMs: number): string | null {
  if (outcome.kind !== 'died' || outcome.idleMs >= minMs) return null;
  return `the connection was ${outcome.how === 'closed' ? 'closed' : outcome.how} after ${formatDuration(outcome.idleMs)} of silence, before the shortest idle tried (--min ${formatDuration(minMs)})`;
}

function startCanary(options: DiscoverOptions, idleMs: number, clock: Clock): Canary {
  return new Canary({
    target: options.upstream,
    idleMs,
    probe: options.probe,
    connectTimeoutMs: options.connectTimeoutMs,
    probeTimeoutMs: options.probeTimeoutMs,
    clock,
  });
}

/** Drives `canaries` with the clock until each has an outcome. */
async function watch(clock: Clock, canaries: Canary[]): Promise<CanaryOutcome[]> {
  const unsubscribe = clock.subscribe((now) => {
    for (const canary of canaries) canary.tick(now);
  });
  try {
    return await Promise.all(canaries.map((canary) => canary.done));
  } finally {
    unsubscribe();
  }
}

function describeFailure(outcome: CanaryOutcome): string {
  if (outcome.kind === 'failed') return outcome.reason;
  if (outcome.kind === 'died') return outcome.how === 'silence' ? 'no reply' : `connection ${outcome.how === 'closed' ? 'closed' : outcome.how}`;
  return 'ok';
}

const DEATH_WORDS: Record<DeathKind, string> = {
  reset: 'reset (RST)',
  closed: 'closed (FIN: usually the server itself, e.g. its login timeout)',
  silence: 'silence (probe unanswered: dropped by a stateful middlebox)',
  timeout: 'unacknowledged probe (TCP_USER_TIMEOUT)',
  error: 'socket error',
};

function describeReport(report: DiscoverReport, bracket: Bracket, deaths: ReadonlyMap<DeathKind, number>, maxMs: number): string {
  const lines: string[] = [];
  if (bracket.maxMs === null) {
    lines.push(`${report.upstream}: no idle connection died within ${formatDuration(maxMs)}`);
  } else {
    lines.push(`${report.upstream}: idle connections die after ${formatDuration(bracket.minMs)} to ${formatDuration(bracket.maxMs)} of silence`);
    const how = [...deaths].map(([kind, count]) => `${count} by ${DEATH_WORDS[kind]}`).join(', ');
    if (how) lines.push(`  seen: ${how}`);
  }
  lines.push(`  recommended: heartbeat.every: ${report.recommended.heartbeatEvery}, keepalive.upstream.idle: ${report.recommended.keepaliveIdle}`);
  return lines.join('\n');
}
