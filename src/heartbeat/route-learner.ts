import { formatDuration } from '../config/duration.js';
import { formatHostPort } from '../config/hostport.js';
import type { RouteConfig } from '../config/schema.js';
import { Canary } from '../discover/canary.js';
import { canaryProbe } from '../discover/probes.js';
import type { EvictionReason } from '../errors.js';
import type { RouteDeps } from '../route.js';
import { readState, writeState } from '../state-dir.js';
import { AdaptiveHeartbeat, type Learned } from './adaptive.js';

// The learner of one tcp-family route with `heartbeat: { every: auto }`: its canaries
// dial the route's upstream and probe as `discover` does; what it learns goes to the
// route's gauges, to one log line per change of the interval, and to stateDir (keyed by
// route and upstream address) so a restart starts from it.

const CANARIES = 2;
/** A finished search runs again after this long (paths change). */
const REPROBE_MS = 30 * 60_000;
/** Evictions that mean a client connection died of the path while idle. */
const LOST_TO_PATH: ReadonlySet<EvictionReason> = new Set(['keepalive_timeout', 'heartbeat_timeout']);

export interface RouteLearner {
  readonly interval: { readonly everyMs: number };
  tick(now: number): void;
  onEvicted(reason: EvictionReason): void;
  close(): void;
}

export function createRouteLearner(config: RouteConfig, deps: RouteDeps): RouteLearner | null {
  const adaptive = config.heartbeat?.adaptive;
  const upstream = config.upstream;
  if (!adaptive || !upstream) return null;
  const probe = canaryProbe(config.protocol, { ...(config.heartbeat?.send ? { send: config.heartbeat.send } : {}), ...(config.heartbeat?.expect ? { expect: config.heartbeat.expect } : {}) });
  const stateKey = `adaptive-${config.name}-${formatHostPort(upstream)}`;
  const stored = deps.stateDir ? learnedFrom(readState(deps.stateDir, stateKey)) : null;
  const route = config.name;
  const pathGauge = deps.metrics.pathIdleTimeout.labels(route);
  const intervalGauge = deps.metrics.heartbeatInterval.labels(route);
  const learner = new AdaptiveHeartbeat(
    { minMs: adaptive.minMs, maxMs: adaptive.maxMs, canaries: CANARIES, reprobeMs: REPROBE_MS },
    (idleMs) =>
      new Canary({
        target: upstream,
        idleMs,
        probe,
        connectTimeoutMs: config.connectTimeoutMs,
        probeTimeoutMs: config.heartbeat!.timeoutMs,
        clock: deps.clock,
      }),
    {
      onChange: (learned, why) => {
        if (learned.survivedMs > 0) pathGauge.set(learned.survivedMs / 1_000);
        if (learned.intervalMs !== current) {
          deps.log.info({ route, intervalMs: learned.intervalMs, provenIdleMs: learned.survivedMs, why }, `heartbeat interval now ${formatDuration(learned.intervalMs)}`);
          current = learned.intervalMs;
        }
        intervalGauge.set(learned.intervalMs / 1_000);
        if (deps.stateDir) {
          const failed = writeState(deps.stateDir, stateKey, { survivedMs: learned.survivedMs, intervalMs: learned.intervalMs, at: new Date().toISOString() });
          if (failed) deps.log.warn({ route, stateDir: deps.stateDir, err: failed }, 'learned heartbeat interval not saved');
        }
      },
    },
    stored,
  );
  let current = learner.interval.everyMs;
  intervalGauge.set(current / 1_000);
  if (stored && stored.survivedMs > 0) {
    pathGauge.set(stored.survivedMs / 1_000);
    deps.log.info({ route, intervalMs: current, provenIdleMs: stored.survivedMs }, `heartbeat interval ${formatDuration(current)} from stateDir`);
  }
  return {
    interval: learner.interval,
    tick: (now) => learner.tick(now),
    onEvicted: (reason) => {
      if (LOST_TO_PATH.has(reason)) learner.onClientLost();
    },
    close: () => learner.close(),
  };
}

/** A stored learned value, checked: positive finite numbers only. */
function learnedFrom(value: Record<string, unknown> | null): Learned | null {
  const survivedMs = value?.['survivedMs'];
  const intervalMs = value?.['intervalMs'];
  if (typeof survivedMs !== 'number' || typeof intervalMs !== 'number') return null;
  if (!Number.isFinite(survivedMs) || survivedMs < 0 || !Number.isFinite(intervalMs) || intervalMs <= 0) return null;
  return { survivedMs, intervalMs };
}
