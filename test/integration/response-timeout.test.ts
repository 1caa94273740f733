import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect, listen0, readBytes } from '../helpers/net.js';
import { parseMetrics, sample, startOneRoute, type RunningProxy } from '../helpers/proxy.js';
import { startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

// responseTimeout on TCP-family routes, through the real CLI against real servers: a
// request already sent to a hung server is cut (reason response_timeout, one log line),
// while a blocking command within its own timeout and a long query on a route where the
// key is off (the postgres default) are left alone.

const RESPONSE_TIMEOUT_MS = 1_000;
/** The shared clock ticks every 250 ms; a loaded 2-core machine adds scheduling delay. */
const SLACK_MS = 2_000;

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function proxyFor(protocol: string, upstreamPort: number, extra = ''): Promise<{ proxy: RunningProxy; port: number }> {
  const started = await startOneRoute({ name: 'rt', protocol, upstreamPort, routeLines: extra });
  cleanups.push(() => started.proxy.stop('SIGKILL'));
  return started;
}

async function evictions(proxy: RunningProxy, reason: string): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'rt', reason });
}

describe('responseTimeout on redis', () => {
  let redis: RunningServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('closes a client whose PING went to a hung server (SIGSTOP) within responseTimeout + slack', async () => {
    const hung = await startRedis();
    cleanups.push(() => hung.stop());
    // No heartbeat: only the owed reply can notice.
    const { proxy, port } = await proxyFor('redis', hung.port, `    responseTimeout: ${RESPONSE_TIMEOUT_MS}ms`);
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    client.write('*1\r\n$4\r\nPING\r\n');
    expect((await readBytes(client, 7)).toString()).toBe('+PONG\r\n');
    hung.pause();
    cleanups.push(() => hung.resume());
    const started = Date.now();
    client.write('*1\r\n$4\r\nPING\r\n');
    await until(() => client.closed || client.readableEnded, RESPONSE_TIMEOUT_MS + SLACK_MS + 3_000, 'client closed by the reply deadline');
    const waitedMs = Date.now() - started;
    console.log(`owed reply cut after ${waitedMs} ms (responseTimeout ${RESPONSE_TIMEOUT_MS} ms)`);
    expect(waitedMs).toBeGreaterThanOrEqual(RESPONSE_TIMEOUT_MS - 300);
    expect(waitedMs).toBeLessThan(RESPONSE_TIMEOUT_MS + SLACK_MS);
    await until(async () => (await evictions(proxy, 'response_timeout')) === 1, 5_000, 'response_timeout counted');
    const lines = await proxy.logged((l) => l.reason === 'response_timeout');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ msg: 'connection evicted', route: 'rt', side: 'upstream' });
  });

  it('lets BLPOP with a 3 s timeout return (responseTimeout 1 s), and the connection goes on', async () => {
    const { proxy, port } = await proxyFor('redis', redis.port, `    responseTimeout: ${RESPONSE_TIMEOUT_MS}ms`);
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    const started = Date.now();
    client.write('*3\r\n$5\r\nBLPOP\r\n$10\r\nrt-no-such\r\n$1\r\n3\r\n');
    // A timed-out BLPOP answers a null array.
    expect((await readBytes(client, 5, 10_000)).toString()).toBe('*-1\r\n');
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_900);
    client.write('*1\r\n$4\r\nPING\r\n');
    expect((await readBytes(client, 7)).toString()).toBe('+PONG\r\n');
    expect(await evictions(proxy, 'response_timeout')).toBe(0);
  });

  it('does not blame the server for a client that reads slowly (backpressure pauses the upstream)', async () => {
    const { proxy, port } = await proxyFor('redis', redis.port, `    responseTimeout: ${RESPONSE_TIMEOUT_MS}ms`);
    const setter = await connect(port);
    cleanups.push(() => setter.destroy());
    const size = 32 * 1024 * 1024;
    setter.write(Buffer.concat([Buffer.from(`*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$${size}\r\n`), Buffer.alloc(size, 0x61), Buffer.from('\r\n')]));
    expect((await readBytes(setter, 5, 20_000)).toString()).toBe('+OK\r\n');
    const reader = await connect(port);
    cleanups.push(() => reader.destroy());
    reader.pause();
    reader.write('*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n');
    await sleep(RESPONSE_TIMEOUT_MS + SLACK_MS);
    reader.resume();
    const header = `$${size}\r\n`;
    const reply = await readBytes(reader, header.length + size + 2, 30_000);
    expect(reply.length).toBe(header.length + size + 2);
    expect(await evictions(proxy, 'response_timeout')).toBe(0);
  });

  it('never cuts BLPOP k 0 (block for ever) nor SUBSCRIBE', async () => {
    const { proxy, port } = await proxyFor('redis', redis.port, `    responseTimeout: ${RESPONSE_TIMEOUT_MS}ms`);
    const blocked = await connect(port);
    const subscriber = await connect(port);
    cleanups.push(() => blocked.destroy(), () => subscriber.destroy());
    blocked.write('*3\r\n$5\r\nBLPOP\r\n$5\r\nrt-k0\r\n$1\r\n0\r\n');
    subscriber.write('*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n');
    await readBytes(subscriber, 1);
    await sleep(RESPONSE_TIMEOUT_MS + SLACK_MS);
    expect(blocked.closed || subscriber.closed).toBe(false);
    expect(await evictions(proxy, 'response_timeout')).toBe(0);
  });

  it('responseTimeout: 0 turns the redis default (60 s) off', async () => {
    const hung = await startRedis();
    cleanups.push(() => hung.stop());
    const { proxy, port } = await proxyFor('redis', hung.port, '    responseTimeout: 0');
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    hung.pause();
    cleanups.push(() => hung.resume());
    client.write('*1\r\n$4\r\nPING\r\n');
    await sleep(RESPONSE_TIMEOUT_MS + SLACK_MS);
    expect(client.closed).toBe(false);
    expect(await evictions(proxy, 'response_timeout')).toBe(0);
  });
});

describe('responseTimeout on postgres and tcp', () => {
  it('leaves SELECT pg_sleep(3) alone with the postgres default (off), and cuts it when set to 1 s', async () => {
    const postgres = await startPostgres();
    cleanups.push(() => postgres.stop());
    const plain = await proxyFor('postgres', postgres.port);
    const client = new pg.Client({ host: '127.0.0.1', port: plain.port, user: 'postgres', database: 'postgres' });
    cleanups.push(() => client.end().catch(() => {}));
    await client.connect();
    expect((await client.query('SELECT pg_sleep(3) AS slept')).rows).toHaveLength(1);
    expect(await evictions(plain.proxy, 'response_timeout')).toBe(0);

    const strict = await proxyFor('postgres', postgres.port, `    responseTimeout: ${RESPONSE_TIMEOUT_MS}ms`);
    const cut = new pg.Client({ host: '127.0.0.1', port: strict.port, user: 'postgres', database: 'postgres' });
    cut.on('error', () => {});
    cleanups.push(() => cut.end().catch(() => {}));
    await cut.connect();
    await expect(cut.query('SELECT pg_sleep(3)')).rejects.toThrow();
    // The client sees the reset before the proxy's sockets have both closed and the end is counted.
    await until(async () => (await evictions(strict.proxy, 'response_timeout')) === 1, 5_000, 'response_timeout counted');
  });

  it('cuts a tcp route whose upstream reads and never answers; a server byte restarts the deadline', async () => {
    // Answers "ping" lines after 600 ms, swallows anything else.
    const silent = await listen0((socket) => {
      socket.on('data', (chunk: Buffer) => {
        if (chunk.toString().startsWith('ping')) setTimeout(() => socket.writable && socket.write('pong\n'), 600);
      });
    });
    cleanups.push(() => silent.close());
    const { proxy, port } = await proxyFor('tcp', silent.port, `    responseTimeout: ${RESPONSE_TIMEOUT_MS}ms`);
    const client = await connect(port);
    cleanups.push(() => client.destroy());
    for (let i = 0; i < 3; i++) {
      client.write('ping\n');
      expect((await readBytes(client, 5)).toString()).toBe('pong\n');
    }
    await sleep(RESPONSE_TIMEOUT_MS + 500); // idle with nothing owed: no deadline
    expect(client.closed).toBe(false);
    const started = Date.now();
    client.write('request nobody answers\n');
    await until(() => client.closed || client.readableEnded, RESPONSE_TIMEOUT_MS + SLACK_MS + 3_000, 'client closed');
    expect(Date.now() - started).toBeLessThan(RESPONSE_TIMEOUT_MS + SLACK_MS);
    await until(async () => (await evictions(proxy, 'response_timeout')) === 1, 5_000, 'response_timeout counted');
  });
});
