import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect, delayingRelay, freePort, readBytes } from '../helpers/net.js';
import { makePki, type Pki } from '../helpers/pki.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { until } from '../helpers/wait.js';
import { warmVsCold } from '../helpers/warm-vs-cold.js';

// TLS to the database (issue 10): plaintext clients on loopback reach TLS-only PostgreSQL
// and Redis through the proxy, which speaks TLS upstream and keeps its heartbeats because
// it sees the protocol; clientTls terminates the clients' own TLS. Real servers, real
// clients, certificates made with openssl at test time.

const run = promisify(execFile);
const PSQL = '/usr/bin/psql';
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
const GSSENC_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);

let pki: Pki;
let postgres: RunningServer;
let redis: RunningServer;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

beforeAll(async () => {
  pki = makePki();
  const tlsOnly = { cert: pki.server.cert, key: pki.server.key, ca: pki.ca };
  [postgres, redis] = await Promise.all([startPostgres({ tlsOnly }), startRedis({ tlsOnly })]);
}, 120_000);
afterAll(async () => {
  await Promise.all([postgres?.stop(), redis?.stop()]);
  pki?.cleanup();
});
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function proxyWith(route: string): Promise<{ proxy: RunningProxy; port: number }> {
  const port = await freePort();
  const proxy = await startProxy({
    yaml: `
admin: { listen: "{{admin}}" }
routes:
  - listen: 127.0.0.1:${port}
${route.replace(/^/gm, '    ').replace(/^ {4}/, '    ')}
`,
  });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return { proxy, port };
}

async function metric(proxy: RunningProxy, name: string, labels: Record<string, string>): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), `keepalive_proxy_${name}`, labels);
}

function pgRoute(extra = '', mode = 'verify-full', upstreamPort = postgres.port): string {
  return `name: pg
protocol: postgres
upstream: 127.0.0.1:${upstreamPort}
upstreamTls: { mode: ${mode}, ca: ${pki.ca} }
${extra}`;
}

async function pgQuery(port: number, sql: string): Promise<Array<Record<string, unknown>>> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', ssl: false, connectionTimeoutMillis: 5_000 });
  client.on('error', () => {});
  await client.connect();
  try {
    return (await client.query(sql)).rows as Array<Record<string, unknown>>;
  } finally {
    await client.end().catch(() => {});
  }
}

describe('postgres: plaintext client, TLS-only server', () => {
  it('the server refuses a plaintext client itself (the fixture is what it claims)', async () => {
    await expect(pgQuery(postgres.port, 'SELECT 1')).rejects.toThrow(/no pg_hba.conf entry|rejects connection|SSL off/);
  });

  it('pg and psql with sslmode=disable reach it; the session is encrypted; heartbeats are answered', async () => {
    const { proxy, port } = await proxyWith(pgRoute('heartbeat: { every: 1s, timeout: 3s }'));
    const rows = await pgQuery(port, 'SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
    expect(rows[0]).toMatchObject({ ssl: true });
    expect(String(rows[0]!['version'])).toMatch(/^TLSv1\.[23]$/);
    const psql = await run(PSQL, [`host=127.0.0.1 port=${port} user=postgres dbname=postgres sslmode=disable`, '-tAc', 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'], { timeout: 10_000 });
    expect(psql.stdout.trim()).toBe('t');

    // An idle session is probed through TLS, and its replies never reach the client.
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', ssl: false });
    cleanups.push(() => client.end().catch(() => {}));
    await client.connect();
    await until(async () => (await metric(proxy, 'heartbeats_total', { route: 'pg', result: 'ok' })) >= 2, 15_000, 'two answered heartbeats');
    expect((await client.query('SELECT 41 + 1 AS n')).rows[0]).toEqual({ n: 42 });
    const rows2 = await proxy.connections();
    const mine = rows2.find((row) => row['route'] === 'pg') as { tls: { client: unknown; upstream: { version: string; cipher: string } } };
    expect(mine.tls.client).toBeNull();
    expect(mine.tls.upstream.version).toMatch(/^TLSv1\.[23]$/);
    expect(mine.tls.upstream.cipher).toBeTruthy();
    expect(await metric(proxy, 'tls_handshakes_total', { route: 'pg', side: 'upstream' })).toBeGreaterThanOrEqual(3);
    expect(await metric(proxy, 'heartbeats_total', { route: 'pg', result: 'unsupported' })).toBe(0);
  }, 60_000);

  it('a client SSLRequest and GSSENCRequest get N, and the client goes on in plaintext', async () => {
    const { port } = await proxyWith(pgRoute());
    const socket = await connect(port);
    cleanups.push(() => socket.destroy());
    socket.write(GSSENC_REQUEST);
    expect((await readBytes(socket, 1)).toString()).toBe('N');
    socket.write(SSL_REQUEST);
    expect((await readBytes(socket, 1)).toString()).toBe('N');
    // psql's sslmode=prefer takes the N and carries on.
    const psql = await run(PSQL, [`host=127.0.0.1 port=${port} user=postgres dbname=postgres sslmode=prefer`, '-tAc', 'SELECT 7'], { timeout: 10_000 });
    expect(psql.stdout.trim()).toBe('7');
  }, 30_000);

  it('a CancelRequest reaches the server through TLS and cancels the query', async () => {
    const { port } = await proxyWith(pgRoute());
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', ssl: false });
    cleanups.push(() => client.end().catch(() => {}));
    await client.connect();
    const slow = client.query('SELECT pg_sleep(30)');
    slow.catch(() => {});
    const { processID, secretKey } = client as unknown as { processID: number; secretKey: number };
    // A cancel that arrives before the query runs cancels nothing: wait until the server
    // itself reports the backend busy with it.
    const running = `SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${processID} AND state = 'active' AND query LIKE 'SELECT pg_sleep(30)%'`;
    await until(async () => (await pgQuery(port, running))[0]?.['n'] === 1, 10_000, 'the query running on the server');
    // A cancel is a new connection carrying a CancelRequest (process id and secret key).
    const raw = await connect(port);
    const cancel = Buffer.alloc(16);
    cancel.writeUInt32BE(16, 0);
    cancel.writeUInt32BE(80877102, 4);
    cancel.writeInt32BE(processID, 8);
    cancel.writeInt32BE(secretKey, 12);
    raw.end(cancel);
    await expect(slow).rejects.toThrow(/cancel/i);
  }, 30_000);

  it('verify-full against a certificate for another name fails with tls_error and names the cause', async () => {
    const other = await startPostgres({ tlsOnly: { cert: pki.otherName.cert, key: pki.otherName.key, ca: pki.ca } });
    cleanups.push(() => other.stop());
    const { proxy, port } = await proxyWith(pgRoute('', 'verify-full', other.port));
    await expect(pgQuery(port, 'SELECT 1')).rejects.toThrow();
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'pg', reason: 'tls_error' })) >= 1, 5_000, 'tls_error eviction');
    await proxy.logged((line) => line['reason'] === 'tls_error' && line['cause'] === 'name mismatch');
    // verify-ca checks the chain only: the same server is accepted.
    const { port: caPort } = await proxyWith(pgRoute('', 'verify-ca', other.port));
    expect(await pgQuery(caPort, 'SELECT 1 AS one')).toEqual([{ one: 1 }]);
  }, 90_000);

  it('an unknown CA fails verify-ca and require-with-ca (libpq rule); require without ca encrypts anyway', async () => {
    const self = await startPostgres({ tlsOnly: { cert: pki.selfSigned.cert, key: pki.selfSigned.key, ca: pki.ca } });
    cleanups.push(() => self.stop());
    for (const mode of ['verify-ca', 'require']) {
      const { proxy, port } = await proxyWith(pgRoute('', mode, self.port));
      await expect(pgQuery(port, 'SELECT 1')).rejects.toThrow();
      await until(async () => (await metric(proxy, 'evictions_total', { route: 'pg', reason: 'tls_error' })) >= 1, 5_000, `tls_error in ${mode}`);
      // The line reaches the test through a pipe, possibly after the metric is scraped.
      await until(() => proxy.logs.some((line) => line['cause'] === 'unknown CA'), 5_000, `the unknown CA named in ${mode}`);
    }
    const { port } = await proxyWith(`name: pg
protocol: postgres
upstream: 127.0.0.1:${self.port}
upstreamTls: { mode: require }`);
    expect(await pgQuery(port, 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).toEqual([{ ssl: true }]);
  }, 90_000);

  it('a server that answers N is refused in every TLS mode (no silent plaintext)', async () => {
    const plain = await startPostgres();
    cleanups.push(() => plain.stop());
    // ssl is off on a plain server: it answers N to SSLRequest.
    const { proxy, port } = await proxyWith(`name: pg
protocol: postgres
upstream: 127.0.0.1:${plain.port}
upstreamTls: { mode: require }`);
    await expect(pgQuery(port, 'SELECT 1')).rejects.toThrow();
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'pg', reason: 'tls_error' })) >= 1, 5_000, 'tls_error');
  }, 60_000);

  it('client TLS: psql sslmode=verify-full against the proxy certificate, heartbeats still counted', async () => {
    const { proxy, port } = await proxyWith(pgRoute(`clientTls: { cert: ${pki.server.cert}, key: ${pki.server.key} }
heartbeat: { every: 1s, timeout: 3s }`));
    const conninfo = `host=localhost port=${port} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${pki.ca}`;
    const query = "SELECT pg_sleep(3), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    const psql = await run(PSQL, [conninfo, '-tAc', query], { timeout: 20_000 });
    expect(psql.stdout.trim()).toBe('|t');
    expect(await metric(proxy, 'tls_handshakes_total', { route: 'pg', side: 'client' })).toBeGreaterThanOrEqual(1);
    // An idle client session over TLS on both sides is heartbeated.
    const client = new pg.Client({ host: 'localhost', port, user: 'postgres', database: 'postgres', ssl: { ca: readFileSync(pki.ca) } });
    cleanups.push(() => client.end().catch(() => {}));
    await client.connect();
    const before = await metric(proxy, 'heartbeats_total', { route: 'pg', result: 'ok' });
    await until(async () => (await metric(proxy, 'heartbeats_total', { route: 'pg', result: 'ok' })) >= before + 2, 15_000, 'heartbeats');
    expect((await client.query('SELECT 5 AS n')).rows).toEqual([{ n: 5 }]);
    const row = (await proxy.connections()).find((c) => c['route'] === 'pg') as { tls: { client: { version: string } } };
    expect(row.tls.client.version).toMatch(/^TLSv1\.[23]$/);
  }, 60_000);
});

describe('redis: plaintext client, TLS-only server', () => {
  it('ioredis and redis-cli in plaintext through the proxy, heartbeats answered', async () => {
    const { proxy, port } = await proxyWith(`name: rd
protocol: redis
upstream: 127.0.0.1:${redis.port}
upstreamTls: { mode: verify-full, ca: ${pki.ca} }
heartbeat: { every: 1s, timeout: 3s }`);
    const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    cleanups.push(() => client.disconnect());
    await client.connect();
    await client.set('k', 'over tls');
    expect(await client.get('k')).toBe('over tls');
    const cli = await run('/usr/bin/redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'GET', 'k'], { timeout: 10_000 });
    expect(cli.stdout.trim()).toBe('over tls');
    await until(async () => (await metric(proxy, 'heartbeats_total', { route: 'rd', result: 'ok' })) >= 2, 15_000, 'heartbeats');
    expect(await client.get('k')).toBe('over tls');
  }, 60_000);

  it('a warm spare is TLS-handshaken before the client comes, and saves the round trips', async () => {
    // 20 ms each way on the path, as to a database in another zone.
    const relay = await delayingRelay(redis.port, 20, 20);
    cleanups.push(() => relay.close());
    const route = (warm: number): string => `name: rd
protocol: redis
upstream: 127.0.0.1:${relay.port}
upstreamTls: { mode: verify-ca, ca: ${pki.ca} }
pool: { warm: ${warm} }`;
    const timed = async (port: number): Promise<number> => {
      const started = performance.now();
      const socket = await connect(port);
      socket.write('*1\r\n$4\r\nPING\r\n');
      expect((await readBytes(socket, 7, 10_000)).toString()).toBe('+PONG\r\n');
      socket.destroy();
      return performance.now() - started;
    };
    const cold = await proxyWith(route(0));
    const warm = await proxyWith(route(2));
    await until(async () => (await metric(warm.proxy, 'pool_idle', { route: 'rd' })) === 2, 10_000, 'two TLS spares');
    const { coldMs, warmMs } = await warmVsCold({
      rounds: 5,
      timed,
      coldPort: cold.port,
      warmPort: warm.port,
      refilled: async () => (await metric(warm.proxy, 'pool_idle', { route: 'rd' })) === 2,
    });
    console.log(`first PING through a 20 ms-per-direction path, median of 5: cold (TCP + TLS + PING) ${coldMs.toFixed(1)} ms, warm spare ${warmMs.toFixed(1)} ms`);
    expect(await metric(warm.proxy, 'reuse_total', { route: 'rd' })).toBe(5);
    // A generous bound: the warm hand-off skips at least the TCP and TLS round trips.
    expect(warmMs).toBeLessThan(coldMs);
    // The later dials resume the TLS session of the first.
    await until(async () => (await metric(warm.proxy, 'tls_handshakes_total', { route: 'rd', side: 'upstream', resumed: 'true' })) >= 1, 10_000, 'a resumed handshake');
  }, 60_000);
});

describe('redis: warm TLS spares whose server goes away', () => {
  it('spares closed by a restarting TLS-only server are evicted and replaced, never handed to a client', async () => {
    let server = await startRedis({ tlsOnly: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca } });
    cleanups.push(() => server.stop());
    const { proxy, port } = await proxyWith(`name: rd
protocol: redis
upstream: 127.0.0.1:${server.port}
upstreamTls: { mode: verify-full, ca: ${pki.ca} }
pool: { warm: 3 }`);
    const idle = (): Promise<number> => metric(proxy, 'pool_idle', { route: 'rd' });
    const runId = async (): Promise<string> => {
      const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      client.on('error', () => {});
      try {
        await client.connect();
        return /run_id:(\w+)/.exec(await client.info('server'))![1]!;
      } finally {
        client.disconnect();
      }
    };
    await until(async () => (await idle()) === 3, 10_000, 'three TLS spares');
    const first = await runId();
    await until(async () => (await idle()) === 3, 10_000, 'the pool refilled');
    // That client's session ends as peer_closed too, counted once the proxy has closed both of its
    // sockets, maybe after the client left: counted before the baseline, not among the spares.
    await until(async () => (await metric(proxy, 'connections_active', { route: 'rd' })) === 0, 10_000, 'the first session ended');
    const closedBefore = await metric(proxy, 'evictions_total', { route: 'rd', reason: 'peer_closed' });

    // The server restarts on the same port: each parked TLS spare sees it close.
    const samePort = server.port;
    await server.stop();
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'rd', reason: 'peer_closed' })) >= closedBefore + 3, 10_000, 'the three spares evicted');
    expect(await idle()).toBe(0);
    server = await startRedis({ tlsOnly: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca }, port: samePort });
    await until(async () => (await idle()) === 3, 20_000, 'three new TLS spares after the restart');

    // Every client from here on is served by a new spare, on the new server.
    const reusedBefore = await metric(proxy, 'reuse_total', { route: 'rd' });
    for (let i = 0; i < 4; i++) {
      const id = await runId();
      expect(id).not.toBe(first);
      await until(async () => (await idle()) === 3, 10_000, 'the pool refilled');
    }
    expect(await metric(proxy, 'reuse_total', { route: 'rd' })).toBe(reusedBefore + 4);
    expect(proxy.logs.some((line) => line['reason'] === 'tls_error')).toBe(false);
  }, 90_000);
});

describe('redis and tcp with clientTls: TLS from the first byte on both sides', () => {
  it('a TLS client reaches the TLS server through two separate sessions', async () => {
    const { proxy, port } = await proxyWith(`name: rd
protocol: redis
upstream: 127.0.0.1:${redis.port}
upstreamTls: { mode: verify-full, ca: ${pki.ca} }
clientTls: { cert: ${pki.server.cert}, key: ${pki.server.key} }`);
    const client = new Redis({ host: '127.0.0.1', port, tls: { ca: [readFileSync(pki.ca)] }, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    cleanups.push(() => client.disconnect());
    await client.connect();
    expect(await client.ping()).toBe('PONG');
    // A plaintext client on a clientTls route fails the handshake: tls_error, nothing forwarded.
    const plain = await connect(port);
    const answered: Buffer[] = [];
    plain.on('data', (chunk: Buffer) => answered.push(chunk));
    plain.write('*1\r\n$4\r\nPING\r\n');
    const closedBy = new Promise<string>((resolve) => {
      plain.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
      plain.once('end', () => resolve('FIN'));
    });
    // Reset, not a FIN a half-open client could sit on.
    expect(await closedBy).toBe('ECONNRESET');
    expect(Buffer.concat(answered).toString()).not.toContain('PONG');
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'rd', reason: 'tls_error' })) >= 1, 5_000, 'tls_error');
  }, 30_000);
});
