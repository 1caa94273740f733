import net from 'node:net';
import { listen0 } from './net.js';
import { once } from './wait.js';

// Connected TCP socket pairs over loopback, for unit tests of the code that owns one end
// (a session, a pool). Both ends allow half-open, as the proxy's own sockets do. The
// listener is closed once the pair is made; the returned close() destroys both ends.

export interface SocketPair {
  /** The end that connected. */
  readonly near: net.Socket;
  /** The end the listener accepted. */
  readonly far: net.Socket;
  close(): void;
}

export async function socketPair(): Promise<SocketPair> {
  let accepted: ((socket: net.Socket) => void) | null = null;
  const arrived = new Promise<net.Socket>((resolve) => (accepted = resolve));
  const listener = await listen0((socket) => accepted!(socket));
  const near = net.connect({ port: listener.port, host: '127.0.0.1', allowHalfOpen: true });
  near.on('error', () => {});
  await once(near, 'connect', 5_000);
  let timer: NodeJS.Timeout | undefined;
  const far = await Promise.race([arrived, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('no accept within 5 s')), 5_000)))]);
  clearTimeout(timer);
  // Stop listening now; its callback would wait for `far` to close, and listen0's close()
  // would destroy it.
  listener.server.close();
  return {
    near,
    far,
    close: () => {
      near.destroy();
      far.destroy();
    },
  };
}

/** Collects what a socket receives, and whether it saw FIN or an error. */
export class Received {
  readonly chunks: Buffer[] = [];
  ended = false;
  error: NodeJS.ErrnoException | null = null;
  closed = false;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.chunks.push(chunk));
    socket.on('end', () => (this.ended = true));
    socket.on('error', (error: NodeJS.ErrnoException) => (this.error = error));
    socket.on('close', () => (this.closed = true));
  }

  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  get length(): number {
    let total = 0;
    for (const chunk of this.chunks) total += chunk.length;
    return total;
  }

  text(): string {
    return this.bytes.toString('latin1');
  }
}
