import type net from 'node:net';
import { ProxyError } from '../errors.js';
import type { StartTls } from '../net/dial.js';
import { readPreludeReply } from '../net/prelude.js';

// MySQL / MariaDB TLS is negotiated inside the handshake: the server's greeting
// (HandshakeV10, sequence id 0) offers CLIENT_SSL; a client that wants TLS answers with
// an SSL request (sequence id 1: the first 32 bytes of its HandshakeResponse41, with
// CLIENT_SSL), both sides handshake, and the client sends its full response (sequence id
// 2) inside TLS.
//
// The server takes the capability flags, max packet size and character set from the SSL
// request alone and never parses them again from the response that follows ("because of
// legacy reasons we chose not to parse the packet fields a second time", in both MySQL's
// and MariaDB's parse_client_handshake_packet). So the proxy cannot send an SSL request
// of its own making ahead of the client: the session would run with the proxy's flags
// (CLIENT_FOUND_ROWS, CLIENT_INTERACTIVE, CLIENT_MULTI_STATEMENTS, CLIENT_DEPRECATE_EOF...)
// instead of the client's. The dial reads the greeting (deferred StartTls) and the TLS
// handshake waits for the client's response, whose first 32 bytes become the SSL request.

export const CLIENT_SSL = 0x800;
const CLIENT_PROTOCOL_41 = 0x200;
const HEADER = 4;
/** The SSL request's payload: capability flags (4), max packet size (4), charset (1), 23 reserved. */
export const SSL_REQUEST_PAYLOAD = 32;
/** The whole SSL request packet, header included. */
export const SSL_REQUEST_LENGTH = HEADER + SSL_REQUEST_PAYLOAD;
const GREETING_PROTOCOL = 0x0a;
const ERR = 0xff;
/** A greeting is a few hundred bytes; more than this before the server waits is not a greeting. */
const MAX_GREETING_BYTES = 4096;

/** The length of the complete packet at the start of `bytes`, 0 while more is needed. */
export function packetLength(bytes: Buffer): number {
  if (bytes.length < HEADER) return 0;
  const length = HEADER + bytes.readUIntLE(0, 3);
  return bytes.length >= length ? length : 0;
}

/** Offset, in a greeting packet (header included), of the byte holding CLIENT_SSL; -1 when it is not a HandshakeV10. */
function greetingSslByte(greeting: Buffer): number {
  if (greeting.length <= HEADER || greeting[HEADER] !== GREETING_PROTOCOL) return -1;
  // protocol (1), server version NUL-terminated, thread id (4), scramble part 1 (8), filler (1), capabilities low (2)
  const nul = greeting.indexOf(0, HEADER + 1);
  if (nul === -1) return -1;
  const at = nul + 1 + 4 + 8 + 1 + 1;
  return at < greeting.length ? at : -1;
}

/** The server's capability flags (low 16 bits), or null when `greeting` is not a HandshakeV10. */
export function greetingCapabilities(greeting: Buffer): number | null {
  const at = greetingSslByte(greeting);
  return at === -1 ? null : greeting.readUInt16LE(at - 1);
}

/** A copy of the greeting that offers TLS to the client, or hides it. */
export function offerTls(greeting: Buffer, offer: boolean): Buffer {
  const at = greetingSslByte(greeting);
  if (at === -1) return greeting;
  const copy = Buffer.from(greeting);
  const bit = CLIENT_SSL >> 8;
  copy[at] = offer ? copy[at]! | bit : copy[at]! & ~bit;
  return copy;
}

/** The text of an ERR packet (error code and message), for a log line. */
function errText(packet: Buffer): string {
  if (packet.length < HEADER + 3) return 'an empty ERR packet';
  const code = packet.readUInt16LE(HEADER + 1);
  // A '#' and a 5-character SQL state may precede the message.
  const text = packet.subarray(HEADER + 3).toString('utf8');
  return `${code} ${text.startsWith('#') ? text.slice(6) : text}`;
}

export const mysqlStartTls: StartTls = {
  name: 'mysql',
  deferred: true,
  async negotiate(raw: net.Socket): Promise<readonly Buffer[]> {
    // The server waits for the client after its greeting: a byte more would be injected.
    const greeting = await readPreludeReply(raw, 'MySQL greeting', packetLength, MAX_GREETING_BYTES);
    // "Too many connections", "Host is blocked": the server refuses before any TLS.
    if (greeting[HEADER] === ERR) throw new ProxyError('CONNECT_FAILED', 'upstream', `the server refused the connection: ${errText(greeting)}`);
    const capabilities = greetingCapabilities(greeting);
    if (capabilities === null) throw new ProxyError('TLS_FAILED', 'upstream', 'the server did not send a MySQL HandshakeV10 greeting');
    if (!(capabilities & CLIENT_SSL)) throw new ProxyError('TLS_FAILED', 'upstream', 'the server does not offer TLS (no CLIENT_SSL in its greeting)');
    if (!(capabilities & CLIENT_PROTOCOL_41)) throw new ProxyError('TLS_FAILED', 'upstream', 'the server does not speak protocol 4.1');
    return [greeting];
  },
};

/**
 * The SSL request for the server made from the start of the client's HandshakeResponse41
 * (at least HEADER + 32 bytes): its own flags with CLIENT_SSL, its max packet size,
 * charset and reserved bytes (MariaDB's extended capabilities), sequence id 1.
 */
export function sslRequestFrom(response: Buffer): Buffer {
  const request = Buffer.alloc(SSL_REQUEST_LENGTH);
  request.writeUIntLE(SSL_REQUEST_PAYLOAD, 0, 3);
  request[3] = 1;
  response.copy(request, HEADER, HEADER, HEADER + SSL_REQUEST_PAYLOAD);
  request.writeUInt32LE((request.readUInt32LE(HEADER) | CLIENT_SSL) >>> 0, HEADER);
  return request;
}

export type ClientFirstPacket = 'more' | 'ssl-request' | 'response' | 'short-response';

/** What the client's first packet is, from its first bytes: 'more' until HEADER + 32 have come (or the whole of a shorter packet). */
export function classifyFirstPacket(bytes: Buffer): ClientFirstPacket {
  if (bytes.length < HEADER) return 'more';
  const length = bytes.readUIntLE(0, 3);
  if (length < SSL_REQUEST_PAYLOAD) return bytes.length >= HEADER + length ? 'short-response' : 'more';
  if (bytes.length < SSL_REQUEST_LENGTH) return 'more';
  const flags = bytes.readUInt32LE(HEADER);
  if (length === SSL_REQUEST_PAYLOAD && flags & CLIENT_SSL) return 'ssl-request';
  return 'response';
}

/** The CLIENT_SSL flag of a client's first packet (at least HEADER + 2 bytes). */
export function asksForTls(bytes: Buffer): boolean {
  return (bytes.readUInt16LE(HEADER) & CLIENT_SSL) !== 0;
}
