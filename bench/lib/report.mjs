// Turns the measurements into Markdown: the machine and method, one throughput/latency table,
// the footprint table, keepalive-proxy against the issue-5 targets, and the profile.

const num = (x, digits = 0) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }));

function value(x, unit) {
  if (x === null || x === undefined) return '-';
  if (unit === 'MB/s') return num(x, 0);
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (x >= 1e4) return `${(x / 1e3).toFixed(1)}k`;
  return num(x, x >= 100 ? 0 : 1);
}

const ratio = (a, b) => (a === null || b === null || a === undefined || b === undefined || !b ? '-' : `${(a / b).toFixed(2)}x`);
const micros = (x) => (x === null || x === undefined ? '-' : x >= 1000 ? num(x, 0) : num(x, x >= 100 ? 0 : 1));
const kib = (x) => (x === null || x === undefined ? '-' : `${(x / 1024).toFixed(1)} MiB`);
const pct = (x) => (x === null || x === undefined ? '-' : `${(Math.max(0, x) * 100).toFixed(x < 0.1 ? 1 : 0)}%`);

export function machineSection(meta) {
  const lines = [
    `- Date: ${meta.date}`,
    `- Machine: ${meta.nproc} CPUs (${meta.cpuModel}), kernel ${meta.kernel}, ${meta.memGiB} GiB RAM`,
    `- Software: Node ${meta.versions.node}, ${meta.versions.haproxy ?? 'HAProxy: not installed'}, nginx ${meta.versions.nginx ?? '-'}, socat ${meta.versions.socat ?? '-'}, wrk ${meta.versions.wrk ?? '-'}, iperf3 ${meta.versions.iperf3 ?? '-'}, redis ${meta.versions.redis ?? '-'}, ${meta.versions.postgres ?? 'PostgreSQL: -'}`,
    `- Pinning: ${meta.pinning}`,
    `- Network: private namespace (unshare -n), loopback only; ${Object.entries(meta.sysctls).map(([k, v]) => `${k}=${v}`).join(', ')}`,
    `- Method: ${meta.mode} mode; per workload every target is started once (Node targets, and every target of the redis workloads, get one unrecorded warm-up run), then measured in ${meta.rounds} rounds of ${meta.seconds} s; each round runs every target once, in an order rotated by one each round; the tables show the median and the min-max of the rounds. Proxy CPU is utime+stime of the proxy process (socat: with its forked children) over the run, divided by the operations done.`,
    `- Background load (other processes on the machine): ${meta.background}`,
    `- Wall time of this run: ${meta.elapsedMin} min`,
  ];
  return lines.join('\n');
}

export function throughputTable(rows, targetOrder) {
  const out = [
    '| workload | target | median | min-max | vs HAProxy | vs direct | p50 us | p99 us | proxy CPU us/op (user+sys) | proxy core busy | notes |',
    '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|',
  ];
  for (const row of rows) {
    const hap = row.byTarget.haproxy?.value?.median ?? null;
    const direct = row.byTarget.direct?.value?.median ?? null;
    let first = true;
    for (const id of targetOrder) {
      const t = row.byTarget[id];
      if (!t) continue;
      const wl = first ? `${row.seriesLabel} (${row.unit})` : '';
      first = false;
      if (t.skipped) {
        out.push(`| ${wl} | ${t.label} | - | - | - | - | - | - | - | - | skipped: ${t.skipped.replaceAll('|', '/')} |`);
        continue;
      }
      const v = t.value;
      const notes = [];
      if (t.note) notes.push(t.note);
      if (id === 'keepalive-proxy-2w') notes.push(`${ratio(v?.median, row.byTarget['keepalive-proxy']?.value?.median ?? null)} of 1 worker`);
      if (t.avg !== null && t.p50 === null) notes.push(`avg latency ${micros(t.avg)} us`);
      if (t.upstreamConns !== null) notes.push(`upstream conns opened: ${num(t.upstreamConns)}`);
      if (t.loadErrors) notes.push(`load-tool errors: ${num(t.loadErrors)}`);
      if (t.disturbedRuns) notes.push(`${t.disturbedRuns} of ${t.runs} runs disturbed (other work on the proxy core)`);
      if (t.errors.length) notes.push(`${t.errors.length} failed run(s): ${t.errors[0].slice(0, 120).replaceAll('|', '/')}`);
      const cpu = t.cpuPerOp === null ? '-' : `${t.cpuPerOp.toFixed(2)} (${t.cpuUserPerOp.toFixed(2)}+${t.cpuSysPerOp.toFixed(2)})${t.opUnit && t.opUnit !== 'req' ? ` per ${t.opUnit}` : ''}`;
      out.push(
        `| ${wl} | ${t.label} | ${v ? value(v.median, row.unit) : '-'} | ${v ? `${value(v.min, row.unit)}-${value(v.max, row.unit)}` : '-'} | ` +
          `${id === 'haproxy' ? '1.00x' : ratio(v?.median, hap)} | ${id === 'direct' ? '1.00x' : ratio(v?.median, direct)} | ` +
          `${micros(t.p50)} | ${micros(t.p99)} | ${cpu} | ${pct(t.coreShare)} | ${notes.join('; ')} |`,
      );
    }
  }
  return out.join('\n');
}

export function footprintTable(footprint, labels) {
  const out = [
    '| target | start-up to ready | RSS at start | RSS with 8,000 idle proxied conns | RSS per idle conn | CPU while idle | notes |',
    '|---|--:|--:|--:|--:|--:|---|',
  ];
  const shipped = footprint.shipped;
  if (shipped) {
    out.push(
      shipped.skipped
        ? `| keepalive-proxy, shipped config | - | - | - | - | - | skipped: ${shipped.skipped.replaceAll('|', '/')} |`
        : `| keepalive-proxy, shipped config (config/keepalive-proxy.yaml) | ${num(shipped.startMs)} ms | ${kib(shipped.rssKiB)} | - | - | - | median of ${shipped.runs} starts; ready = GET /readyz 200 |`,
    );
  }
  for (const [id, r] of Object.entries(footprint.idle ?? {})) {
    if (r.skipped) {
      out.push(`| ${labels[id]} | - | - | - | - | - | skipped: ${r.skipped.replaceAll('|', '/')} |`);
      continue;
    }
    const notes = [`${num(r.established)} established, ${num(r.stillOpen)} still open after the window`];
    if (r.setupErrors) notes.push(`${r.setupErrors} connect errors`);
    out.push(
      `| ${labels[id]} (one TCP route) | ${num(r.startMs)} ms | ${kib(r.rssStartKiB)} | ${kib(r.rssHeldKiB)} | ${(r.perConnKiB).toFixed(2)} KiB | ${pct(r.cpuShare)} | ${notes.join('; ')} |`,
    );
  }
  return out.join('\n');
}

export function heartbeatSection(hb) {
  if (!hb) return 'Not run (keepalive-proxy not selected).';
  if (hb.skipped) return `Skipped: ${hb.skipped}`;
  return [
    `8,000 idle connections through one keepalive-proxy tcp route with \`heartbeat: { every: 1s, timeout: 500ms, send: "PING\\r\\n", expect: "PING\\r\\n" }\` against the echo origin:`,
    '',
    `- proxy CPU over a ${hb.windowS.toFixed(1)} s window: **${pct(hb.cpuShare)} of one core** (issue-5 budget: under 15%)`,
    `- heartbeats completed: ${hb.heartbeatsPerS === null ? 'unknown (no keepalive_proxy_heartbeats_total in /metrics)' : `${num(hb.heartbeatsPerS)}/s`}`,
    `- RSS ${kib(hb.rssStartKiB)} at start, ${kib(hb.rssHeldKiB)} with the connections (${hb.perConnKiB.toFixed(2)} KiB per connection)`,
    `- client side: ${num(hb.stillOpen)} of ${num(hb.established)} still open, ${num(hb.unexpectedBytes)} unexpected bytes received (heartbeat replies leaking to the client would show here), ${num(hb.closedByPeer)} closed by the proxy`,
    hb.note ? `- note: ${hb.note}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

/** keepalive-proxy against the issue-5 targets (throughput ratio and CPU-efficiency ratio). */
export function targetsTable(rows, footprint) {
  const find = (id) => rows.find((r) => r.workload.id === id);
  const check = (ok) => (ok === null ? '?' : ok ? 'met' : 'not met');
  // Throughput on a shared, noisy machine can favour either side by luck; CPU per operation is
  // what the proxy would reach if it were the bottleneck. Both agreeing is a verdict.
  const verdict = (throughput, efficiency, min) => {
    if (throughput === null) return '?';
    if (efficiency === null) return check(throughput >= min);
    if (throughput >= min && efficiency >= min) return 'met';
    if (throughput < min && efficiency < min) return 'not met';
    return 'unclear: throughput and CPU per op disagree';
  };
  const out = [
    '| target (issue 5) | keepalive-proxy / HAProxy throughput | HAProxy CPU per op / keepalive-proxy CPU per op | keepalive-proxy / Node naive throughput | Node naive CPU per op / keepalive-proxy CPU per op | status |',
    '|---|--:|--:|--:|--:|---|',
  ];
  const line = (label, id, min) => {
    const row = find(id);
    const kp = row?.byTarget['keepalive-proxy'];
    const hap = row?.byTarget.haproxy;
    const naive = row?.byTarget['node-naive'];
    if (!kp || kp.skipped || !kp.value) return out.push(`| ${label} | - | - | - | - | ${kp?.skipped ? 'not measured: route kind not supported yet' : 'not measured'} |`);
    const r = hap?.value ? kp.value.median / hap.value.median : null;
    const eff = hap?.cpuPerOp && kp.cpuPerOp ? hap.cpuPerOp / kp.cpuPerOp : null;
    const vsNaive = naive?.value ? kp.value.median / naive.value.median : null;
    const effNaive = naive?.cpuPerOp && kp.cpuPerOp ? naive.cpuPerOp / kp.cpuPerOp : null;
    const x = (v) => (v === null ? '-' : `${v.toFixed(2)}x`);
    out.push(`| ${label} | ${x(r)} | ${x(eff)} | ${x(vsNaive)} | ${x(effNaive)} | ${verdict(r, eff, min)} |`);
  };
  line('ping-pong 64 conns >= 0.85x', 'tcp-pp64', 0.85);
  line('bulk >= 0.8x', 'tcp-bulk', 0.8);
  line('churn >= 0.6x', 'tcp-churn', 0.6);
  line('HTTP Connection: close >= 0.5x', 'http-close', 0.5);
  line('HTTP keep-alive >= 0.5x', 'http-ka', 0.5);
  const kpIdle = footprint.idle?.['keepalive-proxy'];
  const hapIdle = footprint.idle?.haproxy;
  if (kpIdle && !kpIdle.skipped && hapIdle && !hapIdle.skipped) {
    const r = kpIdle.perConnKiB / hapIdle.perConnKiB;
    const naive = footprint.idle['node-naive'];
    out.push(`| memory per idle conn <= 2x HAProxy (<= about 7 KB) | ${r.toFixed(2)}x (${kpIdle.perConnKiB.toFixed(2)} vs ${hapIdle.perConnKiB.toFixed(2)} KiB) | - | ${naive && !naive.skipped ? `${(kpIdle.perConnKiB / naive.perConnKiB).toFixed(2)}x of naive's memory` : '-'} | - | ${check(r <= 2)} |`);
  }
  const hb = footprint.heartbeat;
  if (hb && !hb.skipped) out.push(`| heartbeats, 8,000 conns every 1 s < 15% of a core | ${pct(hb.cpuShare)} of a core | - | - | - | ${check(hb.cpuShare < 0.15)} |`);
  return out.join('\n');
}

function syscallTable(sc) {
  if (!sc) return [];
  if (sc.skipped) return ['', `System calls per round trip: skipped (${sc.skipped}).`];
  const shown = sc.syscalls.filter((name) => sc.rows.some((r) => (r.perRoundTrip?.[name] ?? 0) >= 0.01));
  const lines = [
    '',
    'System calls and context switches of the proxy process per 64-byte round trip (64-connection ping-pong, `perf stat` tracepoint counts; a round trip is one read and one write on each side at best):',
    '',
    `| proxy | CPU us/rt (user+sys) | syscalls/rt | ${shown.join(' | ')} | context switches/rt | page faults/rt |`,
    `|---|--:|--:|${shown.map(() => '--:|').join('')}--:|--:|`,
  ];
  for (const r of sc.rows) {
    if (r.skipped) {
      lines.push(`| ${r.label} | skipped: ${r.skipped.replaceAll('|', '/')} |`);
      continue;
    }
    const c = r.perRoundTrip;
    lines.push(
      `| ${r.label} | ${(r.cpuUs.user + r.cpuUs.system).toFixed(1)} (${r.cpuUs.user.toFixed(1)}+${r.cpuUs.system.toFixed(1)}) | ${c.total?.toFixed(2) ?? '-'} | ${shown.map((n) => (c[n] ?? 0).toFixed(2)).join(' | ')} | ${c.cs?.toFixed(2) ?? '-'} | ${c.faults?.toFixed(3) ?? '-'} |`,
    );
  }
  return lines;
}

export function profileSection(p, sc) {
  if (!p) return ['Not run (use the full mode or --profile).', ...syscallTable(sc)].join('\n');
  if (p.skipped) return [`Skipped: ${p.skipped}`, ...syscallTable(sc)].join('\n');
  const lines = [];
  if (p.cpu) {
    const total = p.cpu.user + p.cpu.system;
    lines.push(
      `keepalive-proxy on 64-connection ping-pong: ${((total / p.cpu.ops) * 1e6).toFixed(2)} us of CPU per round trip, ` +
        `${((p.cpu.user / total) * 100).toFixed(0)}% user / ${((p.cpu.system / total) * 100).toFixed(0)}% system (kernel).`,
    );
  }
  lines.push(...syscallTable(sc));
  if (p.perf) {
    lines.push('', '`perf record -e cpu-clock` on the proxy process, by binary:', '', '| where | % of proxy samples |', '|---|--:|');
    for (const r of p.perf) lines.push(`| ${r.name} | ${r.pct.toFixed(1)}% |`);
  }
  if (p.perfSymbols) {
    lines.push('', 'Top symbols (perf, all binaries):', '', '| symbol | % |', '|---|--:|');
    for (const r of p.perfSymbols) lines.push(`| \`${r.name.replaceAll('|', '/')}\` | ${r.pct.toFixed(1)}% |`);
  }
  if (p.profile) {
    lines.push('', `V8 CPU profile (--cpu-prof, ${p.profile.samples} non-idle samples), self time by origin:`, '', '| origin | % |', '|---|--:|');
    for (const r of p.profile.origins) lines.push(`| ${r.name} | ${r.pct.toFixed(1)}% |`);
    lines.push('', 'Top functions by self time:', '', '| function | % |', '|---|--:|');
    for (const r of p.profile.functions) lines.push(`| \`${r.name.replaceAll('|', '/')}\` | ${r.pct.toFixed(1)}% |`);
    lines.push('', '"native" is C++ bindings called from JS (`writeBuffer` is the socket write, which on loopback runs the whole TCP send and receive path in the kernel); "(program)" is native code with no JS frame (libuv polling, reads, V8 runtime); "(garbage collector)" is GC.');
  }
  return lines.join('\n');
}
