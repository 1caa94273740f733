import type { LookupAddress } from 'node:dns';
import net from 'node:net';

// The order in which a dial tries the addresses a name resolved to, as Node's own
// net.connect does (lookupAndConnectMultiple in lib/net.js, checked on Node 20, 24 and
// 26): each address once, the two families alternating, starting with the family of the
// first answer, each attempt but the last given autoSelectFamilyAttemptTimeout before the
// next starts (RFC 8305's "Happy Eyeballs", sequential). With the process's
// autoSelectFamily off (--no-network-family-autoselection), only the first answer.

export function addressesToAttempt(addresses: readonly LookupAddress[], autoSelectFamily = net.getDefaultAutoSelectFamily()): LookupAddress[] {
  const usable = addresses.filter((entry) => net.isIP(entry.address) === entry.family);
  if (!autoSelectFamily) return usable.slice(0, 1);
  const first = usable[0]?.family ?? 4;
  const byFamily: [LookupAddress[], LookupAddress[]] = [[], []];
  const seen = new Set<string>();
  for (const entry of usable) {
    if (seen.has(entry.address)) continue;
    seen.add(entry.address);
    byFamily[entry.family === first ? 0 : 1].push(entry);
  }
  const ordered: LookupAddress[] = [];
  for (let i = 0; i < Math.max(byFamily[0].length, byFamily[1].length); i++) {
    if (byFamily[0][i]) ordered.push(byFamily[0][i]!);
    if (byFamily[1][i]) ordered.push(byFamily[1][i]!);
  }
  return ordered;
}

/** How long an attempt that is not the last may take before the next address is tried. */
export function attemptTimeoutMs(): number {
  return net.getDefaultAutoSelectFamilyAttemptTimeout();
}
