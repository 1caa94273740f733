import { describe, expect, it } from 'vitest';
import { formatDuration, MAX_DURATION_MS, parseDuration } from '../../src/config/duration.js';

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['20s', 20_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['1h30m', 5_400_000],
    ['1m30s500ms', 90_500],
    ['1.5s', 1_500],
    ['0.5h', 1_800_000],
    ['1.1s', 1_100],
    ['0', 0],
    ['0s', 0],
    ['0ms', 0],
    [' 20s ', 20_000],
    [0, 0],
  ] as const)('%j is %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each([
    [20, 'durations are strings with a unit, e.g. "20s"'],
    [1.5, 'durations are strings with a unit, e.g. "20s"'],
    ['20', '"20": missing unit after 20; write "20s" or "20ms"'],
    ['1h30', '"1h30": missing unit after 30'],
    ['20sec', '"20sec": unknown unit "sec"; use ms, s, m or h'],
    ['20S', '"20S": unknown unit "S"; use ms, s, m or h'],
    ['2d', '"2d": unknown unit "d"; use ms, s, m or h'],
    ['30m1h', '"30m1h": write units once each, from the largest to the smallest (e.g. "1h30m")'],
    ['1s1s', '"1s1s": write units once each, from the largest to the smallest (e.g. "1h30m")'],
    ['-5s', '"-5s": durations cannot be negative'],
    ['', 'empty duration; write e.g. "20s", or "0" for off'],
    ['1h 30m', '"1h 30m": no spaces inside a duration (write e.g. "1h30m")'],
    ['fast', '"fast" is not a duration; write e.g. "250ms", "20s", "5m", "2h" or "1h30m"'],
    ['0.5ms', '"0.5ms" is not a whole number of milliseconds'],
    ['600h', '"600h" is too long; the longest duration is 596h31m23.647s'],
  ] as const)('%j is refused', (text, message) => {
    expect(() => parseDuration(text)).toThrow(new RangeError(message));
  });

  it('refuses what is not a string or a number', () => {
    expect(() => parseDuration(true as unknown as string)).toThrow('expected a duration string with a unit, e.g. "20s"');
  });

  it('accepts the longest timer Node can set, and nothing longer', () => {
    expect(parseDuration('596h31m23.647s')).toBe(MAX_DURATION_MS);
    expect(() => parseDuration('596h31m23.648s')).toThrow(RangeError);
  });
});

describe('formatDuration', () => {
  it.each([
    [0, '0'],
    [250, '250ms'],
    [1_000, '1s'],
    [1_500, '1.5s'],
    [1_050, '1.05s'],
    [60_000, '1m'],
    [90_500, '1m30.5s'],
    [5_400_000, '1h30m'],
    [7_200_000, '2h'],
    [MAX_DURATION_MS, '596h31m23.647s'],
  ])('%d ms is %j', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });

  it('reads back through parseDuration', () => {
    for (const ms of [0, 1, 999, 1_000, 1_001, 59_999, 61_234, 3_600_000, 3_661_001, 123_456_789]) {
      expect(parseDuration(formatDuration(ms))).toBe(ms);
    }
  });
});
