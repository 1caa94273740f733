import http from 'node:http';
import { ProxyError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HttpPool, OriginPool, PoolRequestOptions } from '../pool/http-pool.js';
import type { ClientConnection } from './client.js';
import { IDEMPOTENT_METHODS, endToEnd, requestHasBody, trailerPairs } from './headers.js';
import { respondError } from './respond.js';

// One client request carried to the upstream over the pool, and its response carried
// back: bodies stream both ways with backpressure (never buffered whole), trailers and
// 1xx go through, and a request that died on a reused connection before any response
// byte is retried once on a fresh connection when that cannot run it twice:
//  - an idempotent method (RFC 9110 9.2.2) whose body written so far fits the replay
//    buffer (pingora keeps one the same way), or
//  - any method whose body had not started: the upstream cannot have acted on a request
//    whose body it never received. A bodiless POST is complete once its head is out, so
//    it is never retried.

/** Body bytes kept for a replay; past this an idempotent request with a body is not retried. */
const REPLAY_LIMIT = 64 * 1024;
/**
 * A client that leaves after sending its whole request does not cost the pool its
 * connection: the rest of the response is read and dropped, up to this many bytes and
 * within the response timeout (or DISCARD_TIME_LIMIT_MS without one), then the socket
 * goes back to the pool. Anything longer (a stream, a big download) closes it instead.
 */
const DISCARD_LIMIT = 256 * 1024;
const DISCARD_TIME_LIMIT_MS = 30_000;

/** What an exchange needs from its route. */
export interface ExchangeHost {
  readonly route: string;
  readonly log: Logger;
  /** requests_total{code} for the status the client got. */
  answered(status: number): void;
  /** upstream_request_duration_seconds. */
  observeUpstreamSeconds(seconds: number): void;
  /** retries_total{reason}. */
  retried(reason: string): void;
  /** Draining: every response closes its client connection. */
  draining(): boolean;
  countBytes(direction: 'upstream' | 'downstream', count: number): void;
  finished(exchange: Exchange): void;
}

export interface ExchangeTarget {
  readonly pool: HttpPool;
  readonly origin: OriginPool;
  /** The request target on the upstream hop (origin-form). */
  readonly path: string;
  /** The upstream request's header list (see headers.ts upstreamRequestHeaders). */
  readonly headers: string[];
}

export interface ExchangeOptions {
  readonly retry: boolean;
  readonly responseTimeoutMs: number;
}

export class Exchange {
  readonly #host: ExchangeHost;
  readonly #req: http.IncomingMessage;
  readonly #res: http.ServerResponse;
  readonly #client: ClientConnection;
  readonly #target: ExchangeTarget;
  readonly #options: ExchangeOptions;
  readonly #method: string;
  readonly #hasBody: boolean;
  readonly #startedAt = performance.now();
  /** The current attempt; null once the exchange gave up on the upstream. */
  #ureq: http.ClientRequest | null = null;
  /** The current attempt's response, once its head came. */
  #ures: http.IncomingMessage | null = null;
  #attempts = 0;
  /** Body bytes handed to the upstream request, over all attempts. */
  #bodyWritten = 0;
  /** What a retry would have to send again; null when a retry cannot replay the body. */
  #replay: Buffer[] | null;
  #replayBytes = 0;
  #bodyEnded = false;
  /** A 1xx came from the upstream: a response byte, so no retry. */
  #interim = false;
  /** The final response head came. */
  #responded = false;
  /** The upstream response was read to its end (node frees the socket after this). */
  #upstreamComplete = false;
  /** Wall-clock ms by which the response head must arrive; 0 = no deadline running. */
  #deadline = 0;
  #status = 0;
  /** The client's side is over (counted once). */
  #done = false;
  /** The client left; the upstream response is read to its end and dropped. */
  #discarding = false;
  #discarded = 0;

  constructor(
    host: ExchangeHost,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    client: ClientConnection,
    target: ExchangeTarget,
    options: ExchangeOptions,
  ) {
    this.#host = host;
    this.#req = req;
    this.#res = res;
    this.#client = client;
    this.#target = target;
    this.#options = options;
    this.#method = req.method ?? 'GET';
    this.#hasBody = requestHasBody(req);
    // Only an idempotent request ever replays body bytes.
    this.#replay = options.retry && IDEMPOTENT_METHODS.has(this.#method) ? [] : null;
  }

  start(): void {
    this.#client.requests++;
    this.#client.inFlight++;
    this.#client.upstream = this.#target.origin.describe();
    this.#req.on('data', this.#onBodyData);
    this.#req.on('end', this.#onBodyEnd);
    // A client reset mid-body surfaces as the response's 'close' below.
    this.#req.on('error', () => {});
    this.#res.on('close', this.#onClientClose);
    this.#attempt(false);
  }

  /** Shared clock: the response-head deadline. */
  tick(now: number): void {
    if (this.#deadline === 0 || now < this.#deadline) return;
    this.#deadline = 0;
    if (this.#discarding) {
      this.#abandonUpstream('client_aborted');
      return;
    }
    if (this.#done || this.#responded) return;
    this.#abandonUpstream('response_timeout');
    this.#answerError(504, 'the upstream did not answer in time');
  }

  #attempt(fresh: boolean): void {
    this.#attempts++;
    const options: http.RequestOptions & PoolRequestOptions = {
      agent: this.#target.origin as unknown as http.Agent,
      method: this.#method,
      path: this.#target.path,
      headers: this.#target.headers as unknown as http.OutgoingHttpHeaders,
      keepaliveProxyFresh: fresh,
    };
    let ureq: http.ClientRequest;
    try {
      ureq = http.request(options);
    } catch (error) {
      // node refused the request line or a header value for the upstream hop.
      this.#host.log.debug({ route: this.#host.route, err: String(error) }, 'request not forwardable');
      this.#answerError(400, 'the request cannot be forwarded');
      return;
    }
    this.#ureq = ureq;
    ureq.on('information', (info: http.InformationEvent) => this.#onInformation(ureq, info));
    ureq.on('response', (ures: http.IncomingMessage) => this.#onResponse(ureq, ures));
    // Stays for the request's life: errors of an abandoned attempt are ignored, never thrown.
    ureq.on('error', (error: NodeJS.ErrnoException) => this.#onUpstreamError(ureq, error));
    if (this.#replay) for (const chunk of this.#replay) ureq.write(chunk);
    if (this.#bodyEnded) this.#endUpstream(ureq);
    else this.#req.resume();
  }

  readonly #onBodyData = (chunk: Buffer): void => {
    const ureq = this.#ureq;
    if (!ureq || this.#done) return; // given up: node discards the rest of the body
    this.#client.bytesUp += chunk.length;
    this.#host.countBytes('upstream', chunk.length);
    if (this.#replay) {
      if (this.#replayBytes + chunk.length <= REPLAY_LIMIT) {
        this.#replay.push(chunk);
        this.#replayBytes += chunk.length;
      } else {
        this.#replay = null;
      }
    }
    this.#bodyWritten += chunk.length;
    if (!ureq.write(chunk)) {
      // Backpressure: read no more from the client until the upstream socket drains.
      this.#req.pause();
      ureq.once('drain', () => {
        if (ureq === this.#ureq) this.#req.resume();
      });
    }
  };

  readonly #onBodyEnd = (): void => {
    this.#bodyEnded = true;
    // The deadline for the response head runs from the end of the request.
    if (this.#options.responseTimeoutMs > 0 && !this.#responded) this.#deadline = Date.now() + this.#options.responseTimeoutMs;
    if (this.#ureq && !this.#done) this.#endUpstream(this.#ureq);
  };

  #endUpstream(ureq: http.ClientRequest): void {
    const trailers = this.#req.rawTrailers;
    if (trailers.length > 0) {
      try {
        ureq.addTrailers(trailerPairs(trailers));
      } catch {
        // A trailer node will not serialise is dropped, not fatal.
      }
    }
    ureq.end();
  }

  #onInformation(ureq: http.ClientRequest, info: http.InformationEvent): void {
    if (ureq !== this.#ureq || this.#done) return;
    this.#interim = true;
    this.#replay = null;
    if (this.#deadline) this.#deadline = Date.now() + this.#options.responseTimeoutMs;
    // RFC 9110 15.2: a proxy never sends a 1xx to an HTTP/1.0 client.
    if (this.#req.httpVersion === '1.0' || this.#res.headersSent || this.#res.destroyed) return;
    try {
      if (info.statusCode === 100) this.#res.writeContinue();
      else if (info.statusCode === 102) this.#res.writeProcessing();
      else if (info.statusCode === 103 && info.headers.link) this.#res.writeEarlyHints({ link: info.headers.link });
      // Other 1xx codes have no meaning node can write; the final response follows anyway.
    } catch {
      // An interim response node refuses to serialise is dropped; the final one still goes.
    }
  }

  #onResponse(ureq: http.ClientRequest, ures: http.IncomingMessage): void {
    if (ureq !== this.#ureq) {
      ures.resume();
      return;
    }
    this.#ures = ures;
    this.#responded = true;
    this.#replay = null;
    if (ureq.reusedSocket) this.#client.reused = true;
    if (this.#discarding) {
      this.#dropResponse(ures);
      return;
    }
    this.#deadline = 0;
    const res = this.#res;
    if (this.#done || res.destroyed) {
      ures.resume();
      return;
    }
    if (this.#host.draining()) res.shouldKeepAlive = false;
    const status = ures.statusCode ?? 502;
    try {
      res.writeHead(status, ures.statusMessage, endToEnd(ures.rawHeaders));
    } catch (error) {
      this.#host.log.warn({ route: this.#host.route, err: String(error) }, 'upstream response head not forwardable');
      this.#abandonUpstream('error');
      this.#answerError(502, 'the upstream sent an invalid response');
      return;
    }
    this.#status = status;
    ures.on('data', (chunk: Buffer) => {
      if (this.#discarding) {
        this.#countDiscarded(chunk.length);
        return;
      }
      this.#client.bytesDown += chunk.length;
      this.#host.countBytes('downstream', chunk.length);
      if (!res.write(chunk)) {
        ures.pause();
        res.once('drain', () => ures.resume());
      }
    });
    ures.on('end', () => {
      this.#upstreamComplete = true;
      this.#host.observeUpstreamSeconds((performance.now() - this.#startedAt) / 1000);
      if (this.#discarding) {
        this.#stopDiscarding();
        return;
      }
      if (ures.rawTrailers.length > 0) {
        try {
          res.addTrailers(trailerPairs(ures.rawTrailers));
        } catch {
          // dropped, as for request trailers
        }
      }
      res.end();
    });
    // The upstream died mid-body: the client must see a cut message, never a complete-looking one.
    ures.on('error', () => {
      if (!this.#upstreamComplete) this.#cutClient();
    });
  }

  #onUpstreamError(ureq: http.ClientRequest, error: NodeJS.ErrnoException): void {
    if (ureq !== this.#ureq) return;
    if (this.#discarding) {
      // The connection is lost anyway (the pool records why); nobody is waiting.
      this.#ureq = null;
      this.#stopDiscarding();
      return;
    }
    if (this.#done) return;
    if (this.#responded) {
      if (!this.#upstreamComplete) this.#cutClient();
      return;
    }
    if (this.#mayRetry(ureq)) {
      const reason = (error.code ?? 'error').toLowerCase();
      this.#host.retried(reason);
      this.#host.log.debug({ route: this.#host.route, method: this.#method, reason }, 'reused upstream connection failed before the response; retrying on a fresh one');
      this.#attempt(true);
      return;
    }
    const timeout = error instanceof ProxyError && error.code === 'CONNECT_TIMEOUT';
    const connectFailed = error instanceof ProxyError;
    this.#host.log.debug({ route: this.#host.route, method: this.#method, err: error.message, reused: ureq.reusedSocket }, 'upstream request failed');
    this.#ureq = null;
    if (timeout) this.#answerError(504, 'the upstream did not accept the connection in time');
    else if (connectFailed) this.#answerError(502, 'the upstream is unreachable');
    else this.#answerError(502, 'the upstream closed the connection');
  }

  #mayRetry(ureq: http.ClientRequest): boolean {
    if (!this.#options.retry || this.#attempts > 1 || !ureq.reusedSocket || this.#interim) return false;
    if (IDEMPOTENT_METHODS.has(this.#method)) return this.#bodyWritten === 0 || this.#replay !== null;
    return this.#hasBody && this.#bodyWritten === 0;
  }

  /** Stops the current attempt: its connection (if it has one) is evicted with `reason`. */
  #abandonUpstream(reason: 'response_timeout' | 'client_aborted' | 'error'): void {
    const ureq = this.#ureq;
    this.#ureq = null;
    if (this.#discarding) this.#stopDiscarding();
    if (!ureq || this.#upstreamComplete) return;
    // Before 'free' the socket is this request's alone; after it, it may serve another.
    this.#target.pool.connectionOf(ureq.socket)?.close(reason);
    ureq.destroy();
  }

  /** The upstream failed mid-response: reset the client so the truncation shows. */
  #cutClient(): void {
    this.#ureq = null;
    this.#res.destroy();
  }

  #answerError(status: number, detail: string): void {
    // A client still sending a body we will not read is told to go (no keep-alive).
    if (respondError(this.#res, status, detail, !this.#bodyEnded)) this.#status = status;
    else this.#res.destroy();
  }

  readonly #onClientClose = (): void => {
    if (!this.#res.writableFinished && !this.#done) {
      if (!this.#res.headersSent) this.#status = 499; // nginx's "client closed request"
      // The client went away first. A request the upstream has whole can still complete
      // on its connection, which then stays pooled; a half-sent one cannot: close it.
      if (this.#ureq && this.#bodyEnded && !this.#upstreamComplete) this.#startDiscarding();
      else this.#abandonUpstream('client_aborted');
    }
    this.#complete();
  };

  #startDiscarding(): void {
    this.#discarding = true;
    this.#deadline = Date.now() + (this.#options.responseTimeoutMs || DISCARD_TIME_LIMIT_MS);
    if (this.#ures) {
      this.#countDiscarded(0);
      this.#ures.resume();
    }
  }

  #dropResponse(ures: http.IncomingMessage): void {
    ures.on('data', (chunk: Buffer) => this.#countDiscarded(chunk.length));
    ures.on('end', () => {
      this.#upstreamComplete = true;
      this.#stopDiscarding();
    });
    ures.on('error', () => this.#stopDiscarding());
  }

  #countDiscarded(bytes: number): void {
    this.#discarded += bytes;
    if (this.#discarded > DISCARD_LIMIT) this.#abandonUpstream('client_aborted');
  }

  #stopDiscarding(): void {
    if (!this.#discarding) return;
    this.#discarding = false;
    this.#deadline = 0;
    if (this.#done) this.#host.finished(this);
  }

  #complete(): void {
    if (this.#done) return;
    this.#done = true;
    if (!this.#discarding) this.#deadline = 0;
    this.#client.inFlight--;
    this.#client.lastActivity = Date.now();
    this.#host.answered(this.#status || 502);
    // A response still being dropped keeps the exchange on the route's clock until it ends.
    if (!this.#discarding) this.#host.finished(this);
  }
}
