import http from 'node:http';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { listen0 } from '../helpers/net.js';
import { httpRouteConfig, request, startRoute, type RunningRoute } from '../helpers/http.js';
import { sleep } from '../helpers/wait.js';

// The stale-connection race: a pooled connection the upstream closes just as the proxy
// reuses it. Upstreams here are raw sockets so that the closing can be placed exactly.

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface ParsedRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: Map<string, string>;
  /** The connection's request number, from 1. */
  readonly ordinal: number;
}

type Decision = 'answer' | 'reset';

/**
 * A minimal HTTP/1.1 upstream: content-length bodies, keep-alive, Expect: 100-continue.
 * `decide` runs when a head is complete (and again, with the body, for requests that
 * carry one): 'reset' destroys the connection with a RST, without an answer.
 */
async function rawUpstream(options: {
  onHead?: (request: ParsedRequest) => Decision;
  onBody?: (request: ParsedRequest, body: Buffer) => Decision;
  /** Close a connection once it has been idle this long after an answer. */
  idleCloseMs?: number;
  finInFlightMs?: number;
}) {
  let connections = 0;
  const server = await listen0((socket: net.Socket) => {
    connections++;
    let buffered = Buffer.alloc(0);
    let ordinal = 0;
    let pending: { request: ParsedRequest; length: number } | null = null;
    let closing = false;
    let idleTimer: NodeJS.Timeout | null = null;
    const armIdle = (): void => {
      if (!options.idleCloseMs) return;
      if (idleTimer) clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        // From now on the server considers the connection closed; its FIN is "in flight".
        closing = true;
        setTimeout(() => socket.end(), options.finInFlightMs ?? 0);
      }, options.idleCloseMs);
    };
    // Like a server's keep-alive timeout, the idle close counts from the last answer: a fresh
    // connection waits for its first request (the proxy may take a while to send it on a
    // loaded machine, and a retry goes on a fresh connection, which must not be stale).
    socket.on('close', () => idleTimer && clearTimeout(idleTimer));
    const reset = (): void => {
      socket.resetAndDestroy();
    };
    socket.on('data', (chunk: Buffer) => {
      if (closing) return reset();
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        if (!pending) {
          const end = buffered.indexOf('\r\n\r\n');
          if (end === -1) return;
          const [line, ...lines] = buffered.subarray(0, end).toString('latin1').split('\r\n');
          buffered = buffered.subarray(end + 4);
          const [method, path] = line!.split(' ');
          const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
          const request: ParsedRequest = { method: method!, path: path!, headers, ordinal: ++ordinal };
          if ((options.onHead?.(request) ?? 'answer') === 'reset') return reset();
          pending = { request, length: Number(headers.get('content-length') ?? 0) };
          if (headers.get('expect')?.toLowerCase() === '100-continue') socket.write('HTTP/1.1 100 Continue\r\n\r\n');
        }
        if (buffered.length < pending.length) return;
        const body = buffered.subarray(0, pending.length);
        buffered = buffered.subarray(pending.length);
        const { request } = pending;
        pending = null;
        if ((options.onBody?.(request, body) ?? 'answer') === 'reset') return reset();
        const text = `${request.method} ${request.path} #${request.ordinal}`;
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${text.length}\r\n\r\n${text}`);
        armIdle();
      }
    });
  });
  cleanups.push(() => server.close());
  return { port: server.port, connections: () => connections };
}

async function routeTo(port: number, extra = ''): Promise<RunningRoute> {
  const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: http://127.0.0.1:${port}\n${extra}`));
  cleanups.push(() => route.close());
  return route;
}

describe('the stale-connection race', () => {
  it('an upstream closing idle connections while clients keep sending: no idempotent request fails, no POST runs twice', async () => {
    const posts = new Map<string, number>();
    // Closes a connection idle for 120 ms, and resets any request that lands in the
    // following 25 ms: the window in which a real FIN is still on its way.
    const upstream = await rawUpstream({
      idleCloseMs: 120,
      finInFlightMs: 25,
      onBody: (request) => {
        if (request.method === 'POST') {
          const id = request.headers.get('x-id')!;
          posts.set(id, (posts.get(id) ?? 0) + 1);
        }
        return 'answer';
      },
    });
    const route = await routeTo(upstream.port, 'pool: { maxSockets: 4 }');
    const failures: Record<string, number> = { GET: 0, POST: 0 };
    let sent = 0;
    const send = async (client: number, round: number): Promise<void> => {
      const post = (client + round) % 3 === 2;
      sent++;
      const response = await request(route.port, {
        method: post ? 'POST' : 'GET',
        path: `/c${client}/${round}`,
        headers: post ? { 'x-id': `${client}-${round}`, 'content-type': 'text/plain' } : {},
        body: post ? `payload ${client}-${round}` : null,
      });
      if (response.status !== 200) failures[post ? 'POST' : 'GET']!++;
    };
    // Three clients send together, then all pause around the upstream's idle limit, so
    // every pooled connection is reused just as the upstream may be closing it.
    for (let round = 0; round < 40; round++) {
      await sleep(100 + Math.random() * 50);
      await Promise.all([send(1, round), send(2, round), send(3, round)]);
    }
    expect(sent).toBe(120);
    expect(failures.GET).toBe(0);
    for (const [id, count] of posts) expect(count, `POST ${id}`).toBe(1);
    // The race did happen: parked connections were found closed, and requests that met a
    // closing one were retried (POSTs whose body had left were not: those got a 502).
    const retried = await route.metric('retries_total', { route: 'web' });
    const evictedParked = await route.metric('evictions_total', { route: 'web', reason: 'peer_closed' });
    expect(retried).toBeGreaterThan(0);
    expect(evictedParked).toBeGreaterThan(0);
  });

  it('retries an idempotent request that died on a reused connection, once, on a fresh one', async () => {
    const seen: string[] = [];
    // Every second request on a connection is reset after the upstream read it.
    const upstream = await rawUpstream({
      onBody: (request) => {
        seen.push(`${request.method} ${request.path}`);
        return request.ordinal === 2 ? 'reset' : 'answer';
      },
    });
    const route = await routeTo(upstream.port, 'pool: { maxSockets: 1 }');
    expect((await request(route.port, { path: '/one' })).status).toBe(200);
    const second = await request(route.port, { path: '/two' });
    expect(second.status).toBe(200);
    expect(second.body.toString()).toBe('GET /two #1'); // answered on a fresh connection
    expect(seen).toEqual(['GET /one', 'GET /two', 'GET /two']);
    expect(await route.metric('retries_total', { route: 'web', reason: 'econnreset' })).toBe(1);
    expect(upstream.connections()).toBe(2);
  });

  it('never sends a POST twice: one whose body reached the upstream fails with 502', async () => {
    const processed: string[] = [];
    const upstream = await rawUpstream({
      onBody: (request, body) => {
        if (request.method === 'POST') processed.push(body.toString());
        return request.ordinal === 2 ? 'reset' : 'answer';
      },
    });
    const route = await routeTo(upstream.port, 'pool: { maxSockets: 1 }');
    expect((await request(route.port, { path: '/warm' })).status).toBe(200);
    const post = await request(route.port, { method: 'POST', path: '/order', body: 'order-1', headers: { 'content-type': 'text/plain' } });
    expect(post.status).toBe(502);
    expect(processed).toEqual(['order-1']);
    expect(await route.metric('retries_total', { route: 'web' })).toBe(0);
  });

  it('retries a POST none of whose body had left (Expect: 100-continue), and it runs once', async () => {
    const processed: string[] = [];
    // The reused connection dies when the head arrives, before the 100 Continue.
    const upstream = await rawUpstream({
      onHead: (request) => (request.ordinal === 2 ? 'reset' : 'answer'),
      onBody: (request, body) => {
        if (request.method === 'POST') processed.push(body.toString());
        return 'answer';
      },
    });
    const route = await routeTo(upstream.port, 'pool: { maxSockets: 1 }');
    expect((await request(route.port, { path: '/warm' })).status).toBe(200);
    const result = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: route.port, method: 'POST', path: '/order', agent: false, headers: { Expect: '100-continue', 'Content-Length': '7' } },
        (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (t: string) => (body += t));
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        },
      );
      req.on('error', reject);
      req.on('continue', () => req.end('order-2'));
      req.flushHeaders();
    });
    expect(result).toEqual({ status: 200, body: 'POST /order #1' });
    expect(processed).toEqual(['order-2']);
    expect(await route.metric('retries_total', { route: 'web', reason: 'econnreset' })).toBe(1);
  });

  it('does not retry when retry is off', async () => {
    const upstream = await rawUpstream({ onBody: (request) => (request.ordinal === 2 ? 'reset' : 'answer') });
    const route = await routeTo(upstream.port, 'pool: { maxSockets: 1 }\nhttp: { retry: false }');
    expect((await request(route.port, { path: '/one' })).status).toBe(200);
    expect((await request(route.port, { path: '/two' })).status).toBe(502);
  });
});
