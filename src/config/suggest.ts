// "Did you mean" for mistyped keys, enum values and flags: the closest valid word by
// edit distance, or by spelling alone (case, '-' and '_') for usertimeout/user_timeout.

/** Levenshtein distance: insertions, deletions and substitutions each cost 1. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
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
