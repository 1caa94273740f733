import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unacknowledgedBytes } from '../../src/net/sockopt.js';
import { freePort, listen0 } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

// An upstream's last words before a reset reach the client (issue 8, defect 11): a server
// that answers with an error and then resets the connection while input is still unread
// (Redis's "too big inline request", MySQL's "packet too large", a PostgreSQL FATAL
// during a large write). Directly, the client always reads the error before the reset;
// through the proxy it must too, and its write must never hang.

const TRIES = 100;
const BATCH = 10;
/** Generous: one try takes a few milliseconds when nothing is wrong. */
const TRY_BOUND_MS = 8_000;

interface Outcome {
  readonly received: string;
  readonly hung: boolean;
  /** The client's error, with the call that met it ('read ECONNRESET', 'write EPIPE'), or ''. */
  readonly error: string;
}

/** Connects, streams `payload`, and collects everything received until the connection ends. */
function tryOnce(port: number, payload: Buffer): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let settled = false;
    let error = '';
    const finish = (hung: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ received: Buffer.concat(chunks).toString('latin1'), hung, error });
    };
    const timer = setTimeout(() => finish(true), TRY_BOUND_MS);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => (error = `${e.syscall ?? ''} ${e.code ?? e.message}`));
    socket.on('close', () => finish(false));
    socket.on('connect', () => socket.write(payload));
  });
}

async function runTries(port: number, payload: Buffer): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  for (let done = 0; done < TRIES; done += BATCH) {
    outcomes.push(...(await Promise.all(Array.from({ length: BATCH }, () => tryOnce(port, payload)))));
  }
  return outcomes;
}

function expectEveryErrorSeen(outcomes: Outcome[], errorLine: string): void {
  const misses = outcomes.filter((o) => !o.received.includes(errorLine));
  const hung = outcomes.filter((o) => o.hung).length;
  // How the missed tries ended (bytes received, the client's error): what to look at when this fails.
  const howMissed = misses.slice(0, 5).map((o) => `${o.received.length} B, ${o.error || 'no error'}${o.hung ? ', hung' : ''}`);
  expect({ tries: outcomes.length, missed: misses.length, hung }, howMissed.join('; ')).toEqual({ tries: TRIES, missed: 0, hung: 0 });
}

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterAll(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function proxyTo(upstreamPort: number, protocol: string, extra = ''): Promise<{ proxy: RunningProxy; port: number }> {
  const port = await freePort();
  const proxy = await startProxy({
    yaml: `
admin: { listen: "{{admin}}" }
log: { level: warn }
routes:
  - { name: r, protocol: ${protocol}, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstreamPort}${extra} }
`,
  });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return { proxy, port };
}

describe('a reply followed by a reset reaches the client', () => {
  let redis: RunningServer;
  beforeAll(async () => {
    redis = await startRedis();
    cleanups.push(() => redis.stop());
  });

  // Larger than proto-inline-max-size (64 KiB) with no newline: Redis answers the error
  // and closes with the rest unread, which the kernel turns into a reset.
  const inline = Buffer.alloc(256 * 1024, 'a');
  const redisError = '-ERR Protocol error: too big inline request';

  it('directly from redis-server (the behaviour the proxy must match)', async () => {
    expectEveryErrorSeen(await runTries(redis.port, inline), redisError);
  });

  for (const protocol of ['tcp', 'redis']) {
    it(`through a ${protocol} route to redis-server`, async () => {
      const { port } = await proxyTo(redis.port, protocol, protocol === 'redis' ? ', heartbeat: { every: 30s, timeout: 5s }' : '');
      expectEveryErrorSeen(await runTries(port, inline), redisError);
    }, 120_000);
  }

  it('from a scripted upstream that replies and then resets while the client is still writing', async () => {
    const reply = `-ERR last words ${'x'.repeat(200)}\r\n`;
    // The reset waits until the proxy's kernel acknowledged the reply: a reset sent at once
    // can overtake it on loopback (the two packets queue on different CPUs' backlogs when
    // this process moves between the write and the close), and then no proxy could have it.
    let unacknowledged = 0;
    const upstream = await listen0((socket) => {
      socket.once('data', () => {
        socket.write(reply, async () => {
          for (let i = 0; i < 200 && (unacknowledgedBytes(socket) ?? 0) > 0; i++) await sleep(10);
          if ((unacknowledgedBytes(socket) ?? 0) > 0) unacknowledged++;
          socket.resetAndDestroy();
        });
      });
    });
    cleanups.push(() => upstream.close());
    const { port } = await proxyTo(upstream.port, 'tcp');
    expectEveryErrorSeen(await runTries(port, Buffer.alloc(1024 * 1024, 'b')), reply);
    expect(unacknowledged).toBe(0);
  }, 120_000);
});

// The same last words when the client is not reading at the moment of the reset: the
// server's bytes sit in the proxy (node's queue, then the kernel's send queue toward the
// client), and a reset of the client socket empties that send queue. They must all be
// delivered, in order, before the client sees the reset.
describe('a reply followed by a reset reaches a client that is not reading at that moment', () => {
  const CLIENT_STALL_MS = 1_500;
  /** Whether the server's kernel saw every byte acknowledged (by the proxy) before the reset. */
  const acknowledged = new Map<number, boolean>();

  /** Bytes in the send queue of the connection from local port `from` to `to` (iproute2 `ss`), or null when it is gone. */
  function sendQueue(from: number, to: number): number | null {
    const line = execFileSync('ss', ['-tnH', 'state', 'established', `( sport = :${from} and dport = :${to} )`]).toString().trim();
    return line ? Number(line.split(/\s+/)[1]) : null;
  }

  /** An upstream that answers the first client bytes with `reply`, waits until the proxy has it all, then resets. */
  async function replyThenReset(reply: Buffer): Promise<number> {
    const upstream = await listen0((socket) => {
      socket.once('data', () => {
        socket.write(reply, async () => {
          let delivered = false;
          for (let i = 0; i < 100 && !delivered; i++) {
            delivered = sendQueue(socket.localPort!, socket.remotePort!) === 0;
            if (!delivered) await sleep(50);
          }
          acknowledged.set(socket.remotePort!, delivered);
          socket.resetAndDestroy();
        });
      });
    });
    cleanups.push(() => upstream.close());
    return upstream.port;
  }

  /** Deterministic, position-dependent bytes: a loss, duplicate or reorder anywhere changes them. */
  function patterned(length: number): Buffer {
    const bytes = Buffer.alloc(length);
    for (let i = 0; i < length; i++) bytes[i] = 0x61 + ((i * 7 + (i >> 12)) % 26);
    return bytes;
  }

  const cases = [
    { protocol: 'tcp', frame: (body: Buffer) => body, request: 'go' },
    { protocol: 'redis', frame: (body: Buffer) => Buffer.concat([Buffer.from(`$${body.length}\r\n`), body, Buffer.from('\r\n')]), request: '*2\r\n$3\r\nGET\r\n$1\r\nk\r\n' },
  ];
  for (const { protocol, frame, request } of cases) {
    for (const size of [128 << 10, 512 << 10, 1 << 20]) {
      it(`${protocol} route, ${size >> 10} KiB then RST while the client stalls ${CLIENT_STALL_MS} ms`, async () => {
        const reply = frame(patterned(size));
        const { proxy, port } = await proxyTo(await replyThenReset(reply), protocol);
        const client = net.connect({ host: '127.0.0.1', port });
        const chunks: Buffer[] = [];
        let error = '';
        client.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
        await new Promise((resolve) => client.once('connect', resolve));
        client.pause();
        client.write(request);
        await sleep(CLIENT_STALL_MS);
        client.on('data', (chunk: Buffer) => chunks.push(chunk));
        client.resume();
        await until(() => client.destroyed, 10_000, 'client connection ended');
        const received = Buffer.concat(chunks);
        // The scenario holds only if the server's bytes all reached the proxy before its reset.
        expect([...acknowledged.values()].at(-1)).toBe(true);
        // Whether the client reads the reset as ECONNRESET or as an EOF after the data is the
        // kernel's choice (an RST that finds the data already queued ends the stream at EOF).
        expect({ length: received.length, intact: received.equals(reply), error }).toMatchObject({ length: reply.length, intact: true });
        expect(['', 'ECONNRESET']).toContain(error);
        await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'r', reason: 'peer_reset' }) === 1, 5_000, 'the pair closed as the upstream reset');
        expect(proxy.child.exitCode).toBeNull();
      });
    }
  }
});
