import type net from 'node:net';
import { forgetReadableError } from './internals.js';

// A peer's last bytes before a reset are read before its socket goes.
//
// A server that answers an error and then resets (Redis's "too big inline request" with
// input unread, MySQL's "packet too large", a PostgreSQL FATAL during a large write)
// has put that answer in our receive queue before the RST; Linux hands it to read()
// first and reports the reset after it. But Node destroys a socket as soon as one
// write to it fails, which closes the fd with those bytes unread: whenever our write
// (the client still streaming) comes before the read, the client never sees the error.
//
// Here a failed write does not destroy the socket: its owner is told (and stops
// writing to it), reads go on until one reports the end (EOF: 'end'; the reset: 'error'
// then 'close'), and the owner closes the socket then, or at its own deadline. Every
// other destroy goes through untouched.

export type WriteFailedHandler = (socket: net.Socket, error: NodeJS.ErrnoException) => void;

const ON_WRITE_FAILED = Symbol('keepalive-proxy.on-write-failed');
type WatchedSocket = net.Socket & { [ON_WRITE_FAILED]?: WriteFailedHandler };

/** From now on a failed write on `socket` calls `onWriteFailed` instead of destroying it. */
export function readOnAfterWriteError(socket: net.Socket, onWriteFailed: WriteFailedHandler): void {
  (socket as WatchedSocket)[ON_WRITE_FAILED] = onWriteFailed;
  socket.destroy = destroyUnlessWriteFailed;
}

function destroyUnlessWriteFailed(this: WatchedSocket, error?: Error, callback?: (error: Error | null) => void): net.Socket {
  const onWriteFailed = this[ON_WRITE_FAILED];
  const errno = error as NodeJS.ErrnoException | undefined;
  if (onWriteFailed && errno?.syscall === 'write' && !this.destroyed) {
    this[ON_WRITE_FAILED] = undefined; // once: the next failure (or any destroy) is node's
    // Node marked the readable side errored too, which would swallow the 'end' of an EOF.
    forgetReadableError(this);
    onWriteFailed(this, errno);
    return this;
  }
  return Object.getPrototypeOf(this).destroy.call(this, error, callback) as net.Socket;
}
