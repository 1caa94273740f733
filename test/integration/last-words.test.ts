import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, listen0 } from '../helpers/net.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type RunningServer } from '../helpers/servers.js';

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
}

/** Connects, streams `payload`, and collects everything received until the connection ends. */
function tryOnce(port: number, payload: Buffer): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (hung: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ received: Buffer.concat(chunks).toString('latin1'), hung });
    };
    const timer = setTimeout(() => finish(true), TRY_BOUND_MS);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
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
  const missed = outcomes.filter((o) => !o.received.includes(errorLine)).length;
  const hung = outcomes.filter((o) => o.hung).length;
  expect({ tries: outcomes.length, missed, hung }).toEqual({ tries: TRIES, missed: 0, hung: 0 });
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
    const upstream = await listen0((socket) => {
      socket.once('data', () => {
        socket.write(reply);
        socket.resetAndDestroy();
      });
    });
    cleanups.push(() => upstream.close());
    const { port } = await proxyTo(upstream.port, 'tcp');
    expectEveryErrorSeen(await runTries(port, Buffer.alloc(1024 * 1024, 'b')), reply);
  }, 120_000);
});
