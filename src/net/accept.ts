import type net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { acceptedTcpHandle, interceptAccepts, socketOnHandle, type AcceptedSocketOptions } from './internals.js';
import { RawTcp } from './raw-tcp.js';

// Accepting connections on sockets built by the caller, so that they can carry options
// net.Server has no way to pass (net's `onread`: reads into a caller's buffer, delivered
// to a callback, with no fresh Buffer and no stream 'data' event per read).
//
// The listening handle's `onconnection` callback is replaced (net/internals.ts) by one that
// builds the Socket with the caller's options: the same construction node does, minus the
// server's connection count (every route keeps its own). When the handle is not what this
// expects (another Node version), nothing changes and sockets come through 'connection'.

/**
 * Takes over the accepting of a listening server: `build` returns the options of each
 * accepted socket, `onSocket` receives it. Returns false (and leaves the server alone)
 * when its handle does not look like node's TCP handle.
 */
export function acceptWith<T>(
  server: net.Server,
  build: () => { options: AcceptedSocketOptions; context: T },
  onSocket: (socket: net.Socket, context: T) => void,
): boolean {
  return interceptAccepts(server, (error, clientHandle) => {
    if (error) {
      acceptFailed(server, error);
      return;
    }
    const { options, context } = build();
    onSocket(socketOnHandle(clientHandle, options), context);
  });
}

/**
 * acceptWith for a TCP route: each connection is taken as a raw TCP end (net/raw-tcp.ts,
 * no net.Socket) while `raw()` says so (a reload may add TLS), else as a socket built with
 * `options`.
 */
export function acceptRawOrSocket(
  server: net.Server,
  raw: () => boolean,
  options: AcceptedSocketOptions,
  onRaw: (end: RawTcp) => void,
  onSocket: (socket: net.Socket) => void,
): boolean {
  return interceptAccepts(server, (error, clientHandle) => {
    if (error) acceptFailed(server, error);
    else if (raw()) onRaw(RawTcp.accepted(acceptedTcpHandle(clientHandle)));
    else onSocket(socketOnHandle(clientHandle, options));
  });
}

/** As node's own accept does (EMFILE and the like): the server's 'error'. */
function acceptFailed(server: net.Server, error: number): void {
  server.emit('error', Object.assign(new Error(`accept: ${getSystemErrorName(error)}`), { code: getSystemErrorName(error), syscall: 'accept' }));
}
