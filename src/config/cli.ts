import { existsSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { parseArgs } from 'node:util';
import { buildInfo, PACKAGE_ROOT } from '../build-info.js';
import { ConfigError, formatPath, type ConfigIssue } from './issues.js';
import { loadConfigFile, type ConfigOverrides } from './load.js';
import { loadConfigFileOffThread } from './off-thread.js';
import { resolveConfig, type Locate } from './resolve.js';
import type { ProxyConfig } from './schema.js';
import { closest } from './suggest.js';
import { parseDiscoverCli, type DiscoverCommand } from '../discover/cli.js';

// argv -> one command. A run or check carries `load()`, which reads and validates the
// config each time it is called; a run also carries loadOffThread(), the same in a worker
// thread, which main.ts calls on SIGHUP. One-route flags are
// turned into the same plain object a YAML file gives and go through the same
// validator, so they get the same defaults and errors; their errors name the flag.
//
// Public API:
//   parseCli(argv, { cwd? }): CliCommand     never throws; bad usage is { kind: 'error' }
//   CliCommand
//   defaultConfigPath(cwd?): string           config/keepalive-proxy.yaml in cwd, else in the package (npx from a clone)
//   HELP_TEXT

export type CliCommand =
  | {
      readonly kind: 'run';
      /** The config file, or null for a one-route run from flags. */
      readonly configPath: string | null;
      /** Whether SIGHUP can reload (only with a file). */
      readonly reloadable: boolean;
      /** What is being run, for messages: the file, or "(command line)". */
      readonly source: string;
      /** Reads and validates; throws ConfigError. */
      load(): ProxyConfig;
      /** load() in a worker thread, for SIGHUP: the event loop keeps serving traffic meanwhile. */
      loadOffThread(): Promise<ProxyConfig>;
    }
  | {
      readonly kind: 'check';
      readonly configPath: string | null;
      readonly source: string;
      load(): ProxyConfig;
    }
  | Extract<DiscoverCommand, { kind: 'discover' }>
  | { readonly kind: 'version'; readonly version: string }
  | { readonly kind: 'help'; readonly text: string }
  | { readonly kind: 'error'; readonly message: string };

const CONFIG_FILE = 'config/keepalive-proxy.yaml';
const COMMAND_LINE = '(command line)';

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
  admin: { type: 'string' },
  'log-level': { type: 'string' },
  workers: { type: 'string' },
  listen: { type: 'string' },
  upstream: { type: 'string' },
  protocol: { type: 'string' },
  name: { type: 'string' },
  'heartbeat-every': { type: 'string' },
  'heartbeat-timeout': { type: 'string' },
  'idle-timeout': { type: 'string' },
  'keepalive-client': { type: 'string' },
  'keepalive-upstream': { type: 'string' },
  'user-timeout': { type: 'string' },
  allow: { type: 'string', multiple: true },
} as const;

/** Flags that describe the one route of a run without a file. */
const ROUTE_FLAGS = [
  'listen',
  'upstream',
  'protocol',
  'name',
  'heartbeat-every',
  'heartbeat-timeout',
  'idle-timeout',
  'keepalive-client',
  'keepalive-upstream',
  'user-timeout',
  'allow',
] as const;

/** The keepalive flags, each the three keys of one `keepalive.<side>` section. */
const KEEPALIVE_FLAGS = { 'keepalive-client': 'client', 'keepalive-upstream': 'upstream' } as const;
const KEEPALIVE_FORMAT = 'IDLE,INTERVAL,COUNT (e.g. 30s,5s,3)';

/** The route name when --name is not given. */
const FLAGS_ROUTE_NAME = 'default';

export const HELP_TEXT = `keepalive-proxy: a local forwarding proxy that keeps upstream connections alive
(TCP keepalive, application heartbeats, warm and persistent pools) for its clients.

Usage:
  keepalive-proxy [--config FILE] [--admin HOST:PORT|off] [--log-level LEVEL] [--workers N|auto]
  keepalive-proxy --listen HOST:PORT --upstream HOST:PORT|URL [route flags]
  keepalive-proxy check [--config FILE]      validate only; print FILE:LINE:COL key.path: message per error
  keepalive-proxy discover --upstream HOST:PORT [--protocol P] [--max 30m] [--parallel N] [--json]
                                             find the idle timeout of the path (discover --help)
  keepalive-proxy --version | --help

Options:
  -c, --config FILE            YAML config (default: ${CONFIG_FILE}, looked up in the current
                               directory, then in the package)
      --admin HOST:PORT|off    admin listener for /metrics /healthz /readyz /connections
                               (default 127.0.0.1:9901; overrides admin.listen of the file)
      --log-level LEVEL        trace | debug | info | warn | error (overrides log.level)
      --workers N|auto         processes serving the routes (default 1; auto = one per core;
                               overrides workers of the file)
  -v, --version                print the version
  -h, --help                   print this help

One route without a file (cannot be combined with --config):
      --listen HOST:PORT       where clients connect, e.g. 127.0.0.1:15432
      --upstream HOST:PORT|URL where to forward (an http:// or https:// URL for --protocol http)
      --protocol P             tcp | redis | postgres | mysql | http | http-forward (default tcp)
      --name NAME              route name in logs and metrics (default "${FLAGS_ROUTE_NAME}")
      --heartbeat-every D      application heartbeat after D of silence (redis, postgres, mysql,
      --heartbeat-timeout D      http WebSocket pings); the reply is awaited for the timeout
      --idle-timeout D         close a connection silent for D (default 0: never)
      --keepalive-upstream IDLE,INTERVAL,COUNT
                               kernel TCP keepalive on upstream sockets: first probe after IDLE
                               of silence, then every INTERVAL, dead after COUNT unanswered
                               (whole seconds; default 30s,5s,3)
      --keepalive-client IDLE,INTERVAL,COUNT
                               the same on accepted client sockets (default 60s,10s,6)
      --user-timeout D         TCP_USER_TIMEOUT on upstream sockets: unacknowledged data for D
                               closes it (default 30s; 0 = kernel default)
      --allow HOST:PORT        http-forward destination pattern, * wildcards; repeat for more

Durations are strings with a unit: 250ms, 20s, 5m, 2h, 1h30m; 0 means off.
Signals: SIGHUP reloads the config file; SIGTERM/SIGINT drain and exit.
`;

export function parseCli(argv: readonly string[], options: { cwd?: string } = {}): CliCommand {
  const cwd = options.cwd ?? process.cwd();
  // discover has flags of its own (discover/cli.ts).
  if (argv[0] === 'discover') return parseDiscoverCli(argv.slice(1));
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    return { kind: 'error', message: usageMessage(error) };
  }
  const { values, positionals } = parsed;
  if (values.help) return { kind: 'help', text: HELP_TEXT };
  if (values.version) return { kind: 'version', version: buildInfo().version };

  const [command, ...extra] = positionals;
  if (command !== undefined && command !== 'check') {
    const guess = closest(command, ['check', 'discover']);
    return { kind: 'error', message: `unknown command "${command}"${guess ? `; did you mean "${guess}"?` : ' (the commands are check and discover)'}` };
  }
  if (extra.length > 0) return { kind: 'error', message: `unexpected argument "${extra[0]}"` };

  const routeFlags = ROUTE_FLAGS.filter((flag) => values[flag] !== undefined);
  for (const flag of Object.keys(KEEPALIVE_FLAGS) as Array<keyof typeof KEEPALIVE_FLAGS>) {
    const value = values[flag];
    if (value !== undefined && keepaliveParts(value) === null) return { kind: 'error', message: `--${flag} takes ${KEEPALIVE_FORMAT}, not "${value}"` };
  }
  const overrides: ConfigOverrides = {
    ...(values.admin !== undefined ? { admin: values.admin } : {}),
    ...(values['log-level'] !== undefined ? { logLevel: values['log-level'] } : {}),
    ...(values.workers !== undefined ? { workers: countOrWord(values.workers) } : {}),
  };
  const kind = command === 'check' ? 'check' : 'run';

  if (routeFlags.length > 0) {
    if (values.config !== undefined) {
      return { kind: 'error', message: `--${routeFlags[0]} cannot be combined with --config: put the route in the file` };
    }
    const raw = flagsToRaw(values);
    const load = (): ProxyConfig => resolveFlags(raw, cwd);
    const loadOffThread = async (): Promise<ProxyConfig> => load(); // nothing to parse: flags are a few bytes
    return kind === 'check'
      ? { kind, configPath: null, source: COMMAND_LINE, load }
      : { kind, configPath: null, reloadable: false, source: COMMAND_LINE, load, loadOffThread };
  }

  // The file as the user typed it, so issues read `config/x.yaml:3:5 ...` (made absolute only for another cwd).
  const given = values.config;
  const configPath = given === undefined ? defaultConfigPath(cwd) : cwd === process.cwd() ? given : resolvePath(cwd, given);
  const load = (): ProxyConfig => loadConfigFile(configPath, overrides);
  const loadOffThread = (): Promise<ProxyConfig> => loadConfigFileOffThread(configPath, overrides);
  return kind === 'check'
    ? { kind, configPath, source: configPath, load }
    : { kind, configPath, reloadable: true, source: configPath, load, loadOffThread };
}

/** config/keepalive-proxy.yaml in `cwd` if it exists, else the package's own (so `npx keepalive-proxy` works from a clone). */
export function defaultConfigPath(cwd: string = process.cwd()): string {
  const local = resolvePath(cwd, CONFIG_FILE);
  if (existsSync(local)) return local;
  const packaged = resolvePath(PACKAGE_ROOT, CONFIG_FILE);
  return existsSync(packaged) ? packaged : local;
}

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

/** The plain object a YAML file with one route would give. */
function flagsToRaw(values: Values): Record<string, unknown> {
  const route: Record<string, unknown> = { name: values.name ?? FLAGS_ROUTE_NAME };
  if (values.listen !== undefined) route['listen'] = values.listen;
  if (values.upstream !== undefined) route['upstream'] = values.upstream;
  if (values.protocol !== undefined) route['protocol'] = values.protocol;
  if (values['idle-timeout'] !== undefined) route['idleTimeout'] = values['idle-timeout'];
  if (values['user-timeout'] !== undefined) route['userTimeout'] = values['user-timeout'];
  for (const [flag, side] of Object.entries(KEEPALIVE_FLAGS) as Array<[keyof typeof KEEPALIVE_FLAGS, string]>) {
    const parts = values[flag] === undefined ? null : keepaliveParts(values[flag]);
    if (parts === null) continue;
    const keepalive = (route['keepalive'] ??= {}) as Record<string, unknown>;
    keepalive[side] = { idle: parts[0], interval: parts[1], count: countOrWord(parts[2]) };
  }
  if (values.allow !== undefined) route['allow'] = values.allow;
  if (values['heartbeat-every'] !== undefined || values['heartbeat-timeout'] !== undefined) {
    route['heartbeat'] = {
      ...(values['heartbeat-every'] !== undefined ? { every: values['heartbeat-every'] } : {}),
      ...(values['heartbeat-timeout'] !== undefined ? { timeout: values['heartbeat-timeout'] } : {}),
    };
  }
  const raw: Record<string, unknown> = { routes: [route] };
  if (values.admin !== undefined) raw['admin'] = { listen: values.admin };
  if (values['log-level'] !== undefined) raw['log'] = { level: values['log-level'] };
  if (values.workers !== undefined) raw['workers'] = countOrWord(values.workers);
  return raw;
}

/** A flag's digits as the number YAML would give; anything else as written, for the validator to judge. */
function countOrWord(value: string): string | number {
  return /^\d+$/.test(value) ? Number(value) : value;
}

/** IDLE,INTERVAL,COUNT split in three non-empty parts, or null; the validator judges each part. */
function keepaliveParts(value: string): [string, string, string] | null {
  const parts = value.split(',').map((part) => part.trim());
  return parts.length === 3 && parts.every((part) => part !== '') ? (parts as [string, string, string]) : null;
}

/** Key path -> the flag that set it; the longest matching prefix wins. */
const FLAG_OF_PATH: ReadonlyArray<readonly [string, string]> = [
  ['routes[0].heartbeat.timeout', '--heartbeat-timeout'],
  ['routes[0].heartbeat', '--heartbeat-every'],
  ['routes[0].idleTimeout', '--idle-timeout'],
  ['routes[0].userTimeout', '--user-timeout'],
  ['routes[0].keepalive.client', '--keepalive-client'],
  ['routes[0].keepalive.upstream', '--keepalive-upstream'],
  ['routes[0].upstream', '--upstream'],
  ['routes[0].protocol', '--protocol'],
  ['routes[0].listen', '--listen'],
  ['routes[0].allow', '--allow'],
  ['routes[0].name', '--name'],
  ['admin.listen', '--admin'],
  ['log.level', '--log-level'],
  ['workers', '--workers'],
];

function resolveFlags(raw: Record<string, unknown>, cwd: string): ProxyConfig {
  const locate: Locate = (path) => {
    const text = formatPath(path);
    const match = FLAG_OF_PATH.find(([prefix]) => text === prefix || text.startsWith(`${prefix}.`) || text.startsWith(`${prefix}[`));
    return { file: COMMAND_LINE, line: 0, col: 0, flag: match?.[1] ?? 'command line' };
  };
  try {
    return resolveConfig(raw, { source: null, baseDir: cwd, locate });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    // "required key is missing: the address..." reads as "--listen is required: the address..." for a flag.
    const issues = error.issues.map(
      (issue): ConfigIssue => ({ ...issue, message: issue.message.replace(/^required key is missing: /, 'is required: ') }),
    );
    throw new ConfigError(issues, error.omitted);
  }
}

function usageMessage(error: unknown): string {
  const { code, message } = error as { code?: string; message: string };
  // "Unknown option '--x'...", "Option '-c, --config <value>' argument missing": name the long form.
  const quoted = message.match(/'([^']+)'/)?.[1] ?? '';
  const option = quoted.match(/--[\w-]+(=\S*)?/)?.[0] ?? quoted.match(/-\w/)?.[0];
  if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option) {
    const names = Object.keys(OPTIONS).map((name) => `--${name}`);
    const guess = closest(option.replace(/=.*$/, ''), names);
    return `unknown option ${option}${guess ? `; did you mean ${guess}?` : ''}`;
  }
  if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && option) {
    if (message.includes('argument missing')) return `${option} needs a value`;
    // "--idle-timeout -1s": parseArgs will not take a value that looks like an option.
    if (message.includes('ambiguous')) return `${option} needs a value; write one that starts with "-" as ${option}=-VALUE`;
    return `${option} takes no value`;
  }
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') return message;
  return message;
}
