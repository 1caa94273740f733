import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../../src/config/duration.js';
import { toReport } from '../../../src/discover/run.js';

// What `discover` recommends for a bracket: the heartbeat at 0.75 of the longest idle proven to
// survive (the bracket's lower bound, or --max when nothing dropped), the fraction the
// `every: auto` learner uses, rounded down to 100 ms below 10 s and whole seconds above;
// keepaliveIdle stays half of it in whole seconds (at least 1 s). JSON keys as INTERFACE.md.

const MAX_MS = 30 * 60_000;

function recommended(minMs: number, maxMs: number | null): { everyMs: number; keepaliveMs: number; every: string } {
  const report = toReport('db:5432', { minMs, maxMs }, MAX_MS);
  expect(Object.keys(report.recommended).sort()).toEqual(['heartbeatEvery', 'keepaliveIdle']);
  const { heartbeatEvery, keepaliveIdle } = report.recommended;
  // "Xs" as INTERFACE.md shows it, and a duration the config reads back.
  expect(heartbeatEvery).toMatch(/^\d+(\.\d+)?s$/);
  expect(keepaliveIdle).toMatch(/^\d+s$/);
  return { everyMs: parseDuration(heartbeatEvery), keepaliveMs: parseDuration(keepaliveIdle), every: heartbeatEvery };
}

describe('discover recommendation', () => {
  it('is 0.75 of the lower bound, rounded down to 100 ms below 10 s and to seconds above', () => {
    const cases: Array<[number, number | null, string, string]> = [
      [1_000, 2_000, '0.7s', '1s'],
      [3_800, 4_500, '2.8s', '1s'],
      [4_000, 5_000, '3s', '2s'],
      [8_000, 9_000, '6s', '4s'],
      [13_300, 14_000, '9.9s', '6s'],
      [13_400, 14_000, '10s', '6s'],
      [20_000, 23_000, '15s', '10s'],
      [61_000, 65_000, '45s', '30s'],
      [350_000, 360_000, '262s', '175s'],
      [3_600_000, 3_700_000, '2700s', '1800s'],
      // Nothing dropped within --max: --max itself is proven.
      [MAX_MS, null, '1350s', '900s'],
    ];
    for (const [minMs, maxMs, every, keepalive] of cases) {
      const report = toReport('db:5432', { minMs, maxMs }, MAX_MS);
      expect(report.recommended, `${minMs}..${maxMs}`).toEqual({ heartbeatEvery: every, keepaliveIdle: keepalive });
    }
  });

  it('for generated brackets: never above the lower bound, within one step of 0.75 of it, and never shorter for a longer bound', () => {
    let previousMs = 0;
    for (let minMs = 200; minMs <= MAX_MS; minMs = Math.ceil(minMs * 1.07) + 37) {
      const { everyMs, keepaliveMs, every } = recommended(minMs, minMs + 1_000);
      const stepMs = everyMs < 10_000 ? 100 : 1_000;
      const label = `${minMs} ms -> ${every}`;
      expect(everyMs, label).toBeLessThanOrEqual(minMs * 0.75);
      expect(everyMs, label).toBeGreaterThan(minMs * 0.75 - stepMs);
      expect(everyMs % stepMs, label).toBe(0);
      expect(everyMs, label).toBeGreaterThanOrEqual(previousMs);
      expect(keepaliveMs % 1_000, label).toBe(0);
      expect(keepaliveMs, label).toBeGreaterThanOrEqual(1_000);
      if (minMs >= 2_000) expect(keepaliveMs, label).toBeLessThanOrEqual(minMs / 2);
      previousMs = everyMs;
    }
  });

  it('stays above 0 and below the bound for a bracket under the 100 ms step', () => {
    for (const minMs of [2, 10, 50, 99, 133]) {
      const { everyMs } = recommended(minMs, minMs * 2);
      expect(everyMs, `${minMs}`).toBeGreaterThan(0);
      expect(everyMs, `${minMs}`).toBeLessThanOrEqual(minMs);
    }
  });
});
