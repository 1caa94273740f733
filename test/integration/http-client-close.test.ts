import { readdirSync } from 'node:fs';
import type http from 'node:http';
import net from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { httpRouteConfig, startRoute, startUpstream, type RunningRoute, type Upstream } from '../helpers/http.js';
import { connected, freePort } from '../helpers/net.js';
import { Prng } from '../helpers/wire/prng.js';
import { once, sleep, until } from '../helpers/wait.js';

// Issue 9, HTTP client side: every end of a client connection goes through one close
// path, which counts it once in evictions_total{reason} (the client-side reasons of
// README) and really closes the socket. Each cause is driven with real sockets; each
// test checks that exactly one end was counted per connection, under the right reason,
// and that the process holds no more file descriptors than before the batch.

/** Every reason a client connection of an HTTP route can end with. */
const CLIENT_REASONS = [
  'client_closed',
  'client_reset',
  'keepalive_timeout',
  'client_idle_timeout',
  'client_max_requests',
  'client_shutdown',
  'client_error',
  'headers_timeout',
  'body_timeout',
  'bad_request',
  'forbidden',
  'connect_error',
  'upgrade_declined',
  'response_close',
] as const;
type ClientReason = (typeof CLIENT_REASONS)[number];

const cleanups: Array<() => Promise<unknown> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Closed after the test. */
function owned<T extends { close(): Promise<unknown> }>(thing: T): T {
  cleanups.push(() => thing.close());
  return thing;
}

async function upstreamOf(handler: http.RequestListener): Promise<Upstream> {
  return owned(await startUpstream(handler));
}

async function routeOf(yaml: string): Promise<RunningRoute> {
  return owned(await startRoute(httpRouteConfig(yaml)));
}

/** Answers "ok" (Content-Length: 2) to everything. */
function okUpstream(): Promise<Upstream> {
  return upstreamOf((req, res) => {
    req.resume();
    req.on('end', () => res.end('ok'));
  });
}

/** A plain client socket: it ends its side when the proxy ends its own (as a legacy client). */
async function client(port: number): Promise<ClientSocket> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  await connected(socket, 15_000);
  cleanups.push(() => void socket.destroy());
  const received: Buffer[] = [];
  const state = { error: null as NodeJS.ErrnoException | null, ended: false };
  socket.on('data', (chunk: Buffer) => received.push(chunk));
  socket.on('error', (error: NodeJS.ErrnoException) => (state.error = error));
  socket.on('end', () => (state.ended = true));
  const closed = once(socket, 'close', 20_000);
  closed.catch(() => {});
  return {
    socket,
    text: () => Buffer.concat(received).toString('latin1'),
    closed,
    state,
  };
}

interface ClientSocket {
  readonly socket: net.Socket;
  /** Everything received so far. */
  text(): string;
  readonly closed: Promise<unknown>;
  readonly state: { error: NodeJS.ErrnoException | null; ended: boolean };
}

async function endCounts(route: RunningRoute): Promise<Record<ClientReason, number>> {
  const counts = {} as Record<ClientReason, number>;
  for (const reason of CLIENT_REASONS) counts[reason] = await route.metric('evictions_total', { route: 'web', reason });
  return counts;
}

/** The client-side ends counted since `before`: exactly `expected`, and nothing else. */
async function expectEnds(route: RunningRoute, before: Record<ClientReason, number>, expected: Partial<Record<ClientReason, number>>): Promise<void> {
  const after = await endCounts(route);
  const moved: Partial<Record<ClientReason, number>> = {};
  for (const reason of CLIENT_REASONS) if (after[reason] !== before[reason]) moved[reason] = after[reason] - before[reason];
  expect(moved).toEqual(expected);
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** The batch left nothing open: the route holds no client, and the process no more descriptors than at `baseline`. */
async function expectReleased(route: RunningRoute, baseline: number): Promise<void> {
  await until(() => route.route.activeCount === 0, 10_000, 'no client connection left at the route');
  await until(() => openFds() <= baseline, 10_000, `descriptors back to ${baseline} (now ${openFds()})`);
}

/** One keep-alive request and its whole "ok" response. */
async function exchange(c: ClientSocket, path = '/'): Promise<void> {
  const before = c.text().split('\r\n\r\nok').length;
  c.socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
  await until(() => c.text().split('\r\n\r\nok').length > before, 10_000, `the response to ${path}`);
}

/** A route in front of an "ok" upstream, warmed so its one pooled connection is part of the baseline. */
async function warmRoute(http: string): Promise<{ route: RunningRoute; baseline: number }> {
  const upstream = await okUpstream();
  const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\npool: { maxSockets: 1 }\nhttp: { ${http} }`);
  const warm = await client(route.port);
  await exchange(warm);
  warm.socket.end();
  await warm.closed;
  await until(() => route.route.activeCount === 0, 5_000, 'the warm-up client gone');
  return { route, baseline: openFds() };
}

describe('client connection ends on an HTTP route: one close path, one count each', () => {
  it('the client leaves: its FIN between requests, or a request that asks for the close', async () => {
    const { route, baseline } = await warmRoute('clientIdleTimeout: 60s');
    const before = await endCounts(route);
    const fin = await client(route.port);
    await exchange(fin);
    fin.socket.end();
    await fin.closed;
    const last = await client(route.port);
    last.socket.write('GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    await last.closed;
    expect(last.text()).toMatch(/^HTTP\/1\.1 200 [^]*\r\n\r\nok$/);
    await expectReleased(route, baseline);
    await expectEnds(route, before, { client_closed: 2 });
  });

  it('a client idle past clientIdleTimeout, and one past clientMaxRequests', async () => {
    const { route, baseline } = await warmRoute('clientIdleTimeout: 1s, clientMaxRequests: 3');
    const before = await endCounts(route);
    const idle = await client(route.port);
    await exchange(idle);
    await idle.closed;
    expect(idle.state.ended).toBe(true);
    await expectEnds(route, before, { client_idle_timeout: 1 });

    const busy = await client(route.port);
    for (let i = 0; i < 3; i++) await exchange(busy, `/${i}`);
    await busy.closed;
    expect(busy.text().match(/HTTP\/1\.1 200/g)).toHaveLength(3);
    expect(busy.text()).toMatch(/Connection: close\r\n[^]*ok$/);
    await expectReleased(route, baseline);
    await expectEnds(route, before, { client_idle_timeout: 1, client_max_requests: 1 });
  });

  it('malformed and oversized heads: each answered 400 or 431, closed, and counted once as bad_request', async () => {
    const { route, baseline } = await warmRoute('maxHeaderSize: 2048');
    const before = await endCounts(route);
    const random = new Prng(9);
    // Bytes no header name may hold (RFC 9110 5.1: a token), and request lines that are not one.
    const forbidden = [0x00, 0x01, 0x08, 0x0b, 0x0c, 0x1f, 0x7f, 0x20, 0x22, 0x28, 0x29, 0x2c, 0x2f, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f, 0x40, 0x5b, 0x5c, 0x5d, 0x7b, 0x7d];
    const heads: Array<{ head: Buffer; status: number }> = [];
    for (const byte of forbidden) {
      const name = Buffer.concat([Buffer.from('X-Na'), Buffer.from([byte]), Buffer.from('me')]);
      heads.push({ head: Buffer.concat([Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n'), name, Buffer.from(': v\r\n\r\n')]), status: 400 });
    }
    for (const line of ['GET\r\n', 'GET / HTTP/1.1 extra\r\n', ' / HTTP/1.1\r\n', 'GET / HTTX/1.1\r\n', 'G\x00T / HTTP/1.1\r\n']) {
      heads.push({ head: Buffer.from(`${line}Host: x\r\n\r\n`, 'latin1'), status: 400 });
    }
    for (let i = 0; i < 6; i++) {
      // Oversized: past maxHeaderSize, sent whole or cut short of its end.
      const size = 2048 + 1 + Math.floor(random.next() * 8192);
      const whole = random.next() < 0.5;
      heads.push({ head: Buffer.from(`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(size)}${whole ? '\r\n\r\n' : ''}`), status: 431 });
    }
    for (const { head, status } of heads) {
      const c = await client(route.port);
      c.socket.write(head);
      await c.closed;
      expect(c.text().slice(0, 12), JSON.stringify(head.subarray(0, 60).toString('latin1'))).toBe(`HTTP/1.1 ${status}`);
    }
    await expectReleased(route, baseline);
    await expectEnds(route, before, { bad_request: heads.length });
  });

  it('a head slower than headersTimeout gets 408; a connection that never starts one is closed silently', async () => {
    const { route, baseline } = await warmRoute('headersTimeout: 1s');
    const before = await endCounts(route);
    const slow = await client(route.port);
    slow.socket.write('GET /slow HTTP/1.1\r\nHost:');
    const silent = await client(route.port);
    await Promise.all([slow.closed, silent.closed]);
    expect(slow.text()).toMatch(/^HTTP\/1\.1 408 /);
    expect(silent.text()).toBe('');
    await expectReleased(route, baseline);
    await expectEnds(route, before, { headers_timeout: 2 });
  });

  it('a client that resets mid-response is counted client_reset, once', async () => {
    let finish: (() => void) | null = null;
    const upstream = await upstreamOf((req, res) => {
      req.resume();
      if (req.url !== '/stream') {
        res.end('ok');
        return;
      }
      res.writeHead(200, { 'Content-Length': '100000' });
      res.write('first bytes');
      // The rest comes once the client has left (the route reads it to keep the connection).
      finish = () => res.end(Buffer.alloc(100000 - 'first bytes'.length, 0x61));
    });
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\npool: { maxSockets: 1 }`);
    const warm = await client(route.port);
    await exchange(warm);
    warm.socket.end();
    await warm.closed;
    await until(() => route.route.activeCount === 0, 5_000, 'the warm-up client gone');
    const baseline = openFds();
    const before = await endCounts(route);
    const c = await client(route.port);
    c.socket.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => c.text().includes('first bytes'), 10_000, 'the first body bytes');
    c.socket.resetAndDestroy();
    await c.closed;
    await until(() => route.route.activeCount === 0, 10_000, 'the client gone at the route');
    finish!();
    await expectReleased(route, baseline);
    await expectEnds(route, before, { client_reset: 1 });
  });

  it('a response the upstream cuts mid-body reaches the client as a reset (never a clean end), counted client_error', async () => {
    const upstream = await upstreamOf((req, res) => {
      res.writeHead(200, { 'Content-Length': '100' });
      res.write('0123456789');
      setTimeout(() => req.socket.destroy(), 100);
    });
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\nhttp: { retry: false }`);
    const baseline = openFds();
    const before = await endCounts(route);
    const c = await client(route.port);
    c.socket.write('GET /cut HTTP/1.1\r\nHost: x\r\n\r\n');
    await c.closed;
    expect(c.text()).toMatch(/\r\n\r\n0123456789$/);
    expect(c.state.error?.code).toBe('ECONNRESET');
    await expectReleased(route, baseline);
    await expectEnds(route, before, { client_error: 1 });
  });

  it('a declined Upgrade: relayed and closed as upgrade_declined; a client that resets during the relay is client_reset', async () => {
    const upstream = await upstreamOf((req, res) => {
      if (req.url === '/hold') {
        res.writeHead(403, { 'Content-Length': '1000000' });
        res.write('not you');
        return;
      }
      res.writeHead(400, { 'Content-Type': 'text/plain' });
      res.end('no upgrade here');
    });
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}`);
    const baseline = openFds();
    const before = await endCounts(route);
    const upgrade = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`;
    const declined = await client(route.port);
    declined.socket.write(upgrade('/no'));
    await declined.closed;
    expect(declined.text()).toMatch(/^HTTP\/1\.1 400 [^]*no upgrade here$/);
    const leaving = await client(route.port);
    leaving.socket.write(upgrade('/hold'));
    await until(() => leaving.text().includes('not you'), 10_000, 'the declined answer under way');
    leaving.socket.resetAndDestroy();
    await leaving.closed;
    await until(() => upstream.openSockets().size === 0, 10_000, 'the handshake connections closed');
    await expectReleased(route, baseline);
    await expectEnds(route, before, { upgrade_declined: 1, client_reset: 1 });
  });

  it('CONNECT refusals: 405 on a reverse route, 400 for a bad target, 403 outside the allowlist, 502 when the dial fails', async () => {
    const reverse = await warmRoute('clientIdleTimeout: 60s');
    const beforeReverse = await endCounts(reverse.route);
    const refused = await client(reverse.route.port);
    refused.socket.write('CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n');
    await refused.closed;
    expect(refused.text()).toMatch(/^HTTP\/1\.1 405 /);
    await expectReleased(reverse.route, reverse.baseline);
    await expectEnds(reverse.route, beforeReverse, { bad_request: 1 });

    const closedPort = await freePort();
    const route = await routeOf(`protocol: http-forward\nallow:\n  - "127.0.0.1:${closedPort}"`);
    const baseline = openFds();
    const before = await endCounts(route);
    const cases: Array<[string, number]> = [
      ['CONNECT no-port HTTP/1.1\r\nHost: no-port\r\n\r\n', 400],
      ['CONNECT 127.0.0.2:443 HTTP/1.1\r\nHost: 127.0.0.2:443\r\n\r\n', 403],
      [`CONNECT 127.0.0.1:${closedPort} HTTP/1.1\r\nHost: 127.0.0.1:${closedPort}\r\n\r\n`, 502],
      ['GET http://127.0.0.2:80/ HTTP/1.1\r\nHost: 127.0.0.2\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 403],
    ];
    for (const [head, status] of cases) {
      const c = await client(route.port);
      c.socket.write(head);
      await c.closed;
      expect(c.text().slice(0, 12)).toBe(`HTTP/1.1 ${status}`);
    }
    await expectReleased(route, baseline);
    await expectEnds(route, before, { bad_request: 1, forbidden: 2, connect_error: 1 });
  });

  it('a drain closes an idle client at once and a busy one after its response, both client_shutdown', async () => {
    let release: (() => void) | null = null;
    const upstream = await upstreamOf((req, res) => {
      req.resume();
      if (req.url === '/slow') release = () => res.end('ok');
      else res.end('ok');
    });
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}\nhttp: { clientIdleTimeout: 60s }`);
    const before = await endCounts(route);
    const idle = await client(route.port);
    await exchange(idle);
    const busy = await client(route.port);
    busy.socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => release !== null, 10_000, 'the slow request at the upstream');
    const drained = route.route.drain(10_000, 'shutdown');
    await idle.closed;
    await sleep(100);
    release!();
    await busy.closed;
    await drained;
    expect(busy.text()).toMatch(/Connection: close\r\n[^]*ok$/);
    expect(route.route.activeCount).toBe(0);
    await expectEnds(route, before, { client_shutdown: 2 });
  });

  it('a drain deadline resets a response still under way, counted client_shutdown once', async () => {
    const upstream = await upstreamOf((req, res) => {
      res.writeHead(200, { 'Content-Length': '1000000' });
      res.write('partial');
    });
    const route = await routeOf(`protocol: http\nupstream: ${upstream.url}`);
    const before = await endCounts(route);
    const c = await client(route.port);
    c.socket.write('GET /never-ends HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => c.text().includes('partial'), 10_000, 'the response under way');
    await route.route.drain(500, 'shutdown');
    await c.closed;
    expect(c.state.error?.code).toBe('ECONNRESET');
    await expectEnds(route, before, { client_shutdown: 1 });
  });
});
