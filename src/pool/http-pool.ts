import type { Clock } from '../clock.js';
import type { HttpPoolConfig } from '../config/schema.js';
import { ProxyError, type EvictionReason } from '../errors.js';
import type { Logger } from '../log.js';
import type { BurstLog } from '../log-burst.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import { PooledConnection, type ConnectionState, type ConnectionUser } from './http-connection.js';
import { dialUpstream, type DialAttempt, type DialSettings, type DialTarget } from './http-dial.js';
import { TlsSessionCache } from '../net/tls-sessions.js';
import { atNextTurn, currentTurn, markTurn, type NextTurnTask } from './loop-turn.js';
import { formatHostPort } from '../config/hostport.js';
import { CloseAfterIdle } from './close-after-idle.js';

// The persistent upstream pool of an HTTP route: keep-alive connections reused by every
// request of every client, whatever the clients do with their own connections.
//
// The pool hands out sockets, and the route's lean HTTP/1.1 path (http/exchange.ts)
// writes requests and reads responses on them itself. Neither undici nor node:http's
// client sits underneath: undici's HTTP/1.1 client refuses an `Expect: 100-continue`
// request and destroys the socket on an interim 100, and hides which request reused
// which socket and why each socket closed; node:http's ClientRequest is correct but
// its per-message objects, streams and timers cost more CPU than the rest of the proxy
// (measured on this machine: 120-150 us per keep-alive request through node:http on both
// sides, 20-25 us on the lean path, HAProxy 17-19 us).
//
// Defences against the stale-connection race, each one borrowed from a proxy that does it:
//  - a parked socket is watched: EOF, RST or any byte evicts it at once (nginx, pingora);
//  - a socket parked in an earlier event-loop turn is handed over only after the events
//    this turn already polled have run, so a FIN that arrived meanwhile is seen first
//    (undici; loop-turn.ts says why a socket parked in this very turn needs no wait);
//  - `Keep-Alive: timeout=N` from the upstream lowers the idle limit below N;
//  - so does the shortest idle age at which the upstream was seen closing a connection
//    (close-after-idle.ts), for backends that close sooner than they advertise;
//  - a request that failed on a reused socket before any response byte is retried once
//    on a fresh connection by the caller (http/exchange.ts), which asks for one here.

export interface PoolSettings extends DialSettings {
  readonly pool: HttpPoolConfig;
}

export interface HttpPoolOptions {
  readonly route: string;
  readonly settings: PoolSettings;
  /** The route's batched series: the route flushes them on its tick and on scrape. */
  readonly metrics: RouteMetrics;
  readonly clock: Clock;
  readonly log?: Logger;
  /** The route's folded log of failed upstream connects (shared with its tunnels). */
  readonly connectFailures?: BurstLog;
}

/** Who asked for a connection: an exchange, which then uses it (its events go to it). */
export interface PoolWaiter extends ConnectionUser {
  /** The connection is this waiter's now; `reused`: it served a request before. */
  connectionReady(connection: PooledConnection, reused: boolean): void;
  /** No connection could be opened (ProxyError CONNECT_FAILED / CONNECT_TIMEOUT). */
  connectionFailed(error: unknown): void;
  /** The waiter gave up (its client left): it needs no connection any more. */
  readonly abandoned: boolean;
}

/** Origins whose close-after-idle a pool remembers at once. */
const MAX_LEARNED_ORIGINS = 1024;

/** How early, before the upstream's advertised idle limit, a parked socket goes. */
function hintMarginMs(hintMs: number): number {
  return Math.min(1000, hintMs / 2);
}

interface Waiter {
  readonly waiter: PoolWaiter;
  readonly fresh: boolean;
}

export class HttpPool {
  readonly route: string;
  readonly settings: PoolSettings;
  readonly metrics: RouteMetrics;
  readonly clock: Clock;
  readonly log: Logger | undefined;
  readonly connectFailures: BurstLog | undefined;
  readonly sessions = new TlsSessionCache();
  readonly #origins = new Map<string, OriginPool>();
  #lastOrigin: OriginPool | null = null;
  #unsubscribe: (() => void) | null;
  #closing: EvictionReason | null = null;
  /** Close-after-idle learned per origin key: it outlives an origin's pool (dropped when it has no connection left). */
  readonly #closeAfterIdle = new Map<string, CloseAfterIdle>();
  #shownCloseAfterIdleMs = Infinity;

  constructor(options: HttpPoolOptions) {
    this.route = options.route;
    this.settings = options.settings;
    this.metrics = options.metrics;
    this.clock = options.clock;
    this.log = options.log;
    this.connectFailures = options.connectFailures;
    this.#unsubscribe = this.clock.subscribe((now) => this.#tick(now));
  }

  /** The pool of one upstream origin (one for a reverse route, one per destination when forwarding). */
  origin(target: DialTarget): OriginPool {
    // A reverse route asks with the same target object every time: no key to build.
    const last = this.#lastOrigin;
    if (last !== null && last.target === target) return last;
    const key = originKey(target);
    let origin = this.#origins.get(key);
    if (!origin) {
      origin = new OriginPool(this, target, key);
      this.#origins.set(key, origin);
    }
    this.#lastOrigin = origin;
    return origin;
  }

  /** Why the pool stopped reusing (close()), or null while it still parks connections. */
  get closing(): EvictionReason | null {
    return this.#closing;
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

  /** @internal */ handedOut(reused: boolean): void {
    if (reused) this.metrics.reuse.inc();
  }

  /** @internal A connection changed state: pool_idle counts idle ones, pool_active busy and connecting ones. */
  moved(from: 'idle' | 'busy' | 'connecting' | null, to: 'idle' | 'busy' | 'connecting' | null): void {
    if (from) (from === 'idle' ? this.metrics.poolIdle : this.metrics.poolActive).dec();
    if (to) (to === 'idle' ? this.metrics.poolIdle : this.metrics.poolActive).inc();
  }

  /** @internal */ evicted(connection: PooledConnection, reason: EvictionReason): void {
    this.metrics.eviction(reason).inc();
    this.metrics.requestsPerUpstreamConnection.observe(connection.requests);
    if (this.log?.isLevelEnabled('debug')) {
      this.log.debug({ route: this.route, upstreamConnection: connection.id, reason, requests: connection.requests }, 'upstream connection closed');
    }
    this.#maybeFinished();
  }

  /**
   * The idle limit for a parked connection, ms (Infinity = none; <= 0 = do not park): the
   * configured idleTimeout, below the upstream's advertised limit and below `closesAfterMs`,
   * the shortest idle age at which this origin was seen closing a connection.
   */
  idleLimitMs(connection: PooledConnection, closesAfterMs = Infinity): number {
    const configured = this.settings.pool.idleTimeoutMs > 0 ? this.settings.pool.idleTimeoutMs : Infinity;
    const hint = connection.keepAliveHintMs > 0 ? connection.keepAliveHintMs : Infinity;
    const upstreamLimit = Math.min(hint, closesAfterMs);
    if (upstreamLimit === Infinity) return configured;
    return Math.min(configured, this.parkLimitBelow(upstreamLimit));
  }

  /** How long a connection may stay parked when the upstream closes idle ones at `upstreamLimitMs`. */
  parkLimitBelow(upstreamLimitMs: number): number {
    // Go before the upstream does, by a margin and by one tick of the coarse clock that runs the check.
    return upstreamLimitMs - hintMarginMs(upstreamLimitMs) - this.clock.periodMs;
  }

  /** @internal The shortest idle age at which the origin `key` closed a pooled connection, ms (Infinity: none in force). */
  closesAfterIdleMs(key: string, now: number): number {
    if (this.#closeAfterIdle.size === 0) return Infinity;
    return this.#closeAfterIdle.get(key)?.shortestMs(now) ?? Infinity;
  }

  /** @internal The origin `key` closed a connection idle for `ageMs`; true when that lowered what is known. */
  observeCloseAfterIdle(key: string, ageMs: number, now: number): boolean {
    let learned = this.#closeAfterIdle.get(key);
    if (!learned) {
      // Bounded: a forward route may meet any number of origins; the oldest entry goes.
      if (this.#closeAfterIdle.size >= MAX_LEARNED_ORIGINS) this.#closeAfterIdle.delete(this.#closeAfterIdle.keys().next().value!);
      learned = new CloseAfterIdle();
      this.#closeAfterIdle.set(key, learned);
    }
    return learned.observe(ageMs, now);
  }

  /** pool_learned_idle_timeout_seconds: the shortest close-after-idle of the route's origins (removed when none). */
  #showCloseAfterIdle(shortestMs: number): void {
    if (shortestMs === this.#shownCloseAfterIdleMs) return;
    this.#shownCloseAfterIdleMs = shortestMs;
    const gauge = this.metrics.registry.poolLearnedIdleTimeout;
    if (shortestMs === Infinity) gauge.remove(this.route);
    else gauge.labels(this.route).set(shortestMs / 1000);
  }

  /** Why a connection coming back from a request must not be parked, or null. */
  retireReason(connection: PooledConnection, now: number, closesAfterMs = Infinity): EvictionReason | null {
    const { maxRequests, maxAgeMs } = this.settings.pool;
    if (this.#closing) return this.#closing;
    if (!connection.usable) return 'peer_closed';
    if (maxRequests > 0 && connection.requests >= maxRequests) return 'max_requests';
    if (maxAgeMs > 0 && now - connection.createdAt >= maxAgeMs) return 'max_age';
    if (this.idleLimitMs(connection, closesAfterMs) <= 0) return 'idle_timeout';
    return null;
  }

  /** Why a parked connection must go now, or null. */
  expiryReason(connection: PooledConnection, now: number, closesAfterMs = Infinity): EvictionReason | null {
    const { maxAgeMs } = this.settings.pool;
    if (now - connection.idleSince >= this.idleLimitMs(connection, closesAfterMs)) return 'idle_timeout';
    if (maxAgeMs > 0 && now - connection.createdAt >= maxAgeMs) return 'max_age';
    return null;
  }

  #tick(now: number): void {
    for (const [key, origin] of this.#origins) {
      origin.evictExpired(now);
      if (!origin.empty) continue;
      this.#origins.delete(key);
      if (origin === this.#lastOrigin) this.#lastOrigin = null;
    }
    let shortestMs = Infinity;
    for (const [key, learned] of this.#closeAfterIdle) {
      const ms = learned.shortestMs(now);
      if (ms === Infinity) this.#closeAfterIdle.delete(key);
      else shortestMs = Math.min(shortestMs, ms);
    }
    this.#showCloseAfterIdle(shortestMs);
  }

  #maybeFinished(): void {
    if (!this.#closing) return;
    for (const origin of this.#origins.values()) if (!origin.empty) return;
    // The route may have stopped flushing already (a pool retired by drain or reload).
    this.metrics.flush();
    this.#unsubscribe?.();
    this.#unsubscribe = null;
  }
}

/** A connection taken from the pool in an earlier turn, handed over at the next one. */
class DeferredReuse implements NextTurnTask {
  constructor(
    readonly origin: OriginPool,
    readonly connection: PooledConnection,
    readonly waiter: Waiter,
  ) {}

  runNextTurn(): void {
    this.origin.handOver(this.connection, this.waiter);
  }
}

/** The pool of one origin: queued waiters, parked connections (LIFO), busy ones, dials. */
export class OriginPool {
  readonly maxSockets: number;
  readonly key: string;
  readonly target: DialTarget;
  readonly #pool: HttpPool;
  /** Parked connections, most recently used last: reuse is LIFO so the extra ones age out. */
  readonly #idle: PooledConnection[] = [];
  readonly #busy = new Set<PooledConnection>();
  readonly #dials = new Set<DialAttempt>();
  readonly #waiters: Waiter[] = [];
  readonly #description: string;
  readonly #onClosed = (connection: PooledConnection, was: ConnectionState): void => this.#closed(connection, was);

  constructor(pool: HttpPool, target: DialTarget, key: string) {
    this.#pool = pool;
    this.target = target;
    this.key = key;
    const max = pool.settings.pool.maxSockets;
    this.maxSockets = max > 0 ? max : Infinity;
    this.#description = `${target.tls ? 'https' : 'http'}://${formatHostPort(target)}`;
  }

  /** Nothing open, dialling or wanted: a queued request whose client left is no work (the queue drops it lazily). */
  get empty(): boolean {
    return this.#idle.length === 0 && this.#busy.size === 0 && this.#dials.size === 0 && this.#waiters.every(({ waiter }) => waiter.abandoned);
  }

  get total(): number {
    return this.#idle.length + this.#busy.size + this.#dials.size;
  }

  describe(): string {
    return this.#description;
  }

  /** The shortest idle age at which this origin closed a pooled connection, ms (Infinity: none seen). */
  closesAfterIdleMs(now: number): number {
    return this.#pool.closesAfterIdleMs(this.key, now);
  }

  /**
   * A reused connection failed before any response byte (the request is retried): the
   * upstream closed it after it had sat idle `idleBeforeUseMs`.
   */
  closedUnderRequest(connection: PooledConnection): void {
    this.#learnCloseAfterIdle(connection.idleBeforeUseMs);
  }

  /** A connection for `waiter`, now or later; `fresh` asks for a new one (a retry). */
  acquire(waiter: PoolWaiter, fresh: boolean): void {
    this.#waiters.push({ waiter, fresh });
    this.#dispatch();
  }

  /**
   * The exchange is done with `connection` and the upstream agreed to keep it. Called from
   * the upstream read that completed the response (a poll-phase callback: see loop-turn.ts).
   */
  release(connection: PooledConnection): void {
    if (connection.state !== 'busy') return;
    connection.detach();
    const now = this.#pool.clock.now();
    const reason = this.#pool.retireReason(connection, now, this.closesAfterIdleMs(now));
    if (reason) {
      connection.close(reason);
      return;
    }
    this.#park(connection, markTurn());
    if (this.#waiters.length > 0) this.#dispatch();
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
    const closesAfterMs = this.closesAfterIdleMs(now);
    for (const connection of [...this.#idle]) {
      const reason = this.#pool.expiryReason(connection, now, closesAfterMs);
      if (reason) connection.close(reason);
    }
  }

  /** Serves queued waiters while there are connections or room for new ones. */
  #dispatch(): void {
    while (this.#waiters.length > 0) {
      const waiter = this.#waiters[0]!;
      if (waiter.waiter.abandoned) {
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
  }

  /** The most recently parked connection that is still good; expired ones are evicted on the way. */
  #takeIdle(): PooledConnection | null {
    let now = 0;
    while (this.#idle.length > 0) {
      const connection = this.#idle.pop()!;
      this.#pool.moved('idle', null);
      let reason: EvictionReason | null = null;
      if (!connection.usable) reason = 'peer_closed';
      else {
        now ||= this.#pool.clock.now();
        reason = this.#pool.expiryReason(connection, now, this.closesAfterIdleMs(now));
      }
      if (!reason) return connection;
      connection.state = 'closed';
      connection.close(reason);
    }
    return null;
  }

  #removeIdle(connection: PooledConnection): void {
    const index = this.#idle.lastIndexOf(connection);
    if (index === -1) return;
    this.#idle.splice(index, 1);
    this.#pool.moved('idle', null);
  }

  #reuse(connection: PooledConnection, waiter: Waiter): void {
    connection.state = 'busy';
    this.#busy.add(connection);
    this.#pool.moved(null, 'busy');
    if (connection.parkedTurn === currentTurn()) {
      this.#assign(connection, waiter.waiter, true);
      return;
    }
    // Parked in an earlier turn: wait for this turn's polled events with the idle watch
    // still on (no user attached: a byte or EOF evicts it).
    atNextTurn(new DeferredReuse(this, connection, waiter));
  }

  /** @internal The deferred half of #reuse. */
  handOver(connection: PooledConnection, waiter: Waiter): void {
    if (!connection.usable) {
      connection.close('peer_closed');
      this.#waiters.unshift(waiter);
      this.#dispatch();
      return;
    }
    if (waiter.waiter.abandoned) {
      this.#park(connection, -1);
      this.#dispatch();
      return;
    }
    this.#assign(connection, waiter.waiter, true);
  }

  #open(waiter: Waiter): void {
    const pool = this.#pool;
    const attempt = dialUpstream(this.target, pool.settings, pool.sessions, true);
    this.#dials.add(attempt);
    pool.moved(null, 'connecting');
    // A connect whose request went away meanwhile still completes: the socket is parked
    // for the next request rather than thrown away.
    attempt.done.then(
      (dialed) => {
        this.#dials.delete(attempt);
        pool.moved('connecting', null);
        countDial(pool.metrics, dialed);
        const connection = new PooledConnection(dialed.socket, dialed.raw, dialed.readBuffer, pool.clock.now(), this.#onClosed);
        this.#busy.add(connection);
        pool.moved(null, 'busy');
        if (!connection.usable) {
          // Gone already, or it spoke before it was asked anything: not an HTTP upstream to trust.
          connection.close('unexpected_data');
          if (!waiter.waiter.abandoned) waiter.waiter.connectionFailed(new ProxyError('CONNECT_FAILED', 'upstream', `${this.#description} closed or sent bytes before any request`));
          return;
        }
        if (waiter.waiter.abandoned) {
          this.#park(connection, -1);
          this.#dispatch();
          return;
        }
        this.#assign(connection, waiter.waiter, false);
      },
      (error: unknown) => {
        this.#dials.delete(attempt);
        pool.moved('connecting', null);
        countDialFailure(pool.metrics, pool.connectFailures, { route: pool.route, upstream: this.#description }, error);
        if (!waiter.waiter.abandoned) waiter.waiter.connectionFailed(error);
        this.#dispatch();
      },
    );
  }

  #assign(connection: PooledConnection, waiter: PoolWaiter, reused: boolean): void {
    connection.requests++;
    connection.idleBeforeUseMs = reused ? this.#pool.clock.now() - connection.idleSince : 0;
    connection.keepAliveHintMs = 0;
    this.#pool.handedOut(reused);
    connection.attach(waiter);
    waiter.connectionReady(connection, reused);
  }

  /** `turn`: the loop turn it is parked in, -1 when not parked from a poll-phase read (always yield). */
  #park(connection: PooledConnection, turn: number): void {
    // A closed pool parks nothing: a connection coming back to it after close() (a dial or a
    // hand-off whose request went away meanwhile) closes with the pool's reason, as the idle
    // ones did, instead of sitting idle where nobody will ever take or expire it.
    const closing = this.#pool.closing;
    if (closing) {
      connection.close(closing);
      return;
    }
    if (connection.state === 'busy') {
      this.#busy.delete(connection);
      this.#pool.moved('busy', null);
    }
    connection.parked(this.#pool.clock.now(), turn);
    this.#idle.push(connection);
    this.#pool.moved(null, 'idle');
  }

  #closed(connection: PooledConnection, was: ConnectionState): void {
    if (was === 'idle') {
      this.#removeIdle(connection);
      if (closedByUpstream(connection.closeReason) && !this.#longerIdleStillOpen(connection)) {
        this.#learnCloseAfterIdle(this.#pool.clock.now() - connection.idleSince);
      }
    }
    else if (was === 'busy') {
      this.#busy.delete(connection);
      this.#pool.moved('busy', null);
    }
    this.#pool.evicted(connection, connection.closeReason);
    if (this.#waiters.length > 0) this.#dispatch();
  }

  #learnCloseAfterIdle(ageMs: number): void {
    // An age that leaves less than one clock tick of parking below it (after the margin and
    // the tick) is not learned: the tick that enforces the limit could not keep it, and it
    // would all but end reuse on what may be a restart or a slow moment as much as an idle
    // timeout; the idle watch, the one-turn wait and the retry handle such closes as before.
    const idleLimitMs = this.#pool.parkLimitBelow(ageMs);
    if (idleLimitMs < this.#pool.clock.periodMs) return;
    const now = this.#pool.clock.now();
    if (!this.#pool.observeCloseAfterIdle(this.key, ageMs, now)) return;
    this.#pool.log?.info(
      { route: this.#pool.route, upstream: this.#description, closedAfterIdleMs: ageMs, idleLimitMs },
      'upstream closes idle connections sooner than the pool kept them: parking them for less from now on',
    );
  }

  /**
   * A parked connection that has been idle longer than `connection` is still open: this close
   * was not the upstream's idle timeout (a restart closes them all, in any order).
   */
  #longerIdleStillOpen(connection: PooledConnection): boolean {
    return this.#idle.some((other) => other.idleSince < connection.idleSince && other.usable);
  }
}

/** The upstream ended the connection (FIN or RST), rather than the proxy. */
function closedByUpstream(reason: EvictionReason): boolean {
  return reason === 'peer_closed' || reason === 'peer_reset';
}

function originKey(target: DialTarget): string {
  const scheme = target.tls ? `https|${target.tls.servername ?? ''}` : 'http';
  return `${scheme}|${target.host}|${target.port}`;
}

/**
 * upstream_connects_total{result} of a connect that failed (its client is answered 502 or
 * 504), and the route's folded log line: an outage is one line and per-second counts.
 */
export function countDialFailure(metrics: RouteMetrics, failures: BurstLog | undefined, fields: { route: string; upstream: string }, error: unknown): void {
  // A destination the forward guard refused was never dialled: no connect to count (forward.ts logs the refusal).
  if (error instanceof ProxyError && error.code === 'DESTINATION_REFUSED') return;
  const result = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT' ? 'timeout' : 'error';
  metrics.connect(result).inc();
  failures?.note({ ...fields, result, err: error instanceof Error ? error.message : String(error) }, result);
}

/** upstream_connects_total, upstream_connect_seconds and tls_handshakes_total of a connect that succeeded. */
export function countDial(metrics: RouteMetrics, dialed: { connectMs: number; tlsResumed: boolean | null }): void {
  metrics.connect('ok').inc();
  metrics.connectSeconds.observe(dialed.connectMs / 1000);
  if (dialed.tlsResumed !== null) metrics.tlsHandshake(dialed.tlsResumed).inc();
}
