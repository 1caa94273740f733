// Durations in the config are strings with a unit: "250ms", "20s", "5m", "2h", and
// compounds from the largest unit to the smallest ("1h30m", "1m30s500ms"). A decimal
// part is accepted in any component ("1.5s", "0.5h") as long as the total is a whole
// number of milliseconds. "0" alone (or the YAML number 0) means off. Any other bare
// number is refused: `20` could mean seconds or milliseconds, and guessing wrong
// silently is worse than asking.
//
// Public API:
//   parseDuration(value: string | number): number   milliseconds; throws RangeError with a message fit for a config error
//   formatDuration(ms: number): string              the shortest string parseDuration reads back ("1h30m", "1.5s", "0")
//   MAX_DURATION_MS                                   the longest duration accepted (Node's largest timer)

/** setTimeout clamps anything longer than 2^31-1 ms to 1 ms; refuse it instead. */
export const MAX_DURATION_MS = 2_147_483_647;

const UNIT_MS = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1 } as const;
type Unit = keyof typeof UNIT_MS;
const UNIT_ORDER: readonly Unit[] = ['h', 'm', 's', 'ms'];

// One component: digits, an optional decimal part, then letters (checked against UNIT_MS).
const COMPONENT = /(\d+)(?:\.(\d+))?([a-zA-Zµ]*)/y;

/** Milliseconds from a duration string ("20s"); 0 for "0" or the number 0. Throws RangeError. */
export function parseDuration(value: string | number): number {
  if (typeof value === 'number') {
    if (value === 0) return 0;
    const example = Number.isInteger(value) && value > 0 ? `${value}s` : '20s';
    throw new RangeError(`durations are strings with a unit, e.g. "${example}"`);
  }
  if (typeof value !== 'string') {
    throw new RangeError('expected a duration string with a unit, e.g. "20s"');
  }
  const text = value.trim();
  if (text === '') throw new RangeError('empty duration; write e.g. "20s", or "0" for off');
  if (text.startsWith('-')) throw new RangeError(`"${text}": durations cannot be negative`);
  if (text === '0') return 0;
  if (/\s/.test(text)) throw new RangeError(`"${text}": no spaces inside a duration (write e.g. "1h30m")`);

  let total = 0;
  let lastUnitIndex = -1;
  let offset = 0;
  while (offset < text.length) {
    COMPONENT.lastIndex = offset;
    const match = COMPONENT.exec(text);
    if (!match || match[0] === '') {
      throw new RangeError(`"${text}" is not a duration; write e.g. "250ms", "20s", "5m", "2h" or "1h30m"`);
    }
    const [whole, integer, fraction = '', unitText = ''] = match as unknown as [string, string, string?, string?];
    if (unitText === '') {
      const hint = offset === 0 ? `; write "${integer}s" or "${integer}ms"` : '';
      throw new RangeError(`"${text}": missing unit after ${integer}${hint}`);
    }
    if (!(unitText in UNIT_MS)) {
      throw new RangeError(`"${text}": unknown unit "${unitText}"; use ms, s, m or h`);
    }
    const unit = unitText as Unit;
    const unitIndex = UNIT_ORDER.indexOf(unit);
    if (unitIndex <= lastUnitIndex) {
      throw new RangeError(`"${text}": write units once each, from the largest to the smallest (e.g. "1h30m")`);
    }
    lastUnitIndex = unitIndex;
    total += componentMs(text, integer, fraction, UNIT_MS[unit]);
    offset += whole.length;
  }
  if (total > MAX_DURATION_MS) {
    throw new RangeError(`"${text}" is too long; the longest duration is ${formatDuration(MAX_DURATION_MS)}`);
  }
  return total;
}

/** integer.fraction x unitMs in exact integer arithmetic (1.1s is 1100 ms, not 1100.0000000000002). */
function componentMs(text: string, integer: string, fraction: string, unitMs: number): number {
  if (integer.length > 12 || fraction.length > 9) throw new RangeError(`"${text}" is too long`);
  const scale = 10 ** fraction.length;
  const fractionMs = Number(fraction || '0') * unitMs;
  if (fractionMs % scale !== 0) {
    throw new RangeError(`"${text}" is not a whole number of milliseconds`);
  }
  return Number(integer) * unitMs + fractionMs / scale;
}

/** The shortest string parseDuration reads back: 0 -> "0", 250 -> "250ms", 1500 -> "1.5s", 5400000 -> "1h30m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return `${ms}ms`;
  let rest = Math.round(ms);
  if (rest === 0) return '0';
  if (rest < 1_000) return `${rest}ms`;
  let text = '';
  const hours = Math.floor(rest / UNIT_MS.h);
  rest -= hours * UNIT_MS.h;
  const minutes = Math.floor(rest / UNIT_MS.m);
  rest -= minutes * UNIT_MS.m;
  if (hours > 0) text += `${hours}h`;
  if (minutes > 0) text += `${minutes}m`;
  if (rest > 0) {
    const seconds = Math.floor(rest / 1_000);
    const millis = rest % 1_000;
    text += millis === 0 ? `${seconds}s` : `${seconds}.${String(millis).padStart(3, '0').replace(/0+$/, '')}s`;
  }
  return text;
}
