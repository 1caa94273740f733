// The proxies under test, each started on the proxy core with the one route a workload needs.
// start() resolves { proc, port, adminPort?, note? } or throws an Error whose message becomes
// the "skipped" note in the report. `direct` is the origin itself, with no proxy in between.

import { writeFileSync, mkdirSync, existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startProcess, stopProcess, waitForPort, httpGet, sleep, PROXY_CORE, CORES } from './procs.mjs';
import { nginxPrefix, nginxHttpTemps } from './origins.mjs';

const BENCH_DIR = path.dirname(path.dirname(new URL(import.meta.url).pathname));
export const REPO_DIR = path.dirname(BENCH_DIR);
export const KP_MAIN = path.join(REPO_DIR, 'dist', 'main.js');

/**
 * The node flags the bin's shebang passes (`#!/usr/bin/env -S node FLAGS`), so the suite
 * runs the proxy exactly as `npx keepalive-proxy` does.
 */
export function kpNodeFlags() {
  if (!existsSync(KP_MAIN)) return [];
  const first = readFileSync(KP_MAIN, 'utf8').split('\n', 1)[0];
  const match = /^#!\S*env -S node\s*(.*)$/.exec(first);
  return match ? match[1].split(/\s+/).filter(Boolean) : [];
}

/** The reason a process gave for dying: a pino fatal line's err.message, else its last lines. */
function whyItFailed(output) {
  const lines = output.split('\n').filter(Boolean);
  for (const line of [...lines].reverse()) {
    try {
      const entry = JSON.parse(line);
      if (entry.err?.message || entry.msg) return entry.err?.message ?? entry.msg;
    } catch {
      // not a JSON log line
    }
  }
  return lines.slice(-4).join(' / ');
}

async function listening(proc, port, what) {
  if (await waitForPort(port, { proc, timeoutMs: 15_000 })) return;
  await stopProcess(proc, { graceMs: 1000 });
  const why = whyItFailed(proc.output());
  throw new Error(`${what} failed to start${why ? `: ${why.slice(0, 300)}` : ''}`);
}

// ---------------------------------------------------------------- keepalive-proxy

function kpYaml({ port, adminPort, upstreamPort, kind, protocol, heartbeat, workers = 1 }) {
  const lines = [
    'admin:',
    `  listen: 127.0.0.1:${adminPort}`,
    'log:',
    '  level: warn',
    'shutdownTimeout: 2s',
    `workers: ${workers}`,
    'routes:',
    '  - name: bench',
    `    listen: 127.0.0.1:${port}`,
  ];
  if (kind === 'http') {
    lines.push('    protocol: http', `    upstream: http://127.0.0.1:${upstreamPort}`, '    pool: { maxSockets: 64 }');
  } else {
    lines.push(`    protocol: ${protocol}`, `    upstream: 127.0.0.1:${upstreamPort}`);
    if (heartbeat) lines.push(`    heartbeat: ${heartbeat}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Resolves once GET /readyz on the admin port answers 200 (bounded), or false. */
export async function waitReady(adminPort, proc, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; i < 3000 && Date.now() < deadline; i++) {
    if (proc.exitCode !== null) return false;
    const r = await httpGet(adminPort, '/readyz', { timeoutMs: 500 });
    if (r?.status === 200) return true;
    await sleep(5);
  }
  return false;
}

/**
 * `workers: 2` on every core: its two workers cannot share the one proxy core, so they run
 * where the load generator and the origin run too, and compete with them for the cores.
 */
async function startKeepaliveProxyWorkers(ctx) {
  if (CORES < 2) throw new Error('needs 2 cores');
  const handle = await startKeepaliveProxy({ ...ctx, workers: 2, core: `0-${CORES - 1}` });
  return { ...handle, note: `2 workers on cores 0-${CORES - 1}, sharing them with the load generator and the origin` };
}

async function startKeepaliveProxy(ctx) {
  if (!existsSync(KP_MAIN)) throw new Error('dist/main.js not built');
  const attempt = async (protocol) => {
    const adminPort = ctx.port + 1000;
    const file = path.join(ctx.workDir, `kp-${ctx.workloadId}-${protocol}.yaml`);
    writeFileSync(file, kpYaml({ ...ctx, protocol, adminPort }));
    const proc = startProcess('keepalive-proxy', process.execPath, [...kpNodeFlags(), ...(ctx.nodeFlags ?? []), KP_MAIN, '--config', file], {
      core: ctx.core ?? PROXY_CORE,
      cwd: REPO_DIR,
    });
    await listening(proc, ctx.port, `keepalive-proxy (protocol ${protocol})`);
    await waitReady(adminPort, proc, 5000);
    return { proc, port: ctx.port, adminPort, configFile: file, note: protocol === 'tcp' ? null : `route protocol ${protocol}` };
  };
  const protocol = ctx.kind === 'http' ? 'http' : ctx.protocol ?? 'tcp';
  try {
    return await attempt(protocol);
  } catch (err) {
    if (protocol === 'tcp' || protocol === 'http') throw err;
    // A protocol route that does not start yet: measure the plain TCP route and say so.
    const fallback = await attempt('tcp');
    return { ...fallback, note: `protocol ${protocol} route did not start; measured protocol tcp` };
  }
}

// ---------------------------------------------------------------- HAProxy

function haproxyConfig({ kind, port, upstreamPort }) {
  const http = kind === 'http';
  return `global
  maxconn 9800
  nbthread 1
defaults
  mode ${http ? 'http' : 'tcp'}
  timeout connect 5s
  timeout client 1h
  timeout server 1h
${http ? '  timeout http-keep-alive 60s\n  http-reuse always\n' : ''}frontend bench
  bind 127.0.0.1:${port}
  default_backend origin
backend origin
  server s1 127.0.0.1:${upstreamPort}
`;
}

async function startHaproxy(ctx) {
  if (!ctx.tools.haproxy) throw new Error('haproxy not installed');
  const file = path.join(ctx.workDir, `haproxy-${ctx.workloadId}.cfg`);
  writeFileSync(file, haproxyConfig(ctx));
  const proc = startProcess('haproxy', ctx.tools.haproxy, ['-db', '-f', file], { core: PROXY_CORE });
  await listening(proc, ctx.port, 'haproxy');
  return { proc, port: ctx.port };
}

// ---------------------------------------------------------------- nginx

async function startNginx(ctx) {
  const { tools, kind, port, upstreamPort } = ctx;
  if (!tools.nginx) throw new Error('nginx not installed');
  const dir = path.join(ctx.workDir, `nginx-${ctx.workloadId}`);
  mkdirSync(dir, { recursive: true });
  let body;
  if (kind === 'http') {
    body = `http {
  ${nginxHttpTemps(dir)}
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port} backlog=65535;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`;
  } else {
    if (!tools.nginxStream.available) throw new Error('nginx has no stream module (apt-get install libnginx-mod-stream)');
    body = `stream {
  server { listen 127.0.0.1:${port} backlog=65535; proxy_pass 127.0.0.1:${upstreamPort}; proxy_timeout 1h; }
}
`;
  }
  const load = kind !== 'http' && tools.nginxStream.loadModule ? `load_module ${tools.nginxStream.loadModule};\n` : '';
  writeFileSync(path.join(dir, 'nginx.conf'), `${load}${nginxPrefix(dir)}${body}`);
  const proc = startProcess('nginx', tools.nginx, ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'logs', 'error.log')], {
    core: PROXY_CORE,
  });
  await listening(proc, port, 'nginx');
  return { proc, port };
}

// ---------------------------------------------------------------- socat and the Node baselines

async function startSocat(ctx) {
  if (!ctx.tools.socat) throw new Error('socat not installed');
  const proc = startProcess(
    'socat',
    ctx.tools.socat,
    [`TCP4-LISTEN:${ctx.port},bind=127.0.0.1,fork,reuseaddr,backlog=4096`, `TCP4:127.0.0.1:${ctx.upstreamPort}`],
    { core: PROXY_CORE },
  );
  await listening(proc, ctx.port, 'socat');
  return { proc, port: ctx.port };
}

async function startNodeBaseline(ctx, script, upstream) {
  const proc = startProcess(script, process.execPath, [path.join(BENCH_DIR, 'baselines', script), `127.0.0.1:${ctx.port}`, upstream], {
    core: PROXY_CORE,
  });
  await listening(proc, ctx.port, script);
  return { proc, port: ctx.port };
}

/**
 * Every target, in report order. `kinds` says which route kinds it can proxy; `jit` marks the
 * Node targets, which get one unrecorded warm-up run per workload so V8 has compiled the hot path.
 */
export const TARGETS = [
  { id: 'direct', label: 'direct (no proxy)', kinds: ['tcp', 'http'], start: async (ctx) => ({ proc: null, port: ctx.upstreamPort }) },
  { id: 'keepalive-proxy', label: 'keepalive-proxy', kinds: ['tcp', 'http'], jit: true, start: startKeepaliveProxy },
  { id: 'keepalive-proxy-2w', label: 'keepalive-proxy, workers: 2', kinds: ['tcp'], jit: true, start: startKeepaliveProxyWorkers },
  { id: 'haproxy', label: 'HAProxy', kinds: ['tcp', 'http'], start: startHaproxy },
  { id: 'nginx', label: 'nginx', kinds: ['tcp', 'http'], start: startNginx },
  { id: 'socat', label: 'socat (fork)', kinds: ['tcp'], start: startSocat },
  {
    id: 'node-naive',
    label: 'Node naive pipe',
    kinds: ['tcp', 'http'],
    jit: true,
    start: (ctx) => startNodeBaseline(ctx, 'naive-proxy.mjs', `127.0.0.1:${ctx.upstreamPort}`),
  },
  {
    id: 'node-undici',
    label: 'Node undici',
    kinds: ['http'],
    jit: true,
    start: (ctx) => startNodeBaseline(ctx, 'undici-proxy.mjs', `http://127.0.0.1:${ctx.upstreamPort}`),
  },
];

export const targetById = (id) => TARGETS.find((t) => t.id === id);
