import { TCHAR } from './head-parser.js';
import { HOP_BY_HOP, NEVER_NOMINATED } from './headers.js';

// Finds where a message body ends (RFC 9112 6.3, 7.1) as its bytes stream through:
// Content-Length, chunked, or "until the connection closes". Chunked bodies are checked
// byte by byte on their framing (sizes, CRLFs, extensions, trailer lines) and skipped in
// bulk on their data, so that a body is either forwarded exactly as it was framed (wire
// mode: the next hop parses the same boundaries we did) or with the chunk framing
// removed (decode mode: for an HTTP/1.0 client, which cannot read chunked).

/** Receives body bytes as ranges of the buffers fed in (no copies). */
export interface BodySink {
  bodyBytes(buf: Buffer, start: number, end: number): void;
}

export const BODY_MORE = -1;
export const BODY_ERROR = -2;

const KIND_LENGTH = 0;
const KIND_CHUNKED = 1;
const KIND_CLOSE = 2;

// Chunked parser states.
const SIZE_FIRST = 0;
const SIZE = 1;
const SIZE_BWS = 2;
const EXT = 3;
const SIZE_LF = 4;
const DATA = 5;
const DATA_CR = 6;
const DATA_LF = 7;
const TRAILER_START = 8;
const TRAILER_NAME = 9;
const TRAILER_VALUE = 10;
const TRAILER_LF = 11;
const FINAL_LF = 12;

/** 13 hex digits: 2^52 bytes, beyond any real chunk and exact as a double. */
const MAX_SIZE_DIGITS = 13;
/** Chunk extensions per chunk line; nobody uses them, so a generous bound is enough. */
const MAX_EXTENSION = 4096;
const MAX_TRAILERS = 16 * 1024;

/**
 * Fields a trailer may never carry (RFC 9110 6.5.1: framing, routing and connection
 * fields are read before the content). Trailers travel on inside the chunked framing, so
 * one of these would reach the next hop unstripped, where a parser that merges trailers
 * into the header section reads a second Content-Length or Host: the message is refused.
 */
const FORBIDDEN_TRAILERS: ReadonlySet<string> = new Set([...HOP_BY_HOP, ...NEVER_NOMINATED]);
/** Longer than every forbidden name: a name past this is allowed without being kept whole. */
const TRAILER_NAME_KEPT = 20;

const HEX = new Int8Array(256).fill(-1);
for (let c = 0; c < 10; c++) HEX[0x30 + c] = c;
for (let c = 0; c < 6; c++) {
  HEX[0x41 + c] = 10 + c;
  HEX[0x61 + c] = 10 + c;
}

/** Control characters (other than HTAB) may not appear in extensions or trailer values. */
function isControl(byte: number): boolean {
  return (byte < 0x20 && byte !== 0x09) || byte === 0x7f;
}

export class BodyReader {
  readonly #kind: number;
  readonly #decode: boolean;
  readonly #sink: BodySink;
  /** Length mode: bytes still to come. Chunked mode: data bytes left in the current chunk. */
  #remaining: number;
  #state = SIZE_FIRST;
  #digits = 0;
  #extension = 0;
  #trailerBytes = 0;
  /** The trailer field name being read (its first TRAILER_NAME_KEPT characters). */
  #trailerName = '';
  /** Why the body was refused (chunked framing), for logs. */
  error: string | null = null;

  private constructor(kind: number, remaining: number, decode: boolean, sink: BodySink) {
    this.#kind = kind;
    this.#remaining = remaining;
    this.#decode = decode;
    this.#sink = sink;
  }

  static length(length: number, sink: BodySink): BodyReader {
    return new BodyReader(KIND_LENGTH, length, false, sink);
  }

  /** decode: hand on the data only (framing and trailers removed); else the bytes as framed. */
  static chunked(sink: BodySink, decode: boolean): BodyReader {
    return new BodyReader(KIND_CHUNKED, 0, decode, sink);
  }

  static untilClose(sink: BodySink): BodyReader {
    return new BodyReader(KIND_CLOSE, 0, false, sink);
  }

  /** The body ends when the connection does (the only framing an EOF completes). */
  get endsAtClose(): boolean {
    return this.#kind === KIND_CLOSE;
  }

  /**
   * Feeds buf[start..]: body bytes go to the sink; returns the offset just past the end of
   * the body when it ended in this buffer, BODY_MORE when it needs more, BODY_ERROR when
   * the chunked framing is invalid (nothing past the error reached the sink).
   */
  feed(buf: Buffer, start: number): number {
    if (this.#kind === KIND_LENGTH) {
      const take = Math.min(this.#remaining, buf.length - start);
      if (take > 0) {
        this.#remaining -= take;
        this.#sink.bodyBytes(buf, start, start + take);
      }
      return this.#remaining === 0 ? start + take : BODY_MORE;
    }
    if (this.#kind === KIND_CLOSE) {
      if (buf.length > start) this.#sink.bodyBytes(buf, start, buf.length);
      return BODY_MORE;
    }
    return this.#feedChunked(buf, start);
  }

  #feedChunked(buf: Buffer, start: number): number {
    const end = buf.length;
    const decode = this.#decode;
    let at = start;
    let state = this.#state;
    while (at < end) {
      if (state === DATA) {
        const take = Math.min(this.#remaining, end - at);
        if (decode) this.#sink.bodyBytes(buf, at, at + take);
        this.#remaining -= take;
        at += take;
        if (this.#remaining === 0) state = DATA_CR;
        continue;
      }
      const byte = buf[at]!;
      switch (state) {
        case SIZE_FIRST:
        case SIZE: {
          const digit = HEX[byte]!;
          if (digit >= 0) {
            if (++this.#digits > MAX_SIZE_DIGITS) return this.#fail(buf, start, at, 'chunk size too large');
            this.#remaining = this.#remaining * 16 + digit;
            state = SIZE;
          } else if (state === SIZE_FIRST) {
            return this.#fail(buf, start, at, 'invalid chunk size');
          } else if (byte === 0x0d) {
            state = SIZE_LF;
          } else if (byte === 0x3b) {
            state = EXT;
          } else if (byte === 0x20 || byte === 0x09) {
            state = SIZE_BWS;
          } else {
            return this.#fail(buf, start, at, 'invalid chunk size');
          }
          break;
        }
        case SIZE_BWS:
          // BWS is allowed only before a chunk extension (RFC 9112 7.1.1).
          if (byte === 0x3b) state = EXT;
          else if (byte !== 0x20 && byte !== 0x09) return this.#fail(buf, start, at, 'invalid chunk size');
          break;
        case EXT:
          if (byte === 0x0d) state = SIZE_LF;
          else if (isControl(byte) || ++this.#extension > MAX_EXTENSION) return this.#fail(buf, start, at, 'invalid chunk extension');
          break;
        case SIZE_LF:
          if (byte !== 0x0a) return this.#fail(buf, start, at, 'chunk size line without CRLF');
          this.#digits = 0;
          this.#extension = 0;
          state = this.#remaining === 0 ? TRAILER_START : DATA;
          break;
        case DATA_CR:
          if (byte !== 0x0d) return this.#fail(buf, start, at, 'chunk data longer than its size');
          state = DATA_LF;
          break;
        case DATA_LF:
          if (byte !== 0x0a) return this.#fail(buf, start, at, 'chunk data without CRLF');
          state = SIZE_FIRST;
          break;
        case TRAILER_START:
          if (byte === 0x0d) {
            state = FINAL_LF;
          } else {
            // The byte is the first of a trailer field's name.
            if (TCHAR[byte] !== 1 || ++this.#trailerBytes > MAX_TRAILERS) return this.#fail(buf, start, at, 'invalid trailer line');
            this.#trailerName = String.fromCharCode(byte);
            state = TRAILER_NAME;
          }
          break;
        case TRAILER_NAME:
          if (++this.#trailerBytes > MAX_TRAILERS) return this.#fail(buf, start, at, 'trailers too large');
          if (byte === 0x3a) {
            if (FORBIDDEN_TRAILERS.has(this.#trailerName.toLowerCase())) return this.#fail(buf, start, at, 'framing or connection field in a trailer');
            state = TRAILER_VALUE;
          } else if (TCHAR[byte] !== 1) {
            return this.#fail(buf, start, at, 'invalid trailer line');
          } else if (this.#trailerName.length < TRAILER_NAME_KEPT) {
            this.#trailerName += String.fromCharCode(byte);
          }
          break;
        case TRAILER_VALUE:
          if (++this.#trailerBytes > MAX_TRAILERS) return this.#fail(buf, start, at, 'trailers too large');
          if (byte === 0x0d) state = TRAILER_LF;
          else if (isControl(byte)) return this.#fail(buf, start, at, 'invalid trailer value');
          break;
        case TRAILER_LF:
          if (byte !== 0x0a) return this.#fail(buf, start, at, 'trailer line without CRLF');
          state = TRAILER_START;
          break;
        case FINAL_LF: {
          if (byte !== 0x0a) return this.#fail(buf, start, at, 'chunked body without final CRLF');
          this.#state = FINAL_LF;
          if (!decode) this.#sink.bodyBytes(buf, start, at + 1);
          return at + 1;
        }
      }
      at++;
    }
    this.#state = state;
    if (!decode && end > start) this.#sink.bodyBytes(buf, start, end);
    return BODY_MORE;
  }

  /** Wire mode hands on what was valid before the error, so the cut lands where the framing broke. */
  #fail(buf: Buffer, start: number, at: number, why: string): number {
    this.error = why;
    if (!this.#decode && at > start) this.#sink.bodyBytes(buf, start, at);
    return BODY_ERROR;
  }
}
