// The timed workloads. Each run(port, seconds, env) drives one load tool against one target and
// resolves { series: { [label]: { value, p50, p99, avg, errors } }, ops, opUnit } where `value`
// is in the workload's unit, latencies are in microseconds and `ops` is the work done (used for
// the proxy's CPU cost per operation). `state` is a per-target object kept across its runs.
// A run that fails throws; the suite records the error.

import path from 'node:path';
import { runCommand, sleep } from './procs.mjs';
import { ORIGIN_PORTS } from './origins.mjs';

const ALL_TCP = ['direct', 'keepalive-proxy', 'haproxy', 'nginx', 'socat', 'node-naive'];
const PROTOCOL = ['direct', 'keepalive-proxy', 'haproxy', 'nginx', 'node-naive'];
const HTTP = ['direct', 'keepalive-proxy', 'haproxy', 'nginx', 'node-naive', 'node-undici'];
/** Where more connections than one core can serve arrive: the workloads a `workers: 2` run is measured on. */
const SCALING_TCP = [...ALL_TCP, 'keepalive-proxy-2w'];

async function mustRun(name, cmd, args, timeoutMs) {
  const r = await runCommand(name, cmd, args, { timeoutMs });
  if (r.code !== 0 || r.timedOut) {
    const why = r.timedOut ? 'timed out' : `exit ${r.code}`;
    throw new Error(`${name} ${why}: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ').slice(0, 300)}`);
  }
  return r.stdout;
}

// ---------------------------------------------------------------- tcpload (compiled, bench/src/tcpload.c)

function tcploadRun(mode, conns) {
  return async (port, seconds, env) => {
    const out = await mustRun('tcpload', env.bin.tcpload, [mode, '127.0.0.1', String(port), String(conns), '64', String(seconds)], seconds * 1000 + 40_000);
    const r = JSON.parse(out.trim().split('\n').pop());
    if (r.ops === 0) throw new Error(`tcpload ${mode}: no round trip completed in ${seconds} s (${r.errors} errors): a stall`);
    return { series: { main: { value: r.rate, p50: r.p50_us, p99: r.p99_us, p999: r.p999_us, errors: r.errors } }, ops: r.ops, opUnit: mode === 'churn' ? 'conn' : 'req' };
  };
}

// ---------------------------------------------------------------- iperf3

async function iperfRun(port, seconds, env) {
  const secs = Math.max(1, Math.round(seconds));
  // iperf3 -s serves one test at a time and notices the end of the previous one a moment after
  // its client does (later still through a proxy): retry "busy" a bounded number of times.
  for (let attempt = 1; ; attempt++) {
    const r = await runCommand('iperf3', env.tools.iperf3, ['-c', '127.0.0.1', '-p', String(port), '-t', String(secs), '-J'], { timeoutMs: secs * 1000 + 30_000 });
    let report = null;
    try {
      report = JSON.parse(r.stdout);
    } catch {
      // no JSON: reported below
    }
    if (report?.error?.includes('busy') && attempt < 20) {
      await sleep(250);
      continue;
    }
    if (!report || r.timedOut) throw new Error(`iperf3 ${r.timedOut ? 'timed out' : `exit ${r.code}`}: ${(r.stderr || r.stdout).slice(0, 300)}`);
    if (report.error) throw new Error(`iperf3: ${report.error}`);
    const received = report.end.sum_received;
    return { series: { main: { value: received.bits_per_second / 8 / 1e6 } }, ops: received.bytes / 1e6, opUnit: 'MB' };
  }
}

// ---------------------------------------------------------------- wrk

function toMicros(text) {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * { us: 1, ms: 1000, s: 1e6 }[m[2]];
}

function wrkRun(connectionClose) {
  return async (port, seconds, env) => {
    const secs = Math.max(1, Math.round(seconds));
    const before = await env.httpAccepts();
    const args = ['-t1', '-c64', `-d${secs}s`, '--latency', ...(connectionClose ? ['-H', 'Connection: close'] : []), `http://127.0.0.1:${port}/`];
    const out = await mustRun('wrk', env.tools.wrk, args, secs * 1000 + 30_000);
    const after = await env.httpAccepts();
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
    const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0);
    const pct = (p) => toMicros(new RegExp(`\\s${p}%\\s+(\\S+)`).exec(out)?.[1] ?? '');
    const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
    const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
    const errors = non2xx + (socket ? Number(socket[1]) + Number(socket[3]) + Number(socket[4]) : 0);
    if (!rps) throw new Error(`wrk: no result: ${out.slice(-300)}`);
    if (non2xx > requests / 2) throw new Error(`wrk: ${non2xx} of ${requests} responses were not 2xx`);
    // The status fetch itself is one accepted connection.
    const upstreamConns = before !== null && after !== null ? Math.max(0, after - before - 1) : null;
    return { series: { main: { value: rps, p50: pct(50), p99: pct(99), errors, upstreamConns } }, ops: requests, opUnit: 'req' };
  };
}

// ---------------------------------------------------------------- redis-benchmark

function redisRun(pipeline) {
  // redis-benchmark has no duration flag: each target's first (warm-up) run measures its rate,
  // and later runs ask for as many requests as fill `seconds` for SET and GET together.
  return async (port, seconds, env, state) => {
    const guess = (pipeline ? 300_000 : 30_000) * seconds;
    const n = Math.round(Math.min(5_000_000, Math.max(2000, state.requestsPerSecondPair ? state.requestsPerSecondPair * seconds : guess)));
    const args = ['-h', '127.0.0.1', '-p', String(port), '-c', '50', '-n', String(n), '-t', 'set,get', '--csv', ...(pipeline ? ['-P', '16'] : [])];
    const out = await mustRun('redis-benchmark', env.tools['redis-benchmark'], args, 120_000);
    const series = {};
    for (const line of out.split('\n')) {
      const f = line.split(',').map((s) => s.replaceAll('"', ''));
      if (f[0] !== 'SET' && f[0] !== 'GET') continue;
      series[f[0]] = { value: Number(f[1]), p50: Number(f[4]) * 1000, p99: Number(f[6]) * 1000 };
    }
    if (!series.SET || !series.GET) throw new Error(`redis-benchmark: unexpected output ${out.slice(0, 200)}`);
    // n requests of each take n/SET + n/GET seconds; this is the n per second of that pair.
    state.requestsPerSecondPair = 1 / (1 / series.SET.value + 1 / series.GET.value);
    return { series, ops: 2 * n, opUnit: 'cmd' };
  };
}

// ---------------------------------------------------------------- pgbench

async function pgbenchRun(port, seconds, env) {
  const secs = Math.max(1, Math.round(seconds));
  const pgbench = path.join(env.tools.postgresBin, 'pgbench');
  const args = ['-S', '-n', '-c', '16', '-j', '1', '-T', String(secs), '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', 'postgres'];
  const out = await mustRun('pgbench', pgbench, args, secs * 1000 + 30_000);
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out)?.[1]);
  const avgMs = Number(/latency average = ([\d.]+) ms/.exec(out)?.[1]);
  const done = Number(/number of transactions actually processed: (\d+)/.exec(out)?.[1] ?? 0);
  const failed = Number(/number of failed transactions: (\d+)/.exec(out)?.[1] ?? 0);
  if (!tps) throw new Error(`pgbench: no result: ${out.slice(-300)}`);
  return { series: { main: { value: tps, avg: avgMs * 1000, errors: failed } }, ops: done, opUnit: 'txn' };
}

/**
 * Workloads in report order. `kind` picks the target's route kind, `origin` the server behind it,
 * `protocol` the keepalive-proxy route protocol, `series` the row label for each result series.
 */
export const WORKLOADS = [
  {
    id: 'tcp-pp1', kind: 'tcp', origin: 'echo', protocol: 'tcp', unit: 'req/s', targets: ALL_TCP,
    series: { main: 'TCP ping-pong 64 B, 1 conn' }, run: tcploadRun('pingpong', 1),
  },
  {
    id: 'tcp-pp64', kind: 'tcp', origin: 'echo', protocol: 'tcp', unit: 'req/s', targets: SCALING_TCP,
    series: { main: 'TCP ping-pong 64 B, 64 conns' }, run: tcploadRun('pingpong', 64),
  },
  {
    id: 'tcp-bulk', kind: 'tcp', origin: 'iperf3', protocol: 'tcp', unit: 'MB/s', targets: ALL_TCP,
    series: { main: 'TCP bulk, 1 conn (iperf3)' }, run: iperfRun, integerSeconds: true,
  },
  {
    id: 'tcp-churn', kind: 'tcp', origin: 'echo', protocol: 'tcp', unit: 'conn/s', targets: SCALING_TCP,
    series: { main: 'TCP churn: connect, 64 B round trip, close (32 parallel)' }, run: tcploadRun('churn', 32),
  },
  {
    id: 'redis', kind: 'tcp', origin: 'redis', protocol: 'redis', unit: 'req/s', targets: PROTOCOL,
    series: { SET: 'redis-benchmark SET -c 50', GET: 'redis-benchmark GET -c 50' }, run: redisRun(false), calibrates: true,
  },
  {
    id: 'redis-p16', kind: 'tcp', origin: 'redis', protocol: 'redis', unit: 'req/s', targets: PROTOCOL,
    series: { SET: 'redis-benchmark SET -c 50 -P 16', GET: 'redis-benchmark GET -c 50 -P 16' }, run: redisRun(true), calibrates: true,
  },
  {
    id: 'pgbench', kind: 'tcp', origin: 'pg', protocol: 'postgres', unit: 'txn/s', targets: PROTOCOL,
    series: { main: 'pgbench -S -c 16 (select-only)' }, run: pgbenchRun, integerSeconds: true,
  },
  {
    id: 'http-ka', kind: 'http', origin: 'http', protocol: 'http', unit: 'req/s', targets: HTTP,
    series: { main: 'HTTP wrk -c 64, keep-alive clients' }, run: wrkRun(false), integerSeconds: true,
  },
  {
    id: 'http-close', kind: 'http', origin: 'http', protocol: 'http', unit: 'req/s', targets: HTTP,
    series: { main: 'HTTP wrk -c 64, Connection: close clients' }, run: wrkRun(true), integerSeconds: true,
  },
];

export const UPSTREAM_PORT = {
  echo: ORIGIN_PORTS.echo,
  iperf3: ORIGIN_PORTS.iperf3,
  redis: ORIGIN_PORTS.redis,
  pg: ORIGIN_PORTS.pg,
  http: ORIGIN_PORTS.http,
};
