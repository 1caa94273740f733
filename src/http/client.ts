import type net from 'node:net';
import type { Session } from '../tcp/session.js';

// What the route knows about one accepted client connection, for the admin listing:
// it outlives each request (client keep-alive) and becomes a tunnel after an Upgrade
// or CONNECT.

let nextClientId = 1;

export class ClientConnection {
  readonly #number = nextClientId++;
  readonly socket: net.Socket;
  readonly createdAt: number;
  lastActivity: number;
  bytesUp = 0;
  bytesDown = 0;
  requests = 0;
  /** Whether any of its requests ran on an upstream connection that had served before. */
  reused = false;
  /** The upstream its latest request went to. */
  upstream: string | null = null;
  /** Set once an Upgrade or CONNECT turned it into a tunnel. */
  tunnel: { readonly kind: 'upgrade' | 'connect'; readonly session: Session } | null = null;

  /** "h<n>": formatted when asked (the admin listing), not per connection. */
  get id(): string {
    return `h${this.#number}`;
  }

  constructor(socket: net.Socket, now: number) {
    this.socket = socket;
    this.createdAt = now;
    this.lastActivity = now;
  }
}
