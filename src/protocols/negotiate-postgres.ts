import type net from 'node:net';
import { ProxyError } from '../errors.js';
import type { StartTls } from '../net/dial.js';
import { readPreludeReply } from '../net/prelude.js';

// PostgreSQL's encryption negotiation, both sides, outside the heartbeat codec (which
// sees only what the server sees inside TLS: the startup message onwards).
//
// Upstream: the proxy sends SSLRequest itself, expects exactly one byte: 'S' -> TLS
// handshake; 'N' -> the server refuses TLS, a failure (the modes that reach here all
// require encryption); anything else (an old server's ErrorResponse) -> failure.
//
// Client: the first 8 bytes of a connection may be an SSLRequest or GSSENCRequest,
// which the proxy answers itself ('S' with clientTls, else 'N'; always 'N' to GSSAPI);
// anything else (a StartupMessage, a CancelRequest) goes to the upstream as it is, once
// its length field is one PostgreSQL itself would accept.

const SSL_REQUEST_CODE = 80877103;
const GSSENC_REQUEST_CODE = 80877104;
/** Length 8, then the request code: the whole of an SSLRequest or GSSENCRequest. */
export const NEGOTIATION_REQUEST_LENGTH = 8;
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
export const ACCEPT_TLS = Buffer.from('S', 'latin1');
export const REFUSE_ENCRYPTION = Buffer.from('N', 'latin1');
/** PostgreSQL's MAX_STARTUP_PACKET_LENGTH: a longer startup packet is refused by the server too. */
export const MAX_STARTUP_LENGTH = 10_000;
/** The length word and the protocol version: the shortest startup packet PostgreSQL reads. */
const MIN_STARTUP_LENGTH = 8;

export const postgresStartTls: StartTls = {
  name: 'postgres',
  async negotiate(raw: net.Socket): Promise<readonly Buffer[]> {
    raw.write(SSL_REQUEST);
    // One byte is the whole reply; an ErrorResponse from a pre-7.0 server is more, and wrong either way.
    const reply = await readPreludeReply(raw, 'SSLRequest', () => 1, 1);
    if (reply[0] === ACCEPT_TLS[0]) return [];
    const answer = reply[0] === REFUSE_ENCRYPTION[0] ? 'N: the server does not accept TLS' : `0x${reply[0]!.toString(16)} (not S or N)`;
    throw new ProxyError('TLS_FAILED', 'upstream', `SSLRequest answered ${answer}`);
  },
};

export type PostgresOpening = 'more' | 'ssl-request' | 'gssenc-request' | 'other' | 'invalid';

/**
 * What a client's first bytes are: 'more' until 8 have come (or fewer that already rule a
 * request out, once the 4 of the length word are known); 'invalid' for a length word
 * PostgreSQL would refuse (under 8 or over MAX_STARTUP_LENGTH; a TLS ClientHello sent
 * without SSLRequest is one).
 */
export function classifyOpening(bytes: Buffer): PostgresOpening {
  if (bytes.length < 4) return 'more';
  const length = bytes.readUInt32BE(0);
  if (length < MIN_STARTUP_LENGTH || length > MAX_STARTUP_LENGTH) return 'invalid';
  if (length !== NEGOTIATION_REQUEST_LENGTH) return 'other';
  if (bytes.length < NEGOTIATION_REQUEST_LENGTH) return 'more';
  const code = bytes.readUInt32BE(4);
  if (code === SSL_REQUEST_CODE) return 'ssl-request';
  if (code === GSSENC_REQUEST_CODE) return 'gssenc-request';
  return 'other';
}
