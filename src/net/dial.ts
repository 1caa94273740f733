import net from 'node:net';
import type { Clock } from '../clock.js';
import { ProxyError } from '../errors.js';
import type { HostPort } from '../config/schema.js';
import { markSharedReads, sharedOnread } from './shared-reads.js';
import { formatHostPort } from '../config/hostport.js';

// Opens an upstream TCP connection. The hostname is resolved at every connect (no
// caching here), so a DNS change reaches new connections at once. Its reads go through
// the process's shared read buffer: readInto() says who gets them.

export interface DialResult {
  readonly socket: net.Socket;
  readonly connectMs: number;
}

export interface DialOptions {
  readonly target: HostPort;
  readonly timeoutMs: number;
  readonly noDelay: boolean;
  /** Measures connectMs. */
  readonly clock: Clock;
}

/** Aborts a dial in progress (the client went away first). */
export interface DialHandle {
  readonly done: Promise<DialResult>;
  abort(): void;
}

export function dial(options: DialOptions): DialHandle {
  const started = options.clock.preciseNow();
  const socket = net.connect({
    host: options.target.host,
    port: options.target.port,
    noDelay: options.noDelay,
    allowHalfOpen: true,
    onread: sharedOnread,
  });
  markSharedReads(socket);
  let settle: { resolve(r: DialResult): void; reject(e: unknown): void } | null = null;
  // A connect timeout is a one-shot per dial; Node's timer lists make it cheap and it
  // is cleared on success, so it costs nothing for the life of the connection.
  const timer =
    options.timeoutMs > 0
      ? setTimeout(() => fail(new ProxyError('CONNECT_TIMEOUT', 'upstream', `${formatHostPort(options.target)} after ${options.timeoutMs} ms`)), options.timeoutMs)
      : null;
  const done = new Promise<DialResult>((resolve, reject) => {
    settle = { resolve, reject };
  });
  function cleanup(): void {
    if (timer) clearTimeout(timer);
    socket.off('connect', onConnect);
    socket.off('error', onError);
  }
  function fail(error: unknown): void {
    if (!settle) return;
    const s = settle;
    settle = null;
    cleanup();
    socket.destroy();
    s.reject(error);
  }
  function onConnect(): void {
    if (!settle) return;
    const s = settle;
    settle = null;
    cleanup();
    s.resolve({ socket, connectMs: options.clock.preciseNow() - started });
  }
  function onError(error: NodeJS.ErrnoException): void {
    fail(new ProxyError('CONNECT_FAILED', 'upstream', `${formatHostPort(options.target)}: ${error.code ?? error.message}`, { cause: error }));
  }
  socket.once('connect', onConnect);
  socket.once('error', onError);
  return {
    done,
    abort: () => fail(new ProxyError('CONNECT_FAILED', 'downstream', 'client closed before the upstream connected')),
  };
}
