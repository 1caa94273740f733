import type net from 'node:net';
import type tls from 'node:tls';
import type { RouteConfig } from '../config/schema.js';
import { dial, dialRaw, rawDialPossible, secureOver, type DialHandle, type DialOptions } from '../net/dial.js';
import { RawTcp } from '../net/raw-tcp.js';
import { formatHostPort } from '../config/hostport.js';
import { readInto } from '../net/shared-reads.js';
import { pendingSocketError } from '../net/sockopt.js';
import { TlsSessionCache } from '../net/tls-sessions.js';
import { tlsFailureCause } from '../net/tls-socket.js';
import { upstreamTlsDial } from '../tcp/upstream-tls.js';
import type { SockoptRefusals } from '../net/sockopt-refusals.js';
import type { HeartbeatCodec, Tracker } from '../protocols/types.js';
import type { RouteDeps } from '../route.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import { ProxyError, reasonForError, type EvictionReason } from '../errors.js';
import { BurstLog } from '../log-burst.js';
import { HeartbeatSchedule } from '../heartbeat/scheduler.js';

// Where a TCP-family route's upstream sockets come from: a warm pool of pre-dialled,
// single-use spares when `pool.warm` > 0, else a fresh dial per client. The HTTP pool's
// sibling (pool/http-pool.ts), with the same shape: a lease gives pingora's
// `(stream, reused)`, and the user gives it back with release(lease) (the HTTP pool's
// origin.release(connection)); a warm socket is single-use, so giving it back only ends
// its pool_active share.
//
// A parked spare is watched: any EOF, reset or error evicts it (pingora's rule). Bytes
// the server sends first (a MySQL greeting) are kept, bounded, and handed to the client
// with the socket. Protocols whose codec may probe before any client byte (redis) get
// heartbeats while parked, on the schedule live sessions use (heartbeat/scheduler.ts:
// jitter, RTT, timeout), so a spare that went dead behind a middlebox is found.

export interface Lease<S extends net.Socket | RawTcp = net.Socket | RawTcp> {
  /** A raw TCP end when the route takes plain TCP without sockets (lease(true)), else a socket. */
  readonly socket: S;
  /** True when the socket already existed (a warm hand-off): counted in reuse_total. */
  readonly reused: boolean;
  /** The pool this lease came from, to give it back to (a reload may have replaced the route's). */
  readonly pool: WarmPool;
  /** What the client is to be given first (a MySQL greeting), already seen by `tracker`. */
  readonly earlyData: readonly Buffer[];
  readonly tracker: Tracker | null;
  /**
   * For a TLS upstream whose handshake waits for the client (MySQL): writes `request` (the
   * SSL request made from the client's response) on the TCP socket, then handshakes;
   * resolves with the TLS socket to use from then on. null when there is nothing to do.
   */
  readonly secure: ((request: Buffer) => Promise<net.Socket>) | null;
}

export interface WarmPoolOptions {
  /**
   * The route's heartbeat interval in force when it learns one (every: auto), read when a
   * spare is parked; spares follow it as live sessions do.
   */
  readonly learnedInterval?: () => { readonly everyMs: number } | null;
  /**
   * Park spares as raw TCP ends (when the upstream allows it), for a route whose clients are
   * raw and so lease(true); a lease(false) then dials afresh. Sockets otherwise.
   */
  readonly rawSpares?: boolean;
}

export interface LeaseAttempt<S extends net.Socket | RawTcp = net.Socket | RawTcp> {
  readonly done: Promise<Lease<S>>;
  abort(): void;
}

/** Past this many greeting bytes a parked socket is not what we think it is. */
const MAX_EARLY_BYTES = 64 * 1024;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 30_000;
/**
 * A spare the upstream closes sooner than this after its connect was refused in all but
 * name (a server at its client limit answers "too many connections" and closes): it counts
 * as a failed refill, so such an upstream is retried with backoff, not every tick.
 */
const SPARE_PROVEN_MS = 5_000;
/** Evictions that say nothing about the upstream's health. */
const LOCAL_EVICTIONS: ReadonlySet<EvictionReason> = new Set(['idle_timeout', 'shutdown', 'reload', 'route_removed']);

interface Spare {
  /** A raw TCP end when the route takes its clients raw (WarmPoolOptions.rawSpares), else a socket. */
  readonly socket: net.Socket | RawTcp;
  /** Closed and counted (#evict): by its upstream's EOF, reset or bytes, even in a hand-off's yield, or by the pool. */
  evicted: boolean;
  readonly tracker: Tracker | null;
  /** The refill round that dialled it. */
  readonly round: number;
  readonly parkedAt: number;
  readonly early: Buffer[];
  earlyBytes: number;
  /** Heartbeats while parked (null when the codec may not probe before the client speaks). */
  readonly schedule: HeartbeatSchedule | null;
  detach(): void;
}

export class WarmPool {
  readonly #config: RouteConfig;
  readonly #codec: HeartbeatCodec | null;
  readonly #deps: RouteDeps;
  readonly #metrics: RouteMetrics;
  readonly #warm: number;
  readonly #spares: Spare[] = [];
  /**
   * Refill dials in flight (spares to be). A client's fresh dial is not here: it belongs to
   * the client's lease, which a reload must not cut (the old pool's close() aborts only these).
   */
  readonly #refilling = new Set<{ abort(): void }>();
  #inUse = 0;
  #closed = false;
  /** close()'s reason, for a spare that comes back from a hand-off after it. */
  #closeReason: EvictionReason = 'shutdown';
  #started = false;
  #backoffMs = 0;
  #nextRefillAt = 0;
  /** Per source, so a reload with other CAs never resumes a session verified under the old ones. */
  readonly #tlsSessions = new TlsSessionCache();
  readonly #tlsFailures: BurstLog;
  readonly #tlsDial: Pick<DialOptions, 'tls' | 'startTls'>;
  /** Refill rounds started, and the round whose failure last doubled the backoff: one doubling per round, not per dial. */
  #refillRound = 0;
  #backedOffRound = -1;
  readonly #refillFailures: BurstLog;
  readonly #evictions: BurstLog;
  readonly #sockopt: SockoptRefusals;
  readonly #learnedInterval: () => { readonly everyMs: number } | null;
  readonly #rawSpares: boolean;

  constructor(config: RouteConfig, codec: HeartbeatCodec | null, deps: RouteDeps, metrics: RouteMetrics, sockopt: SockoptRefusals, options: WarmPoolOptions = {}) {
    this.#learnedInterval = options.learnedInterval ?? (() => null);
    this.#rawSpares = options.rawSpares ?? false;
    this.#sockopt = sockopt;
    this.#metrics = metrics;
    this.#config = config;
    this.#codec = codec;
    this.#deps = deps;
    this.#warm = config.warmPool?.warm ?? 0;
    this.#tlsDial = upstreamTlsDial(config);
    this.#refillFailures = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'warm pool refill failed; retrying with backoff', countBy: 'results' });
    this.#evictions = new BurstLog(deps.log, deps.clock, { level: 'info', msg: 'pooled upstream connection evicted', countBy: 'reasons' });
    this.#tlsFailures = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'upstream TLS failed; closing the connection' });
  }

  start(): void {
    this.#started = true;
    this.#refill();
  }

  /**
   * An upstream for one client: a warm spare when there is one, else a fresh dial, as a raw
   * TCP end when `raw` is asked for and the upstream allows it (plain TCP to an IP address).
   */
  lease(): LeaseAttempt<net.Socket>;
  lease(raw: boolean): LeaseAttempt;
  lease(raw = false): LeaseAttempt {
    const spare = raw === this.#parksRaw ? this.#takeSpare() : null;
    if (spare) {
      this.#inUse++;
      this.#updateGauges();
      const attempt = this.#handOff(spare, raw);
      // Refill after the hand-off, so the new dial's work does not delay this client; a
      // spare that served a client proves the upstream healthy.
      attempt.done
        .then(() => (this.#backoffMs = 0))
        .finally(() => {
          if (this.#deps.clock.now() >= this.#nextRefillAt) this.#refill();
        })
        .catch(() => {});
      return attempt;
    }
    const handle = this.#dial(raw && this.rawPossible);
    let aborted = false;
    return {
      done: handle.done.then(({ socket, earlyData }) => {
        if (aborted) {
          socket.destroy();
          throw new ProxyError('CONNECT_FAILED', 'downstream', 'client left');
        }
        this.#inUse++;
        this.#updateGauges();
        const tracker = this.#codec?.track(codecOptions(this.#config)) ?? null;
        for (const chunk of earlyData) tracker?.fromServer(chunk);
        return { socket, reused: false, pool: this, earlyData, tracker, secure: this.#secureLater(socket as net.Socket) };
      }),
      abort: () => {
        aborted = true;
        handle.abort();
      },
    };
  }

  /** The session using the lease's socket has ended (pool_active bookkeeping). */
  release(lease: Lease): void {
    // Single-use: the socket is closed by its session, never parked again.
    if (lease.pool !== this || this.#inUse === 0) return;
    this.#inUse--;
    this.#updateGauges();
  }

  tick(now: number): void {
    if (this.#closed) return;
    const maxIdleMs = this.#config.warmPool?.maxIdleMs ?? 0;
    for (const spare of [...this.#spares]) {
      if (maxIdleMs > 0 && now - spare.parkedAt >= maxIdleMs) {
        this.#evict(spare, 'idle_timeout');
        continue;
      }
      if (!spare.schedule || !spare.tracker) continue;
      const decision = spare.schedule.next(now, spare.tracker);
      if (decision === 'timeout') {
        this.#metrics.heartbeat('timeout').inc();
        this.#evict(spare, 'heartbeat_timeout');
      } else if (decision === 'probe') {
        spare.socket.write(spare.schedule.probe(spare.tracker, now));
      }
    }
    if (now >= this.#nextRefillAt) this.#refill();
  }

  close(reason: EvictionReason): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = reason;
    for (const handle of this.#refilling) handle.abort();
    this.#refilling.clear();
    for (const spare of [...this.#spares]) this.#evict(spare, reason);
    this.#updateGauges();
    this.#refillFailures.flush();
    this.#evictions.flush();
    this.#tlsFailures.flush();
  }

  /** Parked spares whose heartbeat probe was written and has not been answered yet. */
  get probesOutstanding(): number {
    let outstanding = 0;
    for (const spare of this.#spares) if (spare.tracker?.probing) outstanding++;
    return outstanding;
  }

  /** Whether a fresh dial can give a raw TCP end (plain TCP to an IP address). */
  get rawPossible(): boolean {
    return (this.#rawPossible ??= rawDialPossible(this.#dialOptions()));
  }
  #rawPossible: boolean | undefined;

  /** Whether spares are parked as raw TCP ends. */
  get #parksRaw(): boolean {
    return this.#rawSpares && this.rawPossible;
  }

  #dialOptions(): DialOptions {
    const config = this.#config;
    return {
      target: config.upstream!,
      timeoutMs: config.connectTimeoutMs,
      noDelay: config.noDelay,
      keepalive: config.keepalive.upstream,
      sockopt: this.#sockopt,
      clock: this.#deps.clock,
      userTimeoutMs: config.userTimeoutMs,
      ...this.#tlsDial,
      sessions: this.#tlsSessions,
      reads: 'shared',
    };
  }

  #dial(raw: true): { done: Promise<{ socket: RawTcp; earlyData: readonly Buffer[] }>; abort(): void };
  #dial(raw?: boolean): { done: Promise<{ socket: net.Socket; earlyData: readonly Buffer[] }>; abort(): void };
  #dial(raw = false): { done: Promise<{ socket: net.Socket | RawTcp; earlyData: readonly Buffer[] }>; abort(): void } {
    const { log } = this.#deps;
    const metrics = this.#metrics;
    const config = this.#config;
    const target = config.upstream!;
    const options = this.#dialOptions();
    const handle: DialHandle<net.Socket | RawTcp> = raw ? dialRaw(options) : dial(options);
    const done = handle.done.then(
      ({ socket, connectMs, tls, earlyData }) => {
        metrics.connect('ok').inc();
        metrics.connectSeconds.observe(connectMs / 1000);
        if (tls) metrics.tlsHandshake(tls.resumed, 'upstream').inc();
        return { socket, earlyData };
      },
      (error: unknown) => {
        const timeout = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT';
        const clientLeft = error instanceof ProxyError && error.side === 'downstream';
        if (!clientLeft) {
          metrics.connect(timeout ? 'timeout' : 'error').inc();
          // A certificate or TLS refusal is a configuration matter: say it, whoever was waiting.
          if (error instanceof ProxyError && error.code === 'TLS_FAILED') {
            this.#tlsFailures.note({ route: config.name, upstream: formatHostPort(target), reason: 'tls_error', cause: tlsFailureCause(error.cause ?? error), err: error.message });
          }
          log.debug({ route: config.name, upstream: formatHostPort(target), err: (error as Error).message }, 'upstream connect failed');
        }
        throw error;
      },
    );
    return { done, abort: () => handle.abort() };
  }

  /** The lease's `secure` when the route's TLS waits for the client (see Lease). */
  #secureLater(raw: net.Socket): Lease['secure'] {
    if (!this.#tlsDial.tls || !this.#tlsDial.startTls?.deferred) return null;
    return (request) => this.#secure(raw, request);
  }

  #secure(raw: net.Socket, request: Buffer): Promise<net.Socket> {
    const config = this.#config;
    const target = config.upstream!;
    raw.write(request);
    const upgrade = secureOver(raw, target, this.#tlsDial.tls!, this.#tlsSessions, true);
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_resolve, reject) => {
      if (config.connectTimeoutMs <= 0) return;
      timer = setTimeout(() => {
        upgrade.socket.destroy();
        reject(new ProxyError('CONNECT_TIMEOUT', 'upstream', `${formatHostPort(target)} after ${config.connectTimeoutMs} ms (TLS handshake timeout)`));
      }, config.connectTimeoutMs);
    });
    return Promise.race([upgrade.ready, expired]).then(
      (socket) => {
        clearTimeout(timer);
        this.#metrics.tlsHandshake((upgrade.socket as tls.TLSSocket).isSessionReused(), 'upstream').inc();
        return socket;
      },
      (error: unknown) => {
        clearTimeout(timer);
        upgrade.socket.destroy();
        if (error instanceof ProxyError && error.code === 'TLS_FAILED') {
          this.#tlsFailures.note({ route: config.name, upstream: formatHostPort(target), reason: 'tls_error', cause: tlsFailureCause(error.cause ?? error), err: error.message });
        }
        throw error;
      },
    );
  }

  #refill(): void {
    if (!this.#started || this.#closed || this.#warm === 0) return;
    const missing = this.#warm - this.#spares.length - this.#refilling.size;
    if (missing <= 0) return;
    const round = ++this.#refillRound;
    for (let i = 0; i < missing; i++) {
      const refill = this.#dial(this.#parksRaw);
      this.#refilling.add(refill);
      refill.done.then(
        ({ socket, earlyData }) => {
          this.#refilling.delete(refill);
          if (this.#closed) socket.destroy();
          else this.#park(socket, earlyData, round);
        },
        (error: unknown) => {
          this.#refilling.delete(refill);
          const result = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT' ? 'timeout' : 'error';
          this.#refillFailed(round, result, (error as Error).message);
        },
      );
    }
  }

  /** The upstream is down (or turns spares away): back off exponentially, retried from the shared tick. */
  #refillFailed(round: number, result: string, message: string): void {
    if (round !== this.#backedOffRound) {
      this.#backedOffRound = round;
      this.#backoffMs = Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, this.#backoffMs * 2));
    }
    this.#nextRefillAt = this.#deps.clock.now() + this.#backoffMs;
    if (this.#closed) return;
    const fields = { route: this.#config.name, upstream: formatHostPort(this.#config.upstream!), result, err: message, retryInMs: this.#backoffMs };
    this.#refillFailures.note(fields, result);
  }

  #park(socket: net.Socket | RawTcp, earlyData: readonly Buffer[], round: number): void {
    const clock = this.#deps.clock;
    const now = clock.now();
    const tracker = this.#codec?.track(codecOptions(this.#config)) ?? null;
    for (const chunk of earlyData) tracker?.fromServer(chunk);
    const heartbeat = this.#config.heartbeat;
    const interval = this.#learnedInterval();
    const schedule =
      heartbeat && tracker && this.#codec?.probesBeforeClient ? new HeartbeatSchedule(heartbeat, clock, { clientSince: null, ...(interval ? { interval } : {}) }) : null;
    const onData = (_from: unknown, chunk: Buffer): void => {
      schedule?.heard(clock.now());
      const wasProbing = tracker?.probing ?? false;
      const forward = tracker ? tracker.fromServer(chunk) : chunk;
      if (wasProbing && !tracker!.probing && schedule) this.#probeAnswered(tracker!, schedule);
      if (forward.length === 0) return;
      spare.early.push(forward);
      spare.earlyBytes += forward.length;
      if (spare.earlyBytes > MAX_EARLY_BYTES) this.#evict(spare, 'error');
    };
    // Listened to until the hand-off is done: an end in its yield is closed and counted here too.
    // A reset right after the upstream's last bytes arrives as end-of-stream (see pendingSocketError).
    const onEnd = (): void => {
      const reset = pendingSocketError(socket);
      this.#evict(spare, reset ? reasonForError(reset) : 'peer_closed');
    };
    const onError = (_from: unknown, error: NodeJS.ErrnoException): void => this.#evict(spare, reasonForError(error));
    const onClose = (): void => this.#evict(spare, 'peer_closed');
    const spare: Spare = {
      socket,
      evicted: false,
      tracker,
      round,
      parkedAt: now,
      early: [...earlyData],
      earlyBytes: earlyData.reduce((sum, chunk) => sum + chunk.length, 0),
      schedule,
      detach: () => {},
    };
    if (socket instanceof RawTcp) {
      socket.listen({ data: onData, end: onEnd, error: onError, writeFailed: onError, close: onClose, drain: () => {} });
      socket.resume();
      // Paused, so nothing is read until the session takes over the end (and listens itself).
      spare.detach = () => socket.pause();
    } else {
      const onSocketError = (error: NodeJS.ErrnoException): void => onError(socket, error);
      readInto(socket, onData);
      socket.on('end', onEnd);
      socket.on('error', onSocketError);
      socket.on('close', onClose);
      spare.detach = () => {
        socket.pause();
        readInto(socket, null);
        socket.off('end', onEnd);
        socket.off('error', onSocketError);
        socket.off('close', onClose);
      };
    }
    this.#spares.push(spare);
    this.#updateGauges();
  }

  /** The freshest spare not waiting on a probe reply (LIFO: least likely to be stale). */
  #takeSpare(): Spare | null {
    for (let i = this.#spares.length - 1; i >= 0; i--) {
      const spare = this.#spares[i]!;
      if (spare.tracker?.probing || spare.evicted || spare.socket.destroyed) continue;
      this.#spares.splice(i, 1);
      return spare;
    }
    return null;
  }

  #handOff(spare: Spare, raw: boolean): LeaseAttempt {
    let aborted = false;
    /** The fresh lease that replaces a spare lost in the yield (aborted with this one). */
    let fresh: LeaseAttempt | null = null;
    // Yield one turn of the event loop first, so a FIN or RST that already arrived on
    // the parked socket is seen before a client is given a dead connection (undici). The
    // spare's listeners stay on through the yield: whatever ends it is closed and counted
    // by #evict, as when parked.
    const done = new Promise<Lease>((resolve, reject) => {
      setImmediate(() => {
        if (aborted || spare.evicted) {
          this.#inUse--;
          this.#updateGauges();
        }
        if (aborted) {
          // Untouched: the spare goes back to the pool for the next client.
          this.#giveBack(spare);
          reject(new ProxyError('CONNECT_FAILED', 'downstream', 'client left'));
          return;
        }
        if (spare.evicted) {
          // Died in the yield (already counted): the client gets a fresh dial of the same kind.
          fresh = this.lease(raw);
          fresh.done.then(resolve, reject);
          return;
        }
        spare.detach();
        this.#metrics.reuse.inc();
        resolve({ socket: spare.socket, reused: true, pool: this, earlyData: spare.early, tracker: spare.tracker, secure: spare.socket instanceof RawTcp ? null : this.#secureLater(spare.socket) });
      });
    });
    return {
      done,
      abort: () => {
        aborted = true;
        fresh?.abort();
      },
    };
  }

  /** A spare whose client left during the hand-off: parked again (its age kept), or closed if the pool was. */
  #giveBack(spare: Spare): void {
    if (spare.evicted) return;
    if (this.#closed) {
      this.#evict(spare, this.#closeReason);
      return;
    }
    this.#spares.push(spare);
    this.#updateGauges();
  }

  /** A parked spare's probe came back: counted as a live session's is, with its round trip. */
  #probeAnswered(tracker: Tracker, schedule: HeartbeatSchedule): void {
    if (tracker.state === 'off') return;
    if (tracker.probeRefused) {
      this.#metrics.heartbeat('error').inc();
      return;
    }
    this.#metrics.heartbeat('ok').inc();
    this.#metrics.heartbeatRtt.observe(schedule.answered() / 1000);
  }

  #evict(spare: Spare, reason: EvictionReason): void {
    if (spare.evicted) return;
    spare.evicted = true;
    // Not in the list while a hand-off holds it.
    const index = this.#spares.indexOf(spare);
    if (index !== -1) this.#spares.splice(index, 1);
    spare.detach();
    if (!(spare.socket instanceof RawTcp)) spare.socket.on('error', () => {});
    spare.socket.destroy();
    this.#metrics.eviction(reason).inc();
    if (reason !== 'shutdown' && reason !== 'reload') {
      this.#evictions.note({ route: this.#config.name, reason, pooledMs: this.#deps.clock.now() - spare.parkedAt }, reason);
    }
    this.#updateGauges();
    if (this.#closed) return;
    const livedMs = this.#deps.clock.now() - spare.parkedAt;
    if (LOCAL_EVICTIONS.has(reason)) this.#nextRefillAt = Math.max(this.#nextRefillAt, this.#deps.clock.now());
    else if (livedMs < SPARE_PROVEN_MS) this.#refillFailed(spare.round, 'closed', `the upstream closed a spare ${livedMs} ms after connecting (${reason})`);
    else {
      this.#backoffMs = 0;
      this.#nextRefillAt = Math.max(this.#nextRefillAt, this.#deps.clock.now());
    }
  }

  /**
   * This pool's share of the route's gauges, moved by what changed: after a reload the old
   * pool (its leases still in use, a refill still failing) and the new one count side by
   * side, as the HTTP pool's connections do, instead of each setting the whole value.
   */
  #updateGauges(): void {
    const idle = this.#closed ? 0 : this.#spares.length;
    if (idle !== this.#countedIdle) this.#metrics.poolIdle.inc(idle - this.#countedIdle);
    if (this.#inUse !== this.#countedActive) this.#metrics.poolActive.inc(this.#inUse - this.#countedActive);
    this.#countedIdle = idle;
    this.#countedActive = this.#inUse;
  }
  #countedIdle = 0;
  #countedActive = 0;
}

function codecOptions(config: RouteConfig): { send?: Buffer; expect?: Buffer } {
  return { send: config.heartbeat?.send, expect: config.heartbeat?.expect };
}
