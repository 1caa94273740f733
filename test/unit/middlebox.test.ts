import { describe, expect, it } from 'vitest';
import { ConfigError, formatIssues, parseConfigText } from '../../src/config/load.js';
import { DEFAULTS } from '../../src/config/schema.js';
import { configWarnings, MIDDLEBOX_PRESETS } from '../../src/middlebox.js';

// middlebox presets, `heartbeat: { every: auto }` validation and check's warnings, through
// the real config loader.

const yaml = (...lines: string[]): string => `${lines.join('\n')}\n`;
const route = (protocol: string, ...extra: string[]): string =>
  yaml('routes:', '  - name: r', '    listen: 127.0.0.1:10001', '    upstream: 127.0.0.1:20001', `    protocol: ${protocol}`, ...extra.map((line) => `    ${line}`));

function issuesOf(text: string): string[] {
  try {
    parseConfigText(text, 'test.yaml');
  } catch (error) {
    if (error instanceof ConfigError) return formatIssues(error.issues).split('\n');
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('middlebox presets', () => {
  for (const [name, timeoutMs] of Object.entries(MIDDLEBOX_PRESETS)) {
    it(`${name}: heartbeat and kernel keepalive default safely below ${timeoutMs / 1000}s, and check is quiet`, () => {
      for (const protocol of ['redis', 'postgres', 'mysql', 'tcp']) {
        const config = parseConfigText(route(protocol, `middlebox: ${name}`), 'test.yaml');
        const r = config.routes[0]!;
        expect(r.middlebox).toEqual({ name, idleTimeoutMs: timeoutMs });
        const { idleMs, intervalMs, count } = r.keepalive.upstream;
        expect(idleMs + intervalMs * count).toBeLessThanOrEqual(timeoutMs / 2);
        expect(idleMs).toBeLessThanOrEqual(DEFAULTS.keepaliveUpstream.idleMs);
        if (protocol === 'tcp') expect(r.heartbeat).toBeNull();
        else expect(r.heartbeat!.everyMs).toBeLessThanOrEqual(timeoutMs / 2);
        expect(configWarnings(config)).toEqual([]);
      }
    });
  }

  it('takes a duration, from defaults too, and every generated timeout gives settings below it', () => {
    for (let seconds = 3; seconds < 5_000; seconds = Math.ceil(seconds * 1.3)) {
      const config = parseConfigText(yaml('defaults:', `  middlebox: ${seconds}s`, ...route('redis').split('\n')), 'test.yaml');
      const r = config.routes[0]!;
      const { idleMs, intervalMs, count } = r.keepalive.upstream;
      expect(idleMs, `${seconds}s`).toBeGreaterThanOrEqual(1_000);
      expect(idleMs + intervalMs * count, `${seconds}s`).toBeLessThan(seconds * 1_000);
      expect(r.heartbeat!.everyMs, `${seconds}s`).toBeLessThan(seconds * 1_000);
      expect(r.heartbeat!.timeoutMs).toBeLessThanOrEqual(r.heartbeat!.everyMs);
    }
  });

  it('rejects unknown names with a hint, and timeouts too short to stay below', () => {
    expect(issuesOf(route('redis', 'middlebox: aws-nbl'))).toEqual([
      'test.yaml:6:16 routes[0].middlebox: "aws-nbl" is not one of aws-nlb | aws-alb | azure-lb | gcp-lb | gcp-nat | k8s-conntrack or a duration; did you mean "aws-nlb"?',
    ]);
    expect(issuesOf(route('redis', 'middlebox: 2s'))[0]).toMatch(/routes\[0\]\.middlebox: a middlebox idle timeout must be at least 3s/);
  });

  it('a written heartbeat wins over the preset, and check warns when it is not safely below', () => {
    const config = parseConfigText(route('redis', 'middlebox: aws-alb', 'heartbeat: { every: 50s, timeout: 5s }', 'keepalive: { upstream: { idle: 40s } }'), 'test.yaml');
    expect(config.routes[0]!.heartbeat!.everyMs).toBe(50_000);
    const warnings = configWarnings(config);
    expect(warnings).toContainEqual(expect.stringMatching(/^route "r": heartbeat.every 50s is not safely below aws-alb's idle timeout of 1m/));
    expect(warnings).toContainEqual(expect.stringMatching(/^route "r": keepalive.upstream idle \+ interval x count = 55s is not safely below/));
  });

  it('check warns about pools that park connections past the middlebox and an idleTimeout below the heartbeat', () => {
    const warm = configWarnings(parseConfigText(route('redis', 'middlebox: 60s', 'pool: { warm: 2, maxIdle: 5m }'), 'test.yaml'));
    expect(warm).toContainEqual(expect.stringMatching(/pool.maxIdle 5m: parked connections may idle past 1m/));
    const http = configWarnings(parseConfigText(yaml('routes:', '  - name: h', '    listen: 127.0.0.1:10002', '    protocol: http', '    upstream: http://127.0.0.1:8080', '    middlebox: aws-alb', '    pool: { idleTimeout: 50s }'), 'test.yaml'));
    expect(http).toContainEqual(expect.stringMatching(/pool.idleTimeout 50s: parked connections may idle past/));
    const idle = configWarnings(parseConfigText(route('redis', 'idleTimeout: 10s', 'heartbeat: { every: 20s, timeout: 5s }'), 'test.yaml'));
    expect(idle).toEqual(['route "r": idleTimeout 10s is not longer than heartbeat.every 20s: the heartbeat could never fire']);
  });
});

describe('heartbeat: { every: auto }', () => {
  it('starts at min, keeps its bounds, and defaults them', () => {
    const r = parseConfigText(route('redis', 'heartbeat: { every: auto, min: 2s, max: 30s, timeout: 1s }'), 'test.yaml').routes[0]!;
    expect(r.heartbeat).toMatchObject({ everyMs: 2_000, timeoutMs: 1_000, adaptive: { minMs: 2_000, maxMs: 30_000 } });
    const d = parseConfigText(route('postgres', 'heartbeat: { every: auto, timeout: 5s }'), 'test.yaml').routes[0]!;
    expect(d.heartbeat!.adaptive).toEqual(DEFAULTS.adaptiveHeartbeat);
  });

  it('rejects min >= max, min/max without auto, and bad values where they are written', () => {
    expect(issuesOf(route('redis', 'heartbeat: { every: auto, min: 30s, max: 30s, timeout: 1s }'))).toEqual([
      'test.yaml:6:46 routes[0].heartbeat.max: heartbeat.max (30s) must be longer than heartbeat.min (30s)',
    ]);
    expect(issuesOf(route('redis', 'heartbeat: { every: 10s, max: 30s, timeout: 1s }'))[0]).toMatch(/routes\[0\]\.heartbeat\.max: heartbeat.max is for every: auto/);
    expect(issuesOf(route('redis', 'heartbeat: { every: auto, min: 500ms, timeout: 1s }'))[0]).toMatch(/routes\[0\]\.heartbeat\.min: must be at least 1s/);
    expect(issuesOf(route('redis', 'heartbeat: { every: automatic, timeout: 1s }'))[0]).toMatch(/routes\[0\]\.heartbeat\.every:/);
  });

  it('stateDir resolves against the config file directory', () => {
    const config = parseConfigText(yaml('stateDir: state', ...route('redis').split('\n')), '/etc/kp/test.yaml');
    expect(config.stateDir).toMatch(/state$/);
  });
});

describe('every: auto on an http route', () => {
  it('is refused with the reason, whatever the other heartbeat keys, while tcp-family routes accept it', () => {
    for (const extra of ['', ', min: 2s', ', min: 2s, max: 1m', ', max: 30s']) {
      const text = yaml('routes:', '  - name: h', '    listen: 127.0.0.1:10001', '    upstream: http://127.0.0.1:20001', '    protocol: http', `    heartbeat: { every: auto, timeout: 2s${extra} }`);
      expect(issuesOf(text).join('\n'), extra).toMatch(/routes\[0\]\.heartbeat\.every: every: auto is for tcp, redis, postgres and mysql routes/);
      expect(parseConfigText(route('redis', `heartbeat: { every: auto, timeout: 2s${extra} }`), 'test.yaml').routes[0]!.heartbeat?.adaptive).toBeDefined();
    }
  });
});

describe('every: auto inherited from defaults by an http route', () => {
  // The outcome must not depend on where auto is written: refused on the route (above), and
  // refused when inherited, at the defaults key and naming each http route that inherits it.
  const defaultsAuto = (extra: string): string[] => ['defaults:', `  heartbeat: { every: auto, timeout: 2s${extra} }`];
  const httpRoute = (name: string, port: number, protocol: string, ...own: string[]): string[] => [
    `  - name: ${name}`,
    `    listen: 127.0.0.1:${port}`,
    ...(protocol === 'http' ? ['    upstream: http://127.0.0.1:20001'] : ['    allow: ["127.0.0.1:*"]']),
    `    protocol: ${protocol}`,
    ...own.map((line) => `    ${line}`),
  ];
  const redisRoute = (port: number): string[] => [`  - name: db${port}`, `    listen: 127.0.0.1:${port}`, '    upstream: 127.0.0.1:6379', '    protocol: redis'];

  it('is refused at the defaults key, naming every http route that inherits it with its place', () => {
    for (const protocol of ['http', 'http-forward']) {
      for (const extra of ['', ', min: 2s', ', max: 1m']) {
        for (let redisFirst = 0; redisFirst < 2; redisFirst++) {
          const routes = redisFirst ? [...redisRoute(10000), ...httpRoute('web', 10001, protocol)] : [...httpRoute('web', 10001, protocol), ...redisRoute(10000)];
          routes.push(...httpRoute('api', 10002, protocol, 'keepalive: { client: { idle: 30s } }'));
          const lines = [...defaultsAuto(extra), 'routes:', ...routes];
          const issues = issuesOf(yaml(...lines));
          const label = `${protocol}${extra} redisFirst=${redisFirst}`;
          expect(issues, label).toHaveLength(2);
          for (const name of ['web', 'api']) {
            const index = redisFirst ? (name === 'web' ? 1 : 2) : name === 'web' ? 0 : 2;
            const line = lines.indexOf(`  - name: ${name}`) + 1;
            expect(issues, label).toContainEqual(
              `test.yaml:2:23 defaults.heartbeat.every: route "${name}" (routes[${index}] at test.yaml:${line}:5) is protocol ${protocol} and inherits every: auto, which is for tcp, redis, postgres and mysql routes; give it a duration (e.g. "20s") or heartbeat: off`,
            );
          }
        }
      }
    }
  });

  it('is refused when the route writes other heartbeat keys but inherits every', () => {
    const issues = issuesOf(yaml(...defaultsAuto(''), 'routes:', ...httpRoute('web', 10001, 'http', 'heartbeat: { timeout: 1s }')));
    expect(issues).toEqual([expect.stringMatching(/^test\.yaml:2:23 defaults\.heartbeat\.every: route "web" \(routes\[0\] at test\.yaml:4:5\) is protocol http and inherits every: auto/)]);
  });

  it('serves tcp-family routes, and an http route that overrides it, unchanged', () => {
    for (const own of ['heartbeat: { every: 20s }', 'heartbeat: off', 'heartbeat: { every: 0 }']) {
      const config = parseConfigText(yaml(...defaultsAuto(''), 'routes:', ...redisRoute(10000), ...httpRoute('web', 10001, 'http', own)), 'test.yaml');
      expect(config.routes[0]!.heartbeat?.adaptive, own).toEqual(DEFAULTS.adaptiveHeartbeat);
      expect(config.routes[1]!.heartbeat, own).toEqual(own.includes('20s') ? expect.objectContaining({ everyMs: 20_000, timeoutMs: 2_000 }) : null);
      expect(config.routes[1]!.heartbeat?.adaptive, own).toBeUndefined();
    }
  });
});
