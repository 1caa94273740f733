import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { parseCli } from '../../src/config/cli.js';
import { ConfigError, formatIssues, parseConfigText } from '../../src/config/load.js';
import { MAX_WORKERS } from '../../src/config/schema.js';

// `workers:` (top level) and --workers: auto or 1..MAX_WORKERS, errors at FILE:LINE:COL
// (or naming the flag) like every other key.

const ROUTES = 'routes:\n  - { name: a, listen: 127.0.0.1:10001, upstream: 127.0.0.1:20001 }\n';

function issuesOf(load: () => unknown): string[] {
  try {
    load();
  } catch (error) {
    if (error instanceof ConfigError) return formatIssues(error.issues).split('\n');
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('workers', () => {
  it('defaults to 1 (one process, as before workers existed)', () => {
    expect(parseConfigText(ROUTES, 'w.yaml').workers).toBe(1);
  });

  it('takes a count and auto (one per core this process may use, capped)', () => {
    expect(parseConfigText(`workers: 3\n${ROUTES}`, 'w.yaml').workers).toBe(3);
    expect(parseConfigText(`workers: ${MAX_WORKERS}\n${ROUTES}`, 'w.yaml').workers).toBe(MAX_WORKERS);
    expect(parseConfigText(`workers: auto\n${ROUTES}`, 'w.yaml').workers).toBe(Math.min(availableParallelism(), MAX_WORKERS));
  });

  it.each([['0'], ['-1'], ['1.5'], [String(MAX_WORKERS + 1)], ['two'], ['"2"'], ['[2]'], ['{ n: 2 }'], ['yes'], ['Auto']])(
    'rejects workers: %s at its line and column',
    (value) => {
      const issues = issuesOf(() => parseConfigText(`log: { level: info }\nworkers: ${value}\n${ROUTES}`, 'w.yaml'));
      expect(issues).toHaveLength(1);
      expect(issues[0]).toMatch(new RegExp(`^w\\.yaml:2:10 workers: expected auto or an integer from 1 to ${MAX_WORKERS}, got `));
    },
  );

  it('--workers overrides the file, and a bad one names the flag', () => {
    const run = (args: string[]): ReturnType<typeof parseCli> => parseCli(args);
    const flags = ['--listen', '127.0.0.1:10001', '--upstream', '127.0.0.1:20001'];
    const command = run([...flags, '--workers', '2']);
    expect(command.kind === 'run' && command.load().workers).toBe(2);
    const auto = run([...flags, '--workers', 'auto']);
    expect(auto.kind === 'run' && auto.load().workers).toBe(Math.min(availableParallelism(), MAX_WORKERS));
    const bad = run([...flags, '--workers', '0']);
    expect(bad.kind).toBe('run');
    if (bad.kind === 'run') expect(issuesOf(() => bad.load())).toEqual([`--workers: expected auto or an integer from 1 to ${MAX_WORKERS}, got 0`]);
  });
});
