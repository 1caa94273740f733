import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inNs, ownTempDir, readSysctlInNs, sysctlInNs } from './netns.js';

// A stateful firewall in the middle namespace, the kind that forgets an idle flow:
// forward policy drop, established/related accepted, a new flow only from a bare SYN,
// and an established-state conntrack timeout of a few seconds instead of the kernel's 5 days.
//
// The short timeout is an nftables `ct timeout` object attached to each flow by its SYN rule:
// it lives in this table of this namespace only, so it never changes the host's conntrack.
// nf_conntrack_tcp_loose=0 stops conntrack from re-creating ("picking up") an expired flow
// from a mid-stream ACK, so an expired flow stays dead as on a real firewall; that sysctl is
// per network namespace (checked at install: the root namespace's value must not move).

const TABLE = 'filter';
const BLACKHOLE_COMMENT = 'kp-blackhole';

export interface FirewallOptions {
  /** Conntrack timeout of an established TCP flow, in seconds. */
  readonly establishedTimeoutSeconds: number;
}

export interface Firewall {
  readonly ns: string;
  /** On: a rule at the head of the forward chain drops every forwarded packet. Off: removed. */
  blackhole(on: boolean): Promise<void>;
  /** Packets the blackhole rule has dropped since it was last switched on. */
  blackholeDrops(): Promise<number>;
  /** The conntrack table of the firewall (`conntrack -L` lines, TCP only). */
  flows(): Promise<string[]>;
  /** The ruleset as nft prints it (for failure messages). */
  ruleset(): Promise<string>;
}

export async function installFirewall(ns: string, options: FirewallOptions): Promise<Firewall> {
  const timeout = Math.max(1, Math.round(options.establishedTimeoutSeconds));
  const ruleset = `
table inet ${TABLE} {
  ct timeout tcp_short {
    protocol tcp
    l3proto ip
    policy = { established: ${timeout} }
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    tcp flags & (fin|syn|rst|ack) == syn ct state new ct timeout set "tcp_short" accept
  }
}
`;
  await nftScript(ns, ruleset);

  const hostLoose = await readSysctlInNs(null, 'net.netfilter.nf_conntrack_tcp_loose');
  await sysctlInNs(ns, 'net.netfilter.nf_conntrack_tcp_loose', 0);
  const hostLooseAfter = await readSysctlInNs(null, 'net.netfilter.nf_conntrack_tcp_loose');
  if (hostLooseAfter !== hostLoose) {
    writeFileSync('/proc/sys/net/netfilter/nf_conntrack_tcp_loose', hostLoose);
    throw new Error('nf_conntrack_tcp_loose is not per network namespace on this kernel; restored the host value');
  }

  let blackholeHandle: number | null = null;
  return {
    ns,
    async blackhole(on) {
      if (on && blackholeHandle === null) {
        const { stdout } = await inNs(ns, 'nft', [
          '--echo',
          '--handle',
          'insert',
          'rule',
          'inet',
          TABLE,
          'forward',
          'counter',
          'drop',
          'comment',
          `"${BLACKHOLE_COMMENT}"`,
        ]);
        const handle = /# handle (\d+)/.exec(stdout);
        if (!handle) throw new Error(`nft did not echo the blackhole rule's handle: ${stdout}`);
        blackholeHandle = Number(handle[1]);
      } else if (!on && blackholeHandle !== null) {
        await inNs(ns, 'nft', ['delete', 'rule', 'inet', TABLE, 'forward', 'handle', String(blackholeHandle)]);
        blackholeHandle = null;
      }
    },
    async blackholeDrops() {
      if (blackholeHandle === null) return 0;
      const { stdout } = await inNs(ns, 'nft', ['--handle', 'list', 'chain', 'inet', TABLE, 'forward']);
      const line = stdout.split('\n').find((text) => text.includes(`# handle ${blackholeHandle}`));
      const packets = line ? /packets (\d+)/.exec(line) : null;
      return packets ? Number(packets[1]) : 0;
    },
    async flows() {
      // conntrack prints its summary line on stderr; an empty table is not an error.
      const { stdout } = await inNs(ns, 'conntrack', ['-L', '-p', 'tcp']);
      return stdout.split('\n').filter(Boolean);
    },
    async ruleset() {
      return (await inNs(ns, 'nft', ['list', 'ruleset'])).stdout;
    },
  };
}

async function nftScript(ns: string, script: string): Promise<void> {
  const file = join(ownTempDir('kp-lab-nft-'), 'ruleset.nft');
  writeFileSync(file, script);
  await inNs(ns, 'nft', ['-f', file]);
}
