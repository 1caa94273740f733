import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { Logger } from '../../src/log.js';
import { BurstLog } from '../../src/log-burst.js';

// The one burst folding of the process: the first event of a burst is written at once,
// the rest are counted into at most one line per interval (by kind), and nothing is left
// unsaid once the burst stops. Driven by a manual clock over many generated bursts.

interface Line {
  readonly at: number;
  readonly fields: Record<string, unknown>;
}

function recorder(lines: Line[], clock: ManualClock): Logger {
  const write = (fields: Record<string, unknown>): void => void lines.push({ at: clock.now(), fields });
  return { info: write, warn: write, error: write } as unknown as Logger;
}

/** A small deterministic generator (mulberry32), so a failure names its seed. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('BurstLog', () => {
  for (let seed = 1; seed <= 40; seed++) {
    it(`accounts for every event of generated bursts, at most one line a second after the first (seed ${seed})`, () => {
      const next = random(seed);
      const lines: Line[] = [];
      const clock = new ManualClock(250);
      const burst = new BurstLog(recorder(lines, clock), clock, { level: 'info', msg: 'evicted', countBy: 'reasons' });
      const reasons = ['peer_reset', 'idle_timeout', 'heartbeat_timeout'];
      const noted = new Map<string, number>();
      let total = 0;
      for (let step = 0; step < 200; step++) {
        const events = next() < 0.3 ? Math.floor(next() * 300) : Math.floor(next() * 3);
        for (let i = 0; i < events; i++) {
          const reason = reasons[Math.floor(next() * reasons.length)]!;
          noted.set(reason, (noted.get(reason) ?? 0) + 1);
          burst.note({ reason }, reason);
          total++;
        }
        clock.advance(Math.floor(next() * 700));
      }
      clock.advance(2_000); // the last summary comes from the clock, unprompted

      // A first line is its own event; a summary line stands for the events it folded.
      const accounted = lines.reduce((n, l) => n + Number(l.fields.alsoInLastInterval ?? 1), 0);
      expect(accounted).toBe(total);
      const byReason = new Map<string, number>();
      for (const { fields } of lines) {
        const counts = (fields.reasons ?? { [String(fields.reason)]: 1 }) as Record<string, number>;
        if (fields.alsoInLastInterval === undefined) byReason.set(String(fields.reason), (byReason.get(String(fields.reason)) ?? 0) + 1);
        else for (const [reason, n] of Object.entries(counts)) byReason.set(reason, (byReason.get(reason) ?? 0) + n);
      }
      expect(byReason).toEqual(noted);
      for (let i = 1; i < lines.length; i++) expect(lines[i]!.at - lines[i - 1]!.at).toBeGreaterThanOrEqual(1_000);
      burst.flush();
    });
  }

  it('writes a lone event at once and lets go of the clock after a quiet interval', () => {
    const lines: Line[] = [];
    const clock = new ManualClock(250);
    const burst = new BurstLog(recorder(lines, clock), clock, { level: 'warn', msg: 'failed' });
    burst.note({ n: 1 });
    expect(lines).toHaveLength(1);
    expect(clock.ticking).toBe(true);
    clock.advance(1_500);
    expect(clock.ticking).toBe(false);
    burst.note({ n: 2 });
    expect(lines.map((l) => l.fields)).toEqual([{ n: 1 }, { n: 2 }]);
    burst.flush();
  });

  it('flush() says what is folded and not yet written', () => {
    const lines: Line[] = [];
    const clock = new ManualClock(250);
    const burst = new BurstLog(recorder(lines, clock), clock, { level: 'warn', msg: 'failed', countBy: 'codes' });
    for (let i = 0; i < 5; i++) burst.note({ code: 'EMFILE' }, 'EMFILE');
    burst.flush();
    expect(lines.map((l) => l.fields)).toEqual([{ code: 'EMFILE' }, { code: 'EMFILE', alsoInLastInterval: 4, codes: { EMFILE: 4 } }]);
    expect(clock.ticking).toBe(false);
  });
});
