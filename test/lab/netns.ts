import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';

// Network-namespace topologies for the middlebox lab: three namespaces in a line,
//
//   client 198.18.1.2/24 --- 198.18.1.1 [middle] 198.18.2.1 --- 198.18.2.2/24 server
//
// where the middle is a router with a firewall (forwarding on) or a load balancer
// (forwarding off: the only way through is the proxy process listening on 198.18.1.1).
// Every namespace and process this file creates is recorded so it is removed in destroy(),
// and again by a synchronous 'exit' handler if a test run dies half-way. Only names with
// this process's own prefix are ever swept, so parallel test files never touch each other.

/** Addresses from 198.18.0.0/15 (RFC 2544 benchmarking range): never routed anywhere real. */
export const ADDRESSES = {
  client: '198.18.1.2',
  middleClientSide: '198.18.1.1',
  middleServerSide: '198.18.2.1',
  server: '198.18.2.2',
} as const;

const COMMAND_TIMEOUT_MS = 10_000;
/** A node script in a namespace exits by itself after this long, whatever happens to the test. */
const NODE_MAX_LIFETIME_MS = 10 * 60_000;
/** 'kp' + pid + 'n': the prefix of every namespace this process creates (names stay short). */
const PREFIX = `kp${process.pid}n`;
let labCounter = 0;

const ownedNamespaces = new Set<string>();
const ownedPids = new Set<number>();
const ownedTempDirs = new Set<string>();

/**
 * Whether this process may build labs (root: ip netns, nftables, servers in namespaces). When
 * not, warns that `file` is skipped and what it needs, so a skipped lab never passes unseen.
 */
export function labAllowed(file: string, needs: string): boolean {
  const isRoot = process.getuid?.() === 0;
  if (!isRoot) console.warn(`${file} skipped: the middlebox lab needs root (${needs})`);
  return isRoot;
}

export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command with a deadline; rejects with its stderr on a non-zero exit. */
export function run(command: string, args: readonly string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`${command} ${args.join(' ')} failed: ${error.message}${stderr ? `\n${stderr}` : ''}`));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

/** Runs a command inside a namespace (ip netns exec), bounded in time. */
export function inNs(ns: string, command: string, args: readonly string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<CommandResult> {
  return run('ip', ['netns', 'exec', ns, command, ...args], timeoutMs);
}

/** /proc/sys path of a sysctl key; the net.* entries there belong to the reader's namespace. */
function sysctlPath(key: string): string {
  return `/proc/sys/${key.replaceAll('.', '/')}`;
}

/** Sets a sysctl inside a namespace (no procps needed: a write to /proc/sys from inside it). */
export async function sysctlInNs(ns: string, key: string, value: string | number): Promise<void> {
  await inNs(ns, 'sh', ['-c', 'printf %s "$1" > "$2"', 'sh', String(value), sysctlPath(key)]);
}

/** Reads a sysctl inside a namespace, or in the root namespace when ns is null. */
export async function readSysctlInNs(ns: string | null, key: string): Promise<string> {
  if (ns === null) return readFileSync(sysctlPath(key), 'utf8').trim();
  return (await inNs(ns, 'cat', [sysctlPath(key)])).stdout.trim();
}

/** A process this lab started (haproxy, the proxy under test): killed by PID on cleanup. */
export function ownPid(pid: number): void {
  ownedPids.add(pid);
}

export function disownPid(pid: number): void {
  ownedPids.delete(pid);
}

/** A temp directory removed on cleanup. */
export function ownTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  ownedTempDirs.add(dir);
  return dir;
}

export interface Lab {
  readonly client: string;
  readonly middle: string;
  readonly server: string;
  readonly addresses: typeof ADDRESSES;
  /** Kills the processes started in this lab and deletes its namespaces; safe to call twice. */
  destroy(): Promise<void>;
}

export interface LabOptions {
  /** ip_forward in the middle namespace: true for a firewall/router, false for a proxy-style LB. */
  readonly forwarding: boolean;
}

/** Builds client -- middle -- server namespaces with veth pairs, addresses, routes and loopback. */
export async function createLab(options: LabOptions): Promise<Lab> {
  const id = `${PREFIX}${++labCounter}`;
  const client = `${id}c`;
  const middle = `${id}m`;
  const server = `${id}s`;
  const lab: Lab = {
    client,
    middle,
    server,
    addresses: ADDRESSES,
    destroy: async () => {
      for (const ns of [client, middle, server]) await deleteNamespace(ns);
    },
  };
  try {
    for (const ns of [client, middle, server]) {
      ownedNamespaces.add(ns); // before creating: a failure half-way is still swept
      await run('ip', ['netns', 'add', ns]);
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    // The veths are created directly inside the namespaces, so their names never meet the
    // root namespace and can be the same in every lab (and well under 15 characters).
    await run('ip', ['-n', client, 'link', 'add', 'lab0', 'type', 'veth', 'peer', 'name', 'labc', 'netns', middle]);
    await run('ip', ['-n', server, 'link', 'add', 'lab0', 'type', 'veth', 'peer', 'name', 'labs', 'netns', middle]);
    await configureInterface(client, 'lab0', `${ADDRESSES.client}/24`);
    await configureInterface(middle, 'labc', `${ADDRESSES.middleClientSide}/24`);
    await configureInterface(middle, 'labs', `${ADDRESSES.middleServerSide}/24`);
    await configureInterface(server, 'lab0', `${ADDRESSES.server}/24`);
    await run('ip', ['-n', client, 'route', 'add', 'default', 'via', ADDRESSES.middleClientSide]);
    await run('ip', ['-n', server, 'route', 'add', 'default', 'via', ADDRESSES.middleServerSide]);
    await sysctlInNs(middle, 'net.ipv4.ip_forward', options.forwarding ? 1 : 0);
  } catch (error) {
    await lab.destroy();
    throw error;
  }
  return lab;
}

async function configureInterface(ns: string, name: string, cidr: string): Promise<void> {
  await run('ip', ['-n', ns, 'address', 'add', cidr, 'dev', name]);
  await run('ip', ['-n', ns, 'link', 'set', name, 'up']);
}

/** Kills every owned process still inside the namespace, then deletes it (its veths go with it). */
async function deleteNamespace(ns: string): Promise<void> {
  if (!ownedNamespaces.has(ns)) return;
  for (const pid of await pidsInNamespace(ns)) {
    if (ownedPids.has(pid)) killQuietly(pid, 'SIGKILL');
  }
  await run('ip', ['netns', 'delete', ns]).catch(() => {});
  ownedNamespaces.delete(ns);
}

async function pidsInNamespace(ns: string): Promise<number[]> {
  try {
    const { stdout } = await run('ip', ['netns', 'pids', ns]);
    return stdout.split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Synchronous last-resort cleanup: every owned process, every namespace with our prefix, temp dirs. */
function sweepSync(): void {
  for (const pid of ownedPids) killQuietly(pid, 'SIGKILL');
  ownedPids.clear();
  let listed: string[] = [];
  try {
    listed = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', timeout: COMMAND_TIMEOUT_MS })
      .split('\n')
      .map((line) => line.split(' ')[0] ?? '');
  } catch {
    listed = [];
  }
  // Our own prefix only: a namespace of a parallel test file (another pid) is never touched.
  const ours = new Set([...ownedNamespaces, ...listed.filter((name) => name.startsWith(PREFIX))]);
  for (const ns of ours) {
    try {
      execFileSync('ip', ['netns', 'delete', ns], { stdio: 'ignore', timeout: COMMAND_TIMEOUT_MS });
    } catch {
      // already gone
    }
  }
  ownedNamespaces.clear();
  for (const dir of ownedTempDirs) rmSync(dir, { recursive: true, force: true });
  ownedTempDirs.clear();
}

process.on('exit', sweepSync);
// On SIGINT/SIGTERM: the cleanups of an exit (this sweep, and every other helper's 'exit'
// handler, such as the servers' kill), then death by the signal itself. Not process.exit():
// vitest intercepts it in its workers, so a worker told to stop by its parent stayed alive,
// orphaned, spinning on its parent's closed pipes.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    try {
      process.emit('exit', 128 + constants.signals[signal]);
    } finally {
      process.kill(process.pid, signal); // this handler was `once`: the default action now
    }
  });
}

// ---------------------------------------------------------------------------------------
// A node script running inside a namespace, driven over stdin/stdout as JSON lines.

export type JsonLine = Record<string, unknown>;

export interface NsNode {
  readonly pid: number;
  /** Every JSON line the script printed, in order (each carries `t`, its Date.now()). */
  readonly events: readonly JsonLine[];
  /** Sends { id, ...command } and resolves with the line that answers it ({ id, ok, ... }). */
  request(command: JsonLine, timeoutMs?: number): Promise<JsonLine>;
  /** Index of the next event: pass it to waitFor to ignore what came before. */
  mark(): number;
  /** The first event from index `since` on that matches, or a rejection after timeoutMs. */
  waitFor(match: (event: JsonLine) => boolean, timeoutMs: number, since?: number): Promise<JsonLine>;
  stderr(): string;
  stop(): Promise<void>;
}

// The frame of every script: `emit` prints a JSON line with its time, the script leaves by
// itself after KP_MAX_LIFETIME_MS, and each stdin line { id, op, ... } is answered from the
// script's `ops` table with { id, ok: true, ...result } or { id, ok: false, error, code }.
const SCRIPT_HEAD = String.raw`
import readline from 'node:readline';

setTimeout(() => process.exit(3), Number(process.env.KP_MAX_LIFETIME_MS || 600000)).unref();
const emit = (line) => process.stdout.write(JSON.stringify({ t: Date.now(), ...line }) + '\n');
`;
const SCRIPT_TAIL = String.raw`
const input = readline.createInterface({ input: process.stdin });
input.on('line', async (line) => {
  let request;
  try {
    request = JSON.parse(line);
    const result = await ops[request.op](request);
    emit({ id: request.id, ok: true, ...result });
  } catch (error) {
    emit({ id: request?.id, ok: false, error: String(error?.message ?? error), code: error?.code });
  }
});
// The test process went away (or stopped us): leave with it.
input.on('close', () => process.exit(0));
`;

/**
 * Runs `source` (plain ESM JavaScript) with node inside `ns`, in the frame above: the source
 * defines `const ops = { name(request) { ... } }` and may call emit(); it imports no readline.
 */
export async function nodeInNs(ns: string, source: string): Promise<NsNode> {
  const dir = ownTempDir('kp-lab-node-');
  const file = join(dir, 'script.mjs');
  writeFileSync(file, SCRIPT_HEAD + source + SCRIPT_TAIL);
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, file], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, KP_MAX_LIFETIME_MS: String(NODE_MAX_LIFETIME_MS) },
  });
  if (child.pid === undefined) throw new Error(`could not start node in ${ns}`);
  // `ip netns exec` execs the command in place, so this PID is node's own.
  ownPid(child.pid);
  return wrapJsonLineChild(child);
}

function wrapJsonLineChild(child: ChildProcess): NsNode {
  const events: JsonLine[] = [];
  const listeners = new Set<() => void>();
  let partial = '';
  let stderr = '';
  let nextId = 1;
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line) continue;
      try {
        events.push(JSON.parse(line) as JsonLine);
      } catch {
        events.push({ event: 'stdout', text: line });
      }
    }
    for (const listener of [...listeners]) listener();
  });
  child.stderr!.setEncoding('utf8').on('data', (text: string) => {
    if (stderr.length < 64_000) stderr += text;
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  child.on('exit', () => {
    disownPid(child.pid!);
    for (const listener of [...listeners]) listener();
  });
  child.stdin!.on('error', () => {});

  function waitFor(match: (event: JsonLine) => boolean, timeoutMs: number, since = 0): Promise<JsonLine> {
    return new Promise((resolve, reject) => {
      let scanned = since;
      const check = (): boolean => {
        for (; scanned < events.length; scanned++) {
          const event = events[scanned]!;
          let matched: boolean;
          try {
            matched = match(event);
          } catch (error) {
            // A matcher may throw to say "this event means it will never match".
            finish();
            reject(error as Error);
            return true;
          }
          if (matched) {
            finish();
            resolve(event);
            return true;
          }
        }
        if (child.exitCode !== null || child.signalCode !== null) {
          finish();
          reject(new Error(`node in namespace exited (${child.exitCode ?? child.signalCode}); stderr: ${stderr}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`no matching event within ${timeoutMs} ms`));
      }, timeoutMs);
      const listener = (): void => void check();
      function finish(): void {
        clearTimeout(timer);
        listeners.delete(listener);
      }
      listeners.add(listener);
      check();
    });
  }

  return {
    pid: child.pid!,
    events,
    mark: () => events.length,
    waitFor,
    stderr: () => stderr,
    async request(command, timeoutMs = 10_000) {
      const id = nextId++;
      const since = events.length;
      child.stdin!.write(`${JSON.stringify({ ...command, id })}\n`);
      const reply = await waitFor((event) => event.id === id, timeoutMs, since);
      if (reply.ok !== true) throw new Error(`${String(command.op)} failed: ${String(reply.error)}`);
      return reply;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.end(); // the script exits when its stdin closes
      const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
