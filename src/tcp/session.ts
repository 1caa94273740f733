import type net from 'node:net';
import type { HeartbeatConfig } from '../config/schema.js';
import type { Side } from '../errors.js';
import type { EvictionReason } from '../metrics/registry.js';
import type { Tracker } from '../protocols/types.js';
import { readInto } from '../net/shared-reads.js';

// One proxied pair: the downstream (client) socket and the upstream socket, spliced
// both ways with backpressure and half-close, and closed exactly once through
// close(reason, side). Nothing else in the process destroys these sockets.
//
// Heartbeats live here too because they are part of the splice: while a probe is
// outstanding the client's bytes are held back (bounded by the socket's own buffer:
// the client socket is paused) and released, in order, right after the reply.

/** ok: answered; timeout: unanswered (dead); unsupported: stream opaque; sent: one-way probe. */
export type HeartbeatResult = 'ok' | 'timeout' | 'unsupported' | 'sent';

export interface SessionEvents {
  /** Called once, after both sockets are destroyed. */
  onClosed(session: Session, reason: EvictionReason, side: Side): void;
  /** Per-route byte counters, flushed to Prometheus on the shared tick. */
  onBytes(direction: 'upstream' | 'downstream', count: number): void;
  onHeartbeat(session: Session, result: HeartbeatResult, rttMs: number, detail?: string): void;
}

export interface SessionOptions {
  readonly id: string;
  readonly idleTimeoutMs: number;
  readonly heartbeat: HeartbeatConfig | null;
  readonly tracker: Tracker | null;
  readonly reused: boolean;
  /** Bytes the upstream sent before the client arrived (a warm socket's greeting). */
  readonly earlyData: readonly Buffer[];
  /** Client bytes read before the session (a PostgreSQL startup message after the proxy's 'N' or 'S'). */
  readonly clientEarlyData?: readonly Buffer[];
  readonly now: number;
}

/** The kernel's verdicts that a peer is gone, mapped to eviction reasons. */
export function reasonForError(error: NodeJS.ErrnoException): EvictionReason {
  switch (error.code) {
    case 'ETIMEDOUT': // keepalive probes unanswered, or TCP_USER_TIMEOUT expired
      return 'keepalive_timeout';
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ECONNABORTED':
      return 'peer_reset';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'keepalive_timeout';
    default:
      return 'error';
  }
}

/** The session a socket belongs to, for the shared event handlers. */
const OWNER = Symbol('keepalive-proxy.session');
type OwnedSocket = net.Socket & { [OWNER]?: Session };

/** Reasons that end a pair with FIN after a flush; every other reason resets both sides. */
const CLEAN_REASONS: ReadonlySet<EvictionReason> = new Set(['peer_closed', 'shutdown', 'idle_timeout', 'route_removed']);
const CLEAN_CLOSE_GRACE_MS = 5_000;

export class Session {
  readonly id: string;
  readonly startedAt: number;
  readonly reused: boolean;
  readonly down: net.Socket;
  readonly up: net.Socket;
  bytesUp = 0;
  bytesDown = 0;
  /** Last payload byte either way (idleTimeout). */
  lastPayloadAt: number;
  /** Last byte of any kind on the upstream wire, heartbeats included (heartbeat schedule). */
  lastWireAt: number;

  readonly #events: SessionEvents;
  readonly #idleTimeoutMs: number;
  readonly #heartbeat: HeartbeatConfig | null;
  readonly #tracker: Tracker | null;
  /** Fixed per session so that many sessions started together do not probe in lockstep. */
  readonly #heartbeatDueAfterMs: number;
  #probeSentAt = 0;
  #probeSentPrecise = 0;
  #held: Buffer[] = [];
  #downBlocked = false; // upstream's write buffer is full
  #upBlocked = false; // client's write buffer is full
  #closed = false;
  #offReported = false;
  #downEnded = false;
  #upEnded = false;
  #closedSockets = 0;
  #closedAt = 0;
  #closeReason: EvictionReason | null = null;
  #closeSide: Side = 'proxy';

  constructor(down: net.Socket, up: net.Socket, events: SessionEvents, options: SessionOptions) {
    this.id = options.id;
    this.down = down;
    this.up = up;
    this.reused = options.reused;
    this.startedAt = options.now;
    this.lastPayloadAt = options.now;
    this.lastWireAt = options.now;
    this.#events = events;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    this.#heartbeat = options.heartbeat;
    this.#tracker = options.tracker;
    const spread = options.heartbeat ? options.heartbeat.everyMs * options.heartbeat.jitter : 0;
    this.#heartbeatDueAfterMs = options.heartbeat ? options.heartbeat.everyMs + spread * (Math.random() * 2 - 1) : 0;

    for (const chunk of options.earlyData) this.#forwardDownstream(chunk);
    this.#wire();
    for (const chunk of options.clientEarlyData ?? []) this.#onClientData(chunk);
  }

  get closed(): boolean {
    return this.#closed;
  }

  get probing(): boolean {
    return this.#tracker?.probing ?? false;
  }

  #wire(): void {
    const { down, up } = this;
    // The handlers are shared by every session (static, found through the socket's
    // back-reference) rather than closures per session: at thousands of idle
    // connections, ten closures each are a measurable share of the memory per pair.
    (down as OwnedSocket)[OWNER] = this;
    (up as OwnedSocket)[OWNER] = this;
    readInto(down, Session.#downData);
    readInto(up, Session.#upData);
    // Backpressure: a full write buffer on one side pauses reading on the other, so
    // the proxy never holds more than the sockets' own buffers.
    up.on('drain', Session.#upDrain);
    down.on('drain', Session.#downDrain);
    // Half-close: a FIN is passed on as a FIN; the other direction keeps flowing.
    down.on('end', Session.#downEnd);
    up.on('end', Session.#upEnd);
    down.on('error', Session.#downError);
    up.on('error', Session.#upError);
    down.on('close', Session.#downClose);
    up.on('close', Session.#upClose);
  }

  static #of(socket: net.Socket): Session {
    return (socket as OwnedSocket)[OWNER]!;
  }
  static #downData(socket: net.Socket, chunk: Buffer): void {
    Session.#of(socket).#onClientData(chunk);
  }
  static #upData(socket: net.Socket, chunk: Buffer): void {
    Session.#of(socket).#onUpstreamData(chunk);
  }
  static #upDrain(this: net.Socket): void {
    const session = Session.#of(this);
    session.#downBlocked = false;
    session.#resumeDown();
  }
  static #downDrain(this: net.Socket): void {
    const session = Session.#of(this);
    session.#upBlocked = false;
    session.up.resume();
  }
  static #downEnd(this: net.Socket): void {
    const session = Session.#of(this);
    session.#downEnded = true;
    if (session.#held.length === 0) session.up.end();
  }
  static #upEnd(this: net.Socket): void {
    const session = Session.#of(this);
    session.#upEnded = true;
    session.down.end();
  }
  static #downError(this: net.Socket, error: NodeJS.ErrnoException): void {
    Session.#of(this).close(reasonForError(error), 'downstream', error);
  }
  static #upError(this: net.Socket, error: NodeJS.ErrnoException): void {
    Session.#of(this).close(reasonForError(error), 'upstream', error);
  }
  static #downClose(this: net.Socket): void {
    Session.#of(this).#onSocketClosed('downstream');
  }
  static #upClose(this: net.Socket): void {
    Session.#of(this).#onSocketClosed('upstream');
  }

  #onClientData(chunk: Buffer): void {
    this.lastPayloadAt = this.lastWireAt = nowCoarse();
    this.bytesUp += chunk.length;
    this.#events.onBytes('upstream', chunk.length);
    if (this.#tracker) {
      if (this.#tracker.probing) {
        // The probe is on the wire: hold the client's bytes until its reply is consumed.
        this.#held.push(chunk);
        this.down.pause();
        return;
      }
      this.#tracker.fromClient(chunk);
    }
    if (!this.up.write(chunk)) {
      this.#downBlocked = true;
      this.down.pause();
    }
  }

  #onUpstreamData(chunk: Buffer): void {
    this.lastWireAt = nowCoarse();
    const tracker = this.#tracker;
    if (!tracker) {
      this.lastPayloadAt = this.lastWireAt;
      this.#forwardDownstream(chunk);
      return;
    }
    const wasProbing = tracker.probing;
    const forward = tracker.fromServer(chunk);
    if (forward.length > 0) {
      this.lastPayloadAt = this.lastWireAt;
      this.#forwardDownstream(forward);
    }
    if (wasProbing && !tracker.probing) this.#onProbeAnswered();
  }

  #forwardDownstream(chunk: Buffer): void {
    this.bytesDown += chunk.length;
    this.#events.onBytes('downstream', chunk.length);
    if (!this.down.write(chunk)) {
      this.#upBlocked = true;
      this.up.pause();
    }
  }

  #onProbeAnswered(): void {
    // A tracker that lost the thread while a probe was out forwarded what came and went
    // off: that is no proof of life, and it is counted as unsupported at the next tick.
    if (this.#tracker!.state !== 'off') this.#events.onHeartbeat(this, 'ok', performance.now() - this.#probeSentPrecise);
    const held = this.#held;
    if (held.length === 0) return;
    this.#held = [];
    for (const chunk of held) {
      this.#tracker!.fromClient(chunk);
      if (!this.up.write(chunk)) this.#downBlocked = true;
    }
    if (this.#downEnded) this.up.end();
    this.#resumeDown();
  }

  #resumeDown(): void {
    if (!this.#downBlocked && !(this.#tracker?.probing ?? false)) this.down.resume();
  }

  /** Called on every shared tick by the route: idle timeout and heartbeat schedule. */
  tick(now: number): void {
    if (this.#closed) {
      // A clean close waits for queued bytes to flush; a peer that never reads them
      // must not keep the pair alive for ever.
      if (now - this.#closedAt >= CLEAN_CLOSE_GRACE_MS) this.destroy(this.#closeReason ?? 'peer_closed');
      return;
    }
    if (this.#idleTimeoutMs > 0 && now - this.lastPayloadAt >= this.#idleTimeoutMs) {
      this.close('idle_timeout', 'proxy');
      return;
    }
    const tracker = this.#tracker;
    const heartbeat = this.#heartbeat;
    if (!tracker || !heartbeat) return;
    if (tracker.probing) {
      if (now - this.#probeSentAt >= heartbeat.timeoutMs) {
        this.#events.onHeartbeat(this, 'timeout', now - this.#probeSentAt);
        this.close('heartbeat_timeout', 'upstream');
      }
      return;
    }
    if (tracker.state === 'off') {
      if (!this.#offReported) {
        this.#offReported = true;
        this.#events.onHeartbeat(this, 'unsupported', 0, tracker.offReason ?? 'unknown');
      }
      return;
    }
    if (tracker.state !== 'quiet' || this.#upEnded || this.#downEnded) return;
    if (now - this.lastWireAt < this.#heartbeatDueAfterMs) return;
    this.#probeSentAt = now;
    this.#probeSentPrecise = performance.now();
    this.lastWireAt = now;
    this.up.write(tracker.probe());
    // A one-way probe (custom, empty expect) keeps middleboxes fed but proves nothing.
    if (!tracker.probing) this.#events.onHeartbeat(this, 'sent', 0);
  }

  #onSocketClosed(side: Side): void {
    this.#closedSockets++;
    if (this.#closed) {
      if (this.#closedSockets === 2) this.#finish();
      return;
    }
    // One socket closed without an error event: either the normal end of a half-closed
    // pair (both FINs seen), or a destroy we did not cause. Either way the pair is over.
    const bothEnded = this.#downEnded && this.#upEnded;
    this.close('peer_closed', bothEnded ? 'proxy' : side);
  }

  /**
   * Ends the pair once. Resets (RST) the other side when the peer reset or died, so the
   * client's pool drops the connection at once; a clean end lets queued bytes flush.
   */
  close(reason: EvictionReason, side: Side, error?: NodeJS.ErrnoException): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closedAt = Date.now();
    this.#closeReason = reason;
    this.#closeSide = side;
    this.#held = [];
    void error;
    const abrupt = !CLEAN_REASONS.has(reason);
    for (const socket of [this.down, this.up]) {
      if (socket.destroyed) continue;
      if (abrupt) resetOrDestroy(socket);
      else {
        // Clean close: flush what is queued, send FIN, and make sure the socket goes away
        // even if the peer never reads (destroySoon ends then destroys after the flush).
        socket.destroySoon();
      }
    }
    if (this.#closedSockets === 2) this.#finish();
  }

  /** Forces both sockets down (drain deadline passed). */
  destroy(reason: EvictionReason): void {
    if (!this.#closed) this.close(reason, 'proxy');
    this.down.destroy();
    this.up.destroy();
  }

  #finish(): void {
    this.#events.onClosed(this, this.#closeReason ?? 'peer_closed', this.#closeSide);
  }
}

/** RST where the socket allows it (a TLS socket or one still connecting throws), else a plain destroy. */
function resetOrDestroy(socket: net.Socket): void {
  try {
    if (!socket.connecting) {
      socket.resetAndDestroy();
      return;
    }
  } catch {
    // fall through
  }
  socket.destroy();
}

// The coarse clock is the route's; sessions read Date.now() only when bytes move,
// which costs about as much as reading a shared field and keeps Session free of deps.
function nowCoarse(): number {
  return Date.now();
}
