import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseMetrics, sample, startOneRoute, type RunningProxy } from '../helpers/proxy.js';
import { MARIADB_USER, startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

// Heartbeats and the server's own guards, through the real CLI against real servers: by
// default no probe goes out inside a transaction block, so PostgreSQL's
// idle_in_transaction_session_timeout and MariaDB's idle_transaction_timeout still fire
// (heartbeat.inTransaction: true keeps such sessions alive); heartbeat.maxIdle lets a
// server idle timeout set above it apply; a probe the server refuses (Redis ACL without
// +ping) counts as result="error" and evicts nothing.

const EVERY_MS = 300;

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function proxyFor(protocol: string, upstreamPort: number, heartbeatExtra = ''): Promise<{ proxy: RunningProxy; port: number }> {
  const routeLines = `    heartbeat: { every: ${EVERY_MS}ms, timeout: 2s${heartbeatExtra} }`;
  const started = await startOneRoute({ name: 'g', protocol, upstreamPort, routeLines });
  cleanups.push(() => started.proxy.stop('SIGKILL'));
  return started;
}

async function heartbeats(proxy: RunningProxy, result: string): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_heartbeats_total', { route: 'g', result });
}

describe('postgres: idle_in_transaction_session_timeout', () => {
  let postgres: RunningServer;
  beforeAll(async () => {
    postgres = await startPostgres();
  });
  afterAll(async () => {
    await postgres?.stop();
  });

  async function idleInTransaction(heartbeatExtra: string): Promise<{ proxy: RunningProxy; outcome: unknown }> {
    const { proxy, port } = await proxyFor('postgres', postgres.port, heartbeatExtra);
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    client.on('error', () => {});
    cleanups.push(() => client.end().catch(() => {}));
    await client.connect();
    await client.query("SET idle_in_transaction_session_timeout = '2s'");
    await until(async () => (await heartbeats(proxy, 'ok')) >= 2, 10_000, 'heartbeats while idle outside a transaction');
    await client.query('BEGIN');
    await sleep(4_500);
    const outcome = await client.query('SELECT 1 AS one').then((r) => r.rows, (error: Error) => error);
    return { proxy, outcome };
  }

  it('by default sends no Sync inside BEGIN: the server ends the session', async () => {
    const { proxy, outcome } = await idleInTransaction('');
    expect(outcome).toBeInstanceOf(Error);
    expect(String((outcome as Error).message)).toMatch(/idle-in-transaction|terminat|connection error/i);
    expect(await heartbeats(proxy, 'timeout')).toBe(0);
  });

  it('with heartbeat.inTransaction: true the session survives', async () => {
    const { proxy, outcome } = await idleInTransaction(', inTransaction: true');
    expect(outcome).toEqual([{ one: 1 }]);
    expect(await heartbeats(proxy, 'ok')).toBeGreaterThanOrEqual(8);
  });
});

describe('mariadb: no COM_PING inside a transaction', () => {
  let mariadb: RunningServer;
  beforeAll(async () => {
    mariadb = await startMariadb();
  });
  afterAll(async () => {
    await mariadb?.stop();
  });

  async function idleInTransaction(heartbeatExtra: string): Promise<{ proxy: RunningProxy; outcome: unknown; during: number }> {
    const { proxy, port } = await proxyFor('mysql', mariadb.port, heartbeatExtra);
    const client = await mysql.createConnection({ host: '127.0.0.1', port, user: MARIADB_USER });
    client.on('error', () => {});
    cleanups.push(() => client.end().catch(() => {}));
    // MariaDB's guard for a transaction left open (seconds).
    await client.query('SET SESSION idle_transaction_timeout = 2');
    await until(async () => (await heartbeats(proxy, 'ok')) >= 2, 10_000, 'heartbeats while idle outside a transaction');
    await client.query('START TRANSACTION');
    const before = await heartbeats(proxy, 'ok');
    await sleep(3_500);
    const during = (await heartbeats(proxy, 'ok')) - before;
    const outcome = await client.query('SELECT 1 AS one').then(([rows]) => rows, (error: Error) => error);
    return { proxy, outcome, during };
  }

  it('by default: none while SERVER_STATUS_IN_TRANS is set, and the server ends the idle transaction', async () => {
    const { outcome, during } = await idleInTransaction('');
    expect(during).toBe(0);
    expect(outcome).toBeInstanceOf(Error);
  });

  it('with heartbeat.inTransaction: true the transaction is kept alive', async () => {
    const { outcome, during } = await idleInTransaction(', inTransaction: true');
    expect(during).toBeGreaterThanOrEqual(4);
    expect(outcome).toEqual([{ one: 1 }]);
  });
});

describe('redis: heartbeat.maxIdle and refused probes', () => {
  let redis: RunningServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  async function admin(): Promise<Redis> {
    const direct = new Redis({ port: redis.port, host: '127.0.0.1', maxRetriesPerRequest: 0 });
    cleanups.push(() => direct.disconnect());
    return direct;
  }

  async function idleClient(port: number): Promise<{ client: Redis; closed: () => boolean }> {
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
    client.on('error', () => {});
    cleanups.push(() => client.disconnect());
    let closed = false;
    client.on('close', () => (closed = true));
    await client.connect();
    expect(await client.ping()).toBe('PONG');
    return { client, closed: () => closed };
  }

  it('maxIdle 1s: heartbeats stop, so the server timeout (2 s) closes the idle client; without maxIdle it survives', async () => {
    const direct = await admin();
    await direct.config('SET', 'timeout', '2');
    cleanups.push(() => direct.config('SET', 'timeout', '0'));
    const limited = await proxyFor('redis', redis.port, ', maxIdle: 1s');
    const unlimited = await proxyFor('redis', redis.port);
    const a = await idleClient(limited.port);
    const b = await idleClient(unlimited.port);
    await until(() => a.closed(), 10_000, 'the server closed the client idle past maxIdle');
    await sleep(1_000);
    expect(b.closed()).toBe(false);
    expect(await b.client.ping()).toBe('PONG');
    expect(await heartbeats(unlimited.proxy, 'ok')).toBeGreaterThanOrEqual(5);
  });

  it('an ACL user without +ping: heartbeats count as error, nothing is evicted, the client works', async () => {
    const direct = await admin();
    await direct.call('ACL', 'SETUSER', 'noping', 'on', 'nopass', '~*', '&*', '+@all', '-ping');
    cleanups.push(() => direct.call('ACL', 'DELUSER', 'noping'));
    const { proxy, port } = await proxyFor('redis', redis.port);
    const client = new Redis({ port, host: '127.0.0.1', username: 'noping', password: 'x', maxRetriesPerRequest: 0 });
    client.on('error', () => {});
    cleanups.push(() => client.disconnect());
    expect(await client.set('acl-k', 'v')).toBe('OK');
    await until(async () => (await heartbeats(proxy, 'error')) >= 3, 10_000, 'refused heartbeats counted as error');
    expect(await client.get('acl-k')).toBe('v');
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_heartbeats_total', { route: 'g', result: 'ok' })).toBe(0);
    expect(sample(metrics, 'keepalive_proxy_heartbeats_total', { route: 'g', result: 'timeout' })).toBe(0);
    expect(await proxy.logged((l) => String(l.msg).startsWith('heartbeat answered with an error'))).toHaveLength(1);
  });
});
