import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile, parseConfigText } from '../../src/config/load.js';

// A config file is hostile until parsed: whatever it holds, loading it is linear in its
// size, reports at most 50 errors and a count of the rest, and refuses what is too big.
// Bounds here are CPU time of this process (the machine is shared, wall time is not
// ours), and generous: the quadratic steps they guard took 5 to 15 s.

const HEAD = 'routes:\n  - name: a\n    listen: 127.0.0.1:10001\n    upstream: 127.0.0.1:20001\n';
const CPU_BOUND_MS = 2_000;

/** The ConfigError `text` gives, and the CPU time spent getting it. */
function rejected(text: string): { error: ConfigError; cpuMs: number } {
  const start = process.cpuUsage();
  let caught: unknown;
  try {
    parseConfigText(text, 'big.yaml');
  } catch (error) {
    caught = error;
  }
  const cpuMs = process.cpuUsage(start).user / 1_000;
  if (!(caught instanceof ConfigError)) throw new Error(`expected a ConfigError, got ${String(caught)}`);
  return { error: caught, cpuMs };
}

/** The report as printed by check and logged on start and reload: the error's message less its first line. */
const reportLines = (error: ConfigError): string[] => error.message.split('\n').slice(1);

/** How many errors the message's first line says there are. */
const total = (error: ConfigError): number => Number(/\((\d+) errors?\)/.exec(error.message)?.[1]);

const lines = (count: number, line: (i: number) => string): string => Array.from({ length: count }, (_, i) => line(i)).join('');

describe('many errors', () => {
  const shapes: Array<[string, string, RegExp]> = [
    ['unknown keys on a route', HEAD + lines(20_000, (i) => `    unknownKey${i}: ${i}\n`), /^big\.yaml:5:5 routes\[0\]\.unknownKey0: unknown key; valid keys here: /],
    ['unknown keys at the top', HEAD + lines(20_000, (i) => `unknownKey${i}: ${i}\n`), /^big\.yaml:5:1 unknownKey0: unknown key; valid keys here: /],
    [
      'typos on many routes',
      'routes:\n' + lines(10_000, (i) => `  - { name: r${i}, listen: "127.0.0.1:0", upstream: "127.0.0.1:1", idelTimeout: 1 }\n`),
      /^big\.yaml:2:\d+ routes\[0\]\.idelTimeout: unknown key; did you mean "idleTimeout"\?/,
    ],
    ['duplicate keys', HEAD + lines(20_000, () => '    name: again\n'), /^big\.yaml:5:5 routes\[0\]\.name: invalid YAML: Map keys must be unique/],
    // The yaml library stops collecting syntax errors after about a thousand.
    ['syntax errors', lines(20_000, () => 'a: b: c\n'), /^big\.yaml:1:4 a\.b: invalid YAML: /],
    [
      'routes on one address',
      'routes:\n' + lines(10_000, (i) => `  - { name: r${i}, listen: "127.0.0.1:7000", upstream: "127.0.0.1:1" }\n`),
      /^big\.yaml:3:\d+ routes\[1\]\.listen: 127\.0\.0\.1:7000 clashes with routes\[0\]\.listen \(127\.0\.0\.1:7000\) of route "r0"/,
    ],
    ['anchors', HEAD + lines(20_000, (i) => `k${i}: &a${i} ${i}\n`) + lines(50, (i) => `z${i}: *a${i}\n`), /^big\.yaml:5:1 k0: unknown key; /],
  ];
  for (const [what, text, first] of shapes) {
    it(`${what}: reported in linear time, the first 50 in file order and a count of the rest`, () => {
      const { error, cpuMs } = rejected(text);
      console.log(`${what}: ${cpuMs.toFixed(0)} ms of CPU for ${text.length} bytes`);
      expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
      expect(error.issues).toHaveLength(50);
      expect(total(error)).toBeGreaterThan(950);
      const report = reportLines(error);
      expect(report).toHaveLength(51);
      expect(report[0]).toMatch(first);
      for (const line of report.slice(0, 50)) expect(line).toMatch(/^big\.yaml:\d+:\d+ \S+: /);
      const positions = error.issues.map((issue) => issue.line * 1e6 + issue.col);
      expect(positions).toEqual([...positions].sort((a, b) => a - b));
      expect(report[50]).toBe(`... and ${total(error) - 50} more errors`);
    });
  }

  it('elides a huge key or value in the report but keeps both ends', () => {
    const key = `start${'y'.repeat(1024 * 1024)}end`;
    // An explicit key ("? key"): an implicit one is at most 1024 characters in YAML.
    const { error, cpuMs } = rejected(`${HEAD}    ? ${key}\n    : 1\n    protocol: "${'p'.repeat(1024 * 1024)}"\n`);
    expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
    const report = reportLines(error);
    expect(report).toHaveLength(2);
    for (const line of report) expect(line.length).toBeLessThan(600);
    expect(report[0]).toMatch(/^big\.yaml:5:7 routes\[0\]\.startyyy.*characters\).*yyyend: unknown key/);
    expect(report[1]).toMatch(/^big\.yaml:7:15 routes\[0\]\.protocol: "ppp.*characters\).* one of tcp \| redis/);
  });
});

describe('values and routes', () => {
  it('refuses a file of more than 200,000 values before building its document (which would need GBs)', () => {
    for (const text of ['routes:\n' + '- {}\n'.repeat(200_001), lines(100_001, (i) => `${i.toString(36)}: 1\n`), `k: [${'1,'.repeat(200_001)}]\n`]) {
      const { error, cpuMs } = rejected(text);
      expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
      expect(reportLines(error)).toEqual(['big.yaml:1:1 (root): invalid YAML: more than 200000 values (keys, items, scalars); refusing to load it']);
    }
  });

  // 75,000: quadratic duplicate detection takes minutes there (20,000 took 2.2 s of CPU on the old
  // code), linear about 1 s, so the bound still tells them apart on a loaded CI machine.
  it('reports 75,000 duplicate keys (one value each) as a capped error, not a crash', () => {
    const { error, cpuMs } = rejected(lines(75_000, () => 'again:\n'));
    expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
    expect(reportLines(error)[0]).toBe('big.yaml:2:1 again: invalid YAML: Map keys must be unique');
    expect(reportLines(error)[50]).toBe('... and 74949 more errors');
  });

  it('refuses more than 10,000 routes without resolving each', () => {
    const { error, cpuMs } = rejected('routes:\n' + '- {}\n'.repeat(10_001));
    expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
    expect(reportLines(error)).toEqual(['big.yaml:2:1 routes: 10001 routes; at most 10000 (each is a listener)']);
  });
});

describe('aliases', () => {
  it('refuses a "billion laughs" alias bomb quickly, naming where', () => {
    let bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
    let previous = 'a';
    for (const name of 'bcdefghi') {
      bomb += `${name}: &${name} [${Array(9).fill(`*${previous}`).join(',')}]\n`;
      previous = name;
    }
    const { error, cpuMs } = rejected(HEAD + bomb);
    expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
    expect(reportLines(error)).toEqual([expect.stringMatching(/^big\.yaml:\d+:\d+ \S+: invalid YAML: aliases repeat more than 10000 nodes \(an alias bomb\?\)/)]);
  });

  it('refuses nested anchors whose aliases the yaml library would resolve by rescanning the document', () => {
    let nested = 's: &s 1\n';
    for (let i = 0; i < 50; i++) nested += `${' '.repeat(i * 2)}n${i}: &n${i}\n`;
    nested += `${' '.repeat(100)}x: [${Array(50).fill('*s').join(',')}]\n`;
    nested += lines(50, (i) => `r${i}: *n${i}\n`) + lines(20_000, (i) => `p${i}: 1\n`);
    const { error, cpuMs } = rejected(nested);
    expect(cpuMs).toBeLessThan(CPU_BOUND_MS);
    expect(error.issues.length).toBeGreaterThan(0);
  });

  it('refuses an alias inside its own anchor, and an alias with no anchor', () => {
    expect(reportLines(rejected(`${HEAD}    heartbeat: &h { every: *h }\n`).error)).toEqual([
      'big.yaml:5:28 routes[0].heartbeat.every: invalid YAML: the alias *h is inside its own anchor, an endless value',
    ]);
    expect(reportLines(rejected(`${HEAD}    idleTimeout: *nowhere\n`).error)).toEqual([
      'big.yaml:5:18 routes[0].idleTimeout: invalid YAML: unknown alias *nowhere (its anchor &nowhere must come before it)',
    ]);
  });

  it('still resolves ordinary aliases, reported at their anchor', () => {
    const config = parseConfigText(
      'defaults:\n  keepalive:\n    client: &ka { idle: 20s, interval: 5s, count: 2 }\n    upstream: *ka\nroutes:\n  - &r { name: a, listen: 127.0.0.1:10001, upstream: 127.0.0.1:1 }\n',
      'ok.yaml',
    );
    expect(config.routes[0]!.keepalive.upstream).toEqual({ idleMs: 20_000, intervalMs: 5_000, count: 2 });
  });
});

describe('file size', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kp-limits-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a file over 4 MiB before parsing it, naming the file and the limit', () => {
    const path = join(dir, 'huge.yaml');
    writeFileSync(path, HEAD + `# ${'x'.repeat(4 * 1024 * 1024)}\n`);
    const start = process.cpuUsage();
    expect(() => loadConfigFile(path)).toThrow(ConfigError);
    expect(process.cpuUsage(start).user / 1_000).toBeLessThan(CPU_BOUND_MS);
    try {
      loadConfigFile(path);
    } catch (error) {
      expect(reportLines(error as ConfigError)).toEqual([
        `${path}:1:1 (root): the config file is larger than 4 MiB (${4 * 1024 * 1024 + HEAD.length + 3} bytes); refusing to parse it`,
      ]);
    }
  });

  it('accepts a file just under the limit', () => {
    const path = join(dir, 'large.yaml');
    const text = HEAD + `# ${'x'.repeat(4 * 1024 * 1024 - HEAD.length - 4)}\n`;
    expect(Buffer.byteLength(text)).toBe(4 * 1024 * 1024 - 1);
    writeFileSync(path, text);
    expect(loadConfigFile(path).routes).toHaveLength(1);
  });

  it('stops reading a file with no size (a device) at the limit', () => {
    expect(() => loadConfigFile('/dev/zero')).toThrow(/larger than 4 MiB \(it grew while being read\)/);
  });
});

