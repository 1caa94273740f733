// Where keepalive-proxy's time goes on 64-connection ping-pong: a V8 CPU profile (--cpu-prof,
// self time by function and by origin: our code, Node core, GC, native) and, when perf works,
// the kernel / node binary / JIT split of the proxy core from `perf record -e cpu-clock`.

import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { runCommand, stopProcess, cpuSeconds, sleep } from './procs.mjs';
import { targetById } from './targets.mjs';
import { ORIGIN_PORTS } from './origins.mjs';

const PROFILE_PORT = 31000;

function where(callFrame) {
  const url = callFrame.url || '';
  if (!url) return callFrame.functionName.startsWith('(') ? callFrame.functionName : 'native (C++ bindings)';
  if (url.includes('/dist/')) return 'keepalive-proxy (dist/)';
  if (url.startsWith('node:')) return 'Node core (node:*)';
  if (url.includes('/node_modules/')) return 'node_modules';
  return 'other JS';
}

function shortUrl(url) {
  if (!url) return '';
  if (url.startsWith('node:')) return url;
  const i = url.indexOf('/dist/');
  return i >= 0 ? url.slice(i + 1) : path.basename(url);
}

/** Self time by function and by origin from a .cpuprofile, in % of non-idle samples. */
export function summarizeCpuProfile(file, top = 15) {
  const prof = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const counts = new Map();
  for (const id of prof.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
  const byFunction = new Map();
  const byOrigin = new Map();
  let total = 0;
  for (const [id, count] of counts) {
    const cf = byId.get(id).callFrame;
    if (cf.functionName === '(idle)') continue;
    total += count;
    const key = cf.url ? `${cf.functionName || '(anonymous)'} ${shortUrl(cf.url)}:${cf.lineNumber + 1}` : cf.functionName || '(native)';
    byFunction.set(key, (byFunction.get(key) ?? 0) + count);
    const origin = where(cf);
    byOrigin.set(origin, (byOrigin.get(origin) ?? 0) + count);
  }
  const pct = (m) => [...m].sort((a, b) => b[1] - a[1]).map(([k, c]) => ({ name: k, pct: (c / total) * 100 }));
  return { samples: total, functions: pct(byFunction).slice(0, top), origins: pct(byOrigin) };
}

function parsePerfReport(text, limit) {
  const rows = [];
  for (const line of text.split('\n')) {
    const m = /^\s+([\d.]+)%\s+(.+?)\s*$/.exec(line);
    if (m) rows.push({ name: m[2].replace(/\s{2,}/g, ' '), pct: Number(m[1]) });
  }
  return rows.slice(0, limit);
}

/** `perf report` percentages by binary and by symbol, or null. */
async function perfSplit(perf, pid, seconds, dir) {
  const data = path.join(dir, 'perf.data');
  const rec = await runCommand('perf-record', perf, ['record', '-e', 'cpu-clock', '-F', '4000', '-p', String(pid), '-o', data, '--', 'sleep', String(seconds)], {
    timeoutMs: seconds * 1000 + 20_000,
  });
  if (rec.code !== 0) return null;
  const report = (sort) => runCommand('perf-report', perf, ['report', '-i', data, '--stdio', '--sort', sort, '--percent-limit', '0.5'], { timeoutMs: 60_000 });
  const byDso = parsePerfReport((await report('dso')).stdout, 10).map((r) => ({ ...r, name: r.name.includes('JIT') ? `${r.name} (V8 JIT code)` : r.name }));
  const bySymbol = parsePerfReport((await report('dso,sym')).stdout, 15);
  return byDso.length ? { byDso, bySymbol } : null;
}

/**
 * Runs 64-connection ping-pong through keepalive-proxy started with --cpu-prof (and under perf
 * when available); returns { cpu: {user, system, ops}, profile, perf } or { skipped }.
 */
export async function profilePingPong({ seconds, env, log }) {
  const dir = path.join(env.resultsDir, 'profile');
  mkdirSync(dir, { recursive: true });
  let handle;
  try {
    handle = await targetById('keepalive-proxy').start({
      kind: 'tcp', protocol: 'tcp', port: PROFILE_PORT, upstreamPort: ORIGIN_PORTS.echo, workDir: env.workDir, tools: env.tools,
      workloadId: 'profile', nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`],
    });
  } catch (err) {
    return { skipped: err.message };
  }
  const pid = handle.proc.pid;
  const pingpong = (s) =>
    runCommand('tcpload', env.bin.tcpload, ['pingpong', '127.0.0.1', String(PROFILE_PORT), '64', '64', String(s)], { timeoutMs: s * 1000 + 40_000 });
  const startedAt = Date.now();
  let cpu = null;
  let perf = null;
  try {
    await pingpong(0.5);
    const c0 = cpuSeconds(pid);
    const r = await pingpong(seconds);
    const c1 = cpuSeconds(pid);
    const ops = JSON.parse(r.stdout.trim().split('\n').pop()).ops;
    cpu = { user: c1.user - c0.user, system: c1.system - c0.system, ops };
    if (env.tools.perf) {
      const [split] = await Promise.all([perfSplit(env.tools.perf, pid, seconds, dir), sleep(200).then(() => pingpong(seconds))]);
      perf = split;
    }
  } finally {
    await stopProcess(handle.proc, { signal: 'SIGTERM', graceMs: 10_000 });
  }
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => path.join(dir, f))
    .filter((f) => statSync(f).mtimeMs >= startedAt);
  const profile = files.length ? summarizeCpuProfile(files.sort().pop()) : null;
  if (!profile) log('  no .cpuprofile written (the proxy did not exit cleanly on SIGTERM?)');
  return { cpu, profile, perf: perf?.byDso ?? null, perfSymbols: perf?.bySymbol ?? null, profileFile: files[0] ?? null };
}
