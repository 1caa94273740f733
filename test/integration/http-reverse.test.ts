import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { freePort, listen0 } from '../helpers/net.js';
import { httpRouteConfig, rawRequest, request, startRoute, startUpstream, type RunningRoute, type Upstream } from '../helpers/http.js';
import { once, sleep, until } from '../helpers/wait.js';

// Reverse mode over real sockets: a node:http upstream, the route in-process, real
// clients (raw sockets for the legacy ones, node's http client for the rest).

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function upstreamWith(handler: http.RequestListener, options: http.ServerOptions = {}): Promise<Upstream> {
  const upstream = await startUpstream(handler, options);
  cleanups.push(() => upstream.close());
  return upstream;
}

/** `clock`: a ManualClock for a case that moves the pool's time itself. */
async function routeTo(url: string, extra = '', clock?: ManualClock): Promise<RunningRoute> {
  const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: ${url}\n${extra}`), clock);
  cleanups.push(() => route.close());
  return route;
}

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

describe('a legacy client behind the pool', () => {
  it('sends every request over at most maxSockets upstream connections, HTTP/1.0 and Connection: close alike', async () => {
    const upstream = await upstreamWith((req, res) => {
      req.resume();
      req.on('end', () => res.end(`echo ${req.url}`));
    });
    const route = await routeTo(upstream.url, 'pool: { maxSockets: 4 }');
    const total = 60;
    const batch = 12;
    for (let start = 0; start < total; start += batch) {
      const responses = await Promise.all(
        Array.from({ length: batch }, (_, i) => {
          const n = start + i;
          const text = n % 2 === 0 ? `GET /r${n} HTTP/1.0\r\n\r\n` : `GET /r${n} HTTP/1.1\r\nHost: legacy\r\nConnection: close\r\n\r\n`;
          return rawRequest(route.port, text).then((response) => ({ n, response }));
        }),
      );
      for (const { n, response } of responses) {
        expect(response.status).toBe(200);
        expect(response.body.toString()).toBe(`echo /r${n}`);
      }
    }
    expect(upstream.connections()).toBeLessThanOrEqual(4);
    expect(await route.metric('connections_accepted_total', { route: 'web' })).toBe(total);
    expect(await route.metric('reuse_total', { route: 'web' })).toBeGreaterThanOrEqual(total - 4);
    expect(await route.metric('requests_total', { route: 'web', code: '200' })).toBe(total);
    expect(await route.metric('pool_idle', { route: 'web' })).toBe(upstream.connections());
    expect(await route.metric('pool_active', { route: 'web' })).toBe(0);
    expect(await route.metric('upstream_request_duration_seconds_count', { route: 'web' })).toBe(total);
    // A client connection leaves the route at its socket's 'close', which may follow the
    // client's own close (the proxy lingers for the client's FIN after a Connection: close).
    await until(async () => (await route.metric('connections_active', { route: 'web' })) === 0, 5_000, 'no client connection active');
  });

  it('keeps client connections alive on their own terms: idle timeout and max requests', async () => {
    const upstream = await upstreamWith((req, res) => res.end('ok'));
    // node's server advertises Keep-Alive: timeout=<whole seconds>, and node's client
    // will not reuse a connection whose hint is under 2 s: hence 2 s here.
    const route = await routeTo(upstream.url, 'http: { clientIdleTimeout: 2s, clientMaxRequests: 2 }');
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    cleanups.push(async () => agent.destroy());
    const first = await request(route.port, { path: '/1', agent });
    const second = await request(route.port, { path: '/2', agent });
    const third = await request(route.port, { path: '/3', agent });
    expect([first.status, second.status, third.status]).toEqual([200, 200, 200]);
    expect(second.headers.connection).toBe('close'); // the second request was that connection's last
    expect(await route.metric('connections_accepted_total', { route: 'web' })).toBe(2);
    // An idle client connection is closed after clientIdleTimeout; the upstream one stays pooled.
    const socket = net.connect(route.port, '127.0.0.1');
    const closed = new Promise<number>((resolve) => {
      const started = Date.now();
      socket.on('close', () => resolve(Date.now() - started));
    });
    socket.on('error', () => {});
    socket.resume();
    socket.write('GET /idle HTTP/1.1\r\nHost: x\r\n\r\n');
    const elapsed = await closed;
    expect(elapsed).toBeGreaterThanOrEqual(1_500);
    expect(elapsed).toBeLessThan(8_000);
    expect(upstream.connections()).toBe(1);
  });
});

describe('bodies and framing (RFC 9112)', () => {
  it('carries empty bodies, a 1 MiB streamed response (chunked and sized) and a 1 MiB chunked upload intact', async () => {
    const mebibyte = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < mebibyte.length; i++) mebibyte[i] = (i * 7 + (i >> 10)) & 0xff;
    const seen: Array<{ url: string; te: string | undefined; cl: string | undefined; hash: string; size: number }> = [];
    const upstream = await upstreamWith((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        seen.push({ url: req.url!, te: req.headers['transfer-encoding'], cl: req.headers['content-length'], hash: sha(body), size: body.length });
        if (req.url === '/empty') {
          res.writeHead(200, { 'Content-Length': 0 });
          res.end();
        } else if (req.url === '/stream' || req.url === '/sized') {
          if (req.url === '/sized') res.setHeader('Content-Length', mebibyte.length);
          // 16 KiB at a time, honouring backpressure: a real streaming upstream.
          let offset = 0;
          const pump = (): void => {
            while (offset < mebibyte.length) {
              const piece = mebibyte.subarray(offset, offset + 16_384);
              offset += piece.length;
              if (!res.write(piece)) {
                res.once('drain', pump);
                return;
              }
            }
            res.end();
          };
          pump();
        } else {
          res.end(`got ${body.length}`);
        }
      });
    });
    const route = await routeTo(upstream.url);

    const empty = await request(route.port, { method: 'POST', path: '/empty', headers: { 'Content-Length': '0' } });
    expect(empty.status).toBe(200);
    expect(empty.body.length).toBe(0);
    expect(seen.at(-1)).toMatchObject({ url: '/empty', cl: '0', size: 0 });

    const streamed = await request(route.port, { path: '/stream' });
    expect(streamed.headers['transfer-encoding']).toBe('chunked');
    expect(sha(streamed.body)).toBe(sha(mebibyte));

    const sized = await request(route.port, { path: '/sized' });
    expect(sized.headers['content-length']).toBe(String(mebibyte.length));
    expect(sha(sized.body)).toBe(sha(mebibyte));

    // A chunked upload of unknown length, written in 64 pieces.
    const upload = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: route.port, method: 'PUT', path: '/upload', agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (t: string) => (text += t));
        res.on('end', () => resolve({ status: res.statusCode!, body: text }));
      });
      req.on('error', reject);
      for (let i = 0; i < 64; i++) req.write(mebibyte.subarray(i * 16_384, (i + 1) * 16_384));
      req.end();
    });
    expect(upload).toEqual({ status: 200, body: `got ${mebibyte.length}` });
    expect(seen.at(-1)).toMatchObject({ url: '/upload', te: 'chunked', hash: sha(mebibyte) });
  });

  it('passes trailers both ways', async () => {
    let upstreamTrailers: NodeJS.Dict<string> = {};
    const upstream = await upstreamWith((req, res) => {
      req.resume();
      req.on('end', () => {
        upstreamTrailers = req.trailers;
        res.writeHead(200, { Trailer: 'X-Checksum' });
        res.write('body');
        res.addTrailers({ 'X-Checksum': 'abc123' });
        res.end();
      });
    });
    const route = await routeTo(upstream.url);
    const result = await new Promise<{ trailers: NodeJS.Dict<string>; body: string }>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: route.port, method: 'POST', path: '/t', agent: false, headers: { Trailer: 'X-Client-Sum' } }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (t: string) => (body += t));
        res.on('end', () => resolve({ trailers: res.trailers, body }));
      });
      req.on('error', reject);
      req.write('payload');
      req.addTrailers({ 'X-Client-Sum': 'def456' });
      req.end();
    });
    expect(result.body).toBe('body');
    expect(result.trailers['x-checksum']).toBe('abc123');
    expect(upstreamTrailers['x-client-sum']).toBe('def456');
  });

  it('relays the upstream 100 Continue: the body is sent only after it', async () => {
    let continued = 0;
    let upstreamExpect: string | undefined;
    const upstream = await upstreamWith((req, res) => {
      let size = 0;
      req.on('data', (chunk: Buffer) => (size += chunk.length));
      req.on('end', () => res.end(`received ${size}`));
    });
    upstream.server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
      continued++;
      upstreamExpect = req.headers.expect;
      res.writeContinue();
      upstream.server.emit('request', req, res);
    });
    const route = await routeTo(upstream.url);
    const result = await new Promise<{ status: number; body: string; sawContinue: boolean }>((resolve, reject) => {
      let sawContinue = false;
      const req = http.request(
        { host: '127.0.0.1', port: route.port, method: 'POST', path: '/c', agent: false, headers: { Expect: '100-continue', 'Content-Length': '5000' } },
        (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (t: string) => (body += t));
          res.on('end', () => resolve({ status: res.statusCode!, body, sawContinue }));
        },
      );
      req.on('error', reject);
      req.on('continue', () => {
        sawContinue = true;
        req.end(Buffer.alloc(5000, 1));
      });
      req.flushHeaders();
    });
    expect(result).toEqual({ status: 200, body: 'received 5000', sawContinue: true });
    expect(continued).toBe(1);
    expect(upstreamExpect).toBe('100-continue');
  });

  it('relays 103 Early Hints to HTTP/1.1 clients, never to HTTP/1.0 ones', async () => {
    const upstream = await upstreamWith((req, res) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.end('page');
    });
    const route = await routeTo(upstream.url);
    const hints = await new Promise<Array<{ status: number; link: unknown }>>((resolve, reject) => {
      const seen: Array<{ status: number; link: unknown }> = [];
      const req = http.request({ host: '127.0.0.1', port: route.port, path: '/', agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(seen));
      });
      req.on('information', (info: http.InformationEvent) => seen.push({ status: info.statusCode, link: info.headers.link }));
      req.on('error', reject);
      req.end();
    });
    expect(hints).toEqual([{ status: 103, link: '</style.css>; rel=preload; as=style' }]);
    const legacy = await rawRequest(route.port, 'GET / HTTP/1.0\r\n\r\n');
    expect(legacy.head).toMatch(/^HTTP\/1\.1 200 /);
    expect(legacy.body.toString()).toBe('page');
  });

  it('frames HEAD, 204 and 304 without a body, and the connection stays usable', async () => {
    const upstream = await upstreamWith((req, res) => {
      if (req.url === '/head') {
        res.writeHead(200, { 'Content-Length': '1234', 'Content-Type': 'text/plain' });
        res.end(req.method === 'HEAD' ? undefined : Buffer.alloc(1234));
      } else if (req.url === '/204') {
        res.writeHead(204);
        res.end();
      } else if (req.url === '/304') {
        res.writeHead(304, { ETag: '"v1"' });
        res.end();
      } else {
        res.end('after');
      }
    });
    const route = await routeTo(upstream.url, 'pool: { maxSockets: 1 }');
    const head = await rawRequest(route.port, 'HEAD /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toEqual(['1234']);
    expect(head.body.length).toBe(0);
    const noContent = await rawRequest(route.port, 'GET /204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(noContent.status).toBe(204);
    expect(noContent.body.length).toBe(0);
    expect(noContent.headers.has('transfer-encoding')).toBe(false);
    const notModified = await rawRequest(route.port, 'GET /304 HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n');
    expect(notModified.status).toBe(304);
    expect(notModified.headers.get('etag')).toEqual(['"v1"']);
    expect(notModified.body.length).toBe(0);
    // The one pooled connection was not desynchronised by any of them.
    const after = await rawRequest(route.port, 'GET /after HTTP/1.0\r\n\r\n');
    expect(after.body.toString()).toBe('after');
    expect(upstream.connections()).toBe(1);
  });
});

describe('headers (RFC 9110 7.6.1)', () => {
  it('strips hop-by-hop fields both ways and adds X-Forwarded-*', async () => {
    let received: http.IncomingHttpHeaders = {};
    const upstream = await upstreamWith((req, res) => {
      received = req.headers;
      res.setHeader('Connection', 'X-Upstream-Hop');
      res.setHeader('X-Upstream-Hop', 'secret');
      res.setHeader('Proxy-Connection', 'keep-alive');
      res.setHeader('X-End-To-End', 'kept');
      res.end('ok');
    });
    const route = await routeTo(upstream.url);
    const response = await rawRequest(
      route.port,
      'GET /h HTTP/1.1\r\nHost: public.example\r\nConnection: close, X-Client-Hop\r\nX-Client-Hop: 1\r\nKeep-Alive: timeout=99\r\n' +
        'Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.7\r\nX-Custom: stays\r\n\r\n',
    );
    expect(response.status).toBe(200);
    for (const name of ['x-client-hop', 'keep-alive', 'proxy-connection', 'te', 'upgrade', 'trailer']) expect(received[name]).toBeUndefined();
    expect(received.connection).toBe('keep-alive'); // our own hop's, not the client's "close"
    expect(received['x-custom']).toBe('stays');
    expect(received.host).toBe(`127.0.0.1:${upstream.port}`);
    expect(received['x-forwarded-for']).toBe('203.0.113.7, 127.0.0.1');
    expect(received['x-forwarded-host']).toBe('public.example');
    expect(received['x-forwarded-proto']).toBe('http');
    expect(response.headers.has('x-upstream-hop')).toBe(false);
    expect(response.headers.has('proxy-connection')).toBe(false);
    expect(response.headers.get('x-end-to-end')).toEqual(['kept']);
  });

  it('leaves X-Forwarded-* alone when xForwarded is off', async () => {
    let received: http.IncomingHttpHeaders = {};
    const upstream = await upstreamWith((req, res) => {
      received = req.headers;
      res.end();
    });
    const route = await routeTo(upstream.url, 'http: { xForwarded: false }');
    await request(route.port, { path: '/' });
    expect(received['x-forwarded-for']).toBeUndefined();
  });
});

describe('pool limits and evictions', () => {
  it('retires a connection after maxRequests', async () => {
    const upstream = await upstreamWith((req, res) => res.end('ok'));
    const route = await routeTo(upstream.url, 'pool: { maxSockets: 1, maxRequests: 3 }');
    for (let i = 0; i < 7; i++) expect((await request(route.port, { path: `/${i}` })).status).toBe(200);
    expect(upstream.connections()).toBe(3);
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'max_requests' })) === 2, 5_000, 'max_requests evictions');
    const text = await route.metrics.registry.getSingleMetricAsString('keepalive_proxy_requests_per_upstream_connection');
    expect(text).toMatch(/requests_per_upstream_connection_sum\{route="web"\} 6/);
  });

  it('evicts idle connections after idleTimeout and old ones after maxAge', async () => {
    const upstream = await upstreamWith((req, res) => res.end('ok'));
    // The pool's time is moved by the test: on the real clock, a loaded machine taking 200 ms
    // to hand this process the answer let the idle connection go before it was seen parked.
    const idleClock = new ManualClock(100);
    const idle = await routeTo(upstream.url, 'pool: { idleTimeout: 200ms }', idleClock);
    await request(idle.port, { path: '/' });
    expect(await idle.metric('pool_idle', { route: 'web' })).toBe(1);
    idleClock.advance(300);
    await until(async () => (await idle.metric('evictions_total', { route: 'web', reason: 'idle_timeout' })) === 1, 5_000, 'idle_timeout eviction');
    expect(await idle.metric('pool_idle', { route: 'web' })).toBe(0);

    // 900 ms of requests 50 ms apart, on a clock no slow request can stretch.
    const agedClock = new ManualClock(100);
    const aged = await routeTo(upstream.url, 'pool: { maxSockets: 1, maxAge: 300ms }', agedClock);
    const before = upstream.connections();
    for (let elapsedMs = 0; elapsedMs < 900; elapsedMs += 50) {
      expect((await request(aged.port, { path: '/' })).status).toBe(200);
      agedClock.advance(50);
    }
    expect(upstream.connections() - before).toBeGreaterThanOrEqual(2);
    expect(await aged.metric('evictions_total', { route: 'web', reason: 'max_age' })).toBeGreaterThanOrEqual(1);
  });

  it('evicts a parked connection the upstream closed, and the next request never notices', async () => {
    const upstream = await upstreamWith((req, res) => res.end('ok'));
    const route = await routeTo(upstream.url);
    await request(route.port, { path: '/' });
    upstream.server.closeIdleConnections();
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'peer_closed' })) === 1, 5_000, 'peer_closed eviction');
    expect(await route.metric('pool_idle', { route: 'web' })).toBe(0);
    expect((await request(route.port, { path: '/' })).status).toBe(200);
    expect(await route.metric('retries_total', { route: 'web' })).toBe(0);
  });

  it('evicts a parked connection that sends unexpected bytes', async () => {
    const server = await listen0((socket) => {
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        setTimeout(() => socket.write('garbage while idle'), 100);
      });
    });
    cleanups.push(() => server.close());
    const route = await routeTo(`http://127.0.0.1:${server.port}`);
    expect((await request(route.port, { path: '/' })).body.toString()).toBe('ok');
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'unexpected_data' })) === 1, 5_000, 'unexpected_data eviction');
  });

  it('keeps the connection when a client leaves early: the rest of a small response is dropped; a stream is cut', async () => {
    // The slow answer is held until the client has gone: a timer could fire after a loaded
    // machine delayed the client's exit, and then the client would get it.
    let answerSlow: (() => void) | null = null;
    const upstream = await upstreamWith((req, res) => {
      if (req.url === '/slow') answerSlow = () => res.end('late answer');
      else if (req.url === '/stream') {
        res.writeHead(200);
        const timer = setInterval(() => res.write(Buffer.alloc(64 * 1024)), 5);
        res.on('close', () => clearInterval(timer));
      } else res.end('ok');
    });
    const route = await routeTo(upstream.url, 'pool: { maxSockets: 1 }');
    // A legacy client with a short timeout gives up before the answer.
    const impatient = net.connect(route.port, '127.0.0.1');
    impatient.on('error', () => {});
    impatient.write('GET /slow HTTP/1.0\r\n\r\n');
    const answer = await until(() => answerSlow, 5_000, 'the slow request at the upstream');
    impatient.destroy();
    await until(async () => (await route.metric('requests_total', { route: 'web', code: '499' })) === 1, 5_000, 'the 499');
    answer();
    expect((await request(route.port, { path: '/next' })).body.toString()).toBe('ok');
    expect(upstream.connections()).toBe(1);
    expect(await route.metric('evictions_total', { route: 'web', reason: 'client_aborted' })).toBe(0);
    // A response with no end in sight is not drained: its connection is closed.
    const streaming = net.connect(route.port, '127.0.0.1');
    streaming.on('error', () => {});
    streaming.write('GET /stream HTTP/1.0\r\n\r\n');
    await once(streaming, 'data', 5_000);
    streaming.destroy();
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'client_aborted' })) === 1, 5_000, 'client_aborted eviction');
    expect((await request(route.port, { path: '/after' })).body.toString()).toBe('ok');
  });

  it("goes before the upstream's advertised Keep-Alive timeout", async () => {
    // node's server says "Keep-Alive: timeout=1" and closes after 1.5 s of idleness.
    const upstream = await upstreamWith((req, res) => res.end('ok'), { keepAliveTimeout: 1_500 });
    upstream.server.keepAliveTimeout = 1_500;
    const route = await routeTo(upstream.url, 'pool: { idleTimeout: 60s }');
    const response = await request(route.port, { path: '/' });
    expect(response.status).toBe(200);
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'idle_timeout' })) === 1, 1_400, 'eviction ahead of the hint');
    expect(await route.metric('evictions_total', { route: 'web', reason: 'peer_closed' })).toBe(0);
  });
});

describe('errors', () => {
  it('answers 502 when the upstream is unreachable', async () => {
    const port = await freePort();
    const route = await routeTo(`http://127.0.0.1:${port}`);
    const response = await request(route.port, { path: '/' });
    expect(response.status).toBe(502);
    expect(response.body.toString()).toMatch(/^502 Bad Gateway/);
    expect(response.body.length).toBeLessThan(200);
    expect(await route.metric('requests_total', { route: 'web', code: '502' })).toBe(1);
    expect(await route.metric('upstream_connects_total', { route: 'web', result: 'error' })).toBe(1);
  });

  it('answers 504 when the upstream does not respond in time', async () => {
    const upstream = await upstreamWith(() => {
      /* never answers */
    });
    const route = await routeTo(upstream.url, 'http: { responseTimeout: 300ms }');
    const started = Date.now();
    const response = await request(route.port, { path: '/' });
    expect(response.status).toBe(504);
    expect(Date.now() - started).toBeLessThan(5_000);
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'response_timeout' })) === 1, 5_000, 'response_timeout eviction');
  });

  it('answers 502 to a malformed upstream response, and cuts a response the upstream abandons mid-body', async () => {
    const server = await listen0((socket) => {
      socket.once('data', (chunk: Buffer) => {
        if (chunk.toString().startsWith('GET /garbage')) socket.end('NOT HTTP AT ALL\r\n\r\n');
        else {
          socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part');
          setTimeout(() => socket.destroy(), 50);
        }
      });
    });
    cleanups.push(() => server.close());
    const route = await routeTo(`http://127.0.0.1:${server.port}`);
    expect((await request(route.port, { path: '/garbage' })).status).toBe(502);
    await expect(request(route.port, { path: '/cut' })).rejects.toThrow();
  });
});

describe('draining', () => {
  it('lets an in-flight request finish, closes the client connection after it, then the pool', async () => {
    const upstream = await upstreamWith((req, res) => {
      setTimeout(() => res.end(`slow ${req.url}`), 300);
    });
    const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: ${upstream.url}`));
    const agent = new http.Agent({ keepAlive: true });
    cleanups.push(async () => agent.destroy());
    const inFlight = request(route.port, { path: '/in-flight', agent });
    await until(() => upstream.openSockets().size === 1, 5_000, 'request at the upstream');
    const drained = route.route.drain(5_000, 'shutdown');
    const response = await inFlight;
    expect(response.body.toString()).toBe('slow /in-flight');
    expect(response.headers.connection).toBe('close');
    await drained;
    expect(route.route.activeCount).toBe(0);
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'shutdown' })) === 1, 5_000, 'pool closed on drain');
    expect(await route.metric('pool_idle', { route: 'web' })).toBe(0);
  });
});
