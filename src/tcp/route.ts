import net from 'node:net';
import type { RouteConfig } from '../config/schema.js';
import { ProxyError, type EvictionReason, type Side } from '../errors.js';
import { applyKeepaliveToListener, readSocketOptions } from '../net/sockopt.js';
import { SockoptRefusals } from '../net/sockopt-refusals.js';
import { codecFor } from '../protocols/registry.js';
import type { HeartbeatCodec } from '../protocols/types.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from '../route.js';
import { BurstLog } from '../log-burst.js';
import { listenOn, watchListenerErrors } from '../net/listen.js';
import { acceptWith } from '../net/accept.js';
import { markSharedReads, sharedOnread } from '../net/shared-reads.js';
import { RouteMetrics } from '../metrics/route-metrics.js';
import { Session, type HeartbeatResult, type SessionEvents } from './session.js';
import { UpstreamSource, type Lease } from './upstream.js';
import { clientSecureContext, joinOpening, openClient, type ClientOpening } from './client-opening.js';
import { openMysql } from './mysql-opening.js';
import { tcpOf, tlsFailureCause, tlsSummary } from '../net/tls-socket.js';
import type tls from 'node:tls';
import { createRouteLearner, type RouteLearner } from '../heartbeat/route-learner.js';
import { formatHostPort } from '../config/hostport.js';
import { handleFd, resetOrDestroy, START_PAUSED } from '../net/internals.js';

/** Every accepted client socket: half-open allowed, not read until its upstream is ready. */
const ACCEPTED_SOCKET = { options: { allowHalfOpen: true, ...START_PAUSED, onread: sharedOnread }, context: null };

// A TCP-family route: accept -> keepalive on the client socket -> lease an upstream
// (warm pool or fresh dial) -> Session. Owns its listener, its sessions and one
// subscription to the shared clock that drives idle timeouts and heartbeats.

let nextSessionId = 1;

export function createTcpRoute(config: RouteConfig, deps: RouteDeps): RouteHandle {
  return new TcpRoute(config, deps);
}

class TcpRoute implements RouteHandle {
  readonly name: string;
  #config: RouteConfig;
  #codec: HeartbeatCodec | null;
  /** clientTls's certificate, parsed once per config. */
  #clientContext: tls.SecureContext | null;
  readonly #deps: RouteDeps;
  readonly #metrics: RouteMetrics;
  readonly #server: net.Server;
  /** Live sessions, each with the release() of the lease it runs on. */
  readonly #sessions = new Map<Session, () => void>();
  /** Client sockets accepted whose upstream is still connecting. */
  readonly #pending = new Map<net.Socket, () => void>();
  #upstream: UpstreamSource;
  #listening = false;
  /** True when accepted sockets inherit keepalive and TCP_NODELAY from the listener (Linux). */
  #listenerSetsOptions = false;
  #unsubscribe: (() => void) | null = null;
  #unwatchFds: () => void = () => {};
  /** heartbeat every: auto: the route's learned interval (null otherwise). */
  #learner: RouteLearner | null = null;
  #unregisterFlush: (() => void) | null = null;
  #drainWaiters: Array<() => void> = [];
  readonly #events: SessionEvents;
  readonly #connectFailures: BurstLog;
  readonly #clientTlsFailures: BurstLog;
  readonly #clientRefusals: BurstLog;
  /** Evictions the proxy decided: a mass eviction is one line and per-second counts by reason. */
  readonly #evictions: BurstLog;
  /** Keepalive on every socket of the route, refusals counted and logged (client side here, upstream in the warm pool). */
  readonly #sockopt: SockoptRefusals;
  readonly #acceptErrors: BurstLog;
  readonly #refusedHeartbeats: BurstLog;

  constructor(config: RouteConfig, deps: RouteDeps) {
    this.name = config.name;
    this.#config = config;
    this.#deps = deps;
    this.#codec = heartbeatCodec(config);
    this.#clientContext = clientSecureContext(config);
    this.#metrics = new RouteMetrics(deps.metrics, this.name);
    this.#connectFailures = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'upstream connect failed; closing client' });
    this.#evictions = new BurstLog(deps.log, deps.clock, { level: 'info', msg: 'connection evicted', countBy: 'reasons' });
    this.#refusedHeartbeats = new BurstLog(deps.log, deps.clock, {
      level: 'warn',
      msg: 'heartbeat answered with an error: the upstream is alive but refuses the probe (e.g. a Redis ACL user without +ping)',
      intervalMs: 60_000,
    });
    this.#clientTlsFailures = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'client TLS failed; closing client' });
    this.#clientRefusals = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'client opening refused; closing client' });
    this.#sockopt = new SockoptRefusals(this.name, deps);
    this.#upstream = new UpstreamSource(config, this.#codec, deps, this.#metrics, this.#sockopt);
    this.#server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.#accept(socket));
    this.#acceptErrors = watchListenerErrors(this.#server, this.name, this.#metrics, deps);
    this.#events = {
      onClosed: (session, reason, side) => this.#onSessionClosed(session, reason, side),
      onBytes: (direction, count) => {
        if (direction === 'upstream') this.#metrics.bytesUpstream.inc(count);
        else this.#metrics.bytesDownstream.inc(count);
      },
      onHeartbeat: (session, result, ms, detail) => this.#onHeartbeat(session, result, ms, detail),
    };
  }

  get config(): RouteConfig {
    return this.#config;
  }

  get listening(): boolean {
    return this.#listening;
  }

  get activeCount(): number {
    return this.#sessions.size + this.#pending.size;
  }

  async listen(): Promise<void> {
    await listenOn(this.#server, this.#config.listen, this.name);
    this.#listening = true;
    // Accepted sockets read through the shared buffer; where node's handle is not what
    // acceptWith expects they come through 'connection' and read through 'data' events.
    acceptWith(this.#server, () => ACCEPTED_SOCKET, (socket) => {
      markSharedReads(socket);
      this.#accept(socket);
    });
    this.#unwatchFds = this.#deps.fdBudget?.watch(this.#server) ?? (() => {});
    this.#listenerSetsOptions = applyKeepaliveToListener(this.#server, this.#config.keepalive.client, this.#config.noDelay);
    this.#learner = this.#codec ? createRouteLearner(this.#config, this.#deps) : null;
    this.#unsubscribe = this.#deps.clock.subscribe((now) => this.#tick(now));
    this.#unregisterFlush = this.#deps.metrics.onScrape(() => this.#metrics.flush());
    this.#upstream.start();
    warnAboutOneWayHeartbeat(this.#config, this.#deps);
  }

  address(): { host: string; port: number } | null {
    const address = this.#server.address();
    return address && typeof address === 'object' ? { host: address.address, port: address.port } : null;
  }

  update(config: RouteConfig): void {
    this.#config = config;
    if (this.#listening) this.#listenerSetsOptions = applyKeepaliveToListener(this.#server, config.keepalive.client, config.noDelay);
    this.#codec = heartbeatCodec(config);
    this.#clientContext = clientSecureContext(config);
    // A reload starts the learner again (upstream or bounds may differ; stateDir keeps what it knew).
    this.#learner?.close();
    this.#learner = this.#listening && this.#codec ? createRouteLearner(config, this.#deps) : null;
    // A changed upstream or pool gets a fresh source; the old one's idle sockets go.
    const old = this.#upstream;
    this.#upstream = new UpstreamSource(config, this.#codec, this.#deps, this.#metrics, this.#sockopt);
    old.close('reload');
    if (this.#listening) this.#upstream.start();
    warnAboutOneWayHeartbeat(config, this.#deps);
  }

  async stopAccepting(): Promise<void> {
    await this.#stopAccepting('shutdown');
  }

  async #stopAccepting(sparesReason: EvictionReason): Promise<void> {
    if (!this.#listening) return;
    this.#listening = false;
    this.#unwatchFds();
    this.#upstream.close(sparesReason);
    // The listening socket closes at once; close()'s callback would wait for every
    // accepted connection to end, which is drain's job, not this one's.
    this.#server.close();
  }

  async drain(deadlineMs: number, reason: EvictionReason): Promise<void> {
    // A route retired by a reload drops its spares for the reload; live clients go on.
    await this.#stopAccepting(reason === 'route_removed' ? 'reload' : reason);
    if (this.activeCount > 0) {
      const drained = new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
      // An infinite deadline (a route retired by reload) waits for the clients to finish.
      let timer: NodeJS.Timeout | undefined;
      const deadline = Number.isFinite(deadlineMs)
        ? new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs)))
        : new Promise<void>(() => {});
      await Promise.race([drained, deadline]);
      clearTimeout(timer);
      for (const abort of this.#pending.values()) abort();
      for (const session of this.#sessions.keys()) session.destroy(reason);
    }
    this.#metrics.flush();
    for (const burst of [this.#connectFailures, this.#evictions, this.#acceptErrors, this.#clientTlsFailures, this.#clientRefusals, this.#sockopt]) burst.flush();
    this.#learner?.close();
    this.#learner = null;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    this.#unregisterFlush?.();
    this.#unregisterFlush = null;
  }

  connections(): ConnectionInfo[] {
    const now = this.#deps.clock.now();
    return [...this.#sessions.keys()].map((s) => ({
      id: s.id,
      route: this.name,
      protocol: this.#config.protocol,
      client: formatHostPort(s.down.remoteAddress, s.down.remotePort),
      upstream: formatHostPort(s.up.remoteAddress, s.up.remotePort),
      ageSeconds: (now - s.startedAt) / 1000,
      idleSeconds: (now - s.lastPayloadAt) / 1000,
      bytesUpstream: s.bytesUp,
      bytesDownstream: s.bytesDown,
      reused: s.reused,
      socketOptions: { client: readSocketOptions(tcpOf(s.down)), upstream: readSocketOptions(tcpOf(s.up)) },
      tls: { client: tlsSummary(s.down), upstream: tlsSummary(s.up) },
    }));
  }

  #tick(now: number): void {
    this.#metrics.flush();
    this.#learner?.tick(now);
    for (const session of this.#sessions.keys()) session.tick(now);
    this.#upstream.tick(now);
  }

  #accept(down: net.Socket): void {
    const { log } = this.#deps;
    const metrics = this.#metrics;
    const config = this.#config;
    metrics.accepted.inc();
    this.#deps.fdBudget?.accepted(handleFd(down));
    if (config.maxConnections > 0 && this.activeCount >= config.maxConnections) {
      // Like PgBouncer's max_client_conn: refuse at once rather than queue unboundedly.
      metrics.eviction('max_connections').inc();
      log.warn({ route: this.name, client: formatHostPort(down.remoteAddress, down.remotePort), maxConnections: config.maxConnections }, 'connection refused: maxConnections reached');
      down.on('error', () => {});
      down.destroy();
      return;
    }
    metrics.active.inc();
    if (!this.#listenerSetsOptions) {
      down.setNoDelay(config.noDelay);
      this.#sockopt.keepalive(down, 'client', config.keepalive.client, 0);
    }
    const lease = this.#upstream.lease();
    // MySQL negotiates TLS inside its handshake, after the server's greeting (the lease's).
    const mysqlTls = config.protocol === 'mysql' && config.upstreamTls !== null;
    // Any other route that handles TLS answers the client's opening while the upstream connects.
    const opening = mysqlTls ? null : openClient(down, config, this.#clientContext);
    // Read now: a socket's address is gone once it is destroyed.
    const client = opening || mysqlTls ? formatHostPort(down.remoteAddress, down.remotePort) : '';
    const attempt = mysqlTls
      ? openMysql(down, lease, this.#clientContext, config.connectTimeoutMs)
      : opening
        ? joinOpening(lease, opening)
        : lease;
    let clientGone: EvictionReason | null = null;
    const onEarlyError = (error: NodeJS.ErrnoException): void => {
      clientGone = error.code === 'ECONNRESET' ? 'peer_reset' : 'error';
      attempt.abort();
    };
    const onEarlyClose = (): void => {
      clientGone ??= 'peer_closed';
      attempt.abort();
    };
    down.on('error', onEarlyError);
    down.on('close', onEarlyClose);
    this.#pending.set(down, () => {
      clientGone ??= 'shutdown';
      attempt.abort();
      down.destroy();
    });
    (attempt.done as Promise<Lease | { lease: Lease; client: ClientOpening }>).then(
      (ready) => {
        this.#pending.delete(down);
        down.off('error', onEarlyError);
        down.off('close', onEarlyClose);
        const { lease, client } = 'lease' in ready ? ready : { lease: ready, client: null };
        if (clientGone || down.destroyed) {
          lease.socket.destroy();
          this.#endBeforeSession(down, clientGone ?? 'peer_closed', 'downstream');
          return;
        }
        this.#startSession(client?.socket ?? down, lease, client ?? { socket: down, early: [] });
      },
      (error: unknown) => {
        this.#pending.delete(down);
        down.off('error', onEarlyError);
        down.off('close', onEarlyClose);
        // The client left first (its close may race the dial's own failure).
        const refused = error instanceof ProxyError && error.code === 'CLIENT_REFUSED';
        if (clientGone || (error instanceof ProxyError && error.side === 'downstream' && error.code !== 'TLS_FAILED' && !refused)) {
          this.#endBeforeSession(down, clientGone ?? 'peer_closed', 'downstream');
          return;
        }
        const timeout = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT';
        if (error instanceof ProxyError && error.code === 'TLS_FAILED') {
          // The upstream's failure was logged by the source; the client's own is logged here.
          if (error.side === 'downstream') this.#clientTlsFailures.note({ route: this.name, client, reason: 'tls_error', cause: tlsFailureCause(error.cause ?? error) });
          down.on('error', () => {});
          if (!down.destroyed) resetOrDestroy(down);
          this.#endBeforeSession(down, 'tls_error', error.side);
          return;
        }
        if (refused) {
          // The client's opening broke PostgreSQL's rules or its deadline: reset, as the server would close it.
          this.#clientRefusals.note({ route: this.name, client, reason: 'error', err: error.message });
          down.on('error', () => {});
          if (!down.destroyed) resetOrDestroy(down);
          this.#endBeforeSession(down, 'error', 'downstream');
          return;
        }
        // Out of descriptors: the client was taken but cannot be served, as a failed accept.
        const fdLimit = outOfDescriptors(error);
        if (fdLimit) this.#metrics.acceptError(fdLimit).inc();
        this.#connectFailures.note({ route: this.name, client: formatHostPort(down.remoteAddress, down.remotePort), err: String((error as Error).message ?? error) });
        down.on('error', () => {});
        // A reset tells the client at once that nothing is behind this connection.
        resetOrDestroy(down);
        this.#endBeforeSession(down, timeout ? 'connect_timeout' : 'connect_error', 'upstream');
      },
    );
  }

  #endBeforeSession(down: net.Socket, reason: EvictionReason, side: Side): void {
    const { log } = this.#deps;
    const metrics = this.#metrics;
    if (!down.destroyed) down.destroy();
    metrics.active.dec();
    metrics.eviction(reason === 'connect_timeout' ? 'connect_error' : reason).inc();
    log.debug({ route: this.name, reason, side }, 'connection closed before the upstream was ready');
    this.#checkDrained();
  }

  #startSession(down: net.Socket, lease: Lease, client: ClientOpening): void {
    const config = this.#config;
    if (down !== tcpOf(down)) this.#metrics.tlsHandshake((down as tls.TLSSocket).isSessionReused(), 'client').inc();
    const session = new Session(down, lease.socket, this.#events, {
      id: String(nextSessionId++),
      idleTimeoutMs: config.idleTimeoutMs,
      heartbeat: config.heartbeat,
      ...(this.#learner ? { heartbeatInterval: this.#learner.interval } : {}),
      tracker: lease.tracker,
      responseTimeoutMs: config.responseTimeoutMs,
      reused: lease.reused,
      earlyData: lease.earlyData,
      clientEarlyData: client.early,
      rewriter: client.rewriter ?? null,
      clock: this.#deps.clock,
    });
    this.#sessions.set(session, lease.release);
    down.resume();
    lease.socket.resume();
  }

  #onSessionClosed(session: Session, reason: EvictionReason, side: Side): void {
    const { log } = this.#deps;
    const metrics = this.#metrics;
    this.#sessions.get(session)?.();
    this.#sessions.delete(session);
    metrics.active.dec();
    metrics.eviction(reason).inc();
    this.#learner?.onEvicted(reason);
    const fields = {
      route: this.name,
      id: session.id,
      reason,
      side,
      durationMs: this.#deps.clock.now() - session.startedAt,
      bytesUpstream: session.bytesUp,
      bytesDownstream: session.bytesDown,
    };
    // Evictions the proxy decided (a dead peer, a timeout) are news; ordinary ends are not.
    if (reason === 'peer_closed' || reason === 'shutdown') log.debug(fields, 'connection closed');
    else this.#evictions.note(fields, reason);
    this.#checkDrained();
  }

  #onHeartbeat(session: Session, result: HeartbeatResult, ms: number, detail?: string): void {
    const { log } = this.#deps;
    const metrics = this.#metrics;
    metrics.heartbeat(result).inc();
    if (result === 'ok') metrics.heartbeatRtt.observe(ms / 1000);
    else if (result === 'sent') return;
    else if (result === 'error') this.#refusedHeartbeats.note({ route: this.name, id: session.id });
    else if (result === 'unsupported') log.info({ route: this.name, id: session.id, why: detail }, 'heartbeats off for this connection (TCP keepalive only)');
    else log.warn({ route: this.name, id: session.id, waitedMs: ms }, 'heartbeat unanswered: upstream considered dead');
  }

  #checkDrained(): void {
    if (this.activeCount > 0 || this.#drainWaiters.length === 0) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

/** EMFILE or ENFILE when a dial failed for want of a file descriptor, else null. */
function outOfDescriptors(error: unknown): string | null {
  const code = ((error as Error).cause as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EMFILE' || code === 'ENFILE' ? code : null;
}

/** The codec that follows the route's protocol: for its heartbeats, and for responseTimeout's notion of a request. */
function heartbeatCodec(config: RouteConfig): HeartbeatCodec | null {
  if (!config.heartbeat && config.responseTimeoutMs === 0) return null;
  return codecFor(config.protocol, { send: config.heartbeat?.send, expect: config.heartbeat?.expect });
}

function warnAboutOneWayHeartbeat(config: RouteConfig, deps: RouteDeps): void {
  if (config.heartbeat?.send && config.heartbeat.expect?.length === 0) {
    deps.log.warn(
      { route: config.name },
      'heartbeat.send without expect: probes are one-way; a reply would reach the client and a hung upstream is not detected',
    );
  }
}
