import net from 'node:net';
import type { RouteConfig } from '../config/schema.js';
import { ProxyError, type EvictionReason, type Side } from '../errors.js';
import { readSocketOptions, sockoptSupport } from '../net/sockopt.js';
import { codecFor } from '../protocols/registry.js';
import type { HeartbeatCodec } from '../protocols/types.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from '../route.js';
import { RouteBase } from '../route-base.js';
import type { BurstLog } from '../log-burst.js';
import { acceptRawOrSocket } from '../net/accept.js';
import { markSharedReads, sharedOnread } from '../net/shared-reads.js';
import { RawTcp, rawTcpAvailable } from '../net/raw-tcp.js';
import { SocketEnd, type SpliceEnd } from '../net/splice-end.js';
import { Session, type SessionEvents } from './session.js';
import { WarmPool, type Lease } from '../pool/warm.js';
import { clientSecureContext, joinOpening, openClient, type ClientOpening } from './client-opening.js';
import { openMysql } from './mysql-opening.js';
import { tcpOf, tlsFailureCause } from '../net/tls-socket.js';
import type tls from 'node:tls';
import { createRouteLearner, type RouteLearner } from '../heartbeat/route-learner.js';
import { formatHostPort } from '../config/hostport.js';
import { configFingerprint } from '../config/fingerprint.js';
import { resetOrDestroy, START_PAUSED } from '../net/internals.js';
import { readTcpInfo } from '../net/tcp-info.js';
import { HALF_OPEN_LOG, KernelWatch } from './kernel-watch.js';

/** Every accepted client socket: half-open allowed, not read until its upstream is ready. */
const ACCEPTED_SOCKET = { allowHalfOpen: true, ...START_PAUSED, onread: sharedOnread };

/** A client connection before its session: a raw TCP end (plain TCP routes) or a socket (TLS and openings). */
type Client = net.Socket | RawTcp;
/** The client as its session gets it: after an opening (TLS, PostgreSQL's SSLRequest) or as accepted. */
type OpenedClient = Omit<ClientOpening, 'socket'> & { readonly socket: Client };

// A TCP-family route: accept -> keepalive on the client socket -> lease an upstream
// (warm pool or fresh dial) -> Session. The lifecycle every route shares (listener,
// refusal, drain, the shared clock's tick) is route-base.ts's; what is here is TCP's.

let nextSessionId = 1;

export function createTcpRoute(config: RouteConfig, deps: RouteDeps): RouteHandle {
  return new TcpRoute(config, deps);
}

class TcpRoute extends RouteBase {
  #codec: HeartbeatCodec | null;
  /** clientTls's certificate, parsed once per config. */
  #clientContext: tls.SecureContext | null;
  /** Live sessions, each with the lease it runs on (given back to its pool when the session ends). */
  readonly #sessions = new Map<Session, Lease>();
  /** Client sockets accepted whose upstream is still connecting, each with its abort (the drain's reason). */
  readonly #pending = new Map<Client, (reason: EvictionReason) => void>();
  #upstream: WarmPool;
  /** heartbeat every: auto: the route's learned interval (null otherwise). */
  #learner: RouteLearner | null = null;
  readonly #events: SessionEvents;
  readonly #connectFailures: BurstLog;
  readonly #clientTlsFailures: BurstLog;
  readonly #clientRefusals: BurstLog;
  /** TCP_INFO of the upstream sockets, sampled on the tick: RTT, probes, half-open. */
  readonly #kernelWatch: KernelWatch;

  constructor(config: RouteConfig, deps: RouteDeps) {
    super(config, deps, {
      server: (accept) => net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, accept),
      evictedMsg: 'connection evicted',
      heartbeat: { off: 'heartbeats off for this connection (TCP keepalive only)', dead: 'heartbeat unanswered: upstream considered dead' },
    });
    this.#codec = heartbeatCodec(config);
    this.#clientContext = clientSecureContext(config);
    this.#connectFailures = this.burst({ level: 'warn', msg: 'upstream connect failed; closing client' });
    this.#clientTlsFailures = this.burst({ level: 'warn', msg: 'client TLS failed; closing client' });
    this.#clientRefusals = this.burst({ level: 'warn', msg: 'client opening refused; closing client' });
    this.#upstream = this.#warmPool(config);
    this.#kernelWatch = new KernelWatch(this.name, deps, this.burst(HALF_OPEN_LOG));
    this.#events = {
      onClosing: (_session, reason) => this.countEnded(reason),
      onClosed: (session, reason, side) => this.#onSessionClosed(session, reason, side),
      onBytes: (direction, count) => this.countBytes(direction, count),
      onHeartbeat: (session, result, ms, detail) => this.noteHeartbeat(session.id, result, ms, detail),
    };
  }

  get activeCount(): number {
    return this.#sessions.size + this.#pending.size;
  }

  protected override onListening(): void {
    // Plain TCP clients are taken as raw TCP ends; the rest as sockets reading through the
    // shared buffer. Where node's handle is not what net/accept.ts expects, they come
    // through 'connection' and read through 'data' events.
    acceptRawOrSocket(
      this.server,
      () => this.#rawClients,
      ACCEPTED_SOCKET,
      (end) => this.#accept(end),
      (socket) => {
        markSharedReads(socket);
        this.accept(socket);
      },
    );
    this.#learner = this.#codec ? createRouteLearner(this.config, this.deps) : null;
    this.#upstream.start();
    warnAboutOneWayHeartbeat(this.config, this.deps);
  }

  /**
   * Whether clients are taken as raw TCP ends: nothing on the client side needs a socket
   * (no client TLS, no opening to answer) and socket options are set through setsockopt.
   */
  get #rawClients(): boolean {
    const config = this.config;
    return this.#clientContext === null && config.upstreamTls === null && rawTcpAvailable() && sockoptSupport.native;
  }

  override update(config: RouteConfig): void {
    // A route the reload left as it was keeps its spares and what its learner knew (as
    // Envoy keeps an unchanged cluster's pools): replacing them would drop and re-dial every
    // spare of every route at each SIGHUP, for nothing.
    const unchanged = configFingerprint(config) === configFingerprint(this.config);
    super.update(config);
    if (unchanged) return;
    this.#codec = heartbeatCodec(config);
    this.#clientContext = clientSecureContext(config);
    // A reload starts the learner again (upstream or bounds may differ; stateDir keeps what it knew).
    this.#learner?.close();
    this.#learner = this.listening && this.#codec ? createRouteLearner(config, this.deps) : null;
    // A changed upstream or pool gets a fresh source; the old one's idle sockets go.
    const old = this.#upstream;
    this.#upstream = this.#warmPool(config);
    old.close('reload');
    if (this.listening) this.#upstream.start();
    warnAboutOneWayHeartbeat(config, this.deps);
  }

  /**
   * The route's upstream source for `config`; its spares follow the learned interval as
   * sessions do, and are raw TCP ends when the clients are (both ends of a session raw).
   */
  #warmPool(config: RouteConfig): WarmPool {
    return new WarmPool(config, this.#codec, this.deps, this.metrics, this.sockopt, {
      learnedInterval: () => this.#learner?.interval ?? null,
      rawSpares: this.#rawClients,
    });
  }

  protected override onStopAccepting(reason: EvictionReason): void {
    // A route retired by a reload drops its spares for the reload; live clients go on.
    this.#upstream.close(reason === 'route_removed' ? 'reload' : reason);
  }

  protected closeRemaining(reason: EvictionReason): void {
    for (const abort of this.#pending.values()) abort(reason);
    for (const session of this.#sessions.keys()) session.destroy(reason);
  }

  protected override onDrained(): void {
    this.#learner?.close();
    this.#learner = null;
  }

  connections(): ConnectionInfo[] {
    const now = this.deps.clock.exactNow();
    return [...this.#sessions.keys()].map((s) => ({
      id: s.id,
      route: this.name,
      protocol: this.config.protocol,
      client: formatHostPort(s.down.remoteAddress, s.down.remotePort),
      upstream: formatHostPort(s.up.remoteAddress, s.up.remotePort),
      ageSeconds: (now - s.startedAt) / 1000,
      idleSeconds: (now - s.lastPayloadAt) / 1000,
      bytesUpstream: s.bytesUp,
      bytesDownstream: s.bytesDown,
      reused: s.reused,
      socketOptions: { client: readSocketOptions(s.down.tcp), upstream: readSocketOptions(s.up.tcp) },
      tcpInfo: { client: readTcpInfo(s.down.tcp), upstream: readTcpInfo(s.up.tcp) },
      tls: { client: s.down.tls, upstream: s.up.tls },
    }));
  }

  protected tick(now: number): void {
    this.#learner?.tick(now);
    for (const session of this.#sessions.keys()) session.tick(now);
    this.#kernelWatch.tick(now, this.#sessions.keys());
    this.#upstream.tick(now);
  }

  protected accept(down: net.Socket): void {
    this.#accept(down);
  }

  #accept(down: Client): void {
    if (!this.admit(down)) return;
    const config = this.config;
    this.metrics.active.inc();
    if (down instanceof RawTcp) {
      // Not read until its session starts, so nothing can happen to it meanwhile but our own abort.
      const attempt = this.#upstream.lease(true);
      let abortedFor: EvictionReason | null = null;
      this.#pending.set(down, (reason) => {
        abortedFor = reason;
        attempt.abort();
        down.destroy();
      });
      this.#whenLeased(down, attempt, () => abortedFor, '');
      return;
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
    this.#pending.set(down, (reason) => {
      clientGone ??= reason;
      attempt.abort();
      down.destroy();
    });
    this.#whenLeased(down, attempt, () => clientGone, client, () => {
      down.off('error', onEarlyError);
      down.off('close', onEarlyClose);
    });
  }

  /** The upstream is ready (a session starts) or failed (the client is told at once). */
  #whenLeased(
    down: Client,
    attempt: { readonly done: Promise<Lease | { lease: Lease; client: ClientOpening }> },
    clientGone: () => EvictionReason | null,
    client: string,
    settled: () => void = () => {},
  ): void {
    attempt.done.then(
      (ready) => {
        this.#pending.delete(down);
        settled();
        const { lease, client: opened } = 'lease' in ready ? ready : { lease: ready, client: null };
        const gone = clientGone();
        if (gone || down.destroyed) {
          lease.socket.destroy();
          lease.pool.release(lease); // no session will: pool_active must not keep it
          this.#endBeforeSession(down, gone ?? 'peer_closed', 'downstream');
          return;
        }
        this.#startSession(opened?.socket ?? down, lease, opened ?? { socket: down, early: [] });
      },
      (error: unknown) => {
        this.#pending.delete(down);
        settled();
        // The client left first (its close may race the dial's own failure).
        const refused = error instanceof ProxyError && error.code === 'CLIENT_REFUSED';
        const gone = clientGone();
        if (gone || (error instanceof ProxyError && error.side === 'downstream' && error.code !== 'TLS_FAILED' && !refused)) {
          this.#endBeforeSession(down, gone ?? 'peer_closed', 'downstream');
          return;
        }
        const timeout = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT';
        if (error instanceof ProxyError && error.code === 'TLS_FAILED') {
          // The upstream's failure was logged by the source; the client's own is logged here.
          if (error.side === 'downstream') this.#clientTlsFailures.note({ route: this.name, client, reason: 'tls_error', cause: tlsFailureCause(error.cause ?? error) });
          resetClient(down);
          this.#endBeforeSession(down, 'tls_error', error.side);
          return;
        }
        if (refused) {
          // The client's opening broke PostgreSQL's rules or its deadline: reset, as the server would close it.
          this.#clientRefusals.note({ route: this.name, client, reason: 'error', err: error.message });
          resetClient(down);
          this.#endBeforeSession(down, 'error', 'downstream');
          return;
        }
        // Out of descriptors: the client was taken but cannot be served, as a failed accept.
        const fdLimit = outOfDescriptors(error);
        if (fdLimit) this.metrics.acceptError(fdLimit).inc();
        this.#connectFailures.note({ route: this.name, client: formatHostPort(down.remoteAddress, down.remotePort), err: String((error as Error).message ?? error) });
        // A reset tells the client at once that nothing is behind this connection.
        resetClient(down);
        this.#endBeforeSession(down, timeout ? 'connect_timeout' : 'connect_error', 'upstream');
      },
    );
  }

  #endBeforeSession(down: Client, reason: EvictionReason, side: Side): void {
    const { log } = this.deps;
    const metrics = this.metrics;
    if (!down.destroyed) down.destroy();
    metrics.active.dec();
    metrics.eviction(reason === 'connect_timeout' ? 'connect_error' : reason).inc();
    log.debug({ route: this.name, reason, side }, 'connection closed before the upstream was ready');
    this.checkDrained();
  }

  #startSession(down: Client, lease: Lease, client: OpenedClient): void {
    const config = this.config;
    if (!(down instanceof RawTcp) && down !== tcpOf(down)) this.metrics.tlsHandshake((down as tls.TLSSocket).isSessionReused(), 'client').inc();
    const session = new Session(spliceEnd(down), spliceEnd(lease.socket), this.#events, {
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
      clock: this.deps.clock,
    });
    this.#sessions.set(session, lease);
    session.down.resume();
    session.up.resume();
  }

  #onSessionClosed(session: Session, reason: EvictionReason, side: Side): void {
    const lease = this.#sessions.get(session);
    lease?.pool.release(lease);
    this.#sessions.delete(session);
    this.metrics.active.dec();
    this.#learner?.onEvicted(reason);
    const fields = {
      id: session.id,
      reason,
      side,
      durationMs: this.deps.clock.now() - session.startedAt,
      bytesUpstream: session.bytesUp,
      bytesDownstream: session.bytesDown,
    };
    this.noteEnded(fields, 'connection closed');
    this.checkDrained();
  }
}

/** A client or upstream connection as a splice end. */
function spliceEnd(connection: Client): SpliceEnd {
  return connection instanceof RawTcp ? connection : new SocketEnd(connection);
}

/** RST to a client whose connection cannot be served. */
function resetClient(down: Client): void {
  if (down instanceof RawTcp) {
    down.reset();
    return;
  }
  down.on('error', () => {}); // a late error of a socket being reset is no news
  if (!down.destroyed) resetOrDestroy(down);
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
