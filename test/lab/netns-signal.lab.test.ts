import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';
import { labAllowed, run } from './netns.js';

// A lab test whose vitest worker is told to stop (SIGTERM or SIGINT: a cancelled CI job, a
// parent vitest going away) must leave nothing behind: its namespaces, the processes it ran in
// them, and the worker itself. The worker runs in a vitest of its own, as in a real run:
// vitest intercepts process.exit() in its workers, so a handler that cleans up and then calls
// it leaves the worker alive, orphaned once its parent is gone.

const isRoot = labAllowed('test/lab/netns-signal.lab.test.ts', 'ip netns');

const FIXTURE = 'test/lab/fixtures/signalled-worker.fixture.ts';
const VITEST = join(REPO_ROOT, 'node_modules', 'vitest', 'vitest.mjs');

/** Whether `pid` still runs: a zombie (exited, its parent not told yet; init may never reap it here) does not. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

interface Held {
  readonly worker: number;
  readonly node: number;
  readonly namespaces: readonly string[];
}

describe.skipIf(!isRoot)('lab cleanup when a worker is signalled', () => {
  const started: number[] = [];
  let dir: string | undefined;

  afterEach(() => {
    // Whatever the outcome, nothing of this test outlives it (by PID, only what it started).
    for (const pid of started.splice(0)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.each(['SIGTERM', 'SIGINT'] as const)('%s: the worker exits and its namespaces and processes are gone', async (signal) => {
    dir = mkdtempSync(join(tmpdir(), 'kp-lab-signal-'));
    const marker = join(dir, 'held.json');
    const config = join(dir, 'vitest.config.mjs');
    writeFileSync(config, `export default { test: { include: [${JSON.stringify(FIXTURE)}], pool: 'forks', poolOptions: { forks: { maxForks: 1 } } } };\n`);
    const vitest = spawn(process.execPath, [VITEST, 'run', '--root', REPO_ROOT, '--config', config], {
      env: { ...process.env, KP_SIGNAL_MARKER: marker },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    started.push(vitest.pid!);
    let output = '';
    vitest.stdout.setEncoding('utf8').on('data', (text: string) => (output += text));
    vitest.stderr.setEncoding('utf8').on('data', (text: string) => (output += text));

    const held = await until(() => (existsSync(marker) ? (JSON.parse(readFileSync(marker, 'utf8')) as Held) : null), 60_000, `the fixture's lab (vitest output: ${output})`, 100);
    started.push(held.worker, held.node);
    const listed = async (): Promise<string[]> => (await run('ip', ['netns', 'list'])).stdout.split('\n').map((line) => line.split(' ')[0] ?? '');
    expect(await listed()).toEqual(expect.arrayContaining([...held.namespaces]));

    process.kill(held.worker, signal);
    await until(() => !running(held.worker), 15_000, `worker ${held.worker} gone after ${signal}`, 100);
    expect(running(held.node), 'the node the worker ran in its namespace').toBe(false);
    const left = (await listed()).filter((name) => held.namespaces.includes(name));
    expect(left, 'the worker\'s namespaces').toEqual([]);
  }, 120_000);
});
