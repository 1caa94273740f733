import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { sleep } from '../helpers/wait.js';
import type { Agent } from './agent.js';
import { disownPid, ownPid } from './netns.js';

// keepalive-proxy run as a sidecar inside a lab namespace (`ip netns exec NS node dist/main.js`).
// Its admin listener is on the namespace's own loopback, so /readyz and /metrics are fetched
// by an agent running in the same namespace: no test traffic leaves the namespaces.

export interface ProxyInNs {
  readonly proxy: RunningProxy;
  metrics(): Promise<Map<string, number>>;
  /** One sample, e.g. eviction('lab', 'keepalive_timeout'). */
  eviction(route: string, reason: string): Promise<number>;
  connections(): Promise<Array<Record<string, unknown>>>;
  /** The proxy's log lines (pino JSON) as text, for failure messages and the report. */
  logText(last?: number): string;
  /** The log lines that mention `text` anywhere (e.g. a close reason). */
  logLinesWith(text: string): string[];
  stop(): Promise<void>;
}

export async function startProxyInNs(ns: string, yaml: string, admin: Agent): Promise<ProxyInNs> {
  const proxy = await startProxy({ yaml, wrap: ['ip', 'netns', 'exec', ns], waitReady: false });
  ownPid(proxy.pid); // `ip netns exec` execs node in place: this PID is the proxy's
  void proxy.exited.then(() => disownPid(proxy.pid));
  const logText = (last = 40): string =>
    proxy.logs
      .slice(-last)
      .map((line) => JSON.stringify(line))
      .join('\n');

  const deadline = Date.now() + 15_000;
  for (;;) {
    if (proxy.child.exitCode !== null) {
      throw new Error(`proxy exited with ${proxy.child.exitCode} before /readyz\n${logText()}`);
    }
    const ready = await admin.fetch(`${proxy.adminUrl}/readyz`, 1_000).catch(() => null);
    if (ready?.status === 200) break;
    if (Date.now() > deadline) {
      await proxy.stop('SIGKILL');
      throw new Error(`proxy /readyz not 200 within 15 s in ${ns}\n${logText()}`);
    }
    await sleep(100);
  }

  const metrics = async (): Promise<Map<string, number>> => {
    const reply = await admin.fetch(`${proxy.adminUrl}/metrics`);
    if (reply.status !== 200) throw new Error(`/metrics answered ${reply.status}`);
    return parseMetrics(reply.body);
  };
  return {
    proxy,
    metrics,
    eviction: async (route, reason) =>
      sample(await metrics(), 'keepalive_proxy_evictions_total', { route, reason }),
    connections: async () => JSON.parse((await admin.fetch(`${proxy.adminUrl}/connections`)).body) as Array<Record<string, unknown>>,
    logText,
    logLinesWith: (text) => proxy.logs.map((line) => JSON.stringify(line)).filter((line) => line.includes(text)),
    stop: async () => {
      await proxy.stop('SIGTERM', 5_000);
      // startProxy leaves its temp config directory behind; this lab removes its own.
      if (proxy.configPath) rmSync(dirname(proxy.configPath), { recursive: true, force: true });
    },
  };
}

/**
 * For afterEach: when the test failed, prints the proxy's last log lines and the output of
 * each named middlebox or client, so a failure in CI explains itself.
 */
export async function reportFailure(
  context: { task: { result?: { state?: string } } },
  proxy: ProxyInNs | null,
  outputs: Record<string, () => string | Promise<string>> = {},
): Promise<void> {
  if (context.task.result?.state !== 'fail') return;
  if (proxy) console.log(`proxy log (last lines):\n${proxy.logText()}`);
  for (const [name, read] of Object.entries(outputs)) {
    console.log(`${name}:\n${await Promise.resolve().then(read).catch(String)}`);
  }
}
