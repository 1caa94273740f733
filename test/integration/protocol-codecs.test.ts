import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { Redis } from 'ioredis';
import pg from 'pg';
import mysql from 'mysql2/promise';
import { redisCodec } from '../../src/protocols/redis.js';
import { postgresCodec } from '../../src/protocols/postgres.js';
import { mysqlCodec } from '../../src/protocols/mysql.js';
import type { HeartbeatCodec } from '../../src/protocols/types.js';
import { startCodecRelay, type CodecRelay } from '../helpers/codec-relay.js';
import { MARIADB_USER, startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { REPO_ROOT } from '../helpers/proxy.js';
import { sleep, until } from '../helpers/wait.js';

// The codecs against real servers and real clients. Each scenario runs twice: straight to
// the server, and through a relay that runs the codec and injects a probe whenever the
// codec says quiet (every millisecond, racing the client). The client must see the same
// results, probes must be answered and cut, and no tracker may lose track.
//
// RECORD_FIXTURES=1 also records a small run of each scenario (with one probe at its end)
// into test/unit/protocols/fixtures/, the real-server bytes the unit tests replay.

const FIXTURES = join(REPO_ROOT, 'test', 'unit', 'protocols', 'fixtures');
const RECORD = process.env.RECORD_FIXTURES === '1';

type Scenario = (port: number, size: 'small' | 'large', beforeClose: () => Promise<void>) => Promise<unknown>;

async function compare(codec: HeartbeatCodec, serverPort: number, scenario: Scenario, name: string): Promise<void> {
  const direct = await scenario(serverPort, 'large', async () => {});
  const relay = await startCodecRelay(codec, serverPort, { probeEveryMs: 1 });
  let relayed: unknown;
  try {
    relayed = await scenario(relay.port, 'large', async () => {});
    await until(() => relay.connections.every((c) => c.closed || !c.tracker.probing), 5_000, 'last probes answered');
  } finally {
    await relay.close();
  }
  expect(relayed).toEqual(direct);
  const answered = relay.connections.reduce((sum, c) => sum + c.probesAnswered, 0);
  const off = relay.connections.filter((c) => c.tracker.state === 'off').map((c) => c.tracker.offReason);
  expect(off, `${name}: trackers off`).toEqual([]);
  expect(answered, `${name}: probes answered`).toBeGreaterThan(5);
  // A probe may still be out on a connection the server closed (after QUIT / Terminate).
  for (const c of relay.connections) {
    expect(c.probesAnswered, `${name}: every probe answered`).toBe(c.probesSent - (c.closed && c.tracker.probing ? 1 : 0));
  }
  if (RECORD) await record(codec, serverPort, scenario, name);
}

async function record(codec: HeartbeatCodec, serverPort: number, scenario: Scenario, name: string): Promise<void> {
  const relay: CodecRelay = await startCodecRelay(codec, serverPort);
  try {
    await scenario(relay.port, 'small', async () => {
      expect(await relay.probeAll()).toBeGreaterThan(0);
    });
    await sleep(100);
  } finally {
    await relay.close();
  }
  mkdirSync(FIXTURES, { recursive: true });
  const connections = relay.connections.map((c) => c.events);
  writeFileSync(join(FIXTURES, `${name}.json`), `${JSON.stringify({ codec: codec.name, scenario: name, connections }, null, 1)}\n`);
}

// ---------------------------------------------------------------- redis

const redisScenario: Scenario = async (port, size, beforeClose) => {
  const results: unknown[] = [];
  const a = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: true });
  const sub = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0 });
  await a.connect();
  await sub.connect();
  await a.flushall();
  results.push(await a.set('k', 'v'), await a.get('k'), await a.get('missing'));
  const pipeline = a.pipeline();
  for (let n = 0; n < (size === 'large' ? 200 : 5); n++) pipeline.incr('counter');
  results.push(await pipeline.exec());
  results.push(await a.multi().set('t', '1').incr('t').get('t').exec());
  results.push(await a.blpop('empty-list', 0.2));
  await a.lpush('list', 'x');
  results.push(await a.blpop('list', 1));
  const big = 'x'.repeat(size === 'large' ? 300_000 : 3_000);
  await a.set('big', big);
  results.push((await a.get('big'))?.length);
  results.push(await a.hset('h', { f1: 'a', f2: 'b' }), await a.hgetall('h'));
  results.push(typeof (await a.xadd('s', '*', 'f', 'v')));
  results.push(await a.call('XREAD', 'BLOCK', '100', 'STREAMS', 's', '$'));
  // pub/sub: messages while subscribed, PING in subscribe mode, unsubscribe
  const messages: string[] = [];
  sub.on('message', (channel: string, message: string) => messages.push(`${channel}:${message}`));
  sub.on('pmessage', (_pattern: string, channel: string, message: string) => messages.push(`p:${channel}:${message}`));
  results.push(await sub.subscribe('ch1', 'ch2'));
  results.push(await sub.psubscribe('pat*'));
  for (let n = 0; n < (size === 'large' ? 50 : 3); n++) {
    await a.publish('ch1', `m${n}`);
    await a.publish('pattern', `p${n}`);
    if (n % 10 === 0) results.push(await sub.ping());
  }
  await until(() => messages.length === (size === 'large' ? 100 : 6), 5_000, 'pubsub messages');
  results.push(messages);
  results.push(await sub.unsubscribe('ch1', 'ch2'), await sub.punsubscribe('pat*'));
  results.push(await sub.ping());
  await beforeClose();
  await a.quit();
  await sub.quit();
  return results;
};

/** RESP3 over a raw socket: HELLO 3, client-side caching invalidation pushes, RESP3 pub/sub. */
const redisResp3Scenario: Scenario = async (port, size, beforeClose) => {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve) => socket.once('connect', resolve));
  let received = '';
  socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
  const other = new Redis({ host: '127.0.0.1', port: port, lazyConnect: true, maxRetriesPerRequest: 0 });
  await other.connect();
  const send = (...args: string[]): void => {
    socket.write(`*${args.length}\r\n${args.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`);
  };
  const waitFor = (text: string): Promise<unknown> => until(() => received.includes(text), 5_000, `RESP3 ${text}`);
  send('HELLO', '3');
  await waitFor('proto');
  send('CLIENT', 'TRACKING', 'on');
  await waitFor('+OK');
  send('SET', 'tracked', 'v1');
  send('GET', 'tracked');
  await waitFor('$2\r\nv1\r\n');
  for (let n = 0; n < (size === 'large' ? 20 : 2); n++) {
    await other.set('tracked', `v${n}`);
    send('GET', 'tracked');
    await sleep(2);
  }
  await waitFor('invalidate');
  send('SUBSCRIBE', 'r3');
  await waitFor('subscribe');
  for (let n = 0; n < (size === 'large' ? 20 : 2); n++) await other.publish('r3', `hello${n}`);
  send('GET', 'tracked'); // RESP3 allows ordinary commands while subscribed
  await waitFor(`hello${size === 'large' ? 19 : 1}`);
  send('PING');
  await waitFor('+PONG');
  await beforeClose();
  socket.end();
  await other.quit();
  // Reply bytes differ between runs (client ids): compare what matters.
  return {
    pongs: received.split('+PONG\r\n').length - 1,
    messages: received.match(/hello\d+/g)?.length,
    invalidations: received.includes('invalidate'),
  };
};

describe('redis codec against redis-server', () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startRedis();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('RESP2 via ioredis: same results with probes racing every command', async () => {
    await compare(redisCodec, server.port, redisScenario, 'redis-ioredis');
  });

  it('RESP3 via a raw client: pushes pass, probes are cut', async () => {
    await compare(redisCodec, server.port, redisResp3Scenario, 'redis-resp3');
  });
});

// ---------------------------------------------------------------- postgres

const postgresScenario: Scenario = async (port, size, beforeClose) => {
  const results: unknown[] = [];
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
  const notifier = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
  await client.connect();
  await notifier.connect();
  const notices: string[] = [];
  const notifications: string[] = [];
  client.on('notice', (notice) => notices.push(notice.message ?? ''));
  client.on('notification', (n) => notifications.push(`${n.channel}:${n.payload}`));
  results.push((await client.query('SELECT 1 AS one')).rows);
  results.push((await client.query('SELECT $1::text AS t, $2::int AS n', ['x', 7])).rows);
  results.push((await client.query({ name: 'named', text: 'SELECT $1::int * 2 AS d', values: [21] })).rows);
  results.push((await client.query({ name: 'named', text: 'SELECT $1::int * 2 AS d', values: [5] })).rows);
  await client.query('BEGIN');
  await client.query('CREATE TEMP TABLE t (id int primary key, v text)');
  for (let n = 0; n < (size === 'large' ? 50 : 3); n++) await client.query('INSERT INTO t VALUES ($1, $2)', [n, `v${n}`]);
  results.push((await client.query('SELECT count(*)::int AS c FROM t')).rows);
  await client.query('COMMIT');
  await client.query('BEGIN');
  results.push(await client.query('SELECT 1/0').catch((e: Error) => e.message));
  results.push(await client.query('SELECT 1').catch((e: Error) => e.message));
  await client.query('ROLLBACK');
  results.push(await client.query('SELECT * FROM missing_table').catch((e: Error) => e.message));
  results.push(await client.query('SELECT $1::int', ['not a number']).catch((e: Error) => e.message));
  await client.query(`DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$`);
  const rows = size === 'large' ? 20_000 : 20;
  results.push((await client.query('SELECT g, md5(g::text) FROM generate_series(1, $1::int) g', [rows])).rowCount);
  await client.query('LISTEN chan');
  for (let n = 0; n < (size === 'large' ? 30 : 2); n++) await notifier.query(`NOTIFY chan, 'n${n}'`);
  await until(() => notifications.length === (size === 'large' ? 30 : 2), 5_000, 'notifications');
  results.push(notifications, notices);
  // multi-statement simple query
  results.push((await client.query('SELECT 1 AS a; SELECT 2 AS b') as unknown as Array<{ rows: unknown[] }>).map((r) => r.rows));
  await beforeClose();
  await client.end();
  await notifier.end();
  return results;
};

describe('postgres codec against postgres', () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startPostgres();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('pg (simple and extended protocol, transactions, errors, notices, notifications): same results with probes racing', async () => {
    await compare(postgresCodec, server.port, postgresScenario, 'postgres-pg');
  });
});

// ---------------------------------------------------------------- mysql / mariadb

const mysqlScenario: Scenario = async (port, size, beforeClose) => {
  const results: unknown[] = [];
  const connection = await mysql.createConnection({ host: '127.0.0.1', port, user: MARIADB_USER, database: 'test', multipleStatements: true });
  results.push((await connection.query('SELECT 1 AS one'))[0]);
  results.push((await connection.execute('SELECT ? AS a, ? AS b', [1, 'two']))[0]);
  results.push((await connection.execute('SELECT ? AS a, ? AS b', [3, 'four']))[0]);
  await connection.query('DROP TABLE IF EXISTS t; CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(64))');
  await connection.beginTransaction();
  for (let n = 0; n < (size === 'large' ? 50 : 3); n++) await connection.execute('INSERT INTO t VALUES (?, ?)', [n, `v${n}`]);
  await connection.commit();
  results.push((await connection.query('SELECT COUNT(*) AS c FROM t'))[0]);
  results.push((await connection.query('SELECT 1 AS x; SELECT 2 AS y; UPDATE t SET v = v WHERE id < 0'))[0]);
  results.push(await connection.query('SELECT * FROM missing_table').catch((e: Error) => e.message));
  results.push(await connection.query('SELEC 1').catch((e: Error) => e.message));
  const rows = size === 'large' ? 20_000 : 20;
  results.push(((await connection.query(`SELECT seq, MD5(seq) FROM seq_1_to_${rows}`))[0] as unknown[]).length);
  results.push(((await connection.execute('SELECT seq, MD5(seq) AS h FROM seq_1_to_100 WHERE seq > ?', [50]))[0] as unknown[]).length);
  await connection.query('DROP PROCEDURE IF EXISTS p; CREATE PROCEDURE p() BEGIN SELECT 1 AS a; SELECT 2 AS b; END');
  results.push((await connection.query('CALL p()'))[0]);
  results.push((await connection.execute('CALL p()'))[0]);
  await connection.ping();
  results.push((await connection.query(`SELECT REPEAT('x', ${size === 'large' ? 200_000 : 2_000}) AS big`).then(([r]) => (r as Array<{ big: string }>)[0]!.big.length)));
  await connection.changeUser({ user: MARIADB_USER, database: 'test' });
  results.push((await connection.query('SELECT CURRENT_USER() AS u'))[0]);
  await beforeClose();
  await connection.end();
  return results;
};

/**
 * A minimal raw client asking for CLIENT_DEPRECATE_EOF (as MySQL 8 clients do; mysql2 does
 * not): result sets then end with an OK packet with a 0xFE header and have no EOF after the
 * column definitions. Returns each response as its list of packets.
 */
async function deprecateEofSession(port: number, queries: string[], relay: CodecRelay | null): Promise<Buffer[][]> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  let pending = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => (pending = Buffer.concat([pending, chunk])));
  const packets = (): Buffer[] => {
    const list: Buffer[] = [];
    for (let at = 0; at + 4 <= pending.length; ) {
      const length = pending.readUIntLE(at, 3);
      if (at + 4 + length > pending.length) break;
      list.push(pending.subarray(at, at + 4 + length));
      at += 4 + length;
    }
    return list;
  };
  const take = (count: number): Buffer[] => {
    const list = packets().slice(0, count);
    pending = pending.subarray(list.reduce((sum, p) => sum + p.length, 0));
    return list;
  };
  const packet = (seq: number, payload: Buffer): Buffer => {
    const header = Buffer.alloc(4);
    header.writeUIntLE(payload.length, 0, 3);
    header[3] = seq;
    return Buffer.concat([header, payload]);
  };
  await until(() => packets().length >= 1, 5_000, 'greeting');
  take(1);
  const PROTOCOL_41 = 0x200, SECURE = 0x8000, PLUGIN_AUTH = 1 << 19, MULTI_STATEMENTS = 1 << 16, MULTI_RESULTS = 1 << 17;
  const caps = PROTOCOL_41 | SECURE | PLUGIN_AUTH | MULTI_STATEMENTS | MULTI_RESULTS | (1 << 24);
  const response = Buffer.concat([Buffer.alloc(32), Buffer.from(`${MARIADB_USER}\0`), Buffer.from([0]), Buffer.from('mysql_native_password\0')]);
  response.writeUInt32LE(caps >>> 0, 0);
  response.writeUInt32LE(1 << 24, 4);
  response[8] = 45;
  socket.write(packet(1, response));
  await until(() => packets().length >= 1, 5_000, 'auth OK');
  if (take(1)[0]![4] !== 0) throw new Error('authentication failed');
  // The end of a response: no more bytes for a while (and through the relay, its tracker quiet).
  const settle = async (): Promise<void> => {
    let last = -1;
    await until(async () => {
      const size = pending.length;
      const quiet = !relay || relay.connections.every((c) => c.closed || c.tracker.state === 'quiet' || c.tracker.state === 'off');
      const stable = size === last && size > 0 && quiet;
      last = size;
      await sleep(50);
      return stable;
    }, 10_000, 'response settled');
  };
  const responses: Buffer[][] = [];
  for (const sql of queries) {
    socket.write(packet(0, Buffer.concat([Buffer.from([0x03]), Buffer.from(sql)])));
    await settle();
    responses.push(take(Infinity));
  }
  socket.end();
  return responses;
}

describe('mysql codec against mariadb', () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await startMariadb();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('mysql2 (queries, prepared statements, multi-results, procedures, errors, change user): same results with probes racing', async () => {
    await compare(mysqlCodec, server.port, mysqlScenario, 'mysql-mysql2');
  });

  it('a raw client with CLIENT_DEPRECATE_EOF: result sets end in OK-0xFE packets, probes stay in step', async () => {
    const queries = ['SELECT seq, MD5(seq) FROM test.seq_1_to_300', 'SELECT 1 AS a; SELECT 2 AS b, 3 AS c', 'DO 1', 'SELECT * FROM no_such_table'];
    const strip = (responses: Buffer[][]): string[][] => responses.map((r) => r.map((p) => p.toString('hex')));
    const direct = await deprecateEofSession(server.port, queries, null);
    // 1 column count + 2 definitions + 300 rows + the OK-0xFE terminator, no EOF in between
    expect(direct[0]!.length).toBe(1 + 2 + 300 + 1);
    expect(direct[0]!.at(-1)![4]).toBe(0xfe);
    expect(direct[0]![3]![4]).not.toBe(0xfe);
    const relay = await startCodecRelay(mysqlCodec, server.port, { probeEveryMs: 1 });
    try {
      const relayed = await deprecateEofSession(relay.port, queries, relay);
      expect(strip(relayed)).toEqual(strip(direct));
      const connection = relay.connections[0]!;
      expect(connection.tracker.offReason).toBeNull();
      expect(connection.probesAnswered).toBeGreaterThan(queries.length);
    } finally {
      await relay.close();
    }
  });
});

// ---------------------------------------------------------------- the servers' own command-line clients

/** Runs a CLI client with its stdin, returning its stdout; the parts of an array 100 ms apart (the client idle in between). */
async function cli(command: string, args: string[], input: string | string[]): Promise<string> {
  const child = execFile(command, args, { timeout: 30_000, env: { ...process.env, PGCONNECT_TIMEOUT: '5' } });
  const parts = typeof input === 'string' ? [input] : input;
  void (async () => {
    for (const [i, part] of parts.entries()) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, 100));
      child.stdin!.write(part);
    }
    child.stdin!.end();
  })();
  let out = '';
  let err = '';
  child.stdout!.on('data', (text: string) => (out += text));
  child.stderr!.on('data', (text: string) => (err += text));
  // 'close', not 'exit': the last of its output may still be in the pipe when it exits.
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`${command} exited ${code}: ${err}`);
  return out;
}

/** Same output direct and through the probing relay; `offReasons`: the trackers that must have gone off. */
async function compareCli(
  codec: HeartbeatCodec,
  serverPort: number,
  run: (port: number) => Promise<string>,
  offReasons: string[] = [],
): Promise<void> {
  const direct = await run(serverPort);
  const relay = await startCodecRelay(codec, serverPort, { probeEveryMs: 1 });
  try {
    const relayed = await run(relay.port);
    expect(relayed).toBe(direct);
    const off = relay.connections.filter((c) => c.tracker.state === 'off').map((c) => c.tracker.offReason);
    expect(off).toEqual(offReasons);
    if (offReasons.length === 0) expect(relay.connections.reduce((sum, c) => sum + c.probesAnswered, 0)).toBeGreaterThan(0);
  } finally {
    await relay.close();
  }
}

describe('codecs with the servers\' command-line clients', () => {
  const servers: Partial<Record<'redis' | 'postgres' | 'mariadb', RunningServer>> = {};
  beforeAll(async () => {
    [servers.redis, servers.postgres, servers.mariadb] = await Promise.all([startRedis(), startPostgres(), startMariadb()]);
  });
  afterAll(async () => {
    await Promise.all(Object.values(servers).map((server) => server?.stop()));
  });

  it('redis-cli', async () => {
    const first = ['SET a 1', 'INCR a', 'GET a', 'RPUSH l x y z', 'LRANGE l 0 -1', 'MULTI', 'INCR a', 'EXEC'];
    const second = ['HELLO 3', 'HGETALL nothing', 'PING', 'DEL a l'];
    // HELLO's reply carries the connection id, which differs from run to run. redis-cli runs
    // each line as it comes: between the two parts it is idle with no reply owed, and the relay probes.
    const run = async (port: number): Promise<string> =>
      (await cli('redis-cli', ['-h', '127.0.0.1', '-p', String(port)], [`${first.join('\n')}\n`, `${second.join('\n')}\n`])).replace(/^id \d+$/m, 'id N');
    await compareCli(redisCodec, servers.redis!.port, run);
  });

  it('psql (SSLRequest refused with N, then clear text)', async () => {
    const script = [
      'SELECT 1 AS one;',
      'BEGIN;',
      'CREATE TEMP TABLE t AS SELECT g FROM generate_series(1, 500) g;',
      'SELECT count(*) FROM t;',
      'COMMIT;',
      'SELECT 1/0;',
      "SELECT md5(g::text) FROM generate_series(1, 200) g;",
      // The client idle with no reply owed (as in the mariadb case below): the probes go now.
      '\\! sleep 0.1',
      '\\echo done',
    ].join('\n');
    await compareCli(postgresCodec, servers.postgres!.port, (port) =>
      cli('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-X', '-v', 'ON_ERROR_STOP=0'], `${script}\n`),
    );
  });

  it('mariadb', async () => {
    const script = [
      'SELECT 1 AS one;',
      'CREATE TABLE IF NOT EXISTS cli (id INT PRIMARY KEY, v TEXT);',
      'REPLACE INTO cli VALUES (1, "a"), (2, "b");',
      'SELECT * FROM cli ORDER BY id;',
      'SELECT seq, MD5(seq) FROM seq_1_to_300;',
      // The client idle with no reply owed (its own shell command): the relay's probes go now,
      // whatever the machine's speed leaves between the other statements.
      'system sleep 0.1',
      'SELECT 1; SELECT 2;',
      'SHOW WARNINGS;',
    ].join('\n');
    await compareCli(mysqlCodec, servers.mariadb!.port, (port) =>
      cli('mariadb', ['--no-defaults', '-h', '127.0.0.1', '-P', String(port), '-u', MARIADB_USER, 'test'], `${script}\n`),
    );
  });
  it('redis MONITOR: off (monitor), the stream still reaches the client', async () => {
    await compareCli(
      redisCodec,
      servers.redis!.port,
      async (port) => {
        // A raw socket: MONITOR's reply stream is not request/reply any more.
        const monitor = net.connect(port, '127.0.0.1');
        let text = '';
        monitor.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
        monitor.write('*1\r\n$7\r\nMONITOR\r\n');
        await until(() => text.startsWith('+OK\r\n'), 5_000, 'MONITOR +OK');
        const client = new Redis({ host: '127.0.0.1', port: servers.redis!.port, maxRetriesPerRequest: 0 });
        await client.set('watched', '1');
        await client.get('watched');
        await until(() => text.includes('"get" "watched"'), 5_000, 'monitor lines');
        monitor.destroy();
        client.disconnect();
        return text.match(/"(set|get)" "watched"[^\r]*/g)?.join('\n') ?? '';
      },
      ['monitor'],
    );
  });

  it('psql COPY: off (copy), the COPY data still reaches the client', async () => {
    await compareCli(
      postgresCodec,
      servers.postgres!.port,
      (port) => cli('psql', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-X'], 'SELECT 1;\nCOPY (SELECT g FROM generate_series(1, 100) g) TO STDOUT;\nSELECT 2;\n'),
      ['copy'],
    );
  });

  it('mariadb LOAD DATA LOCAL INFILE: off (local-infile), the load still works', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kp-infile-'));
    const file = join(dir, 'rows.csv');
    writeFileSync(file, Array.from({ length: 100 }, (_, n) => `${n + 1000},row${n}`).join('\n'));
    try {
      await compareCli(
        mysqlCodec,
        servers.mariadb!.port,
        (port) =>
          cli(
            'mariadb',
            ['--no-defaults', '--local-infile=1', '-h', '127.0.0.1', '-P', String(port), '-u', MARIADB_USER, 'test'],
            `CREATE TABLE IF NOT EXISTS loaded (id INT PRIMARY KEY, v TEXT);\nDELETE FROM loaded;\nLOAD DATA LOCAL INFILE '${file}' INTO TABLE loaded FIELDS TERMINATED BY ',';\nSELECT COUNT(*) FROM loaded;\n`,
          ),
        ['local-infile'],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
