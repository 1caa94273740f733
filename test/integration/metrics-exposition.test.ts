import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics/registry.js';
import { startUpstream, rawRequest, type Upstream } from '../helpers/http.js';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { REPO_ROOT, startProxy, type RunningProxy } from '../helpers/proxy.js';

// The /metrics a live proxy serves, after traffic on a tcp and an http route, held to
// two judges: promtool (the Prometheus project's own linter) and the README's metrics
// tables (names, types, label sets, and the label values each HELP text lists).

const PREFIX = 'keepalive_proxy_';
/** CI sets PROMTOOL_REQUIRED=1 after installing promtool: there, a missing one is a failure, not a skip. */
const PROMTOOL_REQUIRED = process.env.PROMTOOL_REQUIRED === '1';
const PROMTOOL = findPromtool();

function findPromtool(): string | null {
  const found = spawnSync('sh', ['-c', 'command -v promtool'], { encoding: 'utf8' });
  return found.status === 0 ? found.stdout.trim() : null;
}

let proxy: RunningProxy;
let echo: Awaited<ReturnType<typeof listen0>>;
let origin: Upstream;
let exposition: string;

beforeAll(async () => {
  echo = await listen0((socket) => socket.pipe(socket));
  origin = await startUpstream((_req, res) => res.end('ok'));
  const [tcpPort, httpPort] = [await freePort(), await freePort()];
  proxy = await startProxy({
    yaml: [
      'admin: { listen: "{{admin}}" }',
      'routes:',
      `  - { name: tcp, protocol: tcp, listen: 127.0.0.1:${tcpPort}, upstream: 127.0.0.1:${echo.port} }`,
      `  - { name: web, protocol: http, listen: 127.0.0.1:${httpPort}, upstream: "${origin.url}" }`,
      '',
    ].join('\n'),
  });
  // Traffic, so that labelled series and histogram buckets are in the exposition too.
  const client = await connect(tcpPort);
  client.write('ping');
  expect((await readBytes(client, 4)).toString()).toBe('ping');
  client.destroy();
  const response = await rawRequest(httpPort, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  expect(response.status).toBe(200);
  exposition = await proxy.metrics();
}, 60_000);

afterAll(async () => {
  await proxy?.stop();
  await echo?.close();
  await origin?.close();
});

describe('/metrics exposition', () => {
  it.runIf(PROMTOOL !== null || PROMTOOL_REQUIRED)('passes promtool check metrics', () => {
    expect(PROMTOOL, 'PROMTOOL_REQUIRED=1 but promtool is not on PATH (Debian package "prometheus")').not.toBeNull();
    const result = spawnSync(PROMTOOL!, ['check', 'metrics'], { input: exposition, encoding: 'utf8', timeout: 30_000 });
    expect({ status: result.status, complaints: `${result.stdout}${result.stderr}`.trim() }).toEqual({ status: 0, complaints: '' });
  });

  it('has build_info with the package version, the Node.js version and a commit', () => {
    const line = exposition.split('\n').find((l) => l.startsWith(`${PREFIX}build_info{`));
    const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(line).toMatch(new RegExp(`^${PREFIX}build_info\\{version="${version.replaceAll('.', '\\.')}",node="${process.versions.node.replaceAll('.', '\\.')}",commit="([0-9a-f]{40}|unknown)"\\} 1$`));
  });

  it('documents every exported metric in the README with its type and labels, and nothing else', () => {
    const documented = readmeMetrics();
    const exported = exportedFamilies(exposition);
    expect(exported.size).toBeGreaterThan(20);
    const labelsOf = registryLabels();
    const mismatches: string[] = [];
    for (const [name, family] of exported) {
      const row = documented.get(name);
      if (!row) {
        mismatches.push(`${name}: exported, not in the README`);
        continue;
      }
      if (row.type !== family.type) mismatches.push(`${name}: README says ${row.type}, exported as ${family.type}`);
      const labels = labelsOf.get(name) ?? family.sampleLabels;
      if (!sameSet(row.labels.keys(), labels)) mismatches.push(`${name}: README labels [${[...row.labels.keys()]}], exported [${[...labels]}]`);
    }
    for (const name of documented.keys()) if (!exported.has(name)) mismatches.push(`${name}: in the README, not exported`);
    expect(mismatches).toEqual([]);
  });

  it('lists in each HELP text the same label values as the README', () => {
    const documented = readmeMetrics();
    const mismatches: string[] = [];
    for (const [name, family] of exportedFamilies(exposition)) {
      const row = documented.get(name);
      if (!row) continue; // the test above names it
      const readmeValues = [...row.labels.values()].flat();
      const helpValues = family.help.match(/\(([A-Za-z0-9_]+(?:, [A-Za-z0-9_]+)+)\)/)?.[1]?.split(', ') ?? [];
      if (!sameSet(readmeValues, helpValues)) mismatches.push(`${name}: README lists [${readmeValues}], HELP "${family.help}"`);
    }
    expect(mismatches).toEqual([]);
  });
});

interface ReadmeRow {
  readonly type: string;
  /** Label name -> the values the README enumerates for it (empty when open-ended). */
  readonly labels: Map<string, string[]>;
}

/** The rows of the README's "Metrics reference" tables, one entry per metric name (prefix added). */
function readmeMetrics(): Map<string, ReadmeRow> {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Metrics reference');
  const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
  const rows = new Map<string, ReadmeRow>();
  // Only the tables headed "| name | type | labels |": the section also holds other tables (eviction reasons).
  let inMetricsTable = false;
  for (const line of section.split('\n')) {
    if (line.startsWith('| name | type |')) inMetricsTable = true;
    else if (!line.startsWith('|')) inMetricsTable = false;
    if (!inMetricsTable || !line.startsWith('| `')) continue;
    const [names = '', type = '', labels = ''] = line.split(' | ').map((cell) => cell.replace(/^\|\s*/, '').trim());
    const row: ReadmeRow = { type, labels: parseLabels(labels) };
    for (const [, name] of names.matchAll(/`([a-z0-9_]+)`/g)) rows.set(`${PREFIX}${name}`, row);
  }
  return rows;
}

/** "route, result (`ok`, `error`)" -> { route: [], result: [ok, error] }; "—" -> {}. */
function parseLabels(cell: string): Map<string, string[]> {
  const labels = new Map<string, string[]>();
  if (cell === '—') return labels;
  for (const [, name, values] of cell.matchAll(/([a-z_]+)(?:\s*\(([^)]*)\))?/g)) {
    labels.set(name!, [...(values ?? '').matchAll(/`([^`]+)`/g)].map((m) => m[1]!));
  }
  return labels;
}

interface Family {
  readonly type: string;
  readonly help: string;
  /** Label names seen on its samples (histogram `le` left out). */
  readonly sampleLabels: Set<string>;
}

/** Families of a Prometheus text exposition, from its # HELP / # TYPE lines and samples. */
function exportedFamilies(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const family = (name: string): Family => {
    let found = families.get(name);
    if (!found) families.set(name, (found = { type: '', help: '', sampleLabels: new Set() }));
    return found;
  };
  for (const line of text.split('\n')) {
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      Object.assign(family(meta[2]!), meta[1] === 'HELP' ? { help: meta[3] } : { type: meta[3] });
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line);
    if (!sample) continue;
    const name = sample[1]!;
    const owner = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    for (const [, label] of (sample[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) {
      if (label !== 'le') family(owner).sampleLabels.add(label!);
    }
  }
  return families;
}

/** Label names of every metric the registry defines, whether or not it has series yet. */
function registryLabels(): Map<string, Set<string>> {
  const metrics = new Metrics();
  const labels = new Map<string, Set<string>>();
  for (const metric of metrics.registry.getMetricsAsArray()) {
    labels.set(metric.name, new Set((metric as unknown as { labelNames?: readonly string[] }).labelNames ?? []));
  }
  return labels;
}

function sameSet(a: Iterable<string>, b: Iterable<string>): boolean {
  const [left, right] = [new Set(a), new Set(b)];
  return left.size === right.size && [...left].every((value) => right.has(value));
}
