#!/usr/bin/env node
// The benchmark suite: `npm run bench` (full, under 15 min) or `npm run bench -- --quick` (~3 min).
// Re-runs itself in a private network namespace, pins the proxy under test to core 1 and
// everything else to core 0, starts the origins, runs every workload through every target and
// writes bench/results/latest.md (+ latest.json). See BENCHMARKS.md for what each number means.
//
// Options: --quick | --rounds N | --seconds S | --only id,id | --targets id,id | --no-profile |
//          --profile | --no-footprint | --no-nice | --help
//          --soak [--soak-minutes N]: instead, the soak (bench/lib/soak.mjs), 10 min by default

import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { insideNamespace, reexecInNamespace, configureNamespace } from './lib/netns.mjs';
import { stopAll, LOAD_CORE, PROXY_CORE, CORES } from './lib/procs.mjs';
import { findTools, compile } from './lib/tools.mjs';
import { startEcho, startIperf, startRedis, startPostgres, startHttpOrigin, httpOriginAccepts } from './lib/origins.mjs';
import { TARGETS, KP_MAIN, REPO_DIR } from './lib/targets.mjs';
import { WORKLOADS } from './lib/workloads.mjs';
import { runSuite, aggregate } from './lib/suite.mjs';
import { measureShippedStartup, measureIdle } from './lib/footprint.mjs';
import { profilePingPong, syscallsPerRoundTrip } from './lib/profile.mjs';
import { sampleBackground, startTally, describeShare } from './lib/noise.mjs';
import { runSoak } from './lib/soak.mjs';
import { machineSection, throughputTable, footprintTable, heartbeatSection, targetsTable, profileSection } from './lib/report.mjs';

const BENCH_DIR = path.dirname(new URL(import.meta.url).pathname);
const SCRIPT = path.join(BENCH_DIR, 'run.mjs');
const RESULTS_DIR = path.join(BENCH_DIR, 'results');
const BUILD_DIR = path.join(BENCH_DIR, 'build');

function parseArgs(argv) {
  const opts = { soak: false, soakMinutes: 10, quick: false, rounds: null, seconds: null, only: null, targets: null, profile: null, footprint: true, nice: -10 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === '--quick') opts.quick = true;
    else if (a === '--soak') opts.soak = true;
    else if (a === '--soak-minutes') opts.soakMinutes = Number(next());
    else if (a === '--rounds') opts.rounds = Number(next());
    else if (a === '--seconds') opts.seconds = Number(next());
    else if (a === '--only') opts.only = next().split(',');
    else if (a === '--targets') opts.targets = next().split(',');
    else if (a === '--profile') opts.profile = true;
    else if (a === '--no-profile') opts.profile = false;
    else if (a === '--no-footprint') opts.footprint = false;
    else if (a === '--no-nice') opts.nice = 0;
    else if (a === '--help' || a === '-h') {
      console.log(readFileSync(SCRIPT, 'utf8').split('\n').slice(1, 10).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
      console.log(`\nworkloads: ${WORKLOADS.map((w) => w.id).join(', ')}, idle (footprint)\ntargets: ${TARGETS.map((t) => t.id).join(', ')}`);
      process.exit(0);
    } else {
      console.error(`bench: unknown option ${a} (try --help)`);
      process.exit(2);
    }
  }
  if (opts.soak && !(opts.soakMinutes > 0 && opts.soakMinutes <= 60)) {
    console.error('bench: --soak-minutes takes a number of minutes from 0 to 60');
    process.exit(2);
  }
  const mode = opts.quick ? { rounds: 3, seconds: 1, warmup: 0.3, idleWindow: 1, hbWindow: 4 } : { rounds: 5, seconds: 2, warmup: 0.5, idleWindow: 3, hbWindow: 10 };
  return {
    ...opts,
    mode: opts.quick ? 'quick' : 'full',
    rounds: opts.rounds ?? mode.rounds,
    seconds: opts.seconds ?? mode.seconds,
    warmup: mode.warmup,
    idleWindow: mode.idleWindow,
    hbWindow: mode.hbWindow,
    profile: opts.profile ?? !opts.quick,
  };
}

function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  return {
    nproc: CORES,
    cpuModel: /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1]?.trim() ?? 'unknown',
    kernel: os.release(),
    memGiB: (os.totalmem() / 2 ** 30).toFixed(0),
  };
}

/** Builds dist/ once when it is missing (a fresh clone before `npm install` ran `prepare`). */
function ensureDist(log) {
  if (existsSync(KP_MAIN)) return;
  log('dist/main.js is missing: running npm run build');
  const r = spawnSync('npm', ['run', 'build'], { cwd: REPO_DIR, stdio: ['ignore', 'ignore', 'inherit'], timeout: 300_000 });
  if (r.status !== 0 || !existsSync(KP_MAIN)) log('build failed: keepalive-proxy will be skipped');
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!insideNamespace()) process.exit(reexecInNamespace(SCRIPT, process.argv.slice(2), LOAD_CORE, opts.nice));

  const began = Date.now();
  const log = (line) => console.log(line);
  const sysctls = configureNamespace();
  const pinning =
    PROXY_CORE === null
      ? `none: only ${CORES} CPU, so proxy and load share it`
      : `the proxy under test runs on core ${PROXY_CORE} (taskset -c ${PROXY_CORE}); load generators, origins and this script run on core ${LOAD_CORE} (taskset -c ${LOAD_CORE})`;
  const niceness = os.getPriority();
  log(`bench: ${opts.soak ? `soak, ${opts.soakMinutes} min` : `${opts.mode} mode, ${opts.rounds} rounds x ${opts.seconds} s`}; private network namespace; ${pinning}; nice ${niceness}`);

  const backgroundAtStart = await sampleBackground(1000);
  log(`bench: other processes keep ${describeShare(backgroundAtStart)} busy before the start`);
  if (backgroundAtStart > 0.1) log('bench: WARNING: the machine is not idle; figures will be noisy (see the "background load" line of the report)');
  const tally = startTally();

  mkdirSync(RESULTS_DIR, { recursive: true });
  const workDir = mkdtempSync(path.join(os.tmpdir(), 'kap-bench-'));
  chmodSync(workDir, 0o755); // PostgreSQL runs as the postgres user and must reach its data dir
  const cleanup = async () => {
    await stopAll();
    rmSync(workDir, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => {
      console.error(`\nbench: ${sig}, stopping everything it started`);
      await cleanup();
      process.exit(130);
    });
  }

  try {
    const bin = { echo: compile(BENCH_DIR, BUILD_DIR, 'echo'), tcpload: compile(BENCH_DIR, BUILD_DIR, 'tcpload') };
    ensureDist(log);
    if (opts.soak) {
      const md = await runSoak({ minutes: opts.soakMinutes, env: { bin, workDir, resultsDir: RESULTS_DIR }, log });
      const backgroundDuring = tally.finish();
      console.log(`\n${md}\nBackground: ${describeShare(backgroundAtStart)} before the start; on average ${describeShare(backgroundDuring.other)} during the soak (CPU time of processes other than the bench's).`);
      console.log(`bench: wrote ${path.relative(REPO_DIR, path.join(RESULTS_DIR, 'soak.md'))}`);
      return;
    }
    const tools = findTools(log);
    const targetIds = opts.targets ?? TARGETS.map((t) => t.id);
    const workloads = WORKLOADS.filter((w) => !opts.only || opts.only.includes(w.id));
    const wantFootprint = opts.footprint && (!opts.only || opts.only.includes('idle'));
    const env = { tools, bin, workDir, resultsDir: RESULTS_DIR, httpAccepts: httpOriginAccepts };

    // Start-up time with the shipped config first, before anything else holds a port.
    const footprint = { shipped: null, idle: {}, heartbeat: null };
    if (wantFootprint && targetIds.includes('keepalive-proxy')) {
      log('\n== start-up with the shipped config');
      footprint.shipped = await measureShippedStartup({ times: 3, log });
      if (footprint.shipped.skipped) log(`  skipped: ${footprint.shipped.skipped}`);
    }

    const origins = new Set(workloads.map((w) => w.origin));
    log('\n== origins (core 0)');
    const skipWorkload = {};
    const need = async (name, ok, why, start) => {
      if (!origins.has(name) && !(name === 'echo' && (wantFootprint || opts.profile))) return;
      if (!ok) {
        skipWorkload[name] = why;
        log(`  ${name}: not available (${why})`);
        return;
      }
      try {
        await start();
        log(`  ${name}: up`);
      } catch (err) {
        skipWorkload[name] = err.message.split('\n')[0];
        log(`  ${name}: failed (${err.message})`);
      }
    };
    await need('echo', true, '', () => startEcho(bin.echo));
    await need('iperf3', tools.iperf3, 'iperf3 not installed', () => startIperf(tools));
    await need('redis', tools['redis-server'] && tools['redis-benchmark'], 'redis-server/redis-benchmark not installed', () => startRedis(tools, workDir));
    await need('pg', tools.postgresBin && tools.setpriv, 'postgresql not installed', () => startPostgres(tools, workDir));
    await need('http', tools.nginx && tools.wrk, 'nginx/wrk not installed', () => startHttpOrigin(tools, workDir));

    const runnable = workloads.filter((w) => !skipWorkload[w.origin]);
    const results = await runSuite({ workloads: runnable, targetIds, rounds: opts.rounds, seconds: opts.seconds, warmupSeconds: opts.warmup, env, log });

    if (wantFootprint) {
      log('\n== footprint: 8,000 idle proxied connections');
      Object.assign(footprint, await measureIdle({ targetIds, windowS: opts.idleWindow, heartbeatWindowS: opts.hbWindow, env, log }));
    }
    let profile = null;
    let syscalls = null;
    if (opts.profile && targetIds.includes('keepalive-proxy')) {
      log('\n== profile: keepalive-proxy on 64-connection ping-pong');
      profile = await profilePingPong({ seconds: Math.max(2, opts.seconds), env, log });
      if (profile.skipped) log(`  skipped: ${profile.skipped}`);
      log('\n== system calls per round trip (64-connection ping-pong)');
      syscalls = await syscallsPerRoundTrip({ targetIds: ['keepalive-proxy', 'haproxy', 'nginx', 'node-naive'].filter((t) => targetIds.includes(t)), seconds: 2, env, log });
      if (syscalls.skipped) log(`  skipped: ${syscalls.skipped}`);
    }

    await stopAll(); // every child reaped, so the tally can tell our CPU time from everyone else's
    const backgroundDuring = tally.finish();
    const rows = aggregate(results);
    const labels = Object.fromEntries(TARGETS.map((t) => [t.id, t.label]));
    const order = TARGETS.map((t) => t.id);
    const meta = {
      date: new Date().toISOString().replace('T', ' ').slice(0, 16) + ' UTC',
      ...machine(),
      versions: tools.versions,
      pinning: `${pinning}; every process of the suite runs at nice ${niceness}${niceness < 0 ? ' so that unrelated processes on the machine disturb it less (--no-nice to keep 0)' : ''}`,
      sysctls,
      mode: opts.mode,
      rounds: opts.rounds,
      seconds: opts.seconds,
      elapsedMin: ((Date.now() - began) / 60000).toFixed(1),
      background: `${describeShare(backgroundAtStart)} before the start; on average ${describeShare(backgroundDuring.other)} during the run (CPU time of processes other than the suite's); hypervisor steal ${(backgroundDuring.steal * 100).toFixed(1)}%`,
    };
    const skippedNotes = Object.entries(skipWorkload).map(([origin, why]) => `- workloads on origin ${origin} skipped: ${why}`);
    const md = [
      '# keepalive-proxy benchmark results',
      '',
      machineSection(meta),
      ...(skippedNotes.length ? ['', ...skippedNotes] : []),
      '',
      '## Throughput and latency',
      '',
      throughputTable(rows, order),
      '',
      '## Footprint',
      '',
      wantFootprint ? footprintTable(footprint, labels) : 'Not run (--no-footprint or --only without idle).',
      '',
      '## Heartbeat cost',
      '',
      wantFootprint ? heartbeatSection(footprint.heartbeat) : 'Not run.',
      '',
      '## keepalive-proxy against the issue-5 targets',
      '',
      targetsTable(rows, footprint),
      '',
      '## Where keepalive-proxy spends its time (64-connection ping-pong)',
      '',
      profileSection(profile, syscalls),
      '',
    ].join('\n');
    writeFileSync(path.join(RESULTS_DIR, 'latest.md'), md);
    writeFileSync(path.join(RESULTS_DIR, 'latest.json'), JSON.stringify({ meta, results: rows, footprint, profile, syscalls }, null, 2));
    console.log(`\n${md}`);
    console.log(`bench: wrote ${path.relative(REPO_DIR, path.join(RESULTS_DIR, 'latest.md'))} in ${meta.elapsedMin} min`);
  } finally {
    await cleanup();
  }
}

main().catch(async (err) => {
  console.error(`bench: ${err.stack ?? err}`);
  await stopAll();
  process.exit(1);
});
