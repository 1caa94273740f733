import type http from 'node:http';
import type net from 'node:net';
import type { RouteConfig } from '../config/schema.js';
import type { Side } from '../errors.js';
import type { Logger } from '../log.js';
import type { EvictionReason } from '../metrics/registry.js';
import { formatAddress, listenOn } from '../net/listen.js';
import { applyKeepalive, readSocketOptions } from '../net/sockopt.js';
import { dialUpstream, type DialAttempt, type DialTarget } from '../pool/http-dial.js';
import { HttpPool, type PoolSettings } from '../pool/http-pool.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from '../route.js';
import { Session, type HeartbeatResult, type SessionEvents } from '../tcp/session.js';
import { Allowlist } from './allowlist.js';
import { ClientConnection } from './client.js';
import { Exchange, type ExchangeHost } from './exchange.js';
import { proxyConnect, resolveForwardRequest } from './forward.js';
import { clientAddress, requestHasBody, upstreamRequestHeaders } from './headers.js';
import { respondError, respondRaw } from './respond.js';
import { answerClientError, applyServerOptions, createProxyServer } from './server.js';
import type { TunnelHost, TunnelOptions } from './tunnel.js';
import { proxyUpgrade } from './upgrade.js';

// An HTTP route: `protocol: http` (reverse proxy to one upstream URL) or
// `protocol: http-forward` (a forward proxy limited by an allowlist). Clients talk to
// node's HTTP server; every request goes to the upstream over the route's persistent
// pool, so a client that opens a connection per request (HTTP/1.0, Connection: close)
// still reaches its upstream over a few long-lived, kept-alive connections. Upgrade and
// CONNECT turn the client connection into a tunnel (tcp/session.ts).

export function createHttpRoute(config: RouteConfig, deps: RouteDeps): RouteHandle {
  return new HttpRoute(config, deps);
}

/** Where a reverse route's requests go, derived once per config. */
interface ReverseUpstream {
  readonly dial: DialTarget;
  /** Host field for the upstream hop: the upstream's own authority (as nginx's default). */
  readonly authority: string;
  /** A base path in the upstream URL ("/api" of http://host/api), prefixed to each request. */
  readonly basePath: string;
}

class HttpRoute implements RouteHandle, ExchangeHost, TunnelHost {
  readonly name: string;
  #config: RouteConfig;
  readonly #deps: RouteDeps;
  readonly #server: http.Server;
  #forward: boolean;
  #pool: HttpPool;
  #poolKey: string;
  #reverse: ReverseUpstream | null;
  #allowlist: Allowlist;
  readonly #clients = new Map<net.Socket, ClientConnection>();
  readonly #exchanges = new Set<Exchange>();
  readonly #tunnels = new Set<Session>();
  readonly #sessionEvents: SessionEvents;
  #listening = false;
  #draining = false;
  #unsubscribe: (() => void) | null = null;
  #pendingBytesUp = 0;
  #pendingBytesDown = 0;
  #drainWaiters: Array<() => void> = [];
  // Series that move per request or per client connection, bound once (labels() hashes).
  readonly #accepted;
  readonly #active;
  readonly #upstreamSeconds;
  readonly #byStatus = new Map<number, { inc(): void }>();

  constructor(config: RouteConfig, deps: RouteDeps) {
    this.name = config.name;
    this.#config = config;
    this.#deps = deps;
    this.#forward = config.protocol === 'http-forward';
    this.#reverse = this.#forward ? null : reverseUpstream(config);
    this.#allowlist = new Allowlist(config.allow);
    this.#pool = this.#newPool(config);
    this.#poolKey = poolKey(config);
    deps.metrics.initRoute(this.name);
    this.#accepted = deps.metrics.connectionsAccepted.labels(this.name);
    this.#active = deps.metrics.connectionsActive.labels(this.name);
    this.#upstreamSeconds = deps.metrics.upstreamRequestSeconds.labels(this.name);

    const server = createProxyServer(config.http);
    this.#server = server;
    server.on('connection', (socket: net.Socket) => this.#accept(socket));
    const onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => this.#onRequest(req, res);
    server.on('request', onRequest);
    // With a listener here node sends no 100 Continue itself: the upstream's own goes through.
    server.on('checkContinue', onRequest);
    server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.#onUpgrade(req, socket, head));
    server.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.#onConnect(req, socket, head));
    server.on('clientError', (error: NodeJS.ErrnoException, socket: net.Socket) => {
      const status = answerClientError(error, socket);
      if (status !== null) {
        this.answered(status);
        deps.log.debug({ route: this.name, status, err: error.code ?? error.message }, 'request rejected by the parser');
      }
    });
    server.on('error', (error) => deps.log.error({ route: this.name, err: error }, 'listener error'));

    this.#sessionEvents = {
      onClosed: (session, reason, side) => this.#onTunnelClosed(session, reason, side),
      onBytes: (direction, count) => this.countBytes(direction, count),
      onHeartbeat: (session, result, ms, detail) => this.#onHeartbeat(session, result, ms, detail),
    };
  }

  // ---- RouteHandle ----

  get config(): RouteConfig {
    return this.#config;
  }

  get listening(): boolean {
    return this.#listening;
  }

  get activeCount(): number {
    return this.#clients.size;
  }

  async listen(): Promise<void> {
    await listenOn(this.#server, this.#config.listen, this.name);
    this.#listening = true;
    this.#unsubscribe ??= this.#deps.clock.subscribe((now) => this.#tick(now));
  }

  address(): { host: string; port: number } | null {
    const address = this.#server.address();
    return address && typeof address === 'object' ? { host: address.address, port: address.port } : null;
  }

  update(config: RouteConfig): void {
    this.#config = config;
    // http and http-forward share a listener kind, so a reload may switch between them.
    this.#forward = config.protocol === 'http-forward';
    applyServerOptions(this.#server, config.http);
    this.#allowlist = new Allowlist(config.allow);
    this.#reverse = this.#forward ? null : reverseUpstream(config);
    const key = poolKey(config);
    if (key !== this.#poolKey) {
      // New upstream or pool settings: new requests get a new pool; the old one finishes
      // its exchanges and closes its connections as they come back.
      const old = this.#pool;
      this.#pool = this.#newPool(config);
      this.#poolKey = key;
      old.close('reload');
    }
  }

  async stopAccepting(): Promise<void> {
    if (!this.#listening) return;
    this.#listening = false;
    // Closes the listening socket at once (and idle keep-alive connections); live ones go on.
    this.#server.close();
  }

  async drain(deadlineMs: number, reason: EvictionReason): Promise<void> {
    await this.stopAccepting();
    this.#draining = true;
    this.#server.closeIdleConnections();
    if (this.activeCount > 0) {
      const drained = new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
      let timer: NodeJS.Timeout | undefined;
      const deadline = Number.isFinite(deadlineMs)
        ? new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs)))
        : new Promise<void>(() => {});
      await Promise.race([drained, deadline]);
      clearTimeout(timer);
      for (const session of [...this.#tunnels]) session.destroy(reason);
      for (const socket of [...this.#clients.keys()]) socket.destroy();
      this.#pool.destroy(reason);
    } else {
      this.#pool.close(reason);
    }
    this.#flushBytes();
    this.#unsubscribe?.();
    this.#unsubscribe = null;
  }

  connections(): ConnectionInfo[] {
    const now = Date.now();
    return [...this.#clients.values()].map((client) => {
      const tunnel = client.tunnel;
      const session = tunnel?.session;
      return {
        id: client.id,
        route: this.name,
        protocol: tunnel ? (tunnel.kind === 'connect' ? 'connect' : 'upgrade') : this.#config.protocol,
        client: formatAddress(client.socket.remoteAddress, client.socket.remotePort),
        upstream: session ? formatAddress(session.up.remoteAddress, session.up.remotePort) : client.upstream,
        ageSeconds: (now - client.createdAt) / 1000,
        idleSeconds: (now - (session ? session.lastPayloadAt : client.lastActivity)) / 1000,
        bytesUpstream: client.bytesUp + (session?.bytesUp ?? 0),
        bytesDownstream: client.bytesDown + (session?.bytesDown ?? 0),
        reused: client.reused,
        requests: client.requests,
        socketOptions: { client: readSocketOptions(client.socket), upstream: session ? readSocketOptions(session.up) : null },
      };
    });
  }

  // ---- ExchangeHost / TunnelHost ----

  get route(): string {
    return this.name;
  }

  get log(): Logger {
    return this.#deps.log;
  }

  draining(): boolean {
    return this.#draining;
  }

  countBytes(direction: 'upstream' | 'downstream', count: number): void {
    if (direction === 'upstream') this.#pendingBytesUp += count;
    else this.#pendingBytesDown += count;
  }

  finished(exchange: Exchange): void {
    this.#exchanges.delete(exchange);
  }

  answered(status: number): void {
    let counter = this.#byStatus.get(status);
    if (!counter) {
      counter = this.#deps.metrics.httpRequests.labels(this.name, String(status));
      this.#byStatus.set(status, counter);
    }
    counter.inc();
  }

  observeUpstreamSeconds(seconds: number): void {
    this.#upstreamSeconds.observe(seconds);
  }

  retried(reason: string): void {
    this.#deps.metrics.httpRetries.labels(this.name, reason).inc();
  }

  dial(target: DialTarget): DialAttempt {
    const attempt = dialUpstream(target, this.#pool.settings, this.#pool.sessions);
    const { metrics } = this.#deps;
    attempt.done.then(
      (dialed) => {
        metrics.upstreamConnects.labels(this.name, 'ok').inc();
        metrics.upstreamConnectSeconds.labels(this.name).observe(dialed.connectMs / 1000);
        if (dialed.tlsResumed !== null) metrics.tlsHandshakes.labels(this.name, String(dialed.tlsResumed)).inc();
      },
      (error: { code?: string; side?: Side }) => {
        if (error.side === 'downstream') return; // aborted because the client left
        metrics.upstreamConnects.labels(this.name, error.code === 'CONNECT_TIMEOUT' ? 'timeout' : 'error').inc();
      },
    );
    return attempt;
  }

  startTunnel(down: net.Socket, up: net.Socket, options: TunnelOptions): void {
    const client = this.#clientOf(down);
    const session = new Session(down, up, this.#sessionEvents, {
      id: client.id,
      idleTimeoutMs: this.#config.idleTimeoutMs,
      heartbeat: options.heartbeat,
      tracker: options.tracker,
      reused: false,
      earlyData: options.earlyData,
      now: Date.now(),
    });
    client.tunnel = { kind: options.kind, session };
    this.#tunnels.add(session);
    down.resume();
    up.resume();
  }

  // ---- the server's events ----

  #accept(socket: net.Socket): void {
    const { metrics, log } = this.#deps;
    const config = this.#config;
    this.#accepted.inc();
    if (config.maxConnections > 0 && this.#clients.size >= config.maxConnections) {
      metrics.evictions.labels(this.name, 'max_connections').inc();
      log.warn({ route: this.name, client: formatAddress(socket.remoteAddress, socket.remotePort), maxConnections: config.maxConnections }, 'connection refused: maxConnections reached');
      socket.destroy();
      return;
    }
    this.#clientOf(socket);
    socket.setNoDelay(config.noDelay);
    applyKeepalive(socket, config.keepalive.client, 0);
  }

  #clientOf(socket: net.Socket): ClientConnection {
    let client = this.#clients.get(socket);
    if (client) return client;
    client = new ClientConnection(socket, Date.now());
    this.#clients.set(socket, client);
    this.#active.inc();
    socket.once('close', () => {
      this.#clients.delete(socket);
      this.#active.dec();
      this.#checkDrained();
    });
    return client;
  }

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const config = this.#config;
    const client = this.#clientOf(req.socket);
    client.lastActivity = Date.now();
    // The client's last request on this connection (draining, or clientMaxRequests reached:
    // the exchange counts this one): node answers with Connection: close and closes after.
    const max = config.http.clientMaxRequests;
    if (this.#draining || (max > 0 && client.requests + 1 >= max)) res.shouldKeepAlive = false;
    let target: { origin: DialTarget; path: string; authority: string } | null;
    if (req.httpVersion === '1.1' && req.headers.host === undefined && !this.#forward) {
      // RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400.
      this.#refuse(req, res, 400, 'Host header required');
      return;
    }
    if (this.#forward) {
      const destination = resolveForwardRequest(req.url, this.#allowlist);
      if (!destination.ok) {
        this.#refuse(req, res, destination.status, destination.detail);
        return;
      }
      const { value } = destination;
      target = {
        origin: { host: value.host, port: value.port, tls: value.scheme === 'https' ? { rejectUnauthorized: true } : null },
        path: value.path,
        authority: value.authority,
      };
    } else {
      const reverse = this.#reverse!;
      const path = reversePath(reverse.basePath, req.url);
      if (path === null) {
        this.#refuse(req, res, 400, 'invalid request target');
        return;
      }
      target = { origin: reverse.dial, path, authority: reverse.authority };
    }
    const pool = this.#pool;
    const headers = upstreamRequestHeaders(req, {
      host: target.authority,
      forwarded: config.http.xForwarded ? { clientIp: clientAddress(req.socket.remoteAddress), proto: 'http', host: req.headers.host } : null,
      // Credentials for a proxy are for us (and we take none); never pass them on.
      drop: this.#forward ? ['proxy-authorization'] : [],
    });
    const exchange = new Exchange(this, req, res, client, { pool, origin: pool.origin(target.origin), path: target.path, headers }, {
      retry: config.http.retry,
      responseTimeoutMs: config.http.responseTimeoutMs,
    });
    this.#exchanges.add(exchange);
    exchange.start();
  }

  #refuse(req: http.IncomingMessage, res: http.ServerResponse, status: number, detail: string): void {
    this.answered(status);
    if (status === 403) this.#deps.log.info({ route: this.name, target: req.url }, 'request denied by the allowlist');
    // An unread body would otherwise be drained for keep-alive; close instead.
    respondError(res, status, detail, requestHasBody(req));
  }

  #onUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const config = this.#config;
    this.#clientOf(socket).requests++;
    let dial: DialTarget;
    let path: string;
    let authority: string;
    if (this.#forward) {
      const destination = resolveForwardRequest(req.url, this.#allowlist);
      if (!destination.ok) {
        socket.on('error', () => {});
        this.answered(destination.status);
        respondRaw(socket, destination.status, destination.detail);
        return;
      }
      const { value } = destination;
      dial = { host: value.host, port: value.port, tls: value.scheme === 'https' ? { rejectUnauthorized: true } : null };
      path = value.path;
      authority = value.authority;
    } else {
      const reverse = this.#reverse!;
      const reversed = reversePath(reverse.basePath, req.url);
      if (reversed === null) {
        socket.on('error', () => {});
        this.answered(400);
        respondRaw(socket, 400, 'invalid request target');
        return;
      }
      dial = reverse.dial;
      path = reversed;
      authority = reverse.authority;
    }
    const headers = upstreamRequestHeaders(req, {
      host: authority,
      forwarded: config.http.xForwarded ? { clientIp: clientAddress(socket.remoteAddress), proto: 'http', host: req.headers.host } : null,
      drop: this.#forward ? ['proxy-authorization'] : [],
      upgrade: req.headers.upgrade ?? 'websocket',
    });
    proxyUpgrade(this, req, socket, head, { dial, path, headers, heartbeat: config.heartbeat, responseTimeoutMs: config.http.responseTimeoutMs });
  }

  #onConnect(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    this.#clientOf(socket).requests++;
    if (!this.#forward) {
      socket.on('error', () => {});
      this.answered(405);
      respondRaw(socket, 405, 'this route is a reverse proxy; CONNECT is for http-forward routes', 'Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n');
      return;
    }
    proxyConnect(this, req, socket, head, this.#allowlist);
  }

  // ---- tunnels ----

  #onTunnelClosed(session: Session, reason: EvictionReason, side: Side): void {
    this.#tunnels.delete(session);
    this.#deps.metrics.evictions.labels(this.name, reason).inc();
    const fields = { route: this.name, id: session.id, reason, side, bytesUpstream: session.bytesUp, bytesDownstream: session.bytesDown };
    if (reason === 'peer_closed' || reason === 'shutdown') this.#deps.log.debug(fields, 'tunnel closed');
    else this.#deps.log.info(fields, 'tunnel evicted');
  }

  #onHeartbeat(session: Session, result: HeartbeatResult, ms: number, detail?: string): void {
    const { metrics, log } = this.#deps;
    metrics.heartbeats.labels(this.name, result).inc();
    if (result === 'ok') metrics.heartbeatRtt.labels(this.name).observe(ms / 1000);
    else if (result === 'sent') return;
    else if (result === 'unsupported') log.info({ route: this.name, id: session.id, why: detail }, 'WebSocket heartbeats off for this tunnel');
    else log.warn({ route: this.name, id: session.id, waitedMs: ms }, 'WebSocket pong missing: closing both sides');
  }

  // ---- housekeeping ----

  #newPool(config: RouteConfig): HttpPool {
    const settings: PoolSettings = {
      pool: config.httpPool,
      keepalive: config.keepalive.upstream,
      userTimeoutMs: config.userTimeoutMs,
      connectTimeoutMs: config.connectTimeoutMs,
      noDelay: config.noDelay,
    };
    return new HttpPool({ route: config.name, settings, metrics: this.#deps.metrics, clock: this.#deps.clock, log: this.#deps.log });
  }

  #tick(now: number): void {
    this.#flushBytes();
    for (const exchange of this.#exchanges) exchange.tick(now);
    for (const session of this.#tunnels) session.tick(now);
    if (this.#draining) this.#server.closeIdleConnections();
  }

  #flushBytes(): void {
    const { bytes } = this.#deps.metrics;
    if (this.#pendingBytesUp > 0) bytes.labels(this.name, 'upstream').inc(this.#pendingBytesUp);
    if (this.#pendingBytesDown > 0) bytes.labels(this.name, 'downstream').inc(this.#pendingBytesDown);
    this.#pendingBytesUp = this.#pendingBytesDown = 0;
  }

  #checkDrained(): void {
    if (this.activeCount > 0 || this.#drainWaiters.length === 0) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

function reverseUpstream(config: RouteConfig): ReverseUpstream {
  const url = config.upstreamUrl;
  if (!url) throw new Error(`route ${config.name}: protocol http needs an upstream URL`);
  const https = url.protocol === 'https:';
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const port = url.port ? Number(url.port) : https ? 443 : 80;
  const tlsConfig = config.tls;
  const tls = https
    ? {
        servername: tlsConfig?.servername,
        ca: tlsConfig?.ca,
        cert: tlsConfig?.cert,
        key: tlsConfig?.key,
        rejectUnauthorized: tlsConfig?.rejectUnauthorized ?? true,
      }
    : null;
  const basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
  return { dial: { host, port, tls }, authority: url.host, basePath };
}

/** The upstream request target: origin-form as sent (absolute-form reduced to it), under the base path. */
function reversePath(basePath: string, target: string | undefined): string | null {
  if (!target) return null;
  if (target === '*') return basePath ? null : '*';
  if (target.startsWith('/')) return basePath + target;
  try {
    const url = new URL(target);
    return basePath + url.pathname + url.search;
  } catch {
    return null;
  }
}

/** What, when it changes on reload, needs a new pool (anything else applies to the next request). */
function poolKey(config: RouteConfig): string {
  const tls = config.tls;
  return JSON.stringify({
    upstream: config.upstreamUrl?.href ?? null,
    pool: config.httpPool,
    keepalive: config.keepalive.upstream,
    userTimeoutMs: config.userTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    noDelay: config.noDelay,
    tls: tls
      ? { ca: tls.ca?.toString('base64'), cert: tls.cert?.toString('base64'), key: tls.key?.toString('base64'), servername: tls.servername, verify: tls.rejectUnauthorized }
      : null,
  });
}
