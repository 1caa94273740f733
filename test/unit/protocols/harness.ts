import { expect } from 'vitest';
import type { HeartbeatCodec, Tracker } from '../../../src/protocols/types.js';

// Helpers for codec tests: no sockets, bytes in, bytes out.

export const bytes = (text: string): Buffer => Buffer.from(text, 'latin1');
export const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');

/** One step of a conversation: bytes one way, then (optionally) the state expected after it. */
export type Step =
  | { client: Buffer; state?: Tracker['state'] }
  | { server: Buffer; state?: Tracker['state']; forwarded?: Buffer }
  | { probe: Buffer }
  | { check: (tracker: Tracker) => void };

/** Feed a server chunk split at `cuts` offsets; returns the concatenation of what would be forwarded. */
export function serverSplit(tracker: Tracker, data: Buffer, cuts: number[]): Buffer {
  const out: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, data.length]) {
    if (cut < from) continue;
    out.push(Buffer.from(tracker.fromServer(data.subarray(from, cut))));
    from = cut;
  }
  return Buffer.concat(out);
}

export function clientSplit(tracker: Tracker, data: Buffer, cuts: number[]): void {
  let from = 0;
  for (const cut of [...cuts, data.length]) {
    if (cut < from) continue;
    tracker.fromClient(data.subarray(from, cut));
    from = cut;
  }
}

/** Run the steps, whole chunks; asserts each stated state and forwarded bytes. */
export function run(tracker: Tracker, steps: Step[]): void {
  steps.forEach((step, index) => {
    const where = `step ${index}`;
    if ('client' in step) {
      tracker.fromClient(step.client);
    } else if ('server' in step) {
      const forwarded = tracker.fromServer(step.server);
      expect(forwarded.toString('latin1'), `${where}: forwarded`).toBe((step.forwarded ?? step.server).toString('latin1'));
    } else if ('probe' in step) {
      expect(tracker.state, `${where}: state before probe`).toBe('quiet');
      expect(tracker.probing).toBe(false);
      expect(tracker.probe().toString('latin1'), `${where}: probe bytes`).toBe(step.probe.toString('latin1'));
      expect(tracker.probing, `${where}: probing after probe()`).toBe(true);
    } else {
      step.check(tracker);
    }
    if ('state' in step && step.state) expect(tracker.state, `${where}: state (off: ${tracker.offReason})`).toBe(step.state);
  });
}

/**
 * For every split offset of `data` (and byte by byte): a fresh tracker, brought to the
 * point by `prepare`, fed `data` in two (or n) pieces, must forward `forwarded` and end in
 * the same state as when fed whole.
 */
export function everySplit(
  codec: HeartbeatCodec,
  prepare: (tracker: Tracker) => void,
  side: 'server' | 'client',
  data: Buffer,
  expectAfter: { state: Tracker['state']; forwarded?: Buffer; probing?: boolean; offReason?: string | null },
): void {
  const splits: number[][] = [];
  for (let cut = 0; cut <= data.length; cut++) splits.push([cut]);
  splits.push(Array.from({ length: data.length }, (_, k) => k + 1));
  for (const cuts of splits) {
    const tracker = codec.track({});
    prepare(tracker);
    const label = `cuts ${cuts.length > 1 ? 'every byte' : cuts[0]}`;
    if (side === 'server') {
      const forwarded = serverSplit(tracker, data, cuts);
      expect(forwarded.toString('hex'), `${label}: forwarded`).toBe((expectAfter.forwarded ?? data).toString('hex'));
    } else {
      clientSplit(tracker, data, cuts);
    }
    expect(tracker.state, `${label}: state (off: ${tracker.offReason})`).toBe(expectAfter.state);
    if (expectAfter.probing !== undefined) expect(tracker.probing, `${label}: probing`).toBe(expectAfter.probing);
    if (expectAfter.offReason !== undefined) expect(tracker.offReason, `${label}: offReason`).toBe(expectAfter.offReason);
  }
}
