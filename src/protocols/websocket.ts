import { randomBytes } from 'node:crypto';
import type { CodecOptions, HeartbeatCodec, Tracker, TrackerState } from './types.js';

// WebSocket (RFC 6455) frames, for heartbeats on an upgraded HTTP connection: pings we
// inject toward the upstream (masked, as a client must) when the tunnel is silent, and
// the matching pongs cut out of the upstream's stream so the client never sees them.
// Pure: encodeFrame() builds bytes, FrameWalker follows frame boundaries fed any split
// of the stream, the tracker decides what to forward. No sockets, no timers (the
// session owns the timing). Extensions such as permessage-deflate only touch data
// frames (RSV1), so control frames stay readable whatever was negotiated.

export const OPCODE = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

const KNOWN_OPCODES: ReadonlySet<number> = new Set(Object.values(OPCODE));
/** 2 fixed bytes + 8 of extended length + 4 of mask key. */
const MAX_HEADER = 14;
const PROBE_PAYLOAD_BYTES = 8;

export class FrameError extends Error {
  override readonly name = 'FrameError';
}

export interface FrameHeader {
  readonly fin: boolean;
  /** RSV1..3 as the top three bits of a 3-bit number (extension use). */
  readonly rsv: number;
  readonly opcode: number;
  readonly masked: boolean;
  readonly length: number;
  readonly maskKey: Buffer | null;
  readonly headerLength: number;
}

/** One frame. A 4-byte `mask` masks the payload (client-to-server frames must be masked). */
export function encodeFrame(opcode: number, payload: Buffer, options: { fin?: boolean; mask?: Buffer | null } = {}): Buffer {
  const fin = options.fin ?? true;
  const mask = options.mask ?? null;
  if (mask && mask.length !== 4) throw new RangeError('a mask key is 4 bytes');
  const length = payload.length;
  const extended = length < 126 ? 0 : length <= 0xffff ? 2 : 8;
  const header = Buffer.alloc(2 + extended + (mask ? 4 : 0));
  header[0] = (fin ? 0x80 : 0) | (opcode & 0x0f);
  const lengthCode = extended === 0 ? length : extended === 2 ? 126 : 127;
  header[1] = (mask ? 0x80 : 0) | lengthCode;
  if (extended === 2) header.writeUInt16BE(length, 2);
  else if (extended === 8) header.writeBigUInt64BE(BigInt(length), 2);
  if (!mask) return Buffer.concat([header, payload]);
  mask.copy(header, 2 + extended);
  return Buffer.concat([header, applyMask(payload, mask)]);
}

/** XOR with the 4-byte key (its own inverse). Returns a new buffer. */
export function applyMask(payload: Buffer, mask: Buffer): Buffer {
  const out = Buffer.allocUnsafe(payload.length);
  for (let i = 0; i < payload.length; i++) out[i] = payload[i]! ^ mask[i & 3]!;
  return out;
}

/** How many header bytes a frame has, from its first two bytes. */
function headerLengthOf(second: number): number {
  const code = second & 0x7f;
  return 2 + (code === 126 ? 2 : code === 127 ? 8 : 0) + (second & 0x80 ? 4 : 0);
}

/** Parses a complete header (validated: known opcode, well-formed control frame, sane length). */
export function parseFrameHeader(bytes: Buffer): FrameHeader {
  const first = bytes[0]!;
  const second = bytes[1]!;
  const opcode = first & 0x0f;
  const fin = (first & 0x80) !== 0;
  const masked = (second & 0x80) !== 0;
  const code = second & 0x7f;
  let length = code;
  let at = 2;
  if (code === 126) {
    length = bytes.readUInt16BE(2);
    at = 4;
  } else if (code === 127) {
    const big = bytes.readBigUInt64BE(2);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new FrameError('frame length out of range');
    length = Number(big);
    at = 10;
  }
  if (!KNOWN_OPCODES.has(opcode)) throw new FrameError(`reserved opcode 0x${opcode.toString(16)}`);
  if (opcode >= 0x8 && (!fin || length > 125)) throw new FrameError('malformed control frame');
  const maskKey = masked ? Buffer.from(bytes.subarray(at, at + 4)) : null;
  return { fin, rsv: (first >> 4) & 0x07, opcode, masked, length, maskKey, headerLength: at + (masked ? 4 : 0) };
}

export type WalkEvent = 'none' | 'header' | 'frame-end';

/**
 * Follows frame boundaries through a byte stream fed in arbitrary pieces. step() consumes
 * bytes from `offset` and stops at the first event: a header completed ('header'; for an
 * empty frame the frame is over too, see `current.length`), the payload ended
 * ('frame-end'), or the chunk ran out ('none').
 */
export class FrameWalker {
  readonly #header = Buffer.alloc(MAX_HEADER);
  #fill = 0;
  #remaining = 0;
  #inPayload = false;
  current: FrameHeader | null = null;

  get atBoundary(): boolean {
    return this.#fill === 0 && !this.#inPayload;
  }

  step(chunk: Buffer, offset: number): { offset: number; event: WalkEvent } {
    if (this.#inPayload) {
      const take = Math.min(this.#remaining, chunk.length - offset);
      this.#remaining -= take;
      offset += take;
      if (this.#remaining > 0) return { offset, event: 'none' };
      this.#inPayload = false;
      return { offset, event: 'frame-end' };
    }
    while (offset < chunk.length) {
      this.#header[this.#fill++] = chunk[offset++]!;
      if (this.#fill < 2 || this.#fill < headerLengthOf(this.#header[1]!)) continue;
      const header = parseFrameHeader(this.#header.subarray(0, this.#fill));
      this.current = header;
      this.#fill = 0;
      if (header.length > 0) {
        this.#inPayload = true;
        this.#remaining = header.length;
      }
      return { offset, event: 'header' };
    }
    return { offset, event: 'none' };
  }
}

export type RandomBytes = (size: number) => Buffer;

/**
 * One WebSocket tunnel's heartbeat state. Client-to-upstream bytes are only observed (a
 * ping may be injected only between two client frames); upstream-to-client bytes are
 * forwarded except the pong answering our ping, recognised by its payload. While a ping
 * is outstanding, each new upstream frame is held from its first byte until its header
 * shows it is not our pong (then it flows on at once) or, for a pong of the right size,
 * until its payload is complete and compared: at most 14 header bytes and 8 payload
 * bytes are ever held.
 */
export class WebSocketTracker implements Tracker {
  readonly #random: RandomBytes;
  readonly #client = new FrameWalker();
  readonly #server = new FrameWalker();
  #probe: Buffer | null = null;
  #offReason: string | null = null;
  /** Bytes of the current upstream frame held from earlier chunks. */
  #held: Buffer[] = [];
  #holding = false;

  constructor(random: RandomBytes = randomBytes) {
    this.#random = random;
  }

  get state(): TrackerState {
    if (this.#offReason) return 'off';
    return this.#client.atBoundary ? 'quiet' : 'busy';
  }

  get offReason(): string | null {
    return this.#offReason;
  }

  get probing(): boolean {
    return this.#probe !== null;
  }

  // A WebSocket has no request/reply pairing and no transactions; a pong is never an error.
  readonly probeRefused = false;
  readonly awaitingReply = false;
  readonly replyGraceMs = 0;
  readonly inTransaction = false;

  probe(): Buffer {
    const payload = this.#random(PROBE_PAYLOAD_BYTES);
    this.#probe = payload;
    return encodeFrame(OPCODE.ping, payload, { mask: this.#random(4) });
  }

  fromClient(chunk: Buffer): void {
    if (this.#offReason) return;
    let offset = 0;
    try {
      while (offset < chunk.length) {
        const step = this.#client.step(chunk, offset);
        offset = step.offset;
        if (step.event === 'header' && this.#client.current!.opcode === OPCODE.close) {
          this.#goOff('closing');
          return;
        }
      }
    } catch {
      this.#goOff('desync');
    }
  }

  fromServer(chunk: Buffer): Buffer {
    if (this.#offReason && !this.#holding) return chunk;
    const pieces: Buffer[] = [];
    let changed = this.#holding; // bytes held from before come out of this call
    let emitFrom = 0;
    let holdFrom = 0;
    let offset = 0;
    let closing = false;
    while (offset < chunk.length) {
      if (!this.#holding && this.#probe && !this.#offReason && this.#server.atBoundary) {
        if (offset > emitFrom) pieces.push(chunk.subarray(emitFrom, offset));
        this.#holding = true;
        holdFrom = offset;
        changed = true;
      }
      let step: { offset: number; event: WalkEvent };
      try {
        step = this.#server.step(chunk, offset);
      } catch {
        // Lost the frame structure: forward everything untouched from now on.
        this.#goOff('desync');
        if (this.#holding) pieces.push(...this.#held, chunk.subarray(holdFrom));
        else pieces.push(chunk.subarray(emitFrom));
        this.#held = [];
        this.#holding = false;
        return Buffer.concat(pieces);
      }
      offset = step.offset;
      if (step.event === 'none') continue;
      const header = this.#server.current!;
      if (step.event === 'header') {
        if (header.opcode === OPCODE.close) closing = true;
        const mayBeOurs = this.#probe !== null && header.opcode === OPCODE.pong && header.length === this.#probe.length;
        if (this.#holding && !mayBeOurs) {
          // Not our pong: what was held goes out now and the rest of the frame flows.
          pieces.push(...this.#held);
          this.#held = [];
          this.#holding = false;
          emitFrom = holdFrom;
        }
      }
      const frameOver = step.event === 'frame-end' || header.length === 0;
      if (frameOver && this.#holding) {
        const frame = Buffer.concat([...this.#held, chunk.subarray(holdFrom, offset)]);
        this.#held = [];
        this.#holding = false;
        emitFrom = offset;
        const body = frame.subarray(header.headerLength);
        const payload = header.maskKey ? applyMask(body, header.maskKey) : body;
        if (this.#probe && payload.equals(this.#probe)) this.#probe = null; // ours: cut
        else pieces.push(frame);
      }
      if (frameOver && closing) {
        closing = false;
        this.#goOff('closing');
      }
    }
    if (this.#holding) this.#held.push(chunk.subarray(holdFrom));
    else if (emitFrom < chunk.length) pieces.push(chunk.subarray(emitFrom));
    if (!changed) return chunk;
    return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
  }

  #goOff(reason: string): void {
    this.#offReason ??= reason;
    // No pong will be recognised any more: stop waiting so held client bytes go on.
    this.#probe = null;
  }
}

export const websocketCodec: HeartbeatCodec = {
  name: 'websocket',
  probesBeforeClient: false,
  track: (_options: CodecOptions): Tracker => new WebSocketTracker(),
};
