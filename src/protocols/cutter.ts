// Cuts byte ranges (our own probe replies) out of the upstream stream, chunk by chunk,
// without copying when nothing is cut: the common case returns the chunk it was given.
// A codec marks where skipping starts and where forwarding resumes, in chunk offsets;
// a skip may start in one chunk and end in a later one. Bytes a codec held back while
// deciding (and then decided to forward after all) go back in with release().

const EMPTY = Buffer.alloc(0);

export class Cutter {
  #chunk: Buffer = EMPTY;
  /** Start of the run being forwarded in the current chunk (meaningless while skipping). */
  #keepFrom = 0;
  #skipping = false;
  /** Pieces to concatenate; null while the whole chunk goes through unchanged. */
  #pieces: Buffer[] | null = null;

  get skipping(): boolean {
    return this.#skipping;
  }

  begin(chunk: Buffer): void {
    this.#chunk = chunk;
    this.#keepFrom = 0;
    this.#pieces = null;
  }

  /** Stop forwarding at `offset` (the byte at `offset` is the first one dropped or held). */
  skipFrom(offset: number): void {
    if (this.#skipping) return;
    this.#pieces ??= [];
    if (offset > this.#keepFrom) this.#pieces.push(this.#chunk.subarray(this.#keepFrom, offset));
    this.#skipping = true;
  }

  /** Forward again from `offset`. */
  resumeAt(offset: number): void {
    if (!this.#skipping) return;
    this.#pieces ??= [];
    this.#skipping = false;
    this.#keepFrom = offset;
  }

  /** Re-insert bytes held back from earlier chunks (copied: the caller may reuse its buffer), then forward from `offset`. */
  release(held: Buffer, offset: number): void {
    this.#pieces ??= [];
    if (held.length > 0) this.#pieces.push(Buffer.from(held));
    this.#skipping = false;
    this.#keepFrom = offset;
  }

  /** The bytes of the current chunk to forward. */
  finish(): Buffer {
    const chunk = this.#chunk;
    this.#chunk = EMPTY;
    const pieces = this.#pieces;
    if (pieces === null) return this.#skipping ? EMPTY : chunk;
    if (!this.#skipping && this.#keepFrom < chunk.length) pieces.push(chunk.subarray(this.#keepFrom));
    this.#pieces = null;
    if (pieces.length === 0) return EMPTY;
    if (pieces.length === 1) return pieces[0]!;
    return Buffer.concat(pieces);
  }
}
