import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { disownPid, inNs, ownPid, ownTempDir } from './netns.js';
import { sleep } from '../helpers/wait.js';

// A payload-counting L4 load balancer: HAProxy in mode tcp, in its own namespace. It terminates
// TCP on both sides, so kernel keepalive probes never reach its timers: only bytes of payload
// reset `timeout client` / `timeout server`. An idle session is cut after those timeouts
// whatever the TCP layer does; that is what application heartbeats are for (issue 3).

export const HAPROXY = '/usr/sbin/haproxy';

export interface LoadBalancerOptions {
  readonly listenHost: string;
  readonly listenPort: number;
  readonly upstreamHost: string;
  readonly upstreamPort: number;
  /** HAProxy `timeout client` and `timeout server` (inactivity, payload only), ms. */
  readonly idleTimeoutMs: number;
  readonly connectTimeoutMs?: number;
}

export interface LoadBalancer {
  readonly pid: number;
  readonly host: string;
  readonly port: number;
  /** HAProxy's own output (warnings, alerts). */
  output(): string;
  /** SIGTERM by PID, then SIGKILL if it has not exited within the bound. */
  stop(): Promise<void>;
}

export async function startLoadBalancer(ns: string, options: LoadBalancerOptions): Promise<LoadBalancer> {
  const config = `
global
  maxconn 256

defaults
  mode tcp
  timeout connect ${options.connectTimeoutMs ?? 2_000}ms
  timeout client ${options.idleTimeoutMs}ms
  timeout server ${options.idleTimeoutMs}ms

frontend lab_in
  bind ${options.listenHost}:${options.listenPort}
  default_backend lab_servers

backend lab_servers
  server upstream ${options.upstreamHost}:${options.upstreamPort}
`;
  const file = join(ownTempDir('kp-lab-haproxy-'), 'haproxy.cfg');
  writeFileSync(file, config);
  // -db: stay in the foreground, no master/worker fork, so the PID we hold is HAProxy itself.
  const child = spawn('ip', ['netns', 'exec', ns, HAPROXY, '-f', file, '-db'], { stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error('could not start haproxy');
  const pid = child.pid;
  ownPid(pid);
  let output = '';
  const collect = (text: string): void => {
    if (output.length < 64_000) output += text;
  };
  child.stdout.setEncoding('utf8').on('data', collect);
  child.stderr.setEncoding('utf8').on('data', collect);
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  child.on('exit', () => disownPid(pid));

  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3_000);
    await exited;
    clearTimeout(timer);
  };

  // Ready when its listener shows up in the namespace (bounded).
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited with ${child.exitCode}: ${output}`);
    const { stdout } = await inNs(ns, 'ss', ['-Hltn', `sport = :${options.listenPort}`]);
    if (stdout.trim()) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`haproxy did not listen on ${options.listenHost}:${options.listenPort} within 10 s: ${output}`);
    }
    await sleep(50);
  }

  return { pid, host: options.listenHost, port: options.listenPort, output: () => output, stop };
}
