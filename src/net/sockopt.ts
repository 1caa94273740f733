import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { Socket, type Server } from 'node:net';
import type { KeepaliveSide } from '../config/schema.js';
import { handleFd } from './internals.js';
import { RawTcp } from './raw-tcp.js';
import type { TcpRef } from './splice-end.js';

// Full control of TCP keepalive on one socket. Up to Node 24.21 socket.setKeepAlive sets
// only TCP_KEEPIDLE (libuv then forces a 1 s interval and 10 probes); Node 24.22+ and 26
// also take the interval and count (nodejs/node#63825). No Node sets TCP_USER_TIMEOUT,
// reads options back, or sets them on a listening socket, so on Linux we call
// setsockopt(2)/getsockopt(2) on the socket's fd through koffi, and let Node's own call do
// a socket's keepalive only where it does exactly the same: all four keepalive options and
// no user timeout. Anywhere else (or when koffi cannot load) setKeepAlive is the fallback.
//
// The fd (net/internals.ts handleFd) is present at once on an accepted socket, only after
// 'connect' on an outgoing one (it is -1 while connecting), gone (null handle) once
// destroyed. Call applyKeepalive after 'connect', and never call socket.setKeepAlive on
// the same socket afterwards: libuv would overwrite the interval and count.

type Koffi = typeof import('koffi');

export interface SockoptSupport {
  readonly native: boolean;
  readonly reason: string | null;
}

export interface SocketOptions {
  keepalive: boolean;
  idleSeconds: number;
  intervalSeconds: number;
  count: number;
  userTimeoutMs: number;
  noDelay: boolean;
}

// Linux values (include/uapi/asm-generic/socket.h, include/uapi/linux/tcp.h, netinet/in.h).
// SOL_SOCKET/SO_KEEPALIVE differ on mips, sparc, alpha and parisc; koffi ships no
// binaries for those, and isLinuxAbi() below refuses them anyway.
const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;
const SO_ERROR = 4;
export const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_USER_TIMEOUT = 18;
/** ioctl SIOCOUTQ (= TIOCOUTQ, asm-generic/ioctls.h): bytes in a TCP send queue the peer has not acknowledged. */
const SIOCOUTQ = 0x5411;

/** Kernel bounds (net/ipv4/tcp.c: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT); past them setsockopt fails with EINVAL. */
export const KEEPALIVE_LIMITS = {
  maxIdleSeconds: 32_767,
  maxIntervalSeconds: 32_767,
  maxCount: 127,
  /** TCP_USER_TIMEOUT is an int of milliseconds; negative values are EINVAL. */
  maxUserTimeoutMs: 2_147_483_647,
} as const;

/** libc's two calls, declared once, plus one reusable 4-byte value and length (native endianness). */
interface NativeCalls {
  readonly setsockopt: (fd: number, level: number, name: number, value: Int32Array, length: number) => number;
  readonly getsockopt: (fd: number, level: number, name: number, value: Int32Array | Uint8Array, length: Uint32Array) => number;
  readonly errno: () => number;
  /** ioctl(fd, request, int *): variadic in libc, so each call names its argument type. */
  readonly ioctlInt: (fd: number, request: number, value: Int32Array) => number;
}

/** setKeepAlive(enable, initialDelayMs, intervalMs, count): Node 24.22+ and 26 (nodejs/node#63825); older types declare two arguments. */
type NodeSetKeepAlive = (enable: boolean, initialDelayMs: number, intervalMs: number, count: number) => Socket;

/** Feature test, not a version test: the four-argument setKeepAlive declares four parameters. */
export const NODE_SETS_INTERVAL_AND_COUNT = Socket.prototype.setKeepAlive.length >= 4;

const INT_SIZE = 4;
const intValue = new Int32Array(1);
const intLength = new Uint32Array(1);

let probed: { native: NativeCalls | null; reason: string | null } | undefined;
let forcedFallback = false;
let warned = false;
let lastError: string | null = null;
/** The option of the last failure (a setsockopt label, or NO_FD), for sockopt_errors_total{option}. */
let lastOption: string | null = null;

/** Loads koffi and libc once; never throws: a failure becomes the fallback's reason. */
function probe(): { native: NativeCalls | null; reason: string | null } {
  if (probed) return probed;
  if (process.platform !== 'linux') {
    probed = { native: null, reason: `TCP keepalive interval, count and user timeout are set only on Linux (this is ${process.platform})` };
  } else if (!isLinuxAbi()) {
    probed = { native: null, reason: `socket option numbers differ on ${process.arch}` };
  } else {
    probed = loadNative();
  }
  return probed;
}

function isLinuxAbi(): boolean {
  return !['mips', 'mipsel', 'mips64', 'mips64el', 'sparc', 'sparc64'].includes(process.arch);
}

function loadNative(): { native: NativeCalls | null; reason: string | null } {
  let koffi: Koffi;
  try {
    koffi = createRequire(import.meta.url)('koffi') as Koffi;
  } catch (error) {
    return { native: null, reason: `koffi could not load: ${messageOf(error)}` };
  }
  // glibc names its libc libc.so.6; elsewhere (musl) the process itself exports setsockopt.
  let lastFailure = '';
  for (const library of ['libc.so.6', null]) {
    try {
      const libc = koffi.load(library);
      const ioctl = libc.func('int ioctl(int fd, unsigned long request, ...)');
      const native: NativeCalls = {
        setsockopt: libc.func('int setsockopt(int fd, int level, int optname, const void *optval, uint32_t optlen)'),
        getsockopt: libc.func('int getsockopt(int fd, int level, int optname, _Out_ void *optval, _Inout_ uint32_t *optlen)'),
        errno: () => koffi.errno(),
        ioctlInt: (fd, request, value) => ioctl(fd, request, '_Out_ int *', value) as number,
      };
      return { native, reason: null };
    } catch (error) {
      lastFailure = messageOf(error);
    }
  }
  return { native: null, reason: `libc could not be loaded through koffi: ${lastFailure}` };
}

/** The calls to use now, or null for the fallback (platform, load failure or a test forcing it). */
function nativeCalls(): NativeCalls | null {
  return forcedFallback ? null : probe().native;
}

/** Whether setsockopt is used; computed on first read, so importing this file loads nothing. */
export const sockoptSupport: SockoptSupport = {
  get native(): boolean {
    return nativeCalls() !== null;
  },
  get reason(): string | null {
    return forcedFallback ? 'native socket options disabled for a test' : probe().reason;
  },
};

/**
 * SO_KEEPALIVE on, TCP_KEEPIDLE/INTVL (seconds, rounded up, min 1), TCP_KEEPCNT; TCP_USER_TIMEOUT (ms)
 * when userTimeoutMs > 0. Without koffi it falls back to socket.setKeepAlive, which sets the
 * interval and count too on Node 24.22+ / 26 but never the user timeout.
 * Never throws for a socket already closed (returns false). Returns false too for an outgoing socket
 * still connecting (no fd yet): call it from 'connect'. lastSockoptError() says why it returned false.
 */
export function applyKeepalive(socket: TcpRef, keepalive: KeepaliveSide, userTimeoutMs: number): boolean {
  lastError = null;
  lastOption = null;
  const native = nativeCalls();
  if (!native) return applyThroughNode(socket, keepalive);
  const fd = fdOf(socket);
  if (fd === null) return false;
  // Without a user timeout Node's own call sets exactly our four options: one call instead of four through FFI.
  if (userTimeoutMs <= 0 && NODE_SETS_INTERVAL_AND_COUNT && socket instanceof Socket) return applyThroughNode(socket, keepalive);
  const result = applyToFd(native, fd, keepalive, userTimeoutMs);
  // A live socket whose kernel refused a keepalive option still gets libuv's keepalive.
  if (result === 'keepalive-refused' && !socket.destroyed) applyThroughNode(socket, keepalive);
  return result === 'ok';
}

/**
 * Sets keepalive (and TCP_NODELAY) on a listening socket. Linux copies these options to
 * every socket it accepts, so accepted sockets need no setsockopt of their own: five
 * system calls saved per client connection. Returns false where that is not possible
 * (not native, not bound); the caller then sets each accepted socket itself.
 */
export function applyKeepaliveToListener(server: Server, keepalive: KeepaliveSide, noDelay: boolean): boolean {
  lastError = null;
  lastOption = null;
  const native = nativeCalls();
  if (!native || process.platform !== 'linux') return false;
  const fd = handleFd(server);
  if (fd === null) return false;
  return applyToFd(native, fd, keepalive, 0) === 'ok' && setInt(native, fd, IPPROTO_TCP, TCP_NODELAY, noDelay ? 1 : 0, 'TCP_NODELAY');
}

/** The kernel's units and bounds, shared by the setsockopt and the Node path so both set the same values. */
function kernelKeepalive(keepalive: KeepaliveSide): { idleSeconds: number; intervalSeconds: number; count: number } {
  return {
    // KEEPIDLE and KEEPINTVL are whole seconds, so milliseconds round up (a configured
    // 1500 ms never probes earlier than asked) with a floor of 1 s (0 is EINVAL).
    idleSeconds: clamp(Math.ceil(keepalive.idleMs / 1000), 1, KEEPALIVE_LIMITS.maxIdleSeconds),
    intervalSeconds: clamp(Math.ceil(keepalive.intervalMs / 1000), 1, KEEPALIVE_LIMITS.maxIntervalSeconds),
    // KEEPCNT is a plain count of unanswered probes.
    count: clamp(Math.round(keepalive.count), 1, KEEPALIVE_LIMITS.maxCount),
  };
}

function applyToFd(native: NativeCalls, fd: number, keepalive: KeepaliveSide, userTimeoutMs: number): 'ok' | 'keepalive-refused' | 'user-timeout-refused' {
  const { idleSeconds, intervalSeconds, count } = kernelKeepalive(keepalive);
  const keepaliveSet =
    setInt(native, fd, SOL_SOCKET, SO_KEEPALIVE, 1, 'SO_KEEPALIVE') &&
    setInt(native, fd, IPPROTO_TCP, TCP_KEEPIDLE, idleSeconds, 'TCP_KEEPIDLE') &&
    setInt(native, fd, IPPROTO_TCP, TCP_KEEPINTVL, intervalSeconds, 'TCP_KEEPINTVL') &&
    setInt(native, fd, IPPROTO_TCP, TCP_KEEPCNT, count, 'TCP_KEEPCNT');
  if (!keepaliveSet) return 'keepalive-refused';
  if (userTimeoutMs > 0) {
    // TCP_USER_TIMEOUT is already in milliseconds: how long sent data may stay unacknowledged.
    // While it is set the kernel also uses it, not KEEPCNT, to give up on a keepalive-probed peer:
    // dead once at least one probe went unanswered and userTimeoutMs passed since the last data.
    const ms = clamp(Math.ceil(userTimeoutMs), 1, KEEPALIVE_LIMITS.maxUserTimeoutMs);
    if (!setInt(native, fd, IPPROTO_TCP, TCP_USER_TIMEOUT, ms, 'TCP_USER_TIMEOUT')) return 'user-timeout-refused';
  }
  return 'ok';
}

/**
 * TCP_USER_TIMEOUT alone, keepalive left as it is (off on a fresh outgoing socket): for
 * sacrificial probe connections (discover, canaries) that must die soon after a probe
 * goes unacknowledged, without keepalive probes refreshing the middlebox under test.
 * Returns false when not native or the socket has no fd (lastSockoptError() says why).
 */
export function applyUserTimeout(socket: TcpRef, userTimeoutMs: number): boolean {
  lastError = null;
  const native = nativeCalls();
  if (!native) {
    lastError = 'native socket options are not available';
    return false;
  }
  const fd = fdOf(socket);
  if (fd === null) return false;
  const ms = clamp(Math.ceil(userTimeoutMs), 1, KEEPALIVE_LIMITS.maxUserTimeoutMs);
  return setInt(native, fd, IPPROTO_TCP, TCP_USER_TIMEOUT, ms, 'TCP_USER_TIMEOUT');
}

/** getsockopt read-back (tests, /connections); null when not native or closed. */
export function readSocketOptions(socket: TcpRef): SocketOptions | null {
  const native = nativeCalls();
  if (!native) return null;
  const fd = fdOf(socket);
  if (fd === null) return null;
  const keepalive = getInt(native, fd, SOL_SOCKET, SO_KEEPALIVE, 'SO_KEEPALIVE');
  const idleSeconds = getInt(native, fd, IPPROTO_TCP, TCP_KEEPIDLE, 'TCP_KEEPIDLE');
  const intervalSeconds = getInt(native, fd, IPPROTO_TCP, TCP_KEEPINTVL, 'TCP_KEEPINTVL');
  const count = getInt(native, fd, IPPROTO_TCP, TCP_KEEPCNT, 'TCP_KEEPCNT');
  const userTimeoutMs = getInt(native, fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 'TCP_USER_TIMEOUT');
  const noDelay = getInt(native, fd, IPPROTO_TCP, TCP_NODELAY, 'TCP_NODELAY');
  if (
    keepalive === null ||
    idleSeconds === null ||
    intervalSeconds === null ||
    count === null ||
    userTimeoutMs === null ||
    noDelay === null
  ) {
    return null;
  }
  return { keepalive: keepalive !== 0, idleSeconds, intervalSeconds, count, userTimeoutMs, noDelay: noDelay !== 0 };
}

/**
 * getsockopt of a struct option (TCP_INFO) into the caller's buffer: the number of bytes the
 * kernel wrote (an older kernel writes a shorter struct), or null when not native or closed.
 */
export function readSockoptBytes(socket: TcpRef, level: number, name: number, into: Uint8Array): number | null {
  const native = nativeCalls();
  if (!native) return null;
  const fd = fdOf(socket);
  if (fd === null) return null;
  intLength[0] = into.byteLength;
  if (native.getsockopt(fd, level, name, into, intLength) !== 0) {
    lastError = `getsockopt(${name}): ${errnoName(native.errno())}`;
    return null;
  }
  return intLength[0]!;
}

/**
 * Bytes written to the socket that the peer's kernel has not acknowledged yet (sent or
 * not), or null when unknown (not native, closed). 0 means everything reached the peer's
 * receive buffer, so a reset now loses none of it.
 */
export function unacknowledgedBytes(socket: TcpRef): number | null {
  const native = nativeCalls();
  if (!native) return null;
  const fd = fdOf(socket);
  if (fd === null) return null;
  intValue[0] = 0;
  return native.ioctlInt(fd, SIOCOUTQ, intValue) === 0 ? intValue[0]! : null;
}

/**
 * The error the kernel recorded on the socket and no read reported (SO_ERROR; reading it
 * clears it), or null. Why: libuv reports a peer's RST that comes right after its last
 * bytes as EOF (a partial read, then POLLHUP, ends the stream without another read), so
 * at an 'end' this tells a reset from a FIN. Null when not native or closed.
 */
export function pendingSocketError(socket: TcpRef): NodeJS.ErrnoException | null {
  const native = nativeCalls();
  if (!native) return null;
  const fd = fdOf(socket);
  if (fd === null) return null;
  const errno = getInt(native, fd, SOL_SOCKET, SO_ERROR, 'SO_ERROR');
  if (!errno) return null;
  const code = errnoName(errno);
  return Object.assign(new Error(`read ${code}`), { errno: -errno, code, syscall: 'read' });
}

/** Log once per process (warn) when the platform can't do it. */
export function warnIfUnsupported(log: { warn(obj: object, msg: string): void }): void {
  if (warned || sockoptSupport.native) return;
  warned = true;
  log.warn(
    { reason: sockoptSupport.reason },
    NODE_SETS_INTERVAL_AND_COUNT
      ? 'TCP keepalive falls back to socket.setKeepAlive: idle time, interval and count are applied but TCP_USER_TIMEOUT is not set'
      : 'TCP keepalive falls back to socket.setKeepAlive: only the idle time is applied (interval and count are libuv defaults) and TCP_USER_TIMEOUT is not set',
  );
}

/** Why the last applyKeepalive returned false ("setsockopt(TCP_KEEPCNT): EINVAL"), or null. */
export function lastSockoptError(): string | null {
  return lastError;
}

/** The option label for a socket with no fd to set options on (closed, or still connecting). */
export const NO_FD = 'no_fd';

/** The option the last applyKeepalive failed on (TCP_KEEPIDLE, ..., or NO_FD), or null. */
export function lastSockoptOption(): string | null {
  return lastOption;
}

/** @internal For tests: exercise the fallback path on Linux. Socket state set meanwhile stays in the kernel. */
export function forceFallbackForTesting(forced: boolean): void {
  forcedFallback = forced;
}

/** socket.setKeepAlive with the kernel's units: the fallback, and on newer Node the path for sockets without a user timeout. */
function applyThroughNode(socket: TcpRef, keepalive: KeepaliveSide): boolean {
  if (socket.destroyed) {
    lastError = 'socket is closed';
    lastOption = NO_FD;
    return false;
  }
  const { idleSeconds, intervalSeconds, count } = kernelKeepalive(keepalive);
  // setKeepAlive takes milliseconds and rounds them down to seconds; whole seconds pass unchanged.
  // An older Node ignores the interval and count arguments.
  if (socket instanceof RawTcp) socket.setKeepAlive(idleSeconds);
  else (socket.setKeepAlive as NodeSetKeepAlive)(true, idleSeconds * 1000, intervalSeconds * 1000, count);
  return true;
}

/** The live fd, or null (with lastError set) when closed or not yet connected. */
function fdOf(socket: TcpRef): number | null {
  if (socket.destroyed) {
    lastError = 'socket is closed';
    lastOption = NO_FD;
    return null;
  }
  const fd = socket instanceof RawTcp ? socket.fd : handleFd(socket);
  if (fd === null) {
    lastError = socket instanceof Socket && socket.connecting ? 'socket has no fd yet: still connecting' : 'socket has no fd';
    lastOption = NO_FD;
    return null;
  }
  return fd;
}

function setInt(native: NativeCalls, fd: number, level: number, name: number, value: number, label: string): boolean {
  intValue[0] = value;
  if (native.setsockopt(fd, level, name, intValue, INT_SIZE) === 0) return true;
  lastError = `setsockopt(${label}): ${errnoName(native.errno())}`;
  lastOption = label;
  return false;
}

function getInt(native: NativeCalls, fd: number, level: number, name: number, label: string): number | null {
  intValue[0] = 0;
  intLength[0] = INT_SIZE;
  if (native.getsockopt(fd, level, name, intValue, intLength) === 0) return intValue[0]!;
  lastError = `getsockopt(${label}): ${errnoName(native.errno())}`;
  return null;
}

let errnoNames: Map<number, string> | undefined;

function errnoName(code: number): string {
  errnoNames ??= new Map(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));
  return errnoNames.get(code) ?? `errno ${code}`;
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}

/** First line only: module-not-found errors append a multi-line require stack. */
function messageOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n', 1)[0]!;
}
