import type net from 'node:net';
import type { Clock } from '../clock.js';
import type { KeepaliveSide } from '../config/schema.js';
import { dial } from '../net/dial.js';
import type { SockoptRefusals } from '../net/sockopt-refusals.js';
import { ReadBuffer } from './http-read-buffer.js';
import type { TlsSessionCache } from '../net/tls-sessions.js';

// One upstream connection for the HTTP pool and its tunnels, through the one dialer
// (net/dial.ts: TCP, keepalive on the TCP socket, TLS with SNI, CA, client certificate,
// verification and session resumption for https): this file only maps the pool's
// settings onto it and picks how a plain socket is read.

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
  // TLS reads come from the TLS socket's stream; a plain socket reads into a reused buffer.
  const readBuffer = pooled && !target.tls ? new ReadBuffer() : null;
  const upstreamTls = target.tls;
  const handle = dial({
    target,
    timeoutMs: settings.connectTimeoutMs,
    noDelay: settings.noDelay,
    keepalive: settings.keepalive,
    sockopt: settings.sockopt,
    clock: settings.clock,
    userTimeoutMs: settings.userTimeoutMs,
    // HTTP connections end as a whole: the server's FIN closes ours too.
    halfOpen: false,
    tls: upstreamTls
      ? {
          servername: upstreamTls.servername,
          ca: upstreamTls.ca,
          cert: upstreamTls.cert,
          key: upstreamTls.key,
          verify: upstreamTls.rejectUnauthorized ? 'full' : 'none',
          alpn: ['http/1.1'],
        }
      : null,
    sessions,
    reads: readBuffer ? readBuffer.onread : 'events',
    lookup: target.lookup,
  });
  return {
    done: handle.done.then(({ socket, raw, connectMs, tls }) => ({ socket, raw, connectMs, tlsResumed: tls?.resumed ?? null, readBuffer })),
    abort: handle.abort,
  };
}
