import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from './net.js';
import { until } from './wait.js';

// Runs the built proxy (dist/main.js) as a child process, exactly as a user does, and
// owns its lifetime: stop() signals it by PID and waits for the exit.

export const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
export const MAIN = join(REPO_ROOT, 'dist', 'main.js');

export interface RunningProxy {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly adminUrl: string;
  readonly configPath: string | null;
  /** Every stdout line parsed as JSON (non-JSON lines kept as { msg }). */
  readonly logs: Array<Record<string, unknown>>;
  /**
   * Waits (bounded) until at least `atLeast` lines match, then returns every match. A line the proxy wrote
   * before some answer reaches this process through its own pipe, maybe after that answer: assert on logs through this.
   */
  logged(match: (line: Record<string, unknown>) => boolean, atLeast?: number, timeoutMs?: number): Promise<Array<Record<string, unknown>>>;
  readonly exited: Promise<number | null>;
  metrics(): Promise<string>;
  connections(): Promise<Array<Record<string, unknown>>>;
  /** Send a signal, wait for the exit (bounded), return the exit code. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  /** Replace the config file (same path, atomically) and send SIGHUP. */
  reload(yaml: string): Promise<void>;
}

export interface StartOptions {
  /** YAML text; `{{admin}}` is replaced by a free admin address. Written to a temp file. */
  yaml?: string;
  /** Extra CLI arguments (e.g. a flags-only run). */
  args?: string[];
  /** Prefix command, e.g. ['ip', 'netns', 'exec', 'ns1'] (then the admin URL is only reachable inside). */
  wrap?: string[];
  /** Wait for /readyz before resolving (default true). */
  waitReady?: boolean;
  env?: NodeJS.ProcessEnv;
}

export async function startProxy(options: StartOptions): Promise<RunningProxy> {
  const givenAdmin = options.args?.indexOf('--admin') ?? -1;
  const adminAddress = givenAdmin >= 0 ? options.args![givenAdmin + 1]! : `127.0.0.1:${await freePort()}`;
  let configPath: string | null = null;
  let configDir: string | null = null;
  const args = [...(options.args ?? [])];
  if (options.yaml !== undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'kp-test-'));
    configDir = dir;
    configPath = join(dir, 'config.yaml');
    writeFileSync(configPath, options.yaml.replaceAll('{{admin}}', adminAddress));
    args.push('--config', configPath);
  } else if (!args.includes('--admin')) {
    args.push('--admin', adminAddress);
  }
  const command = [...(options.wrap ?? []), process.execPath, MAIN, ...args];
  const child = spawn(command[0]!, command.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...options.env },
  });
  const logs: Array<Record<string, unknown>> = [];
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    partial += text;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line) continue;
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ msg: line });
      }
    }
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  // Resolves once the last log lines are read too: after 'exit' the pipe may still hold them. A worker that
  // outlives the proxy holds the pipe open, so the wait for its end is bounded.
  const stdoutEnded = new Promise<void>((resolveEnd) => child.stdout!.once('close', resolveEnd));
  const exited = new Promise<number | null>((resolveExit) =>
    child.on('exit', (code) => {
      if (configDir) rmSync(configDir, { recursive: true, force: true });
      const bound = setTimeout(() => resolveExit(code), 2_000);
      void stdoutEnded.then(() => {
        clearTimeout(bound);
        resolveExit(code);
      });
    }),
  );
  const adminUrl = `http://${adminAddress}`;
  const running: RunningProxy = {
    child,
    pid: child.pid!,
    adminUrl,
    configPath,
    logs,
    logged: async (match, atLeast = 1, timeoutMs = 5_000) => {
      const matching = () => logs.filter(match);
      await until(() => matching().length >= atLeast, timeoutMs, `${atLeast} matching log line(s); last lines: ${JSON.stringify(logs.slice(-3))}`, 20);
      return matching();
    },
    exited,
    metrics: async () => (await fetch(`${adminUrl}/metrics`)).text(),
    connections: async () => (await (await fetch(`${adminUrl}/connections`)).json()) as Array<Record<string, unknown>>,
    stop: async (signal = 'SIGTERM', timeoutMs = 10_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    reload: async (yaml: string) => {
      if (!configPath) throw new Error('reload needs a config file');
      replaceFile(configPath, yaml.replaceAll('{{admin}}', adminAddress));
      child.kill('SIGHUP');
    },
  };
  if (options.waitReady !== false && !options.wrap) {
    try {
      await until(
        async () => {
          // A proxy killed by a signal has no exit code: without this it reads as 20 s of refused fetches.
          if (child.exitCode !== null || child.signalCode !== null) throw new Error(`proxy exited with ${child.exitCode ?? child.signalCode}: ${stderr}`);
          const answer = await fetch(`${adminUrl}/readyz`);
          if (!answer.ok) throw new Error(`/readyz answered ${answer.status}: ${(await answer.text()).trim()}`);
          return true;
        },
        20_000,
        'proxy /readyz',
        50,
      );
    } catch (error) {
      await running.stop('SIGKILL');
      throw new Error(`${String(error)}\nstderr: ${stderr}\nlogs: ${JSON.stringify(logs.slice(-5))}`);
    }
  }
  return running;
}

/**
 * Writes `text` aside and renames it over `path`, as deploy tools swap a config: a reload
 * still reading the file (its loader thread can start late on a loaded machine) must never
 * see it truncated and half-written by the next reload ("the configuration is empty").
 */
export function replaceFile(path: string, text: string): void {
  const next = `${path}.next`;
  writeFileSync(next, text);
  renameSync(next, path);
}

/** Parse Prometheus text into { 'name{labels}': value } with labels in written order. */
export function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

/** One sample: metric('keepalive_proxy_evictions_total', { route: 'r', reason: 'idle_timeout' }). */
export function sample(values: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels);
  for (const [key, value] of values) {
    const brace = key.indexOf('{');
    const metricName = brace === -1 ? key : key.slice(0, brace);
    if (metricName !== name) continue;
    const labelText = brace === -1 ? '' : key.slice(brace);
    if (wanted.every(([k, v]) => labelText.includes(`${k}="${v}"`))) return value;
  }
  return 0;
}

/**
 * The built proxy with one route of `protocol` on a free port to 127.0.0.1:upstreamPort;
 * `routeLines` are more YAML lines of the route (indented four spaces), `topLines` lines at
 * the top level. The caller stops it.
 */
export async function startOneRoute(options: {
  readonly name: string;
  readonly protocol: string;
  readonly upstreamPort: number;
  readonly routeLines?: string;
  readonly topLines?: string;
}): Promise<{ proxy: RunningProxy; port: number }> {
  const port = await freePort();
  const proxy = await startProxy({
    yaml: `
admin: { listen: "{{admin}}" }
${options.topLines ?? ''}
routes:
  - name: ${options.name}
    protocol: ${options.protocol}
    listen: 127.0.0.1:${port}
    upstream: 127.0.0.1:${options.upstreamPort}
${options.routeLines ?? ''}
`,
  });
  return { proxy, port };
}
