// The benchmark runs in a private network namespace: only its own loopback, a wide ephemeral
// port range and TIME_WAIT reuse, so connection churn measures the proxy and not the host's
// port range, and no traffic can leave the machine or meet other services.

import { spawnSync } from 'node:child_process';
import { writeFileSync, readFileSync } from 'node:fs';

const MARK = 'KAP_BENCH_IN_NETNS';

const SYSCTLS = {
  'net/ipv4/ip_local_port_range': '1024 65535',
  'net/ipv4/tcp_tw_reuse': '1',
  'net/core/somaxconn': '65535',
  'net/ipv4/tcp_max_syn_backlog': '65535',
  'net/ipv4/tcp_max_tw_buckets': '2000000',
  // The suite's own listening ports: with the ephemeral range this wide, an outgoing connection
  // could otherwise take one of them just before a proxy binds it.
  'net/ipv4/ip_local_reserved_ports': '27000-32999',
};

export function insideNamespace() {
  return process.env[MARK] === '1';
}

/**
 * Re-runs this script inside `unshare -n`, with the open-files soft limit raised to the hard
 * limit, pinned to the load core and (as root, unless `nice` is 0) at a raised CPU priority so
 * unrelated processes on the machine disturb the figures less; returns the child's exit status.
 */
export function reexecInNamespace(script, args, loadCore, nice) {
  const pin = loadCore === null ? [] : ['taskset', '-c', String(loadCore)];
  const priority = nice && process.getuid?.() === 0 ? ['nice', '-n', String(nice)] : [];
  const unshareArgs = process.getuid?.() === 0 ? ['-n'] : ['-r', '-n'];
  const result = spawnSync(
    'unshare',
    [...unshareArgs, '--', 'sh', '-c', 'ulimit -n "$(ulimit -Hn)"; exec "$@"', 'sh', ...priority, ...pin, process.execPath, script, ...args],
    { stdio: 'inherit', env: { ...process.env, [MARK]: '1' } },
  );
  if (result.error) {
    console.error(`bench: cannot start a private network namespace (${result.error.message}); unshare (util-linux) and root are needed`);
    return 1;
  }
  return result.status ?? 1;
}

/** Brings lo up and applies the sysctls; returns the values read back, for the report. */
export function configureNamespace() {
  const up = spawnSync('ip', ['link', 'set', 'lo', 'up'], { encoding: 'utf8' });
  if (up.status !== 0) throw new Error(`ip link set lo up failed: ${up.stderr || up.error?.message}`);
  const applied = {};
  for (const [key, value] of Object.entries(SYSCTLS)) {
    try {
      writeFileSync(`/proc/sys/${key}`, value);
    } catch {
      // Reported below as whatever the namespace kept.
    }
    try {
      applied[key.replaceAll('/', '.')] = readFileSync(`/proc/sys/${key}`, 'utf8').trim().replace(/\s+/g, ' ');
    } catch {
      applied[key.replaceAll('/', '.')] = '?';
    }
  }
  return applied;
}
