import type net from 'node:net';
import type tls from 'node:tls';
import { ProxyError } from '../errors.js';
import { readInto } from '../net/shared-reads.js';
import { MysqlAuthShift } from '../protocols/mysql-auth-shift.js';
import { asksForTls, classifyFirstPacket, offerTls, packetLength, SSL_REQUEST_LENGTH, sslRequestFrom } from '../protocols/negotiate-mysql.js';
import { acceptClientTls, MAX_OPENING_MS, type ClientOpening } from './client-opening.js';
import type { Lease, LeaseAttempt } from '../pool/warm.js';

// The start of a MySQL connection on a route with upstreamTls (and maybe clientTls),
// before the session. The server's greeting (read whole by the dial) must reach the
// client first, so this runs after the lease:
//   1. the greeting goes to the client offering TLS when clientTls is set, hiding it otherwise;
//   2. the start of the client's first packet is read: an SSL request or its response;
//   3. the client's SSL request (clientTls): the client's TLS is terminated here and the
//      same request goes to the server, which handshakes too: both sides count it, so
//      sequence ids match and nothing is rewritten;
//   4. a response in plaintext: an SSL request made from its first 32 bytes goes to the
//      server, which handshakes; the response follows through the session, its ids
//      shifted up by one (MysqlAuthShift) until authentication ends.
// The session starts with the client's bytes read so far, which go upstream first.

export interface MysqlReady {
  readonly lease: Lease;
  readonly client: ClientOpening;
}

export function openMysql(down: net.Socket, attempt: LeaseAttempt, context: tls.SecureContext | null, handshakeTimeoutMs: number): { done: Promise<MysqlReady>; abort(): void } {
  let abandoned: (() => void) | null = null;
  let aborted = false;
  const abort = (): void => {
    aborted = true;
    attempt.abort();
    abandoned?.();
  };
  const done = attempt.done.then(async (lease) => {
    // From here the lease is this opening's to give back if anything fails.
    let upstream = lease.socket;
    try {
      if (aborted) throw new ProxyError('CONNECT_FAILED', 'downstream', 'client left');
      const greeting = lease.earlyData.length === 1 ? lease.earlyData[0]! : Buffer.concat(lease.earlyData);
      const secure = lease.secure;
      if (!secure) throw new ProxyError('TLS_FAILED', 'upstream', 'the upstream connection was made without TLS');
      // The dial read one whole greeting; bytes after it while parked are not the server's to send.
      if (packetLength(greeting) !== greeting.length) {
        throw new ProxyError('TLS_FAILED', 'upstream', 'the server sent bytes after its greeting before the client answered (refused: possible injection)');
      }
      down.write(offerTls(greeting, context !== null));
      const first = await readFirstPacket(down, (cancel) => (abandoned = cancel));
      const kind = classifyFirstPacket(first);
      let client: ClientOpening;
      if (kind === 'ssl-request' && context) {
        // The server never answers an SSL request: the client's ClientHello follows at
        // once and may have come in the same read. It goes back to the socket, where the
        // TLS layer built on it reads it first.
        const request = first.subarray(0, SSL_REQUEST_LENGTH);
        if (first.length > SSL_REQUEST_LENGTH) down.unshift(first.subarray(SSL_REQUEST_LENGTH));
        const tlsClient = acceptClientTls(down, context, handshakeTimeoutMs);
        abandoned = () => tlsClient.abort();
        const secured = secure(request).then((socket) => (upstream = socket));
        secured.catch(() => tlsClient.abort());
        const [opened] = await Promise.all([tlsClient.done, secured]);
        client = { socket: opened.socket, early: [] };
      } else if (asksForTls(first)) {
        throw new ProxyError('TLS_FAILED', 'downstream', 'the client asked for TLS, which this route does not offer (no clientTls)');
      } else {
        if (kind === 'short-response') throw new ProxyError('TLS_FAILED', 'downstream', 'a pre-4.1 handshake response cannot go over TLS');
        upstream = await secure(sslRequestFrom(first));
        client = { socket: down, early: [first], rewriter: new MysqlAuthShift() };
      }
      if (aborted) throw new ProxyError('CONNECT_FAILED', 'downstream', 'client left');
      return { lease: { ...lease, socket: upstream, earlyData: [] }, client };
    } catch (error) {
      upstream.destroy();
      if (upstream !== lease.socket) lease.socket.destroy();
      lease.pool.release(lease);
      throw error;
    }
  });
  return { done, abort };
}

/**
 * The client's bytes up to where its first packet says what it is (HEADER + 32 bytes, or
 * a shorter packet whole), read through the route's reader; the socket is left paused.
 */
function readFirstPacket(down: net.Socket, onCancel: (cancel: () => void) => void): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let held: Buffer = Buffer.alloc(0);
    const finish = (error: ProxyError | null): void => {
      clearTimeout(timer);
      readInto(down, null);
      down.pause();
      if (error) reject(error);
      else resolve(held);
    };
    const timer = setTimeout(() => finish(new ProxyError('TLS_FAILED', 'downstream', 'the client did not answer the greeting')), MAX_OPENING_MS);
    onCancel(() => finish(new ProxyError('CONNECT_FAILED', 'downstream', 'client left')));
    readInto(down, (_socket, chunk) => {
      held = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
      if (classifyFirstPacket(held) !== 'more') finish(null);
    });
    down.resume();
  });
}
