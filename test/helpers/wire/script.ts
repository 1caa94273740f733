import net from 'node:net';
import type { Prng } from './prng.js';
import { sleep } from '../wait.js';

// Byte-level scripts for the equivalence test: a client that speaks a protocol with raw
// sockets from prepared request bytes and records every byte it receives, so a run
// straight to the server and a run through the proxy can be compared byte for byte.
//
// A step writes its bytes (after an optional silence) and waits until the protocol's
// reply reader has seen `units` more complete replies. The reader is the test's own small
// parser, written from the protocol documentation, independent of the proxy's codecs.

export interface ReplyReader {
  feed(chunk: Buffer): void;
  /** Complete replies seen so far (what a unit is: one per protocol). */
  readonly units: number;
}

export interface Step<R extends ReplyReader> {
  /** What the step does, for failure messages. */
  readonly label: string;
  /** Silence before the step, in ms (honoured only by runs that keep the gaps). */
  readonly gapMs: number;
  /** Bytes to write; built at run time, so they may use an earlier reply (a statement id). */
  readonly write?: (reader: R) => Buffer;
  /** Tells the reader what the step's replies look like, before the write (MySQL response shapes). */
  readonly expect?: (reader: R) => void;
  /** Something done on another connection after the write (a PUBLISH), awaited. */
  readonly action?: () => Promise<void>;
  /** Replies that complete the step. */
  readonly units: number;
}

export interface Script<R extends ReplyReader> {
  readonly name: string;
  readonly steps: ReadonlyArray<Step<R>>;
}

export interface RunResult<R extends ReplyReader = ReplyReader> {
  /** The run's reader, with whatever it learnt (where server-assigned ids sit in `received`). */
  readonly reader: R;
  /** Every byte received, in order. */
  readonly received: Buffer;
  /** Where each step's replies start in `received` (the offset when the step wrote). */
  readonly stepOffsets: number[];
  /** performance.now() of each write. */
  readonly writeTimes: number[];
}

export interface RunOptions<R extends ReplyReader> {
  readonly port: number;
  /** Opens the connection instead of a plain TCP connect to `port` (a TLS client); resolves once it can carry the script. */
  readonly open?: () => Promise<net.Socket>;
  readonly reader: () => R;
  /** Keep the silences between steps (the proxied run) or skip them (the direct run). */
  readonly keepGaps: boolean;
  /** Bound on the wait for one step's replies. */
  readonly stepTimeoutMs?: number;
  /** Silence after the last step before the socket closes (lets the proxy's tick see the end state). */
  readonly tailMs?: number;
}

export async function runScript<R extends ReplyReader>(script: Script<R>, options: RunOptions<R>): Promise<RunResult<R>> {
  const reader = options.reader();
  const socket = options.open ? await options.open() : net.connect({ port: options.port, host: '127.0.0.1' });
  socket.setNoDelay(true);
  const chunks: Buffer[] = [];
  let size = 0;
  let failure: Error | null = null;
  socket.on('data', (chunk: Buffer) => {
    chunks.push(chunk);
    size += chunk.length;
    try {
      reader.feed(chunk);
    } catch (error) {
      failure = error as Error;
    }
  });
  socket.on('error', (error) => (failure ??= error));
  let closed = false;
  socket.on('close', () => (closed = true));
  if (!options.open) {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
  }
  const stepOffsets: number[] = [];
  const writeTimes: number[] = [];
  // Replies owed by the steps so far, counted from the start: a reply that came before its
  // step began (the MySQL greeting) still counts.
  let target = 0;
  try {
    for (const step of script.steps) {
      if (options.keepGaps && step.gapMs > 0) await sleep(step.gapMs);
      step.expect?.(reader);
      target += step.units;
      stepOffsets.push(size);
      if (step.write) {
        writeTimes.push(performance.now());
        socket.write(step.write(reader));
      }
      if (step.action) await step.action();
      const deadline = Date.now() + (options.stepTimeoutMs ?? 5_000);
      while (reader.units < target) {
        if (failure) throw failure;
        if (closed) throw new Error('the connection closed');
        if (Date.now() > deadline) throw new Error(`${reader.units} of ${target} replies after ${options.stepTimeoutMs ?? 5_000} ms`);
        await sleep(2);
      }
      if (failure) throw failure;
    }
    if (options.tailMs) await sleep(options.tailMs);
  } catch (error) {
    const at = stepOffsets.length - 1;
    const received = Buffer.concat(chunks);
    throw new Error(
      `${script.name}: step ${at} (${script.steps[at]?.label}) failed: ${(error as Error).message}\n` +
        `received since the step: ${JSON.stringify(received.subarray(stepOffsets[at] ?? 0).toString('latin1').slice(0, 400))}`,
    );
  } finally {
    socket.destroy();
  }
  return { reader, received: Buffer.concat(chunks), stepOffsets, writeTimes };
}

/**
 * Compares two runs' normalised bytes; on a difference, says where: the step whose replies
 * hold the first differing byte, with both sides around it.
 */
export function describeDifference<R extends ReplyReader>(
  script: Script<R>,
  direct: RunResult<R>,
  proxied: RunResult<R>,
  normalise: (bytes: Buffer, reader: R) => Buffer,
): string | null {
  const a = normalise(direct.received, direct.reader);
  const b = normalise(proxied.received, proxied.reader);
  if (a.equals(b)) return null;
  let at = 0;
  while (at < a.length && at < b.length && a[at] === b[at]) at++;
  let step = 0;
  while (step + 1 < direct.stepOffsets.length && direct.stepOffsets[step + 1]! <= at) step++;
  const around = (bytes: Buffer): string => JSON.stringify(bytes.subarray(Math.max(0, at - 40), at + 80).toString('latin1'));
  return (
    `${script.name}: direct ${a.length} bytes, proxied ${b.length} bytes; first difference at byte ${at}, ` +
    `in the replies to step ${step} (${script.steps[step]?.label})\n  direct:  ${around(a)}\n  proxied: ${around(b)}`
  );
}

/**
 * The silence before a step: a quarter of the steps follow at once (a busy connection),
 * the rest wait from a little under `every` to a little over twice it, so heartbeats go out
 * in some gaps and the next write lands before, during or after them.
 */
export function gapAround(prng: Prng, everyMs: number): number {
  if (prng.chance(0.25)) return prng.int(0, Math.round(everyMs / 4));
  return prng.int(Math.round(everyMs * 0.6), Math.round(everyMs * 2.2));
}

/** Total silence a script asks for, for the log. */
export function totalGapMs<R extends ReplyReader>(script: Script<R>): number {
  return script.steps.reduce((sum, step) => sum + step.gapMs, 0);
}
