import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { httpRouteConfig, startRoute, type RunningRoute } from '../helpers/http.js';
import { once, sleep, until } from '../helpers/wait.js';

// WebSocket Upgrade through an http route, with a real ws client and server: frames pass
// untouched; with a heartbeat the proxy pings the upstream when the tunnel is silent,
// swallows the pongs, and closes both sides when one is missing.

const run = promisify(execFile);
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

let pki: string;
beforeAll(async () => {
  pki = mkdtempSync(join(tmpdir(), 'kp-ws-pki-'));
  writeFileSync(join(pki, 'ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { cwd: pki });
});

interface WsUpstream {
  readonly port: number;
  readonly pings: Buffer[];
  readonly sockets: WebSocket[];
}

async function wsUpstream(options: { autoPong?: boolean; secure?: boolean; rejectUpgrade?: boolean } = {}): Promise<WsUpstream> {
  const server = options.secure
    ? https.createServer({ key: readFileSync(join(pki, 'key.pem')), cert: readFileSync(join(pki, 'cert.pem')) })
    : http.createServer();
  const pings: Buffer[] = [];
  const sockets: WebSocket[] = [];
  if (options.rejectUpgrade) {
    server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno ws\n');
    });
  } else {
    const wss = new WebSocketServer({ server, autoPong: options.autoPong ?? true });
    wss.on('connection', (ws, req) => {
      sockets.push(ws);
      ws.on('ping', (data) => pings.push(data));
      ws.on('message', (data, isBinary) => ws.send(isBinary ? data : `echo ${data.toString()} ${req.url}`, { binary: isBinary }));
    });
  }
  server.listen(0, '127.0.0.1');
  await once(server, 'listening', 5_000);
  cleanups.push(async () => {
    for (const ws of sockets) ws.terminate();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as net.AddressInfo).port, pings, sockets };
}

async function routeTo(url: string, extra = ''): Promise<RunningRoute> {
  const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: ${url}\n${extra}`, pki));
  cleanups.push(() => route.close());
  return route;
}

async function client(port: number, path = '/chat'): Promise<WebSocket & { pongs: number; next(): Promise<WebSocket.RawData> }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`) as WebSocket & { pongs: number; next(): Promise<WebSocket.RawData> };
  ws.pongs = 0;
  ws.on('pong', () => ws.pongs++);
  const inbox: WebSocket.RawData[] = [];
  const waiting: Array<(data: WebSocket.RawData) => void> = [];
  ws.on('message', (data) => {
    const waiter = waiting.shift();
    if (waiter) waiter(data);
    else inbox.push(data);
  });
  ws.next = () =>
    inbox.length > 0
      ? Promise.resolve(inbox.shift()!)
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no message within 5 s')), 5_000);
          waiting.push((data) => {
            clearTimeout(timer);
            resolve(data);
          });
        });
  cleanups.push(async () => ws.terminate());
  await once(ws, 'open', 5_000);
  return ws;
}

describe('WebSocket passthrough', () => {
  it('carries text, binary and large frames both ways, and the close handshake', async () => {
    const upstream = await wsUpstream();
    const route = await routeTo(`http://127.0.0.1:${upstream.port}`);
    const ws = await client(route.port);
    ws.send('hello');
    expect((await ws.next()).toString()).toBe('echo hello /chat');
    const big = Buffer.alloc(100_000, 7); // a 64-bit length frame
    ws.send(big);
    expect(Buffer.compare(await ws.next() as Buffer, big)).toBe(0);
    const [row] = route.route.connections() as unknown as Array<Record<string, unknown>>;
    expect(row).toMatchObject({ protocol: 'upgrade' });
    ws.close(1000, 'bye');
    const [code] = await once<[number]>(ws, 'close', 5_000).then((c) => [c]);
    expect(code).toBe(1000);
    expect(await route.metric('requests_total', { route: 'web', code: '101' })).toBe(1);
  });

  it('pings a silent upstream, swallows the pongs, and lets the client ping for itself', async () => {
    const upstream = await wsUpstream();
    const route = await routeTo(`http://127.0.0.1:${upstream.port}`, 'heartbeat: { every: 300ms, timeout: 250ms, jitter: 0 }');
    const ws = await client(route.port);
    await until(async () => (await route.metric('heartbeats_total', { route: 'web', result: 'ok' })) >= 3, 5_000, 'three answered heartbeats');
    expect(upstream.pings.length).toBeGreaterThanOrEqual(3);
    expect(ws.pongs).toBe(0); // the proxy's pongs never reach the client
    ws.ping(Buffer.from('client-ping'));
    await until(() => ws.pongs === 1, 5_000, "the client's own pong");
    ws.send('still here');
    expect((await ws.next()).toString()).toBe('echo still here /chat');
    expect(ws.readyState).toBe(WebSocket.OPEN);
  });

  it('closes both sides with heartbeat_timeout when the pong is missing', async () => {
    const upstream = await wsUpstream({ autoPong: false });
    const route = await routeTo(`http://127.0.0.1:${upstream.port}`, 'heartbeat: { every: 300ms, timeout: 250ms, jitter: 0 }');
    const ws = await client(route.port);
    const closed = await once<number>(ws, 'close', 5_000);
    expect(closed).toBe(1006); // no close frame: the connection was cut
    await until(() => upstream.sockets[0]?.readyState === WebSocket.CLOSED, 5_000, 'upstream side closed');
    expect(await route.metric('heartbeats_total', { route: 'web', result: 'timeout' })).toBe(1);
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'heartbeat_timeout' })) === 1, 5_000, 'heartbeat_timeout eviction');
  });

  it('sends no pings without a heartbeat, in a silence where a heartbeat sends several', async () => {
    const pings = new Map<string, number>();
    // The silence lasts at least 800 ms, and with the heartbeat on until two pings came (on a
    // loaded machine the timers may need longer): the run without one then gets as long.
    let silenceMs = 800;
    for (const heartbeat of ['heartbeat: { every: 150ms, timeout: 2s, jitter: 0 }', '']) {
      const upstream = await wsUpstream();
      const route = await routeTo(`http://127.0.0.1:${upstream.port}`, heartbeat);
      const ws = await client(route.port);
      // clock: switch to the injected clock once src/clock.ts injection lands (the route's ticker is a real Clock).
      const started = Date.now();
      if (heartbeat) await until(() => upstream.pings.length >= 2, 10_000, 'two pings with the heartbeat on').catch(() => {});
      await sleep(Math.max(0, silenceMs - (Date.now() - started)));
      silenceMs = Math.max(silenceMs, Date.now() - started);
      pings.set(heartbeat ? 'on' : 'off', upstream.pings.length);
      expect(ws.readyState).toBe(WebSocket.OPEN);
    }
    // The same silence with a heartbeat: proof that the window is long enough to show one.
    expect(pings.get('on')).toBeGreaterThanOrEqual(2);
    expect(pings.get('off')).toBe(0);
  });

  it('works over a wss upstream, and cuts it cleanly on a missing pong', async () => {
    const upstream = await wsUpstream({ secure: true, autoPong: false });
    const route = await routeTo(`https://localhost:${upstream.port}`, 'tls: { ca: cert.pem }\nheartbeat: { every: 300ms, timeout: 250ms, jitter: 0 }');
    const ws = await client(route.port);
    ws.send('over tls');
    expect((await ws.next()).toString()).toBe('echo over tls /chat');
    expect(await once<number>(ws, 'close', 5_000)).toBe(1006);
    await until(async () => (await route.metric('evictions_total', { route: 'web', reason: 'heartbeat_timeout' })) === 1, 5_000, 'heartbeat_timeout eviction');
  });

  it("relays the upstream's refusal of the upgrade", async () => {
    const upstream = await wsUpstream({ rejectUpgrade: true });
    const route = await routeTo(`http://127.0.0.1:${upstream.port}`);
    const ws = new WebSocket(`ws://127.0.0.1:${route.port}/chat`);
    cleanups.push(async () => ws.terminate());
    const status = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no response within 5 s')), 5_000);
      ws.on('error', () => {});
      ws.on('unexpected-response', (_req: http.ClientRequest, res: http.IncomingMessage) => {
        clearTimeout(timer);
        resolve(res.statusCode ?? 0);
      });
    });
    expect(status).toBe(403);
    expect(await route.metric('requests_total', { route: 'web', code: '403' })).toBe(1);
  });
});
