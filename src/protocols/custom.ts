import type { CodecOptions, HeartbeatCodec, Tracker, TrackerState } from './types.js';

// A custom heartbeat for protocol tcp: the configured `send` bytes, answered by exactly
// the configured `expect` bytes.
//
// A raw stream has no framing, so the only message boundary we know is the engine's own:
// both directions silent for `every`. The tracker is therefore quiet whenever no probe is
// outstanding. The risks, to state in the docs: a client that paused in the middle of a
// request gets the probe spliced into it, and a reply that arrives late (after `every` of
// silence) sits where the probe's answer is expected.
//
// The reply is the first expect.length bytes after the probe. They are held back (never
// more than expect.length) while they match; a full match is dropped, the bytes after it
// are forwarded. A mismatch means the bytes were not ours: they are all forwarded, in
// order, and the tracker goes off('desync') for good. The risk that remains: a late reply
// to the client that happens to begin with exactly the expected bytes is eaten, and the
// real answer to our probe then reaches the client.
//
// An empty `expect` is a one-way heartbeat (a no-op the upstream does not answer, such as
// a blank line for a line protocol that ignores them): it keeps payload-counting
// middleboxes alive but proves nothing about the application; probing ends as soon as the
// bytes are written. Config validation should require `expect`/`expectHex` to be given
// whenever `send`/`sendHex` is (an empty string meaning one-way, on purpose): a forgotten
// expect would otherwise deliver the upstream's answer to the client. A missing expect
// reaching this codec is treated as empty.

const EMPTY = Buffer.alloc(0);

class CustomTracker implements Tracker {
  readonly #send: Buffer;
  readonly #expect: Buffer;
  #off: string | null = null;
  #probing = false;
  /** How many bytes of `expect` have arrived since the probe. */
  #matched = 0;
  #clientSpoke = false;

  constructor(send: Buffer, expect: Buffer) {
    this.#send = send;
    this.#expect = expect;
  }

  get state(): TrackerState {
    if (this.#off !== null) return 'off';
    return this.#probing ? 'busy' : 'quiet';
  }

  get offReason(): string | null {
    return this.#off;
  }

  get probing(): boolean {
    return this.#probing;
  }

  /** Client bytes not yet followed by a server byte: the only notion of "a reply is owed" a raw stream has. */
  get awaitingReply(): boolean {
    return this.#clientSpoke && this.#off === null;
  }

  // Only the exact expected bytes are taken as the reply; no transactions on a raw stream.
  readonly probeRefused = false;
  readonly replyGraceMs = 0;
  readonly inTransaction = false;

  probe(): Buffer {
    this.#probing = this.#expect.length > 0;
    this.#matched = 0;
    return this.#send;
  }

  fromClient(chunk: Buffer): void {
    // No framing to follow: only that the client spoke.
    if (chunk.length > 0) this.#clientSpoke = true;
  }

  fromServer(chunk: Buffer): Buffer {
    if (chunk.length > 0) this.#clientSpoke = false;
    if (!this.#probing) return chunk;
    const expect = this.#expect;
    const heldBefore = this.#matched;
    let i = 0;
    while (i < chunk.length && this.#matched < expect.length) {
      if (chunk[i] !== expect[this.#matched]) {
        this.#off = 'desync';
        this.#probing = false;
        this.#matched = 0;
        return heldBefore === 0 ? chunk : Buffer.concat([expect.subarray(0, heldBefore), chunk]);
      }
      this.#matched++;
      i++;
    }
    if (this.#matched < expect.length) return EMPTY;
    this.#probing = false;
    this.#matched = 0;
    return i === chunk.length ? EMPTY : chunk.subarray(i);
  }
}

export const customCodec: HeartbeatCodec = {
  name: 'tcp',
  // Custom bytes are meant for an established session of the user's protocol; a fresh
  // socket may still be in the upstream's greeting or handshake.
  probesBeforeClient: false,
  track(options: CodecOptions): Tracker {
    if (!options.send || options.send.length === 0) throw new Error('a custom heartbeat needs send bytes');
    return new CustomTracker(options.send, options.expect ?? EMPTY);
  },
};
