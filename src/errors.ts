// One error class for the proxy's own failures: a code from one table and the side
// that failed, so logs and callers can tell who to blame and whether a retry is safe.

export const ERROR_CODES = {
  CONFIG_INVALID: 'the configuration is invalid',
  LISTEN_FAILED: 'a listener could not bind',
  CONNECT_TIMEOUT: 'the upstream did not accept the connection in time',
  CONNECT_FAILED: 'the upstream refused or could not be reached',
  TLS_FAILED: 'the TLS handshake failed',
  CLIENT_REFUSED: 'the client broke the protocol before its session began',
  DESTINATION_REFUSED: 'the destination is not one this proxy connects to',
  SOCKOPT_UNSUPPORTED: 'socket options cannot be set on this platform',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;
export type Side = 'downstream' | 'upstream' | 'proxy';

export class ProxyError extends Error {
  readonly code: ErrorCode;
  readonly side: Side;
  constructor(code: ErrorCode, side: Side, detail?: string, options?: { cause?: unknown }) {
    super(detail ? `${ERROR_CODES[code]}: ${detail}` : ERROR_CODES[code], options);
    this.name = 'ProxyError';
    this.code = code;
    this.side = side;
  }
}

/** The HTTP status a client gets when its upstream could not be dialled. */
export function dialFailureStatus(error: unknown): 403 | 502 | 504 {
  if (!(error instanceof ProxyError)) return 502;
  if (error.code === 'DESTINATION_REFUSED') return 403;
  return error.code === 'CONNECT_TIMEOUT' ? 504 : 502;
}
