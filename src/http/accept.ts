import net from 'node:net';
import { getSystemErrorName } from 'node:util';

// Accepting client connections whose reads land in one buffer shared by every client
// socket of the process (net's `onread` option), instead of a fresh Buffer and a stream
// 'data' event per read: about 2 us less CPU per read on this machine (bench/), on the
// read every request costs. Reads run one at a time on the event loop, so one buffer
// serves all sockets, as long as nothing keeps a view of it past the read's callback:
// the session copies what it keeps (a partial head, pipelined bytes, request bodies).
//
// net.Server has no `onread` option for the sockets it accepts, so the listening
// handle's `onconnection` callback is replaced by one that builds the Socket with it:
// the same construction node does, minus the server's connection count (the route keeps
// its own). When the handle is not what this expects (another Node version), accepted
// sockets come through the ordinary 'connection' event and 'data' events instead.

/** Where a client socket's reads go; `null` until its session takes them. */
export interface ClientReads {
  deliver: ((chunk: Buffer) => void) | null;
}

const SHARED_READ_SIZE = 64 * 1024;
const shared = Buffer.allocUnsafe(SHARED_READ_SIZE);

interface ListenHandle {
  onconnection: (error: number, clientHandle: unknown) => void;
}

/**
 * Takes over the accepting of a listening server. Returns false (and leaves the server
 * alone) when its handle does not look like node's TCP handle.
 */
export function acceptWithSharedReads(server: net.Server, onSocket: (socket: net.Socket, reads: ClientReads) => void): boolean {
  const handle = (server as unknown as { _handle?: Partial<ListenHandle> | null })._handle;
  if (!handle || typeof handle.onconnection !== 'function') return false;
  handle.onconnection = (error: number, clientHandle: unknown): void => {
    if (error) {
      // As node's own accept does (EMFILE and the like): the server's 'error'.
      server.emit('error', Object.assign(new Error(`accept: ${getSystemErrorName(error)}`), { code: getSystemErrorName(error) }));
      return;
    }
    const reads: ClientReads = { deliver: null };
    const socket = new net.Socket({
      handle: clientHandle,
      allowHalfOpen: true,
      readable: true,
      writable: true,
      onread: {
        buffer: shared,
        callback: (bytes: number, buffer: Buffer): boolean => {
          if (reads.deliver !== null) reads.deliver(buffer.subarray(0, bytes));
          return true;
        },
      },
    } as net.SocketConstructorOpts);
    onSocket(socket, reads);
  };
  return true;
}
