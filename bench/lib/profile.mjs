// Where keepalive-proxy's time goes on 64-connection ping-pong: a V8 CPU profile (--cpu-prof,
// self time by function and by origin: our code, Node core, GC, native) and, when perf works,
// the kernel / node binary / JIT split of the proxy core from `perf record -e cpu-clock`, and
// the system calls and context switches per round trip of keepalive-proxy, HAProxy and the
// naive Node proxy (`perf stat` tracepoint counters: counting only, no tracing overhead).

import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { runCommand, stopProcess, cpuSeconds, sleep } from './procs.mjs';
import { targetById } from './targets.mjs';
import { ORIGIN_PORTS } from './origins.mjs';

const PROFILE_PORT = 31000;
const SYSCALL_PORT = 31100;
const SYSCALLS = ['read', 'write', 'readv', 'writev', 'recvfrom', 'sendto', 'recvmsg', 'sendmsg', 'epoll_wait', 'epoll_pwait', 'epoll_pwait2', 'epoll_ctl', 'splice', 'futex'];

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
  rmSync(dir, { recursive: true, force: true }); // only this run's profile stays next to latest.md
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
  const pingpong = (s) => runPingPong(env, PROFILE_PORT, s);
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

function runPingPong(env, port, seconds) {
  return runCommand('tcpload', env.bin.tcpload, ['pingpong', '127.0.0.1', String(port), '64', '64', String(seconds)], { timeoutMs: seconds * 1000 + 40_000 });
}

/** The tracepoints this kernel offers among the ones we count. */
async function availableSyscallEvents(perf) {
  const list = await runCommand('perf-list', perf, ['list', 'tracepoint'], { timeoutMs: 30_000 });
  const have = new Set(list.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0]));
  return SYSCALLS.filter((name) => have.has(`syscalls:sys_enter_${name}`));
}

/**
 * For each target: 64-connection ping-pong while `perf stat` counts the proxy's system calls
 * and context switches; returns [{ id, label, perRoundTrip: { total, read, ..., cs }, cpuUs }].
 */
export async function syscallsPerRoundTrip({ targetIds, seconds, env, log }) {
  if (!env.tools.perf) return { skipped: 'perf not installed' };
  const names = await availableSyscallEvents(env.tools.perf);
  const events = ['raw_syscalls:sys_enter', 'context-switches', 'page-faults', ...names.map((n) => `syscalls:sys_enter_${n}`)];
  const out = [];
  let port = SYSCALL_PORT;
  for (const id of targetIds) {
    const target = targetById(id);
    let handle;
    try {
      handle = await target.start({ kind: 'tcp', protocol: 'tcp', port: port++, upstreamPort: ORIGIN_PORTS.echo, workDir: env.workDir, tools: env.tools, workloadId: 'syscalls' });
    } catch (err) {
      out.push({ id, label: target.label, skipped: err.message });
      continue;
    }
    try {
      await runPingPong(env, handle.port, 0.5);
      const c0 = cpuSeconds(handle.proc.pid);
      const [stat, run] = await Promise.all([
        runCommand('perf-stat', env.tools.perf, ['stat', '-x', ',', '-e', events.join(','), '-p', String(handle.proc.pid), '--', 'sleep', String(seconds + 0.3)], { timeoutMs: seconds * 1000 + 30_000 }),
        sleep(100).then(() => runPingPong(env, handle.port, seconds)),
      ]);
      const c1 = cpuSeconds(handle.proc.pid);
      const ops = JSON.parse(run.stdout.trim().split('\n').pop()).ops;
      const counts = {};
      for (const line of stat.stderr.split('\n')) {
        const f = line.split(',');
        if (f.length < 3 || !/^\d+$/.test(f[0])) continue;
        const event = f[2];
        const key = { 'raw_syscalls:sys_enter': 'total', 'context-switches': 'cs', 'page-faults': 'faults' }[event] ?? event.replace('syscalls:sys_enter_', '');
        counts[key] = Number(f[0]) / ops;
      }
      const cpuUs = { user: ((c1.user - c0.user) / ops) * 1e6, system: ((c1.system - c0.system) / ops) * 1e6 };
      out.push({ id, label: target.label, perRoundTrip: counts, cpuUs, ops });
      log(`  ${id}: ${counts.total?.toFixed(2) ?? '?'} syscalls and ${counts.cs?.toFixed(2) ?? '?'} context switches per round trip, ${(cpuUs.user + cpuUs.system).toFixed(1)} us CPU`);
    } finally {
      await stopProcess(handle.proc);
    }
  }
  return { rows: out, syscalls: names };
}
