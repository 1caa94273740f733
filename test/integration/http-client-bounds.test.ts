import { readdirSync } from 'node:fs';
import net from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { httpRouteConfig, rawRequest, request, startRoute, startUpstream, type RunningRoute, type Upstream } from '../helpers/http.js';
import { connect, freePort, listen0 } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { once, sleep, until } from '../helpers/wait.js';

// What one HTTP client can make the proxy hold, and for how long (issue 8): responses a
// pipelining client never reads, a connection whose Upgrade the upstream declined, a
// request body that trickles in. Each stays bounded, and other clients are served.

const cleanups: Array<() => Promise<unknown> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function upstreamOf(handler: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
  const upstream = await startUpstream(handler);
  cleanups.push(() => upstream.close());
  return upstream;
}

async function routeOf(yaml: string, clock?: ManualClock): Promise<RunningRoute> {
  const route = await startRoute(httpRouteConfig(yaml), clock);
  cleanups.push(() => route.close());
  return route;
}

async function clientSocket(port: number): Promise<net.Socket> {
  const socket = await connect(port);
  socket.on('error', () => {});
  cleanups.push(() => void socket.destroy());
  return socket;
}

/** Waits until `count()` has not moved for `quietMs` (bounded by `timeoutMs`); returns its last value. */
async function settled(count: () => number, quietMs: number, timeoutMs: number): Promise<number> {
  let last = -1;
  let since = Date.now();
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const now = count();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) {
      return now;
    }
    await sleep(50);
  }
  return count();
}

describe('a pipelining client that does not read', () => {
  it('stops being read while its responses are unsent, then gets every response in order once it reads', async () => {
    const RESPONSE_BYTES = 32 * 1024;
    const REQUESTS = 1500; // 48 MiB of responses: far beyond any socket buffer
    let seen = 0;
    const upstream = await upstreamOf((req, res) => {
      seen++;
      res.setHeader('X-Index', req.url!.slice(1));
      res.end(Buffer.alloc(RESPONSE_BYTES, 0x61));
    });
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\nhttp: { clientIdleTimeout: 60s }`);
    const socket = await clientSocket(route.port);
    socket.pause();
    let pipelined = '';
    for (let i = 0; i < REQUESTS; i++) pipelined += `GET /${i} HTTP/1.1\r\nHost: x\r\n\r\n`;
    socket.write(pipelined);

    // What the origin was asked for while the client read nothing: bounded by the socket
    // buffers between us and the client (a few MiB on loopback), not by the client.
    const stalled = await settled(() => seen, 1_000, 15_000);
    expect(stalled).toBeGreaterThan(0);
    expect(stalled).toBeLessThan(REQUESTS / 3);

    // Nothing was dropped or reordered: the client now reads every response, in order.
    let buffered = Buffer.alloc(0);
    let next = 0;
    const done = new Promise<void>((resolve, reject) => {
      socket.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        for (;;) {
          const end = buffered.indexOf('\r\n\r\n');
          if (end === -1 || buffered.length < end + 4 + RESPONSE_BYTES) return;
          const head = buffered.subarray(0, end).toString('latin1');
          const index = /\r\nx-index: (\d+)/i.exec(head)?.[1];
          if (!head.startsWith('HTTP/1.1 200') || index !== String(next)) {
            reject(new Error(`response ${next}: ${head}`));
            return;
          }
          next++;
          buffered = buffered.subarray(end + 4 + RESPONSE_BYTES);
          if (next === REQUESTS) resolve();
        }
      });
    });
    socket.resume();
    await Promise.race([done, sleep(20_000).then(() => Promise.reject(new Error(`only ${next} responses`)))]);
    expect(seen).toBe(REQUESTS);
  }, 40_000);
});

describe('Upgrade requests the upstream declines', () => {
  let proxy: RunningProxy;
  let port: number;

  function fdCount(): number {
    return readdirSync(`/proc/${proxy.pid}/fd`).length;
  }

  it('leave no socket and no session behind when their clients close, and a drain is prompt', async () => {
    const upstream = await upstreamOf((req, res) => {
      if (req.url === '/hang') return; // never answers
      res.statusCode = req.url === '/missing' ? 404 : 200;
      res.end('no upgrade here');
    });
    port = await freePort();
    proxy = await startProxy({
      yaml: `admin: { listen: "{{admin}}" }\nshutdownTimeout: 30s\nroutes:\n  - { name: web, protocol: http, listen: "127.0.0.1:${port}", upstream: "${upstream.url}", http: { responseTimeout: 0 } }\n`,
    });
    cleanups.push(() => proxy.stop('SIGKILL'));
    // One request first, so the baseline includes the pool's connection and lazily opened files.
    expect((await request(port, { path: '/warm' })).status).toBe(200);
    const baseline = fdCount();

    const upgrade = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`;
    for (let i = 0; i < 100; i++) {
      const response = await rawRequest(port, upgrade(i % 2 === 0 ? '/ok' : '/missing'));
      expect(response.status).toBe(i % 2 === 0 ? 200 : 404);
      expect(response.body.toString()).toBe('no upgrade here');
    }
    // Clients that leave while the upstream has not answered yet are let go as well.
    for (let i = 0; i < 10; i++) {
      const socket = await clientSocket(port);
      socket.write(upgrade('/hang'));
      await sleep(20);
      socket.end();
    }
    // No connection listed is true too before the proxy has even accepted the last clients:
    // first wait until it has accepted every one (the /warm one, 100 upgrades and these 10).
    const accepted = async (): Promise<number> => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_connections_accepted_total', { route: 'web' });
    await until(async () => (await accepted()) === 111, 10_000, 'every client accepted');
    await until(async () => (await proxy.connections()).length === 0, 10_000, 'no client connection listed');
    // A little slack: node may hold a spare fd or two of its own.
    await until(() => fdCount() <= baseline + 3, 10_000, `fd count back to ${baseline} (now ${fdCount()})`);

    const started = Date.now();
    expect(await proxy.stop('SIGTERM', 20_000)).toBe(0);
    expect(Date.now() - started).toBeLessThan(10_000);
  }, 60_000);
});

describe('slow request bodies', () => {
  /** An upstream that answers with the length of the body it got. */
  async function countingUpstream(): Promise<Upstream> {
    return upstreamOf((req, res) => {
      let bytes = 0;
      req.on('data', (chunk: Buffer) => (bytes += chunk.length));
      req.on('end', () => res.end(`got ${bytes}`));
    });
  }

  it.each([
    ['Content-Length', 'Content-Length: 1000\r\n', Buffer.alloc(10, 0x62), Buffer.alloc(990, 0x62), 1000],
    ['chunked', 'Transfer-Encoding: chunked\r\n', Buffer.from('3e8\r\n' + 'b'.repeat(10)), Buffer.from('b'.repeat(990) + '\r\n0\r\n\r\n'), 1000],
  ])('a small %s body is read whole before it takes the only pooled connection', async (_kind, framing, first, rest, total) => {
    const upstream = await countingUpstream();
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\npool: { maxSockets: 1 }\nhttp: { bodyTimeout: 30s, responseTimeout: 30s }`);
    const slow = await clientSocket(route.port);
    const answer: Buffer[] = [];
    slow.on('data', (chunk: Buffer) => answer.push(chunk));
    slow.write(Buffer.concat([Buffer.from(`POST /slow HTTP/1.1\r\nHost: x\r\n${framing}\r\n`), first]));
    await sleep(200);

    // Another client is served at once, while the slow one holds its half-sent body.
    const started = Date.now();
    const fast = await request(route.port, { path: '/fast', method: 'POST', body: 'abc' });
    expect(fast.status).toBe(200);
    expect(fast.body.toString()).toBe('got 3');
    expect(Date.now() - started).toBeLessThan(5_000);

    // The slow body, once whole, reaches the upstream intact.
    slow.write(rest);
    await until(() => Buffer.concat(answer).includes(`got ${total}`), 10_000, 'the slow request answered');
    expect(Buffer.concat(answer).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('a large body that stalls gets 408 after bodyTimeout, and its upstream connection is closed, not reused', async () => {
    const upstream = await countingUpstream();
    // The route's deadlines run on a manual clock: the test moves time instead of sleeping.
    const clock = new ManualClock(100);
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\npool: { maxSockets: 1 }\nhttp: { bodyTimeout: 1s, responseTimeout: 30s }`, clock);
    const slow = await clientSocket(route.port);
    const answer: Buffer[] = [];
    slow.on('data', (chunk: Buffer) => answer.push(chunk));
    // The proxy's FIN after its answer (the client keeps its own side open: half-open allowed).
    const closed = once(slow, 'end', 15_000);
    slow.write(`POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n${'c'.repeat(10)}`);
    await until(() => upstream.connections() === 1, 5_000, 'the large body streaming to the upstream');
    clock.advance(500);
    await sleep(100); // real time for a wrong answer to arrive
    expect(answer, 'no answer within half the bodyTimeout').toEqual([]);
    clock.advance(700);
    await closed;
    expect(Buffer.concat(answer).toString('latin1')).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(await route.metric('evictions_total', { route: 'web', reason: 'body_timeout' })).toBe(1);
    expect(await route.metric('requests_total', { route: 'web', code: '408' })).toBe(1);
    // The connection that got a partial body went; the route serves on a new one.
    await until(() => upstream.openSockets().size === 0, 5_000, 'the partial-body upstream connection closed');
    const next = await request(route.port, { path: '/after', method: 'POST', body: 'abcd' });
    expect(next.status).toBe(200);
    expect(next.body.toString()).toBe('got 4');
    expect(upstream.connections()).toBe(2);
  });

  it('a small body that stalls gets 408 without ever taking a pooled connection', async () => {
    const upstream = await countingUpstream();
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\nhttp: { bodyTimeout: 1s }`);
    const response = await rawRequest(route.port, 'POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part', 15_000);
    expect(response.status).toBe(408);
    expect(upstream.connections()).toBe(0);
    expect(await route.metric('evictions_total', { route: 'web', reason: 'body_timeout' })).toBe(1);
  });
});

describe('interim (1xx) responses to a client that does not read', () => {
  it('are backpressured like bodies: the upstream is read no further, and the client later gets every one in order', async () => {
    // Varied 1xx heads (100, 102, 103 with fields) of ~4 KiB each, 48 MiB in all, then the final response.
    const HEADS = 12_000;
    const heads: Buffer[] = [];
    for (let i = 0; i < HEADS; i++) {
      const status = [100, 102, 103][i % 3]!;
      const fields = status === 103 ? `Link: </${i}.css>; rel=preload; x="${'p'.repeat(4000 + (i % 97))}"\r\n` : `X-Index: ${i}\r\nX-Pad: ${'q'.repeat(4000 + (i % 89))}\r\n`;
      heads.push(Buffer.from(`HTTP/1.1 ${status} Interim\r\nX-Seq: ${i}\r\n${fields}\r\n`, 'latin1'));
    }
    const final = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone', 'latin1');
    let written = 0;
    const origin = await listen0((socket) => {
      socket.once('data', () => {
        let next = 0;
        const pump = (): void => {
          while (next < HEADS) {
            const head = heads[next++]!;
            written += head.length;
            if (!socket.write(head)) return;
          }
          if (next === HEADS) {
            next++;
            socket.write(final);
          }
        };
        socket.on('drain', pump);
        pump();
      });
    });
    cleanups.push(() => origin.close());
    const route = await routeOf(`protocol: http\nupstream: http://127.0.0.1:${origin.port}\nhttp: { clientIdleTimeout: 60s, responseTimeout: 60s }`);
    const socket = await clientSocket(route.port);
    socket.pause();
    socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');

    // What the proxy took from the upstream while its client read nothing: socket buffers
    // (a few MiB on loopback), not the 48 MiB the upstream had to send.
    const total = heads.reduce((sum, head) => sum + head.length, 0);
    const stalled = await settled(() => written, 1_000, 15_000);
    expect(stalled).toBeGreaterThan(0);
    expect(stalled).toBeLessThan(total / 3);

    // Nothing was dropped or reordered: every interim head, then the final response.
    const chunks: Buffer[] = [];
    let tail = '';
    const complete = new Promise<void>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        tail = (tail + chunk.toString('latin1')).slice(-4);
        if (tail === 'done') resolve();
      });
    });
    socket.resume();
    await Promise.race([complete, sleep(20_000)]);
    const text = Buffer.concat(chunks).toString('latin1');
    const sequence = [...text.matchAll(/\r\nX-Seq: (\d+)\r\n/g)].map((match) => Number(match[1]));
    expect(sequence.length).toBe(HEADS);
    expect(sequence.every((seq, i) => seq === i)).toBe(true);
    expect(text.endsWith('\r\n\r\ndone')).toBe(true);
  }, 60_000);
});


describe('a client that leaves during a response its upstream connection cannot outlive', () => {
  // Read until the close, a final coding other than chunked, or the upstream said close:
  // nothing is left to pool after such a response, so reading it on for nobody would only
  // hold a pool slot from every other client.
  const heads: Array<[string, string]> = [
    ['close-delimited', 'HTTP/1.1 200 OK\r\n\r\n'],
    ['a final coding other than chunked', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n'],
    ['chunked twice', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n'],
    ['Connection: close with a length', 'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 10000000\r\n\r\n'],
    ['HTTP/1.0 with a length', 'HTTP/1.0 200 OK\r\nContent-Length: 10000000\r\n\r\n'],
    ['chunked, Connection: close', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'],
  ];
  for (const when of ['mid-body', 'before the head'] as const) {
    it.each(heads)(`${when}, %s: the upstream connection closes at once and the next client is served`, async (_name, head) => {
      let clientGone = (): void => {};
      const gone = new Promise<void>((resolve) => (clientGone = resolve));
      let upstreamClosed = false;
      const origin = await listen0((socket) => {
        socket.on('data', (chunk: Buffer) => {
          if (!chunk.toString('latin1').startsWith('GET /stream')) {
            socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext');
            return;
          }
          socket.on('close', () => (upstreamClosed = true));
          // The response never ends by itself: a byte now and then, until the proxy closes.
          const trickle = setInterval(() => socket.write(head.includes('chunked') ? '1\r\nx\r\n' : 'x'), 100);
          socket.on('close', () => clearInterval(trickle));
          if (when === 'mid-body') socket.write(head);
          else void gone.then(() => socket.write(head));
        });
      });
      cleanups.push(() => origin.close());
      const route = await routeOf(`protocol: http\nupstream: http://127.0.0.1:${origin.port}\npool: { maxSockets: 1 }\nhttp: { responseTimeout: 60s }`);
      const socket = await clientSocket(route.port);
      socket.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n');
      if (when === 'mid-body') await once(socket, 'data', 5_000);
      else await until(() => origin.sockets.size === 1, 5_000);
      socket.destroy();
      clientGone();

      // Well inside the 60 s a dropped response may otherwise be read for.
      await until(() => upstreamClosed, 10_000);
      const next = await rawRequest(route.port, 'GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 10_000);
      expect([next.status, next.body.toString()]).toEqual([200, 'next']);
    }, 30_000);
  }
});
