import http from 'node:http';
import type net from 'node:net';
import type { HttpOptions } from '../config/schema.js';
import { STATUS_TEXT } from './respond.js';

// The client side of an HTTP route: node's HTTP server (llhttp, strict parsing), set up
// as a proxy needs it. Requests that never parse are answered here, with a short body
// and a close: 400 malformed (bad request line, CL+TE conflict, bad chunk), 431 head
// too large, 408 head too slow (slowloris).

/** How often node checks the head deadline: a few times per headersTimeout, within [50 ms, 1 s]. */
function checkingIntervalMs(headersTimeoutMs: number): number {
  return Math.min(1_000, Math.max(50, Math.floor(headersTimeoutMs / 4)));
}

export function createProxyServer(options: HttpOptions): http.Server {
  const server = http.createServer({
    maxHeaderSize: options.maxHeaderSize,
    headersTimeout: options.headersTimeoutMs,
    // Bodies stream for as long as they take (uploads, long polls); a stalled client is
    // the route's idleTimeout's business, not a whole-request deadline's.
    requestTimeout: 0,
    keepAliveTimeout: options.clientIdleTimeoutMs,
    connectionsCheckingInterval: checkingIntervalMs(options.headersTimeoutMs),
    // The route checks Host itself (RFC 9112 3.2), to answer with its own short body.
    requireHostHeader: false,
    noDelay: true,
    // Never the lenient parser: request smuggling lives in the leniencies.
    insecureHTTPParser: false,
  });
  applyServerOptions(server, options);
  return server;
}

/** The settings node reads per connection, so a reload reaches new connections. */
export function applyServerOptions(server: http.Server, options: HttpOptions): void {
  server.headersTimeout = options.headersTimeoutMs;
  server.keepAliveTimeout = options.clientIdleTimeoutMs;
  // clientMaxRequests is counted by the route (node's maxRequestsPerSocket advertises
  // "max=N" but never says Connection: close on the last response).
  server.maxRequestsPerSocket = 0;
  server.requestTimeout = 0;
  server.timeout = 0;
}

/** The status for a request node could not parse; null when there is nobody to answer. */
export function clientErrorStatus(error: NodeJS.ErrnoException): number | null {
  switch (error.code) {
    case 'ECONNRESET':
    case 'EPIPE':
      return null;
    case 'HPE_HEADER_OVERFLOW':
      return 431;
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 408;
    default:
      return 400;
  }
}

/**
 * Answers a parse failure, unless a response is already under way on the socket (an
 * answer now would corrupt it): then the socket just closes. Returns the status sent.
 */
export function answerClientError(error: NodeJS.ErrnoException, socket: net.Socket): number | null {
  const status = clientErrorStatus(error);
  const inFlight = (socket as net.Socket & { _httpMessage?: http.ServerResponse | null })._httpMessage;
  if (status === null || !socket.writable || (inFlight && inFlight.headersSent)) {
    socket.destroy();
    return null;
  }
  const body = `${status} ${STATUS_TEXT[status]}\n`;
  socket.write(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
  );
  socket.destroySoon();
  return status;
}
