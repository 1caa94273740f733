import type net from 'node:net';
import type { Clock } from '../clock.js';
import type { EvictionReason, Side } from '../errors.js';
import type { ClientReads } from './accept.js';
import { BODY_ERROR, BODY_MORE, BodyReader, type BodySink } from './body-reader.js';
import { ClientConnection } from './client.js';
import type { Exchange, ExchangeClient } from './exchange.js';
import { HeadError, findHeadEnd, parseRequestHead, skipLeadingCrlf, type RequestHead } from './head-parser.js';
import { clientAddress } from './headers.js';
import { errorResponse } from './respond.js';
import { resetOrDestroy } from '../net/internals.js';

// One client connection of an HTTP route, on the raw socket: request heads parsed here
// (head-parser.ts), request bodies framed as they stream (body-reader.ts) and handed to
// the request's exchange (exchange.ts), responses written back, then the next request
// or the close. Requests are served one at a time; a pipelining client's next requests
// wait, unparsed, until the current response is out and, when the client is slower to
// read than we are to answer, until its unsent response bytes have drained below the
// socket's high-water mark (reading stops meanwhile): what a client makes us hold is
// bounded whatever it sends and however little it reads.
//
// Deadlines run on the route's shared clock: headersTimeout from the first byte of a
// head (408, the slowloris guard), bodyTimeout between request body bytes (408),
// clientIdleTimeout between requests (a silent close).
// A connection closes after a response the client asked to be the last (HTTP/1.0
// without keep-alive, Connection: close), the clientMaxRequests-th, any response while
// draining, or a response whose end only a close can mark.
//
// Every end of the client socket, whoever causes it, goes through close(reason, how):
// the first call names the reason (counted in evictions_total and logged at debug, once),
// and #endSocket is the only code that ends the socket. Once a tunnel owns the socket
// (tcp/session.ts), the tunnel's own close does both.

/** The settings a request reads when it starts (a reload reaches live connections at their next request). */
export interface SessionSettings {
  readonly maxHeaderSize: number;
  readonly headersTimeoutMs: number;
  /** Longest wait for the next request body bytes while we are reading; 0 = none. */
  readonly bodyTimeoutMs: number;
  readonly clientIdleTimeoutMs: number;
  readonly clientMaxRequests: number;
  /** The Connection (and Keep-Alive) lines of a response after which the connection stays. */
  readonly keepAliveLines: string;
}

export interface SessionHost {
  readonly sessionSettings: SessionSettings;
  /** The shared coarse clock: deadlines here are good to one tick. */
  readonly clock: Clock;
  draining(): boolean;
  /** A parsed request: its exchange (not started), or null when the host answered it itself. */
  request(session: ClientSession, head: RequestHead): Exchange | null;
  /** Upgrade or CONNECT: the socket leaves HTTP, with the bytes that followed the head. */
  handOff(session: ClientSession, head: RequestHead, rest: Buffer): void;
  /** requests_total{code}. */
  answered(status: number): void;
  countBytes(direction: 'upstream' | 'downstream', count: number): void;
  /** evictions_total{reason} and the debug line of a client connection's end (once per connection). */
  clientEnded(session: ClientSession, reason: ClientEndReason, side: Side): void;
  sessionClosed(session: ClientSession): void;
}

/** Why a client connection of an HTTP route ended (README: eviction reasons, client side). */
export type ClientEndReason = Extract<
  EvictionReason,
  | 'client_closed'
  | 'client_reset'
  | 'keepalive_timeout'
  | 'client_idle_timeout'
  | 'client_max_requests'
  | 'client_shutdown'
  | 'client_error'
  | 'headers_timeout'
  | 'body_timeout'
  | 'bad_request'
  | 'forbidden'
  | 'connect_error'
  | 'upgrade_declined'
  | 'response_close'
>;

/** Who ended it, for the log: the client, the upstream (its answer or failure), or our own limits. */
const END_SIDE: Readonly<Record<ClientEndReason, Side>> = {
  client_closed: 'downstream',
  client_reset: 'downstream',
  keepalive_timeout: 'downstream',
  client_idle_timeout: 'proxy',
  client_max_requests: 'proxy',
  client_shutdown: 'proxy',
  client_error: 'upstream',
  headers_timeout: 'downstream',
  body_timeout: 'downstream',
  bad_request: 'downstream',
  forbidden: 'proxy',
  connect_error: 'upstream',
  upgrade_declined: 'upstream',
  response_close: 'upstream',
};

/**
 * How the socket ends: 'flush' sends what is queued, then FIN, and waits (LINGER_MS) for
 * the client's own close; 'destroy' closes now (the client left, or stopped reading);
 * 'reset' sends RST, so a client whose response was cut cannot take it for complete.
 */
export type CloseHow = 'flush' | 'destroy' | 'reset';

const CLOSE_LINES = 'Connection: close\r\n';
/** Pipelined bytes held while a response is under way; past this the client is paused. */
const STASH_LIMIT = 64 * 1024;
/**
 * How long a closing connection waits for the client's own close once our FIN is out, or
 * for the last response bytes to leave when they stop moving (a client that reads slowly
 * keeps its connection for as long as it reads).
 */
const LINGER_MS = 5_000;

// States.
const IDLE = 0;
const ACTIVE = 1;
const CLOSING = 2;
const HANDED_OFF = 3;
const CLOSED = 4;
/** A tunnel (tcp/session.ts) owns the socket and its close. */
const TUNNELLED = 5;

// Deadline kinds.
const NONE = 0;
const HEAD = 1;
const IDLE_TIMEOUT = 2;
const LINGER = 3;
const BODY = 4;

// Why the client socket is paused (reading resumes when none is left).
const PAUSED_BY_EXCHANGE = 1;
const PAUSED_BY_STASH = 2;
/** Responses the client has not read yet are above the socket's high-water mark. */
const PAUSED_BY_WRITES = 4;

export class ClientSession implements ExchangeClient, BodySink {
  readonly socket: net.Socket;
  /** What the admin listing shows about this connection. */
  readonly client: ClientConnection;
  readonly #host: SessionHost;
  #state = IDLE;
  /** Bytes received and not yet parsed: a partial head, or pipelined requests. */
  #stash: Buffer | null = null;
  #exchange: Exchange | null = null;
  /** The current request's body, while it streams in. */
  #reader: BodyReader | null = null;
  #method = 'GET';
  #httpVersion: '1.0' | '1.1' = '1.1';
  #requestDone = true;
  /** Why the connection closes after the current response; null: it stays (keep-alive). */
  #closeAfter: ClientEndReason | null = null;
  /** Set by the first close(): the reason this connection ended with. */
  #endReason: ClientEndReason | null = null;
  #headSent = false;
  #deadline = 0;
  #deadlineKind = NONE;
  #paused = 0;
  /** Bytes still queued for the client at the last linger check. */
  #lingerPending = 0;
  #clientIp: string | undefined;
  /** 'drain' is listened to from the first write that filled the socket's buffer. */
  #drainListened = false;
  /** Non-null: reads are views of the buffer all client sockets share (accept.ts), so anything kept is copied. */
  readonly #reads: ClientReads | null;

  /** `reads`: where the socket's reads go when it reads into the shared buffer; null for 'data' events. */
  constructor(socket: net.Socket, host: SessionHost, now: number, reads: ClientReads | null) {
    this.socket = socket;
    this.#host = host;
    this.client = new ClientConnection(socket, now);
    const headersTimeoutMs = host.sessionSettings.headersTimeoutMs;
    if (headersTimeoutMs > 0) this.#setDeadline(HEAD, now + headersTimeoutMs);
    this.#reads = reads;
    if (reads !== null) reads.deliver = this.#onData;
    else socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
  }

  get httpVersion(): '1.0' | '1.1' {
    return this.#httpVersion;
  }

  /** The client's address as X-Forwarded-For writes it, looked up once per connection. */
  get clientIp(): string {
    return (this.#clientIp ??= clientAddress(this.socket.remoteAddress));
  }

  get holdsWrites(): boolean {
    return this.socket.writableLength > 0;
  }

  /** Shared clock: the exchange's deadline, then the head, idle and linger deadlines. */
  tick(now: number): void {
    this.#exchange?.tick(now);
    if (this.#deadline === 0 || now < this.#deadline) return;
    const kind = this.#deadlineKind;
    this.#setDeadline(NONE, 0);
    if (kind === HEAD && this.#state === IDLE && this.#stash !== null) {
      // Part of a head, and no end to it in time: the slowloris guard.
      this.#rejectHead(408);
    } else if (kind === BODY && this.#state === ACTIVE && this.#reader !== null) {
      // Only the client's own silence counts: while we hold its reads back, the wait restarts.
      if (this.#paused !== 0) this.#armBodyDeadline(now);
      else this.#bodyTimedOut();
    } else if ((kind === LINGER || kind === IDLE_TIMEOUT) && this.#stillSending()) {
      // The idle time and the linger start once the last response has left.
      this.#setDeadline(kind, now + (kind === LINGER ? LINGER_MS : this.#host.sessionSettings.clientIdleTimeoutMs));
    } else if (kind === LINGER) {
      // The end was counted when the close began; the client never closed its side.
      this.#endSocket('destroy');
    } else if (kind !== NONE) {
      // Silent past a deadline (a head never started, a client that stopped reading): no answer.
      this.close(kind === IDLE_TIMEOUT ? 'client_idle_timeout' : kind === HEAD ? 'headers_timeout' : 'body_timeout', 'destroy');
    }
  }

  /** The last response is still leaving, and moved since the last check. */
  #stillSending(): boolean {
    const pending = this.socket.writableLength;
    const moving = pending > 0 && pending !== this.#lingerPending;
    this.#lingerPending = pending;
    return moving;
  }

  /** Drain: an idle connection closes now; a busy one after its response (connectionLines says close). */
  closeIfIdle(): void {
    if (this.#state === IDLE) this.close('client_shutdown', 'flush');
  }

  /**
   * The one way this client connection ends. The first call names the reason (counted and
   * logged once); a later call only ends the socket more abruptly (a drain deadline
   * cutting a linger short). A tunnel's socket is the tunnel's to close.
   */
  close(reason: ClientEndReason, how: CloseHow): void {
    if (this.#state === TUNNELLED) return;
    if (this.#endReason === null) {
      this.#endReason = reason;
      this.#host.clientEnded(this, reason, END_SIDE[reason]);
    }
    const exchange = this.#state === ACTIVE ? this.#exchange : null;
    this.#state = how === 'flush' && !this.socket.destroyed ? CLOSING : CLOSED;
    this.#exchange = null;
    this.#reader = null;
    this.#endSocket(how);
    // A response under way that will never reach the client (its 'close' may come later).
    exchange?.clientClosed();
  }

  /** The only code that ends the client socket (test/unit/http-close-path.test.ts holds src/http/ to it). */
  #endSocket(how: CloseHow): void {
    const socket = this.socket;
    if (socket.destroyed) return;
    if (how === 'reset') {
      resetOrDestroy(socket);
      return;
    }
    if (how === 'destroy' || !socket.writable || this.#nothingLeft()) {
      // Nothing left to send or to read: the kernel sends what it holds before the FIN, so
      // there is no need to wait for the client's (one read and one wake-up less).
      socket.destroy();
      return;
    }
    this.#stash = null;
    if (this.#paused !== 0) {
      this.#paused = 0;
      socket.resume();
    }
    socket.end();
    this.#setDeadline(LINGER, this.#host.clock.now() + LINGER_MS);
  }

  /**
   * Everything was handed to the kernel and nothing the client sent is left unread. A
   * refused head or tunnel may have more of its bytes on the way: those wait for the
   * client's FIN (a close with unread bytes resets, and the client might lose the answer).
   */
  #nothingLeft(): boolean {
    return this.socket.writableLength === 0 && this.#requestDone && this.#stash === null && this.#state !== HANDED_OFF;
  }

  // ---- reading ----

  readonly #onData = (chunk: Buffer): void => {
    if (this.#state === ACTIVE) {
      if (this.#reader !== null) this.#feedRequest(chunk, 0);
      else this.#stashBytes(chunk, 0);
    } else if (this.#state === IDLE) {
      if ((this.#paused & PAUSED_BY_WRITES) !== 0) {
        // A read already under way when we paused: it waits with the other pipelined bytes.
        this.#stashBytes(chunk, 0);
        return;
      }
      let data = chunk;
      if (this.#stash !== null) {
        data = Buffer.concat([this.#stash, chunk]);
        this.#stash = null;
      }
      this.#consume(data);
    }
    // CLOSING: whatever a client sends after its last request is dropped.
  };

  /** Parses the request head at the start of `data` (the rest is its body or the next requests). */
  #consume(data: Buffer): void {
    const start = skipLeadingCrlf(data, 0);
    if (start >= data.length) return;
    const settings = this.#host.sessionSettings;
    let head: RequestHead;
    let end: number;
    try {
      end = findHeadEnd(data, start, settings.maxHeaderSize, 431);
      if (end === -1) {
        // Part of a head: headersTimeout runs from here (from the accept on a new connection).
        this.#stash = this.#own(data, start, data.length);
        if (this.#deadlineKind !== HEAD && settings.headersTimeoutMs > 0) this.#setDeadline(HEAD, this.#host.clock.now() + settings.headersTimeoutMs);
        return;
      }
      head = parseRequestHead(data, start, end);
    } catch (error) {
      // Whatever a client sends ends in an answer, never in a crash (a non-HeadError would be our bug).
      this.#rejectHead(error instanceof HeadError ? error.status : 400);
      return;
    }
    this.#begin(head, data, end, settings);
  }

  #begin(head: RequestHead, data: Buffer, bodyStart: number, settings: SessionSettings): void {
    const client = this.client;
    client.requests++;
    this.#setDeadline(NONE, 0);
    if (head.method === 'CONNECT' || head.upgrade) {
      this.#handOff(head, this.#own(data, bodyStart, data.length));
      return;
    }
    const max = settings.clientMaxRequests;
    this.#closeAfter = !head.keepAlive
      ? 'client_closed'
      : max > 0 && client.requests >= max
        ? 'client_max_requests'
        : this.#host.draining()
          ? 'client_shutdown'
          : null;
    this.#method = head.method;
    this.#httpVersion = head.httpVersion;
    this.#headSent = false;
    this.#state = ACTIVE;
    this.#requestDone = head.body === 'none';
    // Bytes after a bodiless request are the next requests: held before the host answers,
    // since an answer given at once moves on to them.
    if (this.#requestDone && bodyStart < data.length) this.#stashBytes(data, bodyStart);
    const exchange = this.#host.request(this, head);
    if (exchange === null) return;
    this.#exchange = exchange;
    if (!this.#requestDone) {
      this.#reader = head.body === 'length' ? BodyReader.length(head.contentLength, this) : BodyReader.chunked(this, false);
      this.#armBodyDeadline(this.#host.clock.now());
      if (bodyStart < data.length) {
        this.#feedRequest(data, bodyStart);
        if (this.#exchange !== exchange) return;
      }
    }
    exchange.start();
  }

  #feedRequest(buf: Buffer, from: number): void {
    const end = this.#reader!.feed(buf, from);
    if (end === BODY_MORE) {
      if (this.#deadlineKind === BODY) this.#armBodyDeadline(this.#host.clock.now());
      return;
    }
    this.#reader = null;
    if (this.#deadlineKind === BODY) this.#setDeadline(NONE, 0);
    const exchange = this.#exchange!;
    if (end === BODY_ERROR) {
      exchange.requestFailed();
      return;
    }
    this.#requestDone = true;
    if (end < buf.length) this.#stashBytes(buf, end);
    exchange.requestEnd();
  }

  /** BodySink: request body bytes as framed, to the exchange (which may keep them for a retry). */
  bodyBytes(buf: Buffer, start: number, end: number): void {
    this.client.bytesUp += end - start;
    this.#host.countBytes('upstream', end - start);
    this.#exchange!.requestBody(this.#own(buf, start, end));
  }

  /** buf[start, end) as a Buffer that outlives this read. */
  #own(buf: Buffer, start: number, end: number): Buffer {
    if (this.#reads === null) return start === 0 && end === buf.length ? buf : buf.subarray(start, end);
    const copy = Buffer.allocUnsafe(end - start);
    buf.copy(copy, 0, start, end);
    return copy;
  }

  #stashBytes(buf: Buffer, from: number): void {
    const rest = this.#own(buf, from, buf.length);
    this.#stash = this.#stash === null ? rest : Buffer.concat([this.#stash, rest]);
    if (this.#stash.length > STASH_LIMIT) this.#pause(PAUSED_BY_STASH);
  }

  /**
   * The client's FIN. As node's server does by default, a client that stops sending is
   * taken to have left: an exchange under way is aborted (its response may still be read
   * and dropped to keep the upstream connection), and the connection closes.
   */
  readonly #onEnd = (): void => {
    this.close('client_closed', 'destroy');
  };

  /** A reset, or the kernel giving up on the client (keepalive probes, TCP_USER_TIMEOUT). */
  readonly #onError = (error: NodeJS.ErrnoException): void => {
    this.close(error.code === 'ETIMEDOUT' || error.code === 'EHOSTUNREACH' || error.code === 'ENETUNREACH' ? 'keepalive_timeout' : 'client_reset', 'destroy');
  };

  /** The socket is gone; an end nobody announced (no FIN or error seen first) is the client's. */
  readonly #onClose = (hadError: boolean): void => {
    this.close(hadError ? 'client_reset' : 'client_closed', 'destroy');
    this.#host.sessionClosed(this);
  };

  readonly #onDrain = (): void => {
    if (this.#state === ACTIVE) this.#exchange?.clientDrained();
    else if (this.#state === IDLE && (this.#paused & PAUSED_BY_WRITES) !== 0) this.#next();
  };

  // ---- ExchangeClient: writing the response ----

  connectionLines(closeDelimited: boolean): string {
    if (closeDelimited) this.#closeAfter ??= 'response_close';
    else if (this.#host.draining()) this.#closeAfter ??= 'client_shutdown';
    return this.#closeAfter === null ? this.#host.sessionSettings.keepAliveLines : CLOSE_LINES;
  }

  writeInterim(head: string): boolean {
    if (this.#headSent || this.#state !== ACTIVE) return true;
    const flowing = this.socket.write(head, 'latin1');
    if (!flowing) this.#listenForDrain();
    return flowing;
  }

  writeHead(head: string): boolean {
    if (this.#state !== ACTIVE) return true;
    this.#headSent = true;
    const flowing = this.socket.write(head, 'latin1');
    if (!flowing) this.#listenForDrain();
    return flowing;
  }

  writeBody(chunk: Buffer): boolean {
    if (this.#state !== ACTIVE) return true;
    const flowing = this.socket.write(chunk);
    if (!flowing) this.#listenForDrain();
    return flowing;
  }

  #listenForDrain(): void {
    if (this.#drainListened) return;
    this.#drainListened = true;
    this.socket.on('drain', this.#onDrain);
  }

  responseDone(reusable: boolean): void {
    if (this.#state !== ACTIVE) return;
    this.#exchange = null;
    if (!reusable) this.#closeAfter ??= 'response_close';
    if (this.#closeAfter !== null) {
      this.close(this.#closeAfter, 'flush');
      return;
    }
    this.#next();
  }

  cut(): void {
    this.#exchange = null;
    this.close(this.#closeAfter === 'body_timeout' ? 'body_timeout' : 'client_error', 'reset');
  }

  respondError(status: number, detail: string): boolean {
    if (this.#state !== ACTIVE || this.#headSent || this.socket.destroyed) return false;
    // A client still sending a body we will not read is told to go (no keep-alive).
    if (!this.#requestDone) this.#closeAfter ??= status === 400 ? 'bad_request' : 'client_error';
    else if (this.#host.draining()) this.#closeAfter ??= 'client_shutdown';
    const keep = this.#closeAfter === null;
    this.#headSent = true;
    this.socket.write(errorResponse(status, detail, keep ? this.#host.sessionSettings.keepAliveLines : CLOSE_LINES, this.#method === 'HEAD'), 'latin1');
    this.responseDone(keep);
    return true;
  }

  pauseRequest(): void {
    this.#pause(PAUSED_BY_EXCHANGE);
  }

  resumeRequest(): void {
    this.#resume(PAUSED_BY_EXCHANGE);
  }

  noteUpstream(description: string, reused: boolean): void {
    this.client.upstream = description;
    if (reused) this.client.reused = true;
  }

  countDownstream(bytes: number): void {
    this.client.bytesDown += bytes;
    this.#host.countBytes('downstream', bytes);
  }

  // ---- between requests ----

  /**
   * Keep-alive: wait for (or parse) the next request, once the client has read enough of
   * the responses so far (else the next one waits, unread, for the socket's 'drain').
   */
  #next(): void {
    this.#state = IDLE;
    this.#reader = null;
    const now = this.#host.clock.now();
    this.client.lastActivity = now;
    const idleMs = this.#host.sessionSettings.clientIdleTimeoutMs;
    // The idle time counts from the last response's departure (tick: #stillSending).
    this.#setDeadline(idleMs > 0 ? IDLE_TIMEOUT : NONE, idleMs > 0 ? now + idleMs : 0);
    if (this.socket.writableNeedDrain) {
      this.#listenForDrain();
      this.#pause(PAUSED_BY_WRITES);
      return;
    }
    if (this.#paused !== 0) {
      this.#paused = 0;
      this.socket.resume();
    }
    const stash = this.#stash;
    if (stash !== null) {
      this.#stash = null;
      this.#consume(stash);
    }
  }

  /** A head that cannot be served (400 malformed, 408 too slow, 431 too large): answered, then the close. */
  #rejectHead(status: number): void {
    this.#host.answered(status);
    this.#stash = null;
    // The rest of what it sent is unread: the close waits for the client's FIN.
    this.#requestDone = false;
    if (this.socket.writable) this.socket.write(errorResponse(status, '', CLOSE_LINES, false), 'latin1');
    this.close(status === 408 ? 'headers_timeout' : 'bad_request', 'flush');
  }

  #handOff(head: RequestHead, rest: Buffer): void {
    this.#state = HANDED_OFF;
    const socket = this.socket;
    // A tunnel reads with 'data' events: shared-buffer reads become copies emitted as such.
    if (this.#reads !== null) this.#reads.deliver = (chunk) => socket.emit('data', Buffer.from(chunk));
    socket.off('data', this.#onData);
    socket.off('end', this.#onEnd);
    if (this.#drainListened) socket.off('drain', this.#onDrain);
    const stash = this.#stash;
    this.#stash = null;
    this.#host.handOff(this, head, stash === null ? rest : Buffer.concat([rest, stash]));
  }

  /**
   * The upstream declined the Upgrade: the connection comes back to this session, which
   * reads again (dropping what comes, so a FIN or a reset is seen at once) and closes it
   * when the returned call says the answer is written.
   */
  reclaim(): () => void {
    if (this.#state !== HANDED_OFF) return () => {};
    this.#state = CLOSING;
    this.#requestDone = true;
    const socket = this.socket;
    if (this.#reads !== null) this.#reads.deliver = this.#onData;
    else socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    this.#paused = 0;
    socket.resume();
    return () => {
      if (this.#state === CLOSING && this.#deadlineKind !== LINGER) this.close('upgrade_declined', 'flush');
    };
  }

  /** A tunnel (tcp/session.ts) took the socket: from here its close is the tunnel's. */
  tunnelled(): void {
    this.#state = TUNNELLED;
    this.#setDeadline(NONE, 0);
  }

  #armBodyDeadline(now: number): void {
    const bodyTimeoutMs = this.#host.sessionSettings.bodyTimeoutMs;
    if (bodyTimeoutMs > 0) this.#setDeadline(BODY, now + bodyTimeoutMs);
  }

  /** No body bytes for bodyTimeout: the exchange answers 408 (or cuts a response under way) and the connection closes. */
  #bodyTimedOut(): void {
    this.#closeAfter = 'body_timeout';
    this.#exchange!.requestTimedOut();
  }

  #setDeadline(kind: number, at: number): void {
    this.#deadlineKind = kind;
    this.#deadline = at;
  }

  #pause(reason: number): void {
    if (this.#paused === 0) this.socket.pause();
    this.#paused |= reason;
  }

  #resume(reason: number): void {
    if (this.#paused === 0) return;
    this.#paused &= ~reason;
    if (this.#paused === 0) this.socket.resume();
  }
}
