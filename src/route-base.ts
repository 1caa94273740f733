import type net from 'node:net';
import type { RouteConfig } from './config/schema.js';
import type { EvictionReason } from './errors.js';
import type { HeartbeatResult } from './heartbeat/scheduler.js';
import { BurstLog, type BurstLogOptions } from './log-burst.js';
import { formatHostPort } from './config/hostport.js';
import { RawTcp } from './net/raw-tcp.js';
import { handleFd } from './net/internals.js';
import { listenOn, watchListenerErrors } from './net/listen.js';
import { applyKeepaliveToListener } from './net/sockopt.js';
import { SockoptRefusals } from './net/sockopt-refusals.js';
import { RouteMetrics } from './metrics/route-metrics.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from './route.js';

// The lifecycle every kind of route shares (tcp/route.ts, http/route.ts), written once:
// bind and accept, refuse past maxConnections (as PgBouncer's max_client_conn: at once,
// never an unbounded queue), client socket options, one subscription to the shared clock,
// metrics flushed on tick and scrape, stop accepting, drain to a deadline, the drained
// check, and the folded logs of evictions and heartbeats. A route kind fills in what
// is its own through the hooks below; it never re-implements these steps.

/** How a route kind words its heartbeat log lines. */
export interface HeartbeatWording {
  /** A connection whose heartbeats went off (its tracker lost the thread). */
  readonly off: string;
  /** A probe unanswered: the upstream is considered dead and the pair closed. */
  readonly dead: string;
}

export interface RouteBaseOptions {
  /** The listening server, given the function that takes each accepted socket. */
  readonly server: (accept: (socket: net.Socket) => void) => net.Server;
  /** The line a folded eviction burst is logged under ("connection evicted", "tunnel evicted"). */
  readonly evictedMsg: string;
  readonly heartbeat: HeartbeatWording;
}

/** Ends that are news in the log (folded); ordinary ends are debug lines. */
function ordinaryEnd(reason: EvictionReason): boolean {
  return reason === 'peer_closed' || reason === 'shutdown';
}

export abstract class RouteBase implements RouteHandle {
  readonly name: string;
  protected readonly deps: RouteDeps;
  /** The route's series, batched: flushed on the clock's tick and before every scrape. */
  protected readonly metrics: RouteMetrics;
  protected readonly server: net.Server;
  /** Keepalive on every socket of the route, refusals counted and logged. */
  protected readonly sockopt: SockoptRefusals;
  /** Evictions the proxy decided: a mass eviction is one line and per-second counts by reason. */
  protected readonly evictions: BurstLog;
  #config: RouteConfig;
  #listening = false;
  /** True when accepted sockets inherit keepalive and TCP_NODELAY from the listener (Linux). */
  #listenerSetsOptions = false;
  #unsubscribe: (() => void) | null = null;
  /** Takes the listener out of the process's fd budget watch (src/fd-budget.ts). */
  #unwatchFds: () => void = () => {};
  #unregisterFlush: (() => void) | null = null;
  #drainWaiters: Array<() => void> = [];
  readonly #heartbeatWording: HeartbeatWording;
  /** Every folded log of the route, flushed when it has drained. */
  readonly #bursts: Array<{ flush(): void }> = [];
  readonly #refusedHeartbeats: BurstLog;

  constructor(config: RouteConfig, deps: RouteDeps, options: RouteBaseOptions) {
    this.name = config.name;
    this.#config = config;
    this.deps = deps;
    this.metrics = new RouteMetrics(deps.metrics, this.name);
    this.#heartbeatWording = options.heartbeat;
    this.evictions = this.burst({ level: 'info', msg: options.evictedMsg, countBy: 'reasons' });
    this.#refusedHeartbeats = this.burst({
      level: 'warn',
      msg: 'heartbeat answered with an error: the upstream is alive but refuses the probe (e.g. a Redis ACL user without +ping)',
      intervalMs: 60_000,
    });
    this.sockopt = new SockoptRefusals(this.name, deps);
    this.server = options.server((socket) => this.accept(socket));
    this.#bursts.push(watchListenerErrors(this.server, this.name, this.metrics, deps), this.sockopt);
  }

  // ---- what each kind of route fills in ----

  /** Live connections (drain waits for them; maxConnections counts them). */
  abstract get activeCount(): number;
  /** A client socket accepted through the server's connection event (see onListening for other paths). */
  protected abstract accept(socket: net.Socket): void;
  /** Called on every shared tick, after the metrics flush. */
  protected abstract tick(now: number): void;
  /** Closes what is still live when the drain deadline passed. */
  protected abstract closeRemaining(reason: EvictionReason): void;
  abstract connections(): ConnectionInfo[];

  /** Bound and listening: take over accepting, start background work. */
  protected onListening(): void {}
  /** The listener is closing (stopAccepting, or drain with its `reason`). */
  protected onStopAccepting(_reason: EvictionReason): void {}
  /** Drain begins, after the listener closed: let idle connections go at once. */
  protected onDrainStart(): void {}
  /** Drain is over; `waited`: connections were live when it began. */
  protected onDrained(_reason: EvictionReason, _waited: boolean): void {}
  /** Hands the batched series to prom-client. */
  protected flushMetrics(): void {
    this.metrics.flush();
  }

  // ---- RouteHandle ----

  get config(): RouteConfig {
    return this.#config;
  }

  get listening(): boolean {
    return this.#listening;
  }

  async listen(): Promise<void> {
    await listenOn(this.server, this.#config.listen, this.name);
    this.#listening = true;
    this.#unwatchFds = this.deps.fdBudget?.watch(this.server) ?? (() => {});
    this.onListening();
    this.#listenerSetsOptions = applyKeepaliveToListener(this.server, this.#config.keepalive.client, this.#config.noDelay);
    this.#unsubscribe ??= this.deps.clock.subscribe((now) => {
      this.flushMetrics();
      this.tick(now);
    });
    this.#unregisterFlush ??= this.deps.metrics.onScrape(() => this.flushMetrics());
  }

  address(): { host: string; port: number } | null {
    const address = this.server.address();
    return address && typeof address === 'object' ? { host: address.address, port: address.port } : null;
  }

  update(config: RouteConfig): void {
    this.#config = config;
    if (this.#listening) this.#listenerSetsOptions = applyKeepaliveToListener(this.server, config.keepalive.client, config.noDelay);
  }

  async stopAccepting(): Promise<void> {
    this.#stopAccepting('shutdown');
  }

  async drain(deadlineMs: number, reason: EvictionReason): Promise<void> {
    this.#stopAccepting(reason);
    this.onDrainStart();
    const waited = this.activeCount > 0;
    if (waited) {
      await this.#drainedOr(deadlineMs);
      this.closeRemaining(reason);
    }
    this.onDrained(reason, waited);
    this.flushMetrics();
    for (const burst of this.#bursts) burst.flush();
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    this.#unregisterFlush?.();
    this.#unregisterFlush = null;
  }

  /** bytes_total{direction}, batched. */
  countBytes(direction: 'upstream' | 'downstream', count: number): void {
    if (direction === 'upstream') this.metrics.bytesUpstream.inc(count);
    else this.metrics.bytesDownstream.inc(count);
  }

  // ---- for the route kinds ----

  /** A folded log of the route's, flushed when the route has drained. */
  protected burst(options: BurstLogOptions): BurstLog {
    const burst = new BurstLog(this.deps.log, this.deps.clock, options);
    this.#bursts.push(burst);
    return burst;
  }

  /**
   * Counts an accepted client and decides whether it is served: past maxConnections it
   * is refused at once (counted and logged); a served one gets the client socket options
   * the listener could not give it.
   */
  protected admit(socket: net.Socket | RawTcp): boolean {
    const config = this.#config;
    this.metrics.accepted.inc();
    // The lowest free fd is taken: fd N accepted proves N + 1 open (a free budget check).
    this.deps.fdBudget?.accepted(socket instanceof RawTcp ? socket.fd : handleFd(socket));
    if (config.maxConnections > 0 && this.activeCount >= config.maxConnections) {
      this.metrics.eviction('max_connections').inc();
      this.deps.log.warn({ route: this.name, client: formatHostPort(socket.remoteAddress, socket.remotePort), maxConnections: config.maxConnections }, 'connection refused: maxConnections reached');
      if (!(socket instanceof RawTcp)) socket.on('error', () => {});
      socket.destroy();
      return false;
    }
    if (!this.#listenerSetsOptions) {
      socket.setNoDelay(config.noDelay);
      this.sockopt.keepalive(socket, 'client', config.keepalive.client, 0);
    }
    return true;
  }

  /**
   * A connection starts to end: evictions_total{reason}, counted before its sockets are
   * touched, so whoever sees the end (a FIN, a RST) finds it counted.
   */
  protected countEnded(reason: EvictionReason): void {
    this.metrics.eviction(reason).inc();
  }

  /** A connection ended (its sockets closed; countEnded came first): a debug line or the folded eviction log. */
  protected noteEnded(fields: { readonly reason: EvictionReason } & Record<string, unknown>, closedMsg: string): void {
    if (ordinaryEnd(fields.reason)) this.deps.log.debug({ route: this.name, ...fields }, closedMsg);
    else this.evictions.note({ route: this.name, ...fields }, fields.reason);
  }

  /** heartbeats_total{result}, heartbeat_rtt_seconds, and the line a result deserves. */
  protected noteHeartbeat(id: string, result: HeartbeatResult, ms: number, detail?: string): void {
    this.metrics.heartbeat(result).inc();
    if (result === 'ok') this.metrics.heartbeatRtt.observe(ms / 1000);
    else if (result === 'sent') return;
    else if (result === 'error') this.#refusedHeartbeats.note({ route: this.name, id });
    else if (result === 'unsupported') this.deps.log.info({ route: this.name, id, why: detail }, this.#heartbeatWording.off);
    else this.deps.log.warn({ route: this.name, id, waitedMs: ms }, this.#heartbeatWording.dead);
  }

  /** Resolves drain's waiters once nothing is live. Call after every connection's end. */
  protected checkDrained(): void {
    if (this.activeCount > 0 || this.#drainWaiters.length === 0) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const resolve of waiters) resolve();
  }

  #stopAccepting(reason: EvictionReason): void {
    if (!this.#listening) return;
    this.#listening = false;
    this.#unwatchFds();
    this.onStopAccepting(reason);
    // The listening socket closes at once; close()'s callback would wait for every
    // accepted connection to end, which is drain's job, not this one's.
    this.server.close();
  }

  /** Every connection ended, or the deadline passed (an infinite one, a route retired by reload, waits for the clients). */
  async #drainedOr(deadlineMs: number): Promise<void> {
    const drained = new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    let timer: NodeJS.Timeout | undefined;
    const deadline = Number.isFinite(deadlineMs) ? new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs))) : new Promise<void>(() => {});
    await Promise.race([drained, deadline]);
    clearTimeout(timer);
  }
}
