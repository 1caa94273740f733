import type { Clock } from '../clock.js';
import type net from 'node:net';
import type { HostPort } from '../config/schema.js';
import { dial, type DialHandle } from '../net/dial.js';
import { readInto } from '../net/shared-reads.js';
import { readTcpInfo } from '../net/tcp-info.js';
import type { CanaryProbe } from './probes.js';

// One sacrificial connection: connect (kernel keepalive off, so nothing but us touches
// the flow), optionally read the server's greeting, stay silent for `idleMs`, then send
// the probe and wait for an answer. It died if the flow was reset or closed while idle,
// or the probe got a reset, a close, or no answer within `probeTimeoutMs` (a middlebox
// that forgot the flow drops the probe silently; TCP_USER_TIMEOUT then ends the socket).
//
// Driven by its owner's clock ticks (tick(now)); no timers of its own. The socket ends
// only in #finish(), once, whatever happened.
//
// The silence has two starts: when this process saw the last packet (a survival counts from
// there, never overstated) and when the kernel got it (a death counts from there, never
// understated). On a loaded machine the two can be hundreds of ms apart.

/** TCP_INFO's last-receive age is counted in jiffies: up to one (10 ms at HZ=100) may be missing. */
const KERNEL_AGE_SLACK_MS = 10;

export type DeathKind = 'reset' | 'closed' | 'silence' | 'timeout' | 'error';

export type CanaryOutcome =
  /** `idleMs`: the silence the flow was measured to survive (about the planned idle). */
  | { readonly kind: 'survived'; readonly idleMs: number }
  /** `idleMs`: the silence after which the death showed (shorter than planned when it came while idle). */
  | { readonly kind: 'died'; readonly idleMs: number; readonly how: DeathKind }
  /** It could not tell: no connection, a greeting that never came, a reply that is not the protocol's. */
  | { readonly kind: 'failed'; readonly reason: string };

export interface CanaryOptions {
  readonly target: HostPort;
  readonly idleMs: number;
  readonly probe: CanaryProbe;
  readonly connectTimeoutMs: number;
  readonly probeTimeoutMs: number;
  /** The owner's clock: phase start times (coarse), and the dial's connect time. */
  readonly clock: Clock;
}

type Phase = 'connecting' | 'greeting' | 'idle' | 'probing' | 'done';

export class Canary {
  readonly idleMs: number;
  readonly done: Promise<CanaryOutcome>;
  readonly #options: CanaryOptions;
  readonly #dial: DialHandle;
  #resolve!: (outcome: CanaryOutcome) => void;
  #socket: net.Socket | null = null;
  #phase: Phase = 'connecting';
  /** When the current phase's clock started (connect asked, idle started, probe sent). */
  #since: number;
  /** When the flow went silent (preciseNow): the coarse #since may be a tick early, which would overstate a survival. */
  #silentSince = 0;
  /** The earliest the flow can have gone silent (preciseNow): when the kernel got its last packet. */
  #silentSinceEarliest = 0;
  /** When the probe was sent (preciseNow). */
  #probeSentAt = 0;
  #reply: Buffer[] = [];
  #replyBytes = 0;

  constructor(options: CanaryOptions) {
    this.#options = options;
    this.idleMs = options.idleMs;
    this.#since = options.clock.now();
    this.done = new Promise((resolve) => (this.#resolve = resolve));
    // Kernel keepalive off (a probe would refresh the middlebox); probe data unacknowledged for
    // probeTimeout ends the socket with ETIMEDOUT (a dropped flow).
    this.#dial = dial({ target: options.target, timeoutMs: options.connectTimeoutMs, noDelay: true, clock: options.clock, keepalive: null, userTimeoutMs: options.probeTimeoutMs });
    this.#dial.done.then(
      ({ socket }) => this.#connected(socket),
      (error: unknown) => this.#finish({ kind: 'failed', reason: `connect: ${(error as Error).message}` }),
    );
  }

  get finished(): boolean {
    return this.#phase === 'done';
  }

  /** Ends the canary without an answer (its outcome became moot, or the search stopped). */
  cancel(): void {
    if (this.#phase === 'connecting') this.#dial.abort();
    this.#finish({ kind: 'failed', reason: 'cancelled' });
  }

  tick(now: number): void {
    switch (this.#phase) {
      case 'greeting':
        if (now - this.#since >= this.#options.probeTimeoutMs) this.#finish({ kind: 'failed', reason: 'no greeting from the server' });
        return;
      case 'idle':
        if (now - this.#since >= this.idleMs) this.#sendProbe(now);
        return;
      case 'probing':
        if (now - this.#since >= this.#options.probeTimeoutMs) this.#died('silence', this.#probeSentAt - this.#silentSinceEarliest);
        return;
      default:
        return;
    }
  }

  #connected(socket: net.Socket): void {
    if (this.#phase === 'done') {
      socket.destroy();
      return;
    }
    this.#socket = socket;
    socket.on('error', (error: NodeJS.ErrnoException) => this.#onError(error));
    socket.on('end', () => this.#onEnd());
    socket.on('close', () => this.#onEnd());
    readInto(socket, (_socket, chunk) => this.#onData(chunk));
    this.#phase = this.#options.probe.awaitGreeting ? 'greeting' : 'idle';
    this.#since = this.#options.clock.now();
    this.#startSilence(socket);
  }

  #onData(chunk: Buffer): void {
    if (this.#phase === 'greeting') {
      // The idle period starts after the server's last greeting byte.
      this.#phase = 'idle';
      this.#since = this.#options.clock.now();
      this.#startSilence(this.#socket!);
      return;
    }
    if (this.#phase !== 'probing') return; // unsolicited bytes while idle: not an answer to anything
    const expect = this.#options.probe.expect;
    if (!expect) {
      this.#finish({ kind: 'survived', idleMs: this.#provenIdleMs() });
      return;
    }
    // Bounded: only as many bytes as the expected reply are kept.
    this.#reply.push(chunk);
    this.#replyBytes += chunk.length;
    if (this.#replyBytes < expect.length) return;
    const reply = Buffer.concat(this.#reply).subarray(0, expect.length);
    if (reply.equals(expect)) this.#finish({ kind: 'survived', idleMs: this.#provenIdleMs() });
    else this.#finish({ kind: 'failed', reason: `unexpected reply ${reply.toString('hex')} (expected ${expect.toString('hex')})` });
  }

  /**
   * The flow's last packet so far (the handshake, a greeting byte) was just seen: the silence
   * starts now for a survival, and when the kernel got that packet for a death (TCP_INFO's
   * last receive, set by the handshake too). Without TCP_INFO both start now.
   */
  #startSilence(socket: net.Socket): void {
    const now = this.#options.clock.preciseNow();
    const info = readTcpInfo(socket);
    this.#silentSince = now;
    this.#silentSinceEarliest = info === null ? now : now - info.lastDataRecvMs - KERNEL_AGE_SLACK_MS;
  }

  #sendProbe(now: number): void {
    this.#probeSentAt = this.#options.clock.preciseNow();
    this.#phase = 'probing';
    this.#since = now;
    this.#socket!.write(this.#options.probe.send);
  }

  #onError(error: NodeJS.ErrnoException): void {
    const how: DeathKind = error.code === 'ETIMEDOUT' ? 'timeout' : error.code === 'ECONNRESET' || error.code === 'EPIPE' ? 'reset' : 'error';
    this.#diedNow(how);
  }

  #onEnd(): void {
    this.#diedNow('closed');
  }

  /** A death seen while idle happened within the idle so far; one seen while probing, within the idle before the probe. */
  #diedNow(how: DeathKind): void {
    if (this.#phase === 'done') return;
    if (this.#phase === 'greeting') {
      this.#finish({ kind: 'failed', reason: `the server ${how === 'closed' ? 'closed' : 'reset'} the connection before its greeting` });
      return;
    }
    const silenceEnd = this.#phase === 'idle' ? this.#options.clock.preciseNow() : this.#probeSentAt;
    this.#died(how, silenceEnd - this.#silentSinceEarliest);
  }

  /** The silence this flow survived, in whole ms rounded down (a survival must not be overstated). */
  #provenIdleMs(): number {
    return Math.floor(this.#probeSentAt - this.#silentSince);
  }

  /** A death is placed at the silence before it, in whole ms rounded up (a bound above the timeout). */
  #died(how: DeathKind, idleMs: number): void {
    this.#finish({ kind: 'died', idleMs: Math.max(1, Math.ceil(idleMs)), how });
  }

  #finish(outcome: CanaryOutcome): void {
    if (this.#phase === 'done') return;
    this.#phase = 'done';
    const socket = this.#socket;
    if (socket && !socket.destroyed) {
      socket.on('error', () => {});
      socket.destroy();
    }
    this.#reply = [];
    this.#resolve(outcome);
  }
}
