import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { freePort } from './net.js';
import { sleep } from './wait.js';

// Private database servers for tests: each launcher picks a free loopback port, gives the
// server its own temporary data directory, waits (bounded) until a real client query
// succeeds, and owns the cleanup: stop() signals the server by PID, waits for its exit and
// removes the directory. Servers still running when the test process exits are killed.
// Nothing here touches the Debian system services or their data directories.

export interface RunningServer {
  readonly port: number;
  /** The PID of the server's main process (redis-server, postgres postmaster, mariadbd). */
  readonly pid: number;
  readonly dataDir: string;
  /** Stop the server (graceful, then SIGKILL past a bound) and remove its data directory. */
  stop(): Promise<void>;
  /** SIGSTOP the server and every process it forked: a hung upstream whose kernel still answers. */
  pause(): void;
  /** SIGCONT what pause() stopped. */
  resume(): void;
}

const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const PORT_ATTEMPTS = 3;

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) killTree(child.pid, 'SIGKILL');
});

/**
 * Where a server runs: by default on 127.0.0.1 in the test's own namespace. With `netns`
 * it runs inside that network namespace (ip netns exec, which execs in place: the PID is
 * still the server's), listening on its loopback and, with `bind`, on that address too
 * (a lab address such as 198.18.2.2), where it also accepts clients without a password.
 * Readiness is then checked by a command-line client run inside the namespace.
 */
export interface ServerPlacement {
  readonly netns?: string;
  readonly bind?: string;
  /**
   * TLS only: PostgreSQL with ssl=on and a pg_hba that rejects every non-TLS client;
   * redis-server with a tls-port and no plaintext port; MariaDB with its certificate and
   * require_secure_transport=ON. Readiness is then checked over TLS.
   */
  readonly tlsOnly?: { readonly cert: string; readonly key: string; readonly ca: string };
  /** A fixed port (a server restarted where the old one was); a free one by default. */
  readonly port?: number;
}

export async function startRedis(placement: ServerPlacement = {}): Promise<RunningServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'kp-redis-'));
  return launch({
    name: 'redis-server',
    dataDir,
    port: placement.port,
    spawnServer: (port) =>
      spawnPlaced(
        placement,
        '/usr/bin/redis-server',
        [
          ...(placement.tlsOnly
            ? [
                '--port', '0',
                '--tls-port', String(port),
                '--tls-cert-file', placement.tlsOnly.cert,
                '--tls-key-file', placement.tlsOnly.key,
                '--tls-ca-cert-file', placement.tlsOnly.ca,
                '--tls-auth-clients', 'no',
              ]
            : ['--port', String(port)]),
          '--bind', ...listenAddresses(placement),
          '--save', '',
          '--appendonly', 'no',
          '--dir', dataDir,
          '--daemonize', 'no',
          '--protected-mode', 'no',
          '--logfile', '',
        ],
        {},
      ),
    ready: (port) =>
      placement.netns
        ? readyInNs(placement.netns, '/usr/bin/redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...(placement.tlsOnly ? ['--tls', '--insecure'] : []), 'PING'], 'PONG')
        : redisPing(port, placement.tlsOnly !== undefined),
    stopSignal: 'SIGTERM',
  });
}

export async function startPostgres(placement: ServerPlacement = {}): Promise<RunningServer> {
  const bin = postgresBinDir();
  const owner = systemUser('postgres');
  const dataDir = mkdtempSync(join(tmpdir(), 'kp-pg-'));
  chownSync(dataDir, owner.uid, owner.gid);
  const pgdata = join(dataDir, 'data');
  const init = spawnSync(
    join(bin, 'initdb'),
    ['-D', pgdata, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync'],
    { uid: owner.uid, gid: owner.gid, cwd: dataDir, encoding: 'utf8', timeout: 120_000, env: { PATH: process.env.PATH ?? '' } },
  );
  if (init.status !== 0) {
    rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`initdb failed (${init.status}): ${init.stderr || init.error}`);
  }
  // initdb's trust lines cover loopback only; a lab client comes from the lab range.
  if (placement.bind) appendFileSync(join(pgdata, 'pg_hba.conf'), `host all all ${LAB_RANGE} trust\n`);
  const tlsSettings = placement.tlsOnly ? postgresTlsOnly(dataDir, pgdata, placement.tlsOnly, owner) : [];
  return launch({
    name: 'postgres',
    dataDir,
    spawnServer: (port) =>
      spawnPlaced(
        placement,
        join(bin, 'postgres'),
        [
          '-D', pgdata,
          '-p', String(port),
          '-k', dataDir,
          '-c', `listen_addresses=${listenAddresses(placement).join(',')}`,
          '-c', 'fsync=off',
          '-c', 'synchronous_commit=off',
          '-c', 'full_page_writes=off',
          '-c', 'logging_collector=off',
          ...tlsSettings,
        ],
        { user: owner, cwd: dataDir, env: { PATH: process.env.PATH ?? '' } },
      ),
    ready: (port) =>
      placement.netns
        ? readyInNs(placement.netns, join(bin, 'psql'), [`host=127.0.0.1 port=${port} user=postgres dbname=postgres sslmode=${placement.tlsOnly ? 'require' : 'prefer'}`, '-tAc', 'SELECT 1'], '1')
        : postgresQuery(port, placement.tlsOnly !== undefined),
    // SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to leave.
    stopSignal: 'SIGINT',
  });
}

/**
 * ssl=on with the given certificate (copied into the data directory: PostgreSQL wants its
 * key owned by its user, mode 0600) and a pg_hba.conf that admits TLS clients only.
 */
function postgresTlsOnly(dataDir: string, pgdata: string, files: { cert: string; key: string }, owner: { uid: number; gid: number }): string[] {
  const cert = join(dataDir, 'server.pem');
  const key = join(dataDir, 'server.key');
  writeFileSync(cert, readFileSync(files.cert));
  writeFileSync(key, readFileSync(files.key), { mode: 0o600 });
  for (const file of [cert, key]) chownSync(file, owner.uid, owner.gid);
  const lab = `hostssl all all ${LAB_RANGE} trust\n`;
  writeFileSync(join(pgdata, 'pg_hba.conf'), `local all all trust\nhostssl all all 127.0.0.1/32 trust\n${lab}host all all 0.0.0.0/0 reject\n`);
  return ['-c', 'ssl=on', '-c', `ssl_cert_file=${cert}`, '-c', `ssl_key_file=${key}`];
}

export const MARIADB_USER = 'test';

export async function startMariadb(placement: ServerPlacement = {}): Promise<RunningServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'kp-maria-'));
  const datadir = join(dataDir, 'data');
  // A passwordless TCP account for tests, created by the server's --init-file at start (the
  // bootstrap of mariadb-install-db runs without grant tables); skip-name-resolve makes
  // '127.0.0.1' match by address.
  const initFile = join(dataDir, 'init.sql');
  writeFileSync(
    initFile,
    [
      `CREATE USER IF NOT EXISTS '${MARIADB_USER}'@'127.0.0.1' IDENTIFIED BY '';`,
      `GRANT ALL PRIVILEGES ON *.* TO '${MARIADB_USER}'@'127.0.0.1' WITH GRANT OPTION;`,
      // Lab clients (an LB, a proxy in another namespace) connect from 198.18.x.y.
      ...(placement.bind
        ? [
            `CREATE USER IF NOT EXISTS '${MARIADB_USER}'@'198.18.%' IDENTIFIED BY '';`,
            `GRANT ALL PRIVILEGES ON *.* TO '${MARIADB_USER}'@'198.18.%' WITH GRANT OPTION;`,
          ]
        : []),
      'CREATE DATABASE IF NOT EXISTS test;',
      '',
    ].join('\n'),
  );
  const install = spawnSync(
    '/usr/bin/mariadb-install-db',
    [
      '--no-defaults',
      `--datadir=${datadir}`,
      '--user=root',
      '--auth-root-authentication-method=normal',
      '--skip-test-db',
      // The bootstrap's temporary tables go in the instance's own directory, as the server's do:
      // in the shared /tmp another process may remove them mid-bootstrap ("Error on delete of '/tmp/#sql-temptable-…'").
      `--tmpdir=${dataDir}`,
    ],
    { encoding: 'utf8', timeout: 120_000 },
  );
  if (install.status !== 0) {
    rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`mariadb-install-db failed (${install.status}): ${install.stderr || install.error}`);
  }
  return launch({
    name: 'mariadbd',
    dataDir,
    spawnServer: (port) =>
      spawnPlaced(
        placement,
        '/usr/sbin/mariadbd',
        [
          '--no-defaults',
          `--datadir=${datadir}`,
          `--port=${port}`,
          // MariaDB 10.11 takes a comma-separated list.
          `--bind-address=${listenAddresses(placement).join(',')}`,
          `--socket=${join(dataDir, 'mysqld.sock')}`,
          `--pid-file=${join(dataDir, 'mysqld.pid')}`,
          `--log-error=${join(dataDir, 'error.log')}`,
          `--tmpdir=${dataDir}`,
          '--user=root',
          `--init-file=${initFile}`,
          '--skip-name-resolve',
          '--skip-log-bin',
          '--innodb-buffer-pool-size=32M',
          '--innodb-flush-log-at-trx-commit=0',
          ...(placement.tlsOnly
            ? [
                `--ssl-cert=${placement.tlsOnly.cert}`,
                `--ssl-key=${placement.tlsOnly.key}`,
                `--ssl-ca=${placement.tlsOnly.ca}`,
                '--require-secure-transport=ON',
              ]
            : []),
        ],
        {},
      ),
    ready: (port) =>
      placement.netns
        ? readyInNs(placement.netns, '/usr/bin/mariadb', ['--protocol=TCP', '-h', '127.0.0.1', '-P', String(port), '-u', MARIADB_USER, ...(placement.tlsOnly ? ['--ssl'] : []), '-N', '-B', '-e', 'SELECT 1'], '1')
        : mariadbQuery(port, placement.tlsOnly !== undefined),
    logFile: join(dataDir, 'error.log'),
    stopSignal: 'SIGTERM',
  });
}

/** The lab's address range (RFC 2544, test/lab/netns.ts): trusted by lab-placed servers. */
const LAB_RANGE = '198.18.0.0/15';

function listenAddresses(placement: ServerPlacement): string[] {
  return placement.bind ? ['127.0.0.1', placement.bind] : ['127.0.0.1'];
}

interface SpawnOptions {
  /** Run as this user (PostgreSQL refuses root). */
  user?: { uid: number; gid: number };
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * Spawns a server where `placement` says. In a namespace the command runs under
 * `ip netns exec` (which needs root, so a user switch goes through setpriv, which execs
 * too): either way the child's PID is the server's own.
 */
function spawnPlaced(placement: ServerPlacement, command: string, args: string[], options: SpawnOptions): ChildProcess {
  const stdio: ['ignore', 'pipe', 'pipe'] = ['ignore', 'pipe', 'pipe'];
  if (!placement.netns) {
    return spawn(command, args, { stdio, cwd: options.cwd, env: options.env, uid: options.user?.uid, gid: options.user?.gid });
  }
  const asUser = options.user
    ? ['/usr/bin/setpriv', `--reuid=${options.user.uid}`, `--regid=${options.user.gid}`, '--clear-groups', '--']
    : [];
  return spawn('ip', ['netns', 'exec', placement.netns, ...asUser, command, ...args], { stdio, cwd: options.cwd, env: options.env });
}

/** Readiness inside a namespace: a command-line client's query, bounded in time, prints `expected`. */
function readyInNs(ns: string, command: string, args: string[], expected: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', ns, command, ...args], { timeout: 3_000, killSignal: 'SIGKILL', encoding: 'utf8' }, (error, stdout) =>
      resolve(!error && stdout.trim() === expected),
    );
  });
}

interface LaunchSpec {
  name: string;
  dataDir: string;
  port?: number;
  spawnServer(port: number): ChildProcess;
  /** Resolves true once a real client query succeeded. */
  ready(port: number): Promise<boolean>;
  stopSignal: NodeJS.Signals;
  logFile?: string;
}

async function launch(spec: LaunchSpec): Promise<RunningServer> {
  let lastError = '';
  try {
    // A free port can be taken between freePort() and the server's bind: retry a few times.
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const port = spec.port ?? (await freePort());
      const child = spec.spawnServer(port);
      running.add(child);
      let output = '';
      child.stdout?.setEncoding('utf8').on('data', (text: string) => (output = (output + text).slice(-4000)));
      child.stderr?.setEncoding('utf8').on('data', (text: string) => (output = (output + text).slice(-4000)));
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.once('exit', () => running.delete(child));
      if (await waitReady(spec, port, child)) {
        return handle(spec, port, child, exited);
      }
      lastError = `${output}${spec.logFile && existsSync(spec.logFile) ? readFileSync(spec.logFile, 'utf8').slice(-4000) : ''}`;
      await terminate(child, exited, 'SIGKILL');
    }
  } catch (error) {
    rmSync(spec.dataDir, { recursive: true, force: true });
    throw error;
  }
  rmSync(spec.dataDir, { recursive: true, force: true });
  throw new Error(`${spec.name} did not become ready after ${PORT_ATTEMPTS} attempts:\n${lastError}`);
}

async function waitReady(spec: LaunchSpec, port: number, child: ChildProcess): Promise<boolean> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) return false;
    if (await spec.ready(port).catch(() => false)) return true;
    await sleep(100);
  }
  return false;
}

function handle(spec: LaunchSpec, port: number, child: ChildProcess, exited: Promise<void>): RunningServer {
  const pid = child.pid!;
  let paused: number[] = [];
  let stopped = false;
  return {
    port,
    pid,
    dataDir: spec.dataDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (paused.length > 0) this.resume();
      await terminate(child, exited, spec.stopSignal);
      rmSync(spec.dataDir, { recursive: true, force: true });
    },
    pause() {
      if (stopped) return;
      // The parent first, so it forks no new child after the tree was listed.
      const tree = [pid, ...descendants(pid)];
      for (const member of tree) signal(member, 'SIGSTOP');
      paused = [...new Set([...paused, ...tree])];
    },
    resume() {
      for (const member of paused) signal(member, 'SIGCONT');
      paused = [];
    },
  };
}

/** Signal, wait for the exit (bounded), SIGKILL the whole tree if it is still there. */
async function terminate(child: ChildProcess, exited: Promise<void>, first: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const pid = child.pid!;
  signal(pid, first);
  const timedOut = await Promise.race([exited.then(() => false), sleep(STOP_TIMEOUT_MS).then(() => true)]);
  if (timedOut) {
    killTree(pid, 'SIGKILL');
    await Promise.race([exited, sleep(STOP_TIMEOUT_MS)]);
  }
  running.delete(child);
}

function killTree(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  for (const member of [pid, ...descendants(pid)]) signal(member, sig);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Every process below `root`, read from /proc (PostgreSQL backends put themselves in their own process groups). */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ppid = Number(fields[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

function postgresBinDir(): string {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base)
    ? readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'postgres'))).sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) throw new Error('no PostgreSQL server under /usr/lib/postgresql/*/bin');
  return join(base, versions[0]!, 'bin');
}

function systemUser(name: string): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((entry) => entry.startsWith(`${name}:`));
  if (!line) throw new Error(`system user ${name} not found`);
  const fields = line.split(':');
  return { uid: Number(fields[2]), gid: Number(fields[3]) };
}

// Readiness probes: each one is a real client running a real query, bounded in time.

function redisPing(port: number, overTls = false): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = overTls ? tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }) : net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => done(false), 2_000);
    let reply = '';
    function done(ok: boolean): void {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    }
    socket.on(overTls ? 'secureConnect' : 'connect', () => socket.write('*1\r\n$4\r\nPING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (reply.includes('\r\n')) done(reply === '+PONG\r\n');
    });
    socket.on('error', () => done(false));
    socket.on('close', () => done(false));
  });
}

async function postgresQuery(port: number, overTls = false): Promise<boolean> {
  const { default: pg } = await import('pg');
  const ssl = overTls ? { ssl: { rejectUnauthorized: false } } : {};
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000, ...ssl });
  client.on('error', () => {});
  try {
    await client.connect();
    const result = await client.query('SELECT 1 AS one');
    return result.rows[0]?.one === 1;
  } finally {
    await client.end().catch(() => {});
  }
}

async function mariadbQuery(port: number, overTls = false): Promise<boolean> {
  const mysql = await import('mysql2/promise');
  const ssl = overTls ? { ssl: { rejectUnauthorized: false } } : {};
  const connection = await mysql.createConnection({ host: '127.0.0.1', port, user: MARIADB_USER, connectTimeout: 2_000, ...ssl });
  try {
    const [rows] = await connection.query('SELECT 1 AS one');
    return (rows as Array<{ one: number }>)[0]?.one === 1;
  } finally {
    await connection.end().catch(() => {});
  }
}
