// Reads of a plain-TCP upstream connection land in one reused buffer (net's `onread`
// option) instead of a fresh Buffer and a stream 'data' event per read: no allocation,
// no Readable bookkeeping, on half of the reads the proxy does per request.
//
// The buffer is overwritten by the next read, so whoever keeps a view of a chunk past
// the callback must say so (retain()), and the next read gets a new buffer. The exchange
// copies what it keeps (a response head in pieces) and calls retain() only when a body
// slice it wrote to the client is still queued in node (the client was slow): the usual
// write goes straight to the kernel, which copies it.

/** node's default read size for stream sockets. */
const READ_SIZE = 64 * 1024;

export class ReadBuffer {
  #buffer = Buffer.allocUnsafe(READ_SIZE);
  #retained = false;
  /** Receives each read; set by the connection that owns the socket. */
  deliver: ((chunk: Buffer) => void) | null = null;
  /** Bytes came before anyone owned the socket (nothing was asked of the upstream yet). */
  early = false;

  /** The `onread` option of net.connect(). */
  readonly onread = {
    buffer: (): Buffer => this.#next(),
    callback: (bytes: number, buffer: Buffer): boolean => {
      if (this.deliver !== null) this.deliver(buffer.subarray(0, bytes));
      else this.early = true;
      return true; // keep reading (backpressure goes through socket.pause())
    },
  };

  /** A view of the last chunk outlives the callback: the next read goes to a new buffer. */
  retain(): void {
    this.#retained = true;
  }

  #next(): Buffer {
    if (this.#retained) {
      this.#retained = false;
      this.#buffer = Buffer.allocUnsafe(READ_SIZE);
    }
    return this.#buffer;
  }
}
