import { NEVER_NOMINATED } from './headers.js';

// A small, strict HTTP/1.1 message-head parser (RFC 9112 sections 2-6) for the lean data
// path: request heads from clients, response heads from upstreams. node's llhttp is
// internal to node:http, and node:http's per-message machinery costs more than the
// proxying itself; a proxy needs only the head, the framing and the hop-by-hop fields.
//
// It works on the bytes: each field line is checked and recorded as a byte range with
// what it means to the proxy (head-writer.ts copies the kept ranges into the next hop's
// head), and only the few values the proxy reads become strings.
//
// Strict where leniency lets two parsers disagree about where a message ends (request
// smuggling): CRLF line endings only, no whitespace before a field's colon, no obs-fold,
// no control characters in values, one Content-Length, Transfer-Encoding whose final
// coding is chunked, never both. A request that breaks a rule gets 400, a head past the
// size limit 431; an upstream response that breaks one gets 502.

/** What a header field means to the proxy; everything else is end-to-end and passes through. */
export const FIELD_OTHER = 0;
/** Hop-by-hop (RFC 9110 7.6.1) plus Keep-Alive, Proxy-Connection and Trailer: never forwarded. */
export const FIELD_HOP = 1;
export const FIELD_HOST = 2;
export const FIELD_CONTENT_LENGTH = 3;
export const FIELD_X_FORWARDED_FOR = 4;
export const FIELD_X_FORWARDED = 5;
export const FIELD_PROXY_AUTHORIZATION = 6;
export const FIELD_DATE = 7;

/** The field lines of a head, as byte ranges of its buffer. */
export interface FieldLines {
  /** The buffer the head was parsed from (valid while the caller holds it unchanged). */
  readonly source: Buffer;
  /** [start, colon, end, kind] per field line: name at [start, colon), line ends (CR) at end. */
  readonly lines: number[];
  /**
   * Connection options other than close, keep-alive and upgrade, lower case: more hop-by-hop
   * fields. Never a framing or routing field (headers.ts NEVER_NOMINATED says why).
   */
  readonly nominated: string[] | null;
}

/** The parts of a request head the route, the exchange and the upgrade path read. */
export interface RequestHead extends FieldLines {
  readonly method: string;
  /** The request-target as sent. */
  readonly url: string;
  readonly httpVersion: '1.0' | '1.1';
  /** The few fields read by name (node's IncomingMessage `headers` shape, for the Upgrade path). */
  readonly headers: {
    readonly host: string | undefined;
    readonly upgrade: string | undefined;
    readonly 'transfer-encoding': string | undefined;
    readonly 'content-length': string | undefined;
  };
  /** X-Forwarded-For values, in order (a proxy before us), or null. */
  readonly forwardedFor: string[] | null;
  readonly body: 'none' | 'length' | 'chunked';
  readonly contentLength: number;
  /** The client asked for a persistent connection (1.1 without close, 1.0 with keep-alive). */
  readonly keepAlive: boolean;
  /** Connection: upgrade with an Upgrade field (a protocol switch such as WebSocket). */
  readonly upgrade: boolean;
  readonly expectContinue: boolean;
}

export interface ResponseHead extends FieldLines {
  readonly status: number;
  /** The reason phrase, '' when the upstream sent none. */
  readonly reason: string;
  readonly httpVersion: '1.0' | '1.1';
  /** Framing before the request method is considered (HEAD, 204 and 304 have no body whatever they say). */
  readonly body: 'length' | 'chunked' | 'close';
  readonly contentLength: number;
  /** The upstream's Transfer-Encoding value, when chunked (codings before chunked stay applied). */
  readonly transferEncoding: string | undefined;
  /** The upstream lets the connection persist (HTTP/1.1 without close, 1.0 with keep-alive), framing permitting. */
  readonly persistent: boolean;
  readonly keepAliveHeader: string | undefined;
  readonly hasDate: boolean;
}

/**
 * buf[start, end) as a string of the same bytes (latin1 maps each byte to one char).
 * Buffer#latin1Slice is what toString('latin1') ends in, minus its argument handling,
 * which costs as much as the copy for the short strings of a head.
 */
export function latin1(buf: Buffer, start: number, end: number): string {
  return (buf as Buffer & { latin1Slice(start: number, end: number): string }).latin1Slice(start, end);
}

/** A head that can never be valid: the status to answer with (400/431 for requests, 502 for responses). */
export class HeadError {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {}
}

/** Field values the framing and the route read by name, gathered while the lines are checked. */
class Gathered {
  lines: number[] = [];
  nominated: string[] | null = null;
  host: string | undefined = undefined;
  hostCount = 0;
  contentLength: string | undefined = undefined;
  contentLengthCount = 0;
  transferEncoding: string | undefined = undefined;
  close = false;
  keepAlive = false;
  connectionUpgrade = false;
  upgrade: string | undefined = undefined;
  expect: string | undefined = undefined;
  keepAliveHeader: string | undefined = undefined;
  forwardedFor: string[] | null = null;
  hasDate = false;
}

const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1');
const MAX_CONTENT_LENGTH_DIGITS = 15;
const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
const COLON = 0x3a;

// tchar (RFC 9110 5.6.2): the characters of methods, field names and chunk extensions.
export const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TCHAR[c] = 1;

// field-value characters (RFC 9110 5.5): VCHAR, obs-text, SP, HTAB; no other control.
const VALUE_CHAR = new Uint8Array(256);
for (let c = 0x20; c <= 0x7e; c++) VALUE_CHAR[c] = 1;
for (let c = 0x80; c <= 0xff; c++) VALUE_CHAR[c] = 1;
VALUE_CHAR[HTAB] = 1;

// request-target characters: any visible ASCII (and obs-text, passed through as sent); no
// space, no control (RFC 9112 3.2).
const TARGET_CHAR = new Uint8Array(256);
for (let c = 0x21; c <= 0x7e; c++) TARGET_CHAR[c] = 1;
for (let c = 0x80; c <= 0xff; c++) TARGET_CHAR[c] = 1;

/**
 * Where the head starting at `start` ends (the offset just past its blank line), -1 when
 * it is not complete yet. Throws a HeadError when it can never be: past `limit` bytes
 * (431 or 502), or a line ending that is not CRLF (a bare LF head would otherwise wait
 * for a CRLFCRLF that never comes).
 */
export function findHeadEnd(buf: Buffer, start: number, limit: number, tooLarge: number): number {
  const at = buf.indexOf(CRLFCRLF, start);
  if (at !== -1) {
    if (at + 4 - start > limit) throw new HeadError(tooLarge, 'head too large');
    return at + 4;
  }
  if (buf.length - start > limit) throw new HeadError(tooLarge, 'head too large');
  // A LF not preceded by CR: no valid head ever follows.
  let lf = buf.indexOf(LF, start);
  while (lf !== -1) {
    if (lf === start || buf[lf - 1] !== CR) throw new HeadError(tooLarge === 431 ? 400 : 502, 'bare LF in head');
    lf = buf.indexOf(LF, lf + 1);
  }
  return -1;
}

/** Empty lines before a request line (RFC 9112 2.2: a server should ignore at least one). */
export function skipLeadingCrlf(buf: Buffer, start: number): number {
  let at = start;
  while (at + 1 < buf.length && buf[at] === CR && buf[at + 1] === LF) at += 2;
  return at;
}

/** Parses a complete request head, buf[start, end) with end just past its blank line. */
export function parseRequestHead(buf: Buffer, start: number, end: number): RequestHead {
  // Request line: method SP request-target SP HTTP-version CRLF (RFC 9112 3).
  let at = start;
  while (TCHAR[buf[at]!] === 1) at++;
  if (at === start || buf[at] !== SP) throw new HeadError(400, 'invalid method');
  const method = methodName(buf, start, at);
  const targetStart = ++at;
  while (TARGET_CHAR[buf[at]!] === 1) at++;
  if (at === targetStart || buf[at] !== SP) throw new HeadError(400, 'invalid request target');
  const url = latin1(buf, targetStart, at);
  at++;
  if (
    buf[at] !== 0x48 || buf[at + 1] !== 0x54 || buf[at + 2] !== 0x54 || buf[at + 3] !== 0x50 ||
    buf[at + 4] !== 0x2f || buf[at + 5] !== 0x31 || buf[at + 6] !== 0x2e || buf[at + 8] !== CR || buf[at + 9] !== LF
  ) {
    throw new HeadError(400, 'invalid HTTP version');
  }
  const minor = buf[at + 7];
  if (minor !== 0x31 && minor !== 0x30) throw new HeadError(400, 'unsupported HTTP version');
  const httpVersion = minor === 0x31 ? '1.1' : '1.0';

  const fields = new Gathered();
  parseFields(buf, at + 10, end - 2, 400, fields);
  if (fields.hostCount > 1) throw new HeadError(400, 'more than one Host');
  if (fields.contentLengthCount > 1) throw new HeadError(400, 'more than one Content-Length');
  let body: RequestHead['body'] = 'none';
  let contentLength = 0;
  if (fields.transferEncoding !== undefined) {
    // RFC 9112 6.1 and 6.3: both framings at once is how smuggling starts; an HTTP/1.0
    // message with Transfer-Encoding has faulty framing; a request whose final coding is
    // not chunked has no knowable length.
    if (fields.contentLength !== undefined) throw new HeadError(400, 'Content-Length with Transfer-Encoding');
    if (httpVersion === '1.0') throw new HeadError(400, 'Transfer-Encoding in an HTTP/1.0 request');
    if (!chunkedIsFinal(fields.transferEncoding)) throw new HeadError(400, 'Transfer-Encoding without final chunked');
    body = 'chunked';
  } else if (fields.contentLength !== undefined) {
    contentLength = parseContentLength(fields.contentLength);
    if (contentLength < 0) throw new HeadError(400, 'invalid Content-Length');
    if (contentLength > 0) body = 'length';
  }
  return {
    source: buf,
    lines: fields.lines,
    nominated: fields.nominated,
    method,
    url,
    httpVersion,
    headers: { host: fields.host, upgrade: fields.upgrade, 'transfer-encoding': fields.transferEncoding, 'content-length': fields.contentLength },
    forwardedFor: fields.forwardedFor,
    body,
    contentLength,
    keepAlive: httpVersion === '1.1' ? !fields.close : fields.keepAlive && !fields.close,
    upgrade: fields.connectionUpgrade && fields.upgrade !== undefined && httpVersion === '1.1',
    expectContinue: httpVersion === '1.1' && fields.expect !== undefined && fields.expect.toLowerCase() === '100-continue',
  };
}

/** Parses a complete response head, buf[start, end) with end just past its blank line. */
export function parseResponseHead(buf: Buffer, start: number, end: number): ResponseHead {
  // Status line: HTTP-version SP status-code SP [reason-phrase] CRLF (RFC 9112 4); a
  // missing final SP after the code is common enough to accept.
  if (
    buf[start] !== 0x48 || buf[start + 1] !== 0x54 || buf[start + 2] !== 0x54 || buf[start + 3] !== 0x50 ||
    buf[start + 4] !== 0x2f || buf[start + 5] !== 0x31 || buf[start + 6] !== 0x2e || buf[start + 8] !== SP
  ) {
    throw new HeadError(502, 'invalid status line');
  }
  const minor = buf[start + 7];
  if (minor !== 0x31 && minor !== 0x30) throw new HeadError(502, 'unsupported HTTP version');
  const d0 = buf[start + 9]! - 0x30;
  const d1 = buf[start + 10]! - 0x30;
  const d2 = buf[start + 11]! - 0x30;
  if (d0 < 1 || d0 > 5 || d1 < 0 || d1 > 9 || d2 < 0 || d2 > 9) throw new HeadError(502, 'invalid status code');
  const status = d0 * 100 + d1 * 10 + d2;
  let at = start + 12;
  let reason = '';
  if (buf[at] === SP) {
    const reasonStart = ++at;
    while (VALUE_CHAR[buf[at]!] === 1) at++;
    reason = reasonPhrase(buf, reasonStart, at, status);
  }
  if (buf[at] !== CR || buf[at + 1] !== LF) throw new HeadError(502, 'invalid status line');
  const httpVersion = minor === 0x31 ? '1.1' : '1.0';
  const fields = new Gathered();
  parseFields(buf, at + 2, end - 2, 502, fields);
  if (fields.contentLengthCount > 1) throw new HeadError(502, 'more than one Content-Length');
  let body: ResponseHead['body'] = 'close';
  let contentLength = 0;
  let transferEncoding: string | undefined;
  if (fields.transferEncoding !== undefined) {
    // As for requests, both framings at once is refused (node's client does the same).
    if (fields.contentLength !== undefined) throw new HeadError(502, 'Content-Length with Transfer-Encoding');
    // A final coding other than chunked: the body runs until the upstream closes (RFC 9112 6.3).
    if (chunkedIsFinal(fields.transferEncoding) && httpVersion === '1.1') {
      body = 'chunked';
      transferEncoding = fields.transferEncoding;
    }
  } else if (fields.contentLength !== undefined) {
    contentLength = parseContentLength(fields.contentLength);
    if (contentLength < 0) throw new HeadError(502, 'invalid Content-Length');
    body = 'length';
  }
  return {
    source: buf,
    lines: fields.lines,
    nominated: fields.nominated,
    status,
    reason,
    httpVersion,
    body,
    contentLength,
    transferEncoding,
    persistent: httpVersion === '1.1' ? !fields.close : fields.keepAlive && !fields.close,
    keepAliveHeader: fields.keepAliveHeader,
    hasDate: fields.hasDate,
  };
}

/** The field lines as node's rawHeaders array ([name, value, ...]), for the Upgrade path and logs. */
export function rawHeaders(head: FieldLines): string[] {
  const raw: string[] = [];
  const { source, lines } = head;
  for (let i = 0; i < lines.length; i += 4) {
    const colon = lines[i + 1]!;
    const [valueStart, valueEnd] = trimmed(source, colon + 1, lines[i + 2]!);
    raw.push(latin1(source, lines[i]!, colon), latin1(source, valueStart, valueEnd));
  }
  return raw;
}

/** Checks and records the field lines in buf[at, end), `end` being the CR of the blank line. */
function parseFields(buf: Buffer, from: number, end: number, errorStatus: number, fields: Gathered): void {
  let at = from;
  while (at < end) {
    const start = at;
    // obs-fold (a line starting with whitespace) is rejected (RFC 9112 5.2 allows it), as is
    // whitespace (or anything else) between the name and the colon (RFC 9112 5.1).
    while (TCHAR[buf[at]!] === 1) at++;
    if (at === start || buf[at] !== COLON) throw new HeadError(errorStatus, start === at ? 'invalid header line' : 'invalid header name');
    const colon = at++;
    while (VALUE_CHAR[buf[at]!] === 1) at++;
    if (buf[at] !== CR || buf[at + 1] !== LF) throw new HeadError(errorStatus, 'invalid character in a header value');
    fields.lines.push(start, colon, at, classify(buf, start, colon, at, fields));
    at += 2;
  }
}

function isWhitespace(byte: number): boolean {
  return byte === SP || byte === HTAB;
}

/** The value's range without its surrounding whitespace. */
function trimmed(buf: Buffer, start: number, end: number): [number, number] {
  let s = start;
  let e = end;
  while (s < e && isWhitespace(buf[s]!)) s++;
  while (e > s && isWhitespace(buf[e - 1]!)) e--;
  return [s, e];
}

function valueOf(buf: Buffer, colon: number, end: number): string {
  let s = colon + 1;
  let e = end;
  while (s < e && isWhitespace(buf[s]!)) s++;
  while (e > s && isWhitespace(buf[e - 1]!)) e--;
  return latin1(buf, s, e);
}

/** The FIELD_* kind of one field; fields the framing or the route read by name are gathered. */
function classify(buf: Buffer, start: number, colon: number, end: number, fields: Gathered): number {
  // Dispatch on length first: most fields are none of these and cost one switch.
  switch (colon - start) {
    case 2:
      return sameName(buf, start, 'te') ? FIELD_HOP : FIELD_OTHER;
    case 4:
      if (sameName(buf, start, 'host')) {
        fields.host = valueOf(buf, colon, end);
        fields.hostCount++;
        return FIELD_HOST;
      }
      if (sameName(buf, start, 'date')) {
        fields.hasDate = true;
        return FIELD_DATE;
      }
      return FIELD_OTHER;
    case 6:
      if (sameName(buf, start, 'expect')) fields.expect = valueOf(buf, colon, end);
      return FIELD_OTHER;
    case 7:
      if (sameName(buf, start, 'upgrade')) {
        fields.upgrade = valueOf(buf, colon, end);
        return FIELD_HOP;
      }
      return sameName(buf, start, 'trailer') ? FIELD_HOP : FIELD_OTHER;
    case 10:
      if (sameName(buf, start, 'connection')) {
        readConnectionOptions(buf, colon, end, fields);
        return FIELD_HOP;
      }
      if (sameName(buf, start, 'keep-alive')) {
        const value = valueOf(buf, colon, end);
        fields.keepAliveHeader = fields.keepAliveHeader === undefined ? value : `${fields.keepAliveHeader}, ${value}`;
        return FIELD_HOP;
      }
      return FIELD_OTHER;
    case 14:
      if (sameName(buf, start, 'content-length')) {
        fields.contentLength = valueOf(buf, colon, end);
        fields.contentLengthCount++;
        return FIELD_CONTENT_LENGTH;
      }
      return FIELD_OTHER;
    case 15:
      if (sameName(buf, start, 'x-forwarded-for')) {
        (fields.forwardedFor ??= []).push(valueOf(buf, colon, end));
        return FIELD_X_FORWARDED_FOR;
      }
      return FIELD_OTHER;
    case 16:
      if (sameName(buf, start, 'proxy-connection')) return FIELD_HOP;
      return sameName(buf, start, 'x-forwarded-host') ? FIELD_X_FORWARDED : FIELD_OTHER;
    case 17:
      if (sameName(buf, start, 'transfer-encoding')) {
        // Repeated fields form one list (RFC 9110 5.3).
        const value = valueOf(buf, colon, end);
        fields.transferEncoding = fields.transferEncoding === undefined ? value : `${fields.transferEncoding}, ${value}`;
        return FIELD_HOP;
      }
      return sameName(buf, start, 'x-forwarded-proto') ? FIELD_X_FORWARDED : FIELD_OTHER;
    case 19:
      return sameName(buf, start, 'proxy-authorization') ? FIELD_PROXY_AUTHORIZATION : FIELD_OTHER;
    default:
      return FIELD_OTHER;
  }
}

/**
 * Case-insensitive equality of a field name (tchar only) at buf[start..] with a lower-case
 * literal of letters and '-' (the caller checked the length): OR-ing 0x20 lowers a letter
 * and maps no other tchar onto a letter or '-'.
 */
function sameName(buf: Buffer, start: number, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) if ((buf[start + i]! | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/** The same comparison on a string of tchar (Connection options, field names against them). */
export function sameToken(text: string, lower: string): boolean {
  if (text.length !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) if ((text.charCodeAt(i) | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/** Whether the field name at buf[start, colon) is `lower` (a Connection option), case-insensitively. */
export function nameIs(buf: Buffer, start: number, colon: number, lower: string): boolean {
  return colon - start === lower.length && sameName(buf, start, lower);
}

function readConnectionOptions(buf: Buffer, colon: number, end: number, fields: Gathered): void {
  const [s, e] = trimmed(buf, colon + 1, end);
  // The usual values, without a string.
  if (e - s === 10 && sameName(buf, s, 'keep-alive')) {
    fields.keepAlive = true;
    return;
  }
  if (e - s === 5 && sameName(buf, s, 'close')) {
    fields.close = true;
    return;
  }
  for (const token of latin1(buf, s, e).split(',')) {
    const option = token.trim().toLowerCase();
    if (option === '') continue;
    if (option === 'close') fields.close = true;
    else if (option === 'keep-alive') fields.keepAlive = true;
    else if (option === 'upgrade') fields.connectionUpgrade = true;
    else if (!NEVER_NOMINATED.has(option)) (fields.nominated ??= []).push(option);
  }
}

/** The common methods as constants (no string made per request). */
function methodName(buf: Buffer, start: number, end: number): string {
  const length = end - start;
  const c = buf[start];
  if (length === 3 && c === 0x47 && buf[start + 1] === 0x45 && buf[start + 2] === 0x54) return 'GET';
  if (length === 4 && c === 0x50 && buf[start + 1] === 0x4f && buf[start + 2] === 0x53 && buf[start + 3] === 0x54) return 'POST';
  if (length === 4 && c === 0x48 && buf[start + 1] === 0x45 && buf[start + 2] === 0x41 && buf[start + 3] === 0x44) return 'HEAD';
  return latin1(buf, start, end);
}

/** The reason phrase; the usual "OK" as a constant. */
function reasonPhrase(buf: Buffer, start: number, end: number, status: number): string {
  if (status === 200 && end - start === 2 && buf[start] === 0x4f && buf[start + 1] === 0x4b) return 'OK';
  return latin1(buf, start, end);
}

/** Transfer-Encoding whose last coding is chunked, applied once (RFC 9112 6.1). */
function chunkedIsFinal(value: string): boolean {
  if (sameToken(value, 'chunked')) return true;
  let chunkedSeen = 0;
  let last = '';
  for (const coding of value.split(',')) {
    const name = coding.trim().toLowerCase();
    if (name === '') continue;
    if (name === 'chunked') chunkedSeen++;
    last = name;
  }
  return chunkedSeen === 1 && last === 'chunked';
}

/** 1*DIGIT (RFC 9110 8.6), or -1: no sign, no list, no whitespace inside, no overflow. */
function parseContentLength(value: string): number {
  if (value.length === 0 || value.length > MAX_CONTENT_LENGTH_DIGITS) return -1;
  let n = 0;
  for (let i = 0; i < value.length; i++) {
    const digit = value.charCodeAt(i) - 0x30;
    if (digit < 0 || digit > 9) return -1;
    n = n * 10 + digit;
  }
  return n;
}
