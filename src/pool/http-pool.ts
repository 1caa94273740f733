import type http from 'node:http';
import type net from 'node:net';
import type { Clock } from '../clock.js';
import type { HttpPoolConfig } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import type { Logger } from '../log.js';
import type { EvictionReason, Metrics } from '../metrics/registry.js';
import { PooledConnection, parseKeepAliveTimeoutMs } from './http-connection.js';
import { dialUpstream, describeTarget, type DialAttempt, type DialSettings, type DialTarget } from './http-dial.js';
import { TlsSessionCache } from './http-tls-sessions.js';

// The persistent upstream pool of an HTTP route: keep-alive connections reused by every
// request of every client, whatever the clients do with their own connections.
//
// Why our own pool under node:http's ClientRequest, rather than undici or http.Agent
// (measured by bench/http-client-compare.mjs on this machine, Node 20, 2 cores):
//  - undici's Pool moved 2.4x the requests of node:http (33.5k vs 13.8k req/s, p99
//    2.7 vs 6.2 ms) but it cannot carry a proxy's traffic: its HTTP/1.1 client refuses
//    an `Expect: 100-continue` request (NotSupportedError) and destroys the socket on an
//    interim 100 response, and it hides what the pool must show: which request reused
//    which socket, and why each socket closed (it has no max age either);
//  - in the stale race both undici and http.Agent failed a third of the paced requests
//    (ECONNRESET, 65 and 68 of 200): neither retries, so the retry is ours in any case;
//  - http.Agent's hooks set their own per-socket timers and call setKeepAlive, which
//    would overwrite the kernel keepalive interval and count we set with setsockopt.
// So: node's ClientRequest does the HTTP/1.1 framing (llhttp, 1xx, trailers, HEAD,
// 204/304), and this file does the pooling. Each OriginPool is the `agent` handed to
// http.request(): node calls addRequest(req) and emits 'free' on the socket when the
// exchange is over and the socket may be reused.
//
// Defences against the stale-connection race, each one borrowed from a proxy that does it:
//  - a parked socket is watched: EOF, RST or any byte evicts it at once (nginx, pingora);
//  - a socket taken from the pool is handed over only after one turn of the event loop
//    (setImmediate), so a FIN that arrived in the same poll batch is seen first (undici);
//  - `Keep-Alive: timeout=N` from the upstream lowers the idle limit below N;
//  - a request that failed on a reused socket before any response byte is retried once
//    on a fresh connection by the caller (http/exchange.ts), which asks for one here.

export interface PoolSettings extends DialSettings {
  readonly pool: HttpPoolConfig;
}

export interface PoolStats {
  /** Upstream connections opened since the pool started. */
  opened: number;
  /** Requests handed to a connection that served before. */
  reused: number;
  /** Requests handed to a connection. */
  requests: number;
  idle: number;
  busy: number;
  connecting: number;
  waiting: number;
  evictions: Record<string, number>;
}

export interface HttpPoolOptions {
  readonly route: string;
  readonly settings: PoolSettings;
  readonly metrics: Metrics;
  readonly clock: Clock;
  readonly log?: Logger;
}

/** How early, before the upstream's advertised idle limit, a parked socket goes. */
function hintMarginMs(hintMs: number): number {
  return Math.min(1000, hintMs / 2);
}

/** What http.request() passes to addRequest(); `keepaliveProxyFresh` asks for a new connection. */
export interface PoolRequestOptions {
  readonly keepaliveProxyFresh?: boolean;
}

interface Waiter {
  readonly req: http.ClientRequest;
  readonly fresh: boolean;
}

export class HttpPool {
  readonly route: string;
  readonly settings: PoolSettings;
  readonly metrics: Metrics;
  readonly clock: Clock;
  readonly log: Logger | undefined;
  readonly sessions = new TlsSessionCache();
  readonly #origins = new Map<string, OriginPool>();
  readonly #bySocket = new WeakMap<net.Socket, PooledConnection>();
  #unsubscribe: (() => void) | null;
  #closing: EvictionReason | null = null;
  readonly #stats: PoolStats = { opened: 0, reused: 0, requests: 0, idle: 0, busy: 0, connecting: 0, waiting: 0, evictions: {} };
  // Bound once: labels() hashes its arguments on every call, and these move per request.
  readonly #idleGauge;
  readonly #activeGauge;
  readonly #reuseCounter;

  constructor(options: HttpPoolOptions) {
    this.route = options.route;
    this.settings = options.settings;
    this.metrics = options.metrics;
    this.clock = options.clock;
    this.log = options.log;
    this.#idleGauge = this.metrics.poolIdle.labels(this.route);
    this.#activeGauge = this.metrics.poolActive.labels(this.route);
    this.#reuseCounter = this.metrics.reuse.labels(this.route);
    this.#unsubscribe = this.clock.subscribe((now) => this.#tick(now));
  }

  get closing(): EvictionReason | null {
    return this.#closing;
  }

  /** The pool of one upstream origin (one for a reverse route, one per destination when forwarding). */
  origin(target: DialTarget): OriginPool {
    const key = originKey(target);
    let origin = this.#origins.get(key);
    if (!origin) {
      origin = new OriginPool(this, target, key);
      this.#origins.set(key, origin);
    }
    return origin;
  }

  connectionOf(socket: net.Socket | null | undefined): PooledConnection | undefined {
    return socket ? this.#bySocket.get(socket) : undefined;
  }

  stats(): PoolStats {
    return { ...this.#stats, evictions: { ...this.#stats.evictions } };
  }

  /** Stop reusing: idle connections close now with `reason`, busy ones when their exchange ends. */
  close(reason: EvictionReason): void {
    if (this.#closing) return;
    this.#closing = reason;
    for (const origin of this.#origins.values()) origin.closeIdle(reason);
    this.#maybeFinished();
  }

  /** Forces every connection down (drain deadline passed). */
  destroy(reason: EvictionReason): void {
    this.close(reason);
    for (const origin of this.#origins.values()) origin.destroyAll(reason);
  }

  // ---- bookkeeping shared by the origins ----

  /** @internal */ registered(connection: PooledConnection): void {
    this.#bySocket.set(connection.socket, connection);
    this.#stats.opened++;
  }

  /** @internal */ handedOut(reused: boolean): void {
    this.#stats.requests++;
    if (!reused) return;
    this.#stats.reused++;
    this.#reuseCounter.inc();
  }

  /** @internal Gauges move with each state change, so several pools of one route (after a reload) add up. */
  moved(from: 'idle' | 'busy' | 'connecting' | null, to: 'idle' | 'busy' | 'connecting' | null): void {
    if (from) {
      this.#stats[from]--;
      if (from === 'idle') this.#idleGauge.dec();
      else this.#activeGauge.dec();
    }
    if (to) {
      this.#stats[to]++;
      if (to === 'idle') this.#idleGauge.inc();
      else this.#activeGauge.inc();
    }
  }

  /** @internal */ waiting(delta: number): void {
    this.#stats.waiting += delta;
  }

  /** @internal */ evicted(connection: PooledConnection, reason: EvictionReason): void {
    this.#stats.evictions[reason] = (this.#stats.evictions[reason] ?? 0) + 1;
    this.metrics.evictions.labels(this.route, reason).inc();
    this.metrics.requestsPerUpstreamConnection.labels(this.route).observe(connection.requests);
    this.log?.debug({ route: this.route, upstreamConnection: connection.id, reason, requests: connection.requests }, 'upstream connection closed');
    this.#maybeFinished();
  }

  /** The idle limit for a parked connection, ms (Infinity = none; <= 0 = do not park). */
  idleLimitMs(connection: PooledConnection): number {
    const configured = this.settings.pool.idleTimeoutMs > 0 ? this.settings.pool.idleTimeoutMs : Infinity;
    const hint = connection.keepAliveHintMs;
    if (hint <= 0) return configured;
    // Go before the upstream does, by a margin and by one tick of the coarse clock that runs the check.
    return Math.min(configured, hint - hintMarginMs(hint) - this.clock.periodMs);
  }

  /** Why a connection coming back from a request must not be parked, or null. */
  retireReason(connection: PooledConnection, now: number): EvictionReason | null {
    const { maxRequests, maxAgeMs } = this.settings.pool;
    if (this.#closing) return this.#closing;
    if (!connection.usable) return 'peer_closed';
    if (maxRequests > 0 && connection.requests >= maxRequests) return 'max_requests';
    if (maxAgeMs > 0 && now - connection.createdAt >= maxAgeMs) return 'max_age';
    if (this.idleLimitMs(connection) <= 0) return 'idle_timeout';
    return null;
  }

  /** Why a parked connection must go now, or null. */
  expiryReason(connection: PooledConnection, now: number): EvictionReason | null {
    const { maxAgeMs } = this.settings.pool;
    if (now - connection.idleSince >= this.idleLimitMs(connection)) return 'idle_timeout';
    if (maxAgeMs > 0 && now - connection.createdAt >= maxAgeMs) return 'max_age';
    return null;
  }

  #tick(now: number): void {
    for (const [key, origin] of this.#origins) {
      origin.evictExpired(now);
      if (origin.empty) this.#origins.delete(key);
    }
  }

  #maybeFinished(): void {
    if (!this.#closing) return;
    for (const origin of this.#origins.values()) if (!origin.empty) return;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
  }
}

/**
 * The pool of one origin, in the shape of an http.Agent: node's ClientRequest calls
 * addRequest(req) and later emits 'free' on the socket when the exchange is complete
 * (response read to the end, request fully written, both sides agreeing on keep-alive).
 */
export class OriginPool {
  // Read by node's ClientRequest: keep-alive requests (it sends `Connection: keep-alive`
  // and emits 'free'), the scheme it checks request options against, the default port.
  readonly keepAlive = true;
  readonly protocol = 'http:';
  readonly defaultPort: number;
  readonly maxSockets: number;
  readonly key: string;
  readonly target: DialTarget;
  readonly #pool: HttpPool;
  /** Parked connections, most recently used last: reuse is LIFO so the extra ones age out. */
  readonly #idle: PooledConnection[] = [];
  readonly #busy = new Set<PooledConnection>();
  readonly #dials = new Set<DialAttempt>();
  readonly #waiters: Waiter[] = [];

  constructor(pool: HttpPool, target: DialTarget, key: string) {
    this.#pool = pool;
    this.target = target;
    this.key = key;
    this.defaultPort = target.tls ? 443 : 80;
    const max = pool.settings.pool.maxSockets;
    this.maxSockets = max > 0 ? max : Infinity;
  }

  get empty(): boolean {
    return this.#idle.length === 0 && this.#busy.size === 0 && this.#dials.size === 0 && this.#waiters.length === 0;
  }

  get total(): number {
    return this.#idle.length + this.#busy.size + this.#dials.size;
  }

  describe(): string {
    return `${this.target.tls ? 'https' : 'http'}://${describeTarget(this.target)}`;
  }

  /** Called by node's ClientRequest (http.request({ agent: this })). */
  addRequest(req: http.ClientRequest, options: PoolRequestOptions): void {
    this.#waiters.push({ req, fresh: options.keepaliveProxyFresh === true });
    this.#pool.waiting(1);
    this.#dispatch();
  }

  closeIdle(reason: EvictionReason): void {
    for (const connection of [...this.#idle]) connection.close(reason);
  }

  destroyAll(reason: EvictionReason): void {
    this.closeIdle(reason);
    for (const connection of [...this.#busy]) connection.close(reason);
    for (const dial of [...this.#dials]) dial.abort();
  }

  evictExpired(now: number): void {
    for (const connection of [...this.#idle]) {
      const reason = this.#pool.expiryReason(connection, now);
      if (reason) connection.close(reason);
    }
  }

  /** Serves queued requests while there are connections or room for new ones. */
  #dispatch(): void {
    while (this.#waiters.length > 0) {
      const waiter = this.#waiters[0]!;
      if (waiter.req.destroyed) {
        // Its client went away while it queued; node never needs a socket for it.
        this.#shiftWaiter();
        continue;
      }
      if (!waiter.fresh) {
        const connection = this.#takeIdle();
        if (connection) {
          this.#shiftWaiter();
          this.#reuse(connection, waiter);
          continue;
        }
      }
      if (this.total < this.maxSockets) {
        this.#shiftWaiter();
        this.#open(waiter);
        continue;
      }
      if (waiter.fresh && this.#idle.length > 0) {
        // A retry needs a new connection and the pool is full: an idle one makes room.
        const victim = this.#idle[0]!;
        this.#removeIdle(victim);
        victim.state = 'closed';
        victim.close('replaced');
        continue;
      }
      return;
    }
  }

  #shiftWaiter(): void {
    this.#waiters.shift();
    this.#pool.waiting(-1);
  }

  /** The most recently parked connection that is still good; expired ones are evicted on the way. */
  #takeIdle(): PooledConnection | null {
    const now = Date.now();
    while (this.#idle.length > 0) {
      const connection = this.#idle.pop()!;
      this.#pool.moved('idle', null);
      const reason = connection.usable ? this.#pool.expiryReason(connection, now) : 'peer_closed';
      if (!reason) return connection;
      connection.state = 'closed';
      connection.close(reason);
    }
    return null;
  }

  #removeIdle(connection: PooledConnection): void {
    const index = this.#idle.indexOf(connection);
    if (index === -1) return;
    this.#idle.splice(index, 1);
    this.#pool.moved('idle', null);
  }

  #reuse(connection: PooledConnection, waiter: Waiter): void {
    connection.state = 'busy';
    this.#busy.add(connection);
    this.#pool.moved(null, 'busy');
    // Yield one turn of the loop with the idle watch still on: a FIN or RST already in
    // this poll batch evicts the socket now, instead of failing the request written on it.
    setImmediate(() => {
      if (!connection.usable) {
        connection.close('peer_closed');
        this.#waiters.unshift(waiter);
        this.#pool.waiting(1);
        this.#dispatch();
        return;
      }
      if (waiter.req.destroyed) {
        this.#park(connection);
        this.#dispatch();
        return;
      }
      this.#assign(connection, waiter.req, true);
    });
  }

  #open(waiter: Waiter): void {
    const pool = this.#pool;
    const attempt = dialUpstream(this.target, pool.settings, pool.sessions);
    this.#dials.add(attempt);
    pool.moved(null, 'connecting');
    // A connect whose request went away meanwhile still completes: the socket is parked
    // for the next request rather than thrown away.
    attempt.done.then(
      (dialed) => {
        this.#dials.delete(attempt);
        pool.moved('connecting', null);
        const { metrics, route } = pool;
        metrics.upstreamConnects.labels(route, 'ok').inc();
        metrics.upstreamConnectSeconds.labels(route).observe(dialed.connectMs / 1000);
        if (dialed.tlsResumed !== null) metrics.tlsHandshakes.labels(route, String(dialed.tlsResumed)).inc();
        const connection = new PooledConnection(dialed.socket, dialed.raw, Date.now());
        this.#adopt(connection);
        if (waiter.req.destroyed) {
          this.#park(connection);
          this.#dispatch();
          return;
        }
        this.#assign(connection, waiter.req, false);
      },
      (error: unknown) => {
        this.#dials.delete(attempt);
        pool.moved('connecting', null);
        const timeout = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT';
        pool.metrics.upstreamConnects.labels(pool.route, timeout ? 'timeout' : 'error').inc();
        // node emits it as the request's 'error' (onSocket with an error never touches a socket).
        (waiter.req.onSocket as (socket: net.Socket | null, error?: unknown) => void)(null, error);
        this.#dispatch();
      },
    );
  }

  /** Listeners for the connection's whole life. */
  #adopt(connection: PooledConnection): void {
    const pool = this.#pool;
    pool.registered(connection);
    this.#busy.add(connection);
    pool.moved(null, 'busy');
    connection.socket.on('free', () => this.#onFree(connection));
    connection.socket.once('close', () => this.#onClosed(connection));
  }

  #assign(connection: PooledConnection, req: http.ClientRequest, reused: boolean): void {
    connection.stopWatching();
    connection.requests++;
    connection.keepAliveHintMs = 0;
    this.#pool.handedOut(reused);
    req.reusedSocket = reused;
    req.once('response', (res: http.IncomingMessage) => {
      connection.keepAliveHintMs = parseKeepAliveTimeoutMs(res.headers['keep-alive']);
    });
    req.onSocket(connection.socket);
  }

  /** node's ClientRequest is done with the socket and both sides agreed to keep it. */
  #onFree(connection: PooledConnection): void {
    if (connection.state !== 'busy') return;
    const reason = this.#pool.retireReason(connection, Date.now());
    if (reason) {
      connection.close(reason);
      return;
    }
    this.#park(connection);
    this.#dispatch();
  }

  #park(connection: PooledConnection): void {
    if (connection.state === 'busy') {
      this.#busy.delete(connection);
      this.#pool.moved('busy', null);
    }
    connection.state = 'idle';
    connection.idleSince = Date.now();
    connection.watchWhileIdle();
    this.#idle.push(connection);
    this.#pool.moved(null, 'idle');
  }

  #onClosed(connection: PooledConnection): void {
    if (connection.state === 'idle') this.#removeIdle(connection);
    else if (connection.state === 'busy') {
      this.#busy.delete(connection);
      this.#pool.moved('busy', null);
    }
    connection.state = 'closed';
    this.#pool.evicted(connection, connection.closeReason);
    this.#dispatch();
  }
}

function originKey(target: DialTarget): string {
  const scheme = target.tls ? `https|${target.tls.servername ?? ''}` : 'http';
  return `${scheme}|${target.host}|${target.port}`;
}
