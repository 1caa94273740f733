import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { afterAll, beforeAll, describe, it, type ExpectStatic } from 'vitest';
import { freePort, readBytes } from '../helpers/net.js';
import { makePki, type Pki } from '../helpers/pki.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { recordingRelay, type RecordingRelay } from '../helpers/recording-relay.js';
import { MARIADB_USER, startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { mysqlRaceScript, mysqlScript, MysqlReader, normaliseMysql, COM_PING } from '../helpers/wire/mysql.js';
import { normalisePostgres, PG_SYNC, PgReader, postgresRaceScript, postgresScript } from '../helpers/wire/postgres.js';
import { Prng } from '../helpers/wire/prng.js';
import { normaliseRedis, REDIS_PROBE, redisPubSubRaceScript, redisRaceScript, redisScript, redisSide, RespReader } from '../helpers/wire/redis.js';
import { describeDifference, runScript, totalGapMs, type ReplyReader, type RunResult, type Script } from '../helpers/wire/script.js';

// Equivalence: random command sequences with random silences around `every`, run once
// straight against the server and once through the proxy with heartbeats on. The client
// speaks each protocol with raw sockets from prepared request bytes and records every byte
// it receives; both recordings must be identical, byte for byte, after zeroing only what
// differs between any two connections (Redis HELLO's client id, PostgreSQL's
// BackendKeyData, MySQL's greeting connection id and scramble, and the statement ids
// MariaDB numbers server-wide). The direct run skips the
// silences (nothing on that path reacts to them); the proxied run keeps them, so probes go
// out in the gaps, and heartbeats_total{result="ok"} > 0 proves they did.
//
// The race: the same comparison on routes whose upstream answers through a relay that
// delays every reply by RACE_DELAY_MS, so each probe stays in flight that long; silences
// swept across the probe schedule make client writes land inside probe windows. The relay's
// recording shows when each probe went out and when its reply came back, so the test counts
// the writes that really raced a probe (the proxy held them and sent them after the reply).
//
// Over TLS (issue 10): the same scripts against TLS-only servers, direct with a TLS client
// (PostgreSQL's SSLRequest first; Redis TLS from the first byte) and proxied from a
// plaintext client through a route with upstreamTls.

const SEED = Number(process.env.EQ_SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`equivalence seed ${SEED} (replay with EQ_SEED=${SEED})`);

const EVERY_MS = 250;
const RACE_EVERY_MS = 200;
const RACE_DELAY_MS = 80;
/** The proxy's shared clock ticks every 250 ms (src/app.ts): a probe goes out on the first tick after `every` of silence. */
const TICK_MS = 250;

let redis: RunningServer;
let postgres: RunningServer;
let mariadb: RunningServer;
let tlsRedis: RunningServer;
let tlsPostgres: RunningServer;
let pki: Pki;
let proxy: RunningProxy;
const ports: Record<string, number> = {};
const relays: Record<string, RecordingRelay> = {};

beforeAll(async () => {
  pki = makePki();
  const tlsOnly = { cert: pki.server.cert, key: pki.server.key, ca: pki.ca };
  [redis, postgres, mariadb, tlsRedis, tlsPostgres] = await Promise.all([startRedis(), startPostgres(), startMariadb(), startRedis({ tlsOnly }), startPostgres({ tlsOnly })]);
  for (const [server, ssl] of [[postgres, false], [tlsPostgres, { ca: readFileSync(pki.ca) }]] as const) {
    const pgClient = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres', ssl });
    await pgClient.connect();
    await pgClient.query('CREATE TABLE eq (id int PRIMARY KEY, v text)');
    await pgClient.end();
  }
  const mysqlClient = await mysql.createConnection({ host: '127.0.0.1', port: mariadb.port, user: MARIADB_USER, database: 'test' });
  await mysqlClient.query('CREATE TABLE eq (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB');
  await mysqlClient.end();

  relays.redis = await recordingRelay(redis.port, { delayMs: RACE_DELAY_MS });
  relays.postgres = await recordingRelay(postgres.port, { delayMs: RACE_DELAY_MS });
  relays.mysql = await recordingRelay(mariadb.port, { delayMs: RACE_DELAY_MS });
  relays['redis-pubsub'] = await recordingRelay(redis.port, { delayMs: RACE_DELAY_MS });
  const routes: string[] = [];
  const route = async (name: string, protocol: string, upstreamPort: number, everyMs: number, extra = ''): Promise<void> => {
    ports[name] = await freePort();
    routes.push(
      `  - { name: ${name}, protocol: ${protocol}, listen: "127.0.0.1:${ports[name]}", upstream: "127.0.0.1:${upstreamPort}", heartbeat: { every: ${everyMs}ms, timeout: 2s }${extra} }`,
    );
  };
  const upstreamTls = `, upstreamTls: { mode: verify-full, ca: "${pki.ca}" }`;
  await route('tls-redis', 'redis', tlsRedis.port, EVERY_MS, upstreamTls);
  await route('tls-postgres', 'postgres', tlsPostgres.port, EVERY_MS, upstreamTls);
  await route('eq-redis', 'redis', redis.port, EVERY_MS);
  await route('eq-postgres', 'postgres', postgres.port, EVERY_MS);
  await route('eq-mysql', 'mysql', mariadb.port, EVERY_MS);
  await route('race-redis', 'redis', relays.redis.port, RACE_EVERY_MS);
  await route('race-postgres', 'postgres', relays.postgres.port, RACE_EVERY_MS);
  await route('race-mysql', 'mysql', relays.mysql.port, RACE_EVERY_MS);
  await route('race-redis-pubsub', 'redis', relays['redis-pubsub'].port, RACE_EVERY_MS);
  proxy = await startProxy({ yaml: `admin: { listen: "{{admin}}" }\nlog: { level: info }\nroutes:\n${routes.join('\n')}\n` });
}, 120_000);

afterAll(async () => {
  await proxy?.stop('SIGKILL');
  for (const relay of Object.values(relays)) await relay.close();
  await Promise.all([redis?.stop(), postgres?.stop(), mariadb?.stop(), tlsRedis?.stop(), tlsPostgres?.stop()]);
  pki?.cleanup();
});

/** A TLS client connection, verified against the test CA, once its handshake is done. */
function tlsClient(socketOrPort: net.Socket | number): Promise<net.Socket> {
  const target = typeof socketOrPort === 'number' ? { host: '127.0.0.1', port: socketOrPort } : { socket: socketOrPort };
  const secure = tls.connect({ ...target, servername: 'localhost', ca: readFileSync(pki.ca) });
  return new Promise((resolve, reject) => {
    secure.once('secureConnect', () => resolve(secure));
    secure.once('error', reject);
  });
}

/** Direct to a TLS-only PostgreSQL as libpq does it: SSLRequest, 'S', then the handshake. */
async function postgresTlsClient(port: number): Promise<net.Socket> {
  const raw = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    raw.once('connect', resolve);
    raw.once('error', reject);
  });
  const answer = readBytes(raw, 1);
  raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
  if ((await answer).toString('latin1') !== 'S') throw new Error('the TLS-only server did not answer S');
  return tlsClient(raw);
}

async function heartbeatCounts(route: string): Promise<{ ok: number; timeout: number; unsupported: number }> {
  const metrics = parseMetrics(await proxy.metrics());
  const count = (result: string): number => sample(metrics, 'keepalive_proxy_heartbeats_total', { route, result });
  return { ok: count('ok'), timeout: count('timeout'), unsupported: count('unsupported') };
}

interface Comparison<R extends ReplyReader> {
  readonly script: Script<R>;
  readonly directPort: number;
  /** How the direct run connects when not plain TCP to directPort (a TLS client). */
  readonly directOpen?: () => Promise<net.Socket>;
  readonly proxiedPort: number;
  readonly reader: () => R;
  readonly normalise: (bytes: Buffer, reader: R) => Buffer;
}

/** Runs a script both ways; returns the difference (null when byte-identical) and the proxied run. */
async function compare<R extends ReplyReader>(comparison: Comparison<R>): Promise<{ difference: string | null; proxied: RunResult<R>; direct: RunResult<R> }> {
  const { script, reader, normalise } = comparison;
  const direct = await runScript(script, { port: comparison.directPort, open: comparison.directOpen, reader, keepGaps: false });
  // The tail lets the proxy's tick look at the connection once more before it closes: a
  // codec that lost track would be counted as heartbeats_total{result="unsupported"}.
  const proxied = await runScript(script, { port: comparison.proxiedPort, reader, keepGaps: true, tailMs: 2 * TICK_MS });
  return { difference: describeDifference(script, direct, proxied, normalise), proxied, direct };
}

describe.concurrent('equivalence: the client sees byte-identical replies with heartbeats on', () => {
  /** The redis scripts direct (`direct`) and through `route`; the side connection reaches the same server through `sidePort`. */
  async function redisEquivalence(expect: ExpectStatic, label: string, route: string, direct: { port: number; open?: () => Promise<net.Socket> }, sidePort: number, fork: number): Promise<void> {
    const prng = new Prng(SEED).fork(fork);
    const side = await redisSide(sidePort);
    try {
      const scripts = [
        redisScript(`${label} RESP2`, prng, EVERY_MS, side, { resp3: false, blocks: 9 }),
        redisScript(`${label} RESP3 (HELLO 3)`, prng, EVERY_MS, side, { resp3: true, blocks: 9 }),
      ];
      let bytes = 0;
      for (const script of scripts) {
        const { difference, direct: run } = await compare({ script, directPort: direct.port, directOpen: direct.open, proxiedPort: ports[route]!, reader: () => new RespReader(), normalise: normaliseRedis });
        expect(difference, `seed ${SEED}`).toBeNull();
        bytes += run.received.length;
        console.log(`[equivalence] ${script.name}: ${script.steps.length} steps, ${totalGapMs(script)} ms of silences, ${run.received.length} reply bytes identical`);
      }
      const counts = await heartbeatCounts(route);
      console.log(`[equivalence] ${label}: ${bytes} bytes compared; heartbeats ${JSON.stringify(counts)}`);
      expect(counts.ok).toBeGreaterThan(0);
      expect(counts.timeout).toBe(0);
      expect(counts.unsupported, 'the codec followed every sequence (never went off)').toBe(0);
    } finally {
      side.close();
    }
  }

  async function postgresEquivalence(expect: ExpectStatic, label: string, route: string, direct: { port: number; open?: () => Promise<net.Socket> }, fork: number): Promise<void> {
    const prng = new Prng(SEED).fork(fork);
    let bytes = 0;
    for (const index of [1, 2]) {
      const script = postgresScript(`${label} #${index}`, prng, EVERY_MS, 11);
      const { difference, direct: run } = await compare({ script, directPort: direct.port, directOpen: direct.open, proxiedPort: ports[route]!, reader: () => new PgReader(), normalise: normalisePostgres });
      expect(difference, `seed ${SEED}`).toBeNull();
      bytes += run.received.length;
      console.log(`[equivalence] ${script.name}: ${script.steps.length} steps, ${totalGapMs(script)} ms of silences, ${run.received.length} reply bytes identical`);
    }
    const counts = await heartbeatCounts(route);
    console.log(`[equivalence] ${label}: ${bytes} bytes compared; heartbeats ${JSON.stringify(counts)}`);
    expect(counts.ok).toBeGreaterThan(0);
    expect(counts.timeout).toBe(0);
    expect(counts.unsupported, 'the codec followed every sequence (never went off)').toBe(0);
  }

  it('redis: pipelines, MULTI/EXEC, errors, blocking, pub/sub, RESP2 and RESP3', async ({ expect }) => {
    await redisEquivalence(expect, 'redis', 'eq-redis', { port: redis.port }, redis.port, 1);
  });

  it('postgres: simple and extended query, unsynced batches, transactions, errors', async ({ expect }) => {
    await postgresEquivalence(expect, 'postgres', 'eq-postgres', { port: postgres.port }, 2);
  });

  it('redis over TLS: a TLS client direct vs a plaintext client through upstreamTls', async ({ expect }) => {
    const port = tlsRedis.port;
    await redisEquivalence(expect, 'redis over TLS', 'tls-redis', { port, open: () => tlsClient(port) }, ports['tls-redis']!, 4);
  });

  it('postgres over TLS: SSLRequest and TLS direct vs a plaintext client through upstreamTls', async ({ expect }) => {
    const port = tlsPostgres.port;
    await postgresEquivalence(expect, 'postgres over TLS', 'tls-postgres', { port, open: () => postgresTlsClient(port) }, 5);
  });

  it('mysql: queries, prepared statements, transactions, errors', async ({ expect }) => {
    const prng = new Prng(SEED).fork(3);
    let bytes = 0;
    for (const index of [1, 2]) {
      const script = mysqlScript(`mysql #${index}`, prng, EVERY_MS, 11);
      const { difference, direct } = await compare({ script, directPort: mariadb.port, proxiedPort: ports['eq-mysql']!, reader: () => new MysqlReader(), normalise: normaliseMysql });
      expect(difference, `seed ${SEED}`).toBeNull();
      bytes += direct.received.length;
      console.log(`[equivalence] ${script.name}: ${script.steps.length} steps, ${totalGapMs(script)} ms of silences, ${direct.received.length} reply bytes identical`);
    }
    const counts = await heartbeatCounts('eq-mysql');
    console.log(`[equivalence] mysql: ${bytes} bytes compared; heartbeats ${JSON.stringify(counts)}`);
    expect(counts.ok).toBeGreaterThan(0);
    expect(counts.timeout).toBe(0);
    expect(counts.unsupported, 'the codec followed every sequence (never went off)').toBe(0);
  });

  /**
   * Silences for the race, swept over [fromMs, toMs] in a scrambled order. After the last
   * reply a probe goes out on the first tick past `every` (+-10% jitter): somewhere in
   * [every * 0.9, every * 1.1 + TICK_MS]. A client write is held when it lands in the
   * RACE_DELAY_MS after the probe; a server push races the probe when it was sent in the
   * RACE_DELAY_MS before it. Each range below keeps the chance of a race near its maximum
   * (RACE_DELAY_MS / TICK_MS, about a third) for every silence in it.
   */
  function raceGaps(count: number, fromMs: number, toMs: number): number[] {
    return Array.from({ length: count }, (_, i) => Math.round(fromMs + (((i * 7) % count) / (count - 1)) * (toMs - fromMs)));
  }
  const clientRaceGaps = (count: number): number[] =>
    raceGaps(count, RACE_EVERY_MS * 1.1 + RACE_DELAY_MS - 20, RACE_EVERY_MS * 0.9 + TICK_MS + 20);
  const pushRaceGaps = (count: number): number[] =>
    raceGaps(count, RACE_EVERY_MS * 1.1 - 20, RACE_EVERY_MS * 0.9 + TICK_MS - RACE_DELAY_MS + 20);

  /**
   * Events that met the proxy while it awaited a probe's reply. A client write counts when
   * it happened between the probe leaving and its delayed reply arriving back at the proxy
   * (the proxy held it). A server push (a PUBLISH) counts when the server sent it less than
   * RACE_DELAY_MS before the probe left, or after that but before the server answered the
   * probe: the relay's delay makes it reach the proxy while the probe is out, ahead of the reply.
   */
  function racedEvents(relay: RecordingRelay, connectionIndex: number, probe: Buffer, times: readonly number[], from: 'client' | 'server'): { probes: number; raced: number } {
    const chunks = relay.connections[connectionIndex]?.chunks ?? [];
    const windows: Array<[number, number]> = [];
    chunks.forEach((chunk, i) => {
      if (chunk.from !== 'down' || !chunk.bytes.equals(probe)) return;
      const reply = chunks.slice(i + 1).find((later) => later.from === 'up');
      if (!reply) return;
      windows.push(from === 'client' ? [chunk.at, reply.at + RACE_DELAY_MS] : [chunk.at - RACE_DELAY_MS, reply.at]);
    });
    const raced = times.filter((time) => windows.some(([start, end]) => time > start && time < end)).length;
    return { probes: windows.length, raced };
  }

  async function race<R extends ReplyReader>(
    expect: ExpectStatic,
    name: 'redis' | 'postgres' | 'mysql' | 'redis-pubsub',
    script: Script<R>,
    directPort: number,
    reader: () => R,
    normalise: (bytes: Buffer, reader: R) => Buffer,
    probe: Buffer,
    /** When the racing events happened in the proxied run (default: the client's writes). */
    eventTimes?: () => readonly number[],
  ): Promise<number> {
    const relay = relays[name]!;
    const direct = await runScript(script, { port: directPort, reader, keepGaps: false });
    const connectionIndex = relay.connections.length;
    const firstEvent = eventTimes?.().length ?? 0;
    const proxied = await runScript(script, { port: ports[`race-${name}`]!, reader, keepGaps: true, tailMs: 2 * TICK_MS, stepTimeoutMs: 8_000 });
    expect(describeDifference(script, direct, proxied, normalise), `seed ${SEED}`).toBeNull();
    const times = eventTimes ? eventTimes().slice(firstEvent) : proxied.writeTimes;
    const { probes, raced } = racedEvents(relay, connectionIndex, probe, times, eventTimes ? 'server' : 'client');
    const counts = await heartbeatCounts(`race-${name}`);
    const what = eventTimes ? 'publishes' : 'writes';
    console.log(
      `[equivalence] race ${name}: ${times.length} ${what}, ${probes} probes (${RACE_DELAY_MS} ms round trip), ` +
        `${raced} ${what} landed while a probe was out; replies identical; heartbeats ${JSON.stringify(counts)}`,
    );
    expect(probes).toBeGreaterThan(0);
    expect(counts.timeout).toBe(0);
    expect(counts.unsupported).toBe(0);
    return raced;
  }

  it('race: redis writes just as a PING goes out', async ({ expect }) => {
    const raced = await race(expect, 'redis', redisRaceScript('redis race', clientRaceGaps(32)), redis.port, () => new RespReader(), normaliseRedis, REDIS_PROBE);
    expect(raced, 'some client writes raced a probe').toBeGreaterThan(0);
  });

  it('race: postgres writes just as a Sync goes out', async ({ expect }) => {
    const raced = await race(expect, 'postgres', postgresRaceScript('postgres race', clientRaceGaps(32)), postgres.port, () => new PgReader(), normalisePostgres, PG_SYNC);
    expect(raced, 'some client writes raced a probe').toBeGreaterThan(0);
  });

  it('race: mysql writes just as a COM_PING goes out', async ({ expect }) => {
    const raced = await race(expect, 'mysql', mysqlRaceScript('mysql race', clientRaceGaps(32)), mariadb.port, () => new MysqlReader(), normaliseMysql, COM_PING);
    expect(raced, 'some client writes raced a probe').toBeGreaterThan(0);
  });

  it('race: redis pub/sub messages pushed while a PING is out (RESP2 and RESP3)', async ({ expect }) => {
    const side = await redisSide(redis.port);
    try {
      const publishTimes: number[] = [];
      let raced = 0;
      for (const resp3 of [false, true]) {
        const script = redisPubSubRaceScript(`redis pub/sub race ${resp3 ? 'RESP3' : 'RESP2'}`, pushRaceGaps(20), side, resp3, publishTimes);
        raced += await race(expect, 'redis-pubsub', script, redis.port, () => new RespReader(), normaliseRedis, REDIS_PROBE, () => publishTimes);
      }
      expect(raced, 'some messages reached the proxy while a probe was out').toBeGreaterThan(0);
    } finally {
      side.close();
    }
  });
});
