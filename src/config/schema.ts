// The resolved, validated configuration. Every duration is in milliseconds here;
// the YAML strings ("20s") are parsed once in load.ts. Every default lives in
// DEFAULTS below so a reader finds them in one place.

export type Protocol = 'tcp' | 'redis' | 'postgres' | 'mysql' | 'http' | 'http-forward';
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

/** The TCP-family protocols: byte streams spliced between one client and one upstream. */
export const TCP_FAMILY: readonly Protocol[] = ['tcp', 'redis', 'postgres', 'mysql'];
export const HTTP_FAMILY: readonly Protocol[] = ['http', 'http-forward'];

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** Kernel keepalive on one side: probes start after `idleMs` of silence, every `intervalMs`, `count` unanswered = dead. */
export interface KeepaliveSide {
  readonly idleMs: number;
  readonly intervalMs: number;
  readonly count: number;
}

export interface HeartbeatConfig {
  /** The interval in force at start; with `adaptive` the route changes it as it learns. */
  readonly everyMs: number;
  /** `every: auto`: learn the path's idle timeout and heartbeat below it, from min up to max. */
  readonly adaptive?: { readonly minMs: number; readonly maxMs: number };
  readonly timeoutMs: number;
  /** Fraction of `everyMs` by which each probe may move, to spread probes of many connections (0..0.5). */
  readonly jitter: number;
  /** Probe a session inside a transaction block too (restarting the server's idle-in-transaction guard). */
  readonly inTransaction: boolean;
  /** Stop probing a connection whose client has sent nothing for this long; 0 = no limit. */
  readonly maxIdleMs: number;
  /** Custom probe for protocol tcp (send/sendHex resolved to bytes). */
  readonly send?: Buffer;
  /** Custom expected reply for protocol tcp (expect/expectHex resolved to bytes). */
  readonly expect?: Buffer;
}

/** Warm pool for TCP-family routes: pre-dialled, single-use upstream sockets. */
export interface WarmPoolConfig {
  readonly warm: number;
  readonly maxIdleMs: number;
}

/** Persistent upstream pool for HTTP routes. 0 means unlimited / off for each. */
export interface HttpPoolConfig {
  readonly maxSockets: number;
  readonly idleTimeoutMs: number;
  readonly maxAgeMs: number;
  readonly maxRequests: number;
}

/** The files and name of TLS toward an upstream. */
export interface TlsFiles {
  /** PEM contents read at load time (and at every reload); paths in YAML, relative to the config file. */
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly servername?: string;
}

export interface TlsConfig extends TlsFiles {
  readonly rejectUnauthorized: boolean;
}

/** libpq's sslmode words: off, encrypt only, encrypt and verify the chain, chain and name. */
export type UpstreamTlsMode = 'off' | 'require' | 'verify-ca' | 'verify-full';
export const UPSTREAM_TLS_MODES: readonly UpstreamTlsMode[] = ['off', 'require', 'verify-ca', 'verify-full'];

/** TLS from a TCP-family route to its upstream (upstreamTls); absent or mode off = null. */
export interface UpstreamTlsConfig extends TlsFiles {
  readonly mode: Exclude<UpstreamTlsMode, 'off'>;
}

/** TLS terminated from a TCP-family route's clients (clientTls): the proxy's certificate and key. */
export interface ClientTlsConfig {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface HttpOptions {
  /** Add X-Forwarded-For/-Proto/-Host. */
  readonly xForwarded: boolean;
  /** Client-side keep-alive: close an idle client connection after this long (0 = never). */
  readonly clientIdleTimeoutMs: number;
  /** Client-side keep-alive: close a client connection after this many requests (0 = unlimited). */
  readonly clientMaxRequests: number;
  /** Largest request head accepted, bytes (431 past it). */
  readonly maxHeaderSize: number;
  /** Time allowed to receive a whole request head (slowloris guard). */
  readonly headersTimeoutMs: number;
  /** Longest pause between request body bytes (408 past it; 0 = none), as nginx's client_body_timeout. */
  readonly bodyTimeoutMs: number;
  /** Time allowed for the upstream's response head (504 past it; 0 = none). */
  readonly responseTimeoutMs: number;
  /** Retry a request that failed on a reused connection before any response byte. */
  readonly retry: boolean;
}

export interface RouteConfig {
  readonly name: string;
  readonly protocol: Protocol;
  readonly listen: HostPort;
  /** host:port for TCP-family routes and CONNECT; for http routes the parsed origin. */
  readonly upstream: HostPort | null;
  /** For http routes: the upstream URL as written (http:// or https://). */
  readonly upstreamUrl: URL | null;
  readonly keepalive: { readonly client: KeepaliveSide; readonly upstream: KeepaliveSide };
  /** TCP_USER_TIMEOUT on upstream sockets; 0 = kernel default. */
  readonly userTimeoutMs: number;
  readonly connectTimeoutMs: number;
  /** Close a proxied pair after this long with no bytes either way; 0 = never. */
  readonly idleTimeoutMs: number;
  /** Per-route cap on concurrent client connections; 0 = unlimited. */
  readonly maxConnections: number;
  readonly noDelay: boolean;
  readonly heartbeat: HeartbeatConfig | null;
  /** TCP family: close both sides when a reply has been owed this long with no byte from the server; 0 = never. */
  readonly responseTimeoutMs: number;
  readonly warmPool: WarmPoolConfig | null;
  readonly httpPool: HttpPoolConfig;
  readonly tls: TlsConfig | null;
  /** TCP-family routes: TLS to the upstream (null = plaintext). */
  readonly upstreamTls: UpstreamTlsConfig | null;
  /** TCP-family routes: TLS terminated from clients (null = plaintext). */
  readonly clientTls: ClientTlsConfig | null;
  readonly http: HttpOptions;
  /** http-forward: destination host:port patterns allowed ("*.example.com:443", "10.0.0.1:*"). */
  readonly allow: readonly string[];
  /** The declared middlebox between proxy and upstream (`middlebox:` preset or duration), or null. */
  readonly middlebox: { readonly name: string; readonly idleTimeoutMs: number } | null;
}

export interface ProxyConfig {
  /** The file this came from, or null for a flags-only run. */
  readonly source: string | null;
  readonly admin: { readonly listen: HostPort | null };
  readonly log: { readonly level: LogLevel };
  readonly shutdownTimeoutMs: number;
  /** Processes that serve the routes: 1 = this process alone; more = a primary and this many workers (README "Workers"). */
  readonly workers: number;
  /** Where learned values (adaptive heartbeats) are kept across restarts; null: not kept. */
  readonly stateDir: string | null;
  readonly routes: readonly RouteConfig[];
}

/** The most worker processes `workers:` takes (and `auto` gives): each is a whole Node process. */
export const MAX_WORKERS = 64;

/** Every default, in the units of the resolved config. */
export const DEFAULTS = {
  adminListen: { host: '127.0.0.1', port: 9901 } as HostPort,
  logLevel: 'info' as LogLevel,
  shutdownTimeoutMs: 30_000,
  workers: 1,
  protocol: 'tcp' as Protocol,
  keepaliveClient: { idleMs: 60_000, intervalMs: 10_000, count: 6 } as KeepaliveSide,
  keepaliveUpstream: { idleMs: 30_000, intervalMs: 5_000, count: 3 } as KeepaliveSide,
  userTimeoutMs: 30_000,
  connectTimeoutMs: 5_000,
  idleTimeoutMs: 0,
  maxConnections: 0,
  noDelay: true,
  heartbeatJitter: 0.1,
  /** `every: auto` bounds when not written. */
  adaptiveHeartbeat: { minMs: 5_000, maxMs: 600_000 },
  /** The heartbeat reply timeout a declared middlebox's default heartbeat gets. */
  middleboxHeartbeatTimeoutMs: 5_000,
  heartbeatInTransaction: false,
  heartbeatMaxIdleMs: 0,
  // Off where a long reply is normal: a raw stream may be server-push or upload-only, and
  // SQL queries run as long as they need. Redis runs commands one at a time, so a reply
  // owed for 60 s (blocking commands aside) means every client of that server is stuck.
  responseTimeoutMs: { tcp: 0, redis: 60_000, postgres: 0, mysql: 0 } as Readonly<Partial<Record<Protocol, number>>>,
  warmPool: { warm: 0, maxIdleMs: 300_000 } as WarmPoolConfig,
  httpPool: { maxSockets: 32, idleTimeoutMs: 50_000, maxAgeMs: 600_000, maxRequests: 1000 } as HttpPoolConfig,
  http: {
    xForwarded: true,
    clientIdleTimeoutMs: 5_000,
    clientMaxRequests: 0,
    maxHeaderSize: 16_384,
    headersTimeoutMs: 10_000,
    bodyTimeoutMs: 60_000,
    responseTimeoutMs: 60_000,
    retry: true,
  } as HttpOptions,
} as const;
