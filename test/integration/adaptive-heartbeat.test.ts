import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { idleMiddlebox, type IdleMiddlebox } from '../helpers/idle-middlebox.js';
import { connect, freePort, readBytes } from '../helpers/net.js';
import { parseMetrics, sample, startProxy } from '../helpers/proxy.js';
import { startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

// heartbeat every: auto behind a middlebox that silently drops flows idle for 3 s: the
// route learns an interval between half the timeout and the timeout with its own
// canaries, a client idling meanwhile keeps its session, and a restart with the same
// stateDir has the learned interval in force at once.

const TIMEOUT_MS = 3_000;

describe('heartbeat every: auto', () => {
  let redis: RunningServer;
  let box: IdleMiddlebox;
  let stateDir: string;

  beforeAll(async () => {
    redis = await startRedis();
    box = await idleMiddlebox(redis.port, TIMEOUT_MS, 'drop');
    stateDir = mkdtempSync(join(tmpdir(), 'kp-state-'));
  }, 40_000);

  afterAll(async () => {
    await box?.close();
    await redis?.stop();
    rmSync(stateDir, { recursive: true, force: true });
  });

  const yaml = (port: number): string =>
    [
      'admin: { listen: "{{admin}}" }',
      `stateDir: ${stateDir}`,
      'routes:',
      '  - name: cache',
      `    listen: 127.0.0.1:${port}`,
      `    upstream: 127.0.0.1:${box.port}`,
      '    protocol: redis',
      '    heartbeat: { every: auto, min: 1s, max: 20s, timeout: 1s }',
      '',
    ].join('\n');

  it('learns an interval between half the timeout and the timeout while an idle client keeps its session, and keeps it across a restart', async () => {
    const port = await freePort();
    const proxy = await startProxy({ yaml: yaml(port) });
    try {
      const client = await connect(port);
      client.write('*1\r\n$4\r\nPING\r\n');
      expect((await readBytes(client, 7)).toString()).toBe('+PONG\r\n');
      const intervalOf = async (): Promise<number> => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_heartbeat_interval_seconds', { route: 'cache' });
      expect(await intervalOf()).toBe(1);
      const learned = await until(
        async () => {
          const interval = await intervalOf();
          return interval >= TIMEOUT_MS / 2000 && interval < TIMEOUT_MS / 1000 ? interval : null;
        },
        25_000,
        'a learned interval in [T/2, T)',
        250,
      );
      // The client sat idle through the learning: its session is still there.
      client.write('*1\r\n$4\r\nPING\r\n');
      expect((await readBytes(client, 7)).toString()).toBe('+PONG\r\n');
      const metrics = parseMetrics(await proxy.metrics());
      const pathIdle = sample(metrics, 'keepalive_proxy_path_idle_timeout_seconds', { route: 'cache' });
      expect(pathIdle).toBeGreaterThan(0);
      expect(pathIdle).toBeLessThan(TIMEOUT_MS / 1000 + 0.2);
      expect(sample(metrics, 'keepalive_proxy_evictions_total', { route: 'cache', reason: 'heartbeat_timeout' })).toBe(0);
      // Idle a while longer at the learned interval: still alive.
      await sleep(2 * TIMEOUT_MS);
      client.write('*1\r\n$4\r\nPING\r\n');
      expect((await readBytes(client, 7)).toString()).toBe('+PONG\r\n');
      await proxy.logged((line) => String(line['msg']).startsWith('heartbeat interval now'));
      client.destroy();
      expect(await proxy.stop()).toBe(0);

      const again = await startProxy({ yaml: yaml(port) });
      try {
        const restored = sample(parseMetrics(await again.metrics()), 'keepalive_proxy_heartbeat_interval_seconds', { route: 'cache' });
        expect(restored).toBeGreaterThanOrEqual(TIMEOUT_MS / 2000);
        expect(restored).toBeLessThan(TIMEOUT_MS / 1000);
        expect(Math.abs(restored - learned)).toBeLessThanOrEqual(0.5);
      } finally {
        await again.stop();
      }
    } finally {
      await proxy.stop();
    }
  }, 60_000);
});
