import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MAIN, REPO_ROOT } from '../helpers/proxy.js';

// `check` on a config with a declared middlebox: warnings are printed, the config is still valid (exit 0).

function check(yaml: string): { status: number | null; stdout: string; stderr: string } {
  const dir = mkdtempSync(join(tmpdir(), 'kp-mb-'));
  try {
    const file = join(dir, 'c.yaml');
    writeFileSync(file, yaml);
    return spawnSync(process.execPath, [MAIN, 'check', '--config', file], { encoding: 'utf8', timeout: 15_000, cwd: REPO_ROOT });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('check with a middlebox', () => {
  it('warns about settings not safely below the declared idle timeout, and still exits 0', () => {
    const result = check(
      ['routes:', '  - name: pg', '    listen: 127.0.0.1:10001', '    upstream: 127.0.0.1:5432', '    protocol: postgres', '    middlebox: aws-alb', '    heartbeat: { every: 45s, timeout: 5s }', ''].join('\n'),
    );
    expect(result.status, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/warning: route "pg": heartbeat.every 45s is not safely below aws-alb's idle timeout of 1m \(keep it at most 30s\)/);
    expect(result.stdout).toMatch(/ok \(1 route\)/);
  });

  it('is quiet when the preset picks the defaults', () => {
    const result = check(['routes:', '  - name: pg', '    listen: 127.0.0.1:10001', '    upstream: 127.0.0.1:5432', '    protocol: postgres', '    middlebox: aws-alb', ''].join('\n'));
    expect(result.status, result.stderr).toBe(0);
    expect(result.stderr).toBe('');
  });
});
