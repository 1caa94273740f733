import type net from 'node:net';
import { ProxyError } from '../errors.js';

// The plaintext reply a server gives before a TLS handshake (PostgreSQL's 'S', MySQL's
// greeting), read off a fresh TCP socket through 'data' events. Whatever comes after the
// complete reply and before our ClientHello can only be injected by someone on the path
// (CVE-2021-23222 for libpq): it is refused, never buffered into the TLS stream.

/** Returns the length of the complete reply at the start of `bytes`, or 0 while more is needed. */
export type ReplyLength = (bytes: Buffer) => number;

export function readPreludeReply(raw: net.Socket, what: string, replyLength: ReplyLength, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let held: Buffer = Buffer.alloc(0);
    const finish = (error: ProxyError | null): void => {
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('close', onEnd);
      raw.pause();
      if (error) reject(error);
      else resolve(held);
    };
    const onData = (chunk: Buffer): void => {
      held = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
      const length = replyLength(held);
      if (length === 0) {
        if (held.length > maxBytes) finish(new ProxyError('TLS_FAILED', 'upstream', `${what}: no complete reply in ${maxBytes} bytes`));
        return;
      }
      if (held.length > length) {
        finish(new ProxyError('TLS_FAILED', 'upstream', `${what}: the server sent ${held.length - length} bytes after its reply and before the TLS handshake (refused: possible injection)`));
        return;
      }
      finish(null);
    };
    const onEnd = (): void => finish(new ProxyError('TLS_FAILED', 'upstream', `${what}: the server closed the connection before TLS`));
    raw.on('data', onData);
    raw.once('end', onEnd);
    raw.once('close', onEnd);
  });
}
