import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import tls from 'node:tls';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, outcomeOf, refused } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { makePki } from '../helpers/pki.js';
import { startRedis } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';
import { generator } from '../helpers/random.js';
import { readSockoptBytes } from '../../src/net/sockopt.js';

// An outsider's attack on the raw TCP data path (plain tcp routes run on libuv handles
// without net.Socket, reading through one shared buffer): byte integrity under many
// concurrent connections with random chunking, pauses and half-closes; resets from either
// side with no fd leak and one eviction per connection; bounded memory behind a
// non-reading upstream; upstreams that close, refuse or are hostnames.

const KiB = 1024;
const MiB = 1024 * KiB;

/** Every stream is a window on one random tape, so each side can check what it reads without storing it. */
const TAPE = randomBytes(4 * MiB);

function tapeSlice(start: number, length: number): Buffer {
  const from = start % TAPE.length;
  if (from + length <= TAPE.length) return TAPE.subarray(from, from + length);
  return Buffer.concat([TAPE.subarray(from), tapeSlice(0, length - (TAPE.length - from))]);
}

/**
 * Compares what a socket reads against the tape; resolves with the count at EOF. With
 * `header`, the first 4 bytes name the connection and `begin` is told them before the
 * tape is compared (the start is then begin's).
 */
function checkedReader(socket: net.Socket, start: number | ((id: number) => number), random: (below: number) => number): Promise<number> {
  return new Promise((resolve, reject) => {
    let offset = 0;
    let from = typeof start === 'number' ? start : -1;
    let head = Buffer.alloc(0);
    socket.on('data', (received: Buffer) => {
      let chunk = received;
      if (from < 0) {
        head = Buffer.concat([head, chunk]);
        if (head.length < 4) return;
        from = (start as (id: number) => number)(head.readUInt32BE(0));
        chunk = head.subarray(4);
      }
      if (!chunk.equals(tapeSlice(from + offset, chunk.length))) {
        reject(new Error(`bytes ${offset}..${offset + chunk.length} differ from what was sent`));
        socket.destroy();
        return;
      }
      offset += chunk.length;
      // A reader that stops for a while, then goes on.
      if (random(8) < 1) {
        socket.pause();
        setTimeout(() => socket.resume(), random(200));
      }
    });
    socket.once('end', () => resolve(offset));
    socket.once('error', reject);
  });
}

/** Writes `total` tape bytes from `start` in random chunks of 1 B..256 KiB with backpressure, then FIN. */
async function checkedWriter(socket: net.Socket, start: number, total: number, random: (below: number) => number): Promise<void> {
  let sent = 0;
  while (sent < total) {
    const size = Math.min(total - sent, 1 + Math.floor(random(random(2) < 1 ? 64 : 256 * KiB)));
    const flushed = socket.write(tapeSlice(start + sent, size));
    sent += size;
    if (!flushed) await new Promise((resolve) => socket.once('drain', resolve));
    else if (random(16) < 1) await sleep(random(50));
  }
  await sleep(random(100));
  socket.end();
}

/** The promise's value, or a rejection naming `what` after timeoutMs. */
function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${timeoutMs} ms`)), timeoutMs)));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

const SOL_SOCKET = 1;
const SO_ERROR = 4;

/**
 * How a socket's peer ended it: 'reset' or 'fin'. A Node socket reports an RST that comes
 * right after data as 'end' (libuv), so the kernel's pending error tells the two apart.
 */
function howEnded(socket: net.Socket): Promise<'reset' | 'fin'> {
  return new Promise((resolve) => {
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNRESET' ? 'reset' : 'fin'));
    socket.once('end', () => {
      const soError = new Int32Array(1);
      readSockoptBytes(socket, SOL_SOCKET, SO_ERROR, new Uint8Array(soError.buffer));
      resolve(soError[0] === osConstants.errno.ECONNRESET ? 'reset' : 'fin');
      socket.destroy();
    });
  });
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function rssBytes(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'))!;
  return Number(line.split(/\s+/)[1]) * KiB;
}

function evictions(values: Map<string, number>, route: string): number {
  let total = 0;
  for (const [key, value] of values) if (key.startsWith('keepalive_proxy_evictions_total{') && key.includes(`route="${route}"`)) total += value;
  return total;
}

async function routeProxy(routes: Array<{ name: string; upstream: string; lines?: string }>): Promise<{ proxy: RunningProxy; ports: number[] }> {
  const ports: number[] = [];
  let yaml = 'admin: { listen: "{{admin}}" }\nroutes:\n';
  for (const route of routes) {
    const port = await freePort();
    ports.push(port);
    yaml += `  - name: ${route.name}\n    listen: 127.0.0.1:${port}\n    upstream: ${route.upstream}\n    connectTimeout: 2s\n${route.lines ?? ''}`;
  }
  return { proxy: await startProxy({ yaml }), ports };
}

/** Waits until the route has no connection left (every session closed and counted). */
async function idle(proxy: RunningProxy, route: string): Promise<Map<string, number>> {
  return until(
    async () => {
      const values = parseMetrics(await proxy.metrics());
      return sample(values, 'keepalive_proxy_connections_active', { route }) === 0 ? values : null;
    },
    20_000,
    `${route} idle`,
    100,
  );
}

describe('raw TCP path', () => {
  /** Each test says what the one upstream does with its connections. */
  let onUpstream: (socket: net.Socket) => void = () => {};
  let proxy: RunningProxy;
  let port: number;
  let closeUpstream = async (): Promise<void> => {};

  beforeAll(async () => {
    const upstream = await listen0((socket) => onUpstream(socket));
    closeUpstream = upstream.close;
    ({
      proxy,
      ports: [port = 0],
    } = await routeProxy([{ name: 'raw', upstream: `127.0.0.1:${upstream.port}` }]));
  });
  afterAll(async () => {
    await proxy?.stop();
    await closeUpstream();
  });

  it('carries every byte in order on 200 concurrent connections with random chunks, pauses and half-closes', async () => {
    const CONNECTIONS = 200;
    const sizeOf = (id: number, direction: number): number => Math.floor(generator(id * 2 + direction + 1)(512 * KiB));
    const upstreamDone: Array<Promise<void>> = [];
    onUpstream = (socket) => {
      // The first 4 bytes say which connection this is; the rest is checked against the tape.
      upstreamDone.push(
        new Promise<void>((resolve, reject) => {
          let id = -1;
          const random = generator(socket.remotePort! + 1_000_000);
          const received = checkedReader(
            socket,
            (named) => {
              id = named;
              checkedWriter(socket, id * 104_729, sizeOf(id, 1), random).catch(reject);
              return id * 7919;
            },
            random,
          );
          received.then((count) => {
            if (count !== sizeOf(id, 0)) reject(new Error(`upstream ${id} read ${count} of ${sizeOf(id, 0)} bytes`));
            else resolve();
          }, reject);
        }),
      );
    };
    const before = evictions(parseMetrics(await proxy.metrics()), 'raw');
    const clients = Array.from({ length: CONNECTIONS }, async (_, id) => {
      const socket = await connect(port);
      const random = generator(id + 2_000_000);
      const head = Buffer.alloc(4);
      head.writeUInt32BE(id);
      socket.write(head);
      const [count] = await Promise.all([checkedReader(socket, id * 104_729, random), checkedWriter(socket, id * 7919, sizeOf(id, 0), random)]);
      expect(count, `client ${id}`).toBe(sizeOf(id, 1));
      socket.destroy();
    });
    await Promise.all(clients);
    await until(() => upstreamDone.length === CONNECTIONS, 10_000, 'every upstream connection');
    await Promise.all(upstreamDone);
    const after = await idle(proxy, 'raw');
    expect(evictions(after, 'raw') - before).toBe(CONNECTIONS);
  }, 60_000);

  it('resets the other side after delivering what was read, on 500 resets from either side, with no fd leak and one eviction each', async () => {
    const CONNECTIONS = 500;
    const BATCH = 50;
    // Variant by connection: 0 = the client resets after its bytes, 1 = the upstream resets
    // after its bytes, 2 = the client resets while the proxy holds bytes for it (it never read).
    const variantOf = (id: number): number => id % 3;
    const lastWords = (id: number): Buffer => tapeSlice(id * 31, 1 + (id % 7) * 9_000);
    const upstreamSaw = new Map<number, Promise<{ bytes: Buffer; reset: boolean }>>();
    onUpstream = (socket) => {
      const chunks: Buffer[] = [];
      const ended = howEnded(socket);
      let named = false;
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        const all = Buffer.concat(chunks);
        if (named || all.length < 4) return;
        named = true;
        const id = all.readUInt32BE(0);
        upstreamSaw.set(
          id,
          ended.then((how) => ({ bytes: Buffer.concat(chunks).subarray(4), reset: how === 'reset' })),
        );
        if (variantOf(id) === 1) socket.write(lastWords(id), () => socket.resetAndDestroy());
        if (variantOf(id) === 2) socket.write(tapeSlice(0, 2 * MiB));
      });
    };
    await idle(proxy, 'raw');
    const fdsBefore = fdCount(proxy.pid);
    const before = evictions(parseMetrics(await proxy.metrics()), 'raw');
    for (let first = 0; first < CONNECTIONS; first += BATCH) {
      await Promise.all(
        Array.from({ length: BATCH }, async (_, i) => {
          const id = first + i;
          const socket = await connect(port);
          const head = Buffer.alloc(4);
          head.writeUInt32BE(id);
          const variant = variantOf(id);
          const received: Buffer[] = [];
          const closed = howEnded(socket);
          if (variant === 2) socket.pause();
          else socket.on('data', (chunk: Buffer) => received.push(chunk));
          socket.write(variant === 0 ? Buffer.concat([head, lastWords(id)]) : head);
          if (variant === 0) {
            await until(() => upstreamSaw.has(id), 5_000, `upstream of ${id}`);
            // Reset right after the bytes went out: the proxy may not have read them yet.
            socket.resetAndDestroy();
            const seen = await within(upstreamSaw.get(id)!, 10_000, `upstream of ${id} (client reset)`);
            expect(seen.bytes.equals(lastWords(id)), `upstream of ${id} got the client's last words`).toBe(true);
            expect(seen.reset, `upstream of ${id} was reset`).toBe(true);
          } else if (variant === 1) {
            expect(await within(closed, 10_000, `client ${id} (upstream reset)`), `client ${id} was reset`).toBe('reset');
            expect(Buffer.concat(received).equals(lastWords(id)), `client ${id} got the upstream's last words`).toBe(true);
          } else {
            await until(() => upstreamSaw.has(id), 5_000, `upstream of ${id}`);
            await sleep(20);
            socket.resetAndDestroy();
            expect((await within(upstreamSaw.get(id)!, 10_000, `upstream of ${id} (client reset, proxy holding bytes)`)).reset, `upstream of ${id} was reset`).toBe(true);
          }
          socket.destroy();
        }),
      );
    }
    const after = await idle(proxy, 'raw');
    expect(evictions(after, 'raw') - before).toBe(CONNECTIONS);
    expect(sample(after, 'keepalive_proxy_evictions_total', { route: 'raw', reason: 'peer_reset' }) > 0).toBe(true);
    await until(() => fdCount(proxy.pid) <= fdsBefore, 5_000, `fds back to ${fdsBefore} (now ${fdCount(proxy.pid)})`);
  }, 60_000);

  it('holds memory bounded behind an upstream that never reads: 200 clients sending 10 MiB each', async () => {
    const CONNECTIONS = 200;
    const accepted: net.Socket[] = [];
    onUpstream = (socket) => {
      socket.pause(); // never reads
      accepted.push(socket);
    };
    await idle(proxy, 'raw');
    const rssBefore = rssBytes(proxy.pid);
    const payload = tapeSlice(0, 10 * MiB);
    const clients = await Promise.all(Array.from({ length: CONNECTIONS }, () => connect(port)));
    for (const client of clients) client.write(payload);
    // Until every pair stalls: the bytes the proxy took stop growing.
    let last = -1;
    await until(
      async () => {
        const moved = sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_bytes_total', { route: 'raw', direction: 'upstream' });
        const settled = moved === last && accepted.length === CONNECTIONS;
        last = moved;
        return settled;
      },
      30_000,
      'the pairs to stall',
      500,
    );
    const grown = rssBytes(proxy.pid) - rssBefore;
    console.log(`RSS of the proxy: ${(rssBefore / MiB).toFixed(1)} MiB idle, +${(grown / MiB).toFixed(1)} MiB with ${CONNECTIONS} stalled pairs (${(last / MiB).toFixed(0)} MiB taken from clients)`);
    for (const client of clients) client.destroy();
    for (const socket of accepted) socket.destroy();
    // The kernel's buffers hold what is in flight; the proxy at most a read's worth per pair.
    expect(grown, `RSS grew by ${(grown / MiB).toFixed(1)} MiB`).toBeLessThan(200 * MiB);
    await idle(proxy, 'raw');
  }, 60_000);
});

describe('raw TCP path: upstreams that fail', () => {
  it('resets the client when the upstream accepts then closes, refuses, or is a hostname that works', async () => {
    const closer = await listen0((socket) => socket.destroy());
    const echo = await listen0((socket) => socket.pipe(socket));
    const refusedPort = await freePort();
    const { proxy, ports } = await routeProxy([
      { name: 'closer', upstream: `127.0.0.1:${closer.port}` },
      { name: 'refused', upstream: `127.0.0.1:${refusedPort}` },
      { name: 'named', upstream: `localhost:${echo.port}` },
    ]);
    try {
      // The proxy may reset before the client saw its own connect complete: that is a reset too (outcomeOf).
      for (let i = 0; i < 20; i++) {
        expect(['fin', 'ECONNRESET']).toContain((await outcomeOf(ports[0]!, 'ping')).end);
        expect((await outcomeOf(ports[1]!, 'ping')).end).toBe('ECONNRESET');
      }
      const words = tapeSlice(5, 300 * KiB);
      const socket = await connect(ports[2]!);
      const echoed = checkedReader(socket, 5, () => 1);
      socket.end(words);
      expect(await echoed).toBe(words.length);
      const values = await idle(proxy, 'closer');
      expect(evictions(values, 'closer')).toBe(20);
      expect(sample(await idle(proxy, 'refused'), 'keepalive_proxy_evictions_total', { route: 'refused', reason: 'connect_error' })).toBe(20);
    } finally {
      await proxy.stop();
      await closer.close();
      await echo.close();
    }
  }, 60_000);
});

describe('raw TCP path: timers, heartbeats, /connections and drain', () => {
  it('closes idle and unanswered pairs, heartbeats a real redis-server, reports raw sessions and drains on SIGTERM', async () => {
    const redis = await startRedis();
    const echo = await listen0((socket) => socket.pipe(socket));
    const silent = await listen0(() => {});
    const { proxy, ports } = await routeProxy([
      { name: 'idle', upstream: `127.0.0.1:${echo.port}`, lines: '    idleTimeout: 1s\n' },
      { name: 'mute', upstream: `127.0.0.1:${silent.port}`, lines: '    responseTimeout: 1s\n' },
      { name: 'redis', upstream: `127.0.0.1:${redis.port}`, lines: '    protocol: redis\n    heartbeat: { every: 1s, timeout: 2s }\n' },
      { name: 'drain', upstream: `127.0.0.1:${echo.port}` },
    ]);
    try {
      const [idlePort, mutePort, redisPort, drainPort] = ports as [number, number, number, number];
      const muteClient = await connect(mutePort);
      const muteEnd = howEnded(muteClient);
      const redisClient = await connect(redisPort);
      const drainClient = await connect(drainPort);
      // Last, and the mute pair's request only after the listing: their 1 s deadlines must not
      // pass before /connections has shown all four, however slow the machine.
      const idleClient = await connect(idlePort);
      const idleEnd = howEnded(idleClient);

      // /connections and the kernel watch see raw sessions as they see sockets.
      const connections = await until(async () => {
        const all = await proxy.connections();
        return all.length === 4 ? all : null;
      }, 5_000, '4 connections');
      for (const connection of connections) {
        expect(connection['client'], JSON.stringify(connection)).toMatch(/^127\.0\.0\.1:\d+$/);
        expect(connection['upstream'], JSON.stringify(connection)).toMatch(/^127\.0\.0\.1:\d+$/);
        const options = connection['socketOptions'] as { client: { keepalive: boolean } | null; upstream: { keepalive: boolean } | null };
        expect(options.client?.keepalive).toBe(true);
        expect(options.upstream?.keepalive).toBe(true);
        const info = connection['tcpInfo'] as { client: { rttUs: number } | null; upstream: { rttUs: number } | null };
        expect(typeof info.client?.rttUs).toBe('number');
        expect(typeof info.upstream?.rttUs).toBe('number');
      }
      muteClient.write('request');

      // Redis: PINGs every second while the client is silent, then the client's own command is answered in order.
      await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_heartbeats_total', { route: 'redis', result: 'ok' }) >= 2, 10_000, '2 heartbeats');
      redisClient.write('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n');
      const replies = await new Promise<string>((resolve) => {
        let text = '';
        redisClient.on('data', (chunk: Buffer) => {
          text += chunk.toString('latin1');
          if (text.length >= '+OK\r\n$1\r\nv\r\n'.length) resolve(text);
        });
      });
      expect(replies).toBe('+OK\r\n$1\r\nv\r\n');

      expect(await within(idleEnd, 5_000, 'idle pair')).toBe('fin');
      expect(await within(muteEnd, 5_000, 'unanswered pair')).toBe('reset');
      // The client sees the FIN or RST before the proxy's session has ended (the proxy counts
      // the eviction once both of its sockets are closed): wait for each route to be empty.
      await idle(proxy, 'idle');
      const values = await idle(proxy, 'mute');
      expect(sample(values, 'keepalive_proxy_evictions_total', { route: 'idle', reason: 'idle_timeout' })).toBe(1);
      expect(sample(values, 'keepalive_proxy_evictions_total', { route: 'mute', reason: 'response_timeout' })).toBe(1);

      // SIGTERM: new clients are refused, the live pair goes on until its client leaves, then exit 0.
      drainClient.write('before');
      await within(new Promise((resolve) => drainClient.once('data', resolve)), 5_000, 'echo before SIGTERM');
      redisClient.destroy();
      const exited = proxy.stop('SIGTERM');
      await until(() => refused(drainPort), 5_000, 'new clients refused');
      drainClient.write('during');
      const during = await within(new Promise<Buffer>((resolve) => drainClient.once('data', resolve)), 5_000, 'echo during the drain');
      expect(during.toString()).toBe('during');
      drainClient.end();
      expect(await within(exited, 10_000, 'exit after the drain')).toBe(0);
    } finally {
      await proxy.stop('SIGKILL');
      await redis.stop();
      await echo.close();
      await silent.close();
    }
  }, 60_000);
});

describe('raw TCP path: reloads between plain and TLS upstreams', () => {
  it('keeps raw and socket sessions side by side through SIGHUP from plain to upstreamTls and back', async () => {
    const pki = makePki();
    const plain = await listen0((socket) => socket.pipe(socket));
    const secure = tls.createServer({ cert: readFileSync(pki.server.cert), key: readFileSync(pki.server.key) }, (socket) => {
      socket.on('error', () => {});
      socket.pipe(socket);
    });
    await new Promise<void>((resolve) => secure.listen(0, '127.0.0.1', resolve));
    const securePort = (secure.address() as net.AddressInfo).port;
    const port = await freePort();
    const yaml = (tlsLines: string, upstreamPort: number): string =>
      `admin: { listen: "{{admin}}" }\nroutes:\n  - name: flip\n    listen: 127.0.0.1:${port}\n    upstream: 127.0.0.1:${upstreamPort}\n${tlsLines}`;
    const proxy = await startProxy({ yaml: yaml('', plain.port) });
    const reloads = async (count: number): Promise<void> => {
      await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_config_reloads_total', { result: 'ok' }) >= count, 10_000, `reload ${count}`);
    };
    /** Sends `size` tape bytes from `start` and checks the echo, on a connection kept open. */
    const exchange = async (socket: net.Socket, start: number, size: number): Promise<void> => {
      let offset = 0;
      const echoed = new Promise<void>((resolve, reject) => {
        const onData = (chunk: Buffer): void => {
          if (!chunk.equals(tapeSlice(start + offset, chunk.length))) reject(new Error(`echo differs at ${offset}`));
          offset += chunk.length;
          if (offset < size) return;
          socket.off('data', onData);
          resolve();
        };
        socket.on('data', onData);
      });
      socket.write(tapeSlice(start, size));
      await within(echoed, 10_000, `echo of ${size} bytes`);
    };
    try {
      const first = await connect(port);
      await exchange(first, 0, 300 * KiB);
      await proxy.reload(yaml(`    upstreamTls: { mode: verify-full, ca: ${pki.ca} }\n`, securePort));
      await reloads(1);
      const second = await connect(port);
      await exchange(second, 1, 300 * KiB);
      await proxy.reload(yaml('', plain.port));
      await reloads(2);
      const third = await connect(port);
      await exchange(third, 2, 300 * KiB);
      // Every session goes on as it started, whichever kind its ends are, concurrently.
      await Promise.all([exchange(first, 3, MiB), exchange(second, 4, MiB), exchange(third, 5, MiB)]);
      const connections = await proxy.connections();
      const withTls = connections.filter((c) => (c['tls'] as { upstream: unknown }).upstream !== null);
      expect(connections.length).toBe(3);
      expect(withTls.length).toBe(1);
      for (const socket of [first, second, third]) socket.destroy();
      const values = await idle(proxy, 'flip');
      expect(evictions(values, 'flip')).toBe(3);
    } finally {
      await proxy.stop('SIGKILL');
      await plain.close();
      await new Promise<void>((resolve) => secure.close(() => resolve()));
      pki.cleanup();
    }
  }, 60_000);
});
