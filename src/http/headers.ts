// Header rewriting between the two hops, on raw header arrays ([name, value, name,
// value, ...]) so names keep their case and repeated fields (Set-Cookie) their order.
// Pure functions: no sockets, unit-tested on arrays. The Upgrade path uses these with
// node's client; the request/response path writes its heads with head-writer.ts.

/** What a request head offers here: node's IncomingMessage and head-parser.ts's RequestHead both fit. */
export interface RequestFields {
  readonly method?: string | undefined;
  readonly rawHeaders: readonly string[];
  readonly headers: { readonly 'transfer-encoding'?: string | undefined; readonly 'content-length'?: string | undefined };
}

/**
 * Fields that describe one connection, never the message (RFC 9110 7.6.1), plus the
 * historical ones that still appear: Keep-Alive, Proxy-Connection, and Trailer from RFC 7230.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Fields a Connection option can never make hop-by-hop: the framing of the message
 * (Content-Length, Transfer-Encoding) and its target (Host). RFC 9110 7.6.1 forbids a
 * sender to nominate a field meant for all recipients, yet tells an intermediary to drop
 * what is nominated; honouring `Connection: Content-Length` is exactly how a body gets
 * forwarded unframed (request smuggling). The option is ignored rather than refused: the
 * proxy writes these fields from its own parse on every hop (head-writer.ts), so the
 * output is framed correctly either way, and nginx and HAProxy likewise never let
 * Connection options touch the framing they write themselves.
 */
export const NEVER_NOMINATED: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding', 'host']);

/** Methods whose repetition has the effect of one request (RFC 9110 9.2.2): safe to retry. */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** Methods node's client frames as "no body" unless told otherwise. */
export const BODYLESS_BY_DEFAULT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/** The field names a Connection header nominates as hop-by-hop, lower-cased (never a NEVER_NOMINATED one). */
export function connectionNominated(rawHeaders: readonly string[]): Set<string> {
  const named = new Set<string>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() !== 'connection') continue;
    for (const token of rawHeaders[i + 1]!.split(',')) {
      const field = token.trim().toLowerCase();
      if (field && !NEVER_NOMINATED.has(field)) named.add(field);
    }
  }
  return named;
}

/**
 * The end-to-end fields of a message: raw headers minus the hop-by-hop ones, minus the
 * fields its Connection header names, minus `drop` (lower-case names the caller replaces).
 */
export function endToEnd(rawHeaders: readonly string[], drop: ReadonlySet<string> = new Set()): string[] {
  const nominated = connectionNominated(rawHeaders);
  const kept: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || nominated.has(lower) || drop.has(lower)) continue;
    kept.push(name, rawHeaders[i + 1]!);
  }
  return kept;
}

/** Values of one field, in order (raw arrays keep repeats separate). */
export function fieldValues(rawHeaders: readonly string[], lowerName: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === lowerName) values.push(rawHeaders[i + 1]!);
  }
  return values;
}

/** The client address as X-Forwarded-For writes it (IPv4-mapped IPv6 shown as IPv4). */
export function clientAddress(address: string | undefined): string {
  if (!address) return 'unknown';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

export interface ForwardedInfo {
  /** The client's address, appended to X-Forwarded-For. */
  readonly clientIp: string;
  /** The scheme the client used to reach us. */
  readonly proto: 'http' | 'https';
  /** The Host the client asked for, as X-Forwarded-Host. */
  readonly host: string | undefined;
}

export interface RequestHeaderOptions {
  /** The Host field for the upstream hop. */
  readonly host: string;
  /** Add X-Forwarded-For/-Proto/-Host (null: leave the client's untouched). */
  readonly forwarded: ForwardedInfo | null;
  /** Extra lower-case names to remove (Proxy-Authorization when forwarding: it was for us). */
  readonly drop?: readonly string[];
  /** Keep Connection: Upgrade and Upgrade (a WebSocket handshake). */
  readonly upgrade?: string;
}

/**
 * The header list for the upstream request: end-to-end fields of the client's request,
 * our Host, X-Forwarded-*, and the framing of our hop, written from the parsed request
 * (`req.headers`: the one validated Content-Length or Transfer-Encoding), never copied
 * from its field lines; Content-Length: 0 where node would otherwise chunk an empty body.
 */
export function upstreamRequestHeaders(req: RequestFields, options: RequestHeaderOptions): string[] {
  const drop = new Set(['host', 'content-length', ...(options.drop ?? [])]);
  if (options.forwarded) for (const name of ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']) drop.add(name);
  const raw = req.rawHeaders;
  const headers = ['Host', options.host, ...endToEnd(raw, drop)];
  if (options.forwarded) {
    // Each proxy appends the address it received the request from; the rest are ours to state.
    const chain = fieldValues(raw, 'x-forwarded-for').join(', ');
    headers.push('X-Forwarded-For', chain ? `${chain}, ${options.forwarded.clientIp}` : options.forwarded.clientIp);
    headers.push('X-Forwarded-Proto', options.forwarded.proto);
    if (options.forwarded.host) headers.push('X-Forwarded-Host', options.forwarded.host);
  }
  if (options.upgrade) headers.push('Connection', 'Upgrade', 'Upgrade', options.upgrade);
  const transferEncoding = req.headers['transfer-encoding'];
  const contentLength = req.headers['content-length'];
  if (transferEncoding !== undefined) {
    // Our hop re-frames the body as chunked; codings applied before chunked stay applied.
    headers.push('Transfer-Encoding', transferEncoding);
  } else if (contentLength !== undefined) {
    headers.push('Content-Length', contentLength);
  } else if (!BODYLESS_BY_DEFAULT.has(req.method ?? 'GET')) {
    // No body (RFC 9112 6.3): say so, or node would send an empty chunked one.
    headers.push('Content-Length', '0');
  }
  return headers;
}
