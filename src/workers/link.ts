import type { Worker } from 'node:cluster';
import { isHello, isReply, type Answers, type Kind, type Request } from './messages.js';

// The primary's end of the channel to one worker: a request gets the reply with its id, or
// fails after its timeout or when the worker exits. Nothing is sent before the worker says
// hello: a message that arrives before its listener is attached is dropped, and a worker
// spends its first tens of milliseconds loading modules. Pending requests are bounded by what
// the primary asks (a scrape, a listing, a reload at a time), each with its own timer; the
// liveness ping is one at a time, timed by the primary's clock.

interface Pending {
  readonly resolve: (answer: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export class WorkerLink {
  readonly worker: Worker;
  /** Resolves when the worker process has exited. */
  readonly exited: Promise<void>;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  /** Messages held until the worker's hello. */
  #unsent: object[] | null = [];
  /** The liveness ping in flight (its id and when it was sent); null when none is. */
  #ping: { readonly id: number; readonly sentAtMs: number } | null = null;
  #lastPingAtMs = -Infinity;

  constructor(worker: Worker) {
    this.worker = worker;
    this.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    worker.on('message', (message: unknown) => this.#onMessage(message));
    worker.once('exit', () => this.#failAll(new Error(`worker ${worker.process.pid} exited`)));
    // A send to a worker that has just died fails here, and its request with the exit.
    worker.on('error', () => {});
  }

  request<K extends Kind>(request: Extract<Request, { kp: K }>, timeoutMs: number): Promise<Answers[K]> {
    const id = this.#nextId++;
    return new Promise<Answers[K]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`worker ${this.worker.process.pid} did not answer ${request.kp} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.#pending.set(id, { resolve: resolve as (answer: unknown) => void, reject, timer });
      this.#send({ ...request, id });
    });
  }

  /**
   * Called on the primary's shared clock: sends a liveness ping when none is in flight and
   * `everyMs` has passed since the last one. One at a time, so a stopped worker does not pile
   * pings up in the channel; its reply is matched by id, with no timer of its own.
   */
  ping(nowMs: number, everyMs: number): void {
    if (this.#ping || nowMs - this.#lastPingAtMs < everyMs) return;
    this.#lastPingAtMs = nowMs;
    this.#ping = { id: this.#nextId++, sentAtMs: nowMs };
    this.#send({ kp: 'ping', id: this.#ping.id });
  }

  /** How long the ping in flight has gone unanswered; 0 when none is. */
  unansweredMs(nowMs: number): number {
    return this.#ping ? Math.max(0, nowMs - this.#ping.sentAtMs) : 0;
  }

  #send(message: object): void {
    if (this.#unsent) this.#unsent.push(message);
    else if (this.worker.isConnected()) this.worker.send(message as Parameters<Worker['send']>[0]);
  }

  #onMessage(message: unknown): void {
    if (isHello(message) && this.#unsent) {
      const unsent = this.#unsent;
      this.#unsent = null;
      for (const held of unsent) this.#send(held);
      return;
    }
    if (!isReply(message)) return;
    if (message.id === this.#ping?.id) {
      this.#ping = null;
      return;
    }
    if (message.ok) this.#settle(message.id, null, message.answer);
    else this.#settle(message.id, new Error(message.error));
  }

  #settle(id: number, error: Error | null, answer?: unknown): void {
    const pending = this.#pending.get(id);
    if (!pending) return; // timed out already
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(answer);
  }

  #failAll(error: Error): void {
    for (const id of [...this.#pending.keys()]) this.#settle(id, error);
  }
}
