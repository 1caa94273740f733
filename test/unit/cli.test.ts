import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultConfigPath, parseCli, type CliCommand } from '../../src/config/cli.js';
import { ConfigError, formatIssues } from '../../src/config/load.js';
import { DEFAULTS, type ProxyConfig } from '../../src/config/schema.js';

const REPO_ROOT = resolve(import.meta.dirname, '..', '..');
const scratch = mkdtempSync(join(tmpdir(), 'kp-cli-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const VALID = 'routes:\n  - { name: a, listen: "127.0.0.1:10001", upstream: "127.0.0.1:20001" }\n';

function loaded(command: CliCommand): ProxyConfig {
  if (command.kind !== 'run' && command.kind !== 'check') throw new Error(`expected run or check, got ${JSON.stringify(command)}`);
  return command.load();
}

/** The formatted issues thrown by a command's load(). */
function issuesOf(command: CliCommand): string[] {
  try {
    loaded(command);
  } catch (error) {
    if (error instanceof ConfigError) return formatIssues(error.issues).split('\n');
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('parseCli: help, version, usage errors', () => {
  it('prints help that lists every option', () => {
    for (const argv of [['--help'], ['-h'], ['check', '--help']]) {
      const command = parseCli(argv);
      expect(command.kind).toBe('help');
      const text = (command as { text: string }).text;
      for (const flag of ['--config', '-c', 'check', '--admin', '--log-level', '--version', '--listen', '--upstream', '--protocol', '--name', '--heartbeat-every', '--heartbeat-timeout', '--idle-timeout', '--allow', '--keepalive-upstream', '--keepalive-client', '--user-timeout']) {
        expect(text).toContain(flag);
      }
    }
  });

  it('prints the package version', () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(parseCli(['--version'])).toEqual({ kind: 'version', version });
    expect(parseCli(['-v'])).toEqual({ kind: 'version', version });
  });

  it.each([
    [['--listn', '127.0.0.1:1'], 'unknown option --listn; did you mean --listen?'],
    [['--frobnicate'], 'unknown option --frobnicate'],
    [['--config'], '--config needs a value'],
    [['-c'], '--config needs a value'],
    [['chek'], 'unknown command "chek"; did you mean "check"?'],
    [['start'], 'unknown command "start" (the commands are check and discover)'],
    [['check', 'extra'], 'unexpected argument "extra"'],
    [['--config', 'x.yaml', '--listen', '127.0.0.1:1'], '--listen cannot be combined with --config: put the route in the file'],
  ])('%j is a usage error', (argv, message) => {
    expect(parseCli(argv)).toEqual({ kind: 'error', message });
  });
});

describe('parseCli: a config file', () => {
  const file = join(scratch, 'ok.yaml');
  writeFileSync(file, VALID);

  it('runs the file given with --config, -c or --config=, reloadable', () => {
    for (const argv of [['--config', file], ['-c', file], [`--config=${file}`]]) {
      const command = parseCli(argv);
      expect(command).toMatchObject({ kind: 'run', configPath: file, reloadable: true, source: file });
      expect(loaded(command).routes[0]!.name).toBe('a');
    }
  });

  it('checks a file, reporting FILE:LINE:COL key.path: message', () => {
    const bad = join(scratch, 'bad.yaml');
    writeFileSync(bad, 'routes:\n  - name: a\n    listen: 127.0.0.1:10001\n    upstream: 127.0.0.1:20001\n    idleTimeout: 30\n');
    const command = parseCli(['check', '--config', bad]);
    expect(command).toMatchObject({ kind: 'check', configPath: bad, source: bad });
    expect(issuesOf(command)).toEqual([`${bad}:5:18 routes[0].idleTimeout: durations are strings with a unit, e.g. "30s"`]);
    expect(loaded(parseCli(['check', '-c', file])).routes).toHaveLength(1);
  });

  it('reads the file again at each load() (SIGHUP)', () => {
    const changing = join(scratch, 'changing.yaml');
    writeFileSync(changing, VALID);
    const command = parseCli(['-c', changing]);
    expect(loaded(command).routes[0]!.listen.port).toBe(10001);
    writeFileSync(changing, VALID.replace('10001', '10009'));
    expect(loaded(command).routes[0]!.listen.port).toBe(10009);
  });

  it('lets --admin and --log-level override the file', () => {
    expect(loaded(parseCli(['-c', file, '--admin', '127.0.0.1:0', '--log-level', 'debug']))).toMatchObject({
      admin: { listen: { host: '127.0.0.1', port: 0 } },
      log: { level: 'debug' },
    });
    expect(loaded(parseCli(['-c', file, '--admin', 'off'])).admin.listen).toBeNull();
    expect(issuesOf(parseCli(['-c', file, '--admin', '0.0.0.0']))).toEqual([
      '--admin: "0.0.0.0": missing port; expected "host:port", e.g. "0.0.0.0:8080" (or off to disable the admin listener)',
    ]);
  });

  it('names an unreadable file at 1:1', () => {
    const missing = join(scratch, 'missing.yaml');
    expect(issuesOf(parseCli(['check', '-c', missing]))).toEqual([`${missing}:1:1 (root): cannot read the config file: no such file`]);
  });

  it('resolves a relative --config against the given cwd', () => {
    const command = parseCli(['--config', 'ok.yaml'], { cwd: scratch });
    expect(command).toMatchObject({ kind: 'run', configPath: file });
  });
});

describe('the default config path', () => {
  it('is config/keepalive-proxy.yaml in the current directory when it exists', () => {
    const dir = join(scratch, 'with-config');
    mkdirSync(join(dir, 'config'), { recursive: true });
    writeFileSync(join(dir, 'config', 'keepalive-proxy.yaml'), VALID);
    expect(defaultConfigPath(dir)).toBe(join(dir, 'config', 'keepalive-proxy.yaml'));
    expect(parseCli([], { cwd: dir })).toMatchObject({ kind: 'run', configPath: join(dir, 'config', 'keepalive-proxy.yaml') });
  });

  it("is the package's own config otherwise, so npx works from anywhere in a clone", () => {
    const empty = join(scratch, 'empty');
    mkdirSync(empty, { recursive: true });
    const packaged = join(REPO_ROOT, 'config', 'keepalive-proxy.yaml');
    expect(defaultConfigPath(empty)).toBe(packaged);
    const command = parseCli(['check'], { cwd: empty });
    expect(command).toMatchObject({ kind: 'check', configPath: packaged });
    expect(loaded(command).routes.length).toBeGreaterThan(0);
  });
});

describe('parseCli: one route from flags', () => {
  it('builds a config through the same validator, with the same defaults', () => {
    const command = parseCli(['--listen', '127.0.0.1:15432', '--upstream', 'db.internal:5432']);
    expect(command).toMatchObject({ kind: 'run', configPath: null, reloadable: false, source: '(command line)' });
    const config = loaded(command);
    expect(config.source).toBeNull();
    expect(config.admin.listen).toEqual(DEFAULTS.adminListen);
    expect(config.log.level).toBe(DEFAULTS.logLevel);
    expect(config.routes).toHaveLength(1);
    expect(config.routes[0]).toMatchObject({
      name: 'default',
      protocol: 'tcp',
      listen: { host: '127.0.0.1', port: 15432 },
      upstream: { host: 'db.internal', port: 5432 },
      keepalive: { client: DEFAULTS.keepaliveClient, upstream: DEFAULTS.keepaliveUpstream },
      userTimeoutMs: DEFAULTS.userTimeoutMs,
      connectTimeoutMs: DEFAULTS.connectTimeoutMs,
      heartbeat: null,
    });
  });

  it('takes every route flag', () => {
    const config = loaded(
      parseCli([
        '--listen', '127.0.0.1:16379',
        '--upstream', '127.0.0.1:6379',
        '--protocol', 'redis',
        '--name', 'cache',
        '--heartbeat-every', '20s',
        '--heartbeat-timeout', '5s',
        '--idle-timeout', '1h',
        '--admin', '127.0.0.1:9911',
        '--log-level', 'warn',
      ]),
    );
    expect(config.admin.listen).toEqual({ host: '127.0.0.1', port: 9911 });
    expect(config.log.level).toBe('warn');
    expect(config.routes[0]).toMatchObject({
      name: 'cache',
      protocol: 'redis',
      heartbeat: { everyMs: 20_000, timeoutMs: 5_000, jitter: DEFAULTS.heartbeatJitter },
      idleTimeoutMs: 3_600_000,
    });
  });

  it('asks for --flag=-VALUE, not "takes no value", when any flag with a value gets one starting with "-"', () => {
    const withValue = ['--config', '--admin', '--log-level', '--listen', '--upstream', '--protocol', '--name', '--heartbeat-every', '--heartbeat-timeout', '--idle-timeout', '--keepalive-upstream', '--keepalive-client', '--user-timeout', '--allow'];
    for (const flag of withValue) {
      for (const value of ['-1s', '-x,1s,3', '--x']) {
        expect(parseCli([flag, value])).toEqual({ kind: 'error', message: `${flag} needs a value; write one that starts with "-" as ${flag}=-VALUE` });
      }
    }
  });

  it('sets TCP keepalive on both sides and TCP_USER_TIMEOUT from flags', () => {
    const route = loaded(
      parseCli([
        '--listen', '127.0.0.1:15432',
        '--upstream', 'db:5432',
        '--keepalive-upstream', '20s,4s,3',
        '--keepalive-client', '2m, 15s, 8',
        '--user-timeout', '25s',
      ]),
    ).routes[0]!;
    expect(route.keepalive).toEqual({
      upstream: { idleMs: 20_000, intervalMs: 4_000, count: 3 },
      client: { idleMs: 120_000, intervalMs: 15_000, count: 8 },
    });
    expect(route.userTimeoutMs).toBe(25_000);
    // One side alone keeps the other side's defaults.
    expect(loaded(parseCli(['--listen', '127.0.0.1:1', '--upstream', 'db:1', '--keepalive-upstream', '10s,1s,2'])).routes[0]!.keepalive.client).toEqual(
      DEFAULTS.keepaliveClient,
    );
  });

  it('gives every keepalive flag value a config, a usage error or an issue naming the flag, never a throw', () => {
    // Generated values: every mix of good and bad parts, with wrong part counts.
    const parts = ['30s', '1s', '0', '30', '1.5s', '-1s', '5m', 'x', '', ' ', '3', '127', '128', '0x10', '3.5', '1e3', '2h', 'NaN'];
    const values: string[] = [];
    for (const a of parts) for (const b of parts.slice(0, 8)) for (const c of parts) values.push(`${a},${b},${c}`);
    for (const a of parts) values.push(a, `${a},${a}`, `${a},${a},${a},${a}`);
    let configs = 0;
    for (const flag of ['--keepalive-upstream', '--keepalive-client'] as const) {
      for (const value of values) {
        const command = parseCli(['--listen', '127.0.0.1:1', '--upstream', 'db:1', flag, value]);
        if (command.kind === 'error' && value.startsWith('-')) {
          expect(command.message).toBe(`${flag} needs a value; write one that starts with "-" as ${flag}=-VALUE`);
          continue;
        }
        if (command.kind === 'error') {
          expect(command.message).toBe(`${flag} takes IDLE,INTERVAL,COUNT (e.g. 30s,5s,3), not "${value}"`);
          expect(value.split(',').filter((part) => part.trim() !== '').length).not.toBe(3);
          continue;
        }
        let config: ProxyConfig;
        try {
          config = loaded(command);
        } catch (error) {
          if (!(error instanceof ConfigError)) throw error;
          for (const line of formatIssues(error.issues).split('\n')) expect(line.startsWith(`${flag}: `), line).toBe(true);
          continue;
        }
        configs++;
        const [idle, interval, count] = value.split(',').map((part) => part.trim());
        const side = config.routes[0]!.keepalive[flag === '--keepalive-upstream' ? 'upstream' : 'client'];
        expect(side.count).toBe(Number(count));
        expect([side.idleMs % 1000, side.intervalMs % 1000]).toEqual([0, 0]);
        expect(`${idle},${interval}`).toMatch(/^\d+[smh],\d+[smh]$/);
      }
    }
    expect(configs).toBeGreaterThan(10);
  });

  it('runs an http route and a forward proxy with repeated --allow', () => {
    expect(loaded(parseCli(['--listen', '127.0.0.1:8080', '--protocol', 'http', '--upstream', 'https://api.example.com'])).routes[0]).toMatchObject({
      upstream: { host: 'api.example.com', port: 443 },
      tls: { rejectUnauthorized: true },
    });
    const forward = loaded(
      parseCli(['--listen', '127.0.0.1:3128', '--protocol', 'http-forward', '--allow', '*.example.com:443', '--allow', '10.0.0.5:*']),
    );
    expect(forward.routes[0]!.allow).toEqual(['*.example.com:443', '10.0.0.5:*']);
  });

  it('names the flag in every error', () => {
    expect(
      issuesOf(
        parseCli([
          '--listen', ':15432',
          '--upstream', 'db',
          '--protocol', 'postgress',
          '--name', 'my route',
          '--heartbeat-every', '20',
          '--idle-timeout', '5 m',
          '--admin', '127.0.0.1:x',
          '--log-level', 'loud',
        ]),
      ),
    ).toEqual([
      '--admin: "127.0.0.1:x": port "x" is not a number from 1 to 65535 (or off to disable the admin listener)',
      '--log-level: "loud" is not one of trace | debug | info | warn | error',
      '--protocol: "postgress" is not one of tcp | redis | postgres | mysql | http | http-forward; did you mean "postgres"?',
      '--name: "my route": a route name is 1 to 64 letters, digits, ".", "_" or "-" (it is a metric label)',
      '--listen: ":15432": missing host; write "127.0.0.1:15432" for loopback only or "0.0.0.0:15432" for every interface',
      '--idle-timeout: "5 m": no spaces inside a duration (write e.g. "1h30m")',
      '--heartbeat-every: "20": missing unit after 20; write "20s" or "20ms"',
    ]);
  });

  it('says which flag is missing', () => {
    expect(issuesOf(parseCli(['--listen', '127.0.0.1:1']))).toEqual(['--upstream: is required: the upstream "host:port" to forward to']);
    expect(issuesOf(parseCli(['--upstream', '127.0.0.1:1']))).toEqual([
      '--listen: is required: the address to accept clients on, e.g. "127.0.0.1:15432"',
    ]);
    expect(issuesOf(parseCli(['--listen', '127.0.0.1:1', '--protocol', 'http-forward']))).toEqual([
      '--allow: required for protocol http-forward: a list of allowed destinations like "*.example.com:443" (everything else gets 403)',
    ]);
    expect(issuesOf(parseCli(['--listen', '127.0.0.1:1', '--upstream', 'db:1', '--protocol', 'redis', '--heartbeat-every', '20s']))).toEqual([
      '--heartbeat-timeout: is required: how long to wait for the heartbeat reply (e.g. "5s")',
    ]);
    expect(issuesOf(parseCli(['--listen', '127.0.0.1:1', '--upstream', 'db:1', '--heartbeat-every', '20s', '--heartbeat-timeout', '5s']))).toEqual([
      '--heartbeat-every: protocol tcp has no built-in heartbeat: give heartbeat.send (or sendHex) and expect (or expectHex), or use protocol redis, postgres or mysql',
    ]);
  });

  it('checks flags without running them', () => {
    const command = parseCli(['check', '--listen', '127.0.0.1:1', '--upstream', 'db:1']);
    expect(command).toMatchObject({ kind: 'check', configPath: null, source: '(command line)' });
    expect(loaded(command).routes).toHaveLength(1);
  });
});
