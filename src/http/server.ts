import net from 'node:net';
import type { HttpOptions } from '../config/schema.js';
import type { SessionSettings } from './client-session.js';

// The client side of an HTTP route: a plain TCP listener; each accepted socket becomes a
// ClientSession (client-session.ts), which parses HTTP/1.1 itself. node:http's server is
// not used on the data path: its per-request objects, streams and timers cost more CPU
// than the rest of the proxy together (measured on this machine: a node:http server that
// only answers costs ~100 us of CPU per Connection: close request, HAProxy ~50 us for the
// whole proxied request).

export function createProxyServer(onConnection: (socket: net.Socket) => void): net.Server {
  // allowHalfOpen: the session decides what a client's FIN means (it closes at once, as
  // node's server does by default), without node ending our side first.
  return net.createServer({ allowHalfOpen: true }, onConnection);
}

/** The settings each request reads when it starts, derived once per config. */
export function sessionSettings(options: HttpOptions): SessionSettings {
  const keepAliveSeconds = Math.floor(options.clientIdleTimeoutMs / 1000);
  return {
    maxHeaderSize: options.maxHeaderSize,
    headersTimeoutMs: options.headersTimeoutMs,
    bodyTimeoutMs: options.bodyTimeoutMs,
    clientIdleTimeoutMs: options.clientIdleTimeoutMs,
    clientMaxRequests: options.clientMaxRequests,
    // As node's server said it: clients (node's agent among them) stop reusing a
    // connection before the advertised idle limit, so they do not race our close.
    keepAliveLines: keepAliveSeconds > 0 ? `Connection: keep-alive\r\nKeep-Alive: timeout=${keepAliveSeconds}\r\n` : 'Connection: keep-alive\r\n',
  };
}
