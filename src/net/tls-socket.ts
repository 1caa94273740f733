import type net from 'node:net';
import tls from 'node:tls';
import { shutdownInFlight } from './internals.js';

// What the rest of the proxy needs to know about a TLS socket, on either side: the TCP
// socket underneath (socket options, a reset), what was negotiated (/connections), and
// a failure in words a user can act on (the one log line of a tls_error).

const TCP = Symbol('keepalive-proxy.tcp-under-tls');
type Layered = net.Socket & { [TCP]?: net.Socket };

/** Minimum protocol version on both sides: TLS 1.0 and 1.1 are deprecated (RFC 8996). */
export const MIN_TLS_VERSION: tls.SecureVersion = 'TLSv1.2';

/**
 * A TLS socket cannot be reset (resetAndDestroy needs a TCP handle and throws on a TLS
 * one): an abrupt close of a TLS socket resets the TCP socket underneath instead. The
 * TCP socket is remembered for tcpOf().
 */
export function resettableTls(secure: tls.TLSSocket | net.Socket, raw: net.Socket): net.Socket {
  if (secure === raw) return raw;
  (secure as Layered)[TCP] = raw;
  secure.resetAndDestroy = function resetUnderlying(this: net.Socket): net.Socket {
    // TLS shuts the TCP socket down under it without its writable side knowing: judge by ours.
    if (!raw.destroyed && !raw.connecting && !shutdownInFlight(this)) raw.resetAndDestroy();
    else raw.destroy();
    this.destroy();
    return this;
  };
  return secure;
}

/** The TCP socket carrying `socket` (itself when it is not TLS): where keepalive options live. */
export function tcpOf(socket: net.Socket): net.Socket {
  return (socket as Layered)[TCP] ?? socket;
}

export interface TlsSummary {
  readonly version: string | null;
  readonly cipher: string | null;
  readonly resumed: boolean;
}

/** The negotiated version and cipher of a TLS socket; null for a plain one. */
export function tlsSummary(socket: net.Socket): TlsSummary | null {
  if (!(socket instanceof tls.TLSSocket)) return null;
  return { version: socket.getProtocol(), cipher: socket.getCipher()?.name ?? null, resumed: socket.isSessionReused() };
}

/** OpenSSL's verification codes, grouped into the causes a user can act on. */
const CAUSES: Readonly<Record<string, string>> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unknown CA',
  UNABLE_TO_GET_ISSUER_CERT: 'unknown CA',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unknown CA',
  SELF_SIGNED_CERT_IN_CHAIN: 'unknown CA',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'unknown CA',
  CERT_SIGNATURE_FAILURE: 'unknown CA',
  ERR_TLS_CERT_ALTNAME_INVALID: 'name mismatch',
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not yet valid',
  CERT_REVOKED: 'revoked',
  CERT_REJECTED: 'rejected',
  CERT_UNTRUSTED: 'untrusted',
  INVALID_PURPOSE: 'wrong key usage',
};

/** "unknown CA", "name mismatch", "expired", ... or the library's own words for anything else. */
export function tlsFailureCause(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code && Object.hasOwn(CAUSES, code)) return CAUSES[code]!;
  let message = error instanceof Error ? error.message : String(error);
  // OpenSSL's "...:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:file:line": its reason.
  const openssl = message.match(/SSL routines:[^:]*:([^:]+)/);
  if (openssl) message = openssl[1]!;
  if (/alert (number )?4[0-9]|handshake failure|wrong version|unsupported protocol|no protocols available/i.test(message)) return `handshake refused (${message})`;
  return message;
}
