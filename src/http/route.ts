import type net from 'node:net';
import type { Clock } from '../clock.js';
import type { RouteConfig } from '../config/schema.js';
import type { EvictionReason, Side } from '../errors.js';
import { readSocketOptions } from '../net/sockopt.js';
import type { DialTarget } from '../pool/http-dial.js';
import { HttpPool, type PoolSettings } from '../pool/http-pool.js';
import type { BurstLog } from '../log-burst.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from '../route.js';
import { RouteBase } from '../route-base.js';
import { Allowlist } from './allowlist.js';
import { DestinationGuard } from './destination-guard.js';
import { acceptWithSharedReads, type ClientReads } from './accept.js';
import { ClientSession, type ClientEndReason, type SessionHost, type SessionSettings } from './client-session.js';
import { Exchange } from './exchange.js';
import { proxyConnect, resolveForwardRequest, type ForwardDestination, type ForwardPolicy, type Resolution } from './forward.js';
import { rawHeaders, type RequestHead } from './head-parser.js';
import { upstreamRequestHead } from './head-writer.js';
import { upstreamRequestHeaders } from './headers.js';
import { respondRaw } from './respond.js';
import { RouteExchanges } from './route-exchanges.js';
import { RouteTunnels } from './route-tunnels.js';
import { createProxyServer, sessionSettings } from './server.js';
import { proxyUpgrade } from './upgrade.js';
import { formatHostPort } from '../config/hostport.js';
import { configFingerprint } from '../config/fingerprint.js';

// An HTTP route: `protocol: http` (reverse proxy to one upstream URL) or
// `protocol: http-forward` (a forward proxy limited by an allowlist). Each client
// connection is a ClientSession (our own HTTP/1.1 parsing on the raw socket); every
// request goes to the upstream over the route's persistent pool, so a client that opens
// a connection per request (HTTP/1.0, Connection: close) still reaches its upstream over
// a few long-lived, kept-alive connections. Upgrade and CONNECT turn the client
// connection into a tunnel (tcp/session.ts).
//
// The route decides where each request goes (the client sessions' host); its exchanges
// report to route-exchanges.ts, its tunnels live in route-tunnels.ts, and the lifecycle
// every route shares (listener, refusal, drain, the shared clock's tick) is route-base.ts's.

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

class HttpRoute extends RouteBase implements SessionHost {
  sessionSettings: SessionSettings;
  #forward: boolean;
  #pool: HttpPool;
  #poolKey: string;
  #reverse: ReverseUpstream | null;
  /** The allowlist and the guard that judges where names resolve (one guard for the route's life). */
  #policy: ForwardPolicy;
  readonly #sessions = new Map<net.Socket, ClientSession>();
  readonly #exchanges: RouteExchanges;
  readonly #tunnels: RouteTunnels;
  #draining = false;
  /** connections_active as last reported: it follows #sessions.size, which drain clears at once. */
  #activeReported = 0;
  /** Failed upstream connects (requests answered 502/504, tunnels refused), folded. */
  readonly #connectFailures: BurstLog;

  constructor(config: RouteConfig, deps: RouteDeps) {
    super(config, deps, {
      server: (accept) => createProxyServer(accept),
      evictedMsg: 'tunnel evicted',
      heartbeat: { off: 'WebSocket heartbeats off for this tunnel', dead: 'WebSocket pong missing: closing both sides' },
    });
    this.#forward = config.protocol === 'http-forward';
    this.#reverse = this.#forward ? null : reverseUpstream(config);
    const allowlist = new Allowlist(config.allow);
    this.#policy = { allowlist, guard: new DestinationGuard(allowlist, deps.ownListeners, (fields) => deps.log.info({ route: this.name, ...fields }, 'forward destination refused after resolution')) };
    this.#connectFailures = this.burst({ level: 'warn', msg: 'upstream connect failed; answering 502/504', countBy: 'results' });
    this.#pool = this.#newPool(config);
    this.#poolKey = poolKey(config);
    this.sessionSettings = sessionSettings(config.http);
    this.#exchanges = new RouteExchanges(this.name, deps.log, deps.clock, this.metrics);
    this.#tunnels = new RouteTunnels({
      route: this.name,
      log: deps.log,
      clock: deps.clock,
      metrics: this.metrics,
      connectFailures: this.#connectFailures,
      current: () => ({ idleTimeoutMs: this.config.idleTimeoutMs, pool: this.#pool }),
      answered: (status) => this.answered(status),
      ending: (reason) => this.countEnded(reason),
      ended: (session, reason, side) => this.noteEnded({ id: session.id, reason, side, bytesUpstream: session.bytesUp, bytesDownstream: session.bytesDown }, 'tunnel closed'),
      events: {
        onBytes: (direction, count) => this.countBytes(direction, count),
        onHeartbeat: (session, result, ms, detail) => this.noteHeartbeat(session.id, result, ms, detail),
      },
    });
  }

  // ---- the route's lifecycle (route-base.ts) ----

  get activeCount(): number {
    return this.#sessions.size;
  }

  protected accept(socket: net.Socket): void {
    this.#accept(socket, null);
  }

  protected override onListening(): void {
    if (!acceptWithSharedReads(this.server, (socket, reads) => this.#accept(socket, reads))) {
      this.deps.log.debug({ route: this.name }, "accepting through node's 'connection' event (no shared read buffer on this Node)");
    }
  }

  override update(config: RouteConfig): void {
    super.update(config);
    // http and http-forward share a listener kind, so a reload may switch between them.
    this.#forward = config.protocol === 'http-forward';
    this.sessionSettings = sessionSettings(config.http);
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

  protected override onDrainStart(): void {
    this.#draining = true;
    this.#closeIdleSessions();
  }

  protected closeRemaining(reason: EvictionReason): void {
    this.#tunnels.destroyAll(reason);
    // Past the deadline a response still under way is cut: reset, so it cannot pass for complete.
    for (const session of [...this.#sessions.values()]) session.close('client_shutdown', 'reset');
    // Their 'close' events come later, after the last flush.
    this.#sessions.clear();
  }

  protected override onDrained(reason: EvictionReason, waited: boolean): void {
    // A route retired by a reload drops its pooled connections for the reload (as a tcp
    // route's spares): route_removed is a client pair's word, never a pool connection's.
    const poolReason = reason === 'route_removed' ? 'reload' : reason;
    if (waited) this.#pool.destroy(poolReason);
    else this.#pool.close(poolReason);
  }

  protected tick(now: number): void {
    for (const session of this.#sessions.values()) session.tick(now);
    this.#exchanges.tick(now);
    this.#tunnels.tick(now);
    if (this.#draining) this.#closeIdleSessions();
  }

  protected override flushMetrics(): void {
    const active = this.#sessions.size;
    this.metrics.active.inc(active - this.#activeReported);
    this.#activeReported = active;
    this.metrics.flush();
  }

  connections(): ConnectionInfo[] {
    const now = this.deps.clock.exactNow();
    return [...this.#sessions.values()].map(({ client }) => {
      const tunnel = client.tunnel;
      const session = tunnel?.session;
      return {
        id: client.id,
        route: this.name,
        protocol: tunnel ? (tunnel.kind === 'connect' ? 'connect' : 'upgrade') : this.config.protocol,
        client: formatHostPort(client.socket.remoteAddress, client.socket.remotePort),
        upstream: session ? formatHostPort(session.up.remoteAddress, session.up.remotePort) : client.upstream,
        ageSeconds: (now - client.createdAt) / 1000,
        idleSeconds: (now - (session ? session.lastPayloadAt : client.lastActivity)) / 1000,
        bytesUpstream: client.bytesUp + (session?.bytesUp ?? 0),
        bytesDownstream: client.bytesDown + (session?.bytesDown ?? 0),
        reused: client.reused,
        requests: client.requests,
        socketOptions: { client: readSocketOptions(client.socket), upstream: session ? readSocketOptions(session.up.tcp) : null },
      };
    });
  }

  // ---- SessionHost: the client connections' requests ----

  get clock(): Clock {
    return this.deps.clock;
  }

  draining(): boolean {
    return this.#draining;
  }

  answered(status: number): void {
    this.#exchanges.answered(status);
  }

  /** A parsed request: refused here, or an exchange over the pool (not started yet). */
  request(session: ClientSession, head: RequestHead): Exchange | null {
    const config = this.config;
    // RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400 (a forward request names its host in its target).
    if (!this.#forward && head.httpVersion === '1.1' && head.headers.host === undefined) return this.#refuse(session, head, 400, 'Host header required');
    const destination = this.#destination(head.url);
    if (!destination.ok) return this.#refuse(session, head, destination.status, destination.detail);
    const { dial, path, authority } = destination.value;
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
    return new Exchange(this.#exchanges, session, {
      origin: pool.origin(dial),
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
    this.metrics.eviction(reason).inc();
    const { log } = this.deps;
    if (log.isLevelEnabled('debug')) log.debug({ route: this.name, id: session.client.id, reason, side, requests: session.client.requests }, 'client connection closed');
  }

  sessionClosed(session: ClientSession): void {
    this.#sessions.delete(session.socket);
    this.checkDrained();
  }

  // ---- client connections ----

  #accept(socket: net.Socket, reads: ClientReads | null): void {
    if (!this.admit(socket)) return;
    this.#sessions.set(socket, new ClientSession(socket, this, this.deps.clock.now(), reads));
  }

  /** Where a request target goes on this route: the dial, the upstream's path and Host, or why it may not. */
  #destination(target: string | undefined): Resolution<{ dial: DialTarget; path: string; authority: string }> {
    if (this.#forward) {
      const destination = resolveForwardRequest(target, this.#policy);
      if (!destination.ok) return destination;
      const { value } = destination;
      return { ok: true, value: { dial: this.#forwardTarget(value), path: value.path, authority: value.authority } };
    }
    const reverse = this.#reverse!;
    const path = reversePath(reverse.basePath, target);
    if (path === null) return { ok: false, status: 400, detail: 'invalid request target' };
    return { ok: true, value: { dial: reverse.dial, path, authority: reverse.authority } };
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
    if (status === 403) this.deps.log.info({ route: this.name, target: head.url }, 'request denied by the allowlist');
    session.respondError(status, detail);
    return null;
  }

  #onUpgrade(req: RequestHead, client: ClientSession, head: Buffer): void {
    const config = this.config;
    const destination = this.#destination(req.url);
    if (!destination.ok) {
      this.answered(destination.status);
      respondRaw(client, destination.status, destination.status === 403 ? 'forbidden' : 'bad_request', destination.detail);
      return;
    }
    const { dial, path, authority } = destination.value;
    const headers = upstreamRequestHeaders({ method: req.method, rawHeaders: rawHeaders(req), headers: req.headers }, {
      host: authority,
      forwarded: config.http.xForwarded ? { clientIp: client.clientIp, proto: 'http', host: req.headers.host } : null,
      drop: this.#forward ? ['proxy-authorization'] : [],
      upgrade: req.headers.upgrade ?? 'websocket',
    });
    proxyUpgrade(this.#tunnels, req, client, head, { dial, path, headers, heartbeat: config.heartbeat, responseTimeoutMs: config.http.responseTimeoutMs });
  }

  #onConnect(req: RequestHead, client: ClientSession, head: Buffer): void {
    if (!this.#forward) {
      this.answered(405);
      respondRaw(client, 405, 'bad_request', 'this route is a reverse proxy; CONNECT is for http-forward routes', 'Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n');
      return;
    }
    proxyConnect(this.#tunnels, req, client, head, this.#policy);
  }

  // ---- housekeeping ----

  #newPool(config: RouteConfig): HttpPool {
    const settings: PoolSettings = {
      pool: config.httpPool,
      keepalive: config.keepalive.upstream,
      userTimeoutMs: config.userTimeoutMs,
      connectTimeoutMs: config.connectTimeoutMs,
      noDelay: config.noDelay,
      sockopt: this.sockopt,
      clock: this.deps.clock,
    };
    return new HttpPool({ route: config.name, settings, metrics: this.metrics, clock: this.deps.clock, log: this.deps.log, connectFailures: this.#connectFailures });
  }

  #closeIdleSessions(): void {
    for (const session of [...this.#sessions.values()]) session.closeIfIdle();
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
  return configFingerprint({
    upstream: config.upstreamUrl?.href ?? null,
    // A forward route's pooled connections were judged by the allowlist they were dialled under.
    allow: config.allow,
    pool: config.httpPool,
    keepalive: config.keepalive.upstream,
    userTimeoutMs: config.userTimeoutMs,
    connectTimeoutMs: config.connectTimeoutMs,
    noDelay: config.noDelay,
    tls: config.tls,
  });
}
