// One error class for the proxy's own failures: a code from one table and the side
// that failed, so logs and callers can tell who to blame and whether a retry is safe.

export const ERROR_CODES = {
  CONFIG_INVALID: 'the configuration is invalid',
  LISTEN_FAILED: 'a listener could not bind',
  CONNECT_TIMEOUT: 'the upstream did not accept the connection in time',
  CONNECT_FAILED: 'the upstream refused or could not be reached',
  TLS_FAILED: 'the TLS handshake failed',
  CLIENT_REFUSED: 'the client broke the protocol before its session began',
  DESTINATION_REFUSED: 'the destination is not one this proxy connects to',
  SOCKOPT_UNSUPPORTED: 'socket options cannot be set on this platform',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;
export type Side = 'downstream' | 'upstream' | 'proxy';

export class ProxyError extends Error {
  readonly code: ErrorCode;
  readonly side: Side;
  constructor(code: ErrorCode, side: Side, detail?: string, options?: { cause?: unknown }) {
    super(detail ? `${ERROR_CODES[code]}: ${detail}` : ERROR_CODES[code], options);
    this.name = 'ProxyError';
    this.code = code;
    this.side = side;
  }
}

/** The HTTP status a client gets when its upstream could not be dialled. */
export function dialFailureStatus(error: unknown): 403 | 502 | 504 {
  if (!(error instanceof ProxyError)) return 502;
  if (error.code === 'DESTINATION_REFUSED') return 403;
  return error.code === 'CONNECT_TIMEOUT' ? 504 : 502;
}

// ---- The eviction vocabulary: why a connection ended ----
// Every word that can reach evictions_total{reason} and the close log line, where it
// applies, and what it means. README's "Eviction reasons" table is checked against this
// table (test/unit/vocabulary.test.ts): add a word here and there, or the test fails.
//
// Where a word applies: `pair` = a proxied TCP pair (tcp-family routes, and HTTP tunnels
// after Upgrade or CONNECT); `spare` = a warm-pool spare parked before any client;
// `pool` = an HTTP route's pooled upstream connection; `client` = an HTTP route's client
// connection. A word both HTTP sides would use carries a client_ prefix on the client
// side, so the two sides never add up in one series.

export type EvictionScope = 'pair' | 'spare' | 'pool' | 'client';

export interface EvictionWord {
  readonly applies: readonly EvictionScope[];
  readonly meaning: string;
}

export const EVICTION_REASONS = {
  idle_timeout: { applies: ['pair', 'pool'], meaning: 'no payload byte within idleTimeout (pairs), or parked longer than pool.idleTimeout' },
  max_age: { applies: ['pool'], meaning: 'the connection is older than pool.maxAge' },
  max_requests: { applies: ['pool'], meaning: 'the connection served pool.maxRequests requests' },
  keepalive_timeout: { applies: ['pair', 'spare', 'pool', 'client'], meaning: 'the kernel declared the peer dead: keepalive probes or TCP_USER_TIMEOUT (ETIMEDOUT, unreachable)' },
  heartbeat_timeout: { applies: ['pair', 'spare'], meaning: 'an application heartbeat went unanswered within heartbeat.timeout' },
  response_timeout: { applies: ['pair', 'pool'], meaning: 'a request was owed its reply (tcp family) or its response head (http) longer than responseTimeout' },
  peer_closed: { applies: ['pair', 'spare', 'pool'], meaning: 'a peer closed its side (FIN) or the socket closed without an error' },
  peer_reset: { applies: ['pair', 'spare', 'pool'], meaning: 'a peer reset the connection (ECONNRESET, EPIPE, ECONNABORTED)' },
  connect_error: { applies: ['pair', 'client'], meaning: 'the upstream refused the connection or did not accept it within connectTimeout' },
  connect_timeout: { applies: ['pair'], meaning: 'the upstream did not accept the connection in time (logged; counted as connect_error)' },
  shutdown: { applies: ['pair', 'spare', 'pool'], meaning: 'the process is draining (SIGTERM), up to shutdownTimeout' },
  route_removed: { applies: ['pair'], meaning: 'a reload removed the route; its connections drained' },
  max_connections: { applies: ['pair', 'client'], meaning: 'the route already had maxConnections clients (refused at accept)' },
  error: { applies: ['pair', 'spare', 'pool'], meaning: 'any other socket error, or an upstream response that cannot be relayed' },
  unexpected_data: { applies: ['spare', 'pool'], meaning: 'a parked connection sent bytes nobody asked for' },
  client_aborted: { applies: ['pool'], meaning: 'the client left mid-exchange, so the upstream connection cannot be reused' },
  replaced: { applies: ['pool'], meaning: 'an idle connection made room for a retry on a fresh one' },
  reload: { applies: ['spare', 'pool'], meaning: 'a SIGHUP reload changed or removed the route and replaced its pool (its idle connections and spares are dropped)' },
  body_timeout: { applies: ['client'], meaning: 'a request body stalled past http.bodyTimeout (408, or a reset once a response started)' },
  client_closed: { applies: ['client'], meaning: 'the client closed it (its FIN), or its last request asked for the close (Connection: close, HTTP/1.0)' },
  client_reset: { applies: ['client'], meaning: 'the client reset it (or its socket failed)' },
  client_idle_timeout: { applies: ['client'], meaning: 'no request within http.clientIdleTimeout' },
  client_max_requests: { applies: ['client'], meaning: 'it served http.clientMaxRequests requests' },
  client_shutdown: { applies: ['client'], meaning: 'drain (SIGTERM, route removed): idle ones at once, busy ones after their response, reset at shutdownTimeout' },
  client_error: { applies: ['client'], meaning: 'the upstream failed mid-response or mid-handshake: the client is reset, so a cut response never looks complete' },
  headers_timeout: { applies: ['client'], meaning: 'no complete request head within http.headersTimeout (408, or silence from the start)' },
  bad_request: { applies: ['client'], meaning: 'a malformed or oversized head (400, 431), an invalid body, a CONNECT on a reverse route (405)' },
  forbidden: { applies: ['client'], meaning: 'CONNECT or Upgrade to a destination outside allow (403)' },
  upgrade_declined: { applies: ['client'], meaning: 'the upstream answered an Upgrade with anything but 101 (its answer relayed, then the close)' },
  response_close: { applies: ['client'], meaning: "the response's end could only be marked by closing (a body without length, chunked to an HTTP/1.0 client, a request body left unread)" },
  tls_error: { applies: ['pair', 'spare'], meaning: "a TLS handshake or certificate verification failed (upstreamTls), or a client's own handshake (clientTls) failed or timed out; one log line names the cause" },
} as const satisfies Record<string, EvictionWord>;

export type EvictionReason = keyof typeof EVICTION_REASONS;

/** The kernel's verdicts that a peer is gone, mapped to eviction reasons. */
export function reasonForError(error: NodeJS.ErrnoException): EvictionReason {
  switch (error.code) {
    case 'ETIMEDOUT': // keepalive probes unanswered, or TCP_USER_TIMEOUT expired
    case 'EHOSTUNREACH': // an ICMP error for a keepalive probe or a retransmission
    case 'ENETUNREACH':
      return 'keepalive_timeout';
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ECONNABORTED':
      return 'peer_reset';
    default:
      return 'error';
  }
}
