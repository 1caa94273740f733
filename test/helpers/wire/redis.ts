import net from 'node:net';
import type { Prng } from './prng.js';
import { gapAround, type ReplyReader, type Script, type Step } from './script.js';

// Redis on the wire for the equivalence test: RESP request bytes, a reader that counts
// complete top-level reply frames (RESP2 and RESP3, pushes included), the one value that
// legitimately differs between two connections (the client id in HELLO's reply), and a
// random script generator.

const CRLF = '\r\n';

/** A command as a RESP array of bulk strings. */
export function resp(...args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}${CRLF}`, 'latin1')];
  for (const arg of args) {
    const bytes = typeof arg === 'string' ? Buffer.from(arg, 'latin1') : arg;
    parts.push(Buffer.from(`$${bytes.length}${CRLF}`, 'latin1'), bytes, Buffer.from(CRLF, 'latin1'));
  }
  return Buffer.concat(parts);
}

/** The heartbeat the proxy sends (src/protocols/redis.ts): scripts that detect races never send it themselves. */
export const REDIS_PROBE = resp('PING');

export class RespReader implements ReplyReader {
  units = 0;
  #pending: Buffer = Buffer.alloc(0);

  feed(chunk: Buffer): void {
    this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    for (;;) {
      const end = frameEnd(this.#pending, 0);
      if (end < 0) return;
      this.units++;
      this.#pending = this.#pending.subarray(end);
    }
  }
}

/** Offset just past the frame starting at `at`, or -1 when it is not complete yet. */
function frameEnd(buffer: Buffer, at: number): number {
  if (at >= buffer.length) return -1;
  const lineEnd = buffer.indexOf(CRLF, at, 'latin1');
  if (lineEnd < 0) return -1;
  const type = String.fromCharCode(buffer[at]!);
  const line = buffer.toString('latin1', at + 1, lineEnd);
  const next = lineEnd + 2;
  switch (type) {
    case '+': case '-': case ':': case '_': case ',': case '#': case '(':
      return next;
    case '$': case '!': case '=': {
      const length = Number(line);
      if (length < 0) return next;
      return buffer.length >= next + length + 2 ? next + length + 2 : -1;
    }
    case '*': case '~': case '>': case '%': case '|': {
      const count = Number(line);
      if (count < 0) return next;
      const elements = type === '%' || type === '|' ? count * 2 : count;
      let offset = next;
      for (let i = 0; i < elements; i++) {
        offset = frameEnd(buffer, offset);
        if (offset < 0) return -1;
      }
      // An attribute describes the frame after it: the two are one reply.
      return type === '|' ? frameEnd(buffer, offset) : offset;
    }
    default:
      throw new Error(`not RESP: type byte 0x${buffer[at]!.toString(16)}`);
  }
}

/** HELLO's reply carries the connection's id, which differs between any two connections. */
export function normaliseRedis(bytes: Buffer): Buffer {
  return Buffer.from(bytes.toString('latin1').replace(/\$2\r\nid\r\n:\d+\r\n/g, '$2\r\nid\r\n:<id>\r\n'), 'latin1');
}

/** A second connection, straight to the server in every run: the publisher in pub/sub steps. */
export interface RedisSide {
  command(...args: string[]): Promise<void>;
  close(): void;
}

export async function redisSide(port: number): Promise<RedisSide> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const reader = new RespReader();
  socket.on('data', (chunk: Buffer) => reader.feed(chunk));
  return {
    async command(...args) {
      const target = reader.units + 1;
      socket.write(resp(...args));
      const deadline = Date.now() + 5_000;
      while (reader.units < target) {
        if (Date.now() > deadline) throw new Error(`side connection: no reply to ${args[0]}`);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    },
    close: () => socket.destroy(),
  };
}

type RedisStep = Step<RespReader>;

/**
 * A random Redis session: pipelines of ordinary commands, errors, a command split across
 * two writes, MULTI/EXEC (and DISCARD) with silences inside the transaction, a blocking
 * BLPOP, and pub/sub (SUBSCRIBE, a PUBLISH from `side`, PSUBSCRIBE, PING while
 * subscribed, UNSUBSCRIBE). With `resp3` it starts with HELLO 3 and runs a command while
 * subscribed (RESP3 allows it; messages arrive as push frames).
 */
export function redisScript(name: string, prng: Prng, everyMs: number, side: RedisSide, options: { resp3: boolean; blocks: number }): Script<RespReader> {
  const steps: RedisStep[] = [];
  const gap = (): number => gapAround(prng, everyMs);
  const add = (label: string, write: Buffer | null, units: number, gapMs = gap(), action?: () => Promise<void>): void => {
    steps.push({ label, gapMs, write: write ? () => write : undefined, units, action });
  };
  if (options.resp3) add('HELLO 3', resp('HELLO', '3'), 1, 0);
  add('FLUSHDB', resp('FLUSHDB'), 1, 0);

  const keys = ['k1', 'k2', 'k3'];
  const value = (): string => (prng.chance(0.15) ? prng.word(prng.int(2_000, 70_000)) : prng.word(prng.int(0, 40)));
  const ordinary = (): { label: string; bytes: Buffer } => {
    const key = prng.pick(keys);
    const choices: Array<() => { label: string; bytes: Buffer }> = [
      () => ({ label: 'SET', bytes: resp('SET', key, value()) }),
      () => ({ label: 'GET', bytes: resp('GET', key) }),
      () => ({ label: 'INCR', bytes: resp('INCR', 'counter') }),
      () => ({ label: 'INCR on text (error)', bytes: resp('INCR', key) }),
      () => ({ label: 'DEL', bytes: resp('DEL', key) }),
      () => ({ label: 'APPEND', bytes: resp('APPEND', key, value()) }),
      () => ({ label: 'STRLEN', bytes: resp('STRLEN', key) }),
      () => ({ label: 'MGET', bytes: resp('MGET', ...keys) }),
      () => ({ label: 'LPUSH', bytes: resp('LPUSH', 'list', prng.word(5)) }),
      () => ({ label: 'LRANGE', bytes: resp('LRANGE', 'list', '0', '-1') }),
      () => ({ label: 'HSET', bytes: resp('HSET', 'hash', prng.word(3), prng.word(8)) }),
      () => ({ label: 'HGETALL', bytes: resp('HGETALL', 'hash') }),
      () => ({ label: 'ZADD', bytes: resp('ZADD', 'zset', String(prng.int(0, 100) / 4), prng.word(4)) }),
      () => ({ label: 'ZRANGE WITHSCORES', bytes: resp('ZRANGE', 'zset', '0', '-1', 'WITHSCORES') }),
      () => ({ label: 'SADD', bytes: resp('SADD', 'set', String(prng.int(1, 50))) }),
      () => ({ label: 'SMEMBERS', bytes: resp('SMEMBERS', 'set') }),
      () => ({ label: 'EXISTS', bytes: resp('EXISTS', ...keys) }),
      () => ({ label: 'unknown command (error)', bytes: resp('NOSUCHCOMMAND', prng.word(3)) }),
      () => ({ label: 'GET without key (error)', bytes: resp('GET') }),
      () => ({ label: 'inline ECHO', bytes: Buffer.from(`ECHO ${prng.word(6)}\r\n`, 'latin1') }),
    ];
    return prng.pick(choices)();
  };

  for (let block = 0; block < options.blocks; block++) {
    const kind = prng.pick(['pipeline', 'pipeline', 'split', 'multi', 'blocking', 'pubsub'] as const);
    switch (kind) {
      case 'pipeline': {
        const commands = Array.from({ length: prng.int(1, 6) }, ordinary);
        add(`pipeline: ${commands.map((c) => c.label).join(', ')}`, Buffer.concat(commands.map((c) => c.bytes)), commands.length);
        break;
      }
      case 'split': {
        // Half a command, a silence, the rest: no heartbeat may go into the middle of it.
        const command = resp('SET', prng.pick(keys), prng.word(prng.int(10, 60)));
        const cut = prng.int(1, command.length - 1);
        add(`SET split at byte ${cut}: first part`, command.subarray(0, cut), 0);
        add('SET split: rest', command.subarray(cut), 1);
        break;
      }
      case 'multi': {
        add('MULTI', resp('MULTI'), 1);
        const queued = prng.int(1, 3);
        for (let i = 0; i < queued; i++) {
          const command = ordinary();
          add(`queued ${command.label}`, command.bytes, 1);
        }
        if (prng.chance(0.25)) add('DISCARD', resp('DISCARD'), 1);
        else add('EXEC', resp('EXEC'), 1);
        break;
      }
      case 'blocking': {
        if (prng.chance(0.5)) {
          add('BLPOP on an empty list, 0.2 s', resp('BLPOP', 'nothing', '0.2'), 1);
        } else {
          // Blocks until the side connection pushes.
          add('BLPOP served by a push from another connection', resp('BLPOP', 'queue', '2'), 1, gap(), async () => {
            await new Promise((resolve) => setTimeout(resolve, 50));
            await side.command('RPUSH', 'queue', 'job');
          });
        }
        break;
      }
      case 'pubsub': {
        // Messages are drawn now, not when the action runs: both runs publish the same bytes.
        const first = prng.word(12);
        const second = prng.word(prng.int(1, 3_000));
        add('SUBSCRIBE c1 c2', resp('SUBSCRIBE', 'c1', 'c2'), 2);
        add('PUBLISH c1 (another connection)', null, 1, gap(), () => side.command('PUBLISH', 'c1', first));
        add('PSUBSCRIBE c*', resp('PSUBSCRIBE', 'c*'), 1);
        // c2 is subscribed and matches c*: a message and a pmessage.
        add('PUBLISH c2 (another connection)', null, 2, gap(), () => side.command('PUBLISH', 'c2', second));
        if (options.resp3) add('GET while subscribed (RESP3)', resp('GET', prng.pick(keys)), 1);
        else add('client PING while subscribed', resp('PING', 'mine'), 1);
        add('UNSUBSCRIBE c1 c2', resp('UNSUBSCRIBE', 'c1', 'c2'), 2);
        add('PUNSUBSCRIBE c*', resp('PUNSUBSCRIBE', 'c*'), 1);
        break;
      }
    }
  }
  add('GET at the end', resp('GET', 'k1'), 1);
  return { name, steps };
}

/** Simple request/reply steps with silences swept across the probe window (the race). */
export function redisRaceScript(name: string, gaps: readonly number[]): Script<RespReader> {
  // Its own database, so it may run beside redisScript (database 0) on the same server.
  const steps: RedisStep[] = [{ label: 'SELECT 9, FLUSHDB', gapMs: 0, write: () => Buffer.concat([resp('SELECT', '9'), resp('FLUSHDB')]), units: 2 }];
  gaps.forEach((gapMs, i) => {
    const write = i % 3 === 2 ? Buffer.concat([resp('INCR', 'n'), resp('GET', 'n')]) : resp('INCR', 'n');
    steps.push({ label: `INCR #${i}`, gapMs, write: () => write, units: i % 3 === 2 ? 2 : 1 });
  });
  return { name, steps };
}

/**
 * Pub/sub with the server pushing while probes are out: the connection subscribes, then
 * another connection publishes after each silence, so messages (RESP2 arrays, RESP3 pushes)
 * reach the proxy before, around and after the replies to its probes. `publishTimes`
 * receives performance.now() of each PUBLISH.
 */
export function redisPubSubRaceScript(name: string, gaps: readonly number[], side: RedisSide, resp3: boolean, publishTimes: number[]): Script<RespReader> {
  const steps: RedisStep[] = [];
  if (resp3) steps.push({ label: 'HELLO 3', gapMs: 0, write: () => resp('HELLO', '3'), units: 1 });
  steps.push({ label: 'SUBSCRIBE news', gapMs: 0, write: () => resp('SUBSCRIBE', 'news'), units: 1 });
  gaps.forEach((gapMs, i) => {
    steps.push({
      label: `PUBLISH news #${i} (another connection)`,
      gapMs,
      units: 1,
      action: async () => {
        publishTimes.push(performance.now());
        await side.command('PUBLISH', 'news', `message ${i} ${'x'.repeat(i * 5)}`);
      },
    });
  });
  steps.push({ label: 'UNSUBSCRIBE news', gapMs: 0, write: () => resp('UNSUBSCRIBE', 'news'), units: 1 });
  return { name, steps };
}
