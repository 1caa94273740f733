import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { rawTcpBindings, UV_EOF, type RawTcpBindings, type TcpHandle } from './internals.js';
import { sharedReadBuffer } from './shared-reads.js';
import type { EndEvents, SpliceEnd, TcpRef } from './splice-end.js';
import type { TlsSummary } from './tls-socket.js';

// A plain TCP connection driven through its libuv handle, with no net.Socket: the splice
// end of the TCP path (accepted clients of routes without client TLS, upstreams dialled
// without TLS). What it keeps per connection is this object and its handle; a write
// makes one request object, which the kernel's taking the bytes at once lets go.
//
// It behaves as the net.Socket it replaces does for a splice, with `allowHalfOpen`:
// - reads land in the process's shared buffer (net/shared-reads.ts) and are copied out
//   in the read's own size before anything else runs;
// - write() returns false while libuv holds bytes the kernel did not take (the caller
//   pauses its source until drain): at most one read's worth is ever queued here;
// - end() sends FIN after what is queued; the connection closes by itself once both
//   directions are done (our FIN sent, the peer's read), or at closeSoon()/reset()/destroy();
// - a failed write does not close it: reads go on so the peer's last bytes arrive
//   (net/last-reads.ts says why), and the owner decides;
// - close is reported once, when libuv has closed the fd.

const OWNER = Symbol('keepalive-proxy.raw-tcp');
type OwnedHandle = TcpHandle & { [OWNER]?: RawTcp };
type Request = { [key: string]: unknown };

/** The bindings, or null where this Node's are not what net/internals.ts expects. */
export function rawTcpAvailable(): boolean {
  return rawTcpBindings() !== null;
}

function bindings(): RawTcpBindings {
  return rawTcpBindings()!;
}

/** A write request no write has kept (see write()). */
let spareWriteRequest: ReturnType<RawTcpBindings['newWriteRequest']> | null = null;

function errnoError(status: number, syscall: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(status);
  return Object.assign(new Error(`${syscall} ${code}`), { errno: status, code, syscall });
}

export class RawTcp implements SpliceEnd {
  owner: unknown = null;
  readonly #handle: OwnedHandle;
  #events: EndEvents | null = null;
  /** Reads before anyone listened (none: reading starts at resume(), after listen()). */
  #reading = false;
  #eof = false;
  #shutdownSent = false;
  #shutdownDone = false;
  #closeAfterShutdown = false;
  #closing = false;
  #queuedBytes = 0;
  #queuedWrites = 0;
  #flushWaiters: (() => void)[] | null = null;
  #peer: { address?: string; port?: number } | null = null;

  private constructor(handle: TcpHandle) {
    this.#handle = handle as OwnedHandle;
    this.#handle[OWNER] = this;
    handle.onread = RawTcp.#onRead;
    handle.useUserBuffer(sharedReadBuffer);
  }

  /** An accepted connection's handle (what a listener's onconnection passes). Not read until resume(). */
  static accepted(handle: TcpHandle): RawTcp {
    return new RawTcp(handle);
  }

  /**
   * Connects to an IP address. `done` is called once: with null when connected, else with
   * the error (the handle is then closed). abort() before that closes it and `done` is never called.
   */
  static connect(host: string, port: number, done: (error: NodeJS.ErrnoException | null) => void): RawTcp {
    const end = new RawTcp(bindings().newHandle());
    const request = bindings().newConnectRequest();
    request.oncomplete = (status: number): void => {
      if (end.#closing) return;
      if (status < 0) {
        end.destroy();
        done(errnoError(status, 'connect'));
        return;
      }
      done(null);
    };
    const family = net.isIP(host);
    const status = family === 6 ? end.#handle.connect6(request, host, port) : end.#handle.connect(request, host, port);
    if (status < 0) {
      // Reported from the next turn, as a failed connect always is.
      queueMicrotask(() => {
        end.destroy();
        done(errnoError(status, 'connect'));
      });
    }
    return end;
  }

  get fd(): number | null {
    if (this.#closing) return null;
    const fd = this.#handle.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : null;
  }

  listen(events: EndEvents): void {
    this.#events = events;
  }

  static #of(handle: TcpHandle): RawTcp {
    return (handle as OwnedHandle)[OWNER]!;
  }

  static #onRead(this: TcpHandle): void {
    const end = RawTcp.#of(this);
    const result = bindings().readResult();
    if (result > 0) {
      // Copied at once: the shared buffer is the next read's, on any connection.
      const chunk = Buffer.allocUnsafe(result);
      sharedReadBuffer.copy(chunk, 0, 0, result);
      end.#events?.data(end, chunk);
      return;
    }
    if (result === 0 || end.#closing) return;
    if (result === UV_EOF) {
      end.#eof = true;
      end.#stopReading();
      end.#events?.end(end);
      if (end.#shutdownDone) end.destroy();
      return;
    }
    end.#stopReading();
    end.#events?.error(end, errnoError(result, 'read'));
    end.destroy();
  }

  write(chunk: Buffer): boolean {
    if (this.#closing) return false;
    // A write the kernel takes at once leaves its request unused: the next write reuses it.
    const request = (spareWriteRequest ??= bindings().newWriteRequest());
    request.handle = this.#handle;
    request.oncomplete = RawTcp.#onWritten;
    const status = this.#handle.writeBuffer(request, chunk);
    if (status < 0) {
      this.#writeFailed(errnoError(status, 'write'));
      return false;
    }
    if (!bindings().lastWriteWasAsync()) return this.#queuedWrites === 0;
    // Queued: the request is libuv's until it completes, and libuv keeps pointing at the chunk.
    spareWriteRequest = null;
    request['chunk'] = chunk;
    this.#queuedBytes += chunk.length;
    this.#queuedWrites++;
    return false;
  }

  static #onWritten(this: Request, status: number): void {
    const end = RawTcp.#of(this['handle'] as TcpHandle);
    end.#queuedBytes -= (this['chunk'] as Buffer).length;
    end.#queuedWrites--;
    if (end.#closing) return;
    if (status < 0) {
      end.#writeFailed(errnoError(status, 'write'));
      return;
    }
    if (end.#queuedWrites > 0) return;
    end.#flushed();
    end.#events?.drain(end);
  }

  #writeFailed(error: NodeJS.ErrnoException): void {
    // The owner is told once; later writes fail quietly (it stops writing anyway).
    const events = this.#events;
    if (this.#closeAfterShutdown || !events) {
      this.destroy();
      return;
    }
    events.writeFailed(this, error);
  }

  whenFlushed(callback: () => void): void {
    if (this.#queuedWrites === 0 || this.#closing) {
      callback();
      return;
    }
    (this.#flushWaiters ??= []).push(callback);
  }

  #flushed(): void {
    const waiters = this.#flushWaiters;
    if (!waiters) return;
    this.#flushWaiters = null;
    for (const waiter of waiters) waiter();
  }

  pause(): void {
    this.#stopReading();
  }

  resume(): void {
    if (this.#reading || this.#eof || this.#closing) return;
    this.#reading = true;
    const status = this.#handle.readStart();
    if (status < 0) {
      this.#reading = false;
      this.#events?.error(this, errnoError(status, 'read'));
      this.destroy();
    }
  }

  #stopReading(): void {
    if (!this.#reading) return;
    this.#reading = false;
    if (!this.#closing) this.#handle.readStop();
  }

  end(): void {
    if (this.#shutdownSent || this.#closing) return;
    // The peer's FIN was read and nothing waits to be sent: close() sends our FIN as
    // shutdown() would, and the connection has nothing left to do.
    if (this.#eof && this.#queuedWrites === 0) {
      this.destroy();
      return;
    }
    this.#shutdownSent = true;
    const request = bindings().newShutdownRequest();
    request.handle = this.#handle;
    request.oncomplete = RawTcp.#onShutdown;
    // libuv sends the FIN once the queued writes are out.
    if (this.#handle.shutdown(request) < 0) this.#shutdownFinished();
  }

  static #onShutdown(this: Request): void {
    RawTcp.#of(this['handle'] as TcpHandle).#shutdownFinished();
  }

  #shutdownFinished(): void {
    this.#shutdownDone = true;
    if (this.#closing) return;
    this.#flushed();
    // Both directions done (allowHalfOpen's end), or the owner asked to close after the FIN.
    if (this.#eof || this.#closeAfterShutdown) this.destroy();
  }

  closeSoon(): void {
    if (this.#closing) return;
    this.#closeAfterShutdown = true;
    if (this.#shutdownDone) this.destroy();
    else this.end();
  }

  reset(): void {
    if (this.#closing) return;
    // libuv refuses a reset once a FIN is on its way; the close then ends it.
    if (this.#shutdownSent) {
      this.destroy();
      return;
    }
    this.#beginClose();
    if (this.#handle.reset(RawTcp.#onClosed) !== 0) this.#handle.close(RawTcp.#onClosed);
  }

  destroy(): void {
    if (this.#closing) return;
    this.#beginClose();
    this.#handle.close(RawTcp.#onClosed);
  }

  #beginClose(): void {
    this.#stopReading();
    this.#closing = true;
    this.#flushed();
  }

  /** libuv closed the fd: the owner hears of it once (never from inside its own call, as with a socket's 'close'). */
  static #onClosed(this: TcpHandle): void {
    const end = RawTcp.#of(this);
    end.#events?.close(end);
  }

  get destroyed(): boolean {
    return this.#closing;
  }
  get paused(): boolean {
    return !this.#reading;
  }
  get writableLength(): number {
    return this.#queuedBytes;
  }
  get remoteAddress(): string | undefined {
    return this.#peerName().address;
  }
  get remotePort(): number | undefined {
    return this.#peerName().port;
  }
  /** Read once, while the connection is open (a closed handle has no peer to name). */
  #peerName(): { address?: string; port?: number } {
    if (this.#peer) return this.#peer;
    if (this.#closing) return {};
    const out: { address?: string; port?: number } = {};
    if (this.#handle.getpeername(out) !== 0) return {};
    return (this.#peer = out);
  }
  get tcp(): TcpRef {
    return this;
  }
  get tls(): TlsSummary | null {
    return null;
  }

  /** libuv's keepalive (the fallback where setsockopt cannot be called): SO_KEEPALIVE and the idle time. */
  setKeepAlive(idleSeconds: number): void {
    if (!this.#closing) this.#handle.setKeepAlive(true, idleSeconds);
  }

  setNoDelay(enable: boolean): void {
    if (!this.#closing) this.#handle.setNoDelay(enable);
  }
}
