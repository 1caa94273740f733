// Medians and ranges over the rounds of a workload; missing and non-finite values are ignored.

const finite = (xs) => xs.filter((x) => x !== null && x !== undefined && Number.isFinite(x));

export function median(values) {
  const s = finite(values).sort((a, b) => a - b);
  if (s.length === 0) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** { median, min, max, n } of the finite values, or null when there are none. */
export function summarize(values) {
  const v = finite(values);
  if (v.length === 0) return null;
  return { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length };
}
