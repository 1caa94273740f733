import net from 'node:net';
import mysql from 'mysql2/promise';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { MARIADB_USER, startMariadb } from '../helpers/servers.js';
import { once, until } from '../helpers/wait.js';

// The warm pool of a TCP-family route: pre-dialled spares handed to clients at once,
// refilled in the background (with backoff while the upstream is down), evicted at
// maxIdle or when found dead, and the bytes a server sends first kept for the client.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function gauge(proxy: RunningProxy, name: string, route = 'warm'): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), `keepalive_proxy_${name}`, { route });
}

async function warmProxy(upstreamPort: number, pool: string, protocol = 'tcp'): Promise<{ proxy: RunningProxy; port: number }> {
  const port = await freePort();
  const proxy = await startProxy({
    yaml: `
admin: { listen: "{{admin}}" }
routes:
  - { name: warm, protocol: ${protocol}, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstreamPort}, pool: ${pool} }
`,
  });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return { proxy, port };
}

/** An upstream that greets every connection first (as MySQL does), then echoes. */
async function greetingEcho(): Promise<Awaited<ReturnType<typeof listen0>> & { accepted: () => number }> {
  let accepted = 0;
  const server = await listen0((socket) => {
    accepted++;
    socket.write(`hello#${accepted}\n`);
    socket.on('data', (c: Buffer) => socket.write(c));
    socket.on('end', () => socket.end());
  });
  cleanups.push(() => server.close());
  return Object.assign(server, { accepted: () => accepted });
}

describe('warm pool', () => {
  it('pre-connects, hands a spare over with its greeting, counts reuse and refills', async () => {
    const upstream = await greetingEcho();
    const { proxy, port } = await warmProxy(upstream.port, '{ warm: 2, maxIdle: 1m }');
    await until(async () => (await gauge(proxy, 'pool_idle')) === 2, 5_000, 'two spares');
    expect(upstream.accepted()).toBe(2);

    const client = await connect(port);
    cleanups.push(() => client.destroy());
    // The greeting the server sent while the socket was parked reaches the client first.
    const greeting = (await readBytes(client, 'hello#N\n'.length)).toString();
    expect(greeting).toMatch(/^hello#[12]\n$/);
    client.write('ping');
    expect((await readBytes(client, 4)).toString()).toBe('ping');

    await until(async () => (await gauge(proxy, 'pool_idle')) === 2, 5_000, 'refilled');
    expect(upstream.accepted()).toBe(3);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_reuse_total', { route: 'warm' })).toBe(1);
    expect(sample(metrics, 'keepalive_proxy_pool_active', { route: 'warm' })).toBe(1);
    const rows = await proxy.connections();
    expect(rows[0]?.reused).toBe(true);
  });

  it('evicts spares at maxIdle and replaces them', async () => {
    const upstream = await greetingEcho();
    const { proxy } = await warmProxy(upstream.port, '{ warm: 1, maxIdle: 500ms }');
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'warm', reason: 'idle_timeout' }) >= 2, 5_000, 'two maxIdle evictions');
    await until(async () => (await gauge(proxy, 'pool_idle')) === 1, 5_000, 'spare replaced');
    expect(upstream.accepted()).toBeGreaterThanOrEqual(3);
  });

  it('evicts a spare the upstream closed, backs off while it is down, refills when it is back', async () => {
    const port = await freePort();
    const sockets = new Set<net.Socket>();
    const start = async (): Promise<net.Server> => {
      const server = net.createServer((s) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {});
      });
      server.listen(port, '127.0.0.1');
      await once(server, 'listening', 5_000);
      return server;
    };
    let server = await start();
    cleanups.push(() => {
      for (const s of sockets) s.destroy();
      server.close();
    });
    const { proxy } = await warmProxy(port, '{ warm: 2, maxIdle: 1m }');
    await until(async () => (await gauge(proxy, 'pool_idle')) === 2, 5_000, 'two spares');

    // The upstream goes away: both spares see EOF and are evicted as peer_closed.
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });
    await until(async () => (await gauge(proxy, 'pool_idle')) === 0, 5_000, 'spares evicted');
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'warm', reason: 'peer_closed' }) === 2, 5_000, 'peer_closed counted');
    // While it is down, refills fail with backoff: a handful of attempts in 1.5 s, not a storm.
    // The window bounds the count; the first failure is waited for, not assumed inside it.
    await new Promise((r) => setTimeout(r, 1_500));
    const failures = await until(
      async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_upstream_connects_total', { route: 'warm', result: 'error' }) || null,
      5_000,
      'a failed refill',
    );
    expect(failures).toBeGreaterThan(0);
    expect(failures).toBeLessThan(30);

    server = await start();
    await until(async () => (await gauge(proxy, 'pool_idle')) === 2, 10_000, 'refilled after the upstream came back');
  });

  it('backs off from an upstream that accepts and closes at once (a server at its client limit): a bounded number of dials, folded logs', async () => {
    let accepted = 0;
    // Redis at maxclients, MySQL "Too many connections": the connect succeeds, the spare dies at once.
    const full = await listen0((socket) => {
      accepted++;
      socket.end('-ERR max number of clients reached\r\n');
    });
    cleanups.push(() => full.close());
    const { proxy } = await warmProxy(full.port, '{ warm: 20, maxIdle: 1m }');
    const WINDOW_MS = 5_000;
    await new Promise((r) => setTimeout(r, WINDOW_MS));
    const dials = sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_upstream_connects_total', { route: 'warm', result: 'ok' });
    const refillLines = proxy.logs.filter((l) => l.msg === 'warm pool refill failed; retrying with backoff').length;
    console.log(`accept-and-close upstream, warm 20: ${accepted} accepts, ${dials} dials, ${refillLines} refill log lines in ${WINDOW_MS} ms`);
    // With backoff from 100 ms doubling once per round, 5 s hold at most about 7 rounds of 20;
    // without it the shared tick (4/s) would redial all 20 every tick: 400.
    expect(dials).toBeLessThanOrEqual(8 * 20);
    expect(refillLines).toBeLessThanOrEqual(2 + WINDOW_MS / 1_000);
    await proxy.logged((l) => l.result === 'closed');
  });

  it('doubles the backoff once per refill round, not once per failed dial: a wide pool is back soon after its upstream', async () => {
    const port = await freePort();
    const { proxy } = await warmProxy(port, '{ warm: 20, maxIdle: 1m }');
    // Down for 2 s: the rounds back off 100, 200, 400, 800 ms (not 30 s after the first round of 20 failures).
    await new Promise((r) => setTimeout(r, 2_000));
    const up = net.createServer((s) => s.on('error', () => {}));
    up.listen(port, '127.0.0.1');
    await once(up, 'listening', 5_000);
    const sockets = new Set<net.Socket>();
    up.on('connection', (s) => sockets.add(s));
    cleanups.push(() => {
      for (const s of sockets) s.destroy();
      up.close();
    });
    const startedAt = Date.now();
    await until(async () => (await gauge(proxy, 'pool_idle')) === 20, 8_000, 'refilled within a few seconds of the upstream coming back');
    console.log(`refilled 20 spares ${Date.now() - startedAt} ms after the upstream came back`);
  });

  it('hands MariaDB a pooled socket whose greeting reaches a real mysql2 client', async () => {
    const mariadb = await startMariadb();
    cleanups.push(() => mariadb.stop());
    const { proxy, port } = await warmProxy(mariadb.port, '{ warm: 1, maxIdle: 5s }', 'mysql');
    await until(async () => (await gauge(proxy, 'pool_idle')) === 1, 10_000, 'one spare');
    const started = performance.now();
    const client = await mysql.createConnection({ host: '127.0.0.1', port, user: MARIADB_USER });
    const handshakeMs = performance.now() - started;
    cleanups.push(() => client.end().catch(() => {}));
    const [rows] = await client.query('SELECT 40 + 2 AS answer');
    expect(rows).toEqual([{ answer: 42 }]);
    expect(sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_reuse_total', { route: 'warm' })).toBe(1);
    console.log(`mysql2 handshake through a warm spare: ${handshakeMs.toFixed(1)} ms`);
  });
});
