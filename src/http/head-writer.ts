import { STATUS_CODES } from 'node:http';
import { BODYLESS_BY_DEFAULT } from './headers.js';
import {
  FIELD_CONTENT_LENGTH,
  FIELD_HOP,
  FIELD_HOST,
  FIELD_PROXY_AUTHORIZATION,
  FIELD_X_FORWARDED,
  FIELD_X_FORWARDED_FOR,
  latin1,
  nameIs,
  type FieldLines,
  type RequestHead,
  type ResponseHead,
} from './head-parser.js';

// The heads the lean path writes: the upstream request (our request line, Host,
// X-Forwarded-*, framing and Connection, around the client's end-to-end field lines) and
// the client's response and interim responses (our status line, framing and Connection
// around the upstream's end-to-end field lines). The kept field lines are taken as whole
// runs of the buffer they were parsed from. Heads are latin1 strings (bytes 1:1): node
// writes a short string from a stack buffer, so no Buffer is allocated per head.
// Hop-by-hop fields never cross (RFC 9110 7.6.1): Connection and the fields it names,
// Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade.
//
// The framing rule: Content-Length and Transfer-Encoding (and Host, upstream-bound) are
// never copied from the peer's field lines; each head states them from what the parser
// decided (body kind and length). What survives hop-by-hop stripping therefore never
// decides how the next hop reads the message: a `Connection: Content-Length` cannot
// leave a body unframed on a pooled connection (request smuggling) or a response
// unframed on a kept-alive client connection.

export interface UpstreamHeadOptions {
  /** The request target on the upstream hop (origin-form). */
  readonly path: string;
  /** The Host field for the upstream hop. */
  readonly authority: string;
  /** Add X-Forwarded-For/-Proto/-Host (and drop the client's -Proto/-Host); null leaves them. */
  readonly forwardedFor: string | null;
  readonly forwardedProto: 'http' | 'https';
  /** Proxy-Authorization was for this proxy (forward mode): never passed on. */
  readonly dropProxyAuthorization: boolean;
}

/** Bit per FIELD_* kind that does not cross to the next hop (framing is written from the parse). */
const DROP_FOR_CLIENT = (1 << FIELD_HOP) | (1 << FIELD_CONTENT_LENGTH);
const DROP_FOR_UPSTREAM = (1 << FIELD_HOP) | (1 << FIELD_HOST) | (1 << FIELD_CONTENT_LENGTH);
const DROP_FORWARDED = (1 << FIELD_X_FORWARDED) | (1 << FIELD_X_FORWARDED_FOR);
const DROP_PROXY_AUTHORIZATION = 1 << FIELD_PROXY_AUTHORIZATION;

/** The kept field lines, as one string: runs of adjacent kept lines are sliced whole. */
function keptLines(head: FieldLines, drop: number): string {
  const { source, lines, nominated } = head;
  let text = '';
  let runStart = -1;
  let runEnd = -1;
  for (let i = 0; i < lines.length; i += 4) {
    const start = lines[i]!;
    if ((drop & (1 << lines[i + 3]!)) !== 0 || (nominated !== null && isNominated(source, start, lines[i + 1]!, nominated))) continue;
    const end = lines[i + 2]! + 2;
    if (runEnd === start) {
      runEnd = end;
      continue;
    }
    if (runStart !== -1) text += latin1(source, runStart, runEnd);
    runStart = start;
    runEnd = end;
  }
  if (runStart !== -1) text += latin1(source, runStart, runEnd);
  return text;
}

function isNominated(source: Buffer, start: number, colon: number, nominated: string[]): boolean {
  for (const option of nominated) if (nameIs(source, start, colon, option)) return true;
  return false;
}

/** The upstream request head: always HTTP/1.1 and keep-alive, whatever the client spoke. */
export function upstreamRequestHead(head: RequestHead, options: UpstreamHeadOptions): string {
  const addForwarded = options.forwardedFor !== null;
  const drop = DROP_FOR_UPSTREAM | (addForwarded ? DROP_FORWARDED : 0) | (options.dropProxyAuthorization ? DROP_PROXY_AUTHORIZATION : 0);
  let text = `${head.method} ${options.path} HTTP/1.1\r\nHost: ${options.authority}\r\n${keptLines(head, drop)}`;
  if (addForwarded) {
    // Each proxy appends the address it received the request from; the rest are ours to state.
    const chain = head.forwardedFor === null ? options.forwardedFor : `${head.forwardedFor.join(', ')}, ${options.forwardedFor}`;
    text += `X-Forwarded-For: ${chain}\r\nX-Forwarded-Proto: ${options.forwardedProto}\r\n`;
    if (head.headers.host !== undefined) text += `X-Forwarded-Host: ${head.headers.host}\r\n`;
  }
  if (head.body === 'chunked') {
    // Our hop carries the body as framed; codings applied before chunked stay applied.
    text += `Transfer-Encoding: ${head.headers['transfer-encoding']}\r\n`;
  } else if (head.body === 'length') {
    text += `Content-Length: ${head.contentLength}\r\n`;
  } else if (head.headers['content-length'] !== undefined || !BODYLESS_BY_DEFAULT.has(head.method)) {
    // No body (RFC 9112 6.3); said explicitly, as some upstreams answer 411 otherwise.
    text += 'Content-Length: 0\r\n';
  }
  return `${text}Connection: keep-alive\r\n\r\n`;
}

/** How the client's response body is framed. */
export type DownstreamFraming = 'none' | 'length' | 'chunked' | 'close';

function statusLine(head: ResponseHead): string {
  if (head.status === 200 && head.reason === 'OK') return 'HTTP/1.1 200 OK\r\n';
  return `HTTP/1.1 ${head.status} ${head.reason === '' ? (STATUS_CODES[head.status] ?? '') : head.reason}\r\n`;
}

/**
 * The client's response head. `connection` is the Connection (and Keep-Alive) lines for
 * the client's hop; `date` a Date line when the upstream sent none (RFC 9110 6.6.1: a
 * recipient with a clock adds one to a response it forwards).
 */
export function downstreamResponseHead(head: ResponseHead, framing: DownstreamFraming, connection: string, date: string): string {
  let text = statusLine(head) + keptLines(head, DROP_FOR_CLIENT);
  if (framing === 'chunked') text += `Transfer-Encoding: ${head.transferEncoding ?? 'chunked'}\r\n`;
  else if (framing === 'length' || (framing === 'none' && head.body === 'length' && head.status !== 204)) {
    // Without a body (HEAD, 304) the length still describes the representation (RFC 9110
    // 8.6); a 204 never carries one.
    text += `Content-Length: ${head.contentLength}\r\n`;
  }
  if (!head.hasDate) text += date;
  return `${text}${connection}\r\n`;
}

/** An interim (1xx) response for an HTTP/1.1 client, with the upstream's end-to-end fields (Link of a 103). */
export function interimResponseHead(head: ResponseHead): string {
  return `${statusLine(head)}${keptLines(head, DROP_FOR_CLIENT)}\r\n`;
}

let dateSecond = -1;
let dateText = '';

/** A Date line (RFC 9110 5.6.7 IMF-fixdate), formatted once per second. */
export function dateLine(now: number): string {
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = `Date: ${new Date(second * 1000).toUTCString()}\r\n`;
  }
  return dateText;
}
