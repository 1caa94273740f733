import dns from 'node:dns';
import net from 'node:net';
import tls from 'node:tls';
import { ProxyError } from '../errors.js';
import type { HostPort, KeepaliveSide } from '../config/schema.js';
import { markSharedReads, sharedOnread } from './shared-reads.js';
import { applyUserTimeout } from './sockopt.js';
import type { SockoptRefusals } from './sockopt-refusals.js';
import type { Clock } from '../clock.js';
import { formatHostPort } from '../config/hostport.js';
import { MIN_TLS_VERSION, resettableTls, tlsFailureCause, tlsSummary, type TlsSummary } from './tls-socket.js';
import type { TlsSessionCache } from './tls-sessions.js';
import { RawTcp } from './raw-tcp.js';
import { addressesToAttempt, attemptTimeoutMs } from './connect-order.js';

// The one dialer: every upstream connection (TCP routes, warm pools, the HTTP pool,
// tunnels) is opened here. TCP first, with kernel keepalive and TCP_USER_TIMEOUT set on
// the TCP socket as soon as it has an fd; then, when asked, a protocol's plaintext
// prelude (PostgreSQL's SSLRequest) and a TLS handshake on top, with session resumption.
// The connect timeout covers all of it: a server that accepts TCP and then stalls the
// handshake is as unreachable as one that never answers. connectMs includes the
// handshake. The hostname is resolved at every connect, so a DNS change reaches new
// connections at once.

/** libpq's sslmode words without off: what the server's certificate must prove. */
export type TlsVerify = 'none' | 'chain' | 'full';

export interface TlsClientOptions {
  /** SNI and the name verify 'full' checks; defaults to the host when it is a name (an IP is checked against IP SANs). */
  readonly servername?: string;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly verify: TlsVerify;
  readonly alpn?: readonly string[];
}

/**
 * A protocol's plaintext exchange on a fresh TCP connection before the TLS handshake
 * (PostgreSQL's SSLRequest, MySQL's SSL request packet). Contract: resolve when the
 * server waits for a ClientHello, having read no byte past its go-ahead (bytes before
 * the handshake are a man-in-the-middle's, CVE-2021-23222), with the bytes, if any, the
 * client must be given as if the server had sent them (a MySQL greeting); reject with a
 * ProxyError otherwise. The socket is left paused.
 */
export interface StartTls {
  readonly name: string;
  /**
   * The handshake waits for the client: the dial resolves with the TCP socket and the
   * prelude's bytes, and the caller runs secureOver() when it can (MySQL: the SSL request
   * carries the client's own capability flags, which the server takes from it alone).
   */
  readonly deferred?: boolean;
  negotiate(raw: net.Socket): Promise<readonly Buffer[]>;
}

/**
 * Kernel keepalive for the socket, applied through the route's reporter (a refused option
 * is counted and logged), or null: keepalive stays off (discover's canaries must see the
 * path's own idle behaviour); TCP_USER_TIMEOUT is still set when userTimeoutMs > 0.
 */
export type DialKeepalive = { readonly keepalive: KeepaliveSide; readonly sockopt: SockoptRefusals } | { readonly keepalive: null; readonly sockopt?: undefined };

export type DialOptions = DialKeepalive & {
  readonly target: HostPort;
  readonly timeoutMs: number;
  readonly noDelay: boolean;
  /** Measures connectMs (the handshake included). */
  readonly clock: Clock;
  readonly userTimeoutMs: number;
  readonly tls?: TlsClientOptions | null;
  readonly startTls?: StartTls | null;
  readonly sessions?: TlsSessionCache | null;
  /** Whether a FIN from the server leaves our side open (default true: TCP routes pass half-close on). */
  readonly halfOpen?: boolean;
  /**
   * How a plain TCP socket is read: through the process's shared buffer (readInto; the
   * TCP routes), with a caller's `onread` (the HTTP pool's reused buffer), or through
   * 'data' events. A TLS socket is always read through 'data' events.
   */
  readonly reads?: 'shared' | 'events' | net.OnReadOpts;
  /** Resolves the name for this dial (a forward route's guard judges the addresses); dns.lookup when absent. */
  readonly lookup?: net.LookupFunction;
};

export interface DialResult<S = net.Socket> {
  /** The socket to talk on: TLS when asked for, else the TCP one. */
  readonly socket: S;
  /** The TCP socket underneath (itself for plain TCP). */
  readonly raw: S;
  readonly connectMs: number;
  /** null for plain TCP. */
  readonly tls: TlsSummary | null;
  /** For the client, from the prelude (StartTls). */
  readonly earlyData: readonly Buffer[];
  /** False when the kernel refused a keepalive or TCP_USER_TIMEOUT option (lastSockoptError says which). */
  readonly keepaliveApplied: boolean;
}

/** Aborts a dial in progress (the client went away first). */
export interface DialHandle<S = net.Socket> {
  readonly done: Promise<DialResult<S>>;
  abort(): void;
}

/**
 * Plain TCP as a raw TCP end (net/raw-tcp.ts: no net.Socket), with the same keepalive,
 * user timeout, connect timeout and errors as dial(). A name is resolved at every dial
 * and its addresses tried in Node's order (net/connect-order.ts). The caller checks
 * rawDialPossible() first.
 */
export function dialRaw(options: DialOptions): DialHandle<RawTcp> {
  const { host, port } = options.target;
  /** The attempt in progress, and the timer that moves on to the next address. */
  let attempt: RawTcp | null = null;
  let nextAddressTimer: NodeJS.Timeout | null = null;
  const outcome = new DialOutcome<RawTcp>(
    options,
    () => {
      if (nextAddressTimer) clearTimeout(nextAddressTimer);
      attempt?.destroy();
    },
    () => '',
  );
  const connectTo = (addresses: readonly string[], index: number): void => {
    const last = index === addresses.length - 1;
    const end = (attempt = RawTcp.connect(addresses[index]!, port, (error) => {
      if (nextAddressTimer) clearTimeout(nextAddressTimer);
      nextAddressTimer = null;
      if (outcome.settled) return;
      if (!error) {
        end.setNoDelay(options.noDelay);
        outcome.succeed({ socket: end, raw: end, tls: null, earlyData: [], keepaliveApplied: applyUpstreamKeepalive(end, options) });
      } else if (last) {
        outcome.fail(connectFailed(outcome.where, error));
      } else {
        connectTo(addresses, index + 1);
      }
    }));
    if (last) return;
    nextAddressTimer = setTimeout(() => {
      nextAddressTimer = null;
      if (outcome.settled) return;
      end.destroy();
      connectTo(addresses, index + 1);
    }, attemptTimeoutMs());
  };
  if (net.isIP(host)) {
    connectTo([host], 0);
    return outcome.handle();
  }
  const lookup = options.lookup ?? dns.lookup;
  lookup(host, { all: true, hints: dns.ADDRCONFIG }, (error, found, family) => {
    if (outcome.settled) return;
    if (error) {
      // A resolver hook's own verdict (DESTINATION_REFUSED) reaches the caller as it is.
      outcome.fail(error instanceof ProxyError ? error : connectFailed(outcome.where, error));
      return;
    }
    const ordered = addressesToAttempt(typeof found === 'string' ? [{ address: found, family: family ?? net.isIP(found) }] : found);
    if (ordered.length === 0) outcome.fail(connectFailed(outcome.where, Object.assign(new Error('no usable address'), { code: 'ENOTFOUND' })));
    else connectTo(ordered.map((entry) => entry.address), 0);
  });
  return outcome.handle();
}

/**
 * A dial's one outcome, whichever comes first: success, failure, the connect timeout
 * (a one-shot per dial, cleared on success: it never outlives the handshake) or an abort
 * because the client left. connectMs is measured from its creation.
 */
class DialOutcome<S> {
  readonly where: string;
  readonly done: Promise<DialResult<S>>;
  readonly #started: number;
  readonly #clock: Clock;
  readonly #timer: NodeJS.Timeout | null;
  readonly #cleanUp: () => void;
  #settle: { resolve(r: DialResult<S>): void; reject(e: unknown): void } | null = null;

  /** `cleanUp` destroys what the dial made, on failure; `timeoutDetail` adds to the timeout's message. */
  constructor(options: DialOptions, cleanUp: () => void, timeoutDetail: () => string) {
    this.#started = options.clock.preciseNow();
    this.#clock = options.clock;
    this.#cleanUp = cleanUp;
    this.where = formatHostPort(options.target);
    this.done = new Promise<DialResult<S>>((resolve, reject) => (this.#settle = { resolve, reject }));
    this.#timer =
      options.timeoutMs > 0
        ? setTimeout(() => this.fail(new ProxyError('CONNECT_TIMEOUT', 'upstream', `${this.where} after ${options.timeoutMs} ms${timeoutDetail()}`)), options.timeoutMs)
        : null;
  }

  get settled(): boolean {
    return this.#settle === null;
  }

  succeed(result: Omit<DialResult<S>, 'connectMs'>): void {
    const settle = this.#take();
    settle?.resolve({ ...result, connectMs: this.#clock.preciseNow() - this.#started });
  }

  fail(error: unknown): void {
    const settle = this.#take();
    if (!settle) return;
    this.#cleanUp();
    settle.reject(error);
  }

  handle(): DialHandle<S> {
    return {
      done: this.done,
      abort: () => this.fail(new ProxyError('CONNECT_FAILED', 'downstream', `client went away before ${this.where} connected`)),
    };
  }

  #take(): { resolve(r: DialResult<S>): void; reject(e: unknown): void } | null {
    const settle = this.#settle;
    this.#settle = null;
    if (settle && this.#timer) clearTimeout(this.#timer);
    return settle;
  }
}

/** The route's keepalive and TCP_USER_TIMEOUT on a connected upstream's TCP socket (refusals counted by the reporter). */
function applyUpstreamKeepalive(socket: net.Socket | RawTcp, options: DialOptions): boolean {
  return options.keepalive
    ? options.sockopt.keepalive(socket, 'upstream', options.keepalive, options.userTimeoutMs)
    : options.userTimeoutMs <= 0 || applyUserTimeout(socket, options.userTimeoutMs);
}

function connectFailed(where: string, error: NodeJS.ErrnoException): ProxyError {
  return new ProxyError('CONNECT_FAILED', 'upstream', `${where}: ${error.code ?? error.message}`, { cause: error });
}

/** Whether dialRaw() can make this connection: plain TCP that stays open after the server's FIN. */
export function rawDialPossible(options: Pick<DialOptions, 'tls' | 'startTls' | 'halfOpen'>): boolean {
  return !options.tls && !options.startTls && options.halfOpen !== false;
}

export function dial(options: DialOptions): DialHandle {
  const { target } = options;
  const reads = options.tls ? 'events' : (options.reads ?? 'events');
  const raw = net.connect({
    host: target.host,
    port: target.port,
    noDelay: options.noDelay,
    allowHalfOpen: options.halfOpen ?? true,
    ...(options.lookup ? { lookup: options.lookup } : {}),
    ...(reads === 'shared' ? { onread: sharedOnread } : typeof reads === 'object' ? { onread: reads } : {}),
  });
  if (reads === 'shared') markSharedReads(raw);
  let secure: tls.TLSSocket | null = null;
  let keepaliveApplied = false;
  const outcome = new DialOutcome<net.Socket>(
    options,
    () => {
      secure?.destroy();
      raw.destroy();
    },
    () => (secure ? ' (TLS handshake timeout)' : ''),
  );
  const fail = (error: unknown): void => outcome.fail(error);
  function succeed(socket: net.Socket, earlyData: readonly Buffer[]): void {
    outcome.succeed({ socket, raw, tls: tlsSummary(socket), earlyData, keepaliveApplied });
  }
  function onError(error: NodeJS.ErrnoException): void {
    // The lookup's own verdict (DESTINATION_REFUSED) reaches the caller as it is.
    fail(error instanceof ProxyError ? error : connectFailed(outcome.where, error));
  }
  function handshake(earlyData: readonly Buffer[]): void {
    if (outcome.settled) return;
    const upgrade = secureOver(raw, target, options.tls!, options.sessions, options.halfOpen ?? true);
    secure = upgrade.socket;
    upgrade.ready.then((socket) => succeed(socket, earlyData), fail);
  }

  // The error listeners stay for the socket's life and are no-ops once settled, so an
  // error before the new owner's listeners are on can never go unhandled.
  raw.on('error', onError);
  raw.once('connect', () => {
    // The fd exists only now: keepalive and TCP_USER_TIMEOUT go on the TCP socket, under any TLS.
    keepaliveApplied = applyUpstreamKeepalive(raw, options);
    if (!options.tls) {
      succeed(raw, []);
      return;
    }
    if (!options.startTls) {
      handshake([]);
      return;
    }
    const deferred = options.startTls.deferred === true;
    options.startTls.negotiate(raw).then((earlyData) => (deferred ? succeed(raw, earlyData) : handshake(earlyData)), fail);
  });
  return outcome.handle();
}

export interface TlsUpgrade {
  readonly socket: tls.TLSSocket;
  /** The TLS socket (resettable, see tls-socket.ts) once the handshake is done; a TLS_FAILED ProxyError otherwise. */
  readonly ready: Promise<net.Socket>;
}

/**
 * A TLS handshake on a connected TCP socket (nothing read past the server's go-ahead),
 * resuming a cached session when there is one. No timer: the caller bounds it (the
 * dial's connect timeout, or its own) and destroys the socket on expiry.
 */
export function secureOver(raw: net.Socket, target: HostPort, options: TlsClientOptions, sessions: TlsSessionCache | null | undefined, halfOpen: boolean): TlsUpgrade {
  const servername = options.servername ?? (net.isIP(target.host) ? undefined : target.host);
  const sessionKey = `${target.host}|${target.port}|${servername ?? ''}`;
  // allowHalfOpen reaches the TLSSocket (node's tls.connect passes it on; its types omit it).
  const connectOptions: tls.ConnectionOptions & { allowHalfOpen: boolean } = {
    socket: raw,
    host: target.host,
    servername,
    ca: options.ca,
    cert: options.cert,
    key: options.key,
    minVersion: MIN_TLS_VERSION,
    rejectUnauthorized: options.verify !== 'none',
    // verify-ca: the chain is checked by OpenSSL; the name is not (libpq's meaning).
    ...(options.verify === 'chain' ? { checkServerIdentity: () => undefined } : {}),
    session: sessions?.get(sessionKey),
    allowHalfOpen: halfOpen,
    ...(options.alpn ? { ALPNProtocols: [...options.alpn] } : {}),
  };
  const socket = tls.connect(connectOptions);
  // Tickets keep coming for the life of the connection (TLS 1.3 sends them after the
  // handshake): the listener stays, and the newest ticket is the one offered next.
  if (sessions) socket.on('session', (session: Buffer) => sessions.set(sessionKey, session));
  const ready = new Promise<net.Socket>((resolve, reject) => {
    // Stays for the socket's life: a later error is a no-op here, never unhandled.
    socket.on('error', (error: NodeJS.ErrnoException) =>
      reject(new ProxyError('TLS_FAILED', 'upstream', `${formatHostPort(target)}: ${tlsFailureCause(error)}`, { cause: error })),
    );
    socket.once('secureConnect', () => resolve(resettableTls(socket, raw)));
  });
  return { socket, ready };
}

