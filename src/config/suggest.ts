// "Did you mean" for mistyped keys, enum values and flags: the closest valid word by
// edit distance, or by spelling alone (case, '-' and '_') for usertimeout/user_timeout.

/**
 * Edit distance: insertions, deletions, substitutions and swaps of two neighbours each
 * cost 1 (Levenshtein plus transpositions, so "idel" is one edit from "idle").
 */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = best;
    }
  }
  return rows[a.length]![b.length]!;
}

const spelling = (word: string): string => word.toLowerCase().replace(/[-_\s]/g, '');

/**
 * The candidate `word` most likely stands for, or null when none is close: same
 * spelling ignoring case and separators, else at most about one edit in three letters.
 */
export function closest(word: string, candidates: Iterable<string>): string | null {
  const list = [...candidates];
  const sameSpelling = list.find((candidate) => spelling(candidate) === spelling(word));
  if (sameSpelling !== undefined) return sameSpelling;
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of list) {
    const distance = editDistance(spelling(word), spelling(candidate));
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  const allowed = Math.max(1, Math.floor(Math.max(word.length, 3) / 3));
  return bestDistance <= allowed ? best : null;
}
