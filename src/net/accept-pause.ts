import { createRequire } from 'node:module';
import { isMainThread } from 'node:worker_threads';
import type net from 'node:net';
import { handleFd } from './internals.js';

// Pausing a listener's accepts while its socket stays bound and its backlog keeps filling,
// as HAProxy does at maxconn: new clients wait in the kernel's queue (a delay, not a reset).
//
// Node has no way to do it. A listening handle cannot readStop (libuv's uv_read_start
// refuses a listener: ENOTCONN), closing it loses the port and resets the queued clients,
// and once libuv's watcher fires it accepts, and at EMFILE its uv__emfile_trick accepts and
// closes the queued clients without telling Node (src/unix/stream.c, libuv 1.46 and later).
//
// So, on Linux and Node's main loop, the listener's fd is taken out of libuv's epoll set
// (uv_backend_fd, public libuv API exported by node) and put back with the registration
// libuv made itself: EPOLLIN, data.fd = the fd (src/unix/linux.c uv__io_poll). libuv does
// not touch a listener's registration between listen and close (its one uv__io_stop there
// runs only when the connection callback leaves a connection unaccepted, which node never
// does), and at close it deletes the fd ignoring ENOENT, so a paused listener closes cleanly.
// Where any of this is unavailable, pausing reports false and the caller only counts.

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLLIN = 0x001;
const EEXIST = 17;

interface EpollCalls {
  readonly backendFd: number;
  readonly ctl: (epfd: number, op: number, fd: number, event: Buffer | null) => number;
  readonly errno: () => number;
}

let calls: EpollCalls | null | undefined;

function epoll(): EpollCalls | null {
  if (calls !== undefined) return calls;
  calls = null;
  if (process.platform !== 'linux' || !isMainThread || !['x64', 'arm64'].includes(process.arch)) return calls;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
    const self = koffi.load(null);
    const defaultLoop = self.func('void *uv_default_loop(void)');
    const backendFd = self.func('int uv_backend_fd(void *loop)')(defaultLoop()) as number;
    const ctl = self.func('int epoll_ctl(int epfd, int op, int fd, void *event)');
    if (backendFd >= 0) calls = { backendFd, ctl, errno: () => koffi.errno() };
  } catch {
    calls = null;
  }
  return calls;
}

/** struct epoll_event { uint32_t events; epoll_data_t data; }: packed on x86-64 (data at 4), aligned elsewhere (data at 8). */
function epollEvent(fd: number): Buffer {
  const dataOffset = process.arch === 'x64' ? 4 : 8;
  const event = Buffer.alloc(dataOffset + 8);
  event.writeUInt32LE(EPOLLIN, 0);
  event.writeInt32LE(fd, dataOffset);
  return event;
}

/** Whether accepts can be paused here (Linux x64/arm64, main thread, koffi loaded). */
export function canPauseAccepts(): boolean {
  return epoll() !== null;
}

/** Stops accepting on a listening server; its queued clients wait. Returns the paused fd, or null when it could not. */
export function pauseAccepts(server: net.Server): number | null {
  const native = epoll();
  const fd = handleFd(server);
  if (!native || fd === null) return null;
  return native.ctl(native.backendFd, EPOLL_CTL_DEL, fd, null) === 0 ? fd : null;
}

/** Accepts again on a server pausedAccepts paused as `fd`; false when it is closed or its fd changed. */
export function resumeAccepts(server: net.Server, fd: number): boolean {
  const native = epoll();
  if (!native || !server.listening || handleFd(server) !== fd) return false;
  return native.ctl(native.backendFd, EPOLL_CTL_ADD, fd, epollEvent(fd)) === 0 || native.errno() === EEXIST;
}
