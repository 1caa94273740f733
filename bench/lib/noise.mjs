// How busy the machine was with work that is not ours: other processes on the same cores make
// every figure noisy, so the report states it instead of hiding it.

import { readFileSync } from 'node:fs';
import { CORES, sleep } from './procs.mjs';

/** Busy (user + nice + system) and total ticks of all CPUs, from /proc/stat. */
function machineTicks() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  return { busy: user + nice + system, steal, total: user + nice + system + idle + iowait + irq + softirq + steal };
}

/** CPU ticks used by this process and every descendant it has reaped. */
function ownTicks() {
  const f = readFileSync('/proc/self/stat', 'utf8');
  const s = f.slice(f.lastIndexOf(')') + 2).split(' ').map(Number);
  return s[11] + s[12] + s[13] + s[14];
}

/** Share of all CPUs busy over `ms` while the suite itself sits idle (0..1). */
export async function sampleBackground(ms = 1000) {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  return b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0;
}

/**
 * Starts a whole-run tally; finish() (call it once every child has been stopped and reaped)
 * returns { other, steal }: the average share of all CPUs used by processes that are not the
 * suite's, and the share the hypervisor gave to other guests while we wanted to run (steal).
 */
export function startTally() {
  const m0 = machineTicks();
  const o0 = ownTicks();
  return {
    finish() {
      const m1 = machineTicks();
      const own = ownTicks() - o0;
      const total = m1.total - m0.total;
      if (total <= 0) return { other: 0, steal: 0 };
      return { other: Math.max(0, (m1.busy - m0.busy - own) / total), steal: (m1.steal - m0.steal) / total };
    },
  };
}

export const describeShare = (share) => `${(share * 100).toFixed(0)}% of ${CORES} CPUs (${(share * CORES).toFixed(2)} cores)`;
