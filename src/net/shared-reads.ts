import type net from 'node:net';

// Reads of the TCP path's sockets land in one buffer shared by the whole process (net's
// `onread` option) and are copied out into a Buffer of the read's own size: no 64 KiB
// allocation and no Readable bookkeeping ('data' event, state machine) per read, which
// is most of what a read costs the proxy beyond the system call.
//
// The copy is what makes one buffer safe for every socket: a write the kernel does not
// take at once keeps a reference to its chunk, and a held or early chunk lives on, so
// nothing may point into memory the next read overwrites. Reads run one at a time on
// the event loop; the callback copies before anything else can run.
//
// A socket in full flow (a read of 32 KiB or more: bulk transfer) reads into buffers of
// its own instead, each handed over whole, with no copy, and replaced; its first small
// read sends it back to the shared buffer. At most MAX_OWN_BUFFERS sockets do so at a
// time, so idle sockets never pin 64 KiB each.
//
// Each socket has one reader (its session, or the warm pool while it is parked), set by
// readInto(). Bytes that arrive before any reader is set are kept in order and handed
// to the first one (a server that speaks first, such as MySQL's greeting).

export type ReadSink = (socket: net.Socket, chunk: Buffer) => void;

const READ_SIZE = 64 * 1024;
const BULK_READ = 32 * 1024;
const MAX_OWN_BUFFERS = 256;
const shared = Buffer.allocUnsafe(READ_SIZE);

/**
 * The process-wide read buffer, also for the HTTP path's client sockets (src/http/accept.ts),
 * which use it the same way: nothing keeps a view of it past the read's callback.
 */
export const sharedReadBuffer: Buffer = shared;

const SINK = Symbol('keepalive-proxy.read-sink');
const EARLY = Symbol('keepalive-proxy.early-reads');
const SHARED = Symbol('keepalive-proxy.shared-reads');
const OWN = Symbol('keepalive-proxy.own-read-buffer');
const RELEASES_ON_CLOSE = Symbol('keepalive-proxy.own-buffer-release');

type ReadingSocket = net.Socket & {
  [SINK]?: ReadSink | null;
  [EARLY]?: Buffer[];
  [SHARED]?: true;
  [OWN]?: Buffer;
  [RELEASES_ON_CLOSE]?: true;
};

let ownBuffers = 0;
/** The buffer for the next read of the socket whose callback just ran (see nextReadBuffer). */
let nextBuffer: Buffer = shared;

function onSharedRead(this: ReadingSocket, bytes: number, buffer: Buffer): boolean {
  let chunk: Buffer;
  if (buffer === this[OWN] && bytes >= BULK_READ) {
    chunk = buffer.subarray(0, bytes);
    this[OWN] = Buffer.allocUnsafe(READ_SIZE);
  } else {
    chunk = Buffer.from(buffer.subarray(0, bytes));
    if (bytes < BULK_READ) releaseOwnBuffer(this);
    else if (this[OWN] === undefined && ownBuffers < MAX_OWN_BUFFERS) takeOwnBuffer(this);
  }
  const sink = this[SINK];
  if (sink) sink(this, chunk);
  else (this[EARLY] ??= []).push(chunk);
  // Set after the sink: a socket it creates gets the shared buffer, this one its own.
  nextBuffer = this[OWN] ?? shared;
  return true; // keep reading: backpressure goes through socket.pause()
}

/**
 * net calls this right after every read callback of the same socket (and once when the
 * socket is set up; an order net/internals.ts documents and its test checks): the
 * buffer that socket's next read goes to.
 */
function nextReadBuffer(): Buffer {
  const buffer = nextBuffer;
  nextBuffer = shared;
  return buffer;
}

function takeOwnBuffer(socket: ReadingSocket): void {
  ownBuffers++;
  socket[OWN] = Buffer.allocUnsafe(READ_SIZE);
  if (!socket[RELEASES_ON_CLOSE]) {
    socket[RELEASES_ON_CLOSE] = true;
    socket.once('close', onOwnerClosed);
  }
}

function releaseOwnBuffer(socket: ReadingSocket): void {
  if (socket[OWN] === undefined) return;
  socket[OWN] = undefined;
  ownBuffers--;
}

function onOwnerClosed(this: ReadingSocket): void {
  releaseOwnBuffer(this);
}

/** The `onread` option for net.connect() and for sockets built around accepted handles. */
export const sharedOnread = { buffer: nextReadBuffer, callback: onSharedRead };

/** @internal For tests: how many sockets read into buffers of their own now. */
export function ownReadBuffers(): number {
  return ownBuffers;
}

/** Marks a socket built with sharedOnread (net does not say which sockets have `onread`). */
export function markSharedReads(socket: net.Socket): void {
  (socket as ReadingSocket)[SHARED] = true;
}

/** For sockets without sharedOnread: their 'data' events go to the same sink. */
function onDataEvent(this: ReadingSocket, chunk: Buffer): void {
  this[SINK]?.(this, chunk);
}

/**
 * Sends the socket's reads to `sink` from now on (null: keep them until the next
 * reader). Bytes that came while nobody read are delivered first, in order. A socket
 * without sharedOnread gets the same through its 'data' events.
 */
export function readInto(socket: net.Socket, sink: ReadSink | null): void {
  const reading = socket as ReadingSocket;
  if (!reading[SHARED]) {
    if (reading[SINK] === undefined) socket.on('data', onDataEvent);
    reading[SINK] = sink;
    if (sink === null) socket.pause();
    return;
  }
  reading[SINK] = sink;
  const early = reading[EARLY];
  if (sink === null || early === undefined) return;
  reading[EARLY] = undefined;
  for (let i = 0; i < early.length; i++) {
    if (reading[SINK] !== sink) {
      // The sink handed the socket on mid-way: the rest waits for the next reader.
      reading[EARLY] = early.slice(i);
      return;
    }
    sink(socket, early[i]!);
  }
}
