import { CLIENT_SSL } from './negotiate-mysql.js';

// When the proxy adds a packet to the server's view of a MySQL handshake (its SSL request,
// for a plaintext client of a TLS upstream), sequence ids differ by one between the two
// sides for the rest of the authentication exchange: the server counts the SSL request,
// the client does not. This rewrites them in flight, and sets CLIENT_SSL in the client's
// response (the server saw it in the SSL request), until authentication ends:
//   - server to client: every packet's id minus one, up to and including the OK or ERR
//     that ends authentication (auth switch 0xFE, more-data 0x01 packets go on);
//   - client to server: every packet's id plus one, until the client sends a packet with
//     id 0 (a command: authentication is over for it, and a command's ids start afresh on
//     both sides).
// Only header sequence bytes and that one flag byte change: lengths never do, so byte
// counts, backpressure and the codec (which sees the client's view) are untouched. A
// chunk that needs no change is returned as it is; one that does is copied first (a
// held chunk may still be referenced).

export interface StreamRewriter {
  /** Server bytes on their way to the client. */
  toClient(chunk: Buffer): Buffer;
  /** Client bytes on their way to the server. */
  toServer(chunk: Buffer): Buffer;
  /** Nothing is left to rewrite either way: the caller may drop the rewriter. */
  readonly done: boolean;
}

const HEADER = 4;
const MAX_PAYLOAD = 0xffffff;
const OK = 0x00;
const ERR = 0xff;

/** Where one direction's stream stands: inside a header, or inside a payload. */
class PacketPosition {
  headerRead = 0;
  length = 0;
  /** Payload bytes left in the current physical packet. */
  left = 0;
  /** The next payload byte is the first of a logical packet. */
  atFirstByte = false;
  /** Logical packets completed. */
  packets = 0;
  /** The current physical packet continues the previous one (whose length was 0xffffff). */
  continued = false;

  get inHeader(): boolean {
    return this.headerRead < HEADER;
  }

  /** Takes one header byte; returns the sequence id when it was the last, else -1. */
  headerByte(byte: number): number {
    if (this.headerRead < 3) {
      this.length = this.headerRead === 0 ? byte : this.length | (byte << (8 * this.headerRead));
      this.headerRead++;
      return -1;
    }
    this.headerRead++;
    this.left = this.length;
    this.atFirstByte = !this.continued;
    if (this.left === 0) this.#packetEnds();
    return byte;
  }

  /** Skips payload from chunk offset `i`; returns where the next header starts (or the chunk's end). */
  skip(chunk: Buffer, i: number): number {
    const take = Math.min(this.left, chunk.length - i);
    this.left -= take;
    if (this.left === 0) this.#packetEnds();
    return i + take;
  }

  #packetEnds(): void {
    this.headerRead = 0;
    this.atFirstByte = false;
    // A payload of exactly 0xffffff bytes continues in the next packet: one logical packet.
    this.continued = this.length === MAX_PAYLOAD;
    if (!this.continued) this.packets++;
  }
}

export class MysqlAuthShift implements StreamRewriter {
  readonly #client = new PacketPosition();
  readonly #server = new PacketPosition();
  #clientDone = false;
  #serverDone = false;

  get done(): boolean {
    return this.#clientDone && this.#serverDone;
  }

  toServer(chunk: Buffer): Buffer {
    if (this.#clientDone) return chunk;
    const at = this.#client;
    let out = chunk;
    let i = 0;
    while (i < chunk.length) {
      if (at.inHeader) {
        const continuation = at.continued;
        const seq = at.headerByte(chunk[i]!);
        if (seq === 0 && !continuation) {
          // A command: the client has left authentication; from here bytes pass as they are.
          this.#clientDone = true;
          break;
        }
        if (seq !== -1) out = patched(out, chunk, i, (seq + 1) & 0xff);
        i++;
        continue;
      }
      // The response's CLIENT_SSL flag sits in the second byte of its capability flags.
      const offset = at.length - at.left;
      const flagAt = i + 1 - offset;
      if (at.packets === 0 && !at.continued && offset <= 1 && flagAt < chunk.length && 1 - offset < at.left) {
        out = patched(out, chunk, flagAt, chunk[flagAt]! | (CLIENT_SSL >> 8));
      }
      i = at.skip(chunk, i);
    }
    return out;
  }

  toClient(chunk: Buffer): Buffer {
    if (this.#serverDone) return chunk;
    const at = this.#server;
    let out = chunk;
    let i = 0;
    while (i < chunk.length) {
      if (at.inHeader) {
        const seq = at.headerByte(chunk[i]!);
        if (seq !== -1) out = patched(out, chunk, i, (seq - 1) & 0xff);
        i++;
        continue;
      }
      // OK or ERR ends authentication; the rest of this packet has no header to rewrite.
      if (at.atFirstByte && (chunk[i] === OK || chunk[i] === ERR)) {
        this.#serverDone = true;
        break;
      }
      at.atFirstByte = false;
      i = at.skip(chunk, i);
    }
    return out;
  }
}

/** `out` with byte `index` set to `value`, copying `original` first if `out` is still it. */
function patched(out: Buffer, original: Buffer, index: number, value: number): Buffer {
  if (out[index] === value) return out;
  const target = out === original ? Buffer.from(original) : out;
  target[index] = value;
  return target;
}
