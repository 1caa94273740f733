import http from 'node:http';
import net from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Clock } from '../../src/clock.js';
import { parseConfigText } from '../../src/config/load.js';
import type { RouteConfig } from '../../src/config/schema.js';
import { createHttpRoute } from '../../src/http/route.js';
import { Metrics } from '../../src/metrics/registry.js';
import type { RouteHandle } from '../../src/route.js';
import { parseMetrics, sample } from './proxy.js';
import { connected } from './net.js';
import { once } from './wait.js';

// HTTP routes built in-process from YAML through the real config loader, and small
// upstream servers that count what they see. Every starter returns its own close().

/** A route's config from the YAML of one route (indented as a list item's body). */
export function httpRouteConfig(routeYaml: string, dir?: string): RouteConfig {
  // A directory of its own unless given, removed once parsed: the config holds no path into it.
  const home = dir ?? mkdtempSync(join(tmpdir(), 'kp-http-'));
  const file = join(home, 'config.yaml');
  const text = `admin:\n  listen: off\nroutes:\n  - name: web\n    listen: 127.0.0.1:0\n${indent(routeYaml, 4)}\n`;
  try {
    writeFileSync(file, text);
    return parseConfigText(text, file).routes[0]!;
  } finally {
    if (dir === undefined) rmSync(home, { recursive: true, force: true });
  }
}

function indent(text: string, spaces: number): string {
  const pad = ' '.repeat(spaces);
  const lines = text.replace(/^\n+|\s+$/g, '').split('\n');
  const common = Math.min(...lines.filter((l) => l.trim()).map((l) => l.length - l.trimStart().length));
  return lines.map((line) => pad + line.slice(common)).join('\n');
}

export interface RunningRoute {
  readonly route: RouteHandle;
  readonly port: number;
  readonly metrics: Metrics;
  readonly clock: Clock;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  close(): Promise<void>;
}

/** `clock`: a ManualClock lets a test drive the route's deadlines instead of sleeping. */
export async function startRoute(config: RouteConfig, clock: Clock = new Clock(100)): Promise<RunningRoute> {
  const metrics = new Metrics(false);
  // The route's own listener is the one address of "this proxy" here.
  const ownListeners = (): Array<{ host: string; port: number }> => (route.address() ? [route.address()!] : []);
  const route = createHttpRoute(config, { metrics, log: pino({ level: 'silent' }), clock, ownListeners });
  await route.listen();
  return {
    route,
    port: route.address()!.port,
    metrics,
    clock,
    metric: async (name, labels = {}) => sample(parseMetrics(await metrics.registry.metrics()), `keepalive_proxy_${name}`, labels),
    close: () => route.drain(2_000, 'shutdown'),
  };
}

export interface Upstream {
  readonly server: http.Server;
  readonly port: number;
  readonly url: string;
  /** TCP connections the upstream accepted so far. */
  connections(): number;
  /** Connections open now. */
  openSockets(): Set<net.Socket>;
  close(): Promise<void>;
}

/** A node:http upstream on 127.0.0.1:0 that counts its connections. */
export async function startUpstream(handler: http.RequestListener, options: http.ServerOptions = {}): Promise<Upstream> {
  const server = http.createServer({ keepAliveTimeout: 60_000, ...options }, handler);
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening', 5_000);
  const port = (server.address() as net.AddressInfo).port;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    connections: () => accepted,
    openSockets: () => sockets,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export interface RawResponse {
  readonly status: number;
  readonly head: string;
  readonly headers: Map<string, string[]>;
  readonly body: Buffer;
  readonly raw: Buffer;
}

/**
 * Sends raw bytes on a new connection and reads until the server closes (legacy clients:
 * HTTP/1.0 or Connection: close), bounded by timeoutMs.
 */
export async function rawRequest(port: number, request: string | Buffer, timeoutMs = 10_000): Promise<RawResponse> {
  // Not half-open: the server's FIN ends the exchange, as for a legacy client.
  const socket = net.connect({ port, host: '127.0.0.1' });
  // Generous: under the full suite's load on 2 cores a SYN can need a retransmit or two
  // (1 s, then 3 s): the bound is for a hang, not a speed check.
  await connected(socket, 15_000);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.write(request);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1').slice(0, 300))}`));
    }, timeoutMs);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return parseRawResponse(Buffer.concat(chunks));
}

/** Splits one response: status, headers (lower-case names, repeated values kept) and the bytes after the head. */
export function parseRawResponse(raw: Buffer): RawResponse {
  const end = raw.indexOf('\r\n\r\n');
  const head = raw.subarray(0, end === -1 ? raw.length : end).toString('latin1');
  const [statusLine, ...lines] = head.split('\r\n');
  const headers = new Map<string, string[]>();
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    headers.set(name, [...(headers.get(name) ?? []), line.slice(colon + 1).trim()]);
  }
  return { status: Number(statusLine?.split(' ')[1] ?? 0), head, headers, body: end === -1 ? Buffer.alloc(0) : raw.subarray(end + 4), raw };
}

/** A request through node's http client (keep-alive off unless an agent is given); resolves with status, headers, body. */
export function request(
  port: number,
  options: http.RequestOptions & { body?: Buffer | string | null },
): Promise<{ status: number; headers: http.IncomingHttpHeaders; rawHeaders: string[]; trailers: NodeJS.Dict<string>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const { body, ...rest } = options;
    const req = http.request({ host: '127.0.0.1', port, agent: false, ...rest }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, trailers: res.trailers, body: Buffer.concat(chunks) }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error('request timed out')));
    req.end(body ?? undefined);
  });
}
