import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, listen0 } from '../helpers/net.js';
import { parseMetrics, sample, startProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

// stateDir on SIGHUP: a reload that moves it is read by the routes it starts (they find
// the intervals kept there) and written by the learners it keeps. Routes were given the
// stateDir of the config in force when they were built, the old one during the reload
// itself, so a new stateDir never took effect before a restart.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kp-state-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('stateDir on reload', () => {
  it('a route a reload adds reads the stateDir that reload names', async () => {
    const echo = await listen0((socket) => socket.pipe(socket));
    cleanups.push(() => echo.close());
    const [before, after] = [tempDir(), tempDir()];
    // What an earlier run learned for this route and upstream, in the new directory only.
    writeFileSync(join(after, `adaptive-learned-127.0.0.1_${echo.port}.json`), JSON.stringify({ survivedMs: 8_000, intervalMs: 4_000, at: new Date().toISOString() }));
    const [plainPort, learnedPort] = [await freePort(), await freePort()];
    const config = (stateDir: string, routes: string): string =>
      `admin: { listen: "{{admin}}" }\nstateDir: ${stateDir}\nroutes:\n  - { name: plain, listen: 127.0.0.1:${plainPort}, upstream: 127.0.0.1:${echo.port} }\n${routes}`;
    const learned = `  - name: learned
    listen: 127.0.0.1:${learnedPort}
    upstream: 127.0.0.1:${echo.port}
    heartbeat: { every: auto, min: 1s, max: 20s, timeout: 1s, send: "hb\\n", expect: "hb\\n" }
`;
    const proxy = await startProxy({ yaml: config(before, '') });
    cleanups.push(() => proxy.stop('SIGKILL'));

    await proxy.reload(config(after, learned));
    await proxy.logged((l) => l.msg === 'route listening' && l.route === 'learned', 1, 10_000);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_path_idle_timeout_seconds', { route: 'learned' }), 'the idle timeout kept in the new stateDir').toBe(8);
    expect(sample(metrics, 'keepalive_proxy_heartbeat_interval_seconds', { route: 'learned' }), 'an interval from it, not min').toBeGreaterThan(1);
    const fromStateDir = await proxy.logged((l) => l.route === 'learned' && String(l.msg).endsWith('from stateDir'));
    expect(fromStateDir[0]!['provenIdleMs']).toBe(8_000);
  }, 30_000);
});
