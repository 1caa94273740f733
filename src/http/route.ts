import type net from 'node:net';
import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/schema.js';
import type { EvictionReason, Side } from '../errors.js';
import type { Logger } from '../log.js';
import { listenOn, watchListenerErrors } from '../net/listen.js';
import { handleFd } from '../net/internals.js';
import { applyKeepaliveToListener, readSocketOptions } from '../net/sockopt.js';
import { SockoptRefusals } from '../net/sockopt-refusals.js';
import { dialUpstream, type DialAttempt, type DialTarget } from '../pool/http-dial.js';
import { countDial, countDialFailure, HttpPool, type PoolSettings } from '../pool/http-pool.js';
import { BurstLog } from '../log-burst.js';
import { RouteMetrics } from '../metrics/route-metrics.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from '../route.js';
import { Session, type HeartbeatResult, type SessionEvents } from '../tcp/session.js';
import { Allowlist } from './allowlist.js';
import { DestinationGuard } from './destination-guard.js';
import { acceptWithSharedReads, type ClientReads } from './accept.js';
import { ClientSession, type ClientEndReason, type SessionHost, type SessionSettings } from './client-session.js';
import { Exchange, type ExchangeHost } from './exchange.js';
import { proxyConnect, resolveForwardRequest, type ForwardDestination, type ForwardPolicy } from './forward.js';
import { rawHeaders, type RequestHead } from './head-parser.js';
import { upstreamRequestHead } from './head-writer.js';
import { upstreamRequestHeaders } from './headers.js';
import { respondRaw } from './respond.js';
import { createProxyServer, sessionSettings } from './server.js';
import type { TunnelHost, TunnelOptions } from './tunnel.js';
import { proxyUpgrade } from './upgrade.js';
import { formatHostPort } from '../config/hostport.js';

// An HTTP route: `protocol: http` (reverse proxy to one upstream URL) or
// `protocol: http-forward` (a forward proxy limited by an allowlist). Each client
// connection is a ClientSession (our own HTTP/1.1 parsing on the raw socket); every
// request goes to the upstream over the route's persistent pool, so a client that opens
// a connection per request (HTTP/1.0, Connection: close) still reaches its upstream over
// a few long-lived, kept-alive connections. Upgrade and CONNECT turn the client
// connection into a tunnel (tcp/session.ts).

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

class HttpRoute implements RouteHandle, ExchangeHost, TunnelHost, SessionHost {
  readonly name: string;
  #config: RouteConfig;
  readonly #deps: RouteDeps;
  readonly #server: net.Server;
  sessionSettings: SessionSettings;
  #forward: boolean;
  #pool: HttpPool;
  #poolKey: string;
  #reverse: ReverseUpstream | null;
  /** The allowlist and the guard that judges where names resolve (one guard for the route's life). */
  #policy: ForwardPolicy;
  readonly #sessions = new Map<net.Socket, ClientSession>();
  /** Exchanges still reading a response whose client left (they go back to the pool after). */
  readonly #orphans = new Set<Exchange>();
  readonly #tunnels = new Set<Session>();
  readonly #sessionEvents: SessionEvents;
  #listening = false;
  #draining = false;
  /** Accepted sockets inherit keepalive and TCP_NODELAY from the listener (Linux). */
  #listenerSetsOptions = false;
  #unsubscribe: (() => void) | null = null;
  #unwatchFds: () => void = () => {};
  #drainWaiters: Array<() => void> = [];
  /** The route's series, batched (flushed on the clock's tick and on scrape); the pools count into them too. */
  readonly #metrics: RouteMetrics;
  /** connections_active as last reported: it follows #sessions.size, which drain clears at once. */
  #activeReported = 0;
  readonly #unregisterFlush: () => void;
  /** Failed upstream connects (requests answered 502/504, tunnels refused), folded. */
  readonly #connectFailures: BurstLog;
  /** Tunnels the proxy evicted: a mass eviction is one line and per-second counts by reason. */
  readonly #evictions: BurstLog;
  /** Keepalive on every socket of the route (client side here, upstream in dialUpstream), refusals counted and logged. */
  readonly #sockopt: SockoptRefusals;
  readonly #acceptErrors: BurstLog;

  constructor(config: RouteConfig, deps: RouteDeps) {
    this.name = config.name;
    this.#config = config;
    this.#deps = deps;
    this.#forward = config.protocol === 'http-forward';
    this.#reverse = this.#forward ? null : reverseUpstream(config);
    const allowlist = new Allowlist(config.allow);
    this.#policy = { allowlist, guard: new DestinationGuard(allowlist, deps.ownListeners, (fields) => deps.log.info({ route: this.name, ...fields }, 'forward destination refused after resolution')) };
    this.#metrics = new RouteMetrics(deps.metrics, this.name);
    this.#connectFailures = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'upstream connect failed; answering 502/504', countBy: 'results' });
    this.#evictions = new BurstLog(deps.log, deps.clock, { level: 'info', msg: 'tunnel evicted', countBy: 'reasons' });
    this.#sockopt = new SockoptRefusals(this.name, deps);
    this.#pool = this.#newPool(config);
    this.#poolKey = poolKey(config);

    this.sessionSettings = sessionSettings(config.http);
    const server = createProxyServer((socket) => this.#accept(socket, null));
    this.#server = server;
    this.#acceptErrors = watchListenerErrors(server, this.name, this.#metrics, deps);
    this.#unregisterFlush = deps.metrics.onScrape(() => this.#flushCounts());

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
    return this.#sessions.size;
  }

  async listen(): Promise<void> {
    await listenOn(this.#server, this.#config.listen, this.name);
    this.#listening = true;
    if (!acceptWithSharedReads(this.#server, (socket, reads) => this.#accept(socket, reads))) {
      this.#deps.log.debug({ route: this.name }, "accepting through node's 'connection' event (no shared read buffer on this Node)");
    }
    this.#unwatchFds = this.#deps.fdBudget?.watch(this.#server) ?? (() => {});
    this.#listenerSetsOptions = applyKeepaliveToListener(this.#server, this.#config.keepalive.client, this.#config.noDelay);
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
    this.sessionSettings = sessionSettings(config.http);
    if (this.#listening) this.#listenerSetsOptions = applyKeepaliveToListener(this.#server, config.keepalive.client, config.noDelay);
    const allowlist = new Allowlist(config.allow);
    this.#policy.guard.update(allowlist);
    this.#policy = { allowlist, guard: this.#policy.guard };
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
    this.#unwatchFds();
    // Closes the listening socket at once; live connections go on.
    this.#server.close();
  }

  async drain(deadlineMs: number, reason: EvictionReason): Promise<void> {
    await this.stopAccepting();
    this.#draining = true;
    this.#closeIdleSessions();
    if (this.activeCount > 0) {
      const drained = new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
      let timer: NodeJS.Timeout | undefined;
      const deadline = Number.isFinite(deadlineMs)
        ? new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs)))
        : new Promise<void>(() => {});
      await Promise.race([drained, deadline]);
      clearTimeout(timer);
      for (const session of [...this.#tunnels]) session.destroy(reason);
      // Past the deadline a response still under way is cut: reset, so it cannot pass for complete.
      for (const session of [...this.#sessions.values()]) session.close('client_shutdown', 'reset');
      // Their 'close' events come later, after the last flush below.
      this.#sessions.clear();
      this.#pool.destroy(reason);
    } else {
      this.#pool.close(reason);
    }
    this.#flushCounts();
    for (const burst of [this.#connectFailures, this.#evictions, this.#acceptErrors, this.#sockopt]) burst.flush();
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    this.#unregisterFlush();
  }

  connections(): ConnectionInfo[] {
    const now = this.#deps.clock.now();
    return [...this.#sessions.values()].map(({ client }) => {
      const tunnel = client.tunnel;
      const session = tunnel?.session;
      return {
        id: client.id,
        route: this.name,
        protocol: tunnel ? (tunnel.kind === 'connect' ? 'connect' : 'upgrade') : this.#config.protocol,
        client: formatHostPort(client.socket.remoteAddress, client.socket.remotePort),
        upstream: session ? formatHostPort(session.up.remoteAddress, session.up.remotePort) : client.upstream,
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

  // ---- ExchangeHost / TunnelHost / SessionHost ----

  get route(): string {
    return this.name;
  }

  get log(): Logger {
    return this.#deps.log;
  }

  get clock(): Clock {
    return this.#deps.clock;
  }

  draining(): boolean {
    return this.#draining;
  }

  countBytes(direction: 'upstream' | 'downstream', count: number): void {
    if (direction === 'upstream') this.#metrics.bytesUpstream.inc(count);
    else this.#metrics.bytesDownstream.inc(count);
  }

  orphaned(exchange: Exchange): void {
    this.#orphans.add(exchange);
  }

  finished(exchange: Exchange): void {
    this.#orphans.delete(exchange);
  }

  answered(status: number): void {
    this.#metrics.request(status).inc();
  }

  observeUpstreamSeconds(seconds: number): void {
    this.#metrics.upstreamRequestSeconds.observe(seconds);
  }

  retried(reason: string): void {
    this.#metrics.retry(reason).inc();
  }

  dial(target: DialTarget): DialAttempt {
    const attempt = dialUpstream(target, this.#pool.settings, this.#pool.sessions);
    const metrics = this.#metrics;
    attempt.done.then(
      (dialed) => countDial(metrics, dialed),
      (error: { code?: string; side?: Side }) => {
        if (error.side === 'downstream') return; // aborted because the client left
        countDialFailure(metrics, this.#connectFailures, { route: this.name, upstream: formatHostPort(target) }, error);
      },
    );
    return attempt;
  }

  startTunnel(clientSession: ClientSession, up: net.Socket, options: TunnelOptions): void {
    clientSession.tunnelled();
    const client = clientSession.client;
    const down = clientSession.socket;
    const session = new Session(down, up, this.#sessionEvents, {
      id: client.id,
      idleTimeoutMs: this.#config.idleTimeoutMs,
      heartbeat: options.heartbeat,
      tracker: options.tracker,
      reused: false,
      earlyData: options.earlyData,
      clock: this.#deps.clock,
    });
    client.tunnel = { kind: options.kind, session };
    this.#tunnels.add(session);
    down.resume();
    up.resume();
  }

  /** A parsed request: refused here, or an exchange over the pool (not started yet). */
  request(session: ClientSession, head: RequestHead): Exchange | null {
    const config = this.#config;
    let origin: DialTarget;
    let path: string;
    let authority: string;
    if (this.#forward) {
      const destination = resolveForwardRequest(head.url, this.#policy);
      if (!destination.ok) return this.#refuse(session, head, destination.status, destination.detail);
      const { value } = destination;
      origin = this.#forwardTarget(value);
      path = value.path;
      authority = value.authority;
    } else {
      // RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400.
      if (head.httpVersion === '1.1' && head.headers.host === undefined) return this.#refuse(session, head, 400, 'Host header required');
      const reverse = this.#reverse!;
      const reversed = reversePath(reverse.basePath, head.url);
      if (reversed === null) return this.#refuse(session, head, 400, 'invalid request target');
      origin = reverse.dial;
      path = reversed;
      authority = reverse.authority;
    }
    const http = config.http;
    const pool = this.#pool;
    const text = upstreamRequestHead(head, {
      path,
      authority,
      forwardedFor: http.xForwarded ? session.clientIp : null,
      forwardedProto: 'http',
      // Credentials for a proxy are for us (and we take none); never pass them on.
      dropProxyAuthorization: this.#forward,
    });
    return new Exchange(this, session, {
      origin: pool.origin(origin),
      method: head.method,
      head: text,
      hasBody: head.body !== 'none',
      bodyLength: head.body === 'length' ? head.contentLength : null,
      expectContinue: head.expectContinue,
      retry: http.retry,
      responseTimeoutMs: http.responseTimeoutMs,
    });
  }

  /** Upgrade or CONNECT: the client socket leaves HTTP and becomes a tunnel (or gets a raw refusal). */
  handOff(session: ClientSession, head: RequestHead, rest: Buffer): void {
    if (head.method === 'CONNECT') this.#onConnect(head, session, rest);
    else this.#onUpgrade(head, session, rest);
  }

  clientEnded(session: ClientSession, reason: ClientEndReason, side: Side): void {
    this.#metrics.eviction(reason).inc();
    const { log } = this.#deps;
    if (log.isLevelEnabled('debug')) log.debug({ route: this.name, id: session.client.id, reason, side, requests: session.client.requests }, 'client connection closed');
  }

  sessionClosed(session: ClientSession): void {
    this.#sessions.delete(session.socket);
    this.#checkDrained();
  }

  // ---- client connections ----

  #accept(socket: net.Socket, reads: ClientReads | null): void {
    const { log } = this.#deps;
    const config = this.#config;
    this.#metrics.accepted.inc();
    this.#deps.fdBudget?.accepted(handleFd(socket));
    if (config.maxConnections > 0 && this.#sessions.size >= config.maxConnections) {
      this.#metrics.eviction('max_connections').inc();
      log.warn({ route: this.name, client: formatHostPort(socket.remoteAddress, socket.remotePort), maxConnections: config.maxConnections }, 'connection refused: maxConnections reached');
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    if (!this.#listenerSetsOptions) {
      socket.setNoDelay(config.noDelay);
      this.#sockopt.keepalive(socket, 'client', config.keepalive.client, 0);
    }
    this.#sessions.set(socket, new ClientSession(socket, this, this.#deps.clock.now(), reads));
  }

  /** A forward destination's dial: its name resolved once, through the guard. */
  #forwardTarget(destination: ForwardDestination): DialTarget {
    return {
      host: destination.host,
      port: destination.port,
      tls: destination.scheme === 'https' ? { rejectUnauthorized: true } : null,
      lookup: this.#policy.guard.lookupFor(destination.port),
    };
  }

  #refuse(session: ClientSession, head: RequestHead, status: number, detail: string): null {
    this.answered(status);
    if (status === 403) this.#deps.log.info({ route: this.name, target: head.url }, 'request denied by the allowlist');
    session.respondError(status, detail);
    return null;
  }

  #onUpgrade(req: RequestHead, client: ClientSession, head: Buffer): void {
    const config = this.#config;
    let dial: DialTarget;
    let path: string;
    let authority: string;
    if (this.#forward) {
      const destination = resolveForwardRequest(req.url, this.#policy);
      if (!destination.ok) {
        this.answered(destination.status);
        respondRaw(client, destination.status, destination.status === 403 ? 'forbidden' : 'bad_request', destination.detail);
        return;
      }
      const { value } = destination;
      dial = this.#forwardTarget(value);
      path = value.path;
      authority = value.authority;
    } else {
      const reverse = this.#reverse!;
      const reversed = reversePath(reverse.basePath, req.url);
      if (reversed === null) {
        this.answered(400);
        respondRaw(client, 400, 'bad_request', 'invalid request target');
        return;
      }
      dial = reverse.dial;
      path = reversed;
      authority = reverse.authority;
    }
    const headers = upstreamRequestHeaders({ method: req.method, rawHeaders: rawHeaders(req), headers: req.headers }, {
      host: authority,
      forwarded: config.http.xForwarded ? { clientIp: client.clientIp, proto: 'http', host: req.headers.host } : null,
      drop: this.#forward ? ['proxy-authorization'] : [],
      upgrade: req.headers.upgrade ?? 'websocket',
    });
    proxyUpgrade(this, req, client, head, { dial, path, headers, heartbeat: config.heartbeat, responseTimeoutMs: config.http.responseTimeoutMs });
  }

  #onConnect(req: RequestHead, client: ClientSession, head: Buffer): void {
    if (!this.#forward) {
      this.answered(405);
      respondRaw(client, 405, 'bad_request', 'this route is a reverse proxy; CONNECT is for http-forward routes', 'Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n');
      return;
    }
    proxyConnect(this, req, client, head, this.#policy);
  }

  // ---- tunnels ----

  #onTunnelClosed(session: Session, reason: EvictionReason, side: Side): void {
    this.#tunnels.delete(session);
    this.#metrics.eviction(reason).inc();
    const fields = { route: this.name, id: session.id, reason, side, bytesUpstream: session.bytesUp, bytesDownstream: session.bytesDown };
    if (reason === 'peer_closed' || reason === 'shutdown') this.#deps.log.debug(fields, 'tunnel closed');
    else this.#evictions.note(fields, reason);
  }

  #onHeartbeat(session: Session, result: HeartbeatResult, ms: number, detail?: string): void {
    const { log } = this.#deps;
    this.#metrics.heartbeat(result).inc();
    if (result === 'ok') this.#metrics.heartbeatRtt.observe(ms / 1000);
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
      sockopt: this.#sockopt,
      clock: this.#deps.clock,
    };
    return new HttpPool({ route: config.name, settings, metrics: this.#metrics, clock: this.#deps.clock, log: this.#deps.log, connectFailures: this.#connectFailures });
  }

  #tick(now: number): void {
    this.#flushCounts();
    for (const session of this.#sessions.values()) session.tick(now);
    for (const exchange of this.#orphans) exchange.tick(now);
    for (const session of this.#tunnels) session.tick(now);
    if (this.#draining) this.#closeIdleSessions();
  }

  #closeIdleSessions(): void {
    for (const session of [...this.#sessions.values()]) session.closeIfIdle();
  }

  #flushCounts(): void {
    const active = this.#sessions.size;
    this.#metrics.active.inc(active - this.#activeReported);
    this.#activeReported = active;
    this.#metrics.flush();
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
    // A forward route's pooled connections were judged by the allowlist they were dialled under.
    allow: config.allow,
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
