import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { describe, expect, it } from 'vitest';
import { EVICTION_REASONS, reasonForError, type EvictionReason } from '../../src/errors.js';

// The eviction vocabulary lives in one table (src/errors.ts); README's "Eviction reasons"
// table documents it. Both directions are checked: a word added to the code and not to
// the README fails, and so does a README row no code can produce.

const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** Rows of the README table whose header is `| reason | applies to | ...`: reason -> applies. */
function readmeReasons(): Map<string, string[]> {
  const lines = README.split('\n');
  const header = lines.findIndex((line) => /^\| reason \| applies to \|/.test(line));
  expect(header, 'README has the eviction reasons table').toBeGreaterThan(-1);
  const rows = new Map<string, string[]>();
  for (const line of lines.slice(header + 2)) {
    if (!line.startsWith('|')) break;
    const cells = line.split('|').map((cell) => cell.trim());
    const reason = /^`([a-z_]+)`$/.exec(cells[1]!)?.[1];
    expect(reason, `README row "${line}" names a reason in backticks`).toBeDefined();
    expect(rows.has(reason!), `README lists ${reason} once`).toBe(false);
    rows.set(reason!, cells[2]!.split(',').map((scope) => scope.trim()));
  }
  return rows;
}

describe('eviction vocabulary', () => {
  it('README lists every reason of src/errors.ts, with where it applies, and nothing else', () => {
    const documented = readmeReasons();
    const words = Object.keys(EVICTION_REASONS).sort();
    expect([...documented.keys()].sort()).toEqual(words);
    for (const [reason, word] of Object.entries(EVICTION_REASONS)) {
      expect(documented.get(reason), reason).toEqual([...word.applies]);
      expect(word.meaning.length, `${reason} has a meaning`).toBeGreaterThan(10);
    }
  });

  it('maps every errno name to a word of the vocabulary, the peer-gone verdicts to their own', () => {
    const { errno } = constants;
    for (const code of Object.keys(errno)) {
      const reason: EvictionReason = reasonForError(Object.assign(new Error(code), { code }));
      expect(Object.hasOwn(EVICTION_REASONS, reason), `${code} -> ${reason}`).toBe(true);
    }
    const reasonOf = (code: string): EvictionReason => reasonForError(Object.assign(new Error(code), { code }));
    expect(['ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH'].map(reasonOf)).toEqual(['keepalive_timeout', 'keepalive_timeout', 'keepalive_timeout']);
    expect(['ECONNRESET', 'EPIPE', 'ECONNABORTED'].map(reasonOf)).toEqual(['peer_reset', 'peer_reset', 'peer_reset']);
    expect(reasonForError(new Error('no code'))).toBe('error');
  });
});
