// The contract of an application-heartbeat codec: a pure state machine per connection,
// fed the bytes each way, with no sockets and no timers. The heartbeat engine
// (heartbeat/engine.ts) owns the timing; the codec only says what is safe.
//
// The rule that keeps codecs safe: when unsure, forward the bytes untouched and go
// 'off' for good (with a reason). A reply split across segments, several replies in
// one segment, and a probe reply followed by unrelated bytes in the same chunk must
// all work.
//
// Client bytes never race a probe inside a codec: while a probe is outstanding the
// engine holds the client's bytes back and feeds them to fromClient() only after the
// probe's reply has been consumed (or the connection is closed).

export type TrackerState = 'quiet' | 'busy' | 'off';

export interface CodecOptions {
  /** Custom probe bytes (protocol tcp). */
  readonly send?: Buffer;
  /** Custom expected reply (protocol tcp). */
  readonly expect?: Buffer;
}

export interface HeartbeatCodec {
  /** The config value and metric label. */
  readonly name: string;
  /** Whether a probe may be sent on a fresh upstream socket before any client byte (warm pool). */
  readonly probesBeforeClient: boolean;
  /** One tracker per connection. */
  track(options: CodecOptions): Tracker;
}

export interface Tracker {
  /** Observe bytes the client sends toward the upstream. Never alters them. */
  fromClient(chunk: Buffer): void;
  /**
   * Observe bytes from the upstream; returns the bytes to forward to the client, with
   * the reply to our own probe cut out. Returns the same Buffer when nothing was cut.
   */
  fromServer(chunk: Buffer): Buffer;
  /**
   * quiet: at a message boundary with nothing outstanding either way, a probe may go now;
   * busy: a request, reply, transaction, blocking command, ... is in progress;
   * off: the stream can no longer be followed (TLS, COPY, MONITOR, lost sync): never probe again.
   */
  readonly state: TrackerState;
  /** Why the tracker went off ('tls', 'copy', 'monitor', 'replication', 'desync', ...), null otherwise. */
  readonly offReason: string | null;
  /** True from probe() until its whole reply has been consumed by fromServer(). */
  readonly probing: boolean;
  /** The last probe was answered with an error (alive, but refused: Redis -NOPERM, MySQL ERR). */
  readonly probeRefused: boolean;
  /**
   * The server owes the client a reply to a request (the probe's own reply excluded):
   * what the route's responseTimeout watches. False when off: an opaque stream has no
   * request we could time.
   */
  readonly awaitingReply: boolean;
  /**
   * How long the oldest unanswered request may legitimately wait on top of responseTimeout:
   * 0 for an ordinary request, a blocking command's own timeout (BLPOP k 5: 5000),
   * Infinity for one that may wait for ever (BLPOP k 0, SUBSCRIBE).
   */
  readonly replyGraceMs: number;
  /**
   * Inside a transaction block (PostgreSQL status T/E, MySQL SERVER_STATUS_IN_TRANS): the
   * server's own idle-in-transaction guard should be left to fire, so no probe by default.
   */
  readonly inTransaction: boolean;
  /** The heartbeat bytes to write upstream. Only called when state === 'quiet' and !probing. */
  probe(): Buffer;
}
