import net from 'node:net';
import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, fullBacklogListener, listen0, readBytes, refused } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';
import { rawRequest, startUpstream } from '../helpers/http.js';

// Work in flight when a reload, a route removal or a shutdown closes something else: it
// finishes on the configuration it started under, or is told and counted once, with the
// reason of what closed it; the closed thing's share of the gauges and descriptors goes.
// The upstream is a listener whose accept queue is full, so the proxy's connect hangs
// until acceptNow(): the "connect in flight" state is held, not raced for.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function run(yaml: string): Promise<RunningProxy> {
  const proxy = await startProxy({ yaml });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return proxy;
}

async function slowUpstream(): Promise<Awaited<ReturnType<typeof fullBacklogListener>>> {
  const upstream = await fullBacklogListener();
  cleanups.push(() => upstream.stop());
  return upstream;
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

describe('work in flight at a reload or a shutdown', () => {
  // A plain TCP route takes its clients as raw TCP ends. At the shutdown deadline such a
  // client, its connect still in flight, was counted as if it had left itself (peer_closed).
  it('a raw TCP client whose upstream is still connecting at the shutdown deadline is counted as shutdown', async () => {
    const upstream = await slowUpstream();
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
log: { level: debug }
shutdownTimeout: 300ms
routes:
  - { name: raw, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port}, connectTimeout: 20s }
`);
    const client = await connect(port);
    client.on('error', () => {});
    cleanups.push(() => client.destroy());
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_connections_active', { route: 'raw' }) === 1, 5_000, 'the client taken');

    expect(await proxy.stop('SIGTERM', 10_000)).toBe(0);
    const ends = proxy.logs.filter((l) => l.msg === 'connection closed before the upstream was ready');
    expect(ends.map((l) => l.reason)).toEqual(['shutdown']);
    await until(() => client.closed || client.readableEnded, 5_000, 'the client told');
  }, 30_000);

  // An HTTP request whose upstream dial is in flight when a reload replaces the route's
  // pool, and whose client then leaves: the dial completes into the old pool, which used
  // to park it as idle (pool_idle 1, an upstream socket held) although nothing would ever
  // take it again. It closes as the old pool's idle connections did: reason reload.
  it('an HTTP dial that completes into a pool a reload replaced, its request gone, is closed as reload, not parked', async () => {
    const upstream = await slowUpstream();
    const port = await freePort();
    const config = (maxSockets: number): string => `
admin: { listen: "{{admin}}" }
routes:
  - name: web
    listen: 127.0.0.1:${port}
    protocol: http
    upstream: http://127.0.0.1:${upstream.port}
    connectTimeout: 20s
    pool: { maxSockets: ${maxSockets}, idleTimeout: 0 }
`;
    const proxy = await run(config(4));
    const metrics = async (): Promise<Map<string, number>> => parseMetrics(await proxy.metrics());
    const gauge = async (name: string): Promise<number> => sample(await metrics(), `keepalive_proxy_${name}`, { route: 'web' });
    const fdsBefore = openFds(proxy.pid);

    const client = net.connect(port, '127.0.0.1');
    client.on('error', () => {});
    cleanups.push(() => client.destroy());
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    // The dial is in flight: counted as an active pool connection (connecting).
    await until(async () => (await gauge('pool_active')) === 1, 5_000, 'the upstream dial started');

    await proxy.reload(config(8)); // new pool settings: a new pool; the old one closes
    await until(async () => sample(await metrics(), 'keepalive_proxy_config_reloads_total', { result: 'ok' }) === 1, 5_000, 'the reload applied');
    client.destroy();
    await until(async () => (await gauge('connections_active')) === 0, 5_000, 'the client gone');

    upstream.acceptNow();
    await until(async () => sample(await metrics(), 'keepalive_proxy_upstream_connects_total', { route: 'web', result: 'ok' }) === 1, 15_000, 'the dial completed');
    // Given time to settle either way, then held to exact values.
    await until(async () => sample(await metrics(), 'keepalive_proxy_evictions_total', { route: 'web', reason: 'reload' }) === 1, 5_000, 'the connection closed as reload').catch(() => {});
    const after = await metrics();
    expect(sample(after, 'keepalive_proxy_pool_idle', { route: 'web' })).toBe(0);
    expect(sample(after, 'keepalive_proxy_pool_active', { route: 'web' })).toBe(0);
    expect(sample(after, 'keepalive_proxy_evictions_total', { route: 'web', reason: 'reload' })).toBe(1);
    await until(() => openFds(proxy.pid) <= fdsBefore, 5_000, `fds back to ${fdsBefore}`).catch(() => {});
    expect(openFds(proxy.pid)).toBeLessThanOrEqual(fdsBefore);
  }, 40_000);

  // A removed HTTP route's pooled connections are dropped for the reload, as a tcp route's
  // spares are: they were counted as route_removed, a word for client pairs only.
  it("a removed HTTP route's idle pooled connection is closed and counted as reload", async () => {
    const upstream = await startUpstream((_req, res) => res.end('ok'));
    cleanups.push(() => upstream.close());
    const [port, otherPort] = [await freePort(), await freePort()];
    const route = (name: string, listen: number): string =>
      `  - { name: ${name}, listen: 127.0.0.1:${listen}, protocol: http, upstream: "${upstream.url}", pool: { idleTimeout: 0 } }\n`;
    const config = (routes: string): string => `admin: { listen: "{{admin}}" }\nroutes:\n${routes}`;
    const proxy = await run(config(route('web', port)));
    const metrics = async (): Promise<Map<string, number>> => parseMetrics(await proxy.metrics());

    expect((await rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).status).toBe(200);
    await until(async () => sample(await metrics(), 'keepalive_proxy_pool_idle', { route: 'web' }) === 1, 5_000, 'the upstream connection parked');

    await proxy.reload(config(route('other', otherPort)));
    await until(() => upstream.openSockets().size === 0, 5_000, 'the pooled connection closed');
    await until(async () => sample(await metrics(), 'keepalive_proxy_pool_idle', { route: 'web' }) === 0, 5_000, 'pool_idle back to 0');
    const after = await metrics();
    expect(sample(after, 'keepalive_proxy_evictions_total', { route: 'web', reason: 'reload' })).toBe(1);
    expect(sample(after, 'keepalive_proxy_evictions_total', { route: 'web', reason: 'route_removed' })).toBe(0);
    expect(sample(after, 'keepalive_proxy_connections_active', { route: 'web' })).toBe(0);
  });
});

describe('a reload that a shutdown overtakes', () => {
  // SIGHUP then SIGTERM: the file was still loading (in its worker thread) when the drain
  // began, and the reload then bound the new config's listeners anyway. They took clients
  // that no drain owned, cut uncounted at exit. A shutdown drops a reload still in flight.
  // Either order: the SIGHUP handled first (its file still loading when SIGTERM comes), or
  // the SIGTERM handled first (a SIGHUP into a drain, which used to be ignored without a word).
  it.each(['SIGHUP first', 'SIGTERM first'] as const)('binds no new listener once SIGTERM has begun the drain (%s)', async (order) => {
    const echo = await listen0((socket) => socket.pipe(socket));
    cleanups.push(() => echo.close());
    const [port, newPort] = [await freePort(), await freePort()];
    const route = (name: string, listen: number): string => `  - { name: ${name}, listen: 127.0.0.1:${listen}, upstream: 127.0.0.1:${echo.port} }\n`;
    const config = (routes: string): string => `admin: { listen: "{{admin}}" }\nshutdownTimeout: 20s\nroutes:\n${routes}`;
    const proxy = await run(config(route('old', port)));
    // A live client holds the drain open while the test looks at the listeners.
    const client = await connect(port);
    client.on('error', () => {});
    cleanups.push(() => client.destroy());
    client.write('x');
    await readBytes(client, 1);

    // A comment of a few hundred kB keeps the loader thread busy well past the SIGTERM.
    const padding = `# ${'p'.repeat(100)}\n`.repeat(4_000);
    if (order === 'SIGHUP first') {
      await proxy.reload(padding + config(route('old', port) + route('added', newPort)));
      proxy.child.kill('SIGTERM');
      await proxy.logged((l) => l.msg === 'shutting down: draining live connections');
    } else {
      proxy.child.kill('SIGTERM');
      await proxy.logged((l) => l.msg === 'shutting down: draining live connections');
      await proxy.reload(config(route('old', port) + route('added', newPort)));
    }
    await proxy.logged((l) => l.msg === 'configuration reloaded' || l.msg === 'reload dropped: the proxy is shutting down', 1, 10_000);

    expect(await refused(newPort)).toBe(true);
    expect(await refused(port)).toBe(true);
    expect(proxy.logs.filter((l) => l.msg === 'route listening' && l.route === 'added')).toEqual([]);
    // The live client is still served, and the drain ends with it.
    client.write('y');
    expect((await readBytes(client, 1)).toString()).toBe('y');
    client.end();
    expect(await proxy.exited).toBe(0);
  }, 30_000);
});
