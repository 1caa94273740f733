// The servers behind the proxies: all on the load core, all on loopback in the namespace.
//   echo    the compiled epoll echo server (TCP ping-pong, churn, idle and heartbeat workloads)
//   iperf3  iperf3 -s (bulk)
//   redis   redis-server without persistence
//   pg      PostgreSQL with trust auth in a temp dir, run as the postgres user, pgbench -i -s 1
//   http    nginx returning a small fixed body; a second port serves stub_status so the suite
//           can count how many upstream connections each HTTP run opened

import { mkdirSync, writeFileSync, chownSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { startProcess, runCommand, waitForPort, httpGet, LOAD_CORE } from './procs.mjs';

export const ORIGIN_PORTS = { echo: 27000, iperf3: 27001, redis: 27002, pg: 27003, http: 27004, httpStatus: 27005 };

async function started(proc, port, what, timeoutMs = 15_000) {
  if (await waitForPort(port, { proc, timeoutMs })) return proc;
  throw new Error(`${what} did not start on port ${port}:\n${proc.output().slice(-2000)}`);
}

export async function startEcho(echoBin) {
  const proc = startProcess('echo-origin', echoBin, [String(ORIGIN_PORTS.echo)], { core: LOAD_CORE });
  return started(proc, ORIGIN_PORTS.echo, 'echo origin');
}

export async function startIperf(tools) {
  const proc = startProcess('iperf3-origin', tools.iperf3, ['-s', '-B', '127.0.0.1', '-p', String(ORIGIN_PORTS.iperf3)]);
  return started(proc, ORIGIN_PORTS.iperf3, 'iperf3 -s');
}

export async function startRedis(tools, workDir) {
  const dir = path.join(workDir, 'redis');
  mkdirSync(dir, { recursive: true });
  const proc = startProcess('redis-origin', tools['redis-server'], [
    '--port', String(ORIGIN_PORTS.redis), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--protected-mode', 'no', '--daemonize', 'no', '--maxclients', '10000', '--dir', dir, '--loglevel', 'warning',
  ]);
  return started(proc, ORIGIN_PORTS.redis, 'redis-server');
}

/** PostgreSQL as the postgres user (setpriv execs, so the PID is the postmaster's). */
export async function startPostgres(tools, workDir) {
  const dir = path.join(workDir, 'pg');
  mkdirSync(dir, { recursive: true });
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
  chownSync(dir, uid, gid);
  const asPostgres = (bin, args) => [tools.setpriv, ['--reuid=postgres', '--regid=postgres', '--init-groups', '--', path.join(tools.postgresBin, bin), ...args]];
  const data = path.join(dir, 'data');
  const [initCmd, initArgs] = asPostgres('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8']);
  const init = await runCommand('initdb', initCmd, initArgs, { timeoutMs: 120_000, cwd: dir });
  if (init.code !== 0) throw new Error(`initdb failed: ${init.stderr.slice(-1500)}`);
  const [pgCmd, pgArgs] = asPostgres('postgres', [
    '-D', data, '-p', String(ORIGIN_PORTS.pg), '-k', dir, '-c', 'listen_addresses=127.0.0.1',
    '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200',
    '-c', 'shared_buffers=64MB', '-c', 'logging_collector=off',
  ]);
  const proc = startProcess('postgres-origin', pgCmd, pgArgs, { cwd: dir });
  await started(proc, ORIGIN_PORTS.pg, 'postgres', 30_000);
  const pgbench = path.join(tools.postgresBin, 'pgbench');
  // The port answers before the server accepts logins; retry the initialisation a few times.
  for (let attempt = 1; ; attempt++) {
    const r = await runCommand('pgbench-init', pgbench, ['-i', '-s', '1', '-q', '-h', '127.0.0.1', '-p', String(ORIGIN_PORTS.pg), '-U', 'postgres', 'postgres'], { timeoutMs: 120_000 });
    if (r.code === 0) break;
    if (attempt >= 10) throw new Error(`pgbench -i failed: ${r.stderr.slice(-1500)}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return proc;
}

export function nginxPrefix(dir) {
  for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi', 'logs']) mkdirSync(path.join(dir, sub), { recursive: true });
  return `pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
events { worker_connections 19000; multi_accept on; }
`;
}

export function nginxHttpTemps(dir) {
  return `client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi; access_log off;`;
}

export async function startHttpOrigin(tools, workDir) {
  const dir = path.join(workDir, 'nginx-origin');
  const conf = `${nginxPrefix(dir)}
http {
  ${nginxHttpTemps(dir)}
  default_type text/plain;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:${ORIGIN_PORTS.http} backlog=65535;
    location / { return 200 "hello from the origin\\n"; }
  }
  server {
    listen 127.0.0.1:${ORIGIN_PORTS.httpStatus};
    location / { stub_status; }
  }
}
`;
  writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const proc = startProcess('nginx-origin', tools.nginx, ['-p', dir, '-c', path.join(dir, 'nginx.conf'), '-e', path.join(dir, 'logs', 'error.log')]);
  return started(proc, ORIGIN_PORTS.http, 'nginx origin');
}

/** Connections the HTTP origin has accepted so far (stub_status "accepts"), or null. */
export async function httpOriginAccepts() {
  const r = await httpGet(ORIGIN_PORTS.httpStatus, '/');
  const m = r && /\n\s*(\d+)\s+(\d+)\s+(\d+)/.exec(r.body);
  return m ? Number(m[1]) : null;
}
