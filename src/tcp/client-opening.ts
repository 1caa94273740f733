import type net from 'node:net';
import tls from 'node:tls';
import type { RouteConfig } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import { resetOrDestroy } from '../net/internals.js';
import { readInto } from '../net/shared-reads.js';
import { MIN_TLS_VERSION, resettableTls, tlsFailureCause } from '../net/tls-socket.js';
import { ACCEPT_TLS, classifyOpening, MAX_STARTUP_LENGTH, NEGOTIATION_REQUEST_LENGTH, REFUSE_ENCRYPTION } from '../protocols/negotiate-postgres.js';
import type { StreamRewriter } from '../protocols/mysql-auth-shift.js';
import type { Lease, LeaseAttempt } from '../pool/warm.js';

// The start of a client connection on a route that handles TLS itself (upstreamTls or
// clientTls), before the session: PostgreSQL's SSLRequest / GSSENCRequest answered by
// the proxy ('S' and a TLS handshake with clientTls, else 'N'), or for the other
// protocols a TLS handshake from the first byte (clientTls). It runs while the upstream
// connection is being made, and ends with the socket the session reads (TLS or not)
// and the client bytes already read (the startup message), which go upstream first.

export interface ClientOpening {
  readonly socket: net.Socket;
  readonly early: readonly Buffer[];
  /** What the session rewrites in flight because of what the opening did (MySQL sequence ids). */
  readonly rewriter?: StreamRewriter | null;
}

export interface OpeningAttempt {
  readonly done: Promise<ClientOpening>;
  abort(): void;
}

/**
 * The most a client's whole opening (first bytes, SSLRequest, TLS handshake) may take,
 * whatever connectTimeout says (Envoy's listener_filters_timeout default): a client that
 * sends nothing or stalls its handshake holds an upstream connection meanwhile.
 */
export const MAX_OPENING_MS = 15_000;

/** One deadline for the opening: the route's connectTimeout, never off and never over MAX_OPENING_MS. */
export function openingTimeoutMs(config: RouteConfig): number {
  return config.connectTimeoutMs > 0 ? Math.min(config.connectTimeoutMs, MAX_OPENING_MS) : MAX_OPENING_MS;
}

/** The server-side TLS of a route, built once per config (a SecureContext parses the PEM files). */
export function clientSecureContext(config: RouteConfig): tls.SecureContext | null {
  if (!config.clientTls) return null;
  return tls.createSecureContext({ cert: config.clientTls.cert, key: config.clientTls.key, minVersion: MIN_TLS_VERSION });
}

/** null when the route passes the client's first bytes through untouched (no TLS handling). */
export function openClient(down: net.Socket, config: RouteConfig, context: tls.SecureContext | null): OpeningAttempt | null {
  if (config.protocol === 'postgres' && (config.upstreamTls || context)) return new Opening(down, context, openingTimeoutMs(config));
  if (context) return new Opening(down, context, openingTimeoutMs(config), true);
  return null;
}

/** A server-side TLS handshake on the client socket, now (MySQL after the client's SSL request). */
export function acceptClientTls(down: net.Socket, context: tls.SecureContext, handshakeTimeoutMs: number): OpeningAttempt {
  return new Opening(down, context, handshakeTimeoutMs, true);
}

/**
 * Reads the client's first bytes (PostgreSQL) or goes straight to TLS (`tlsAtOnce`).
 * One timer for the whole opening, armed once: trickling bytes never extends it. As
 * PostgreSQL does, a client gets one answer to SSLRequest and one to GSSENCRequest; a
 * repeat is refused (each answer is a write the client need not read).
 */
class Opening implements OpeningAttempt {
  readonly done: Promise<ClientOpening>;
  readonly #down: net.Socket;
  readonly #context: tls.SecureContext | null;
  #answered = { ssl: false, gssenc: false };
  #held: Buffer = Buffer.alloc(0);
  #timer: NodeJS.Timeout | null = null;
  #secure: tls.TLSSocket | null = null;
  #settle: { resolve(o: ClientOpening): void; reject(e: unknown): void } | null = null;

  constructor(down: net.Socket, context: tls.SecureContext | null, timeoutMs: number, tlsAtOnce = false) {
    this.#down = down;
    this.#context = context;
    this.done = new Promise((resolve, reject) => (this.#settle = { resolve, reject }));
    this.#timer = setTimeout(this.#timedOut, timeoutMs, timeoutMs);
    if (tlsAtOnce) {
      this.#handshake();
      return;
    }
    readInto(down, this.#onData);
    down.resume();
  }

  abort(): void {
    this.#fail(null);
  }

  readonly #onData = (_socket: net.Socket, chunk: Buffer): void => {
    this.#held = this.#held.length === 0 ? chunk : Buffer.concat([this.#held, chunk]);
    for (;;) {
      const opening = classifyOpening(this.#held);
      if (opening === 'more') return;
      if (opening === 'invalid') {
        this.#fail(new ProxyError('CLIENT_REFUSED', 'downstream', `invalid startup packet length ${this.#held.readUInt32BE(0)} (PostgreSQL accepts 8 to ${MAX_STARTUP_LENGTH})`));
        return;
      }
      if (opening === 'other') {
        // A StartupMessage or CancelRequest: from here on the session carries the bytes.
        this.#stopReading();
        this.#succeed(this.#down, [this.#held]);
        return;
      }
      const request = opening === 'ssl-request' ? 'ssl' : 'gssenc';
      if (this.#answered[request]) {
        this.#fail(new ProxyError('CLIENT_REFUSED', 'downstream', `a second ${opening === 'ssl-request' ? 'SSLRequest' : 'GSSENCRequest'}`));
        return;
      }
      this.#answered[request] = true;
      const rest = this.#held.subarray(NEGOTIATION_REQUEST_LENGTH);
      if (opening === 'ssl-request' && this.#context) {
        // Bytes after SSLRequest and before our 'S' would end up treated as TLS-protected
        // (CVE-2021-23214's class on the server side): refused.
        if (rest.length > 0) {
          this.#fail(new ProxyError('TLS_FAILED', 'downstream', 'the client sent bytes after SSLRequest before the answer'));
          return;
        }
        this.#stopReading();
        this.#down.write(ACCEPT_TLS);
        this.#handshake();
        return;
      }
      // GSSAPI encryption is never offered; TLS is refused without clientTls: the client
      // goes on in plaintext on this (local) connection.
      this.#down.write(REFUSE_ENCRYPTION);
      this.#held = rest;
      if (rest.length === 0) return;
    }
  };

  #handshake(): void {
    const secure = new tls.TLSSocket(this.#down, { isServer: true, secureContext: this.#context!, allowHalfOpen: true } as tls.TLSSocketOptions);
    this.#secure = secure;
    secure.on('error', (error: Error) => this.#fail(new ProxyError('TLS_FAILED', 'downstream', tlsFailureCause(error), { cause: error })));
    secure.once('secure', () => this.#succeed(resettableTls(secure, this.#down), []));
  }

  #stopReading(): void {
    readInto(this.#down, null);
    this.#down.pause();
  }

  readonly #timedOut = (ms: number): void => {
    // Past the deadline in the handshake: a TLS failure ("handshake timeout"); before it, the client sent too little.
    if (this.#secure) this.#fail(new ProxyError('TLS_FAILED', 'downstream', `no TLS handshake within ${ms} ms`, { cause: new Error('handshake timeout') }));
    else this.#fail(new ProxyError('CLIENT_REFUSED', 'downstream', `no complete opening within ${ms} ms (${this.#held.length} bytes)`));
  };

  #succeed(socket: net.Socket, early: readonly Buffer[]): void {
    const settle = this.#settle;
    if (!settle) return;
    this.#settle = null;
    if (this.#timer) clearTimeout(this.#timer);
    settle.resolve({ socket, early: early[0]?.length === 0 ? [] : early });
  }

  /** `null`: abandoned by the route (the upstream failed first); it closes the socket. */
  #fail(error: ProxyError | null): void {
    const settle = this.#settle;
    if (!settle) return;
    this.#settle = null;
    if (this.#timer) clearTimeout(this.#timer);
    if (!this.#down.destroyed) {
      readInto(this.#down, null);
      // A failed client handshake is reset at once (before a failing TLS socket's own
      // destroy can end the TCP socket with a FIN that a half-open client would sit on);
      // the route then counts and logs it as tls_error.
      if (error) resetOrDestroy(this.#down);
    }
    this.#secure?.destroy();
    settle.reject(error ?? new ProxyError('CONNECT_FAILED', 'upstream', 'abandoned'));
  }
}

/**
 * The lease and the client's opening, both needed before a session starts: a failure of
 * either abandons the other, and a lease that arrived for a client that failed is given
 * back (its socket closed, its pool slot released).
 */
export function joinOpening(attempt: LeaseAttempt, opening: OpeningAttempt): { done: Promise<{ lease: Lease; client: ClientOpening }>; abort(): void } {
  const abort = (): void => {
    attempt.abort();
    opening.abort();
  };
  opening.done.catch(() => attempt.abort());
  attempt.done.catch(() => opening.abort());
  const done = Promise.all([attempt.done, opening.done]).then(
    ([lease, client]) => ({ lease, client }),
    async (error: unknown) => {
      const lease = await attempt.done.catch(() => null);
      if (lease) {
        lease.socket.destroy();
        lease.pool.release(lease);
      }
      throw error;
    },
  );
  return { done, abort };
}
