import { spawn } from 'node:child_process';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect, delayingRelay, listen0, readBytes } from '../helpers/net.js';
import { parseMetrics, sample, startOneRoute, type RunningProxy } from '../helpers/proxy.js';
import { MARIADB_USER, startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

// Application heartbeats through the real CLI, against real servers and real clients:
// probes go out on idle connections, their replies never reach the client, a busy
// connection gets none, and a hung server is found within every + timeout + slack.

const EVERY_MS = 300;
const TIMEOUT_MS = 1_000;

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function proxyFor(protocol: string, upstreamPort: number, extra = ''): Promise<{ proxy: RunningProxy; port: number }> {
  const routeLines = `    heartbeat: { every: ${EVERY_MS}ms, timeout: ${TIMEOUT_MS}ms${extra} }`;
  const started = await startOneRoute({ name: 'hb', protocol, upstreamPort, routeLines, topLines: 'log: { level: debug }' });
  cleanups.push(() => started.proxy.stop('SIGKILL'));
  return started;
}

async function heartbeats(proxy: RunningProxy, result: string): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_heartbeats_total', { route: 'hb', result });
}

async function waitForHeartbeats(proxy: RunningProxy, count: number): Promise<void> {
  await until(async () => (await heartbeats(proxy, 'ok')) >= count, 10_000, `${count} answered heartbeats`);
}

describe('redis heartbeats', () => {
  let redis: RunningServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('probes an idle connection; the client never sees a PONG and keeps working', async () => {
    const { proxy, port } = await proxyFor('redis', redis.port);
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
    cleanups.push(() => client.disconnect());
    await client.connect();
    expect(await client.set('k', 'v1')).toBe('OK');
    await waitForHeartbeats(proxy, 3);
    expect(await client.get('k')).toBe('v1');
    expect(await client.incr('n')).toBe(1);
    await waitForHeartbeats(proxy, 5);
    expect(await client.incr('n')).toBe(2);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_heartbeat_rtt_seconds_count', { route: 'hb' })).toBeGreaterThanOrEqual(5);
    expect(sample(metrics, 'keepalive_proxy_heartbeats_total', { route: 'hb', result: 'timeout' })).toBe(0);
  });

  it('sends no heartbeat on a busy connection', async () => {
    const { proxy, port } = await proxyFor('redis', redis.port);
    const direct = new Redis({ port: redis.port, host: '127.0.0.1', maxRetriesPerRequest: 0 });
    cleanups.push(() => direct.disconnect());
    const KEY = 'counter:__rand_int__'; // redis-benchmark's key for INCR
    const done = async (): Promise<number> => Number((await direct.get(KEY)) ?? 0);
    const before = await done();
    // The load comes from a process of its own, one INCR after another on one connection: this
    // test process may stall longer than `every` on a loaded machine, and a client that stalls
    // that long is idle, rightly probed.
    const bench = spawn('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '-c', '1', '-n', '100000000', '-t', 'incr', '-q'], { stdio: 'ignore' });
    cleanups.push(() => bench.exitCode === null && bench.signalCode === null && bench.kill('SIGKILL'));
    await until(async () => (await done()) > before + 10, 10_000, 'the load running through the proxy');
    const loadStarted = await done();
    await sleep(4 * EVERY_MS);
    expect(await done()).toBeGreaterThan(loadStarted + 10);
    expect(await heartbeats(proxy, 'ok')).toBe(0);
  });

  it('closes the client within every + timeout + slack when the server hangs (SIGSTOP)', async () => {
    const hung = await startRedis();
    cleanups.push(() => hung.stop());
    const { proxy, port } = await proxyFor('redis', hung.port);
    const client = await connect(port);
    client.write('*1\r\n$4\r\nPING\r\n');
    expect((await readBytes(client, 7)).toString()).toBe('+PONG\r\n');
    hung.pause();
    cleanups.push(() => hung.resume());
    const started = Date.now();
    await until(() => client.closed || client.readableEnded, EVERY_MS + TIMEOUT_MS + 5_000, 'client closed by heartbeat timeout');
    const detectedMs = Date.now() - started;
    console.log(`hung redis detected after ${detectedMs} ms (every ${EVERY_MS} ms + timeout ${TIMEOUT_MS} ms)`);
    expect(detectedMs).toBeLessThan(EVERY_MS * 1.1 + TIMEOUT_MS + 1_000);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_evictions_total', { route: 'hb', reason: 'heartbeat_timeout' })).toBe(1);
    expect(sample(metrics, 'keepalive_proxy_heartbeats_total', { route: 'hb', result: 'timeout' })).toBe(1);
  });

  it('goes TCP-keepalive-only for MONITOR and counts it as unsupported', async () => {
    const { proxy, port } = await proxyFor('redis', redis.port);
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    client.write('*1\r\n$7\r\nMONITOR\r\n');
    expect((await readBytes(client, 5)).toString()).toBe('+OK\r\n');
    await until(async () => (await heartbeats(proxy, 'unsupported')) === 1, 5_000, 'unsupported counted');
    await sleep(3 * EVERY_MS);
    expect(await heartbeats(proxy, 'ok')).toBe(0);
    await proxy.logged((l) => l.msg === 'heartbeats off for this connection (TCP keepalive only)' && l.why === 'monitor');
  });
});

describe('postgres heartbeats', () => {
  let postgres: RunningServer;
  beforeAll(async () => {
    postgres = await startPostgres();
  });
  afterAll(async () => {
    await postgres?.stop();
  });

  it('sends Sync at ReadyForQuery and consumes its ReadyForQuery; queries and transactions keep working', async () => {
    const { proxy, port } = await proxyFor('postgres', postgres.port, ', inTransaction: true');
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    cleanups.push(() => client.end().catch(() => {}));
    await client.connect();
    expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await waitForHeartbeats(proxy, 3);
    await client.query('BEGIN');
    await client.query('CREATE TEMP TABLE t (v int)');
    await waitForHeartbeats(proxy, 5); // idle inside a transaction block: Sync does not commit
    await client.query('INSERT INTO t VALUES ($1)', [42]);
    expect((await client.query('SELECT v FROM t')).rows).toEqual([{ v: 42 }]);
    await client.query('ROLLBACK');
    expect((await client.query('SELECT $1::text AS s', ['after'])).rows).toEqual([{ s: 'after' }]);
  });

  it('finds a hung postgres backend', async () => {
    const hung = await startPostgres();
    cleanups.push(() => hung.stop());
    const { proxy, port } = await proxyFor('postgres', hung.port);
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    client.on('error', () => {});
    await client.connect();
    await client.query('SELECT 1');
    hung.pause();
    cleanups.push(() => hung.resume());
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'hb', reason: 'heartbeat_timeout' }) === 1, EVERY_MS + TIMEOUT_MS + 5_000, 'heartbeat_timeout eviction');
  });
});

describe('mysql heartbeats', () => {
  let mariadb: RunningServer;
  beforeAll(async () => {
    mariadb = await startMariadb();
  });
  afterAll(async () => {
    await mariadb?.stop();
  });

  it('sends COM_PING between commands and consumes its OK; queries and prepared statements keep working', async () => {
    const { proxy, port } = await proxyFor('mysql', mariadb.port);
    const client = await mysql.createConnection({ host: '127.0.0.1', port, user: MARIADB_USER });
    cleanups.push(() => client.end().catch(() => {}));
    const [rows] = await client.query('SELECT 1 AS one');
    expect(rows).toEqual([{ one: 1 }]);
    await waitForHeartbeats(proxy, 3);
    const [prepared] = await client.execute('SELECT ? + 1 AS two', [1]);
    expect(prepared).toEqual([{ two: 2 }]);
    await waitForHeartbeats(proxy, 5);
    const [again] = await client.query('SELECT "still here" AS s');
    expect(again).toEqual([{ s: 'still here' }]);
  });
});

describe('custom tcp heartbeats', () => {
  it('sends the configured bytes and consumes the expected reply from a line echo server', async () => {
    const echo = await listen0((socket) => socket.on('data', (c: Buffer) => socket.write(c)));
    cleanups.push(() => echo.close());
    const { proxy, port } = await proxyFor('tcp', echo.port, ', send: "NOOP\\r\\n", expect: "NOOP\\r\\n"');
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    const seen: Buffer[] = [];
    client.on('data', (c: Buffer) => seen.push(c));
    client.write('hello\n');
    await waitForHeartbeats(proxy, 3);
    client.write('world\n');
    await until(() => Buffer.concat(seen).length >= 12, 5_000, 'echo');
    expect(Buffer.concat(seen).toString()).toBe('hello\nworld\n');
  });
});

describe('a client write racing a probe', () => {
  it('delivers client bytes after the probe, in order, with no probe reply leaking (redis, many rounds)', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    // 80 ms of delay on the way back keeps each probe in flight long enough for writes to race it.
    const relay = await delayingRelay(redis.port, 80);
    cleanups.push(() => relay.close());
    const { proxy, port } = await proxyFor('redis', relay.port);
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    const received: Buffer[] = [];
    client.on('data', (c: Buffer) => received.push(c));
    let expected = '';
    // Gaps sweep from well below to well above `every` (plus the tick), so writes land
    // before, during and after probes. Every INCR's reply must arrive, in order, and no
    // +PONG may appear among them.
    for (let i = 1; i <= 30; i++) {
      await sleep(200 + ((i * 53) % 500));
      client.write('*2\r\n$4\r\nINCR\r\n$4\r\nrace\r\n');
      expected += `:${i}\r\n`;
    }
    await until(() => Buffer.concat(received).length >= expected.length, 5_000, 'all replies');
    await sleep(200);
    expect(Buffer.concat(received).toString()).toBe(expected);
    expect(await heartbeats(proxy, 'ok')).toBeGreaterThan(3);
  });
});
