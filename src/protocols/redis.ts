import { Cutter } from './cutter.js';
import type { CodecOptions, HeartbeatCodec, Tracker, TrackerState } from './types.js';

// Redis heartbeat: PING when no reply is outstanding, consuming its reply.
//
// Both directions are parsed incrementally, byte-state by byte-state, so a split at any
// offset is fine; bulk payloads are skipped by arithmetic, never buffered. The client side
// yields one expectation per command (a FIFO, run-length encoded so a deep pipeline costs
// a few numbers); the server side pops it on each reply. Out-of-band frames (RESP3 push
// '>', and in RESP2 subscribe mode the message/subscribe arrays) pop nothing.
//
// What keeps the connection busy (no probe): any outstanding reply, which covers the
// blocking commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN/MAX, BLMPOP, BZMPOP,
// XREAD/XREADGROUP BLOCK, WAIT, WAITAOF) for as long as they block; MULTI until
// EXEC/DISCARD/RESET (a PING inside MULTI would be queued into the EXEC reply); a command
// or a reply only partly transferred. MONITOR, CLIENT REPLY OFF/SKIP, SYNC/PSYNC make the
// stream one we can no longer pair with requests: off.
//
// The probe's reply is recognised before it reaches the client: +PONG, the RESP2
// subscribe-mode array ["pong", ""], or any error (-NOAUTH, -LOADING... prove the server
// answers). Bytes of a possible reply are held back only while they still match one of
// those literals (at most 22 bytes); anything else is forwarded and the tracker goes off.
// A RESP3 attribute arriving in the probe reply's place is taken as part of it (cut).
//
// Reply deadline (the route's responseTimeout): a reply is owed while any expectation is
// queued. A blocking command adds its own timeout as grace (BLPOP k 5: 5 s; the seconds
// or milliseconds argument each command takes), and one that may block for ever (timeout
// 0, SUBSCRIBE confirmations, an argument we could not read) gets Infinity: exempt.
// MONITOR and the other 'off' streams have no deadline at all. Inside MULTI a blocking
// command does not block.
//
// Not handled: CLIENT PAUSE ALL delays our PING like any command, so a pause longer than
// the heartbeat timeout reads as a dead upstream; a QUIT makes the tracker busy for good.

const PING = Buffer.from('*1\r\n$4\r\nPING\r\n', 'latin1');
const PONG_SIMPLE = Buffer.from('+PONG\r\n', 'latin1');
/** PING's reply in RESP2 while subscribed (pubsub "pong" array with an empty message). */
const PONG_ARRAY = Buffer.from('*2\r\n$4\r\npong\r\n$0\r\n\r\n', 'latin1');

const CR = 13;
const LF = 10;

// Expectations: what the server still owes, oldest first.
const EXPECT_REPLY = 0;
const EXPECT_PROBE = 1;
const EXPECT_HELLO = 2;
const EXPECT_RESET = 3;
/** (P|S)(UN)SUBSCRIBE: `count` confirmations (out-of-band frames), or one error reply. */
const EXPECT_SUB = 4;

// Client parser states.
const C_START = 0;
const C_COUNT = 1;
const C_ARG_HEADER = 2;
const C_ARG_LENGTH = 3;
const C_ARG_BODY = 4;
const C_INLINE = 5;

// Server parser states.
const S_TYPE = 0;
const S_LINE = 1;
const S_BULK = 2;

// What the tracker does with the server frame being parsed while a probe is outstanding.
const FRAME_FORWARD = 0;
/** Held back while it still matches a PONG literal. */
const FRAME_MATCH = 1;
/** Ours: dropped up to its end. */
const FRAME_CUT = 2;

const MAX_DEPTH = 64;
const CAPTURE = 16;

const word = (text: string): Buffer => Buffer.from(text, 'latin1');
const W = {
  subscribe: word('subscribe'),
  psubscribe: word('psubscribe'),
  ssubscribe: word('ssubscribe'),
  unsubscribe: word('unsubscribe'),
  punsubscribe: word('punsubscribe'),
  sunsubscribe: word('sunsubscribe'),
  multi: word('multi'),
  exec: word('exec'),
  discard: word('discard'),
  reset: word('reset'),
  hello: word('hello'),
  monitor: word('monitor'),
  client: word('client'),
  reply: word('reply'),
  on: word('on'),
  sync: word('sync'),
  psync: word('psync'),
  quit: word('quit'),
  block: word('block'),
};

// Blocking commands, by where their timeout argument is.
const BLOCK_NONE = 0;
/** BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BZPOPMIN, BZPOPMAX: the last argument, seconds. */
const BLOCK_LAST_SECONDS = 1;
/** BLMPOP, BZMPOP: the first argument, seconds. */
const BLOCK_FIRST_SECONDS = 2;
/** WAIT numreplicas timeout: milliseconds. */
const BLOCK_WAIT = 3;
/** WAITAOF numlocal numreplicas timeout: milliseconds. */
const BLOCK_WAITAOF = 4;
/** XREAD, XREADGROUP: the value after a BLOCK option, milliseconds; no BLOCK: not blocking. */
const BLOCK_OPTION = 5;
const BLOCKING: ReadonlyMap<string, number> = new Map([
  ...['blpop', 'brpop', 'brpoplpush', 'blmove', 'bzpopmin', 'bzpopmax'].map((name) => [name, BLOCK_LAST_SECONDS] as const),
  ['blmpop', BLOCK_FIRST_SECONDS],
  ['bzmpop', BLOCK_FIRST_SECONDS],
  ['wait', BLOCK_WAIT],
  ['waitaof', BLOCK_WAITAOF],
  ['xread', BLOCK_OPTION],
  ['xreadgroup', BLOCK_OPTION],
]);
/** The first letters of the blocking commands: any other command is told apart without making a string of its name. */
const BLOCKING_FIRST_BYTES: ReadonlySet<number> = new Set([...BLOCKING.keys()].map((name) => name.charCodeAt(0)));

const FAMILY_CLASSIC = 1;
const FAMILY_SHARD = 2;

/** Which subscription family a confirmation's kind belongs to (0: not a confirmation). */
function confirmationFamily(kind: Buffer, length: number): number {
  const text = kind.subarray(0, length);
  if (text.equals(W.subscribe) || text.equals(W.unsubscribe) || text.equals(W.psubscribe) || text.equals(W.punsubscribe)) {
    return FAMILY_CLASSIC;
  }
  if (text.equals(W.ssubscribe) || text.equals(W.sunsubscribe)) return FAMILY_SHARD;
  return 0;
}

class RedisTracker implements Tracker {
  #off: string | null = null;
  #probing = false;
  /** 2 or 3, learnt from HELLO's reply and RESET. */
  #protocol = 2;
  #inMulti = false;
  /** QUIT sent: the server answers +OK and closes; nothing more to probe. */
  #quitting = false;
  /** Subscription counts from the last confirmations: RESP2 subscribe mode while either is > 0. */
  #classicSubscriptions = 0;
  #shardSubscriptions = 0;

  // The expectation FIFO, run-length encoded: kinds[i] repeated counts[i] times (SUB: confirmations left).
  #kinds: number[] = [];
  #counts: number[] = [];
  /** Per entry: the reply deadline's grace (a blocking command's own timeout), ms. */
  #graces: number[] = [];
  #head = 0;
  #probeRefused = false;

  // Client parser.
  #cState = C_START;
  #cNumber = 0;
  #cNegative = false;
  #argc = 0;
  #argIndex = 0;
  #argLeft = 0;
  /** Whether the second and third arguments are captured too (a blocking command's timeouts, CLIENT REPLY). */
  #captureArgs = false;
  /** The first three arguments' first CAPTURE bytes, lowercased, and their real lengths. */
  #args = Buffer.alloc(3 * CAPTURE);
  #argLengths = [0, 0, 0];
  #inlineInToken = false;
  #inline = false;
  /** The first CAPTURE bytes of the latest argument past the third, and its real length. */
  #tail = Buffer.alloc(CAPTURE);
  #tailLength = 0;
  /** Blocking kind of the command being read (from its name, once read). */
  #blocking = BLOCK_NONE;
  /** XREAD(GROUP): the index of the argument after BLOCK, and its value in ms (NaN: no BLOCK). */
  #blockValueAt = -1;
  #blockMs = NaN;

  // Server parser.
  #sState = S_TYPE;
  #lineType = 0;
  #lineNumber = 0;
  #lineNegative = false;
  #lineUnknownLength = false;
  #lineBad = false;
  #lineDigits = 0;
  #bulkLeft = 0;
  #inStreamedString = false;
  #depth = 0;
  #remaining = new Int32Array(MAX_DEPTH);
  #isAttribute = new Uint8Array(MAX_DEPTH);
  /** Top-level frame: its type and element count, its first element's text and its third element's integer. */
  #frameType = 0;
  #frameCount = -1;
  #elementIndex = 0;
  #captureFirst = false;
  #parseThird = false;
  #first = Buffer.alloc(CAPTURE);
  #firstLength = 0;
  #third = -1;
  /** Offset just past the byte being parsed, for cut boundaries. */
  #at = 0;
  #frameEnded = false;

  // Probe reply handling.
  readonly #cutter = new Cutter();
  #frameDecided = false;
  #frameMode = FRAME_FORWARD;
  #literal: Buffer = PONG_SIMPLE;
  #matched = 0;
  #matchedBeforeChunk = 0;
  #matchStart = -1;

  get state(): TrackerState {
    if (this.#off !== null) return 'off';
    if (
      this.#probing ||
      this.#quitting ||
      this.#head < this.#kinds.length ||
      this.#inMulti ||
      this.#cState !== C_START ||
      this.#sState !== S_TYPE ||
      this.#depth > 0 ||
      this.#inStreamedString
    ) {
      return 'busy';
    }
    return 'quiet';
  }

  get offReason(): string | null {
    return this.#off;
  }

  get probing(): boolean {
    return this.#probing;
  }

  get probeRefused(): boolean {
    return this.#probeRefused;
  }

  get awaitingReply(): boolean {
    return this.#off === null && !this.#probing && this.#head < this.#kinds.length;
  }

  get replyGraceMs(): number {
    return this.#head < this.#kinds.length ? this.#graces[this.#head]! : 0;
  }

  readonly inTransaction = false; // MULTI only queues: nothing is locked until EXEC runs

  probe(): Buffer {
    this.#expect(EXPECT_PROBE, 1);
    this.#probing = true;
    this.#probeRefused = false;
    return PING;
  }

  // ---- client side ----

  fromClient(chunk: Buffer): void {
    if (this.#off !== null) return;
    let i = 0;
    const length = chunk.length;
    while (i < length && this.#off === null) {
      switch (this.#cState) {
        case C_START: {
          const byte = chunk[i]!;
          this.#blocking = BLOCK_NONE;
          this.#blockValueAt = -1;
          this.#blockMs = NaN;
          if (byte === 0x2a /* * */) {
            this.#cState = C_COUNT;
            this.#cNumber = 0;
            this.#cNegative = false;
            this.#inline = false;
            i++;
          } else {
            this.#cState = C_INLINE;
            this.#argc = 0;
            this.#inlineInToken = false;
            this.#inline = true;
          }
          break;
        }
        case C_COUNT:
        case C_ARG_LENGTH: {
          i = this.#clientNumber(chunk, i);
          break;
        }
        case C_ARG_HEADER: {
          if (chunk[i] !== 0x24 /* $ */) return this.#goOff('desync');
          this.#cState = C_ARG_LENGTH;
          this.#cNumber = 0;
          this.#cNegative = false;
          i++;
          break;
        }
        case C_ARG_BODY: {
          const take = Math.min(this.#argLeft, length - i);
          // argLeft counts the payload and its CRLF; capture the first bytes of the payload.
          const payloadLeft = this.#argLeft - 2;
          // The name always; later arguments only where they are ever looked at (#captureArgs).
          if (this.#argIndex === 0 || (this.#argIndex < 3 && this.#captureArgs)) {
            const offset = this.#argLengths[this.#argIndex]! - payloadLeft;
            const end = Math.min(take, payloadLeft, CAPTURE - offset);
            for (let k = 0; k < end; k++) this.#args[this.#argIndex * CAPTURE + offset + k] = lower(chunk[i + k]!);
          } else if (this.#argIndex >= 3 && this.#blocking !== BLOCK_NONE) {
            const offset = this.#tailLength - payloadLeft;
            const end = Math.min(take, payloadLeft, CAPTURE - offset);
            for (let k = 0; k < end; k++) this.#tail[offset + k] = lower(chunk[i + k]!);
          }
          this.#argLeft -= take;
          i += take;
          if (this.#argLeft === 0) {
            this.#argEnded();
            this.#argIndex++;
            if (this.#argIndex === this.#argc) this.#commandDone();
            else this.#cState = C_ARG_HEADER;
          }
          break;
        }
        case C_INLINE: {
          i = this.#clientInline(chunk, i);
          break;
        }
      }
    }
  }

  /** The digits of "*N\r\n" or "$N\r\n". */
  #clientNumber(chunk: Buffer, start: number): number {
    let i = start;
    while (i < chunk.length) {
      const byte = chunk[i++]!;
      if (byte >= 0x30 && byte <= 0x39) {
        this.#cNumber = this.#cNumber * 10 + (byte - 0x30);
      } else if (byte === 0x2d /* - */) {
        this.#cNegative = true;
      } else if (byte === CR) {
        // the LF ends the number
      } else if (byte === LF) {
        const value = this.#cNegative ? -this.#cNumber : this.#cNumber;
        if (this.#cState === C_COUNT) {
          // Redis ignores "*0" and "*-1": no command, no reply.
          if (value <= 0) {
            this.#cState = C_START;
          } else {
            this.#argc = value;
            this.#argIndex = 0;
            this.#argLengths[0] = this.#argLengths[1] = this.#argLengths[2] = 0;
            this.#cState = C_ARG_HEADER;
          }
        } else {
          if (value < 0) {
            this.#goOff('desync');
            return i;
          }
          if (this.#argIndex < 3) this.#argLengths[this.#argIndex] = value;
          else this.#tailLength = value;
          this.#argLeft = value + 2;
          this.#cState = C_ARG_BODY;
        }
        return i;
      } else {
        this.#goOff('desync');
        return i;
      }
    }
    return i;
  }

  /**
   * An inline command: space-separated words up to LF; an empty line is ignored by Redis.
   * Quotes are not interpreted (only the argument count of (UN)SUBSCRIBE depends on it, and
   * an overcount only keeps the connection busy).
   */
  #clientInline(chunk: Buffer, start: number): number {
    let i = start;
    while (i < chunk.length) {
      const byte = chunk[i++]!;
      if (byte === LF) {
        this.#cState = C_START;
        if (this.#argc > 0) this.#commandDone();
        else this.#cState = C_START;
        return i;
      }
      if (byte === 0x20 || byte === 0x09 || byte === CR) {
        this.#inlineInToken = false;
        continue;
      }
      if (!this.#inlineInToken) {
        this.#inlineInToken = true;
        if (this.#argc < 3) this.#argLengths[this.#argc] = 0;
        this.#argc++;
      }
      const index = this.#argc - 1;
      if (index < 3) {
        const length = this.#argLengths[index]!;
        if (length < CAPTURE) this.#args[index * CAPTURE + length] = lower(byte);
        this.#argLengths[index] = length + 1;
      }
    }
    return i;
  }

  /** The captured text of argument `index` (past the third: only the latest one), or null when longer than we capture. */
  #argText(index: number): Buffer | null {
    if (index < 3) {
      const length = this.#argLengths[index]!;
      return length <= CAPTURE ? this.#args.subarray(index * CAPTURE, index * CAPTURE + length) : null;
    }
    return this.#tailLength <= CAPTURE ? this.#tail.subarray(0, this.#tailLength) : null;
  }

  /** The blocking kind of the command named by the captured first argument (BLOCK_NONE for most, at a glance). */
  #blockingKind(): number {
    const length = this.#argLengths[0]!;
    if (length === 0 || length > CAPTURE || !BLOCKING_FIRST_BYTES.has(this.#args[0]!)) return BLOCK_NONE;
    return BLOCKING.get(this.#args.toString('latin1', 0, length)) ?? BLOCK_NONE;
  }

  /** A multibulk argument was read whole: learn the blocking kind from the name, XREAD's BLOCK value. */
  #argEnded(): void {
    const index = this.#argIndex;
    if (index === 0) {
      this.#blocking = this.#blockingKind();
      this.#captureArgs = this.#blocking !== BLOCK_NONE || this.#argIs(0, W.client);
      return;
    }
    if (this.#blocking !== BLOCK_OPTION) return;
    if (index === this.#blockValueAt) this.#blockMs = timeoutMs(this.#argText(index), 1);
    else if (this.#argText(index)?.equals(W.block)) this.#blockValueAt = index + 1;
  }

  /** The reply deadline's grace for the command just read: its own timeout if it blocks. */
  #commandGraceMs(): number {
    if (this.#inMulti) return 0;
    const argc = this.#argc;
    const kind = this.#inline ? this.#blockingKind() : this.#blocking;
    if (kind === BLOCK_NONE) return 0;
    // An inline command's arguments past the third are not captured: exempt what might block.
    const known = (index: number): Buffer | null => (index < argc && (index < 3 || (!this.#inline && index === argc - 1)) ? this.#argText(index) : null);
    switch (kind) {
      case BLOCK_LAST_SECONDS:
        return timeoutMs(known(argc - 1), 1000);
      case BLOCK_FIRST_SECONDS:
        return timeoutMs(known(1), 1000);
      case BLOCK_WAIT:
        return timeoutMs(known(2), 1);
      case BLOCK_WAITAOF:
        return timeoutMs(known(3), 1);
      case BLOCK_OPTION:
        if (this.#inline) return Infinity;
        return Number.isNaN(this.#blockMs) ? 0 : this.#blockMs;
      default:
        return 0;
    }
  }

  #argIs(index: number, expected: Buffer): boolean {
    if (this.#argLengths[index] !== expected.length || index >= this.#argc) return false;
    const offset = index * CAPTURE;
    for (let k = 0; k < expected.length; k++) if (this.#args[offset + k] !== expected[k]) return false;
    return true;
  }

  #commandDone(): void {
    this.#cState = C_START;
    const argc = this.#argc;
    if (this.#argIs(0, W.subscribe) || this.#argIs(0, W.psubscribe) || this.#argIs(0, W.ssubscribe)) {
      // Inside MULTI it is only QUEUED; without a channel it is an error: one ordinary reply.
      if (this.#inMulti || argc < 2) this.#expect(EXPECT_REPLY, 1);
      else this.#expect(EXPECT_SUB, argc - 1);
    } else if (this.#argIs(0, W.unsubscribe) || this.#argIs(0, W.punsubscribe) || this.#argIs(0, W.sunsubscribe)) {
      // Without arguments: one confirmation per subscription, at least one. The first
      // settles the command; later ones are out-of-band frames like any message.
      if (this.#inMulti) this.#expect(EXPECT_REPLY, 1);
      else this.#expect(EXPECT_SUB, Math.max(1, argc - 1));
    } else if (this.#argIs(0, W.multi)) {
      this.#inMulti = true;
      this.#expect(EXPECT_REPLY, 1);
    } else if (this.#argIs(0, W.exec) || this.#argIs(0, W.discard)) {
      this.#inMulti = false;
      this.#expect(EXPECT_REPLY, 1);
    } else if (this.#argIs(0, W.reset) || this.#argIs(0, W.hello)) {
      // Inside MULTI they would only be queued and take effect inside EXEC, out of our sight.
      if (this.#inMulti && !this.#argIs(0, W.reset)) return this.#goOff('desync');
      this.#inMulti = false;
      this.#expect(this.#argIs(0, W.reset) ? EXPECT_RESET : EXPECT_HELLO, 1);
    } else if (this.#argIs(0, W.monitor)) {
      this.#goOff('monitor');
    } else if (this.#argIs(0, W.client) && this.#argIs(1, W.reply) && argc >= 3 && !this.#argIs(2, W.on)) {
      this.#goOff('client-reply');
    } else if (this.#argIs(0, W.sync) || this.#argIs(0, W.psync)) {
      this.#goOff('replication');
    } else {
      if (this.#argIs(0, W.quit)) this.#quitting = true;
      this.#expect(EXPECT_REPLY, 1, this.#commandGraceMs());
    }
  }

  // ---- expectation FIFO ----

  #expect(kind: number, count: number, graceMs = 0): void {
    const last = this.#kinds.length - 1;
    if (kind === EXPECT_REPLY && graceMs === 0 && last >= this.#head && this.#kinds[last] === EXPECT_REPLY && this.#graces[last] === 0) {
      this.#counts[last]! += count;
      return;
    }
    this.#kinds.push(kind);
    this.#counts.push(count);
    // Subscription confirmations may take as long as they like: SUBSCRIBE modes are exempt.
    this.#graces.push(kind === EXPECT_SUB ? Infinity : graceMs);
  }

  #headKind(): number {
    return this.#head < this.#kinds.length ? this.#kinds[this.#head]! : -1;
  }

  /** Settle `count` of the head entry (all of it for count = Infinity). */
  #settle(count: number): void {
    const left = this.#counts[this.#head]! - count;
    if (left > 0) {
      this.#counts[this.#head] = left;
      return;
    }
    this.#head++;
    if (this.#head === this.#kinds.length) {
      this.#kinds.length = 0;
      this.#counts.length = 0;
      this.#graces.length = 0;
      this.#head = 0;
    } else if (this.#head > 64) {
      this.#kinds.splice(0, this.#head);
      this.#counts.splice(0, this.#head);
      this.#graces.splice(0, this.#head);
      this.#head = 0;
    }
  }

  // ---- server side ----

  fromServer(chunk: Buffer): Buffer {
    if (this.#off !== null) return chunk;
    if (!this.#probing && this.#frameMode === FRAME_FORWARD) {
      this.#parse(chunk, 0, chunk.length);
      return chunk;
    }
    this.#cutter.begin(chunk);
    this.#matchedBeforeChunk = this.#matched;
    this.#matchStart = -1;
    let i = 0;
    while (i < chunk.length && this.#off === null) {
      if (this.#probing && !this.#frameDecided && this.#atFrameStart()) this.#decide(chunk[i]!, i);
      if (this.#frameMode === FRAME_MATCH) {
        if (chunk[i] === this.#literal[this.#matched]) {
          this.#matched++;
          // The whole literal matched: the frame is the probe's reply (the parser ends it on this byte).
          if (this.#matched === this.#literal.length) this.#frameMode = FRAME_CUT;
        } else {
          this.#releaseHeld();
        }
        i = this.#parse(chunk, i, i + 1);
      } else {
        i = this.#parse(chunk, i, chunk.length);
      }
    }
    return this.#cutter.finish();
  }

  #atFrameStart(): boolean {
    return this.#sState === S_TYPE && this.#depth === 0 && !this.#inStreamedString;
  }

  /** Whether the frame starting with `type` may be the probe's reply, decided as early as it can be. */
  #decide(type: number, offset: number): void {
    this.#frameDecided = true;
    if (this.#headKind() !== EXPECT_PROBE) return;
    switch (type) {
      case 0x3e /* > push */:
        return;
      case 0x2d /* - error */:
      case 0x21 /* ! blob error */:
        // Alive, but refusing our PING (-NOPERM, -NOAUTH, -LOADING): cut, counted as an error.
        this.#probeRefused = true;
        this.#frameMode = FRAME_CUT;
        this.#cutter.skipFrom(offset);
        return;
      case 0x7c /* | attribute: belongs to the reply after it */:
        this.#frameMode = FRAME_CUT;
        this.#cutter.skipFrom(offset);
        return;
      case 0x2b /* + */:
        this.#startMatch(PONG_SIMPLE, offset);
        return;
      case 0x2a /* * */:
        if (this.#protocol === 2) this.#startMatch(PONG_ARRAY, offset);
        return;
      default:
        return;
    }
  }

  #startMatch(literal: Buffer, offset: number): void {
    this.#frameMode = FRAME_MATCH;
    this.#literal = literal;
    this.#matched = 0;
    this.#matchedBeforeChunk = 0;
    this.#matchStart = offset;
    this.#cutter.skipFrom(offset);
  }

  /** A held frame turned out not to be a PONG: give its bytes back, in order. */
  #releaseHeld(): void {
    this.#cutter.release(
      this.#literal.subarray(0, this.#matchedBeforeChunk),
      this.#matchStart >= 0 ? this.#matchStart : 0,
    );
    this.#frameMode = FRAME_FORWARD;
    this.#matched = 0;
  }

  /** Parse chunk[from, to); returns where it stopped (early at a frame end while probing). */
  #parse(chunk: Buffer, from: number, to: number): number {
    let i = from;
    while (i < to && this.#off === null) {
      switch (this.#sState) {
        case S_TYPE:
          this.#beginElement(chunk[i++]!);
          break;
        case S_LINE:
          i = this.#readLine(chunk, i, to);
          break;
        case S_BULK: {
          const take = Math.min(this.#bulkLeft, to - i);
          if (this.#captureFirst) {
            const payloadLeft = this.#bulkLeft - 2;
            const end = Math.min(take, payloadLeft, CAPTURE - this.#firstLength);
            for (let k = 0; k < end; k++) this.#first[this.#firstLength++] = chunk[i + k]!;
          }
          this.#bulkLeft -= take;
          i += take;
          if (this.#bulkLeft === 0) {
            this.#at = i;
            this.#sState = S_TYPE;
            // A streamed string goes on with its next ";" chunk header.
            if (!this.#inStreamedString) this.#elementDone(false);
          }
          break;
        }
      }
      if (this.#frameEnded) {
        this.#frameEnded = false;
        if (this.#probing || this.#frameMode !== FRAME_FORWARD) return i;
      }
    }
    return i;
  }

  #beginElement(type: number): void {
    if (this.#inStreamedString && type !== 0x3b /* ; */) return this.#goOff('desync');
    switch (type) {
      case 0x2b: case 0x2d: case 0x3a: case 0x24: case 0x2a: case 0x25: case 0x7e: case 0x3e: case 0x7c:
      case 0x5f: case 0x2c: case 0x23: case 0x28: case 0x3d: case 0x21: case 0x3b: case 0x2e:
        break;
      default:
        return this.#goOff('desync');
    }
    const topLevel = this.#depth === 0;
    if (topLevel && type !== 0x7c) {
      this.#frameType = type;
      this.#frameCount = -1;
    }
    const inFrame = this.#depth === 1 && this.#isAttribute[0] === 0;
    this.#captureFirst = inFrame && this.#elementIndex === 0 && !this.#inStreamedString;
    this.#parseThird = inFrame && this.#elementIndex === 2 && type === 0x3a;
    if (this.#captureFirst) this.#firstLength = 0;
    this.#lineType = type;
    this.#lineNumber = 0;
    this.#lineDigits = 0;
    this.#lineNegative = false;
    this.#lineUnknownLength = false;
    this.#lineBad = false;
    this.#sState = S_LINE;
  }

  #lineNeedsNumber(): boolean {
    switch (this.#lineType) {
      case 0x24: case 0x3d: case 0x21: case 0x2a: case 0x7e: case 0x3e: case 0x25: case 0x7c: case 0x3b:
        return true;
      case 0x3a:
        return this.#parseThird;
      default:
        return false;
    }
  }

  #readLine(chunk: Buffer, start: number, to: number): number {
    const needsNumber = this.#lineNeedsNumber();
    const capture = this.#captureFirst && (this.#lineType === 0x2b || this.#lineType === 0x2d);
    if (!needsNumber && !capture) {
      const newline = chunk.indexOf(LF, start);
      if (newline === -1 || newline >= to) return to;
      this.#at = newline + 1;
      this.#lineDone();
      return newline + 1;
    }
    let i = start;
    while (i < to) {
      const byte = chunk[i++]!;
      if (byte === LF) {
        this.#at = i;
        this.#lineDone();
        return i;
      }
      if (byte === CR) continue;
      if (capture) {
        if (this.#firstLength < CAPTURE) this.#first[this.#firstLength++] = byte;
        continue;
      }
      if (byte >= 0x30 && byte <= 0x39) {
        this.#lineNumber = this.#lineNumber * 10 + (byte - 0x30);
        this.#lineDigits++;
      } else if (byte === 0x2d && this.#lineDigits === 0) {
        this.#lineNegative = true;
      } else if (byte === 0x3f /* ? */ && this.#lineDigits === 0) {
        this.#lineUnknownLength = true;
      } else {
        this.#lineBad = true;
      }
    }
    return i;
  }

  #lineDone(): void {
    this.#sState = S_TYPE;
    const type = this.#lineType;
    const value = this.#lineNegative ? -this.#lineNumber : this.#lineNumber;
    const needsNumber = this.#lineNeedsNumber();
    if (needsNumber && (this.#lineBad || (this.#lineDigits === 0 && !this.#lineUnknownLength))) {
      return this.#goOff('desync');
    }
    switch (type) {
      case 0x3a: // integer
        if (this.#parseThird) this.#third = value;
        return this.#elementDone(false);
      case 0x24: // bulk string, verbatim, blob error
      case 0x3d:
      case 0x21:
        if (this.#lineUnknownLength) {
          this.#inStreamedString = true;
          return;
        }
        if (value < 0) return this.#elementDone(false);
        this.#bulkLeft = value + 2;
        this.#sState = S_BULK;
        return;
      case 0x3b: // a streamed string's chunk header; length 0 ends it
        if (value <= 0) {
          this.#inStreamedString = false;
          return this.#elementDone(false);
        }
        this.#captureFirst = false;
        this.#bulkLeft = value + 2;
        this.#sState = S_BULK;
        return;
      case 0x2a: // array, set, push, map, attribute
      case 0x7e:
      case 0x3e:
      case 0x25:
      case 0x7c: {
        const attribute = type === 0x7c;
        if (this.#lineUnknownLength) return this.#pushLevel(-1, attribute);
        if (value < 0) return this.#elementDone(false);
        const count = type === 0x25 || attribute ? value * 2 : value;
        if (this.#depth === 0 && !attribute) this.#frameCount = value;
        if (count === 0) return this.#elementDone(attribute);
        return this.#pushLevel(count, attribute);
      }
      case 0x2e: {
        // The end of a streamed aggregate.
        const level = this.#depth - 1;
        if (level < 0 || this.#remaining[level] !== -1) return this.#goOff('desync');
        this.#depth--;
        return this.#elementDone(this.#isAttribute[level] === 1);
      }
      default: // simple string, error, double, boolean, null, big number
        return this.#elementDone(false);
    }
  }

  #pushLevel(count: number, attribute: boolean): void {
    if (this.#depth >= MAX_DEPTH) return this.#goOff('desync');
    this.#remaining[this.#depth] = count;
    this.#isAttribute[this.#depth] = attribute ? 1 : 0;
    this.#depth++;
  }

  /** An element ended: count it in its parent, closing every aggregate it completes. */
  #elementDone(attribute: boolean): void {
    let isAttribute = attribute;
    for (;;) {
      if (this.#depth === 0) {
        if (isAttribute) this.#attributeDone();
        else this.#frameDone();
        return;
      }
      // An attribute inside an aggregate is not one of its elements.
      if (isAttribute) return;
      const level = this.#depth - 1;
      if (level === 0 && this.#isAttribute[0] === 0) this.#elementIndex++;
      const left = this.#remaining[level]!;
      if (left === -1) return;
      this.#remaining[level] = left - 1;
      if (left - 1 > 0) return;
      isAttribute = this.#isAttribute[level] === 1;
      this.#depth--;
    }
  }

  /** A top-level attribute ended: the frame it describes follows. */
  #attributeDone(): void {
    this.#endProbeCut();
    this.#frameDecided = false;
    this.#frameEnded = true;
  }

  #frameDone(): void {
    const push = this.#isOutOfBand();
    if (push) {
      this.#onOutOfBand();
    } else {
      switch (this.#headKind()) {
        case -1:
          // A reply nobody asked for: we have lost track of the pairing.
          this.#resetFrame();
          return this.#goOff('desync');
        case EXPECT_PROBE:
          if (this.#frameMode !== FRAME_CUT) {
            // The reply in the probe's place is not one we recognise: it went to the client.
            this.#resetFrame();
            return this.#goOff('desync');
          }
          this.#endProbeCut();
          this.#probing = false;
          break;
        case EXPECT_HELLO:
          if (this.#frameType === 0x25) this.#protocol = 3;
          else if (this.#frameType === 0x2a) this.#protocol = 2;
          break;
        case EXPECT_RESET:
          this.#protocol = 2;
          this.#classicSubscriptions = 0;
          this.#shardSubscriptions = 0;
          break;
        default:
          break;
      }
      this.#settle(this.#headKind() === EXPECT_SUB ? Infinity : 1);
    }
    this.#resetFrame();
  }

  #endProbeCut(): void {
    if (this.#frameMode === FRAME_CUT) this.#cutter.resumeAt(this.#at);
    this.#frameMode = FRAME_FORWARD;
    this.#matched = 0;
  }

  #resetFrame(): void {
    this.#frameEnded = true;
    this.#frameDecided = false;
    this.#elementIndex = 0;
    this.#firstLength = 0;
    this.#third = -1;
    this.#frameCount = -1;
  }

  /** RESP3 pushes; in RESP2 subscribe mode, the arrays of three or more (messages, confirmations). */
  #isOutOfBand(): boolean {
    if (this.#frameType === 0x3e) return true;
    if (this.#protocol !== 2 || this.#frameType !== 0x2a || this.#frameCount < 3) return false;
    return this.#classicSubscriptions > 0 || this.#shardSubscriptions > 0 || this.#headKind() === EXPECT_SUB;
  }

  #onOutOfBand(): void {
    const family = confirmationFamily(this.#first, this.#firstLength);
    if (family === 0) return;
    if (this.#third >= 0) {
      if (family === FAMILY_CLASSIC) this.#classicSubscriptions = this.#third;
      else this.#shardSubscriptions = this.#third;
    }
    if (this.#headKind() === EXPECT_SUB) this.#settle(1);
  }

  #goOff(reason: string): void {
    if (this.#off !== null) return;
    this.#off = reason;
    this.#probing = false;
    // Whatever was being held or dropped is forwarded from here on.
    if (this.#frameMode === FRAME_MATCH) this.#releaseHeld();
    else if (this.#frameMode === FRAME_CUT) this.#cutter.resumeAt(this.#at);
    this.#frameMode = FRAME_FORWARD;
  }
}

/**
 * A blocking command's timeout argument in ms (`unitMs` per unit): 0 (block for ever) and
 * an argument too long to read are Infinity; one the server rejects at once (negative, not
 * a number) is 0, since it does not block.
 */
function timeoutMs(text: Buffer | null, unitMs: number): number {
  if (text === null) return Infinity;
  const value = Number(text.toString('latin1'));
  if (!Number.isFinite(value) || value < 0) return 0;
  return value === 0 ? Infinity : value * unitMs;
}

function lower(byte: number): number {
  return byte >= 0x41 && byte <= 0x5a ? byte + 0x20 : byte;
}

export const redisCodec: HeartbeatCodec = {
  name: 'redis',
  probesBeforeClient: true,
  track(_options: CodecOptions): Tracker {
    return new RedisTracker();
  },
};
