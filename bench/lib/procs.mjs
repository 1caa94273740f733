// Every process the benchmark starts goes through here, so each one is known by PID, pinned to
// its core, and stopped by PID on the way out (also on Ctrl-C). Nothing is ever killed by name.

import { spawn, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';

const TAIL_BYTES = 16 * 1024; // what a long-running process keeps of its output (for error notes)
const RUN_OUTPUT_BYTES = 8 * 1024 * 1024; // what a command run to completion keeps (perf list, iperf3 -J)
const live = new Map(); // pid -> { name, child }

// os.cpus(), not availableParallelism(): the latter honours our own affinity (pinned to core 0).
export const CORES = os.cpus().length;
/** Core of the proxy under test, and core of everything else (load, origins, this script). */
export const PROXY_CORE = CORES >= 2 ? 1 : null;
export const LOAD_CORE = CORES >= 2 ? 0 : null;

let clockTicks = 100;
try {
  clockTicks = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
} catch {
  // getconf missing: 100 Hz is the Linux default.
}
export const CLK_TCK = clockTicks;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function pinned(core, cmd, args) {
  return core === null || core === undefined ? [cmd, args] : ['taskset', ['-c', String(core), cmd, ...args]];
}

function keepTail(prev, chunk, limit) {
  const next = prev + chunk.toString();
  return next.length > limit ? next.slice(-limit) : next;
}

/**
 * Starts a long-running process (taskset execs, so the PID is the program's own).
 * Returns { pid, name, child, output(), exited (promise of exit code) }.
 */
export function startProcess(name, cmd, args, { core = LOAD_CORE, env, cwd, stdin = 'ignore', keepBytes = TAIL_BYTES } = {}) {
  const [file, argv] = pinned(core, cmd, args);
  const child = spawn(file, argv, { env: env ?? process.env, cwd, stdio: [stdin, 'pipe', 'pipe'] });
  const proc = { name, child, pid: child.pid, stdout: '', stderr: '', exitCode: null };
  child.stdout.on('data', (c) => (proc.stdout = keepTail(proc.stdout, c, keepBytes)));
  child.stderr.on('data', (c) => (proc.stderr = keepTail(proc.stderr, c, keepBytes)));
  proc.exited = new Promise((resolve) => {
    child.on('error', (err) => {
      proc.stderr += `\nspawn error: ${err.message}`;
      proc.exitCode = -1;
      live.delete(child.pid);
      resolve(-1);
    });
    child.on('exit', (code, signal) => {
      proc.exitCode = code ?? signal;
      live.delete(child.pid);
      resolve(proc.exitCode);
    });
  });
  proc.output = () => `${proc.stdout}\n${proc.stderr}`.trim();
  if (child.pid) live.set(child.pid, proc);
  return proc;
}

/** Stops one process by PID: `signal`, then SIGKILL after `graceMs`. */
export async function stopProcess(proc, { signal = 'SIGTERM', graceMs = 5000 } = {}) {
  if (!proc || proc.exitCode !== null || !proc.pid) return;
  try {
    process.kill(proc.pid, signal);
  } catch {
    return;
  }
  const timedOut = await Promise.race([proc.exited.then(() => false), sleep(graceMs).then(() => true)]);
  if (timedOut) {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await Promise.race([proc.exited, sleep(2000)]);
  }
}

/** Stops everything still running, newest first (proxies before the origins they talk to). */
export async function stopAll() {
  const procs = [...live.values()].reverse();
  for (const proc of procs) await stopProcess(proc, { graceMs: 3000 });
}

/**
 * Runs a command to completion with a hard time limit; resolves { code, stdout, stderr, timedOut }.
 * `input` is written to stdin.
 */
export async function runCommand(name, cmd, args, { core = LOAD_CORE, timeoutMs = 60_000, env, cwd, input } = {}) {
  const proc = startProcess(name, cmd, args, { core, env, cwd, stdin: input === undefined ? 'ignore' : 'pipe', keepBytes: RUN_OUTPUT_BYTES });
  if (input !== undefined) proc.child.stdin.end(input);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    stopProcess(proc, { signal: 'SIGKILL', graceMs: 1000 });
  }, timeoutMs);
  const code = await proc.exited;
  clearTimeout(timer);
  return { code, stdout: proc.stdout, stderr: proc.stderr, timedOut };
}

/** Resolves true once host:port accepts a connection, false after `timeoutMs` or if `proc` exits. */
export async function waitForPort(port, { host = '127.0.0.1', timeoutMs = 10_000, proc } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; attempt < 2000 && Date.now() < deadline; attempt++) {
    if (proc && proc.exitCode !== null) return false;
    const ok = await new Promise((resolve) => {
      const socket = net.connect({ host, port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return true;
    await sleep(20);
  }
  return false;
}

/** GET http://127.0.0.1:port/path with a short timeout; resolves { status, body } or null. */
export function httpGet(port, path, { timeoutMs = 2000 } = {}) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(null);
    }, timeoutMs);
    socket.once('connect', () => socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`));
    socket.on('data', (c) => (data += c.toString()));
    socket.once('error', () => {
      clearTimeout(timer);
      resolve(null);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(data);
      if (!m) return resolve(null);
      resolve({ status: Number(m[1]), body: data.slice(data.indexOf('\r\n\r\n') + 4) });
    });
  });
}

function readStat(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the ")" that closes the command name: [0] is field 3 (state), so utime
    // (field 14) is [11], stime [12], cutime [13], cstime [14], ppid (field 4) is [1].
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]), cutime: Number(f[13]), cstime: Number(f[14]) };
  } catch {
    return null;
  }
}

function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * CPU seconds (user, system) used by a process, the children it has reaped and the children
 * still alive (socat forks one per connection). Threads are included by /proc/PID/stat itself.
 */
export function cpuSeconds(pid) {
  const self = readStat(pid);
  if (!self) return null;
  let user = self.utime + self.cutime;
  let system = self.stime + self.cstime;
  for (const child of childPids(pid)) {
    const s = readStat(child);
    if (!s) continue;
    user += s.utime + s.cutime;
    system += s.stime + s.cstime;
  }
  return { user: user / CLK_TCK, system: system / CLK_TCK };
}

/**
 * Seconds one CPU spent busy (user, nice, system, irq, softirq) per /proc/stat. Loopback packet
 * processing runs as softirq and is not charged to any process, so this is the complete cost of
 * whatever runs on that core.
 */
export function coreBusySeconds(core) {
  if (core === null) return null;
  const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith(`cpu${core} `));
  if (!line) return null;
  const [user, nice, system, , , irq, softirq] = line.trim().split(/\s+/).slice(1).map(Number);
  return { busy: (user + nice + system + irq + softirq) / CLK_TCK, softirq: softirq / CLK_TCK };
}

/** Resident set size in KiB (VmRSS) of a process plus its live children, or null. */
export function rssKiB(pid) {
  const read = (p) => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, 'utf8'));
      return m ? Number(m[1]) : 0;
    } catch {
      return null;
    }
  };
  const own = read(pid);
  if (own === null) return null;
  return childPids(pid).reduce((sum, child) => sum + (read(child) ?? 0), own);
}
