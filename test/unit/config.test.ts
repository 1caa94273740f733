import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, formatIssues, loadConfigFile, parseConfigText } from '../../src/config/load.js';
import { DEFAULTS } from '../../src/config/schema.js';
import { makePki } from '../helpers/pki.js';

const REPO_ROOT = resolve(import.meta.dirname, '..', '..');

/** YAML from lines, so a test reads its own line numbers: lines[0] is line 1. */
const yaml = (...lines: string[]): string => `${lines.join('\n')}\n`;

/** The formatted issues of an invalid config; fails when the config is valid. */
function issuesOf(text: string, file = 'test.yaml'): string[] {
  try {
    parseConfigText(text, file);
  } catch (error) {
    if (error instanceof ConfigError) return formatIssues(error.issues).split('\n');
    throw error;
  }
  throw new Error('expected a ConfigError');
}

const ROUTE = ['  - name: a', '    listen: 127.0.0.1:10001', '    upstream: 127.0.0.1:20001'];

describe('a valid config', () => {
  it('resolves the INTERFACE.md example: durations in ms, defaults filled in', () => {
    const config = parseConfigText(
      yaml(
        'admin:',
        '  listen: 127.0.0.1:9901',
        'log:',
        '  level: info',
        'shutdownTimeout: 30s',
        'defaults:',
        '  keepalive:',
        '    client:   { idle: 60s, interval: 10s, count: 6 }',
        '    upstream: { idle: 30s, interval: 5s,  count: 3 }',
        '  userTimeout: 30s',
        '  connectTimeout: 5s',
        '  idleTimeout: 0',
        'routes:',
        '  - name: pg',
        '    listen: 127.0.0.1:15432',
        '    upstream: db.internal:5432',
        '    protocol: postgres',
        '    heartbeat: { every: 20s, timeout: 5s }',
        '    pool: { warm: 2, maxIdle: 5m }',
        '  - name: api',
        '    listen: 127.0.0.1:8080',
        '    protocol: http',
        '    upstream: http://api.internal:8080',
        '    pool: { maxSockets: 32, idleTimeout: 50s, maxAge: 10m, maxRequests: 1000 }',
      ),
      '/etc/kp/config.yaml',
    );
    expect(config.source).toBe('/etc/kp/config.yaml');
    expect(config.admin.listen).toEqual({ host: '127.0.0.1', port: 9901 });
    expect(config.log.level).toBe('info');
    expect(config.shutdownTimeoutMs).toBe(30_000);
    const [pg, api] = config.routes;
    expect(pg).toMatchObject({
      name: 'pg',
      protocol: 'postgres',
      listen: { host: '127.0.0.1', port: 15432 },
      upstream: { host: 'db.internal', port: 5432 },
      upstreamUrl: null,
      keepalive: { client: { idleMs: 60_000, intervalMs: 10_000, count: 6 }, upstream: { idleMs: 30_000, intervalMs: 5_000, count: 3 } },
      userTimeoutMs: 30_000,
      connectTimeoutMs: 5_000,
      idleTimeoutMs: 0,
      maxConnections: 0,
      noDelay: true,
      heartbeat: { everyMs: 20_000, timeoutMs: 5_000, jitter: 0.1 },
      warmPool: { warm: 2, maxIdleMs: 300_000 },
      tls: null,
      allow: [],
    });
    expect(api).toMatchObject({
      name: 'api',
      protocol: 'http',
      upstream: { host: 'api.internal', port: 8080 },
      httpPool: { maxSockets: 32, idleTimeoutMs: 50_000, maxAgeMs: 600_000, maxRequests: 1000 },
      http: DEFAULTS.http,
      warmPool: null,
      tls: null,
    });
    expect(api!.upstreamUrl!.href).toBe('http://api.internal:8080/');
  });

  it('gives a route that sets nothing every default', () => {
    const config = parseConfigText(yaml('routes:', ...ROUTE), 'test.yaml');
    expect(config.admin.listen).toEqual(DEFAULTS.adminListen);
    expect(config.log.level).toBe(DEFAULTS.logLevel);
    expect(config.shutdownTimeoutMs).toBe(DEFAULTS.shutdownTimeoutMs);
    expect(config.routes[0]).toEqual({
      name: 'a',
      protocol: 'tcp',
      listen: { host: '127.0.0.1', port: 10001 },
      upstream: { host: '127.0.0.1', port: 20001 },
      upstreamUrl: null,
      keepalive: { client: DEFAULTS.keepaliveClient, upstream: DEFAULTS.keepaliveUpstream },
      userTimeoutMs: DEFAULTS.userTimeoutMs,
      connectTimeoutMs: DEFAULTS.connectTimeoutMs,
      idleTimeoutMs: DEFAULTS.idleTimeoutMs,
      maxConnections: DEFAULTS.maxConnections,
      noDelay: DEFAULTS.noDelay,
      heartbeat: null,
      responseTimeoutMs: 0,
      warmPool: null,
      httpPool: DEFAULTS.httpPool,
      tls: null,
      upstreamTls: null,
      clientTls: null,
      http: DEFAULTS.http,
      allow: [],
      middlebox: null,
    });
  });

  it('inherits defaults deeply and lets each route override any key', () => {
    const config = parseConfigText(
      yaml(
        'defaults:',
        '  keepalive:',
        '    client: { idle: 120s, interval: 20s, count: 4 }',
        '    upstream: { idle: 40s }',
        '  userTimeout: 10s',
        '  idleTimeout: 1h',
        '  maxConnections: 50',
        '  heartbeat: { every: 30s, timeout: 4s, jitter: 0.2 }',
        '  protocol: redis',
        'routes:',
        '  - name: a',
        '    listen: 127.0.0.1:10001',
        '    upstream: 127.0.0.1:20001',
        '  - name: b',
        '    listen: 127.0.0.1:10002',
        '    upstream: 127.0.0.1:20002',
        '    protocol: postgres',
        '    keepalive: { client: { count: 9 }, upstream: { interval: 2s } }',
        '    userTimeout: 0',
        '    heartbeat: { every: 10s }',
        '    noDelay: false',
        '  - name: c',
        '    listen: 127.0.0.1:10003',
        '    upstream: 127.0.0.1:20003',
        '    heartbeat: off',
        '  - name: d',
        '    listen: 127.0.0.1:10004',
        '    upstream: 127.0.0.1:20004',
        '    heartbeat: { every: 0 }',
      ),
      'test.yaml',
    );
    const [a, b, c, d] = config.routes;
    expect(a).toMatchObject({
      protocol: 'redis',
      keepalive: { client: { idleMs: 120_000, intervalMs: 20_000, count: 4 }, upstream: { idleMs: 40_000, intervalMs: 5_000, count: 3 } },
      userTimeoutMs: 10_000,
      idleTimeoutMs: 3_600_000,
      maxConnections: 50,
      noDelay: true,
      heartbeat: { everyMs: 30_000, timeoutMs: 4_000, jitter: 0.2 },
    });
    expect(b).toMatchObject({
      protocol: 'postgres',
      keepalive: { client: { idleMs: 120_000, intervalMs: 20_000, count: 9 }, upstream: { idleMs: 40_000, intervalMs: 2_000, count: 3 } },
      userTimeoutMs: 0,
      noDelay: false,
      heartbeat: { everyMs: 10_000, timeoutMs: 4_000, jitter: 0.2 },
    });
    expect(c!.heartbeat).toBeNull();
    expect(d!.heartbeat).toBeNull();
  });

  it('applies inherited settings only to the routes whose protocol uses them', () => {
    const config = parseConfigText(
      yaml(
        'defaults:',
        '  pool: { warm: 2, maxIdle: 1m, maxSockets: 8, idleTimeout: 20s }',
        '  heartbeat: { every: 30s, timeout: 4s, sendHex: "0d 0a", expect: "ok" }',
        '  http: { xForwarded: false }',
        '  allow: ["*.example.com:443"]',
        'routes:',
        '  - name: raw',
        '    listen: 127.0.0.1:10001',
        '    upstream: 127.0.0.1:20001',
        '  - name: cache',
        '    listen: 127.0.0.1:10002',
        '    upstream: 127.0.0.1:20002',
        '    protocol: redis',
        '  - name: web',
        '    listen: 127.0.0.1:10003',
        '    upstream: http://127.0.0.1:20003',
        '    protocol: http',
        '  - name: out',
        '    listen: 127.0.0.1:10004',
        '    protocol: http-forward',
      ),
      'test.yaml',
    );
    const [raw, cache, web, out] = config.routes;
    expect(raw!.warmPool).toEqual({ warm: 2, maxIdleMs: 60_000 });
    expect(raw!.heartbeat).toEqual({ everyMs: 30_000, timeoutMs: 4_000, jitter: 0.1, inTransaction: false, maxIdleMs: 0, send: Buffer.from('\r\n'), expect: Buffer.from('ok') });
    expect(raw!.httpPool).toEqual(DEFAULTS.httpPool);
    expect(raw!.http).toEqual(DEFAULTS.http);
    expect(raw!.allow).toEqual([]);
    expect(cache!.heartbeat).toEqual({ everyMs: 30_000, timeoutMs: 4_000, jitter: 0.1, inTransaction: false, maxIdleMs: 0 });
    expect(web!.warmPool).toBeNull();
    expect(web!.httpPool).toEqual({ ...DEFAULTS.httpPool, maxSockets: 8, idleTimeoutMs: 20_000 });
    expect(web!.http.xForwarded).toBe(false);
    expect(web!.heartbeat).toEqual({ everyMs: 30_000, timeoutMs: 4_000, jitter: 0.1, inTransaction: false, maxIdleMs: 0 });
    expect(out!.allow).toEqual(['*.example.com:443']);
    expect(out!.upstream).toBeNull();
  });

  it('reads http.bodyTimeout: 60s by default, inherited from defaults, 0 for off, a bare number refused', () => {
    const route = (http: string): string[] => ['  - name: web', '    listen: 127.0.0.1:10001', '    protocol: http', '    upstream: http://127.0.0.1:20001', ...(http ? [`    http: ${http}`] : [])];
    const timeouts = parseConfigText(
      yaml('defaults:', '  http: { bodyTimeout: 15s }', 'routes:', ...route(''), ...route('{ bodyTimeout: 0 }').map((line) => line.replace('web', 'off').replace('10001', '10002'))),
      'test.yaml',
    ).routes.map((r) => r.http.bodyTimeoutMs);
    expect(timeouts).toEqual([15_000, 0]);
    expect(parseConfigText(yaml('routes:', ...route('')), 'test.yaml').routes[0]!.http.bodyTimeoutMs).toBe(60_000);
    expect(issuesOf(yaml('routes:', ...route('{ bodyTimeout: 20 }')))).toHaveLength(1);
  });

  it('resolves responseTimeout per protocol (inheritable) and heartbeat.inTransaction / maxIdle', () => {
    const route = (n: number, protocol: string, ...extra: string[]): string[] => [
      `  - name: r${n}`,
      `    listen: 127.0.0.1:${10000 + n}`,
      `    upstream: ${protocol === 'http' ? 'http://127.0.0.1:8080' : `127.0.0.1:${20000 + n}`}`,
      `    protocol: ${protocol}`,
      ...extra,
    ];
    const plain = parseConfigText(
      yaml('routes:', ...route(1, 'tcp'), ...route(2, 'redis'), ...route(3, 'postgres'), ...route(4, 'mysql'), ...route(5, 'http')),
      'test.yaml',
    );
    expect(plain.routes.map((r) => r.responseTimeoutMs)).toEqual([0, 60_000, 0, 0, 0]);
    const inherited = parseConfigText(
      yaml(
        'defaults:',
        '  responseTimeout: 7s',
        '  heartbeat: { every: 1s, timeout: 1s, inTransaction: true, maxIdle: 10m }',
        'routes:',
        ...route(1, 'postgres'),
        ...route(2, 'mysql', '    responseTimeout: 0', '    heartbeat: { maxIdle: 0 }'),
        ...route(3, 'redis', '    heartbeat: { every: 2s, timeout: 1s, inTransaction: false }'),
        ...route(4, 'http'),
      ),
      'test.yaml',
    );
    const [pg, my, redis, web] = inherited.routes;
    expect(pg!.responseTimeoutMs).toBe(7_000);
    expect(pg!.heartbeat).toMatchObject({ inTransaction: true, maxIdleMs: 600_000 });
    expect(my!.responseTimeoutMs).toBe(0);
    expect(my!.heartbeat).toMatchObject({ inTransaction: true, maxIdleMs: 0 });
    expect(redis!.responseTimeoutMs).toBe(7_000);
    expect(redis!.heartbeat).toMatchObject({ everyMs: 2_000, inTransaction: false, maxIdleMs: 600_000 });
    expect(web!.responseTimeoutMs).toBe(0); // http routes take http.responseTimeout
    expect(
      issuesOf(
        yaml(
          'routes:',
          ...route(1, 'redis', '    responseTimeout: 5', '    heartbeat: { every: 1s, timeout: 1s, inTransaction: maybe, maxIdle: -1s }'),
          ...route(2, 'http', '    responseTimeout: 5s'),
        ),
      ),
    ).toEqual([
      expect.stringMatching(/^test\.yaml:6:22 routes\[0\]\.responseTimeout: /),
      expect.stringMatching(/^test\.yaml:7:57 routes\[0\]\.heartbeat\.inTransaction: /),
      expect.stringMatching(/^test\.yaml:7:73 routes\[0\]\.heartbeat\.maxIdle: /),
      'test.yaml:12:5 routes[1].responseTimeout: does not apply to protocol http: http routes take http.responseTimeout',
    ]);
  });

  it('ignores an inherited heartbeat without send on a plain tcp route', () => {
    const config = parseConfigText(
      yaml('defaults:', '  heartbeat: { every: 20s, timeout: 5s }', 'routes:', ...ROUTE),
      'test.yaml',
    );
    expect(config.routes[0]!.heartbeat).toBeNull();
  });

  it('resolves https upstreams with TLS files read at load time, relative to the config file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kp-config-'));
    try {
      const pem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
      // A CA file must hold certificates that parse (src/config/pem.ts): a real one.
      const pki = makePki();
      const caPem = readFileSync(pki.ca, 'utf8');
      writeFileSync(join(dir, 'ca.pem'), caPem);
      pki.cleanup();
      writeFileSync(join(dir, 'client.pem'), pem);
      writeFileSync(join(dir, 'client-key.pem'), pem.replaceAll('CERTIFICATE', 'PRIVATE KEY'));
      const config = parseConfigText(
        yaml(
          'routes:',
          '  - name: partner',
          '    listen: 127.0.0.1:8081',
          '    protocol: http',
          '    upstream: https://[::1]',
          '    tls: { ca: ca.pem, cert: client.pem, key: client-key.pem, servername: api.example.com }',
          '  - name: plain',
          '    listen: 127.0.0.1:8082',
          '    protocol: http',
          '    upstream: https://example.com:8443',
        ),
        join(dir, 'config.yaml'),
      );
      const [partner, plain] = config.routes;
      expect(partner!.upstream).toEqual({ host: '::1', port: 443 });
      expect(partner!.tls).toMatchObject({
        caFile: join(dir, 'ca.pem'),
        certFile: join(dir, 'client.pem'),
        keyFile: join(dir, 'client-key.pem'),
        servername: 'api.example.com',
        rejectUnauthorized: true,
      });
      expect(partner!.tls!.ca!.toString()).toBe(caPem);
      expect(plain!.upstream).toEqual({ host: 'example.com', port: 8443 });
      expect(plain!.tls).toEqual({ rejectUnauthorized: true });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('accepts admin.listen off, IPv6 listen addresses and port 0 for listeners', () => {
    const config = parseConfigText(
      yaml(
        'admin: { listen: off }',
        'routes:',
        '  - name: a',
        '    listen: "[::1]:0"',
        '    upstream: "[::1]:6379"',
        '  - name: b',
        '    listen: 127.0.0.1:0',
        '    upstream: localhost:6379',
      ),
      'test.yaml',
    );
    expect(config.admin.listen).toBeNull();
    expect(config.routes[0]!.listen).toEqual({ host: '::1', port: 0 });
    expect(config.routes[0]!.upstream).toEqual({ host: '::1', port: 6379 });
  });

  it('is frozen all the way down', () => {
    const config = parseConfigText(yaml('routes:', ...ROUTE), 'test.yaml');
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.routes)).toBe(true);
    expect(Object.isFrozen(config.routes[0]!.keepalive.client)).toBe(true);
    expect(Object.isFrozen(config.routes[0]!.httpPool)).toBe(true);
    expect(Object.isFrozen(DEFAULTS.httpPool)).toBe(false); // copied, not frozen in place
  });

  it('follows YAML anchors and aliases', () => {
    const config = parseConfigText(
      yaml(
        'routes:',
        '  - name: a',
        '    listen: 127.0.0.1:10001',
        '    upstream: 127.0.0.1:20001',
        '    keepalive: &fast { client: { idle: 5s }, upstream: { idle: 5s } }',
        '  - name: b',
        '    listen: 127.0.0.1:10002',
        '    upstream: 127.0.0.1:20002',
        '    keepalive: *fast',
      ),
      'test.yaml',
    );
    expect(config.routes[1]!.keepalive.upstream.idleMs).toBe(5_000);
  });
});

describe('config errors: FILE:LINE:COL key.path: message', () => {
  it('rejects unknown keys with a did-you-mean hint, at every level', () => {
    expect(
      issuesOf(
        yaml(
          'route:',
          ...ROUTE,
          'defaults:',
          '  keepalive:',
          '    client: { idel: 5s }',
          '  usertimeout: 5s',
          'routes:',
          '  - name: b',
          '    listen: 127.0.0.1:10002',
          '    upstream: 127.0.0.1:20002',
          '    hearbeat: { every: 20s, timeout: 5s }',
          '    pool: { wram: 2 }',
          '    colour: blue',
        ),
      ),
    ).toEqual([
      'test.yaml:1:1 route: unknown key; did you mean "routes"?',
      'test.yaml:7:15 defaults.keepalive.client.idel: unknown key; did you mean "idle"?',
      'test.yaml:8:3 defaults.usertimeout: unknown key; did you mean "userTimeout"?',
      'test.yaml:13:5 routes[0].hearbeat: unknown key; did you mean "heartbeat"?',
      'test.yaml:14:13 routes[0].pool.wram: unknown key; did you mean "warm"?',
      'test.yaml:15:5 routes[0].colour: unknown key; valid keys here: name, listen, upstream, protocol, keepalive, userTimeout, connectTimeout, idleTimeout, maxConnections, noDelay, responseTimeout, middlebox, heartbeat, pool, tls, upstreamTls, clientTls, http, allow',
    ]);
  });

  it('names missing required keys at the route', () => {
    expect(
      issuesOf(
        yaml(
          'routes:',
          '  - listen: 127.0.0.1:10001',
          '    upstream: 127.0.0.1:20001',
          '  - name: b',
          '    upstream: 127.0.0.1:20002',
          '  - name: c',
          '    listen: 127.0.0.1:10003',
          '  - name: d',
          '    listen:',
          '    protocol: http',
        ),
      ),
    ).toEqual([
      'test.yaml:2:5 routes[0].name: required key is missing: the route name (used in logs and metric labels)',
      'test.yaml:4:5 routes[1].listen: required key is missing: the address to accept clients on, e.g. "127.0.0.1:15432"',
      'test.yaml:6:5 routes[2].upstream: required key is missing: the upstream "host:port" to forward to',
      'test.yaml:8:5 routes[3].upstream: required key is missing: the upstream URL, e.g. "http://127.0.0.1:8080"',
      'test.yaml:9:5 routes[3].listen: is empty; expected the address to accept clients on, e.g. "127.0.0.1:15432"',
    ]);
  });

  it('rejects an empty file, a missing or empty routes list, and a document that is not a mapping', () => {
    expect(issuesOf('')).toEqual(['test.yaml:1:1 (root): the configuration is empty; it needs at least a "routes:" list']);
    expect(issuesOf(yaml('# only a comment', 'log: { level: info }'))).toEqual([
      'test.yaml:2:1 routes: required key is missing: a list of routes (listen -> upstream)',
    ]);
    expect(issuesOf(yaml('routes: []'))).toEqual(['test.yaml:1:9 routes: needs at least one route']);
    expect(issuesOf(yaml('routes: pg'))).toEqual([
      'test.yaml:1:9 routes: expected a list of routes (each item starting with "- name:"), got "pg"',
    ]);
    expect(issuesOf(yaml('- a', '- b'))).toEqual([
      'test.yaml:1:1 (root): expected a mapping with routes:, defaults:, admin:, log:, got a list',
    ]);
    expect(issuesOf(yaml('routes:', '  - pg'))).toEqual([
      'test.yaml:2:5 routes[0]: expected a mapping with name, listen and upstream, got "pg"',
    ]);
  });

  it('rejects duplicate route names and clashing listen addresses', () => {
    expect(
      issuesOf(
        yaml(
          'admin: { listen: 127.0.0.1:9000 }',
          'routes:',
          '  - name: a',
          '    listen: 0.0.0.0:10001',
          '    upstream: 127.0.0.1:20001',
          '  - name: a',
          '    listen: 127.0.0.1:10001',
          '    upstream: 127.0.0.1:20002',
          '  - name: c',
          '    listen: 127.0.0.1:9000',
          '    upstream: 127.0.0.1:20003',
          '  - name: d',
          '    listen: "[::1]:9000"',
          '    upstream: 127.0.0.1:20003',
        ),
      ),
    ).toEqual([
      'test.yaml:6:11 routes[1].name: duplicate route name "a" (also routes[0].name)',
      'test.yaml:7:13 routes[1].listen: 127.0.0.1:10001 clashes with routes[0].listen (0.0.0.0:10001) of route "a"',
      'test.yaml:10:13 routes[2].listen: 127.0.0.1:9000 clashes with the admin listener (admin.listen 127.0.0.1:9000)',
    ]);
  });

  it('sees a clash with the default admin address too, and never between port-0 listeners', () => {
    expect(issuesOf(yaml('routes:', '  - name: a', '    listen: 127.0.0.1:9901', '    upstream: 127.0.0.1:1'))).toEqual([
      'test.yaml:3:13 routes[0].listen: 127.0.0.1:9901 clashes with the admin listener (admin.listen 127.0.0.1:9901)',
    ]);
    const config = parseConfigText(
      yaml(
        'routes:',
        '  - { name: a, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }',
        '  - { name: b, listen: "127.0.0.1:0", upstream: "127.0.0.1:1" }',
      ),
      'test.yaml',
    );
    expect(config.routes).toHaveLength(2);
  });

  it('rejects bad durations with the reason', () => {
    expect(
      issuesOf(
        yaml(
          'shutdownTimeout: 30',
          'defaults:',
          '  connectTimeout: 5sec',
          'routes:',
          '  - name: a',
          '    listen: 127.0.0.1:10001',
          '    upstream: 127.0.0.1:20001',
          '    idleTimeout: "-1s"',
          '    connectTimeout: 0',
          '    keepalive: { client: { idle: 1500ms }, upstream: { idle: 0, interval: 40000s, count: 200 } }',
        ),
      ),
    ).toEqual([
      'test.yaml:1:18 shutdownTimeout: durations are strings with a unit, e.g. "30s"',
      'test.yaml:3:19 defaults.connectTimeout: "5sec": unknown unit "sec"; use ms, s, m or h',
      'test.yaml:8:18 routes[0].idleTimeout: "-1s": durations cannot be negative',
      'test.yaml:9:21 routes[0].connectTimeout: must be more than 0',
      'test.yaml:10:34 routes[0].keepalive.client.idle: 1.5s: TCP keepalive times are whole seconds',
      'test.yaml:10:62 routes[0].keepalive.upstream.idle: must be at least 1s',
      'test.yaml:10:75 routes[0].keepalive.upstream.interval: must be at most 9h6m7s',
      'test.yaml:10:90 routes[0].keepalive.upstream.count: must be from 1 to 127, got 200',
    ]);
  });

  it('rejects bad host:port values', () => {
    expect(
      issuesOf(
        yaml(
          'admin: { listen: 9901 }',
          'routes:',
          '  - name: a',
          '    listen: ":10001"',
          '    upstream: db.internal',
          '  - name: b',
          '    listen: 127.0.0.1:70000',
          '    upstream: "::1:5432"',
          '  - name: c',
          '    listen: 127.0.0.1:10003',
          '    upstream: db:0',
          '  - name: d',
          '    listen: 127.0.0.1:10004',
          '    upstream: http://db:5432',
          '  - name: e',
          '    listen: bad_host!:1',
          '    upstream: "[::g]:5432"',
        ),
      ),
    ).toEqual([
      'test.yaml:1:18 admin.listen: expected "host:port", not a bare port: write "127.0.0.1:9901" (or off to disable the admin listener)',
      'test.yaml:4:13 routes[0].listen: ":10001": missing host; write "127.0.0.1:10001" for loopback only or "0.0.0.0:10001" for every interface',
      'test.yaml:5:15 routes[0].upstream: "db.internal": missing port; expected "host:port", e.g. "db.internal:8080"',
      'test.yaml:7:13 routes[1].listen: "127.0.0.1:70000": port 70000 is above 65535',
      'test.yaml:8:15 routes[1].upstream: "::1:5432": put an IPv6 address in brackets, e.g. "[::1]:8080"',
      'test.yaml:11:15 routes[2].upstream: "db:0": port 0 (any free port) is only allowed for listen addresses',
      'test.yaml:14:15 routes[3].upstream: a URL upstream is for protocol http (this route is protocol tcp); write "host:port"',
      'test.yaml:16:13 routes[4].listen: "bad_host!:1": "bad_host!" is not a valid host name or IP address',
      'test.yaml:17:15 routes[4].upstream: "[::g]:5432": "::g" is not an IPv6 address',
    ]);
  });

  it('rejects http upstreams that are not an http:// or https:// origin', () => {
    const route = (n: number, upstream: string): string[] => [
      `  - name: r${n}`,
      `    listen: 127.0.0.1:${10000 + n}`,
      '    protocol: http',
      `    upstream: ${upstream}`,
    ];
    expect(
      issuesOf(
        yaml(
          'routes:',
          ...route(0, 'api.internal:8080'),
          ...route(1, 'ftp://api.internal'),
          ...route(2, 'http://api.internal/v1'),
          ...route(3, 'http://user:pw@api.internal'),
          ...route(4, 'http://'),
        ),
      ),
    ).toEqual([
      'test.yaml:5:15 routes[0].upstream: expected a URL for an http route: write "http://api.internal:8080" or "https://api.internal:8080"',
      'test.yaml:9:15 routes[1].upstream: "ftp://api.internal": the upstream URL must start with http:// or https://',
      'test.yaml:13:15 routes[2].upstream: "http://api.internal/v1": the upstream URL is an origin only (scheme://host:port), with no path or query',
      'test.yaml:17:15 routes[3].upstream: "http://user:pw@api.internal": credentials do not belong in the upstream URL',
      'test.yaml:21:15 routes[4].upstream: "http://" is not a valid URL',
    ]);
  });

  it('rejects keys that do not apply to the route protocol', () => {
    expect(
      issuesOf(
        yaml(
          'routes:',
          '  - name: web',
          '    listen: 127.0.0.1:10001',
          '    protocol: http',
          '    upstream: http://127.0.0.1:20001',
          '    pool: { warm: 2, maxSockets: 4 }',
          '    heartbeat: { every: 20s, timeout: 5s, send: PING }',
          '    allow: ["a:1"]',
          '    tls: { rejectUnauthorized: false }',
          '  - name: db',
          '    listen: 127.0.0.1:10002',
          '    protocol: redis',
          '    upstream: 127.0.0.1:20002',
          '    pool: { maxSockets: 4, maxIdle: 1m }',
          '    heartbeat: { every: 20s, timeout: 5s, expectHex: "2b" }',
          '    http: { retry: false }',
          '    tls: {}',
          '  - name: out',
          '    listen: 127.0.0.1:10003',
          '    protocol: http-forward',
          '    upstream: 127.0.0.1:20003',
          '    allow: ["*:443"]',
        ),
      ),
    ).toEqual([
      'test.yaml:6:13 routes[0].pool.warm: does not apply to protocol http: pool.warm is for tcp, redis, postgres and mysql routes',
      'test.yaml:7:43 routes[0].heartbeat.send: does not apply to protocol http: custom heartbeat bytes are for protocol tcp (http routes send WebSocket pings)',
      'test.yaml:8:5 routes[0].allow: does not apply to protocol http: allow is for http-forward routes',
      'test.yaml:9:5 routes[0].tls: tls is for an https:// upstream',
      'test.yaml:14:13 routes[1].pool.maxSockets: does not apply to protocol redis: pool.maxSockets is for http and http-forward routes',
      'test.yaml:15:43 routes[1].heartbeat.expectHex: does not apply to protocol redis: custom heartbeat bytes are for protocol tcp (redis has its own heartbeat)',
      'test.yaml:16:5 routes[1].http: does not apply to protocol redis: the http section is for http and http-forward routes',
      'test.yaml:17:5 routes[1].tls: does not apply to protocol redis: tls is for http routes with an https:// upstream',
      'test.yaml:21:5 routes[2].upstream: does not apply to protocol http-forward: each request names its destination (limit them with allow)',
    ]);
  });

  it('checks custom heartbeats: send or sendHex, valid hex, a send for every tcp heartbeat; every and timeout independent', () => {
    const route = (n: number, heartbeat: string): string[] => [
      `  - name: r${n}`,
      `    listen: 127.0.0.1:${10000 + n}`,
      `    upstream: 127.0.0.1:${20000 + n}`,
      `    heartbeat: ${heartbeat}`,
    ];
    expect(
      issuesOf(
        yaml(
          'routes:',
          ...route(0, '{ every: 20s, timeout: 5s, send: "PING", sendHex: "50" }'),
          ...route(1, '{ every: 20s, timeout: 5s, sendHex: "0g" }'),
          ...route(2, '{ every: 20s, timeout: 5s, sendHex: "abc" }'),
          ...route(3, '{ every: 20s, timeout: 5s }'),
          ...route(4, '{ every: 20s, timeout: 5s, expect: "PONG" }'),
          ...route(5, '{ every: 5s, timeout: 20s, send: "x", expect: "" }'),
          ...route(6, '{ every: 5s, send: "x", expect: "y", jitter: 0.9 }'),
          ...route(7, '{ timeout: 5s, send: "x", expect: "y" }'),
          ...route(8, 'sometimes'),
          ...route(9, '{ every: 5s, timeout: 1s, send: "x" }'),
        ),
      ),
    ).toEqual([
      'test.yaml:5:57 routes[0].heartbeat.sendHex: give heartbeat.send or heartbeat.sendHex, not both',
      'test.yaml:9:52 routes[1].heartbeat.sendHex: invalid hex "0g": expected pairs of hex digits like "0d0a"',
      'test.yaml:13:52 routes[2].heartbeat.sendHex: invalid hex "abc": expected pairs of hex digits like "0d0a"',
      'test.yaml:17:16 routes[3].heartbeat: protocol tcp has no built-in heartbeat: give heartbeat.send (or sendHex) and expect (or expectHex), or use protocol redis, postgres or mysql',
      'test.yaml:21:43 routes[4].heartbeat.expect: needs heartbeat.send (or sendHex): the probe whose reply this is',
      'test.yaml:29:16 routes[6].heartbeat.timeout: required key is missing: how long to wait for the heartbeat reply (e.g. "5s")',
      'test.yaml:29:61 routes[6].heartbeat.jitter: must be from 0 to 0.5, got 0.9',
      'test.yaml:33:16 routes[7].heartbeat.every: required key is missing: how long a connection stays silent before a heartbeat (e.g. "20s"), or 0 for none',
      'test.yaml:37:16 routes[8].heartbeat: expected a mapping or off, got "sometimes"',
    ]);
  });

  it('checks types and enums, with a hint for a misspelt value', () => {
    expect(
      issuesOf(
        yaml(
          'log: { level: verbose }',
          'routes:',
          '  - name: "bad name"',
          '    listen: 127.0.0.1:10001',
          '    upstream: 127.0.0.1:20001',
          '    protocol: postgress',
          '    maxConnections: -1',
          '    noDelay: "yes"',
          '    keepalive: fast',
          '  - name: b',
          '    listen: 127.0.0.1:10002',
          '    protocol: http',
          '    upstream: http://127.0.0.1:20002',
          '    pool: { maxSockets: 2.5, maxRequests: "10" }',
          '    http: { maxHeaderSize: 100, retry: 1 }',
        ),
      ),
    ).toEqual([
      'test.yaml:1:15 log.level: "verbose" is not one of trace | debug | info | warn | error',
      'test.yaml:3:11 routes[0].name: "bad name": a route name is 1 to 64 letters, digits, ".", "_" or "-" (it is a metric label)',
      'test.yaml:6:15 routes[0].protocol: "postgress" is not one of tcp | redis | postgres | mysql | http | http-forward; did you mean "postgres"?',
      'test.yaml:7:21 routes[0].maxConnections: must be from 0 to 1000000, got -1',
      'test.yaml:8:14 routes[0].noDelay: expected true or false, got "yes"',
      'test.yaml:9:16 routes[0].keepalive: expected a mapping, got "fast"',
      'test.yaml:14:25 routes[1].pool.maxSockets: expected an integer from 0 to 65535, got 2.5',
      'test.yaml:14:43 routes[1].pool.maxRequests: expected an integer from 0 to 1000000000, got "10"',
      'test.yaml:15:28 routes[1].http.maxHeaderSize: must be from 1024 to 1048576, got 100',
      'test.yaml:15:40 routes[1].http.retry: expected true or false, got 1',
    ]);
  });

  it('requires a valid allow list on http-forward routes', () => {
    const route = (n: number, allow: string | null): string[] => [
      `  - name: r${n}`,
      `    listen: 127.0.0.1:${10000 + n}`,
      '    protocol: http-forward',
      ...(allow === null ? [] : [`    allow: ${allow}`]),
    ];
    expect(
      issuesOf(
        yaml(
          'routes:',
          ...route(0, null),
          ...route(1, '[]'),
          ...route(2, '"*.example.com:443"'),
          ...route(3, '["example.com", "*.example.com:99999", "[::1]:80", "ex ample:1", "10.0.0.*:*"]'),
        ),
      ),
    ).toEqual([
      'test.yaml:2:5 routes[0].allow: required for protocol http-forward: a list of allowed destinations like "*.example.com:443" (everything else gets 403)',
      'test.yaml:8:12 routes[1].allow: needs at least one "host:port" pattern (an empty list would deny everything)',
      'test.yaml:12:12 routes[2].allow: expected a list of "host:port" patterns, got "*.example.com:443"',
      'test.yaml:16:13 routes[3].allow[0]: "example.com": expected "host:port" (e.g. "*.example.com:443", "10.0.0.5:*", "[::1]:8080")',
      'test.yaml:16:28 routes[3].allow[1]: "*.example.com:99999": the port must be 1 to 65535 or *',
      'test.yaml:16:63 routes[3].allow[3]: "ex ample:1": "ex ample" is not a host name, address or * pattern',
    ]);
  });

  it('names the tls key whose file cannot be read, and a certificate without its key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kp-config-'));
    try {
      writeFileSync(join(dir, 'not-pem.txt'), 'hello');
      writeFileSync(join(dir, 'cert.pem'), '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n');
      const file = join(dir, 'config.yaml');
      expect(
        issuesOf(
          yaml(
            'routes:',
            '  - name: a',
            '    listen: 127.0.0.1:10001',
            '    protocol: http',
            '    upstream: https://example.com',
            '    tls:',
            '      ca: missing-ca.pem',
            '      cert: cert.pem',
            '  - name: b',
            '    listen: 127.0.0.1:10002',
            '    protocol: http',
            '    upstream: https://example.com',
            '    tls: { key: not-pem.txt, cert: cert.pem, servername: "" }',
          ),
          file,
        ),
      ).toEqual([
        `${file}:7:11 routes[0].tls.ca: cannot read ${join(dir, 'missing-ca.pem')}: no such file`,
        `${file}:8:7 routes[0].tls.cert: tls.cert needs tls.key too (a client certificate is a pair)`,
        `${file}:13:17 routes[1].tls.key: ${join(dir, 'not-pem.txt')} is not a PEM file (no "-----BEGIN" line)`,
        `${file}:13:58 routes[1].tls.servername: expected a non-empty string, got ""`,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a bad value in defaults once, at defaults, even when no route reads it', () => {
    expect(
      issuesOf(
        yaml(
          'defaults:',
          '  idleTimeout: 10',
          '  pool: { maxSockets: lots }',
          '  heartbeat: { every: 20s, timeout: 5s, sendHex: zz }',
          'routes:',
          ...ROUTE,
          '  - name: b',
          '    listen: 127.0.0.1:10002',
          '    upstream: 127.0.0.1:20002',
        ),
      ),
    ).toEqual([
      'test.yaml:2:16 defaults.idleTimeout: durations are strings with a unit, e.g. "10s"',
      'test.yaml:3:23 defaults.pool.maxSockets: expected an integer from 0 to 65535, got "lots"',
      'test.yaml:4:50 defaults.heartbeat.sendHex: invalid hex "zz": expected pairs of hex digits like "0d0a"',
    ]);
  });

  it('refuses per-route keys in defaults', () => {
    expect(issuesOf(yaml('defaults:', '  name: x', '  upstream: 127.0.0.1:1', 'routes:', ...ROUTE))).toEqual([
      'test.yaml:2:3 defaults.name: cannot be inherited; set name on each route',
      'test.yaml:3:3 defaults.upstream: cannot be inherited; set upstream on each route',
    ]);
  });

  it('reports YAML syntax errors with their position and the key they are in', () => {
    expect(issuesOf(yaml('routes:', '  - name: a', '    listen: 127.0.0.1:1', '    listen: 127.0.0.1:2'))).toEqual([
      'test.yaml:4:5 routes[0].listen: invalid YAML: Map keys must be unique',
    ]);
    const [first] = issuesOf(yaml('routes:', '  - name: a', '    heartbeat: { every: 20s', '    listen: 127.0.0.1:1'));
    expect(first).toMatch(/^test\.yaml:\d+:\d+ \S+: invalid YAML: /);
    expect(issuesOf(yaml('routes:', '\t- name: a'))[0]).toMatch(/^test\.yaml:2:1 \S+: invalid YAML: /);
  });

  it('collects every error of a file in one pass, in file order', () => {
    const lines = issuesOf(
      yaml(
        'log: { level: loud }',
        'routes:',
        '  - name: a',
        '    listen: 127.0.0.1:1',
        '    upstream: 127.0.0.1:x',
        '    idleTimeout: 5',
        '    hearbeat: {}',
      ),
    );
    expect(lines.map((line) => line.split(' ')[0])).toEqual(['test.yaml:1:15', 'test.yaml:5:15', 'test.yaml:6:18', 'test.yaml:7:5']);
  });

  it('names an unreadable file at line 1 col 1', () => {
    const path = join(tmpdir(), 'kp-does-not-exist', 'config.yaml');
    let error: unknown;
    try {
      loadConfigFile(path);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect(formatIssues((error as ConfigError).issues)).toBe(`${path}:1:1 (root): cannot read the config file: no such file`);
    expect((error as ConfigError).message).toContain(`${path}:1:1 (root)`);
  });

  it('names the flag when --admin or --log-level overrides the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kp-config-'));
    try {
      const path = join(dir, 'config.yaml');
      writeFileSync(path, yaml('admin: { listen: 127.0.0.1:9 }', 'routes:', ...ROUTE));
      expect(loadConfigFile(path, { admin: '127.0.0.1:7777' }).admin.listen).toEqual({ host: '127.0.0.1', port: 7777 });
      expect(loadConfigFile(path, { admin: 'off', logLevel: 'debug' })).toMatchObject({ admin: { listen: null }, log: { level: 'debug' } });
      let error: unknown;
      try {
        loadConfigFile(path, { admin: '127.0.0.1:10001', logLevel: 'chatty' });
      } catch (caught) {
        error = caught;
      }
      expect(formatIssues((error as ConfigError).issues).split('\n')).toEqual([
        '--log-level: "chatty" is not one of trace | debug | info | warn | error',
        `${path}:4:13 routes[0].listen: 127.0.0.1:10001 clashes with the admin listener (admin.listen 127.0.0.1:10001)`,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the shipped config files', () => {
  const files: string[] = [];
  const collect = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) collect(path);
      else if (/\.ya?ml$/.test(entry.name)) files.push(path);
    }
  };
  collect(join(REPO_ROOT, 'config'));

  it('include the default config and the three examples', () => {
    const names = files.map((file) => relative(REPO_ROOT, file));
    expect(names).toEqual(
      expect.arrayContaining([
        'config/keepalive-proxy.yaml',
        'config/examples/database-sidecar.yaml',
        'config/examples/gateway-firewall.yaml',
        'config/examples/legacy-app-front.yaml',
      ]),
    );
  });

  it.each(files.map((file) => [relative(REPO_ROOT, file), file]))('%s validates', (_name, file) => {
    const config = loadConfigFile(file);
    expect(config.routes.length).toBeGreaterThan(0);
    for (const route of config.routes) expect(route.listen.host).toBe('127.0.0.1');
    if (config.admin.listen) expect(config.admin.listen.host).toBe('127.0.0.1');
  });

  it('the default config forwards redis and postgres on loopback', () => {
    const config = loadConfigFile(join(REPO_ROOT, 'config', 'keepalive-proxy.yaml'));
    expect(config.routes.map((route) => [route.protocol, route.listen.port, route.upstream])).toEqual([
      ['redis', 16379, { host: '127.0.0.1', port: 6379 }],
      ['postgres', 15432, { host: '127.0.0.1', port: 5432 }],
    ]);
    expect(config.routes[0]!.heartbeat).not.toBeNull();
  });
});

