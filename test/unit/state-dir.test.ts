import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readState, writeState } from '../../src/state-dir.js';

// stateDir holds learned values across restarts; whatever is found there is input, checked
// like any other: a damaged, foreign, oversized or special file is ignored, never trusted,
// and never blocks the start.

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});
function stateDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kp-state-'));
  dirs.push(dir);
  return dir;
}

describe('stateDir', () => {
  it('reads back what it wrote, per key', () => {
    const dir = stateDir();
    expect(writeState(dir, 'adaptive-r1-127.0.0.1:6379', { intervalMs: 1500 })).toBeNull();
    expect(readState(dir, 'adaptive-r1-127.0.0.1:6379')).toEqual({ intervalMs: 1500 });
    expect(readState(dir, 'adaptive-r2-127.0.0.1:6379')).toBeNull();
  });

  it('ignores garbage, non-objects and files over the size limit', () => {
    const dir = stateDir();
    const file = (key: string): string => join(dir, `${key}.json`);
    writeFileSync(file('garbage'), '{not json');
    writeFileSync(file('array'), '[1,2]');
    writeFileSync(file('big'), JSON.stringify({ pad: 'x'.repeat(10_000) }));
    for (const key of ['garbage', 'array', 'big']) expect(readState(dir, key)).toBeNull();
  });

  it('does not block on a FIFO or read a device put in its place', () => {
    const dir = stateDir();
    execFileSync('mkfifo', [join(dir, 'fifo.json')]);
    const started = Date.now();
    expect(readState(dir, 'fifo')).toBeNull();
    expect(Date.now() - started).toBeLessThan(1_000);
    execFileSync('ln', ['-s', '/dev/zero', join(dir, 'zero.json')]);
    expect(readState(dir, 'zero')).toBeNull();
  });
});
