// The soak (`npm run bench -- --soak [--soak-minutes N]`): the built proxy runs four routes under
// load at once for N minutes (10 by default) while its RSS and open fds are sampled every 30 s:
//   http    Connection: close clients (soak-clients.mjs http-close) -> a Node HTTP origin
//   churn   tcp route, tcpload churn: connect, 64 B round trip, close -> the echo origin
//   egress  http-forward route, CONNECT tunnels echoing 64 B (soak-clients.mjs connect) -> the echo origin
//   idle    tcp route with a custom heartbeat every 1 s, IDLE_CONNS idle connections (tcpload hold)
// The verdict compares the last third of the samples after warm-up with the first third; see verdict().

import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startProcess, stopProcess, rssKiB, sleep, PROXY_CORE, LOAD_CORE } from './procs.mjs';
import { startEcho, ORIGIN_PORTS } from './origins.mjs';
import { KP_MAIN, REPO_DIR, kpNodeFlags, waitReady } from './targets.mjs';
import { counterSum, jsonLine } from './footprint.mjs';

const SOAK_CLIENTS = path.join(path.dirname(path.dirname(new URL(import.meta.url).pathname)), 'soak-clients.mjs');
const PORTS = { http: 31001, churn: 31002, egress: 31003, idle: 31004, admin: 31900, httpOrigin: 31500 };
const SAMPLE_EVERY_S = 30;
const IDLE_CONNS = 1000;
const CONCURRENCY = { http: 4, churn: 4, connect: 4 };
/** Growth that counts: the last third's mean above the first third's by this fraction AND this much. */
const GROWTH = { rss: { fraction: 0.1, absolute: 8 * 1024 }, fds: { fraction: 0.1, absolute: 32 } };
/** Two samples per third at least: one sample per third is just wherever the GC sawtooth happened to be. */
const MIN_STEADY_SAMPLES = 6;

function soakYaml() {
  const echo = `127.0.0.1:${ORIGIN_PORTS.echo}`;
  return `admin:
  listen: 127.0.0.1:${PORTS.admin}
log:
  level: warn
shutdownTimeout: 2s
routes:
  - name: http
    listen: 127.0.0.1:${PORTS.http}
    protocol: http
    upstream: http://127.0.0.1:${PORTS.httpOrigin}
    pool: { maxSockets: 16 }
  - name: churn
    listen: 127.0.0.1:${PORTS.churn}
    upstream: ${echo}
  - name: egress
    listen: 127.0.0.1:${PORTS.egress}
    protocol: http-forward
    allow: ["${echo}"]
  - name: idle
    listen: 127.0.0.1:${PORTS.idle}
    upstream: ${echo}
    heartbeat: { every: 1s, timeout: 2s, send: "PING\\r\\n", expect: "PING\\r\\n" }
`;
}

function fdCount(pid) {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

const mean = (values) => values.reduce((sum, v) => sum + v, 0) / values.length;

/**
 * "flat" or "growing" for one series: samples before `warmupS` are dropped (pools fill, V8 tiers up),
 * the rest are cut in thirds, and the series grows when the last third's mean exceeds the first
 * third's by more than both the fraction and the absolute amount in GROWTH. Fewer than
 * MIN_STEADY_SAMPLES after warm-up (runs under about 4 minutes) give "too short".
 */
export function verdict(samples, key, warmupS, growth) {
  const steady = samples.filter((s) => s.t >= warmupS && s[key] !== null).map((s) => s[key]);
  if (steady.length < MIN_STEADY_SAMPLES) return { verdict: 'too short', first: null, last: null };
  const third = Math.floor(steady.length / 3);
  const first = mean(steady.slice(0, third));
  const last = mean(steady.slice(-third));
  const grows = last - first > growth.absolute && last > first * (1 + growth.fraction);
  return { verdict: grows ? 'growing' : 'flat', first, last };
}

/** Runs the soak; returns the report as Markdown (also written to bench/results/soak.md). */
export async function runSoak({ minutes, env, log }) {
  const seconds = Math.round(minutes * 60);
  const warmupS = Math.min(120, Math.round(seconds / 5));
  log(`\n== soak: ${minutes} min, samples every ${SAMPLE_EVERY_S} s, warm-up ${warmupS} s`);
  await startEcho(env.bin.echo);
  const origin = startProcess('soak-http-origin', process.execPath, [SOAK_CLIENTS, 'origin', String(PORTS.httpOrigin)], { core: LOAD_CORE });
  const configFile = path.join(env.workDir, 'soak.yaml');
  writeFileSync(configFile, soakYaml());
  const proxy = startProcess('keepalive-proxy', process.execPath, [...kpNodeFlags(), KP_MAIN, '--config', configFile], { core: PROXY_CORE, cwd: REPO_DIR });
  if (!(await waitReady(PORTS.admin, proxy, 15_000))) throw new Error(`keepalive-proxy did not become ready: ${proxy.output().slice(-500)}`);
  if (origin.exitCode !== null) throw new Error(`soak origin exited: ${origin.output().slice(-500)}`);

  const hold = startProcess('tcpload-hold', env.bin.tcpload, ['hold', '127.0.0.1', String(PORTS.idle), String(IDLE_CONNS), '64'], { core: LOAD_CORE, stdin: 'pipe' });
  const held = await jsonLine(hold, (o) => o.mode === 'hold' && 'established' in o, 60_000);
  if (!held || held.established === 0) throw new Error(`could not open the idle connections: ${hold.output().slice(-300)}`);
  log(`  idle route: ${held.established} connections held (heartbeat every 1 s)`);

  const secondsArg = String(seconds);
  const loads = [
    startProcess('soak-http-close', process.execPath, [SOAK_CLIENTS, 'http-close', String(PORTS.http), String(CONCURRENCY.http), secondsArg], { core: LOAD_CORE }),
    startProcess('soak-connect', process.execPath, [SOAK_CLIENTS, 'connect', String(PORTS.egress), `127.0.0.1:${ORIGIN_PORTS.echo}`, String(CONCURRENCY.connect), secondsArg], { core: LOAD_CORE }),
    startProcess('tcpload-churn', env.bin.tcpload, ['churn', '127.0.0.1', String(PORTS.churn), String(CONCURRENCY.churn), '64', secondsArg], { core: LOAD_CORE }),
  ];

  const samples = [];
  const began = Date.now();
  const sample = async () => {
    const t = Math.round((Date.now() - began) / 1000);
    const row = {
      t,
      rssKiB: rssKiB(proxy.pid),
      fds: fdCount(proxy.pid),
      accepted: await counterSum(PORTS.admin, 'keepalive_proxy_connections_accepted_total'),
      heartbeats: await counterSum(PORTS.admin, 'keepalive_proxy_heartbeats_total'),
    };
    samples.push(row);
    log(`  t=${String(t).padStart(4)} s  RSS ${(row.rssKiB / 1024).toFixed(1)} MiB  fds ${row.fds}  accepted ${row.accepted}  heartbeats ${row.heartbeats}`);
  };
  // Bounded: one sample per period until the load's own deadline, plus the final one.
  await sample();
  for (let i = 0; i < Math.ceil(seconds / SAMPLE_EVERY_S) && Date.now() - began < seconds * 1000; i++) {
    await sleep(Math.min(SAMPLE_EVERY_S * 1000, Math.max(0, began + seconds * 1000 - Date.now())));
    if (proxy.exitCode !== null) throw new Error(`keepalive-proxy exited during the soak (${proxy.exitCode}): ${proxy.output().slice(-500)}`);
    await sample();
  }

  const results = [];
  for (const load of loads) {
    await Promise.race([load.exited, sleep(30_000)]);
    const line = load.stdout.trim().split('\n').pop() ?? '';
    let parsed = null;
    try {
      parsed = JSON.parse(line);
    } catch {
      // reported as missing below
    }
    results.push({ name: load.name, result: parsed, exit: load.exitCode });
  }
  hold.child.stdin.write('status\n');
  const idleStatus = await jsonLine(hold, (o) => o.mode === 'hold' && 'open' in o, 10_000);
  hold.child.stdin.end();
  await Promise.race([hold.exited, sleep(5000)]);
  for (const proc of [hold, ...loads, proxy, origin]) await stopProcess(proc);

  const rss = verdict(samples, 'rssKiB', warmupS, GROWTH.rss);
  const fds = verdict(samples, 'fds', warmupS, GROWTH.fds);
  const md = soakReport({ minutes, warmupS, samples, rss, fds, results, idleStatus, held });
  writeFileSync(path.join(env.resultsDir, 'soak.md'), md);
  return md;
}

function describeLoad({ name, result, exit }) {
  if (!result) return `- ${name}: no result (exit ${exit})`;
  if (result.mode === 'churn') return `- ${name}: ${result.ops} connections (${result.rate.toFixed(0)}/s), ${result.errors} errors`;
  return `- ${name}: ${result.ok} ok, ${result.errors} errors${result.firstError ? ` (first: ${result.firstError})` : ''}`;
}

function soakReport({ minutes, warmupS, samples, rss, fds, results, idleStatus, held }) {
  const mib = (kib) => (kib / 1024).toFixed(1);
  const rows = samples.map((s) => `| ${s.t} | ${mib(s.rssKiB)} | ${s.fds} | ${s.accepted ?? '?'} | ${s.heartbeats ?? '?'} |`);
  const line = (what, v, scale) =>
    v.first === null ? `- ${what}: too short (fewer than ${MIN_STEADY_SAMPLES} samples after warm-up)` : `- ${what}: **${v.verdict}** (first third ${scale(v.first)}, last third ${scale(v.last)})`;
  return [
    `## Soak: ${minutes} min`,
    '',
    `Proxy: dist/main.js with the bin's node flags, ${process.version}. Load, all at once: HTTP Connection: close clients ` +
      `(${CONCURRENCY.http} loops), TCP churn (${CONCURRENCY.churn} parallel), CONNECT tunnels (${CONCURRENCY.connect} loops), ` +
      `${held.established} idle connections heartbeating every 1 s.`,
    '',
    '| t (s) | RSS (MiB) | open fds | accepted (all routes) | heartbeats |',
    '|---:|---:|---:|---:|---:|',
    ...rows,
    '',
    `Verdict (samples before ${warmupS} s dropped; the last third's mean against the first third's; growing means more than ` +
      `+${GROWTH.rss.fraction * 100}% and +${GROWTH.rss.absolute / 1024} MiB for RSS, +${GROWTH.fds.fraction * 100}% and +${GROWTH.fds.absolute} for fds):`,
    line('RSS', rss, (v) => `${mib(v)} MiB`),
    line('open fds', fds, (v) => v.toFixed(0)),
    '',
    'Load:',
    ...results.map(describeLoad),
    `- idle: ${idleStatus ? `${idleStatus.open} of ${held.established} still open, ${idleStatus.unexpected_bytes} unexpected bytes reached a client, ${idleStatus.closed_by_peer} closed by the proxy` : 'no status'}`,
    '',
  ].join('\n');
}
