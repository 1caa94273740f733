// Runs the timed workloads. For each workload every target is started once (all on the proxy
// core, each on its own port), warmed up, then measured in rounds: each round runs every target
// once, in an order rotated by one each round so no target always follows the same neighbour.
// Idle targets wait in epoll meanwhile and cost nothing measurable. Node targets (and every
// target of a workload that calibrates its request count) get one unrecorded warm-up run first.

import { cpuSeconds, coreBusySeconds, stopProcess, sleep, PROXY_CORE } from './procs.mjs';
import { targetById } from './targets.mjs';
import { UPSTREAM_PORT } from './workloads.mjs';
import { median, summarize } from './stats.mjs';

let nextPort = 28000;

function fmtShort(x) {
  if (x === null || x === undefined) return '-';
  return x >= 10_000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(x >= 100 ? 0 : 1);
}

async function startTargets(workload, targetIds, env, log) {
  const handles = [];
  const skipped = {};
  for (const id of workload.targets.filter((t) => targetIds.includes(t))) {
    const target = targetById(id);
    if (!target.kinds.includes(workload.kind)) continue;
    const ctx = {
      kind: workload.kind,
      protocol: workload.protocol,
      port: nextPort++,
      upstreamPort: UPSTREAM_PORT[workload.origin],
      workDir: env.workDir,
      tools: env.tools,
      workloadId: workload.id,
    };
    try {
      const handle = await target.start(ctx);
      handles.push({ id, label: target.label, jit: Boolean(target.jit), state: {}, ...handle });
      if (handle.note) log(`  ${id}: ${handle.note}`);
    } catch (err) {
      skipped[id] = err.message;
      log(`  ${id}: skipped (${err.message})`);
    }
  }
  return { handles, skipped };
}

/** One measured run of one target; never throws (a failure is recorded on the run). */
async function measure(workload, handle, seconds, env) {
  const pid = handle.proc?.pid;
  const cpu0 = pid ? cpuSeconds(pid) : null;
  const core0 = pid ? coreBusySeconds(PROXY_CORE) : null;
  const t0 = performance.now();
  try {
    const result = await workload.run(handle.port, seconds, env, handle.state);
    const wall = (performance.now() - t0) / 1000;
    const cpu1 = pid ? cpuSeconds(pid) : null;
    const core1 = pid ? coreBusySeconds(PROXY_CORE) : null;
    const cpu = cpu0 && cpu1 ? { user: cpu1.user - cpu0.user, system: cpu1.system - cpu0.system } : null;
    const core = core0 && core1 ? { busy: core1.busy - core0.busy, softirq: core1.softirq - core0.softirq } : null;
    return { ...result, wall, cpu, core };
  } catch (err) {
    const died = handle.proc && handle.proc.exitCode !== null ? ` (process exited: ${handle.proc.output().slice(-300)})` : '';
    return { error: `${err.message}${died}` };
  }
}

/**
 * Runs the workloads; returns [{ workload, targets: { [id]: { label, runs, note, skipped } } }].
 * `warmupSeconds` is one unrecorded run per target before the rounds.
 */
export async function runSuite({ workloads, targetIds, rounds, seconds, warmupSeconds, env, log }) {
  const out = [];
  for (const workload of workloads) {
    const began = performance.now();
    log(`\n== ${workload.id}: ${Object.values(workload.series).join(' / ')}`);
    const { handles, skipped } = await startTargets(workload, targetIds, env, log);
    const entry = { workload, targets: {} };
    for (const [id, why] of Object.entries(skipped)) entry.targets[id] = { label: targetById(id).label, runs: [], skipped: why };
    for (const h of handles) entry.targets[h.id] = { label: h.label, runs: [], note: h.note ?? null };

    const runSeconds = workload.integerSeconds ? Math.max(1, Math.round(seconds)) : seconds;
    const warmSeconds = workload.integerSeconds ? 1 : warmupSeconds;
    for (const h of handles) if (h.jit || workload.calibrates) await measure(workload, h, warmSeconds, env);

    for (let round = 0; round < rounds; round++) {
      const order = handles.map((_, i) => handles[(i + round) % handles.length]);
      for (const h of order) {
        if (h.proc && h.proc.exitCode !== null) continue;
        const run = await measure(workload, h, runSeconds, env);
        entry.targets[h.id].runs.push(run);
        if (run.error) {
          log(`  r${round + 1} ${h.id}: error: ${run.error}`);
        } else {
          const parts = Object.entries(run.series).map(([k, s]) => {
            const lat = s.p50 !== undefined ? ` p50 ${fmtShort(s.p50)}us p99 ${fmtShort(s.p99)}us` : s.avg !== undefined ? ` avg ${fmtShort(s.avg)}us` : '';
            const up = s.upstreamConns !== undefined && s.upstreamConns !== null ? `, ${s.upstreamConns} upstream conns opened` : '';
            return `${k === 'main' ? '' : `${k} `}${fmtShort(s.value)} ${workload.unit}${lat}${up}`;
          });
          const cpu = run.cpu
            ? ` | proxy ${(((run.cpu.user + run.cpu.system) / run.wall) * 100).toFixed(0)}% core, ${(((run.cpu.user + run.cpu.system) / run.ops) * 1e6).toFixed(2)} us/${run.opUnit}` +
              (run.core ? `; core ${PROXY_CORE} busy ${((run.core.busy / run.wall) * 100).toFixed(0)}%, ${((run.core.busy / run.ops) * 1e6).toFixed(2)} us/${run.opUnit} incl. softirq` : '')
            : '';
          log(`  r${round + 1} ${h.id}: ${parts.join(', ')}${cpu}`);
        }
        await sleep(50); // let closes settle between runs
      }
    }
    for (const h of handles) if (h.proc) await stopProcess(h.proc);
    log(`  (${workload.id} took ${((performance.now() - began) / 1000).toFixed(0)} s)`);
    out.push(entry);
  }
  return out;
}

/**
 * Per workload, series and target: medians and ranges of the value, latencies, proxy CPU per
 * operation (user and system) and the share of the proxy core used.
 */
export function aggregate(results) {
  const rows = [];
  for (const { workload, targets } of results) {
    for (const [seriesKey, seriesLabel] of Object.entries(workload.series)) {
      const byTarget = {};
      for (const [id, t] of Object.entries(targets)) {
        const ok = t.runs.filter((r) => !r.error && r.series[seriesKey]);
        const pick = (f) => ok.map((r) => f(r.series[seriesKey]));
        const cpuRuns = ok.filter((r) => r.cpu && r.ops > 0);
        byTarget[id] = {
          label: t.label,
          skipped: t.skipped ?? null,
          note: t.note ?? null,
          errors: t.runs.filter((r) => r.error).map((r) => r.error),
          value: summarize(pick((s) => s.value)),
          p50: median(pick((s) => s.p50)),
          p99: median(pick((s) => s.p99)),
          avg: median(pick((s) => s.avg)),
          loadErrors: median(pick((s) => s.errors ?? 0)),
          upstreamConns: median(pick((s) => s.upstreamConns)),
          cpuUserPerOp: median(cpuRuns.map((r) => (r.cpu.user / r.ops) * 1e6)),
          cpuSysPerOp: median(cpuRuns.map((r) => (r.cpu.system / r.ops) * 1e6)),
          cpuPerOp: median(cpuRuns.map((r) => ((r.cpu.user + r.cpu.system) / r.ops) * 1e6)),
          coreShare: median(cpuRuns.map((r) => (r.cpu.user + r.cpu.system) / r.wall)),
          corePerOp: median(cpuRuns.filter((r) => r.core).map((r) => (r.core.busy / r.ops) * 1e6)),
          coreBusy: median(cpuRuns.filter((r) => r.core).map((r) => r.core.busy / r.wall)),
          // Runs in which something other than the proxy kept its core more than 15% busy.
          disturbedRuns: cpuRuns.filter((r) => r.core && (r.core.busy - r.cpu.user - r.cpu.system) / r.wall > 0.15).length,
          runs: ok.length,
          opUnit: ok[0]?.opUnit ?? null,
        };
      }
      rows.push({ workload, seriesKey, seriesLabel, unit: workload.unit, byTarget });
    }
  }
  return rows;
}
