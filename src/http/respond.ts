import type http from 'node:http';
import type net from 'node:net';

// The proxy's own answers: a status and one short line of text, never a stack or an
// upstream's internals. Two shapes: on a ServerResponse (node frames it), and raw on a
// socket that left the HTTP server (parse errors, CONNECT, Upgrade), always closing.

export const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: 'Bad Request',
  403: 'Forbidden',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

function bodyFor(status: number, detail?: string): string {
  return `${status} ${STATUS_TEXT[status] ?? 'Error'}${detail ? `: ${detail}` : ''}\n`;
}

/** Answer on a ServerResponse. Returns false when too late (the head already went out). */
export function respondError(res: http.ServerResponse, status: number, detail?: string, close = false): boolean {
  if (res.headersSent || res.destroyed) return false;
  const body = bodyFor(status, detail);
  if (close) res.shouldKeepAlive = false;
  res.writeHead(status, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    ...(close ? { Connection: 'close' } : {}),
  });
  res.end(body);
  return true;
}

/** Answer raw on a socket the HTTP server no longer owns, then close it once flushed. */
export function respondRaw(socket: net.Socket, status: number, detail?: string, extraHeaders = ''): void {
  if (socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = bodyFor(status, detail);
  socket.write(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\n` +
      `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `${extraHeaders}Connection: close\r\n\r\n${body}`,
  );
  socket.destroySoon();
}
