import { dialFailureStatus, type EvictionReason } from '../errors.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { parseKeepAliveTimeoutMs, type PooledConnection } from '../pool/http-connection.js';
import type { OriginPool, PoolWaiter } from '../pool/http-pool.js';
import { BODY_ERROR, BODY_MORE, BodyReader, type BodySink } from './body-reader.js';
import { HeadError, findHeadEnd, latin1, parseResponseHead, type ResponseHead } from './head-parser.js';
import { IDEMPOTENT_METHODS } from './headers.js';
import { dateLine, downstreamResponseHead, interimResponseHead, type DownstreamFraming } from './head-writer.js';

// One client request carried to the upstream over a pooled connection, and its response
// carried back, on raw sockets: the request head as rewritten (head-writer.ts), the body
// bytes as framed, the response head parsed (head-parser.ts) and its body framed by
// body-reader.ts. A small request body (up to REPLAY_LIMIT) is read whole before a pooled
// connection is taken, as nginx's request buffering does, so a client that sends it
// slowly costs only its own socket, never a pool slot; larger bodies and responses
// stream both ways with backpressure, never buffered whole;
// trailers travel inside the chunked framing; 1xx go to HTTP/1.1 clients. A request that
// died on a reused connection before any response byte is retried once on a fresh
// connection when that cannot run it twice:
//  - an idempotent method (RFC 9110 9.2.2) whose body written so far fits the replay
//    buffer (pingora keeps one the same way), or
//  - any method whose body had not started: the upstream cannot have acted on a request
//    whose body it never received. A bodiless POST is complete once its head is out, so
//    it is never retried.

/** Body bytes kept for a replay; past this an idempotent request with a body is not retried. */
const REPLAY_LIMIT = 64 * 1024;
/** Body bytes held while no connection is ready; past this the client is paused. */
const QUEUE_LIMIT = 64 * 1024;
/**
 * A client that leaves after sending its whole request does not cost the pool its
 * connection: the rest of the response is read and dropped, up to this many bytes and
 * within the response timeout (or DISCARD_TIME_LIMIT_MS without one), then the socket
 * goes back to the pool. Anything longer (a stream, a big download) closes it instead.
 */
const DISCARD_LIMIT = 256 * 1024;
const DISCARD_TIME_LIMIT_MS = 30_000;
/** Response heads past this are refused with 502 (node's client allowed 16 KiB). */
const RESPONSE_HEAD_LIMIT = 64 * 1024;
/** First body bytes up to this size leave with the head, as one latin1 string (one write, no Buffer). */
const COALESCE_LIMIT = 4 * 1024;

/** What an exchange needs from its route. */
export interface ExchangeHost {
  readonly route: string;
  readonly log: Logger;
  /** The route's shared clock: deadlines (coarse) and the request's duration (precise). */
  readonly clock: Clock;
  /** requests_total{code} for the status the client got. */
  answered(status: number): void;
  /** upstream_request_duration_seconds. */
  observeUpstreamSeconds(seconds: number): void;
  /** retries_total{reason}. */
  retried(reason: string): void;
  /** A response still being read after its client left: the route's clock ticks it until finished(). */
  orphaned(exchange: Exchange): void;
  finished(exchange: Exchange): void;
}

/** What an exchange needs from the client connection (http/client-session.ts). */
export interface ExchangeClient {
  readonly httpVersion: '1.0' | '1.1';
  /** Bytes written to the client are still queued in node (not yet handed to the kernel). */
  readonly holdsWrites: boolean;
  /** The connection lines of the response head; decides whether the client connection persists. */
  connectionLines(closeDelimited: boolean): string;
  /** An interim (1xx) head, latin1 text; false when the client's buffer is full (wait for clientDrained). */
  writeInterim(head: string): boolean;
  /** The response head (and maybe the first body bytes), latin1 text; false when the client's buffer is full (wait for clientDrained). */
  writeHead(head: string): boolean;
  writeBody(chunk: Buffer): boolean;
  /** The response is complete; `reusable`: the client connection may carry another request. */
  responseDone(reusable: boolean): void;
  /** The response cannot complete: reset the client so the truncation shows. */
  cut(): void;
  /** A proxy error answer; false when too late (a response head already went out). */
  respondError(status: number, detail: string): boolean;
  pauseRequest(): void;
  resumeRequest(): void;
  /** The upstream this client's latest request went to, whether it reused a connection (admin listing). */
  noteUpstream(description: string, reused: boolean): void;
  countDownstream(bytes: number): void;
}

export interface ExchangeRequest {
  readonly origin: OriginPool;
  readonly method: string;
  /** The request head for the upstream, as it goes on the wire (latin1). */
  readonly head: string;
  /** The request carries a body (Content-Length > 0 or chunked). */
  readonly hasBody: boolean;
  /** Content-Length of the body, or null when chunked (or none). */
  readonly bodyLength: number | null;
  /** Expect: 100-continue: the client waits for the upstream's go-ahead before its body (never buffered first). */
  readonly expectContinue: boolean;
  readonly retry: boolean;
  readonly responseTimeoutMs: number;
}

// Response-side states.
const WAITING = 0;
const HEAD = 1;
const BODY = 2;
const COMPLETE = 3;

export class Exchange implements PoolWaiter, BodySink {
  readonly #host: ExchangeHost;
  readonly #client: ExchangeClient;
  readonly #request: ExchangeRequest;
  readonly #startedAt: number;
  #connection: PooledConnection | null = null;
  #attempts = 0;
  #reused = false;
  /** Body bytes not yet written because no connection was ready. */
  #queue: Buffer[] | null = null;
  #queuedBytes = 0;
  /** Body bytes written to the current connection. */
  #bodyWritten = 0;
  /** What a retry would have to send again; null when a retry cannot replay the body. */
  #replay: Buffer[] | null;
  #replayBytes = 0;
  #requestEnded: boolean;
  /** The body is being read whole before a connection is asked for. */
  #buffering: boolean;
  #started = false;
  /** The client is paused on our account (queue full or the upstream's buffer full). */
  #requestPaused = false;
  #state = WAITING;
  /** Response bytes from the current connection (any means no retry). */
  #upstreamBytes = 0;
  /** A response head that arrived in pieces. */
  #partialHead: Buffer | null = null;
  /** A 1xx came from the upstream: a response byte, so no retry. */
  #interim = false;
  #continued = false;
  #reader: BodyReader | null = null;
  /**
   * The final response head, held back so that it leaves with the first body bytes. Its
   * field lines are ranges of the chunk being read: it is written before that read ends.
   */
  #pendingHead: ResponseHead | null = null;
  #framing: DownstreamFraming = 'none';
  #connectionLines = '';
  #upstreamKeepAlive = false;
  #clientReusable = true;
  #responsePaused = false;
  /** Wall-clock ms by which the response head must arrive; 0 = no deadline running. */
  #deadline = 0;
  #status = 0;
  /** The client's side is over (counted once). */
  #done = false;
  /** The client left; the upstream response is read to its end and dropped. */
  #discarding = false;
  #discarded = 0;

  constructor(host: ExchangeHost, client: ExchangeClient, request: ExchangeRequest) {
    this.#host = host;
    this.#startedAt = host.clock.preciseNow();
    this.#client = client;
    this.#request = request;
    this.#requestEnded = !request.hasBody;
    this.#buffering = request.hasBody && !request.expectContinue && (request.bodyLength === null || request.bodyLength <= REPLAY_LIMIT);
    // Only an idempotent request ever replays body bytes (a bodiless one has none to keep).
    this.#replay = request.retry && request.hasBody && IDEMPOTENT_METHODS.has(request.method) ? [] : null;
  }

  /** PoolWaiter: the exchange no longer needs a connection. */
  get abandoned(): boolean {
    return this.#done && !this.#discarding;
  }

  start(): void {
    this.#started = true;
    if (this.#requestEnded) this.#armDeadline();
    if (!this.#buffering) this.#attempt(false);
  }

  /** The buffered body is whole (or outgrew the buffer): now the request needs its connection. */
  #stopBuffering(): void {
    if (!this.#buffering) return;
    this.#buffering = false;
    if (this.#started && !this.#done) this.#attempt(false);
  }

  #attempt(fresh: boolean): void {
    this.#attempts++;
    this.#request.origin.acquire(this, fresh);
  }

  // ---- the request, from the client session ----

  /** Body bytes as framed by the client (the upstream gets the same framing); the chunk is ours to keep. */
  requestBody(chunk: Buffer): void {
    if (this.#done) return;
    if (this.#replay) {
      if (this.#replayBytes + chunk.length <= REPLAY_LIMIT) {
        this.#replay.push(chunk);
        this.#replayBytes += chunk.length;
      } else {
        this.#replay = null;
      }
    }
    const connection = this.#connection;
    if (connection === null) {
      (this.#queue ??= []).push(chunk);
      this.#queuedBytes += chunk.length;
      // A chunked body turned out larger than the buffer: it streams from here.
      if (this.#buffering && this.#queuedBytes > REPLAY_LIMIT) this.#stopBuffering();
      if (this.#queuedBytes > QUEUE_LIMIT) this.#pauseRequest();
      return;
    }
    this.#bodyWritten += chunk.length;
    // Backpressure: read no more from the client until the upstream socket drains.
    if (!connection.socket.write(chunk)) this.#pauseRequest();
  }

  requestEnd(): void {
    this.#requestEnded = true;
    if (this.#done) return;
    // The deadline for the response head runs from the end of the request.
    if (this.#state <= HEAD) this.#armDeadline();
    this.#stopBuffering();
  }

  /**
   * The client stopped sending its body for bodyTimeout: 408 (or a cut once a response
   * started). The upstream connection got part of a request and cannot be reused.
   */
  requestTimedOut(): void {
    if (this.#done) return;
    this.#abandonUpstream('client_aborted');
    this.#answerError(408, 'the request body did not arrive in time');
  }

  /** The client's body framing broke or the client went away mid-body. */
  requestFailed(): void {
    this.#answerError(400, 'invalid request body');
  }

  /** The client connection closed before the response completed. */
  clientClosed(): void {
    if (this.#done) return;
    if (this.#status === 0) this.#status = 499; // nginx's "client closed request"
    // A request the upstream has whole can still complete on its connection, which then
    // stays pooled; a half-sent one cannot, nor one whose response leaves nothing to pool
    // (read until the close, or the upstream said close): close it now.
    const poolable = this.#state !== BODY || this.#upstreamKeepAlive;
    if (this.#connection !== null && this.#requestEnded && this.#state !== COMPLETE && poolable) this.#startDiscarding();
    else this.#abandonUpstream('client_aborted');
    this.#complete();
  }

  clientDrained(): void {
    if (this.#responsePaused) {
      this.#responsePaused = false;
      this.#connection?.socket.resume();
    }
  }

  /** Shared clock: the response-head deadline, and the time limit on a dropped response. */
  tick(now: number): void {
    if (this.#deadline === 0 || now < this.#deadline) return;
    this.#deadline = 0;
    if (this.#discarding) {
      this.#abandonUpstream('client_aborted');
      return;
    }
    if (this.#done || this.#state >= BODY) return;
    this.#abandonUpstream('response_timeout');
    this.#answerError(504, 'the upstream did not answer in time');
  }

  // ---- PoolWaiter: a connection for the request ----

  connectionReady(connection: PooledConnection, reused: boolean): void {
    this.#connection = connection;
    this.#reused = reused;
    this.#state = HEAD;
    this.#upstreamBytes = 0;
    this.#bodyWritten = 0;
    this.#client.noteUpstream(this.#request.origin.describe(), reused);
    const socket = connection.socket;
    const queue = this.#queue;
    if (queue === null) {
      socket.write(this.#request.head, 'latin1');
    } else {
      // Head and queued body in one write.
      socket.cork();
      socket.write(this.#request.head, 'latin1');
      for (const chunk of queue) {
        this.#bodyWritten += chunk.length;
        socket.write(chunk);
      }
      socket.uncork();
      this.#queue = null;
      this.#queuedBytes = 0;
    }
    if (this.#requestPaused && socket.writableLength === 0) this.#resumeRequest();
  }

  connectionFailed(error: unknown): void {
    if (this.#done) return;
    if (this.#host.log.isLevelEnabled('debug')) this.#host.log.debug({ route: this.#host.route, err: String(error) }, 'upstream connect failed');
    const status = dialFailureStatus(error);
    if (status === 403) this.#answerError(403, (error as Error).message);
    else if (status === 504) this.#answerError(504, 'the upstream did not accept the connection in time');
    else this.#answerError(502, 'the upstream is unreachable');
  }

  // ---- ConnectionUser: the connection's events ----

  upstreamData(chunk: Buffer): void {
    this.#upstreamBytes += chunk.length;
    if (this.#state === BODY) {
      this.#feedBody(chunk, 0);
      return;
    }
    if (this.#state !== HEAD) return;
    let buf = chunk;
    if (this.#partialHead !== null) {
      buf = Buffer.concat([this.#partialHead, chunk]);
      this.#partialHead = null;
    }
    let start = 0;
    for (;;) {
      let head: ResponseHead;
      try {
        const end = findHeadEnd(buf, start, RESPONSE_HEAD_LIMIT, 502);
        if (end === -1) {
          // A copy: the chunk may be a view of the connection's reused read buffer.
          if (start < buf.length) this.#partialHead = Buffer.from(buf.subarray(start));
          return;
        }
        head = parseResponseHead(buf, start, end);
        start = end;
      } catch (error) {
        this.#invalidResponse(error instanceof HeadError ? error.detail : String(error));
        return;
      }
      if (head.status >= 200) {
        this.#responseHead(head);
        if (this.#connection === null) return;
        break;
      }
      if (!this.#interimHead(head)) return;
      if (start >= buf.length) return;
    }
    if (this.#reader !== null) {
      this.#feedBody(buf, start);
    } else {
      this.#flushPendingHead();
      this.#responseComplete(start < buf.length);
    }
  }

  upstreamEnd(): void {
    // The body runs until the upstream closes: this is its end.
    if (this.#state === BODY && this.#reader?.endsAtClose) {
      this.#flushPendingHead();
      this.#upstreamKeepAlive = false;
      this.#responseComplete(false);
      return;
    }
    this.#upstreamFailed(null);
  }

  upstreamClosed(error: NodeJS.ErrnoException | null): void {
    if (this.#state === BODY && this.#reader?.endsAtClose && error === null) {
      this.upstreamEnd();
      return;
    }
    this.#upstreamFailed(error);
  }

  upstreamDrained(): void {
    if (this.#requestPaused) this.#resumeRequest();
  }

  // ---- the response ----

  /** A 1xx: passed to an HTTP/1.1 client; false when the exchange stopped. */
  #interimHead(head: ResponseHead): boolean {
    if (head.status === 101) {
      // Only an Upgrade request may be answered with a protocol switch (those go through upgrade.ts).
      this.#invalidResponse('101 to a request that asked for no upgrade');
      return false;
    }
    this.#interim = true;
    this.#replay = null;
    if (head.status === 100) this.#continued = true;
    if (this.#deadline !== 0) this.#armDeadline();
    // RFC 9110 15.2: a proxy never sends a 1xx to an HTTP/1.0 client.
    if (!this.#discarding && this.#client.httpVersion === '1.1' && !this.#client.writeInterim(interimResponseHead(head))) {
      // An upstream may send any number of 1xx: like body bytes, they wait for the client.
      this.#pauseResponse();
    }
    return true;
  }

  /** The final response head: the client's head is built and held for the first body bytes. */
  #responseHead(head: ResponseHead): void {
    this.#replay = null;
    this.#deadline = 0;
    this.#status = head.status;
    const connection = this.#connection!;
    const noBody = this.#request.method === 'HEAD' || head.status === 204 || head.status === 304;
    // A body that runs until the close leaves nothing to reuse; no body at all leaves the framing moot.
    this.#upstreamKeepAlive = head.persistent && (noBody || head.body !== 'close');
    if (head.keepAliveHeader !== undefined) connection.keepAliveHintMs = parseKeepAliveTimeoutMs(head.keepAliveHeader);
    let framing: DownstreamFraming;
    if (noBody || (head.body === 'length' && head.contentLength === 0)) framing = 'none';
    else if (head.body === 'length') framing = 'length';
    else if (head.body === 'chunked') framing = this.#client.httpVersion === '1.1' ? 'chunked' : 'close';
    else framing = 'close';
    if (!this.#requestEnded && this.#request.hasBody && !this.#continued && this.#interimExpected()) this.#clientReusable = false;
    if (this.#discarding) {
      // Nobody reads this response, and its connection cannot be pooled after it.
      if (!this.#upstreamKeepAlive) {
        this.#abandonUpstream('client_aborted');
        return;
      }
      this.#reader = framing === 'none' ? null : this.#bodyReader(head, true);
    } else {
      this.#connectionLines = this.#client.connectionLines(framing === 'close' || !this.#clientReusable);
      this.#framing = framing;
      this.#pendingHead = head;
      this.#reader = framing === 'none' ? null : this.#bodyReader(head, framing === 'close' && head.body === 'chunked');
    }
    this.#state = BODY;
  }

  /** An Expect: 100-continue request answered without a 100: its body may never come. */
  #interimExpected(): boolean {
    return this.#bodyWritten === 0 && this.#queuedBytes === 0;
  }

  #bodyReader(head: ResponseHead, decode: boolean): BodyReader {
    if (head.body === 'length') return BodyReader.length(head.contentLength, this);
    if (head.body === 'chunked') return BodyReader.chunked(this, decode);
    return BodyReader.untilClose(this);
  }

  #feedBody(buf: Buffer, start: number): void {
    const end = this.#reader!.feed(buf, start);
    if (end === BODY_MORE) {
      this.#flushPendingHead();
      return;
    }
    if (end === BODY_ERROR) {
      if (this.#host.log.isLevelEnabled('debug')) this.#host.log.debug({ route: this.#host.route, why: this.#reader!.error }, 'invalid response body framing');
      this.#invalidResponse(this.#reader!.error ?? 'invalid body framing');
      return;
    }
    this.#flushPendingHead();
    this.#responseComplete(end < buf.length);
  }

  /** BodySink: response body bytes, to the client (or dropped when it left). */
  bodyBytes(buf: Buffer, start: number, end: number): void {
    if (this.#discarding) {
      this.#countDiscarded(end - start);
      return;
    }
    this.#client.countDownstream(end - start);
    let flowing: boolean;
    const head = this.#pendingHead;
    if (head !== null && end - start <= COALESCE_LIMIT) {
      this.#pendingHead = null;
      flowing = this.#client.writeHead(this.#clientHead(head) + latin1(buf, start, end));
    } else {
      this.#flushPendingHead();
      flowing = this.#client.writeBody(buf.subarray(start, end));
    }
    const connection = this.#connection;
    if (connection === null) return;
    // The client's socket still holds (a view of) this chunk: the next read needs a new buffer.
    if (this.#client.holdsWrites) connection.retainChunk();
    if (!flowing) this.#pauseResponse();
  }

  /** Backpressure: read no more from the upstream until the client drains. */
  #pauseResponse(): void {
    if (this.#responsePaused || this.#connection === null) return;
    this.#responsePaused = true;
    this.#connection.socket.pause();
  }

  #flushPendingHead(): void {
    const head = this.#pendingHead;
    if (head === null) return;
    this.#pendingHead = null;
    this.#client.writeHead(this.#clientHead(head));
  }

  #clientHead(head: ResponseHead): string {
    return downstreamResponseHead(head, this.#framing, this.#connectionLines, head.hasDate ? '' : dateLine(this.#host.clock.now()));
  }

  /**
   * The whole response came from the upstream. `extra`: bytes followed it, which no
   * request asked for: the upstream is out of step and its connection goes.
   */
  #responseComplete(extra: boolean): void {
    this.#state = COMPLETE;
    this.#reader = null;
    this.#host.observeUpstreamSeconds((this.#host.clock.preciseNow() - this.#startedAt) / 1000);
    this.#finishUpstream(extra ? 'unexpected_data' : null);
    if (this.#discarding) {
      this.#stopDiscarding();
      return;
    }
    if (this.#done) return;
    this.#complete();
    this.#client.responseDone(this.#clientReusable && this.#requestEnded);
  }

  /** Gives the connection back to the pool, or closes it with `reason` (or because the upstream said so). */
  #finishUpstream(reason: EvictionReason | null): void {
    const connection = this.#connection;
    if (connection === null) return;
    this.#connection = null;
    if (this.#responsePaused) {
      this.#responsePaused = false;
      connection.socket.resume();
    }
    // The upstream answered before the request's end: what it made of the rest is unknown.
    if (!this.#requestEnded) connection.close('error');
    else if (reason !== null) connection.close(reason);
    else if (this.#upstreamKeepAlive) this.#request.origin.release(connection);
    else connection.close('peer_closed');
  }

  #invalidResponse(why: string): void {
    if (this.#host.log.isLevelEnabled('warn')) this.#host.log.warn({ route: this.#host.route, why }, 'invalid upstream response');
    this.#abandonUpstream('error');
    if (this.#discarding) return;
    this.#answerError(502, 'the upstream sent an invalid response');
  }

  /** The connection ended or broke before the response was complete. */
  #upstreamFailed(error: NodeJS.ErrnoException | null): void {
    const connection = this.#connection;
    if (connection === null) return;
    this.#connection = null;
    connection.close(error ? 'error' : 'peer_closed');
    if (this.#discarding) {
      this.#stopDiscarding();
      return;
    }
    if (this.#done) return;
    if (this.#state === BODY) {
      // Mid-body: the client must see a cut message, never a complete-looking one.
      this.#client.cut();
      this.#complete();
      return;
    }
    if (this.#mayRetry()) {
      const reason = error?.code ? error.code.toLowerCase() : 'peer_closed';
      this.#host.retried(reason);
      if (this.#host.log.isLevelEnabled('debug')) {
        this.#host.log.debug({ route: this.#host.route, method: this.#request.method, reason }, 'reused upstream connection failed before the response; retrying on a fresh one');
      }
      this.#state = WAITING;
      this.#partialHead = null;
      if (this.#replay) {
        this.#queue = [...this.#replay];
        this.#queuedBytes = this.#replayBytes;
      }
      this.#attempt(true);
      return;
    }
    if (this.#host.log.isLevelEnabled('debug')) {
      this.#host.log.debug({ route: this.#host.route, method: this.#request.method, err: error?.message ?? 'closed', reused: this.#reused }, 'upstream request failed');
    }
    this.#answerError(502, this.#upstreamBytes > 0 ? 'the upstream sent an incomplete response' : 'the upstream closed the connection');
  }

  #mayRetry(): boolean {
    if (!this.#request.retry || this.#attempts > 1 || !this.#reused || this.#interim || this.#upstreamBytes > 0) return false;
    if (IDEMPOTENT_METHODS.has(this.#request.method)) return this.#bodyWritten === 0 || this.#replay !== null;
    return this.#request.hasBody && this.#bodyWritten === 0;
  }

  /** Stops the current attempt: its connection (if it has one) is evicted with `reason`. */
  #abandonUpstream(reason: EvictionReason): void {
    const connection = this.#connection;
    this.#connection = null;
    if (this.#discarding) this.#stopDiscarding();
    if (connection === null || this.#state === COMPLETE) return;
    connection.close(reason);
  }

  #answerError(status: number, detail: string): void {
    if (this.#done) return;
    this.#abandonUpstream('error');
    if (this.#client.respondError(status, detail)) this.#status = status;
    else this.#client.cut();
    this.#complete();
  }

  #armDeadline(): void {
    if (this.#request.responseTimeoutMs > 0) this.#deadline = this.#host.clock.now() + this.#request.responseTimeoutMs;
  }

  #pauseRequest(): void {
    if (this.#requestPaused) return;
    this.#requestPaused = true;
    this.#client.pauseRequest();
  }

  #resumeRequest(): void {
    this.#requestPaused = false;
    this.#client.resumeRequest();
  }

  #startDiscarding(): void {
    this.#discarding = true;
    this.#deadline = this.#host.clock.now() + (this.#request.responseTimeoutMs || DISCARD_TIME_LIMIT_MS);
    this.#pendingHead = null;
    if (this.#responsePaused) {
      this.#responsePaused = false;
      this.#connection?.socket.resume();
    }
    this.#host.orphaned(this);
  }

  #countDiscarded(bytes: number): void {
    this.#discarded += bytes;
    if (this.#discarded > DISCARD_LIMIT) this.#abandonUpstream('client_aborted');
  }

  #stopDiscarding(): void {
    if (!this.#discarding) return;
    this.#discarding = false;
    this.#deadline = 0;
    this.#host.finished(this);
  }

  /** The client's side is over: counted once. */
  #complete(): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.#discarding) this.#deadline = 0;
    this.#host.answered(this.#status || 502);
  }
}
