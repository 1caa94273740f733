// TLS session resumption for upstream connections: the latest session ticket per
// upstream identity (host, port, SNI), handed to the next handshake with that upstream.
// A resumed handshake skips the certificate exchange and one round trip, which is most
// of a TLS connect to a far upstream. Bounded so a forward proxy with many
// destinations cannot grow it without limit (oldest entry goes first).

const DEFAULT_CAPACITY = 256;

export class TlsSessionCache {
  readonly #sessions = new Map<string, Buffer>();
  readonly #capacity: number;

  constructor(capacity = DEFAULT_CAPACITY) {
    this.#capacity = capacity;
  }

  get(key: string): Buffer | undefined {
    return this.#sessions.get(key);
  }

  /** TLS 1.3 servers send tickets after the handshake, possibly several: the last one wins. */
  set(key: string, session: Buffer): void {
    this.#sessions.delete(key);
    this.#sessions.set(key, session);
    if (this.#sessions.size > this.#capacity) {
      const oldest = this.#sessions.keys().next().value;
      if (oldest !== undefined) this.#sessions.delete(oldest);
    }
  }

  /** A ticket the server refused (resumption failed) is not offered again. */
  delete(key: string): void {
    this.#sessions.delete(key);
  }

  get size(): number {
    return this.#sessions.size;
  }
}
