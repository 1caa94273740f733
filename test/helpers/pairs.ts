import net from 'node:net';
import { listen0 } from './net.js';
import { once } from './wait.js';
import { acceptRawOrSocket } from '../../src/net/accept.js';
import { RawTcp } from '../../src/net/raw-tcp.js';

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

/** A pair whose `near` end is the test's socket and whose `far` end is a raw TCP end the listener accepted. */
export async function acceptedRawPair(): Promise<{ near: net.Socket; far: RawTcp; close(): void }> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  let accepted: ((end: RawTcp) => void) | null = null;
  const arrived = new Promise<RawTcp>((resolve) => (accepted = resolve));
  if (!acceptRawOrSocket(server, () => true, {}, (end) => accepted!(end), (socket) => socket.destroy())) throw new Error('raw accepts not possible on this Node');
  const near = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  near.on('error', () => {});
  await once(near, 'connect', 5_000);
  const far = await withinFiveSeconds(arrived, 'no accept');
  server.close();
  return { near, far, close: () => (near.destroy(), far.destroy()) };
}

/** A pair whose `near` end is a raw TCP end dialled to a listener, and whose `far` end is the socket it accepted. */
export async function dialledRawPair(): Promise<{ near: RawTcp; far: net.Socket; close(): void }> {
  let accepted: ((socket: net.Socket) => void) | null = null;
  const arrived = new Promise<net.Socket>((resolve) => (accepted = resolve));
  const listener = await listen0((socket) => accepted!(socket));
  const connected = new Promise<RawTcp>((resolve, reject) => {
    const near = RawTcp.connect('127.0.0.1', listener.port, (error) => (error ? reject(error) : resolve(near)));
  });
  const near = await withinFiveSeconds(connected, 'no connect');
  const far = await withinFiveSeconds(arrived, 'no accept');
  listener.server.close();
  return { near, far, close: () => (near.destroy(), far.destroy()) };
}

async function withinFiveSeconds<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} within 5 s`)), 5_000)))]);
  } finally {
    clearTimeout(timer);
  }
}
