import net from 'node:net';

// Every use of Node's private API, in one place. Each one is here because the public API
// cannot do the job; each says why, and which Node versions it was checked on. A new Node
// that changes one of them is found by test/unit/internals.test.ts (run on every Node line
// CI runs: 20, 24 and 26), and test/unit/one-of-each.test.ts keeps them out of other files.
//
// Checked on: Node 20.20, 24.22 and 26.12 (linux-x64).

// Relied on, not called: with `onread: { buffer: fn, callback }` (net.connect and sockets
// built here), node calls `fn` once when the socket starts reading and then right after
// each read callback of that same socket, before any other socket's read. The shared read
// buffer (net/shared-reads.ts) hands a bulk reader its own buffer through that order.
// Checked by test/unit/internals.test.ts.

/** An accepted connection's libuv handle, as node passes it to a listening handle's onconnection. */
export type AcceptedHandle = object;

/**
 * The file descriptor under a socket or a listening server: `_handle.fd`.
 * Why: setsockopt(2)/getsockopt(2) (net/sockopt.ts) need the fd, and no public API gives it.
 * Null while connecting (node reports -1), once destroyed (null handle), or where the
 * handle has no fd (another platform).
 */
export function handleFd(owner: net.Socket | net.Server): number | null {
  const fd = (owner as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/**
 * Replaces a listening server's `_handle.onconnection` callback, so that the accepted
 * sockets are built by the caller (socketOnHandle), with options net.Server cannot pass
 * (`onread`: reads into a shared buffer). Returns false, and changes nothing, when the
 * handle is not what this expects (the server then goes on with its 'connection' event).
 * Why: net.Server has no option for the sockets it builds.
 */
export function interceptAccepts(server: net.Server, onConnection: (errno: number, clientHandle: AcceptedHandle) => void): boolean {
  const handle = (server as unknown as { _handle?: { onconnection?: unknown } | null })._handle;
  if (!handle || typeof handle.onconnection !== 'function') return false;
  handle.onconnection = onConnection;
  return true;
}

/**
 * Options of a Socket built around an accepted handle. `pauseOnCreate` (undocumented; what
 * node's own server passes for pauseOnConnect) starts it paused: no read before its owner
 * is ready.
 */
export type AcceptedSocketOptions = Omit<net.SocketConstructorOpts, 'handle' | 'fd'> & { pauseOnCreate?: boolean };

/** Spread into AcceptedSocketOptions: the socket reads nothing until resume(). */
export const START_PAUSED = { pauseOnCreate: true } as const;

/**
 * A Socket around an accepted handle: the construction node's own accept does, with the
 * caller's options. Why: the `handle` constructor option is undocumented.
 */
export function socketOnHandle(clientHandle: AcceptedHandle, options: AcceptedSocketOptions): net.Socket {
  return new net.Socket({ ...options, handle: clientHandle, readable: true, writable: true } as net.SocketConstructorOpts);
}

/**
 * Clears the error node recorded on a socket's readable side when a write failed, so the
 * 'end' of the peer's EOF (read after that failure) is still emitted.
 * Why: the peer's last bytes before its reset (net/last-reads.ts); a destroy with the
 * write's error marks `_readableState.errored`, and no public API undoes it.
 */
export function forgetReadableError(socket: net.Socket): void {
  const state = (socket as unknown as { _readableState?: { errored: unknown } })._readableState;
  if (state) state.errored = null;
}

/**
 * Whether a FIN may be on its way (end() called, the shutdown not known done). libuv refuses
 * a reset then (uv_tcp_close_reset: UV_EINVAL while UV_HANDLE_SHUTTING), and node's
 * resetAndDestroy only emits that error: it never closes the handle (tcp_wrap's Reset has
 * already marked it closing), so the fd leaks and 'close' never comes (seen on 20.20, 24.22,
 * 26.12). The socket is closed instead, after its FIN.
 */
export function shutdownInFlight(socket: net.Socket): boolean {
  return socket.writableEnded && !socket.writableFinished;
}

/**
 * Ends a socket with RST where it can (resetAndDestroy, public since Node 16.17/18.3), else
 * destroys it: resetAndDestroy throws on a socket that is still connecting, and on one
 * without a TCP handle (a TLS socket, unless its owner made it reset the TCP socket under
 * it). The one reset of the process: every abrupt close goes through it.
 */
export function resetOrDestroy(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (!socket.connecting && !shutdownInFlight(socket)) {
    try {
      socket.resetAndDestroy();
      return;
    } catch {
      // no TCP handle: fall through to a plain destroy
    }
  }
  socket.destroy();
}

/**
 * A libuv TCP handle as node's tcp_wrap builds it, used without a net.Socket around it
 * (net/raw-tcp.ts): the methods node's own net.Socket calls on its `_handle`.
 */
export interface TcpHandle {
  readonly fd: number;
  onread: ((this: TcpHandle) => void) | null;
  readStart(): number;
  readStop(): number;
  useUserBuffer(buffer: Uint8Array): void;
  writeBuffer(req: object, data: Uint8Array): number;
  writev(req: object, chunks: readonly Uint8Array[], allBuffers: true): number;
  shutdown(req: object): number;
  close(callback: (this: TcpHandle) => void): void;
  reset(callback: (this: TcpHandle) => void): number;
  connect(req: object, address: string, port: number): number;
  connect6(req: object, address: string, port: number): number;
  getpeername(out: { address?: string; port?: number; family?: string }): number;
  setNoDelay(enable: boolean): number;
  setKeepAlive(enable: boolean, delaySeconds: number): number;
}

/** What the raw TCP path needs from node's tcp_wrap and stream_wrap bindings. */
export interface RawTcpBindings {
  /** A new, unconnected TCP handle. */
  newHandle(): TcpHandle;
  newConnectRequest(): { oncomplete: (status: number, handle: TcpHandle) => void; [key: string]: unknown };
  newWriteRequest(): { oncomplete: (this: { [key: string]: unknown }, status: number) => void; handle: TcpHandle; [key: string]: unknown };
  newShutdownRequest(): { oncomplete: (this: { [key: string]: unknown }, status: number) => void; handle: TcpHandle; [key: string]: unknown };
  /** After a read callback: the byte count or a negative libuv error (UV_EOF at the end). */
  readResult(): number;
  /** After writeBuffer/writev: whether libuv queued part of it (oncomplete comes later). */
  lastWriteWasAsync(): boolean;
}

/** libuv's end-of-stream read result. */
export const UV_EOF = -4095;

let rawTcp: RawTcpBindings | null | undefined;

/**
 * Node's tcp_wrap / stream_wrap bindings (process.binding: DEP0111, a documentation-only
 * deprecation that warns only under --pending-deprecation, still served on every line we
 * run), or null when they are not what this expects or process.binding throws (the
 * permission model): the routes then take sockets, as before. Why: a net.Socket is a Duplex stream with its state machines, an EventEmitter
 * and a dozen objects per connection; the splice needs read, write, shutdown and close.
 * Without the Socket a churned connection costs about 70 us less CPU (BENCHMARKS.md).
 * Checked on Node 20.20, 24.22 and 26.12 (test/unit/internals.test.ts).
 */
export function rawTcpBindings(): RawTcpBindings | null {
  if (rawTcp !== undefined) return rawTcp;
  rawTcp = null;
  try {
    const binding = (process as unknown as { binding(name: string): Record<string, unknown> }).binding;
    const tcp = binding('tcp_wrap') as { TCP?: new (type: number) => TcpHandle; TCPConnectWrap?: new () => object; constants?: { SOCKET?: number } };
    const stream = binding('stream_wrap') as {
      WriteWrap?: new () => object;
      ShutdownWrap?: new () => object;
      streamBaseState?: Int32Array;
      kReadBytesOrError?: number;
      kLastWriteWasAsync?: number;
    };
    const { TCP, TCPConnectWrap, constants } = tcp;
    const { WriteWrap, ShutdownWrap, streamBaseState: state, kReadBytesOrError: readIndex, kLastWriteWasAsync: asyncIndex } = stream;
    if (!TCP || !TCPConnectWrap || typeof constants?.SOCKET !== 'number' || !WriteWrap || !ShutdownWrap) return null;
    if (!(state instanceof Int32Array) || typeof readIndex !== 'number' || typeof asyncIndex !== 'number') return null;
    const methods = ['readStart', 'readStop', 'useUserBuffer', 'writeBuffer', 'writev', 'shutdown', 'close', 'reset', 'connect', 'connect6', 'getpeername', 'setNoDelay'];
    if (methods.some((name) => typeof (TCP.prototype as unknown as Record<string, unknown>)[name] !== 'function')) return null;
    const socketType = constants.SOCKET;
    rawTcp = {
      newHandle: () => new TCP(socketType),
      newConnectRequest: () => new TCPConnectWrap() as ReturnType<RawTcpBindings['newConnectRequest']>,
      newWriteRequest: () => new WriteWrap() as ReturnType<RawTcpBindings['newWriteRequest']>,
      newShutdownRequest: () => new ShutdownWrap() as ReturnType<RawTcpBindings['newShutdownRequest']>,
      readResult: () => state[readIndex]!,
      lastWriteWasAsync: () => state[asyncIndex] !== 0,
    };
  } catch {
    rawTcp = null;
  }
  return rawTcp;
}

/** An accepted connection's handle as a TcpHandle (what onconnection passes is one). */
export function acceptedTcpHandle(handle: AcceptedHandle): TcpHandle {
  return handle as TcpHandle;
}
