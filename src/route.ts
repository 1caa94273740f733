import type { Clock } from './clock.js';
import type { FdBudget } from './fd-budget.js';
import type { RouteConfig } from './config/schema.js';
import type { Logger } from './log.js';
import type { EvictionReason } from './errors.js';
import type { Metrics } from './metrics/registry.js';
import type { SocketOptions } from './net/sockopt.js';
import type { TcpInfo } from './net/tcp-info.js';
import type { TlsSummary } from './net/tls-socket.js';

// The contract between the composition root (app.ts) and each kind of route
// (tcp/route.ts for the TCP family, http/route.ts for http and http-forward).

export interface RouteDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly clock: Clock;
  /** Every address this process listens on (admin and routes): a forward route never dials them. */
  readonly ownListeners: () => ReadonlyArray<{ readonly host: string; readonly port: number }>;
  /** The process's fd budget: route listeners register with it and report each accepted fd. */
  readonly fdBudget?: FdBudget;
  /** The config's stateDir (learned values kept across restarts), or null. */
  readonly stateDir?: string | null;
}

/** One row of the admin /connections listing. */
export interface ConnectionInfo {
  readonly id: string;
  readonly route: string;
  readonly protocol: string;
  readonly client: string;
  readonly upstream: string | null;
  readonly ageSeconds: number;
  readonly idleSeconds: number;
  readonly bytesUpstream: number;
  readonly bytesDownstream: number;
  readonly reused: boolean;
  /** The kernel's view of each socket, read back with getsockopt (null where not available). */
  readonly socketOptions?: { readonly client: SocketOptions | null; readonly upstream: SocketOptions | null };
  /** TCP-family routes: the kernel's TCP_INFO of each socket (RTT, retransmissions, probes; null where not available). */
  readonly tcpInfo?: { readonly client: TcpInfo | null; readonly upstream: TcpInfo | null };
  /** TCP-family routes: the TLS version and cipher of each side (null where that side is plaintext). */
  readonly tls?: { readonly client: TlsSummary | null; readonly upstream: TlsSummary | null };
  /** With workers (src/workers/): the worker slot (1..N) and process serving this connection. */
  readonly worker?: number;
  readonly pid?: number;
}

export interface RouteHandle {
  readonly name: string;
  /** The settings new connections get; live connections keep the ones they started with. */
  readonly config: RouteConfig;
  /** Bind the listener. Rejects with ProxyError('LISTEN_FAILED') when the address cannot be bound. */
  listen(): Promise<void>;
  readonly listening: boolean;
  /** The bound address (useful with port 0). */
  address(): { host: string; port: number } | null;
  /** Take new settings for new connections; the listen address must be unchanged. */
  update(config: RouteConfig): void;
  /** Stop accepting; live connections go on. */
  stopAccepting(): Promise<void>;
  /** Resolves when every live connection has ended, or after deadlineMs when the rest are closed with `reason`. */
  drain(deadlineMs: number, reason: EvictionReason): Promise<void>;
  connections(): ConnectionInfo[];
  readonly activeCount: number;
}

export type RouteFactory = (config: RouteConfig, deps: RouteDeps) => RouteHandle;
