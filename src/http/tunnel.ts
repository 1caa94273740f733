import type net from 'node:net';
import type { HeartbeatConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { DialAttempt, DialTarget, DialedSocket } from '../pool/http-dial.js';
import { dialFailureStatus } from '../errors.js';
import type { ClientSession } from './client-session.js';
import { respondRaw } from './respond.js';
import type { Tracker } from '../protocols/types.js';

// What Upgrade (upgrade.ts) and CONNECT (forward.ts) need from their route: a dial
// that counts itself, the request counter, and the hand-off of two sockets that are no
// longer HTTP to a spliced session (tcp/session.ts: half-close, backpressure, idle
// timeout, heartbeats, one close(reason)).

export interface TunnelOptions {
  readonly kind: 'upgrade' | 'connect';
  /** WebSocket heartbeat state, or null for an opaque tunnel. */
  readonly tracker: Tracker | null;
  readonly heartbeat: HeartbeatConfig | null;
  /** Upstream bytes that arrived with the handshake, already through the tracker. */
  readonly earlyData: readonly Buffer[];
}

export interface TunnelHost {
  readonly route: string;
  readonly log: Logger;
  /** A fresh upstream connection for a tunnel (never from the pool: it will not come back). */
  dial(target: DialTarget): DialAttempt;
  /** requests_total for an Upgrade or CONNECT, with the status the client got. */
  answered(status: number): void;
  /** From here on the tunnel's session owns both sockets (and their close). */
  startTunnel(client: ClientSession, up: net.Socket, options: TunnelOptions): void;
}

/** Client bytes held while a tunnel is set up; past this, reading pauses until the tunnel starts. */
const EARLY_LIMIT = 64 * 1024;

/**
 * Watches a client while its tunnel is being set up (dial, handshake). Its socket keeps
 * reading instead of being paused, because a paused socket never sees the client's FIN
 * or reset: a client that leaves is let go at once (its 'close' abandons the dial or
 * handshake). What it sends meanwhile is held, up to EARLY_LIMIT, for take().
 */
export class ClientWatch {
  readonly #client: ClientSession;
  readonly #down: net.Socket;
  #held: Buffer[] = [];
  #heldBytes = 0;

  constructor(client: ClientSession) {
    this.#client = client;
    const down = client.socket;
    this.#down = down;
    down.on('data', this.#onData);
    down.on('end', this.#onEnd);
    down.resume();
  }

  /** Stops watching (the socket is left paused for its next owner); returns the bytes held, in order. */
  take(): Buffer {
    const down = this.#down;
    down.off('data', this.#onData);
    down.off('end', this.#onEnd);
    down.pause();
    const held = this.#held.length === 1 ? this.#held[0]! : Buffer.concat(this.#held);
    this.#held = [];
    this.#heldBytes = 0;
    return held;
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#held.push(chunk);
    this.#heldBytes += chunk.length;
    if (this.#heldBytes > EARLY_LIMIT) this.#down.pause();
  };

  /** A client that stops sending before its tunnel exists has left (as the HTTP session treats a FIN). */
  readonly #onEnd = (): void => {
    this.#client.close('client_closed', 'destroy');
  };
}

/**
 * Dials `target` for a client that waits on `down` (CONNECT, Upgrade): abandons the dial
 * when the client leaves, drops a socket that arrives after the client left, and answers
 * 504 (connect timeout) or 502 (any other failure) naming `what` when the dial fails.
 */
export function dialForClient(
  host: TunnelHost,
  client: ClientSession,
  target: DialTarget,
  what: string,
  onReady: (dialed: DialedSocket) => void,
): void {
  const down = client.socket;
  const attempt = host.dial(target);
  const onClientGone = (): void => attempt.abort();
  down.once('close', onClientGone);
  attempt.done.then(
    (dialed) => {
      down.off('close', onClientGone);
      if (down.destroyed) {
        dialed.socket.destroy();
        return;
      }
      onReady(dialed);
    },
    (error: unknown) => {
      down.off('close', onClientGone);
      if (down.destroyed) return;
      const status = dialFailureStatus(error);
      host.answered(status);
      const detail = status === 403 ? (error as Error).message : status === 504 ? `${what} did not accept the connection in time` : `${what} is unreachable`;
      respondRaw(client, status, status === 403 ? 'forbidden' : 'connect_error', detail);
    },
  );
}
