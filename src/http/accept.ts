import type net from 'node:net';
import { acceptWith } from '../net/accept.js';
import { sharedReadBuffer } from '../net/shared-reads.js';

// Accepting client connections whose reads land in one buffer shared by every client
// socket of the process (net's `onread` option), instead of a fresh Buffer and a stream
// 'data' event per read: about 2 us less CPU per read on this machine (bench/), on the
// read every request costs. Reads run one at a time on the event loop, so one buffer
// serves all sockets, as long as nothing keeps a view of it past the read's callback:
// the session copies what it keeps (a partial head, pipelined bytes, request bodies).

/** Where a client socket's reads go; `null` until its session takes them. */
export interface ClientReads {
  deliver: ((chunk: Buffer) => void) | null;
}

/**
 * Takes over the accepting of a listening server. Returns false (and leaves the server
 * alone) when its handle does not look like node's TCP handle.
 */
export function acceptWithSharedReads(server: net.Server, onSocket: (socket: net.Socket, reads: ClientReads) => void): boolean {
  return acceptWith(
    server,
    () => {
      const reads: ClientReads = { deliver: null };
      const onread = {
        buffer: sharedReadBuffer,
        callback: (bytes: number, buffer: Buffer): boolean => {
          if (reads.deliver !== null) reads.deliver(buffer.subarray(0, bytes));
          return true;
        },
      };
      return { options: { allowHalfOpen: true, onread }, context: reads };
    },
    onSocket,
  );
}
