import type net from 'node:net';
import { reasonForError, type EvictionReason } from '../errors.js';
import type { ReadBuffer } from './http-read-buffer.js';

// One persistent upstream connection of the HTTP pool, from the handshake to its close.
// It moves IDLE <-> BUSY until it is CLOSED; the pool (http-pool.ts) owns those moves.
// Its socket listeners are installed once and dispatch to whoever uses it: the exchange
// it is serving (http/exchange.ts) while busy, the idle watch while parked (nginx,
// pingora): any byte or EOF from the upstream then means the upstream is closing it or
// the stream is out of sync, so it is evicted before a request can be written on it.
// No listener is added or removed per request.

export type ConnectionState = 'idle' | 'busy' | 'closed';

/** The exchange a busy connection serves: it gets the socket's events. */
export interface ConnectionUser {
  upstreamData(chunk: Buffer): void;
  /** The upstream's FIN. */
  upstreamEnd(): void;
  /** The socket closed; `error` is what the kernel said, if anything. */
  upstreamClosed(error: NodeJS.ErrnoException | null): void;
  /** The socket's write buffer drained (request body backpressure). */
  upstreamDrained(): void;
}

let nextConnectionId = 1;

/** Keep-Alive: timeout=N (seconds) as the upstream advertised it, in ms; 0 when absent or unreadable. */
export function parseKeepAliveTimeoutMs(header: string | string[] | undefined): number {
  const value = Array.isArray(header) ? header.join(',') : header;
  if (!value) return 0;
  const match = /(?:^|[,;\s])timeout\s*=\s*"?(\d+)/i.exec(value);
  return match ? Number(match[1]) * 1000 : 0;
}

export class PooledConnection {
  readonly id = nextConnectionId++;
  /** The socket HTTP runs on (TLS for https upstreams). */
  readonly socket: net.Socket;
  /** The TCP socket underneath. */
  readonly raw: net.Socket;
  readonly createdAt: number;
  state: ConnectionState = 'busy';
  /** Requests written on this connection so far. */
  requests = 0;
  /** When it was last parked (ms, wall clock). */
  idleSince = 0;
  /** The event-loop turn it was parked in (see loop-turn.ts). */
  parkedTurn = -1;
  /** The upstream's advertised idle limit, ms; 0 = none advertised. */
  keepAliveHintMs = 0;
  #user: ConnectionUser | null = null;
  #closeReason: EvictionReason | null = null;
  #errorReason: EvictionReason | null = null;
  /** The upstream's FIN, an error, or the close: no request may be written any more. */
  #finished = false;
  #error: NodeJS.ErrnoException | null = null;
  readonly #onClosed: (connection: PooledConnection, was: ConnectionState) => void;

  readonly #readBuffer: ReadBuffer | null;

  constructor(
    socket: net.Socket,
    raw: net.Socket,
    readBuffer: ReadBuffer | null,
    now: number,
    onClosed: (connection: PooledConnection, was: ConnectionState) => void,
  ) {
    this.socket = socket;
    this.raw = raw;
    this.createdAt = now;
    this.#onClosed = onClosed;
    this.#readBuffer = readBuffer;
    // An upstream connection never keeps the process alive on its own: a request in
    // flight has its client's socket for that, and shutdown closes the pool.
    socket.unref();
    if (readBuffer) {
      readBuffer.deliver = this.#onData;
      if (readBuffer.early) this.#closeReason = 'unexpected_data';
    } else {
      socket.on('data', this.#onData);
    }
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    socket.on('drain', this.#onDrain);
  }

  /** Whether a request may still be written: not closing, not half-closed by the upstream. */
  get usable(): boolean {
    // Our own flags, set from the socket's events: the stream getters cost more per request.
    return this.#closeReason === null && !this.#finished;
  }

  /** Why it closed: the proxy's decision first, then what the kernel said, else the upstream's FIN. */
  get closeReason(): EvictionReason {
    return this.#closeReason ?? this.#errorReason ?? 'peer_closed';
  }

  get user(): ConnectionUser | null {
    return this.#user;
  }

  /**
   * The last chunk delivered (or a view of it) is still referenced after the delivery:
   * the next read must not overwrite it. No-op for sockets that get a fresh Buffer per read.
   */
  retainChunk(): void {
    this.#readBuffer?.retain();
  }

  /** Hands the socket's events to an exchange. */
  attach(user: ConnectionUser): void {
    this.#user = user;
  }

  /** The exchange is done with it: from now on any byte or EOF evicts it. */
  detach(): void {
    this.#user = null;
  }

  parked(now: number, turn: number): void {
    this.#user = null;
    this.state = 'idle';
    this.idleSince = now;
    this.parkedTurn = turn;
  }

  /** Evicts it; the pool's close hook does the bookkeeping. Idempotent. */
  close(reason: EvictionReason): void {
    // Already gone: whatever destroyed it (an error, the upstream's FIN) is the reason.
    if (this.socket.destroyed) return;
    this.#closeReason ??= reason;
    this.#user = null;
    this.socket.destroy();
  }

  readonly #onData = (chunk: Buffer): void => {
    const user = this.#user;
    if (user) user.upstreamData(chunk);
    else this.close('unexpected_data');
  };

  readonly #onEnd = (): void => {
    this.#finished = true;
    const user = this.#user;
    if (user) user.upstreamEnd();
    else this.close('peer_closed');
  };

  readonly #onError = (error: NodeJS.ErrnoException): void => {
    this.#finished = true;
    this.#error ??= error;
    this.#errorReason ??= reasonForError(error);
  };

  readonly #onClose = (): void => {
    this.#finished = true;
    const was = this.state;
    this.state = 'closed';
    const user = this.#user;
    this.#user = null;
    this.#onClosed(this, was);
    user?.upstreamClosed(this.#error);
  };

  readonly #onDrain = (): void => {
    this.#user?.upstreamDrained();
  };
}
