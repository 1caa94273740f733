import type { Clock } from '../clock.js';
import type { HeartbeatConfig } from '../config/schema.js';
import { reasonForError, type EvictionReason, type Side } from '../errors.js';
import type { Tracker } from '../protocols/types.js';
import type { StreamRewriter } from '../protocols/mysql-auth-shift.js';
import { HeartbeatSchedule, type HeartbeatResult } from '../heartbeat/scheduler.js';
import { pendingSocketError, unacknowledgedBytes } from '../net/sockopt.js';
import type { EndEvents, SpliceEnd } from '../net/splice-end.js';

// One proxied pair: the downstream (client) end and the upstream end, spliced both ways
// with backpressure and half-close, and closed exactly once through close(reason, side).
// Nothing else in the process closes these connections. An end is a raw TCP handle or a
// net.Socket (net/splice-end.ts); the splice is the same for both.
//
// Heartbeats live here too because they are part of the splice: while a probe is
// outstanding the client's bytes are held back (bounded by the socket's own buffer:
// the client socket is paused) and released, in order, right after the reply. When to
// probe is the one schedule's call (heartbeat/scheduler.ts).

export type { HeartbeatResult } from '../heartbeat/scheduler.js';

export interface SessionEvents {
  /**
   * Called once, when the pair starts to end and before either socket is touched: the
   * route counts the end here, so a peer that sees the FIN or RST finds it counted
   * (the sockets' 'close' events come later: after the flush, or a reset held until delivery).
   */
  onClosing(session: Session, reason: EvictionReason, side: Side): void;
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
  /**
   * Rewrites bytes in flight while the proxy's part in the handshake makes the two sides
   * differ (MySQL TLS: sequence ids); dropped once done. The tracker sees the client's view.
   */
  readonly rewriter?: StreamRewriter | null;
  /** TCP family: a reply owed this long with no byte from the server closes the pair (0 = never). */
  readonly responseTimeoutMs?: number;
  readonly reused: boolean;
  /** Bytes the upstream sent before the client arrived (a warm socket's greeting). */
  readonly earlyData: readonly Buffer[];
  /** Client bytes read before the session (a PostgreSQL startup message after the proxy's 'N' or 'S'). */
  readonly clientEarlyData?: readonly Buffer[];
  /** The route's interval in force, read at every tick (every: auto changes it for live sessions); default heartbeat.everyMs. */
  readonly heartbeatInterval?: { readonly everyMs: number };
  /** The route's shared clock: every timestamp of the pair (coarse), and the heartbeat RTT (precise). */
  readonly clock: Clock;
}

/** Reasons that end a pair with FIN after a flush; every other reason resets both sides. */
const CLEAN_REASONS: ReadonlySet<EvictionReason> = new Set(['peer_closed', 'shutdown', 'idle_timeout', 'route_removed']);
const CLEAN_CLOSE_GRACE_MS = 5_000;
/** How long a socket whose write failed may go on reading the peer's last bytes. */
const LAST_READS_GRACE_MS = 1_000;

/** A write failed on one side: the close waits until that side's last bytes are read. */
interface PendingFailure {
  readonly reason: EvictionReason;
  readonly side: Side;
  readonly error: NodeJS.ErrnoException;
  readonly at: number;
}

export class Session {
  readonly id: string;
  readonly startedAt: number;
  readonly reused: boolean;
  readonly down: SpliceEnd;
  readonly up: SpliceEnd;
  bytesUp = 0;
  bytesDown = 0;
  /** Last payload byte either way (idleTimeout). */
  lastPayloadAt: number;

  readonly #events: SessionEvents;
  readonly #clock: Clock;
  readonly #idleTimeoutMs: number;
  readonly #tracker: Tracker | null;
  /** When to probe (null without a heartbeat or a tracker to probe with). */
  readonly #schedule: HeartbeatSchedule | null;
  #rewriter: StreamRewriter | null;
  readonly #responseTimeoutMs: number;
  /** When the oldest unanswered request went out, or the server's last byte since (0: nothing owed). */
  #replyOwedSince = 0;
  #held: Buffer[] = [];
  #downBlocked = false; // upstream's write buffer is full
  #upBlocked = false; // client's write buffer is full
  #closed = false;
  #downEnded = false;
  #upEnded = false;
  #closedSockets = 0;
  #closedAt = 0;
  #closeReason: EvictionReason | null = null;
  #closeSide: Side = 'proxy';
  #pendingFailure: PendingFailure | null = null;
  /** The survivor of an abrupt close, reset once the peer's kernel has acknowledged every byte it was sent. */
  #resetWhenDelivered: SpliceEnd | null = null;

  constructor(down: SpliceEnd, up: SpliceEnd, events: SessionEvents, options: SessionOptions) {
    this.id = options.id;
    this.down = down;
    this.up = up;
    this.reused = options.reused;
    this.#clock = options.clock;
    const now = options.clock.now();
    this.startedAt = now;
    this.lastPayloadAt = now;
    this.#events = events;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    this.#tracker = options.tracker;
    this.#schedule =
      options.heartbeat && options.tracker
        ? new HeartbeatSchedule(options.heartbeat, options.clock, { clientSince: now, ...(options.heartbeatInterval ? { interval: options.heartbeatInterval } : {}) })
        : null;
    this.#rewriter = options.rewriter ?? null;
    this.#responseTimeoutMs = options.responseTimeoutMs ?? 0;

    for (const chunk of options.earlyData) this.#forwardDownstream(chunk);
    this.#wire();
    for (const chunk of options.clientEarlyData ?? []) this.#onClientData(chunk);
  }

  /** Last byte of any kind on the upstream wire, heartbeats included (without heartbeats every byte is payload). */
  get lastWireAt(): number {
    return this.#schedule?.lastWireAt ?? this.lastPayloadAt;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get probing(): boolean {
    return this.#tracker?.probing ?? false;
  }

  #wire(): void {
    // The handlers are shared by every session (static, found through the end's owner)
    // rather than closures per session: at thousands of idle connections, ten closures
    // each are a measurable share of the memory per pair.
    this.down.owner = this;
    this.up.owner = this;
    this.down.listen(Session.#downEvents);
    this.up.listen(Session.#upEvents);
  }

  static #of(end: SpliceEnd): Session {
    return end.owner as Session;
  }
  static readonly #downEvents: EndEvents = {
    data: (end, chunk) => Session.#of(end).#onClientData(chunk),
    // Backpressure: a full write buffer on one side pauses reading on the other, so
    // the proxy never holds more than the sockets' own buffers.
    drain: (end) => {
      const session = Session.#of(end);
      session.#upBlocked = false;
      // The server was not read while the client caught up: its reply deadline starts over.
      if (session.#replyOwedSince !== 0) session.#replyOwedSince = session.#clock.now();
      session.up.resume();
    },
    // Half-close: a FIN is passed on as a FIN; the other direction keeps flowing.
    end: (end) => {
      const session = Session.#of(end);
      session.#downEnded = true;
      if (session.#closeIfFailed('downstream') || session.#closeIfReset(end, 'downstream')) return;
      if (session.#held.length === 0) session.up.end();
    },
    error: (end, error) => Session.#of(end).close(reasonForError(error), 'downstream', error),
    writeFailed: (end, error) => Session.#of(end).#writeFailed('downstream', error),
    close: (end) => Session.#of(end).#onSocketClosed('downstream'),
  };
  static readonly #upEvents: EndEvents = {
    data: (end, chunk) => Session.#of(end).#onUpstreamData(chunk),
    drain: (end) => {
      const session = Session.#of(end);
      session.#downBlocked = false;
      session.#resumeDown();
    },
    end: (end) => {
      const session = Session.#of(end);
      session.#upEnded = true;
      if (session.#closeIfFailed('upstream') || session.#closeIfReset(end, 'upstream')) return;
      session.down.end();
    },
    error: (end, error) => Session.#of(end).close(reasonForError(error), 'upstream', error),
    writeFailed: (end, error) => Session.#of(end).#writeFailed('upstream', error),
    close: (end) => Session.#of(end).#onSocketClosed('upstream'),
  };

  #writeFailed(side: Side, error: NodeJS.ErrnoException): void {
    const end = side === 'downstream' ? this.down : this.up;
    if (this.#closed) {
      end.reset();
      return;
    }
    if (this.#pendingFailure) {
      this.close(reasonForError(error), side, error);
      return;
    }
    // The peer is gone, but what it sent before going is still to be read: stop feeding
    // it (the other side pauses) and let its reads run to their end (see net/last-reads.ts).
    this.#pendingFailure = { reason: reasonForError(error), side, error, at: this.#clock.now() };
    (side === 'upstream' ? this.down : this.up).pause();
    end.resume();
  }

  /** The side whose write failed has read to its end: the pair closes as that failure. */
  #closeIfFailed(side: Side): boolean {
    const failure = this.#pendingFailure;
    if (failure?.side !== side) return false;
    this.close(failure.reason, failure.side, failure.error);
    return true;
  }

  /**
   * An end read as EOF that was the peer's reset (libuv reports an RST right after data as
   * EOF): the pair closes as a reset, so the other side is reset too, not sent a FIN.
   */
  #closeIfReset(end: SpliceEnd, side: Side): boolean {
    const error = pendingSocketError(end.tcp);
    if (!error) return false;
    this.close(reasonForError(error), side, error);
    return true;
  }

  #onClientData(chunk: Buffer): void {
    const now = (this.lastPayloadAt = this.#clock.now());
    this.#schedule?.clientSent(now);
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
    this.#armReplyDeadline(now);
    if (!this.up.write(this.#toServer(chunk))) {
      this.#downBlocked = true;
      this.down.pause();
    }
  }

  #onUpstreamData(received: Buffer): void {
    const now = this.#clock.now();
    this.#schedule?.heard(now);
    const chunk = this.#rewriter ? this.#rewritten(this.#rewriter.toClient(received)) : received;
    const tracker = this.#tracker;
    if (!tracker) {
      this.#replyOwedSince = 0;
      this.lastPayloadAt = now;
      this.#forwardDownstream(chunk);
      return;
    }
    const wasProbing = tracker.probing;
    const forward = tracker.fromServer(chunk);
    // Any byte from the server restarts the reply deadline.
    if (this.#replyOwedSince !== 0) this.#replyOwedSince = tracker.awaitingReply ? now : 0;
    if (forward.length > 0) {
      this.lastPayloadAt = now;
      this.#forwardDownstream(forward);
    }
    if (wasProbing && !tracker.probing) this.#onProbeAnswered();
  }

  #toServer(chunk: Buffer): Buffer {
    return this.#rewriter ? this.#rewritten(this.#rewriter.toServer(chunk)) : chunk;
  }

  #rewritten(chunk: Buffer): Buffer {
    if (this.#rewriter?.done) this.#rewriter = null;
    return chunk;
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
    const tracker = this.#tracker!;
    if (tracker.state !== 'off' && this.#schedule) this.#events.onHeartbeat(this, tracker.probeRefused ? 'error' : 'ok', this.#schedule.answered());
    const held = this.#held;
    if (held.length === 0) return;
    this.#held = [];
    for (const chunk of held) {
      tracker.fromClient(chunk);
      if (!this.up.write(this.#toServer(chunk))) this.#downBlocked = true;
    }
    this.#armReplyDeadline(this.#clock.now());
    if (this.#downEnded) this.up.end();
    this.#resumeDown();
  }

  /** A request now awaits its reply (a raw stream: any client byte does): start its deadline. */
  #armReplyDeadline(now: number): void {
    if (this.#responseTimeoutMs === 0 || this.#replyOwedSince !== 0) return;
    if (this.#tracker ? this.#tracker.awaitingReply : true) this.#replyOwedSince = now;
  }

  /** The owed reply is later than responseTimeout (plus a blocking command's own timeout). */
  #replyOverdue(now: number): boolean {
    // Paused because the client reads slowly: the silence is ours, not the server's.
    if (this.#replyOwedSince === 0 || this.#upBlocked) return false;
    const tracker = this.#tracker;
    if (tracker && !tracker.awaitingReply) return false;
    return now - this.#replyOwedSince >= this.#responseTimeoutMs + (tracker?.replyGraceMs ?? 0);
  }

  #resumeDown(): void {
    if (!this.#downBlocked && !(this.#tracker?.probing ?? false)) this.down.resume();
  }

  /** Called on every shared tick by the route: idle timeout and heartbeat schedule. */
  tick(now: number): void {
    if (this.#closed) {
      // A clean close waits for queued bytes to flush; a peer that never reads them
      // must not keep the pair alive for ever.
      const survivor = this.#resetWhenDelivered;
      if (now - this.#closedAt >= CLEAN_CLOSE_GRACE_MS) {
        survivor?.reset();
        this.destroy(this.#closeReason ?? 'peer_closed');
      } else if (survivor && !unacknowledgedBytes(survivor.tcp)) {
        survivor.reset();
      }
      return;
    }
    const failure = this.#pendingFailure;
    if (failure && now - failure.at >= LAST_READS_GRACE_MS) {
      this.#closeIfFailed(failure.side);
      return;
    }
    if (this.#idleTimeoutMs > 0 && now - this.lastPayloadAt >= this.#idleTimeoutMs) {
      this.close('idle_timeout', 'proxy');
      return;
    }
    if (this.#replyOverdue(now)) {
      this.close('response_timeout', 'upstream');
      return;
    }
    const tracker = this.#tracker;
    const schedule = this.#schedule;
    if (!tracker || !schedule) return;
    switch (schedule.next(now, tracker, !this.#upEnded && !this.#downEnded)) {
      case 'timeout':
        this.#events.onHeartbeat(this, 'timeout', schedule.waited(now));
        this.close('heartbeat_timeout', 'upstream');
        return;
      case 'off':
        this.#events.onHeartbeat(this, 'unsupported', 0, tracker.offReason ?? 'unknown');
        return;
      case 'probe':
        this.up.write(schedule.probe(tracker, now));
        // A one-way probe (custom, empty expect) keeps middleboxes fed but proves nothing.
        if (!tracker.probing) this.#events.onHeartbeat(this, 'sent', 0);
        return;
      case 'wait':
        return;
    }
  }

  #onSocketClosed(side: Side): void {
    this.#closedSockets++;
    if (this.#closed) {
      if (this.#closedSockets === 2) this.#finish();
      return;
    }
    if (this.#closeIfFailed(side)) return;
    // One socket closed without an error event: either the normal end of a half-closed
    // pair (both FINs seen), or a destroy we did not cause. Either way the pair is over.
    const bothEnded = this.#downEnded && this.#upEnded;
    this.close('peer_closed', bothEnded ? 'proxy' : side);
  }

  /**
   * Ends the pair once. Resets (RST) the other side when the peer reset or died, so the
   * client's pool drops the connection at once, but only after the bytes already read
   * from the failed peer have been handed to it, as a direct connection would have shown
   * them (the peer's last words: an error reply before its reset). A clean end lets
   * queued bytes flush.
   */
  close(reason: EvictionReason, side: Side, error?: NodeJS.ErrnoException): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closedAt = this.#clock.now();
    this.#closeReason = reason;
    this.#closeSide = side;
    this.#events.onClosing(this, reason, side);
    void error;
    const abrupt = !CLEAN_REASONS.has(reason);
    // Client bytes held behind a probe were read before the client went: they are its last words.
    if (abrupt && side === 'downstream' && !this.up.destroyed) for (const chunk of this.#held) this.up.write(chunk);
    this.#held = [];
    for (const end of [this.down, this.up]) {
      if (end.destroyed) continue;
      const survivor = (side === 'upstream' && end === this.down) || (side === 'downstream' && end === this.up);
      if (abrupt && survivor) this.#resetAfterDelivery(end);
      else if (abrupt) end.reset();
      else {
        // Clean close: flush what is queued, send FIN, and make sure the connection goes
        // away even if the peer never reads.
        end.closeSoon();
      }
    }
    if (this.#closedSockets === 2) this.#finish();
  }

  /**
   * RST once every byte queued for the socket has reached the peer: first out of node into
   * the kernel, then out of the kernel's send queue into the peer's receive buffer, which
   * a reset empties too (a client not reading at that moment would lose what is still
   * there). The send queue is polled on the shared tick, bounded by the close grace.
   */
  #resetAfterDelivery(end: SpliceEnd): void {
    end.whenFlushed(() => {
      if (unacknowledgedBytes(end.tcp)) this.#resetWhenDelivered = end;
      else end.reset();
    });
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
