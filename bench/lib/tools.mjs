// Finds (or installs, on Debian as root) the load tools and reference proxies, and compiles the
// two small C programs. Anything that stays missing turns into a skipped workload with a note.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

/** Debian package that provides each program. */
const PACKAGES = {
  cc: 'gcc',
  taskset: 'util-linux',
  ip: 'iproute2',
  haproxy: 'haproxy',
  nginx: 'nginx-light',
  socat: 'socat',
  wrk: 'wrk',
  iperf3: 'iperf3',
  'redis-server': 'redis-server',
  'redis-benchmark': 'redis-tools',
  pgbench: 'postgresql-client',
  perf: null, // optional: only for the profile section
};

function which(name) {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

function capture(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.error ? '' : `${r.stdout}${r.stderr}`;
}

function postgresBinDir() {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return null;
  const versions = readdirSync(root)
    .filter((v) => existsSync(path.join(root, v, 'bin', 'postgres')))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length ? path.join(root, versions[0], 'bin') : null;
}

/** How nginx can get its stream (TCP) module: { loadModule: path|null, available: bool }. */
function nginxStream(nginxPath) {
  if (!nginxPath) return { available: false, loadModule: null };
  const v = capture(nginxPath, ['-V']);
  const modulesPath = /--modules-path=(\S+)/.exec(v)?.[1] ?? '/usr/lib/nginx/modules';
  if (/--with-stream(\s|$)/.test(v)) return { available: true, loadModule: null };
  const file = path.join(modulesPath, 'ngx_stream_module.so');
  return { available: existsSync(file), loadModule: existsSync(file) ? file : null };
}

function aptInstall(packages, log) {
  if (packages.length === 0 || process.getuid?.() !== 0 || !which('apt-get')) return;
  log(`installing missing packages: ${packages.join(' ')}`);
  const r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...packages], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    timeout: 600_000,
  });
  if (r.status !== 0) log('apt-get install failed; the workloads that need these tools will be skipped');
}

/** Resolves every tool, installing what is missing when it can. */
export function findTools(log) {
  const missing = Object.entries(PACKAGES)
    .filter(([name, pkg]) => pkg && !which(name))
    .map(([, pkg]) => pkg);
  const pgMissing = !postgresBinDir();
  let stream = nginxStream(which('nginx'));
  const extra = [...(pgMissing ? ['postgresql'] : []), ...(which('nginx') && !stream.available ? ['libnginx-mod-stream'] : [])];
  aptInstall([...new Set([...missing, ...extra])], log);
  stream = nginxStream(which('nginx'));

  const tools = {};
  for (const name of Object.keys(PACKAGES)) tools[name] = which(name);
  tools.postgresBin = postgresBinDir();
  tools.nginxStream = stream;
  tools.setpriv = which('setpriv');
  tools.versions = {
    node: process.version,
    haproxy: tools.haproxy ? capture(tools.haproxy, ['-v']).split('\n')[0].replace(/ - https.*/, '') : null,
    nginx: tools.nginx ? capture(tools.nginx, ['-v']).trim().replace('nginx version: ', '') : null,
    socat: tools.socat ? (/socat version (\S+)/.exec(capture(tools.socat, ['-V']))?.[1] ?? '?') : null,
    wrk: tools.wrk ? (/wrk (\S+)/.exec(capture(tools.wrk, ['-v']))?.[1] ?? '?') : null,
    iperf3: tools.iperf3 ? (/iperf (\S+)/.exec(capture(tools.iperf3, ['-v']))?.[1] ?? '?') : null,
    redis: tools['redis-server'] ? (/v=(\S+)/.exec(capture(tools['redis-server'], ['--version']))?.[1] ?? '?') : null,
    postgres: tools.postgresBin ? capture(path.join(tools.postgresBin, 'postgres'), ['--version']).trim() : null,
  };
  return tools;
}

/** Compiles bench/src/NAME.c into buildDir when the binary is missing or older than its source. */
export function compile(benchDir, buildDir, name) {
  mkdirSync(buildDir, { recursive: true });
  const src = path.join(benchDir, 'src', `${name}.c`);
  const out = path.join(buildDir, name);
  if (existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs) return out;
  const r = spawnSync('cc', ['-O2', '-Wall', '-o', out, src], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cc ${src} failed:\n${r.stderr || r.error?.message}`);
  return out;
}
