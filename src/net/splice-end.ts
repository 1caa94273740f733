import type net from 'node:net';
import { readInto } from './shared-reads.js';
import { readOnAfterWriteError } from './last-reads.js';
import { resetOrDestroy } from './internals.js';
import { tcpOf, tlsSummary, type TlsSummary } from './tls-socket.js';
import type { RawTcp } from './raw-tcp.js';

// One end of a splice (tcp/session.ts): what the session needs of a connection, whatever
// carries it. Two kinds exist: a libuv TCP handle driven directly (net/raw-tcp.ts, the
// plain TCP path: no stream machinery per connection) and a net.Socket (SocketEnd below:
// TLS, and every socket some other code built first, such as an HTTP tunnel's or a
// PostgreSQL opening's). The session cannot tell them apart.

/** The TCP connection under an end, for socket options and TCP_INFO (net/sockopt.ts). */
export type TcpRef = net.Socket | RawTcp;

/**
 * What an end reports to its owner. One object serves every end of a kind of owner (the
 * session's handlers are static), so no closure is made per connection; the owner is
 * found through `end.owner`.
 */
export interface EndEvents {
  /** Bytes read, in order; the chunk is the owner's to keep. */
  data(end: SpliceEnd, chunk: Buffer): void;
  /** The peer's FIN: nothing more will be read. */
  end(end: SpliceEnd): void;
  /** A read error (the peer's reset); close follows. */
  error(end: SpliceEnd, error: NodeJS.ErrnoException): void;
  /** Everything written has left for the kernel: writing may go on. */
  drain(end: SpliceEnd): void;
  /**
   * A write failed (the peer is gone). The end stays open and goes on reading, so the
   * peer's last bytes before its reset are still delivered (net/last-reads.ts).
   */
  writeFailed(end: SpliceEnd, error: NodeJS.ErrnoException): void;
  /** The connection is closed; called once. */
  close(end: SpliceEnd): void;
}

export interface SpliceEnd {
  /** The end's owner, for the shared event handlers. */
  owner: unknown;
  /** From now on reads and events go to `events` (bytes that came before first, in order). */
  listen(events: EndEvents): void;
  /** False when the bytes wait in the process: stop feeding it until drain. */
  write(chunk: Buffer): boolean;
  /** Calls back once every byte written so far has left the process (at once if none is queued). */
  whenFlushed(callback: () => void): void;
  pause(): void;
  resume(): void;
  /** FIN after what is queued; reading goes on (half-close). */
  end(): void;
  /** FIN after what is queued, then close, whether or not the peer ever answers. */
  closeSoon(): void;
  /** RST: the peer's pool drops the connection at once. */
  reset(): void;
  destroy(): void;
  readonly destroyed: boolean;
  /** Not reading (paused, or its peer's FIN read). */
  readonly paused: boolean;
  /** Bytes written and still in the process. */
  readonly writableLength: number;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  readonly tcp: TcpRef;
  readonly tls: TlsSummary | null;
}

const END = Symbol('keepalive-proxy.splice-end');
type OwnedSocket = net.Socket & { [END]?: SocketEnd };

const EMPTY = Buffer.alloc(0);

/** A net.Socket (TLS or TCP) as a splice end. */
export class SocketEnd implements SpliceEnd {
  owner: unknown = null;
  readonly socket: net.Socket;
  #events: EndEvents | null = null;
  /** Its close was told to the owner (by the socket's event, or by #closedEarly). */
  #closeTold = false;

  constructor(socket: net.Socket) {
    this.socket = socket;
    (socket as OwnedSocket)[END] = this;
  }

  listen(events: EndEvents): void {
    const socket = this.socket;
    const first = this.#events === null;
    this.#events = events;
    if (!first) return;
    readInto(socket, SocketEnd.#data);
    readOnAfterWriteError(socket, SocketEnd.#writeFailed);
    socket.on('drain', SocketEnd.#drain);
    socket.on('end', SocketEnd.#end);
    socket.on('error', SocketEnd.#error);
    socket.on('close', SocketEnd.#close);
    // Destroyed before anyone listened (an upstream that reset while a clientTls client's
    // handshake ran): its 'close' is either past or still to come in this turn of the loop
    // (net emits it from libuv's close callback, after `closed` is already true). Two turns
    // later it has been told either way; if it was not, it is told then, once. Never from
    // inside this call: resetting the client's TLS socket inside its handshake callback
    // crashes node with SIGSEGV (seen on 20.20).
    if (socket.destroyed) setImmediate(() => setImmediate(() => this.#closedEarly()));
  }

  #closedEarly(): void {
    if (this.#closeTold) return;
    if (this.socket.errored) this.#events!.error(this, this.socket.errored as NodeJS.ErrnoException);
    SocketEnd.#close.call(this.socket);
  }

  static #of(socket: net.Socket): SocketEnd {
    return (socket as OwnedSocket)[END]!;
  }
  static #data(socket: net.Socket, chunk: Buffer): void {
    const end = SocketEnd.#of(socket);
    end.#events!.data(end, chunk);
  }
  static #writeFailed(socket: net.Socket, error: NodeJS.ErrnoException): void {
    const end = SocketEnd.#of(socket);
    end.#events!.writeFailed(end, error);
  }
  static #drain(this: net.Socket): void {
    const end = SocketEnd.#of(this);
    end.#events!.drain(end);
  }
  static #end(this: net.Socket): void {
    const end = SocketEnd.#of(this);
    end.#events!.end(end);
  }
  static #error(this: net.Socket, error: NodeJS.ErrnoException): void {
    const end = SocketEnd.#of(this);
    end.#events!.error(end, error);
  }
  static #close(this: net.Socket): void {
    const end = SocketEnd.#of(this);
    if (end.#closeTold) return;
    end.#closeTold = true;
    end.#events!.close(end);
  }

  write(chunk: Buffer): boolean {
    return this.socket.write(chunk);
  }
  whenFlushed(callback: () => void): void {
    const socket = this.socket;
    if (socket.writableLength === 0) callback();
    else if (socket.writableEnded) socket.once('finish', callback);
    else socket.write(EMPTY, callback);
  }
  pause(): void {
    this.socket.pause();
  }
  resume(): void {
    this.socket.resume();
  }
  end(): void {
    this.socket.end();
  }
  closeSoon(): void {
    // destroySoon ends, then destroys after the flush, even if the peer never reads.
    this.socket.destroySoon();
  }
  reset(): void {
    resetOrDestroy(this.socket);
  }
  destroy(): void {
    this.socket.destroy();
  }
  get destroyed(): boolean {
    return this.socket.destroyed;
  }
  get paused(): boolean {
    return this.socket.isPaused();
  }
  get writableLength(): number {
    return this.socket.writableLength;
  }
  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }
  get remotePort(): number | undefined {
    return this.socket.remotePort;
  }
  get tcp(): TcpRef {
    return tcpOf(this.socket);
  }
  get tls(): TlsSummary | null {
    return tlsSummary(this.socket);
  }
}
