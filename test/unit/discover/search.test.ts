import { describe, expect, it } from 'vitest';
import { DEFAULT_SEARCH, IdleSearch } from '../../../src/discover/search.js';
import { Prng } from '../../helpers/wire/prng.js';

// The planner driven by a simulated path whose idle timeout is known: every canary's
// outcome arrives when its idle period ends, and the search must end with a bracket that
// holds the timeout, at the asked resolution, well within twice the timeout.

interface Simulated {
  readonly elapsedMs: number;
  readonly bracket: { minMs: number; maxMs: number | null };
  readonly maxInFlight: number;
}

function simulate(timeoutMs: number, options: { maxMs: number; parallel: number; flaky?: () => boolean }): Simulated {
  const search = new IdleSearch({ ...DEFAULT_SEARCH, maxMs: options.maxMs, parallel: options.parallel });
  const endsAt = new Map<number, number>();
  let now = 0;
  let maxInFlight = 0;
  for (let step = 0; step < 10_000 && !search.finished; step++) {
    for (const ms of search.plan()) endsAt.set(ms, now + ms);
    for (const ms of search.moot()) endsAt.delete(ms);
    maxInFlight = Math.max(maxInFlight, endsAt.size);
    if (search.finished || endsAt.size === 0) break;
    const [ms, at] = [...endsAt].sort((a, b) => a[1] - b[1])[0]!;
    endsAt.delete(ms);
    now = at;
    if (options.flaky?.()) search.forget(ms); // a canary that could not tell
    else search.record(ms, ms < timeoutMs);
  }
  return { elapsedMs: now, bracket: search.bracket, maxInFlight };
}

describe('IdleSearch', () => {
  it('brackets any timeout from 1.5 s to 25 m within the resolution, in well under twice the timeout', () => {
    const prng = new Prng(11);
    for (let i = 0; i < 300; i++) {
      const timeoutMs = Math.round(1_500 * Math.exp(prng.next() * Math.log(1_000)));
      const result = simulate(timeoutMs, { maxMs: 30 * 60_000, parallel: 32 });
      const { minMs, maxMs } = result.bracket;
      expect(maxMs, `timeout ${timeoutMs}`).not.toBeNull();
      expect(minMs).toBeLessThan(timeoutMs);
      expect(maxMs!).toBeGreaterThanOrEqual(timeoutMs);
      expect(maxMs! - minMs).toBeLessThanOrEqual(Math.max(DEFAULT_SEARCH.resolutionMs, minMs * DEFAULT_SEARCH.resolutionFraction));
      expect(result.elapsedMs, `timeout ${timeoutMs}`).toBeLessThan(1.5 * timeoutMs + 2_000);
      expect(result.maxInFlight).toBeLessThanOrEqual(32);
    }
  });

  it('finds 350 s in under 1.5 x 350 s with the default parallelism of discover', () => {
    expect(simulate(350_000, { maxMs: 30 * 60_000, parallel: 32 }).elapsedMs).toBeLessThan(1.5 * 350_000);
  });

  it('never plans past maxMs and reports no death when the timeout is beyond it', () => {
    const result = simulate(10 * 60_000, { maxMs: 60_000, parallel: 8 });
    expect(result.bracket).toEqual({ minMs: 60_000, maxMs: null });
    expect(result.elapsedMs).toBe(60_000);
  });

  it('still converges with one slot, and when canaries fail to tell', () => {
    expect(simulate(7_000, { maxMs: 60_000, parallel: 1 }).bracket.maxMs).toBeGreaterThanOrEqual(7_000);
    const prng = new Prng(5);
    const result = simulate(12_000, { maxMs: 60_000, parallel: 4, flaky: () => prng.chance(0.2) });
    expect(result.bracket.minMs).toBeLessThan(12_000);
    expect(result.bracket.maxMs).toBeGreaterThanOrEqual(12_000);
  });

  it('with few slots, the time to a bracket grows with the timeout, not with --max', () => {
    // One to four slots cannot cover a log scale up to 30 m at once: a slot spent idling
    // for --max (or for a point far above anything proven) makes a 3 s timeout take 30 m.
    for (const parallel of [1, 2, 3, 4]) {
      for (let timeoutMs = 1_500; timeoutMs <= 20 * 60_000; timeoutMs = Math.round(timeoutMs * 1.37)) {
        const result = simulate(timeoutMs, { maxMs: 30 * 60_000, parallel });
        const where = `timeout ${timeoutMs}, parallel ${parallel}`;
        expect(result.bracket.maxMs, where).not.toBeNull();
        expect(result.bracket.minMs, where).toBeLessThan(timeoutMs);
        expect(result.bracket.maxMs!, where).toBeGreaterThanOrEqual(timeoutMs);
        expect(result.elapsedMs, where).toBeLessThan(10 * timeoutMs + 5_000);
      }
    }
  });

  it('holds a death below the first probe: the timeout is shorter than the shortest idle tried', () => {
    const result = simulate(400, { maxMs: 60_000, parallel: 4 });
    expect(result.bracket).toEqual({ minMs: 0, maxMs: 1_000 });
  });

  it('refuses options it cannot search with', () => {
    expect(() => new IdleSearch({ ...DEFAULT_SEARCH, maxMs: 500 })).toThrow(RangeError);
    expect(() => new IdleSearch({ ...DEFAULT_SEARCH, maxMs: 5_000, parallel: 0 })).toThrow(RangeError);
  });
});
