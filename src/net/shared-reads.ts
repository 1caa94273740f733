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
// Each socket has one reader (its session, or the warm pool while it is parked), set by
// readInto(). Bytes that arrive before any reader is set are kept in order and handed
// to the first one (a server that speaks first, such as MySQL's greeting).

export type ReadSink = (socket: net.Socket, chunk: Buffer) => void;

const SHARED_READ_SIZE = 64 * 1024;
const shared = Buffer.allocUnsafe(SHARED_READ_SIZE);

const SINK = Symbol('keepalive-proxy.read-sink');
const EARLY = Symbol('keepalive-proxy.early-reads');
const SHARED = Symbol('keepalive-proxy.shared-reads');

type ReadingSocket = net.Socket & { [SINK]?: ReadSink | null; [EARLY]?: Buffer[]; [SHARED]?: true };

function onSharedRead(this: ReadingSocket, bytes: number, buffer: Buffer): boolean {
  const chunk = Buffer.from(buffer.subarray(0, bytes));
  const sink = this[SINK];
  if (sink) sink(this, chunk);
  else (this[EARLY] ??= []).push(chunk);
  return true; // keep reading: backpressure goes through socket.pause()
}

/** The `onread` option for net.connect() and for sockets built around accepted handles. */
export const sharedOnread = { buffer: shared, callback: onSharedRead };

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
