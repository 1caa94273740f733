import type net from 'node:net';
import type { EvictionReason } from '../metrics/registry.js';
import { reasonForError } from '../tcp/session.js';

// One persistent upstream connection of the HTTP pool, from the handshake to its close.
// It moves IDLE <-> BUSY until it is CLOSED; the pool (http-pool.ts) owns those moves.
// While parked idle it is watched (nginx, pingora): any byte or EOF from the upstream
// means the upstream is closing it or the stream is out of sync, so it is evicted
// before a request can be written on it.

export type ConnectionState = 'idle' | 'busy' | 'closed';

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
  /** The upstream's advertised idle limit, ms; 0 = none advertised. */
  keepAliveHintMs = 0;
  #closeReason: EvictionReason | null = null;
  #errorReason: EvictionReason | null = null;
  #watching = false;

  constructor(socket: net.Socket, raw: net.Socket, now: number) {
    this.socket = socket;
    this.raw = raw;
    this.createdAt = now;
    socket.on('error', (error: NodeJS.ErrnoException) => {
      this.#errorReason ??= reasonForError(error);
    });
  }

  /** Whether a request may still be written: not closing, not half-closed by the upstream. */
  get usable(): boolean {
    return this.#closeReason === null && !this.socket.destroyed && this.socket.writable && this.socket.readable;
  }

  /** Why it closed: the proxy's decision first, then what the kernel said, else the upstream's FIN. */
  get closeReason(): EvictionReason {
    return this.#closeReason ?? this.#errorReason ?? 'peer_closed';
  }

  /** Evicts it; the pool's 'close' listener does the bookkeeping. Idempotent. */
  close(reason: EvictionReason): void {
    // Already gone: whatever destroyed it (an error, the upstream's FIN) is the reason.
    if (this.socket.destroyed) return;
    this.#closeReason ??= reason;
    this.stopWatching();
    this.socket.destroy();
  }

  /** Parked: any byte or EOF from the upstream evicts it. */
  watchWhileIdle(): void {
    if (this.#watching) return;
    this.#watching = true;
    this.socket.on('data', this.#onIdleData);
    this.socket.on('end', this.#onIdleEnd);
    // A parked socket must not keep the process alive on its own.
    this.socket.unref();
  }

  /** Leaving the pool for a request: node's HTTP client takes over the socket's events. */
  stopWatching(): void {
    if (!this.#watching) return;
    this.#watching = false;
    this.socket.off('data', this.#onIdleData);
    this.socket.off('end', this.#onIdleEnd);
    this.socket.ref();
  }

  readonly #onIdleData = (): void => this.close('unexpected_data');
  readonly #onIdleEnd = (): void => this.close('peer_closed');
}
