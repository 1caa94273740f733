// Footprint: start-up time, RSS at start, RSS per idle proxied connection (8,000 held through
// each proxy), and keepalive-proxy's CPU share while 8,000 idle connections heartbeat every 1 s.

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { startProcess, stopProcess, cpuSeconds, rssKiB, httpGet, sleep, PROXY_CORE, LOAD_CORE } from './procs.mjs';
import { targetById, KP_MAIN, REPO_DIR, waitReady, kpNodeFlags } from './targets.mjs';
import { ORIGIN_PORTS } from './origins.mjs';
import { median } from './stats.mjs';

export const IDLE_CONNS = 8000;
const SHIPPED_CONFIG = path.join(REPO_DIR, 'config', 'keepalive-proxy.yaml');
let nextPort = 30000;

/** Waits for a stdout line of `proc` that parses as JSON and satisfies `test`, bounded. */
export async function jsonLine(proc, test, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < 100_000 && Date.now() < deadline; i++) {
    for (const line of proc.stdout.split('\n').reverse()) {
      if (!line.startsWith('{')) continue;
      try {
        const obj = JSON.parse(line);
        if (test(obj)) return obj;
      } catch {
        // a line still being written
      }
    }
    if (proc.exitCode !== null) return null;
    await sleep(50);
  }
  return null;
}

/** Sum of a Prometheus counter across its label sets, from the admin /metrics, or null. */
export async function counterSum(adminPort, name) {
  const r = await httpGet(adminPort, '/metrics', { timeoutMs: 3000 });
  if (!r || r.status !== 200) return null;
  let sum = 0;
  let seen = false;
  for (const line of r.body.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
      seen = true;
    }
  }
  return seen ? sum : null;
}

/** Start-up to ready (/readyz 200) and RSS at start with the shipped config, median of `times`. */
export async function measureShippedStartup({ times, log }) {
  if (!existsSync(KP_MAIN)) return { skipped: 'dist/main.js not built' };
  if (!existsSync(SHIPPED_CONFIG)) return { skipped: 'config/keepalive-proxy.yaml not in the repo yet' };
  let adminPort = 9901;
  try {
    const listen = parseYaml(readFileSync(SHIPPED_CONFIG, 'utf8'))?.admin?.listen;
    if (listen) adminPort = Number(String(listen).slice(String(listen).lastIndexOf(':') + 1));
  } catch {
    // keep the default admin port
  }
  const startMs = [];
  const rss = [];
  for (let i = 0; i < times; i++) {
    const t0 = performance.now();
    const proc = startProcess('keepalive-proxy-shipped', process.execPath, [...kpNodeFlags(), KP_MAIN, '--config', SHIPPED_CONFIG], { core: PROXY_CORE, cwd: REPO_DIR });
    const ready = await waitReady(adminPort, proc, 15_000);
    const elapsed = performance.now() - t0;
    await sleep(500);
    const kib = rssKiB(proc.pid);
    await stopProcess(proc);
    if (!ready) return { skipped: `no /readyz 200 on admin port ${adminPort}: ${proc.output().slice(-300)}` };
    startMs.push(elapsed);
    rss.push(kib);
  }
  log(`  shipped config: ready in ${median(startMs).toFixed(0)} ms, RSS ${(median(rss) / 1024).toFixed(1)} MiB`);
  return { startMs: median(startMs), rssKiB: median(rss), runs: times };
}

/**
 * Starts `targetId` with a TCP route to the echo origin (optional heartbeat), notes start-up time
 * and RSS, holds IDLE_CONNS connections through it, then measures RSS and CPU over `windowS`.
 */
async function holdIdle({ targetId, heartbeat, windowS, settleS, env, log }) {
  const target = targetById(targetId);
  const port = nextPort++;
  const t0 = performance.now();
  let handle;
  try {
    handle = await target.start({
      kind: 'tcp', protocol: 'tcp', port, upstreamPort: ORIGIN_PORTS.echo, workDir: env.workDir, tools: env.tools,
      workloadId: heartbeat ? 'idle-heartbeat' : 'idle', heartbeat,
    });
  } catch (err) {
    return { skipped: err.message };
  }
  const pid = handle.proc.pid;
  if (handle.adminPort) await waitReady(handle.adminPort, handle.proc, 5000);
  const startMs = performance.now() - t0;
  await sleep(500);
  const rssStart = rssKiB(pid);
  const hold = startProcess('tcpload-hold', env.bin.tcpload, ['hold', '127.0.0.1', String(port), String(IDLE_CONNS), '64'], { core: LOAD_CORE, stdin: 'pipe' });
  try {
    const setup = await jsonLine(hold, (o) => o.mode === 'hold' && 'established' in o, 120_000);
    if (!setup || setup.established === 0) return { skipped: `could not open idle connections: ${hold.output().slice(-300)}` };
    await sleep(settleS * 1000);
    const rssHeld = rssKiB(pid);
    const hb0 = heartbeat && handle.adminPort ? await counterSum(handle.adminPort, 'keepalive_proxy_heartbeats_total') : null;
    const cpu0 = cpuSeconds(pid);
    const w0 = performance.now();
    await sleep(windowS * 1000);
    const cpu1 = cpuSeconds(pid);
    const wall = (performance.now() - w0) / 1000;
    const hb1 = heartbeat && handle.adminPort ? await counterSum(handle.adminPort, 'keepalive_proxy_heartbeats_total') : null;
    hold.child.stdin.write('status\n');
    const status = await jsonLine(hold, (o) => o.mode === 'hold' && 'open' in o, 10_000);
    const result = {
      startMs,
      rssStartKiB: rssStart,
      rssHeldKiB: rssHeld,
      established: setup.established,
      setupErrors: setup.errors,
      perConnKiB: (rssHeld - rssStart) / setup.established,
      cpuShare: cpu0 && cpu1 ? (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall : null,
      windowS: wall,
      heartbeatsPerS: hb0 !== null && hb1 !== null ? (hb1 - hb0) / wall : null,
      stillOpen: status?.open ?? null,
      unexpectedBytes: status?.unexpected_bytes ?? null,
      closedByPeer: status?.closed_by_peer ?? null,
      note: handle.note ?? null,
    };
    log(
      `  ${targetId}${heartbeat ? ' +heartbeat 1s' : ''}: ${result.established} held, RSS ${(rssStart / 1024).toFixed(1)} -> ${(rssHeld / 1024).toFixed(1)} MiB ` +
        `(${result.perConnKiB.toFixed(2)} KiB/conn), CPU ${(result.cpuShare * 100).toFixed(1)}% of a core` +
        (result.heartbeatsPerS !== null ? `, ${result.heartbeatsPerS.toFixed(0)} heartbeats/s` : '') +
        `, open ${result.stillOpen}, unexpected bytes ${result.unexpectedBytes}`,
    );
    return result;
  } finally {
    hold.child.stdin.end();
    await Promise.race([hold.exited, sleep(5000)]);
    await stopProcess(hold);
    await stopProcess(handle.proc);
    await sleep(300);
  }
}

/** RSS per idle connection for each target, then keepalive-proxy with 1 s heartbeats. */
export async function measureIdle({ targetIds, windowS, heartbeatWindowS, env, log }) {
  const idle = {};
  for (const id of ['keepalive-proxy', 'haproxy', 'nginx', 'node-naive'].filter((t) => targetIds.includes(t))) {
    idle[id] = await holdIdle({ targetId: id, windowS, settleS: 1, env, log });
    if (idle[id].skipped) log(`  ${id}: skipped (${idle[id].skipped})`);
  }
  let heartbeat = null;
  if (targetIds.includes('keepalive-proxy')) {
    heartbeat = await holdIdle({
      targetId: 'keepalive-proxy',
      heartbeat: '{ every: 1s, timeout: 500ms, send: "PING\\r\\n", expect: "PING\\r\\n" }',
      windowS: heartbeatWindowS,
      settleS: 2.5,
      env,
      log,
    });
    if (heartbeat.skipped) log(`  keepalive-proxy with heartbeats: skipped (${heartbeat.skipped})`);
  }
  return { idle, heartbeat };
}
