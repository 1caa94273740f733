import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listen0 } from '../helpers/net.js';
import { httpRouteConfig, rawRequest, request, startRoute, startUpstream, type RunningRoute, type Upstream } from '../helpers/http.js';
import { once, sleep } from '../helpers/wait.js';

// What clients (and upstreams) may send that they should not: each gets its status and a
// short body, the process stays up, and other clients are served meanwhile.

let upstream: Upstream;
let route: RunningRoute;

beforeAll(async () => {
  upstream = await startUpstream((req, res) => {
    req.resume();
    req.on('end', () => res.end('fine'));
  });
  route = await startRoute(httpRouteConfig(`protocol: http\nupstream: ${upstream.url}\nhttp: { maxHeaderSize: 8192, headersTimeout: 1s }`));
});

afterAll(async () => {
  await route.close();
  await upstream.close();
});

async function expectServed(): Promise<void> {
  const response = await request(route.port, { path: '/ok' });
  expect(response.status).toBe(200);
  expect(response.body.toString()).toBe('fine');
}

describe('bad input from clients', () => {
  it.each([
    ['a request line that is not HTTP', 'GARBAGE\r\n\r\n'],
    ['a bad version', 'GET / HTTP/7.3\r\nHost: x\r\n\r\n'],
    ['a space in the target', 'GET /a b HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['Content-Length with Transfer-Encoding', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
    ['two different Content-Lengths', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!'],
    ['a NUL in a header', 'GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0000b\r\n\r\n'],
    ['a header without a colon', 'GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n'],
    ['HTTP/1.1 without Host', 'GET / HTTP/1.1\r\n\r\n'],
  ])('%s: 400 with a short body', async (_what, text) => {
    const response = await rawRequest(route.port, text);
    expect(response.status).toBe(400);
    expect(response.body.toString()).toMatch(/^400 Bad Request/);
    expect(response.body.length).toBeLessThan(100);
    await expectServed();
  });

  it('a bad chunk size mid-body: the request is cut and the route keeps serving', async () => {
    const response = await rawRequest(route.port, 'POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n');
    expect([0, 400, 502]).toContain(response.status);
    await expectServed();
  });

  it('oversized headers: 431', async () => {
    const response = await rawRequest(route.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(10_000)}\r\n\r\n`);
    expect(response.status).toBe(431);
    expect(response.body.toString()).toBe('431 Request Header Fields Too Large\n');
    expect(await route.metric('requests_total', { route: 'web', code: '431' })).toBe(1);
    await expectServed();
  });

  it('slowloris headers: 408 after headersTimeout, while other clients are served', async () => {
    const socket = net.connect(route.port, '127.0.0.1');
    socket.on('error', () => {});
    await once(socket, 'connect', 5_000);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    const started = Date.now();
    socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n');
    let stillSending = true;
    void (async () => {
      for (let i = 0; i < 50 && stillSending && !socket.destroyed; i++) {
        socket.write(`X-Drip-${i}: 1\r\n`);
        await sleep(100);
      }
    })();
    // Served in the meantime.
    await expectServed();
    await Promise.race([closed, sleep(10_000)]);
    stillSending = false;
    const elapsed = Date.now() - started;
    const text = Buffer.concat(chunks).toString();
    expect(text).toMatch(/^HTTP\/1\.1 408 Request Timeout/);
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(8_000);
  });

  it('a client that resets mid-request does not disturb anything', async () => {
    const socket = net.connect(route.port, '127.0.0.1');
    socket.on('error', () => {});
    await once(socket, 'connect', 5_000);
    socket.write('POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial');
    await sleep(50);
    socket.resetAndDestroy();
    await sleep(50);
    await expectServed();
  });
});

describe('bad input from upstreams', () => {
  it('oversized, invalid or truncated responses: 502 or a cut response, never a crash', async () => {
    const bad = await listen0((socket) => {
      socket.once('data', (chunk: Buffer) => {
        const path = chunk.toString().split(' ')[1];
        if (path === '/huge-head') socket.end(`HTTP/1.1 200 OK\r\nX-Big: ${'b'.repeat(100_000)}\r\n\r\n`);
        else if (path === '/bad-chunk') socket.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nqq\r\n');
        else if (path === '/cl-te') socket.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
        else socket.end('HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort');
      });
    });
    const badRoute = await startRoute(httpRouteConfig(`protocol: http\nupstream: http://127.0.0.1:${bad.port}`));
    try {
      expect((await request(badRoute.port, { path: '/huge-head' })).status).toBe(502);
      expect((await request(badRoute.port, { path: '/cl-te' })).status).toBe(502);
      await expect(request(badRoute.port, { path: '/bad-chunk' })).rejects.toThrow();
      await expect(request(badRoute.port, { path: '/truncated' })).rejects.toThrow();
      await expectServed();
    } finally {
      await badRoute.close();
      await bad.close();
    }
  });
});
