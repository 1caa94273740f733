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

describe('warm pool spares on the heartbeat schedule', () => {
  it('probes parked spares spread by jitter and measures each answered probe', async () => {
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
    heartbeat: { every: ${EVERY_MS / 1000}s, timeout: 5s, jitter: 0.5 }
`;
    writeFileSync(file, text);
    const config = parseConfigText(text, file).routes[0]!;

    const clock = new ManualClock(TICK_MS);
    const metrics = new Metrics(false);
    const deps = { metrics, log: pino({ level: 'silent' }), clock, ownListeners: () => [] };
    const routeMetrics = new RouteMetrics(metrics, 'warm');
    const pool = new WarmPool(config, codecFor('redis'), deps, routeMetrics, new SockoptRefusals('warm', deps));
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
    // The helper's readiness check pinged too; no client of the pool ever does.
    const before = await pingsServed();
    /** PINGs the server has answered since the spares were parked: the pool's probes. */
    const pings = async (): Promise<number> => (await pingsServed()) - before;

    // One tick at a time up to every x 1.5 (the latest a spare with jitter 0.5 is due),
    // waiting after each for the server to have answered what the tick sent.
    const probesByTick: number[] = [];
    let seen = 0;
    for (let elapsed = TICK_MS; elapsed <= EVERY_MS * 1.5 + TICK_MS; elapsed += TICK_MS) {
      clock.advance(TICK_MS);
      let answered = 0;
      await until(async () => (answered = await series('heartbeats_total', { result: 'ok' })) === (await pings()), 5_000, 'probes answered');
      if (answered > seen) probesByTick.push(elapsed);
      seen = answered;
    }

    // Every spare was probed within every +- jitter, and not all at one tick.
    expect(seen).toBeGreaterThanOrEqual(SPARES);
    expect(probesByTick[0]).toBeGreaterThanOrEqual(EVERY_MS * 0.5);
    expect(probesByTick[0]).toBeLessThan(EVERY_MS);
    expect(probesByTick.length).toBeGreaterThanOrEqual(4);
    // Each answered probe has its round trip in heartbeat_rtt_seconds; none timed out, none was evicted.
    expect(await series('heartbeat_rtt_seconds_count')).toBe(seen);
    expect(await series('heartbeats_total', { result: 'timeout' })).toBe(0);
    expect(await series('pool_idle')).toBe(SPARES);
  });
});
