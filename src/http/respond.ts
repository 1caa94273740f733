import type { ClientEndReason, ClientSession } from './client-session.js';

// The proxy's own answers: a status and one short line of text, never a stack or an
// upstream's internals. Written by the client session (keep-alive or close) and raw on a
// socket that left HTTP (CONNECT, Upgrade), always closing.

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

/**
 * A whole error response. `connection`: the Connection lines of the client's hop;
 * `headOnly`: the answer to a HEAD request (the length is stated, no body follows).
 */
export function errorResponse(status: number, detail: string, connection: string, headOnly = false, extraHeaders = ''): string {
  const text = STATUS_TEXT[status] ?? 'Error';
  const body = `${status} ${text}${detail ? `: ${detail}` : ''}\n`;
  return (
    `HTTP/1.1 ${status} ${text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `${extraHeaders}${connection}\r\n${headOnly ? '' : body}`
  );
}

/** Answer raw on a connection that left HTTP, then close it (`reason`) once flushed. */
export function respondRaw(client: ClientSession, status: number, reason: ClientEndReason, detail?: string, extraHeaders = ''): void {
  const socket = client.socket;
  // Already gone: its own close named the reason.
  if (socket.destroyed) return;
  if (socket.writable) socket.write(errorResponse(status, detail ?? '', 'Connection: close\r\n', false, extraHeaders));
  client.close(reason, 'flush');
}
