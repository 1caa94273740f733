import type net from 'node:net';
import type { EvictionReason, Side } from '../errors.js';
import type { Logger } from '../log.js';
import type { BurstLog } from '../log-burst.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import { dialUpstream, type DialAttempt, type DialTarget } from '../pool/http-dial.js';
import { countDial, countDialFailure, type HttpPool } from '../pool/http-pool.js';
import { SocketEnd } from '../net/splice-end.js';
import { Session, type SessionEvents } from '../tcp/session.js';
import type { Clock } from '../clock.js';
import { formatHostPort } from '../config/hostport.js';
import type { ClientSession } from './client-session.js';
import type { TunnelHost, TunnelOptions } from './tunnel.js';

// The tunnels of one HTTP route (Upgrade and CONNECT): the TunnelHost that upgrade.ts and
// forward.ts hand a client socket to. Each tunnel is a spliced Session (tcp/session.ts)
// over a fresh dial (never a pooled socket: it will not come back); this object owns the
// set of them, ticks them on the route's clock, and reports their ends and heartbeats
// to the route.

export interface RouteTunnelsOptions {
  readonly route: string;
  readonly log: Logger;
  readonly clock: Clock;
  readonly metrics: RouteMetrics;
  /** The route's folded log of failed upstream connects (shared with its requests). */
  readonly connectFailures: BurstLog;
  /** The route's settings in force: a reload changes them for the next tunnel. */
  readonly current: () => { readonly idleTimeoutMs: number; readonly pool: HttpPool };
  /** requests_total{code} for an Upgrade or CONNECT. */
  readonly answered: (status: number) => void;
  /** A tunnel starts to end, before its sockets close: counted by the route. */
  readonly ending: (reason: EvictionReason) => void;
  /** A tunnel ended (its sockets closed): logged by the route. */
  readonly ended: (session: Session, reason: EvictionReason, side: Side) => void;
  readonly events: Pick<SessionEvents, 'onBytes' | 'onHeartbeat'>;
}

export class RouteTunnels implements TunnelHost {
  readonly route: string;
  readonly log: Logger;
  readonly #options: RouteTunnelsOptions;
  readonly #tunnels = new Set<Session>();
  readonly #events: SessionEvents;

  constructor(options: RouteTunnelsOptions) {
    this.route = options.route;
    this.log = options.log;
    this.#options = options;
    this.#events = {
      onClosing: (_session, reason) => options.ending(reason),
      onClosed: (session, reason, side) => {
        this.#tunnels.delete(session);
        options.ended(session, reason, side);
      },
      onBytes: options.events.onBytes,
      onHeartbeat: options.events.onHeartbeat,
    };
  }

  answered(status: number): void {
    this.#options.answered(status);
  }

  dial(target: DialTarget): DialAttempt {
    const { pool } = this.#options.current();
    const attempt = dialUpstream(target, pool.settings, pool.sessions);
    const { metrics, connectFailures } = this.#options;
    attempt.done.then(
      (dialed) => countDial(metrics, dialed),
      (error: { code?: string; side?: Side }) => {
        if (error.side === 'downstream') return; // aborted because the client left
        countDialFailure(metrics, connectFailures, { route: this.route, upstream: formatHostPort(target) }, error);
      },
    );
    return attempt;
  }

  startTunnel(clientSession: ClientSession, up: net.Socket, options: TunnelOptions): void {
    clientSession.tunnelled();
    const client = clientSession.client;
    const down = clientSession.socket;
    const session = new Session(new SocketEnd(down), new SocketEnd(up), this.#events, {
      id: client.id,
      idleTimeoutMs: this.#options.current().idleTimeoutMs,
      heartbeat: options.heartbeat,
      tracker: options.tracker,
      reused: false,
      earlyData: options.earlyData,
      clock: this.#options.clock,
    });
    client.tunnel = { kind: options.kind, session };
    this.#tunnels.add(session);
    down.resume();
    up.resume();
  }

  tick(now: number): void {
    for (const session of this.#tunnels) session.tick(now);
  }

  /** The drain deadline passed: every tunnel goes down with `reason`. */
  destroyAll(reason: EvictionReason): void {
    for (const session of [...this.#tunnels]) session.destroy(reason);
  }
}
