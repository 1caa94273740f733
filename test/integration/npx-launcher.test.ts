import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, refused } from '../helpers/net.js';
import { REPO_ROOT } from '../helpers/proxy.js';
import { processAlive, until } from '../helpers/wait.js';

// `npx keepalive-proxy` as the README runs it: npm -> sh -c -> node. Stopping the npx
// PID (what a supervisor or a script holds) must stop the proxy too, whether npm gets
// SIGTERM (it forwards it to the shell only) or SIGKILL (the shell even stays).

const cleanups: Array<() => unknown> = [];
afterEach(() => {
  while (cleanups.length) cleanups.pop()!();
});



/** Starts npx in the clone; resolves with npx's PID and the proxy's (from its log lines) once it is ready. */
async function startUnderNpx(port: number): Promise<{ npx: ChildProcess; proxyPid: number; logs: string[] }> {
  const npx = spawn('npx', ['keepalive-proxy', '--listen', `127.0.0.1:${port}`, '--upstream', '127.0.0.1:1', '--admin', 'off'], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    // npx links the clone into its cache and would run its `prepare` (a rebuild of dist/)
    // while the rest of the suite runs dist/main.js: the build is already there.
    env: { ...process.env, npm_config_ignore_scripts: 'true' },
  });
  const logs: string[] = [];
  // Whole lines only: a read can end inside a line, whose rest comes with the next read.
  let partial = '';
  npx.stdout!.setEncoding('utf8').on('data', (text: string) => {
    const lines = (partial + text).split('\n');
    partial = lines.pop() ?? '';
    logs.push(...lines.filter(Boolean));
  });
  npx.stderr!.setEncoding('utf8').on('data', (text: string) => logs.push(text));
  let proxyPid = 0;
  cleanups.push(() => {
    // Only what this test started, by PID.
    if (npx.exitCode === null && npx.signalCode === null) npx.kill('SIGKILL');
    if (proxyPid && processAlive(proxyPid)) process.kill(proxyPid, 'SIGKILL');
  });
  // The first run in a clone links the package into npm's npx cache: give it time.
  await until(
    () => {
      const ready = logs.find((line) => line.includes('"msg":"keepalive-proxy ready"'));
      if (ready) proxyPid = (JSON.parse(ready) as { pid: number }).pid;
      if (npx.exitCode !== null) throw new Error(`npx exited ${npx.exitCode}: ${logs.join('\n')}`);
      return proxyPid > 0;
    },
    90_000,
    'the proxy under npx ready',
    100,
  );
  return { npx, proxyPid, logs };
}

describe('under npx', () => {
  it.each(['SIGTERM', 'SIGKILL'] as const)('%s to the npx PID drains and stops the proxy, freeing its port', async (signal) => {
    const port = await freePort();
    const { npx, proxyPid, logs } = await startUnderNpx(port);
    expect(proxyPid).not.toBe(npx.pid);
    expect(await refused(port)).toBe(false);

    npx.kill(signal);
    await until(() => !processAlive(proxyPid), 15_000, `proxy ${proxyPid} gone after ${signal} to npx ${npx.pid}`, 100);
    expect(await refused(port)).toBe(true);
    // It drained as on SIGTERM (node writes to the stdout npm passed down, which outlives npm).
    // Its last lines may still be in the pipe when it is gone.
    await until(() => logs.some((line) => line.includes('"msg":"shutdown complete"')), 5_000, 'shutdown complete logged');
  }, 120_000);
});
