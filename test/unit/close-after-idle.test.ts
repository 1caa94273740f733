import { describe, expect, it } from 'vitest';
import { CloseAfterIdle } from '../../src/pool/close-after-idle.js';

describe('CloseAfterIdle', () => {
  it('keeps the shortest age observed, ignores non-positive ones, and lapses 10 minutes after the last one that counted', () => {
    const learned = new CloseAfterIdle();
    const start = 1_000_000;
    expect(learned.shortestMs(start)).toBe(Infinity);
    expect(learned.observe(0, start)).toBe(false);
    expect(learned.observe(Number.NaN, start)).toBe(false);
    expect(learned.observe(5_000, start)).toBe(true);
    expect(learned.observe(7_000, start + 1_000)).toBe(false);
    expect(learned.shortestMs(start + 1_000)).toBe(5_000);
    expect(learned.observe(3_000, start + 2_000)).toBe(true);
    // A longer age does not refresh the lapse; an equal one does.
    expect(learned.observe(3_000, start + 5 * 60_000)).toBe(false);
    expect(learned.shortestMs(start + 5 * 60_000 + 9 * 60_000)).toBe(3_000);
    expect(learned.shortestMs(start + 5 * 60_000 + 10 * 60_000)).toBe(Infinity);
    expect(learned.observe(9_000, start + 16 * 60_000)).toBe(true);
  });
});
