import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { parseConfigText } from '../../src/config/load.js';
import { Metrics } from '../../src/metrics/registry.js';
import { RouteMetrics } from '../../src/metrics/route-metrics.js';
import { SockoptRefusals } from '../../src/net/sockopt-refusals.js';
import { WarmPool } from '../../src/pool/warm.js';
import { codecFor } from '../../src/protocols/registry.js';
import { parseMetrics, sample } from '../helpers/proxy.js';
import { startRedis } from '../helpers/servers.js';
import { until } from '../helpers/wait.js';

// Parked spares of a warm pool are heartbeated on the one schedule live sessions use
// (src/heartbeat/scheduler.ts): each with its own jitter, so spares dialled together do
// not probe in lockstep, and each answered probe counted with its round trip, as a live
// session's is. A real redis-server answers; a ManualClock moves time, one tick at a
// time, and each tick's probes are counted by the server itself (INFO commandstats).

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const SPARES = 16;
const EVERY_MS = 10_000;
const TICK_MS = 250;

interface WarmRig {
  readonly clock: ManualClock;
  /** A series of the route 'warm', flushed first. */
  series(name: string, labels?: Record<string, string>): Promise<number>;
  /** PINGs the server has answered since the spares were parked: the pool's probes (no client of the pool ever pings). */
  pings(): Promise<number>;
  /** Probes the pool has written and not yet seen answered. */
  outstanding(): number;
}

/** A warm pool of SPARES redis spares with `heartbeat`, parked, on a ManualClock; `interval`: the route's interval in force. */
async function parkedSpares(heartbeat: string, interval?: () => { readonly everyMs: number } | null): Promise<WarmRig> {
  const redis = await startRedis();
  cleanups.push(() => redis.stop());
  const dir = mkdtempSync(join(tmpdir(), 'kp-warm-hb-'));
  const file = join(dir, 'config.yaml');
  const text = `routes:
  - name: warm
    protocol: redis
    listen: 127.0.0.1:0
    upstream: 127.0.0.1:${redis.port}
    pool: { warm: ${SPARES}, maxIdle: 10m }
    heartbeat: ${heartbeat}
`;
  writeFileSync(file, text);
  const config = parseConfigText(text, file).routes[0]!;

  const clock = new ManualClock(TICK_MS);
  const metrics = new Metrics(false);
  const deps = { metrics, log: pino({ level: 'silent' }), clock, ownListeners: () => [] };
  const routeMetrics = new RouteMetrics(metrics, 'warm');
  const pool = new WarmPool(config, codecFor('redis'), deps, routeMetrics, new SockoptRefusals('warm', deps), interval ? { learnedInterval: interval } : {});
  const stopTicks = clock.subscribe((now) => pool.tick(now));
  cleanups.push(() => {
    stopTicks();
    pool.close('shutdown');
  });
  pool.start();

  const series = async (name: string, labels: Record<string, string> = {}): Promise<number> => {
    routeMetrics.flush();
    return sample(parseMetrics(await metrics.registry.metrics()), `keepalive_proxy_${name}`, { route: 'warm', ...labels });
  };
  await until(async () => (await series('pool_idle')) === SPARES, 10_000, `${SPARES} parked spares`);

  const direct = new Redis(redis.port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0 });
  await direct.connect();
  cleanups.push(() => direct.disconnect());
  const pingsServed = async (): Promise<number> => Number(/cmdstat_ping:calls=(\d+)/.exec(await direct.info('commandstats'))?.[1] ?? 0);
  // The helper's readiness check pinged too.
  const before = await pingsServed();
  return { clock, series, pings: async () => (await pingsServed()) - before, outstanding: () => pool.probesOutstanding };
}

/**
 * Moves the clock one tick at a time for `ms`, waiting after each for the server to have
 * answered what the tick sent; returns the ticks (elapsed ms) at which new probes were answered.
 */
async function tickByTick(rig: WarmRig, ms: number, fromMs = 0): Promise<number[]> {
  const probesByTick: number[] = [];
  let seen = await rig.series('heartbeats_total', { result: 'ok' });
  for (let elapsed = fromMs + TICK_MS; elapsed <= fromMs + ms; elapsed += TICK_MS) {
    rig.clock.advance(TICK_MS);
    let answered = 0;
    // Every probe this tick wrote has come back to the pool, and the server saw no other.
    await until(
      async () => rig.outstanding() === 0 && (answered = await rig.series('heartbeats_total', { result: 'ok' })) === (await rig.pings()),
      5_000,
      'probes answered',
    );
    if (answered > seen) probesByTick.push(elapsed);
    seen = answered;
  }
  return probesByTick;
}

describe('warm pool spares on the heartbeat schedule', () => {
  it('probes parked spares spread by jitter and measures each answered probe', async () => {
    const rig = await parkedSpares(`{ every: ${EVERY_MS / 1000}s, timeout: 5s, jitter: 0.5 }`);
    // Up to every x 1.5, the latest a spare with jitter 0.5 is due.
    const probesByTick = await tickByTick(rig, EVERY_MS * 1.5 + TICK_MS);
    const seen = await rig.series('heartbeats_total', { result: 'ok' });

    // Every spare was probed within every +- jitter, and not all at one tick.
    expect(seen).toBeGreaterThanOrEqual(SPARES);
    expect(probesByTick[0]).toBeGreaterThanOrEqual(EVERY_MS * 0.5);
    expect(probesByTick[0]).toBeLessThan(EVERY_MS);
    expect(probesByTick.length).toBeGreaterThanOrEqual(4);
    // Each answered probe has its round trip in heartbeat_rtt_seconds; none timed out, none was evicted.
    expect(await rig.series('heartbeat_rtt_seconds_count')).toBe(seen);
    expect(await rig.series('heartbeats_total', { result: 'timeout' })).toBe(0);
    expect(await rig.series('pool_idle')).toBe(SPARES);
  });

  it("follows the route's interval in force (every: auto), as live sessions do, read at every check", async () => {
    // The learner's interval: 60 s learned, while the config's starting interval is 1 s.
    const learned = { everyMs: 60_000 };
    const rig = await parkedSpares('{ every: 1s, timeout: 5s, jitter: 0 }', () => learned);
    expect(await tickByTick(rig, 10_000)).toEqual([]);
    expect(await rig.pings()).toBe(0);
    // The path's timeout turned out shorter: the spares follow at once.
    learned.everyMs = 12_000;
    const probed = await tickByTick(rig, 3_000, 10_000);
    expect(probed).toEqual([12_000]);
    expect(await rig.series('heartbeats_total', { result: 'ok' })).toBe(SPARES);
  });
});
