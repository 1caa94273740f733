import { spawnSync } from 'node:child_process';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes, refused } from '../helpers/net.js';
import { rawRequest, startUpstream } from '../helpers/http.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { processAlive, until } from '../helpers/wait.js';

// workers: 2, driven as a user does: the built proxy, real sockets, signals by PID. The
// primary owns admin, config and signals; two worker processes serve the routes.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function echoUpstream(): Promise<number> {
  const upstream = await listen0((socket) => {
    socket.on('data', (chunk: Buffer) => socket.write(chunk));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
  });
  cleanups.push(() => upstream.close());
  return upstream.port;
}

async function start(yaml: string): Promise<RunningProxy> {
  const proxy = await startProxy({ yaml });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return proxy;
}

function config(port: number, upstream: number, extra = ''): string {
  return `
admin: { listen: "{{admin}}" }
workers: 2
shutdownTimeout: 10s
${extra}
routes:
  - name: echo
    listen: 127.0.0.1:${port}
    upstream: 127.0.0.1:${upstream}
    keepalive: { client: { idle: 42s, interval: 7s, count: 4 } }
`;
}

/** `count` clients, each echoed a payload of its own; they stay open until the test ends or closes them. */
async function openClients(port: number, count: number, tag: string): Promise<net.Socket[]> {
  const clients = await Promise.all(Array.from({ length: count }, () => connect(port)));
  for (const client of clients) cleanups.push(() => client.destroy());
  await Promise.all(
    clients.map(async (client, i) => {
      const payload = `${tag}-${i};`;
      client.write(payload);
      expect((await readBytes(client, payload.length)).toString()).toBe(payload);
    }),
  );
  return clients;
}

async function metric(proxy: RunningProxy, name: string, labels: Record<string, string> = {}): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), `keepalive_proxy_${name}`, labels);
}

/**
 * The pid of the worker in `slot` (none of `gone`), from the line each worker logs when it is
 * ready. Waited for: the worker's line and its primary's can reach stdout in either order.
 */
async function workerPid(proxy: RunningProxy, slot: number, gone: readonly number[] = []): Promise<number> {
  const latest = (): number | undefined =>
    proxy.logs.findLast((line) => line.msg === 'worker ready' && line.worker === slot && !gone.includes(line.pid as number))?.pid as number | undefined;
  return until(latest, 10_000, `worker ${slot} ready`);
}

describe('workers: 2', () => {
  it('serves clients from both workers, with the route keepalive on every accepted socket, and /metrics adds them up exactly', async () => {
    const [port, upstream] = [await freePort(), await echoUpstream()];
    const proxy = await start(config(port, upstream));
    const clients = await openClients(port, 40, 'c');
    const rows = await proxy.connections();
    expect(rows).toHaveLength(40);
    const pids = new Set(rows.map((row) => row.pid));
    expect(new Set(rows.map((row) => row.worker))).toEqual(new Set([1, 2]));
    expect(pids.size).toBe(2);
    expect(pids.has(proxy.pid)).toBe(false);
    // Workers accept through handles node:cluster passes them: the keepalive of the route
    // must still be on each client socket, whoever accepted it.
    for (const row of rows) {
      expect((row.socketOptions as { client: unknown }).client).toMatchObject({ keepalive: true, idleSeconds: 42, intervalSeconds: 7, count: 4 });
    }
    expect(await metric(proxy, 'connections_active', { route: 'echo' })).toBe(40);
    for (const client of clients) client.end();
    await until(async () => (await metric(proxy, 'connections_active', { route: 'echo' })) === 0, 10_000, 'all closed');
    const exposition = parseMetrics(await proxy.metrics());
    expect(sample(exposition, 'keepalive_proxy_connections_accepted_total', { route: 'echo' })).toBe(40);
    expect(sample(exposition, 'keepalive_proxy_bytes_total', { route: 'echo', direction: 'upstream' })).toBe(
      Array.from({ length: 40 }, (_, i) => `c-${i};`.length).reduce((a, b) => a + b, 0),
    );
    // One build, reported once: not one line (or a sum of 3) per process.
    const buildInfo = [...exposition].filter(([key]) => key.startsWith('keepalive_proxy_build_info'));
    expect(buildInfo.map(([, value]) => value)).toEqual([1]);
    expect(sample(exposition, 'keepalive_proxy_worker_restarts_total')).toBe(0);
  });

  it('SIGHUP: both workers take the new settings; a reload no worker can apply is counted and changes nothing', async () => {
    const [port, upstream, taken] = [await freePort(), await echoUpstream(), await listen0((s) => s.destroy())];
    cleanups.push(() => taken.close());
    const proxy = await start(config(port, upstream));
    await proxy.reload(config(port, upstream).replace('idle: 42s', 'idle: 43s'));
    await until(async () => (await metric(proxy, 'config_reloads_total', { result: 'ok' })) === 1, 10_000, 'reload ok');
    await openClients(port, 30, 'r');
    const rows = await proxy.connections();
    expect(new Set(rows.map((row) => row.worker))).toEqual(new Set([1, 2]));
    for (const row of rows) expect((row.socketOptions as { client: unknown }).client).toMatchObject({ idleSeconds: 43 });

    const blocked = `${config(port, upstream).replace('idle: 42s', 'idle: 44s')}  - { name: blocked, listen: 127.0.0.1:${taken.port}, upstream: 127.0.0.1:${upstream} }\n`;
    await proxy.reload(blocked);
    await until(async () => (await metric(proxy, 'config_reloads_total', { result: 'error' })) === 1, 10_000, 'reload error');
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(200);
    await openClients(port, 30, 's');
    const after = await proxy.connections();
    expect(after).toHaveLength(60);
    for (const row of after) expect((row.socketOptions as { client: unknown }).client).toMatchObject({ idleSeconds: 43 });
  });

  it('kill -9 of a worker: the route keeps serving, the worker is replaced and counted, and totals never go down', async () => {
    const [port, upstream] = [await freePort(), await echoUpstream()];
    const proxy = await start(config(port, upstream));
    const before = await openClients(port, 10, 'a');
    for (const client of before) client.end();
    await until(async () => (await metric(proxy, 'connections_active', { route: 'echo' })) === 0, 10_000, 'closed');
    expect(await metric(proxy, 'connections_accepted_total', { route: 'echo' })).toBe(10);

    const victim = await workerPid(proxy, 1);
    process.kill(victim, 'SIGKILL');
    await until(() => !processAlive(victim), 5_000, 'worker gone');
    // Served throughout: whatever worker is alive takes the connections.
    await openClients(port, 10, 'b');
    await until(() => proxy.logs.some((l) => l.msg === 'worker replaced'), 15_000, 'replacement');
    await until(async () => (await fetch(`${proxy.adminUrl}/readyz`)).ok, 10_000, 'ready again');
    expect(await workerPid(proxy, 1, [victim])).not.toBe(victim);
    expect(proxy.logs.filter((l) => l.msg === 'worker exited unexpectedly; replacing it')).toHaveLength(1);
    await openClients(port, 30, 'c');
    const rows = await proxy.connections();
    expect(new Set(rows.map((row) => row.worker))).toEqual(new Set([1, 2]));
    expect(rows.some((row) => row.pid === victim)).toBe(false);
    // The dead worker's share of the first 10 stays in the total.
    expect(await metric(proxy, 'connections_accepted_total', { route: 'echo' })).toBe(50);
    expect(await metric(proxy, 'worker_restarts_total')).toBe(1);
  });

  it('a worker stopped with SIGSTOP makes /readyz 503 naming it, and 200 again once SIGCONT lets it answer', async () => {
    const [port, upstream] = [await freePort(), await echoUpstream()];
    const proxy = await start(config(port, upstream));
    const readyz = async (): Promise<{ status: number; body: string }> => {
      const res = await fetch(`${proxy.adminUrl}/readyz`);
      return { status: res.status, body: await res.text() };
    };
    expect(await readyz()).toEqual({ status: 200, body: 'ready\n' });
    const stopped = await workerPid(proxy, 2);
    const other = await workerPid(proxy, 1);
    process.kill(stopped, 'SIGSTOP');
    // Pushed after start(): runs before the proxy is killed, which a stopped worker would outlive.
    cleanups.push(() => processAlive(stopped) && process.kill(stopped, 'SIGCONT'));
    // Pinged every 1 s with a 3 s deadline on a 250 ms clock: noticed within about 4.5 s; generous for a loaded machine.
    const notReady = await until(async () => {
      const answer = await readyz();
      return answer.status === 503 ? answer : undefined;
    }, 15_000, '/readyz 503 while a worker is stopped', 200);
    expect(notReady.body).toMatch(new RegExp(`^not answering: worker 2 \\(pid ${stopped}\\) silent for \\d+\\.\\ds\n$`));
    expect(notReady.body).not.toContain(String(other));
    // The log line is written before that answer, but reaches this process through another pipe.
    const stoppedLines = () => proxy.logs.filter((l) => l.msg === 'worker stopped answering; not ready until it does');
    await until(() => stoppedLines().length > 0, 5_000, 'logged');
    expect(stoppedLines().map((l) => [l.worker, l.pid])).toEqual([[2, stopped]]);
    // The primary and the running worker still answer the admin.
    expect((await fetch(`${proxy.adminUrl}/healthz`)).status).toBe(200);

    process.kill(stopped, 'SIGCONT');
    await until(async () => (await readyz()).status === 200, 10_000, '/readyz 200 after SIGCONT', 200);
    expect(await readyz()).toEqual({ status: 200, body: 'ready\n' });
    await until(() => proxy.logs.some((l) => l.msg === 'worker answers again' && l.worker === 2), 5_000, 'logged');
    // Nothing was replaced: the same worker serves again.
    expect(await metric(proxy, 'worker_restarts_total')).toBe(0);
    await openClients(port, 20, 'w');
    expect(new Set((await proxy.connections()).map((row) => row.pid))).toEqual(new Set([stopped, other]));
  });

  it('a worker that keeps dying soon after its start is replaced after a growing delay, each death counted', async () => {
    const [port, upstream] = [await freePort(), await echoUpstream()];
    const proxy = await start(config(port, upstream));
    const killed: number[] = [];
    for (let death = 1; death <= 3; death++) {
      const pid = await workerPid(proxy, 1, killed);
      killed.push(pid);
      process.kill(pid, 'SIGKILL');
      await until(() => proxy.logs.filter((l) => l.msg === 'worker replaced').length === death, 15_000, `replacement ${death}`);
    }
    const delays = proxy.logs.filter((l) => l.msg === 'worker exited unexpectedly; replacing it').map((l) => l.restartInMs);
    expect(delays).toEqual([500, 1000, 2000]);
    expect(await metric(proxy, 'worker_restarts_total')).toBe(3);
    await openClients(port, 4, 'e');
  });

  it('SIGTERM: every worker drains its live connections, then the primary exits 0 and no worker is left', async () => {
    const [port, upstream] = [await freePort(), await echoUpstream()];
    const proxy = await start(config(port, upstream));
    const pids = [await workerPid(proxy, 1), await workerPid(proxy, 2)];
    const clients = await openClients(port, 6, 'd');
    proxy.child.kill('SIGTERM');
    await until(() => proxy.logs.some((l) => l.msg === 'shutting down: every worker drains its live connections'), 5_000, 'draining');
    await until(() => refused(port), 5_000, 'listeners closed');
    // Live connections go on during the drain, in both workers.
    await Promise.all(
      clients.map(async (client, i) => {
        client.write(`late-${i}`);
        expect((await readBytes(client, `late-${i}`.length)).toString()).toBe(`late-${i}`);
        client.end();
      }),
    );
    const code = await Promise.race([proxy.exited, new Promise((resolve) => setTimeout(() => resolve('timeout'), 15_000))]);
    expect(code).toBe(0);
    for (const pid of pids) expect(processAlive(pid)).toBe(false);
  });

  it('an http route: requests through both workers are counted exactly, and the gathered exposition passes promtool', async () => {
    const origin = await startUpstream((req, res) => res.end(`hello ${req.url}`));
    cleanups.push(() => origin.close());
    const port = await freePort();
    const proxy = await start(`
admin: { listen: "{{admin}}" }
workers: 2
routes:
  - { name: web, protocol: http, listen: 127.0.0.1:${port}, upstream: "${origin.url}" }
`);
    for (let i = 0; i < 20; i++) {
      const response = await rawRequest(port, `GET /r${i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(response.status).toBe(200);
    }
    const text = await proxy.metrics();
    expect(sample(parseMetrics(text), 'keepalive_proxy_requests_total', { route: 'web', code: '200' })).toBe(20);
    expect(sample(parseMetrics(text), 'keepalive_proxy_connections_accepted_total', { route: 'web' })).toBe(20);
    const promtool = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' }).stdout.trim();
    if (promtool) {
      const result = spawnSync(promtool, ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 30_000 });
      expect({ status: result.status, complaints: `${result.stdout}${result.stderr}`.trim() }).toEqual({ status: 0, complaints: '' });
    }
  });

  it('a config with bytes in it (a custom heartbeat) reaches the workers intact: each probes with those bytes', async () => {
    const probes: string[] = [];
    const upstream = await listen0((socket) => {
      socket.on('data', (chunk: Buffer) => {
        probes.push(chunk.toString('hex'));
        if (chunk.toString() === 'hb?\n') socket.write('hb!\n');
      });
      socket.on('error', () => {});
    });
    cleanups.push(() => upstream.close());
    const port = await freePort();
    await start(`
admin: { listen: "{{admin}}" }
workers: 2
routes:
  - name: custom
    listen: 127.0.0.1:${port}
    upstream: 127.0.0.1:${upstream.port}
    heartbeat: { every: 300ms, timeout: 2s, jitter: 0, sendHex: "68623f0a", expectHex: "6862210a" }
`);
    const clients = await Promise.all(Array.from({ length: 6 }, () => connect(port)));
    for (const client of clients) cleanups.push(() => client.destroy());
    await until(() => probes.length >= 6, 10_000, 'probes from the workers');
    expect(new Set(probes)).toEqual(new Set([Buffer.from('hb?\n').toString('hex')]));
  });

  it('a port already in use is fatal at start: one error line, exit 1, nothing left listening', async () => {
    const [fine, upstream, taken] = [await freePort(), await echoUpstream(), await listen0((s) => s.destroy())];
    cleanups.push(() => taken.close());
    const proxy = await startProxy({
      waitReady: false,
      yaml: `${config(fine, upstream)}  - { name: blocked, listen: 127.0.0.1:${taken.port}, upstream: 127.0.0.1:${upstream} }\n`,
    });
    cleanups.push(() => proxy.stop('SIGKILL'));
    const code = await Promise.race([proxy.exited, new Promise((resolve) => setTimeout(() => resolve('timeout'), 20_000))]);
    expect(code).toBe(1);
    const errors = proxy.logs.filter((l) => l.level === 'error' || l.level === 'fatal');
    expect(errors).toHaveLength(1);
    expect(String(errors[0]!.msg)).toContain(`blocked on 127.0.0.1:${taken.port}: EADDRINUSE`);
    expect(proxy.logs.some((l) => l.msg === 'keepalive-proxy ready')).toBe(false);
    expect(await refused(fine)).toBe(true);
  });
});
