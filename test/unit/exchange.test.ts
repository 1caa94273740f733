import type net from 'node:net';
import pino from 'pino';
import { Clock } from '../../src/clock.js';
import { afterEach, describe, expect, it } from 'vitest';
import { Exchange, type ExchangeClient, type ExchangeHost, type ExchangeRequest } from '../../src/http/exchange.js';
import type { OriginPool } from '../../src/pool/http-pool.js';
import { parseRawResponse, type RawResponse } from '../helpers/http.js';
import { testHttpPool } from '../helpers/http-pool.js';
import { listen0 } from '../helpers/net.js';
import type { TestRouteMetrics } from '../helpers/route-metrics.js';
import { until } from '../helpers/wait.js';

// src/http/exchange.ts over a real pool and a real upstream socket on loopback. The
// upstream is scripted per request (answer, or close without a byte); the client side is
// a recorder of what the exchange hands the client session (the ExchangeClient contract).

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface SeenRequest {
  /** Which upstream connection (0-based, in accept order) and which request on it. */
  readonly connection: number;
  readonly index: number;
  readonly head: string;
  readonly body: Buffer;
}

/** What the scripted upstream does with a request: answer these bytes (then FIN if `close`), or close without a byte. */
type Answer = { readonly bytes: string; readonly close?: boolean } | 'close';

/** An HTTP/1.1 upstream that reads Content-Length-framed requests and answers as `script` says. */
async function scriptedUpstream(script: (request: SeenRequest) => Answer): Promise<{ port: number; seen: SeenRequest[] }> {
  const seen: SeenRequest[] = [];
  let connections = 0;
  const server = await listen0((socket) => {
    const connection = connections++;
    let buffered = Buffer.alloc(0);
    let index = 0;
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        const end = buffered.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = buffered.subarray(0, end).toString('latin1');
        const length = Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffered.length < end + 4 + length) return;
        const request = { connection, index: index++, head, body: buffered.subarray(end + 4, end + 4 + length) };
        buffered = buffered.subarray(end + 4 + length);
        seen.push(request);
        const answer = script(request);
        if (answer === 'close') return void socket.destroy();
        socket.write(answer.bytes);
        if (answer.close) socket.end();
      }
    });
  });
  cleanups.push(() => server.close());
  return { port: server.port, seen };
}

/** Records what the exchange tells its route. */
class RecordingHost implements ExchangeHost {
  readonly route = 'web';
  readonly clock = new Clock();
  readonly log = pino({ level: 'silent' });
  readonly statuses: number[] = [];
  readonly retries: string[] = [];
  answered(status: number): void {
    this.statuses.push(status);
  }
  observeUpstreamSeconds(): void {}
  retried(reason: string): void {
    this.retries.push(reason);
  }
  orphaned(): void {}
  finished(): void {}
}

/** Records what the exchange writes to the client, as the bytes a client would read. */
class RecordingClient implements ExchangeClient {
  readonly holdsWrites = false;
  readonly chunks: Buffer[] = [];
  done: { reusable: boolean } | null = null;
  cut = (): void => void (this.wasCut = true);
  wasCut = false;
  errors: number[] = [];
  constructor(readonly httpVersion: '1.0' | '1.1' = '1.1') {}
  connectionLines(closeDelimited: boolean): string {
    return closeDelimited ? 'Connection: close\r\n' : '';
  }
  writeInterim(head: string): boolean {
    this.chunks.push(Buffer.from(head, 'latin1'));
    return true;
  }
  writeHead(head: string): boolean {
    this.chunks.push(Buffer.from(head, 'latin1'));
    return true;
  }
  writeBody(chunk: Buffer): boolean {
    this.chunks.push(Buffer.from(chunk));
    return true;
  }
  responseDone(reusable: boolean): void {
    this.done = { reusable };
  }
  respondError(status: number): boolean {
    this.errors.push(status);
    return true;
  }
  pauseRequest(): void {}
  resumeRequest(): void {}
  noteUpstream(): void {}
  countDownstream(): void {}
  get response(): RawResponse {
    return parseRawResponse(Buffer.concat(this.chunks));
  }
}

interface Fixture {
  readonly origin: OriginPool;
  readonly metric: TestRouteMetrics['metric'];
  /** Runs one request to its end (the client's response complete, or an error answered). */
  exchange(request: Partial<ExchangeRequest> & { body?: Buffer[] }, client?: RecordingClient): Promise<{ host: RecordingHost; client: RecordingClient }>;
}

async function fixture(upstreamPort: number): Promise<Fixture> {
  const { pool, origin, metric } = testHttpPool(upstreamPort);
  cleanups.push(() => pool.destroy('shutdown'));
  return {
    origin,
    metric,
    exchange: async ({ body, ...request }, client = new RecordingClient()) => {
      const host = new RecordingHost();
      const method = request.method ?? 'GET';
      const bodyLength = body ? body.reduce((n, b) => n + b.length, 0) : null;
      const exchange = new Exchange(host, client, {
        origin,
        method,
        head: request.head ?? `${method} / HTTP/1.1\r\nHost: up\r\n${bodyLength !== null ? `Content-Length: ${bodyLength}\r\n` : ''}\r\n`,
        hasBody: body !== undefined,
        bodyLength,
        expectContinue: false,
        retry: true,
        responseTimeoutMs: 0,
        ...request,
      });
      exchange.start();
      for (const chunk of body ?? []) exchange.requestBody(chunk);
      if (!request.expectContinue) exchange.requestEnd();
      await until(() => host.statuses.length > 0, 5_000, 'the exchange answered');
      return { host, client };
    },
  };
}

const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';

describe('Exchange: retry on a reused connection that died before any response byte', () => {
  /** First request served on connection 0; its second request (reused) is met with a close. */
  const closesReused = (request: SeenRequest): Answer => (request.connection === 0 && request.index === 1 ? 'close' : { bytes: OK });

  it('retries an idempotent bodiless request once on a fresh connection', async () => {
    const up = await scriptedUpstream(closesReused);
    const f = await fixture(up.port);
    expect((await f.exchange({})).client.response.status).toBe(200);
    const { host, client } = await f.exchange({});
    expect(host.retries).toEqual(['peer_closed']);
    expect(client.response.status).toBe(200);
    expect(client.response.body.toString()).toBe('ok');
    expect(up.seen.map((r) => [r.connection, r.index])).toEqual([
      [0, 0],
      [0, 1],
      [1, 0],
    ]);
  });

  it('replays a small body of an idempotent request whole on the fresh connection', async () => {
    const up = await scriptedUpstream(closesReused);
    const f = await fixture(up.port);
    await f.exchange({});
    const body = [Buffer.from('hello '), Buffer.from('world')];
    const { host, client } = await f.exchange({ method: 'PUT', body });
    expect(host.retries).toHaveLength(1);
    expect(client.response.status).toBe(200);
    const replayed = up.seen.at(-1)!;
    expect(replayed.connection).toBe(1);
    expect(replayed.body.toString()).toBe('hello world');
  });

  it('never retries a bodiless POST: the upstream may have acted on it', async () => {
    const up = await scriptedUpstream(closesReused);
    const f = await fixture(up.port);
    await f.exchange({});
    const { host, client } = await f.exchange({ method: 'POST', head: 'POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n' });
    expect(host.retries).toEqual([]);
    expect(client.errors).toEqual([502]);
    expect(up.seen).toHaveLength(2);
  });

  it('does not retry an idempotent request whose body outgrew the replay buffer', async () => {
    const up = await scriptedUpstream(closesReused);
    const f = await fixture(up.port);
    await f.exchange({});
    const body = Array.from({ length: 8 }, (_, i) => Buffer.alloc(16 * 1024, 0x30 + i)); // 128 KiB
    const { host, client } = await f.exchange({ method: 'PUT', body });
    expect(host.retries).toEqual([]);
    expect(client.errors).toEqual([502]);
    expect(up.seen).toHaveLength(2);
  });

  it('retries a POST whose body had not started (Expect: 100-continue still waiting)', async () => {
    const up = await scriptedUpstream(closesReused);
    const f = await fixture(up.port);
    await f.exchange({});
    const head = 'POST / HTTP/1.1\r\nHost: up\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n';
    const { host, client } = await f.exchange({ method: 'POST', head, hasBody: true, bodyLength: 5, expectContinue: true });
    expect(host.retries).toEqual(['peer_closed']);
    expect(client.response.status).toBe(200);
  });

  it('never retries on a fresh connection, nor twice', async () => {
    const up = await scriptedUpstream(() => 'close');
    const f = await fixture(up.port);
    const { host, client } = await f.exchange({});
    expect(host.retries).toEqual([]);
    expect(client.errors).toEqual([502]);
    expect(up.seen).toHaveLength(1);
  });

  it('does not retry once a response byte arrived', async () => {
    const up = await scriptedUpstream((r) => (r.connection === 0 && r.index === 1 ? { bytes: 'HTTP/1.1 200 OK\r\nContent-Le', close: true } : { bytes: OK }));
    const f = await fixture(up.port);
    await f.exchange({});
    const { host, client } = await f.exchange({});
    expect(host.retries).toEqual([]);
    expect(client.errors).toEqual([502]);
  });
});

describe('Exchange: response framing kinds', () => {
  const cases = [
    {
      name: 'Content-Length',
      upstream: 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello',
      client: '1.1',
      expect: { header: ['content-length', '5'], body: 'hello', reused: true, clientReusable: true },
    },
    {
      name: 'chunked to an HTTP/1.1 client (framing kept)',
      upstream: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
      client: '1.1',
      expect: { header: ['transfer-encoding', 'chunked'], body: '5\r\nhello\r\n0\r\n\r\n', reused: true, clientReusable: true },
    },
    {
      name: 'chunked to an HTTP/1.0 client (decoded, ends with the close)',
      upstream: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
      client: '1.0',
      expect: { header: ['connection', 'close'], body: 'hello world', reused: true, clientReusable: true },
    },
    {
      name: 'until the upstream closes',
      upstream: 'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end',
      close: true,
      client: '1.1',
      expect: { header: ['connection', 'close'], body: 'to the end', reused: false, clientReusable: true },
    },
    {
      name: '204 (no body whatever the head says)',
      upstream: 'HTTP/1.1 204 No Content\r\n\r\n',
      client: '1.1',
      expect: { header: null, body: '', reused: true, clientReusable: true },
    },
    {
      name: '304 with a Content-Length (describes the representation, no body)',
      upstream: 'HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n',
      client: '1.1',
      expect: { header: ['content-length', '100'], body: '', reused: true, clientReusable: true },
    },
  ] as const;

  it.each(cases)('$name', async (c) => {
    let served = 0;
    const up = await scriptedUpstream(() => (served++ === 0 ? { bytes: c.upstream, close: 'close' in c } : { bytes: OK }));
    const f = await fixture(up.port);
    const { client } = await f.exchange({}, new RecordingClient(c.client));
    const response = client.response;
    if (c.expect.header) expect(response.headers.get(c.expect.header[0])).toEqual([c.expect.header[1]]);
    if (c.expect.header?.[0] !== 'transfer-encoding') expect(response.headers.has('transfer-encoding')).toBe(false);
    expect(response.body.toString('latin1')).toBe(c.expect.body);
    expect(client.done).toEqual({ reusable: c.expect.clientReusable });
    // The upstream connection goes back to the pool only when the framing says where the message ended.
    const next = await f.exchange({});
    expect(next.client.response.status).toBe(200);
    expect(up.seen.at(-1)!.connection).toBe(c.expect.reused ? 0 : 1);
  });

  it('reads no body after a HEAD response, and keeps the connection', async () => {
    const up = await scriptedUpstream((r) => ({ bytes: r.head.startsWith('HEAD') ? 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n' : OK }));
    const f = await fixture(up.port);
    const { client } = await f.exchange({ method: 'HEAD' });
    expect(client.response.headers.get('content-length')).toEqual(['10']);
    expect(client.response.body.length).toBe(0);
    await f.exchange({});
    expect(up.seen.map((r) => r.connection)).toEqual([0, 0]);
  });

  it('closes an upstream connection that sent bytes after the end of the response', async () => {
    const up = await scriptedUpstream(() => ({ bytes: `${OK}HTTP/1.1 200 OK\r\n` }));
    const f = await fixture(up.port);
    const { client } = await f.exchange({});
    expect(client.response.body.toString()).toBe('ok');
    await until(async () => (await f.metric('evictions_total', { reason: 'unexpected_data' })) === 1, 5_000, 'the connection evicted');
    await f.exchange({});
    expect(up.seen.map((r) => r.connection)).toEqual([0, 1]);
  });

  it('cuts the client when the upstream closes mid-body', async () => {
    const up = await scriptedUpstream(() => ({ bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf', close: true }));
    const f = await fixture(up.port);
    const { client } = await f.exchange({});
    expect(client.wasCut).toBe(true);
    expect(client.done).toBeNull();
  });
});
