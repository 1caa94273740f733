import net from 'node:net';
import tls from 'node:tls';
import type { Clock } from '../clock.js';
import type { KeepaliveSide } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import type { SockoptRefusals } from '../net/sockopt-refusals.js';
import { ReadBuffer } from './http-read-buffer.js';
import type { TlsSessionCache } from './http-tls-sessions.js';
import { formatHostPort } from '../config/hostport.js';

// Opens one upstream connection for the HTTP pool: TCP, kernel keepalive and
// TCP_USER_TIMEOUT on the TCP socket, then TLS on top of it when the upstream is https
// (SNI, CA, client certificate, verification, session resumption). The connect timeout
// covers both handshakes: a slow TLS peer is as unreachable as a slow TCP one.

export interface UpstreamTls {
  /** SNI and the name the certificate must carry; defaults to the host when it is a name. */
  readonly servername?: string;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly rejectUnauthorized: boolean;
}

export interface DialTarget {
  readonly host: string;
  readonly port: number;
  readonly tls: UpstreamTls | null;
  /** Resolves a name for this dial (a forward route's guard judges the addresses); dns.lookup when absent. */
  readonly lookup?: net.LookupFunction;
}

export interface DialSettings {
  readonly connectTimeoutMs: number;
  readonly keepalive: KeepaliveSide;
  readonly userTimeoutMs: number;
  readonly noDelay: boolean;
  /** The route's keepalive, with refusals counted and logged. */
  readonly sockopt: SockoptRefusals;
  /** Measures connectMs. */
  readonly clock: Clock;
}

export interface DialedSocket {
  /** The socket HTTP talks on: the TLS socket for https, else the TCP one. */
  readonly socket: net.Socket;
  /** The TCP socket underneath (socket options, a reset on abrupt close). */
  readonly raw: net.Socket;
  readonly connectMs: number;
  /** null for plain TCP. */
  readonly tlsResumed: boolean | null;
  /** Plain TCP: reads land in this reused buffer (no 'data' events); null for TLS. */
  readonly readBuffer: ReadBuffer | null;
}

export interface DialAttempt {
  readonly done: Promise<DialedSocket>;
  /** Gives up (the request went away first); the promise rejects. */
  abort(): void;
}

/**
 * `pooled`: the socket will carry the pool's own HTTP/1.1 exchanges, which read plain-TCP
 * sockets through a reused buffer; a tunnel or node's client needs ordinary 'data' events.
 */
export function dialUpstream(target: DialTarget, settings: DialSettings, sessions: TlsSessionCache | null, pooled = false): DialAttempt {
  const started = settings.clock.preciseNow();
  const where = formatHostPort(target);
  // TLS reads come from the TLS socket's stream; a plain socket reads into a reused buffer.
  const readBuffer = pooled && !target.tls ? new ReadBuffer() : null;
  const raw = net.connect({
    host: target.host,
    port: target.port,
    noDelay: settings.noDelay,
    ...(target.lookup ? { lookup: target.lookup } : {}),
    ...(readBuffer ? { onread: readBuffer.onread } : {}),
  });
  let secure: tls.TLSSocket | null = null;
  let settle: { resolve(d: DialedSocket): void; reject(e: unknown): void } | null = null;
  const done = new Promise<DialedSocket>((resolve, reject) => (settle = { resolve, reject }));
  // One timer per connect attempt, cleared on success: it never outlives the handshake.
  const timer =
    settings.connectTimeoutMs > 0
      ? setTimeout(() => fail(new ProxyError('CONNECT_TIMEOUT', 'upstream', `${where} after ${settings.connectTimeoutMs} ms`)), settings.connectTimeoutMs)
      : null;

  function fail(error: unknown): void {
    if (!settle) return;
    const s = settle;
    settle = null;
    if (timer) clearTimeout(timer);
    secure?.destroy();
    raw.destroy();
    s.reject(error);
  }
  function succeed(socket: net.Socket, tlsResumed: boolean | null): void {
    if (!settle) return;
    const s = settle;
    settle = null;
    if (timer) clearTimeout(timer);
    s.resolve({ socket, raw, connectMs: settings.clock.preciseNow() - started, tlsResumed, readBuffer });
  }
  function onError(error: NodeJS.ErrnoException): void {
    // The lookup's own verdict (DESTINATION_REFUSED) reaches the client as it is.
    if (error instanceof ProxyError) fail(error);
    else fail(new ProxyError('CONNECT_FAILED', 'upstream', `${where}: ${error.code ?? error.message}`, { cause: error }));
  }

  // These listeners stay for the socket's life and turn into no-ops once settled, so an
  // error between here and the pool's own listeners can never go unhandled.
  raw.on('error', onError);
  raw.once('connect', () => {
    // The fd exists only now; every pooled socket gets the route's upstream keepalive.
    settings.sockopt.keepalive(raw, 'upstream', settings.keepalive, settings.userTimeoutMs);
    if (!target.tls) {
      succeed(raw, null);
      return;
    }
    const options = target.tls;
    const servername = options.servername ?? (net.isIP(target.host) ? undefined : target.host);
    const sessionKey = `${target.host}|${target.port}|${servername ?? ''}`;
    secure = tls.connect({
      socket: raw,
      host: target.host,
      servername,
      ca: options.ca,
      cert: options.cert,
      key: options.key,
      rejectUnauthorized: options.rejectUnauthorized,
      session: sessions?.get(sessionKey),
      ALPNProtocols: ['http/1.1'],
    });
    const socket = secure;
    // Tickets keep coming for the life of the connection (TLS 1.3 sends them after the
    // handshake): the listener stays, and the newest ticket is the one offered next.
    if (sessions) socket.on('session', (session: Buffer) => sessions.set(sessionKey, session));
    socket.on('error', onError);
    socket.once('secureConnect', () => succeed(socket, socket.isSessionReused()));
  });

  return {
    done,
    abort: () => fail(new ProxyError('CONNECT_FAILED', 'downstream', `request went away before ${where} connected`)),
  };
}
