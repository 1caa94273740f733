// "Did you mean" for mistyped keys, enum values and flags: the closest valid word by
// edit distance, or by spelling alone (case, '-' and '_') for usertimeout/user_timeout.

/**
 * Edit distance: insertions, deletions, substitutions and swaps of two neighbours each
 * cost 1 (Levenshtein plus transpositions, so "idel" is one edit from "idle").
 */
export function editDistance(a: string, b: string): number {
  // Three rolling rows (a swap looks two rows back) in one reused scratch array: this runs
  // for every unknown key against the known keys, and a table per call was most of its cost.
  const width = b.length + 1;
  if (scratch.length < 3 * width) scratch = new Uint32Array(3 * width);
  let older = 0;
  let previous = width;
  let current = 2 * width;
  for (let j = 0; j < width; j++) scratch[previous + j] = j;
  for (let i = 1; i <= a.length; i++) {
    scratch[current] = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(scratch[previous + j]! + 1, scratch[current + j - 1]! + 1, scratch[previous + j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, scratch[older + j - 2]! + 1);
      scratch[current + j] = best;
    }
    [older, previous, current] = [previous, current, older];
  }
  return scratch[previous + b.length]!;
}
let scratch = new Uint32Array(96);

const spelling = (word: string): string => word.toLowerCase().replace(/[-_\s]/g, '');

/**
 * The candidate `word` most likely stands for, or null when none is close: same
 * spelling ignoring case and separators, else at most about one edit in three letters.
 */
export function closest(word: string, candidates: Iterable<string>): string | null {
  const list = [...candidates];
  const spelt = spelling(word);
  const sameSpelling = list.find((candidate) => spelling(candidate) === spelt);
  if (sameSpelling !== undefined) return sameSpelling;
  const allowed = Math.max(1, Math.floor(Math.max(word.length, 3) / 3));
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of list) {
    const other = spelling(candidate);
    // The distance is at least the difference in length: skip the table (|word| x |candidate|
    // cells) when that alone is too far, so a hostile 4 MiB key costs one comparison here.
    if (Math.abs(spelt.length - other.length) > allowed) continue;
    const distance = editDistance(spelt, other);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return bestDistance <= allowed ? best : null;
}
