import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, fullBacklogListener, listen0, readBytes, refused } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { once, sleep, until } from '../helpers/wait.js';

// Reload, drain, admin endpoints and per-connection behaviour through the real CLI.

type Upstream = Awaited<ReturnType<typeof listen0>>;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** An echo upstream that prefixes every reply with its tag, so a test can tell upstreams apart. */
async function taggedEcho(tag: string): Promise<Upstream> {
  const upstream = await listen0((socket) => {
    socket.on('data', (c: Buffer) => socket.write(`${tag}:${c.toString()}`));
    socket.on('end', () => socket.end());
  });
  cleanups.push(() => upstream.close());
  return upstream;
}

async function run(yaml: string): Promise<RunningProxy> {
  const proxy = await startProxy({ yaml });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return proxy;
}


async function ask(socket: net.Socket, text: string, expectLength?: number): Promise<string> {
  socket.write(text);
  return (await readBytes(socket, expectLength ?? text.length + 2, 5_000)).toString();
}

describe('admin endpoints', () => {
  it('serves /healthz, /readyz, /connections with addresses, bytes and kernel keepalive settings', async () => {
    const upstream = await taggedEcho('a');
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
defaults:
  keepalive:
    client: { idle: 42s, interval: 7s, count: 4 }
    upstream: { idle: 13s, interval: 3s, count: 2 }
  userTimeout: 9s
routes:
  - { name: r1, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port} }
`);
    expect((await fetch(`${proxy.adminUrl}/healthz`)).status).toBe(200);
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(200);
    const beforeConnect = Date.now();
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    // The session exists once it is listed: its age counts from before this point.
    await until(async () => (await proxy.connections()).length === 1, 5_000, 'the connection listed');
    const listed = Date.now();
    await sleep(800);
    const beforeAsk = Date.now();
    expect(await ask(client, 'hello')).toBe('a:hello');
    const afterAsk = Date.now();
    await sleep(800); // silent: the idle time grows from the reply on
    const beforeRows = Date.now();
    const rows = await proxy.connections();
    const afterRows = Date.now();
    expect(rows).toHaveLength(1);
    const row = rows[0] as Record<string, any>;
    expect(row.route).toBe('r1');
    expect(row.client).toBe(`127.0.0.1:${client.localPort}`);
    expect(row.upstream).toBe(`127.0.0.1:${upstream.port}`);
    expect(row.bytesUpstream).toBe(5);
    expect(row.bytesDownstream).toBe(7);
    // The session started between our connect and its first listing; the last payload was
    // the reply, between our request and its arrival. The same wall clock on both sides;
    // each window is 800 ms apart, so age and idle cannot pass for each other. The proxy's
    // timestamps come from its shared clock, good to one tick (250 ms).
    const slackSeconds = 0.25 + 0.002; // one tick, plus the listing's fractions vs whole ms here
    expect(row.ageSeconds).toBeGreaterThanOrEqual((beforeRows - listed) / 1000 - slackSeconds);
    expect(row.ageSeconds).toBeLessThanOrEqual((afterRows - beforeConnect) / 1000 + slackSeconds);
    expect(row.idleSeconds).toBeGreaterThanOrEqual((beforeRows - afterAsk) / 1000 - slackSeconds);
    expect(row.idleSeconds).toBeLessThanOrEqual((afterRows - beforeAsk) / 1000 + slackSeconds);
    // Read back from the proxy's own sockets with getsockopt.
    expect(row.socketOptions.client).toMatchObject({ keepalive: true, idleSeconds: 42, intervalSeconds: 7, count: 4, noDelay: true });
    expect(row.socketOptions.upstream).toMatchObject({ keepalive: true, idleSeconds: 13, intervalSeconds: 3, count: 2, userTimeoutMs: 9000, noDelay: true });
  });

  it('says ready only once every route listens, the HTTP routes (loaded on demand) included', async () => {
    const [httpPort, tcpPort] = [await freePort(), await freePort()];
    const proxy = await startProxy({
      waitReady: false,
      yaml: `
admin: { listen: "{{admin}}" }
routes:
  - { name: web, protocol: http, listen: "127.0.0.1:${httpPort}", upstream: "http://127.0.0.1:9" }
  - { name: raw, protocol: tcp, listen: "127.0.0.1:${tcpPort}", upstream: "127.0.0.1:9" }
`,
    });
    cleanups.push(() => proxy.stop('SIGKILL'));
    // Poll as fast as the admin answers, so a window where /readyz runs ahead of a
    // listener is found rather than stepped over.
    let ready = false;
    for (let attempt = 0; attempt < 5_000 && !ready; attempt++) {
      ready = await fetch(`${proxy.adminUrl}/readyz`).then((r) => r.ok, () => false);
      if (!ready) await sleep(1);
    }
    expect(ready).toBe(true);
    expect(await refused(httpPort)).toBe(false);
    expect(await refused(tcpPort)).toBe(false);
  });

  it('exposes every INTERFACE metric with the counters moving', async () => {
    const upstream = await taggedEcho('m');
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
routes:
  - { name: m, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port} }
`);
    const before = parseMetrics(await proxy.metrics());
    expect(sample(before, 'keepalive_proxy_connections_accepted_total', { route: 'm' })).toBe(0);
    for (let i = 0; i < 3; i++) {
      const c = await connect(port);
      expect(await ask(c, 'ping')).toBe('m:ping');
      c.end();
      await until(() => c.closed, 5_000, 'client closed');
    }
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_connections_active', { route: 'm' }) === 0, 5_000, 'active back to 0');
    const text = await proxy.metrics();
    const after = parseMetrics(text);
    expect(sample(after, 'keepalive_proxy_connections_accepted_total', { route: 'm' })).toBe(3);
    expect(sample(after, 'keepalive_proxy_upstream_connects_total', { route: 'm', result: 'ok' })).toBe(3);
    expect(sample(after, 'keepalive_proxy_upstream_connect_seconds_count', { route: 'm' })).toBe(3);
    expect(sample(after, 'keepalive_proxy_evictions_total', { route: 'm', reason: 'peer_closed' })).toBe(3);
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_bytes_total', { route: 'm', direction: 'downstream' }) === 18, 2_000, 'bytes flushed');
    for (const name of ['reuse_total', 'pool_idle', 'pool_active', 'connections_active', 'bytes_total']) {
      expect(text).toContain(`# TYPE keepalive_proxy_${name}`);
    }
    expect(text).toContain('keepalive_proxy_process_resident_memory_bytes');
  });
});

describe('per-connection limits', () => {
  it('closes a silent pair after idleTimeout with reason idle_timeout', async () => {
    const upstream = await taggedEcho('i');
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
routes:
  - { name: idle, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port}, idleTimeout: 600ms }
`);
    const client = await connect(port);
    // Timed from before the last byte: the idle period starts when the proxy forwards the answer,
    // which a loaded machine may hand to this process hundreds of ms later.
    const started = Date.now();
    expect(await ask(client, 'x')).toBe('i:x');
    await until(() => client.readableEnded || client.closed, 5_000, 'client closed by idle timeout');
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    // Read once the pair is gone on both sides (the end itself is counted before the FIN leaves).
    const metrics = await until(async () => {
      const values = parseMetrics(await proxy.metrics());
      return sample(values, 'keepalive_proxy_connections_active', { route: 'idle' }) === 0 ? values : undefined;
    }, 5_000, 'the pair closed on both sides');
    expect(sample(metrics, 'keepalive_proxy_evictions_total', { route: 'idle', reason: 'idle_timeout' })).toBe(1);
  });

  it('counts every end in evictions_total by the time the client sees it (FIN of an idle timeout, RST of an upstream reset, a CONNECT tunnel)', async () => {
    // The upstream resets a connection when it reads "reset"; otherwise it stays silent.
    const upstream = await listen0((socket) => socket.on('data', (c: Buffer) => c.toString() === 'reset' && socket.resetAndDestroy()));
    cleanups.push(() => upstream.close());
    const [port, resetPort, forwardPort] = [await freePort(), await freePort(), await freePort()];
    // The resets go through a route without an idle timeout: on a loaded machine the
    // timeout could otherwise end the pair (a FIN) before the reset comes back.
    const proxy = await run(`
admin: { listen: "{{admin}}" }
routes:
  - { name: ends, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port}, idleTimeout: 300ms }
  - { name: resets, listen: 127.0.0.1:${resetPort}, upstream: 127.0.0.1:${upstream.port} }
  - { name: tunnels, protocol: http-forward, listen: 127.0.0.1:${forwardPort}, allow: ["127.0.0.1:${upstream.port}"], idleTimeout: 300ms }
`);
    const counted = async (reason: string, route = 'ends'): Promise<number> =>
      sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route, reason });
    // Many rounds: the proxy's sockets close a moment after the FIN or RST left, so a count
    // taken at their close is missed now and then, not every time.
    const ROUNDS = 15;
    const seen: string[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      // The client keeps its own side open: only the proxy's FIN ends what it sees.
      const idle = await connect(port);
      cleanups.push(() => idle.destroy());
      await once(idle, 'end', 5_000);
      seen.push(`idle_timeout ${await counted('idle_timeout')}/${round}`);
      idle.destroy();

      const reset = await connect(resetPort);
      cleanups.push(() => reset.destroy());
      const error = once<NodeJS.ErrnoException>(reset, 'error', 5_000);
      reset.write('reset');
      expect((await error).code).toBe('ECONNRESET');
      seen.push(`peer_reset ${await counted('peer_reset', 'resets')}/${round}`);

      // A CONNECT tunnel (the same splice inside an HTTP route) idle past its timeout.
      const tunnel = await connect(forwardPort);
      cleanups.push(() => tunnel.destroy());
      const ended = once(tunnel, 'end', 5_000);
      tunnel.write(`CONNECT 127.0.0.1:${upstream.port} HTTP/1.1\r\nHost: 127.0.0.1:${upstream.port}\r\n\r\n`);
      const established = 'HTTP/1.1 200 Connection Established\r\n\r\n';
      expect((await readBytes(tunnel, established.length)).toString()).toBe(established);
      await ended;
      seen.push(`tunnel idle_timeout ${await counted('idle_timeout', 'tunnels')}/${round}`);
      tunnel.destroy();
    }
    const expected = Array.from({ length: ROUNDS }, (_, i) => [`idle_timeout ${i + 1}/${i + 1}`, `peer_reset ${i + 1}/${i + 1}`, `tunnel idle_timeout ${i + 1}/${i + 1}`]).flat();
    expect(seen).toEqual(expected);
  }, 60_000);

  it('refuses connections past maxConnections and serves the rest', async () => {
    const upstream = await taggedEcho('c');
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
routes:
  - { name: capped, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port}, maxConnections: 2 }
`);
    const a = await connect(port);
    const b = await connect(port);
    cleanups.push(() => a.destroy(), () => b.destroy());
    expect(await ask(a, '1')).toBe('c:1');
    expect(await ask(b, '2')).toBe('c:2');
    const c = await connect(port);
    await until(() => c.closed || c.readableEnded, 5_000, 'third client refused');
    expect(sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'capped', reason: 'max_connections' })).toBe(1);
  });

  it("keeps the proxy's memory bounded when the client never reads", async () => {
    // The upstream pushes as fast as it can; the client reads nothing. Backpressure must
    // stop reading the upstream once the socket buffers are full.
    let pushed = 0;
    let stopPushing = false;
    const upstream = await listen0((socket) => {
      const chunk = Buffer.alloc(64 * 1024, 7);
      const pump = (): void => {
        while (!stopPushing && pushed < 512 * 1024 * 1024) {
          pushed += chunk.length;
          if (!socket.write(chunk)) return void socket.once('drain', pump);
        }
      };
      pump();
    });
    cleanups.push(() => upstream.close());
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
routes:
  - { name: slow, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port} }
`);
    const rss = async (): Promise<number> => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_process_resident_memory_bytes');
    const baseline = await rss();
    const client = net.connect({ port, host: '127.0.0.1' });
    client.pause();
    cleanups.push(() => client.destroy());
    // Stalled = no write taken for 500 ms. How soon that is depends on the machine's load,
    // not on the proxy: wait for it (bounded) rather than assume it after a fixed time.
    await until(
      async () => {
        const before = pushed;
        await sleep(500);
        return pushed === before;
      },
      20_000,
      'the upstream stalled behind the non-reading client',
    );
    const stalledAt = pushed;
    await sleep(500);
    const growth = (await rss()) - baseline;
    stopPushing = true;
    // The upstream got stuck at roughly the sum of the socket buffers, not at 512 MiB.
    expect(stalledAt).toBeLessThan(64 * 1024 * 1024);
    expect(pushed).toBe(stalledAt);
    expect(growth).toBeLessThan(48 * 1024 * 1024);
    console.log(`slow reader: upstream stalled after ${(stalledAt / 1024 / 1024).toFixed(1)} MiB; proxy RSS grew ${(growth / 1024 / 1024).toFixed(1)} MiB`);
  });
});

describe('reload and drain', () => {
  it('SIGHUP adds, changes and removes routes without touching live connections; a bad file keeps the old config', async () => {
    const a = await taggedEcho('a');
    const b = await taggedEcho('b');
    const p1 = await freePort();
    const p2 = await freePort();
    const yaml1 = `
admin: { listen: "{{admin}}" }
routes:
  - { name: one, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${a.port} }
`;
    const proxy = await run(yaml1);
    const live = await connect(p1);
    cleanups.push(() => live.destroy());
    expect(await ask(live, 'x')).toBe('a:x');

    // Change route one's upstream and add route two.
    await proxy.reload(`
admin: { listen: "{{admin}}" }
routes:
  - { name: one, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${b.port} }
  - { name: two, listen: 127.0.0.1:${p2}, upstream: 127.0.0.1:${a.port} }
`);
    await until(() => proxy.logs.some((l) => l.msg === 'configuration reloaded'), 5_000, 'reload logged');
    expect(await ask(live, 'y')).toBe('a:y'); // the live connection still goes to the old upstream
    const fresh = await connect(p1);
    cleanups.push(() => fresh.destroy());
    expect(await ask(fresh, 'z')).toBe('b:z');
    const second = await connect(p2);
    cleanups.push(() => second.destroy());
    expect(await ask(second, 'w')).toBe('a:w');

    // A bad file is rejected with file:line:col and the running config stays.
    await proxy.reload(`
admin: { listen: "{{admin}}" }
routes:
  - { name: one, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${b.port}, idleTimeout: 20 }
`);
    await until(() => proxy.logs.some((l) => l.msg === 'reload rejected: keeping the running configuration'), 5_000, 'reload rejected');
    const rejected = proxy.logs.find((l) => l.msg === 'reload rejected: keeping the running configuration')!;
    expect(JSON.stringify(rejected.errors)).toMatch(/config\.yaml:\d+:\d+ routes\[0\]\.idleTimeout/);
    const stillTwo = await connect(p2);
    cleanups.push(() => stillTwo.destroy());
    expect(await ask(stillTwo, 'v')).toBe('a:v');

    // Remove route two: its listener closes, its live connection goes on.
    await proxy.reload(yaml1);
    await until(() => refused(p2), 5_000, 'route two listener closed');
    expect(await ask(second, 'still')).toBe('a:still');
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_config_reloads_total', { result: 'ok' })).toBe(2);
    expect(sample(metrics, 'keepalive_proxy_config_reloads_total', { result: 'error' })).toBe(1);
  });

  // A client whose upstream connect is still in flight belongs to that client, not to the
  // route's pool of spares: a reload that replaces the pool (route changed) or retires the
  // route (removed) lets the connect finish and the client be served. It used to be cut,
  // counted as if the client had left, and without an upstream connection of its own.
  it.each(['changed', 'removed'] as const)('a client whose upstream is still connecting at SIGHUP is served when its route is %s', async (change) => {
    const upstream = await fullBacklogListener();
    cleanups.push(() => upstream.stop());
    const [slowPort, otherPort] = [await freePort(), await freePort()];
    const config = (routes: string): string => `admin: { listen: "{{admin}}" }\nroutes:\n${routes}`;
    const route = (name: string, port: number, extra = ''): string =>
      `  - { name: ${name}, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port}, connectTimeout: 20s${extra} }\n`;
    const proxy = await run(config(route('slow', slowPort)));
    const metrics = async (): Promise<Map<string, number>> => parseMetrics(await proxy.metrics());

    const client = await connect(slowPort);
    client.on('error', () => {});
    cleanups.push(() => client.destroy());
    client.write('hello');
    // Taken by the proxy, whose connect now waits on the full accept queue.
    await until(async () => sample(await metrics(), 'keepalive_proxy_connections_active', { route: 'slow' }) === 1, 5_000, 'the client taken');
    await proxy.reload(config(change === 'changed' ? route('slow', slowPort, ', idleTimeout: 5m') : route('other', otherPort)));
    await until(async () => sample(await metrics(), 'keepalive_proxy_config_reloads_total', { result: 'ok' }) === 1, 5_000, 'the reload applied');
    expect(sample(await metrics(), 'keepalive_proxy_connections_active', { route: 'slow' })).toBe(1);

    upstream.acceptNow();
    expect((await readBytes(client, 5, 15_000)).toString()).toBe('hello');
    const served = await metrics();
    expect(sample(served, 'keepalive_proxy_upstream_connects_total', { route: 'slow', result: 'ok' })).toBe(1);
    expect(sample(served, 'keepalive_proxy_evictions_total', { route: 'slow', reason: 'peer_closed' })).toBe(0);
  }, 30_000);

  it('SIGTERM stops accepting, lets live connections finish, and exits 0', async () => {
    const a = await taggedEcho('d');
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
shutdownTimeout: 20s
routes:
  - { name: d, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${a.port} }
`);
    const live = await connect(port);
    expect(await ask(live, 'before')).toBe('d:before');
    const stopping = proxy.stop('SIGTERM', 30_000);
    await until(() => proxy.logs.some((l) => l.msg === 'shutting down: draining live connections'), 5_000, 'drain started');
    // New connections are refused...
    await until(() => refused(port), 5_000, 'listener closed');
    // ...the live one still works, and the process exits once it ends.
    expect(await ask(live, 'during')).toBe('d:during');
    live.end();
    expect(await stopping).toBe(0);
  });

  it('closes what is left at shutdownTimeout and still exits 0', async () => {
    const a = await taggedEcho('t');
    const port = await freePort();
    const proxy = await run(`
admin: { listen: "{{admin}}" }
shutdownTimeout: 500ms
routes:
  - { name: t, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${a.port} }
`);
    const live = await connect(port);
    cleanups.push(() => live.destroy());
    expect(await ask(live, 'x')).toBe('t:x');
    const started = Date.now();
    expect(await proxy.stop('SIGTERM', 10_000)).toBe(0);
    expect(Date.now() - started).toBeLessThan(5_000);
    await until(() => live.closed || live.readableEnded, 5_000, 'live connection closed at the deadline');
  });
});
