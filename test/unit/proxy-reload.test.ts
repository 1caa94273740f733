import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { replaceFile } from '../helpers/proxy.js';
import { once, until } from '../helpers/wait.js';

// startProxy().reload() rewrites the config file and sends SIGHUP; the proxy reads the file
// in a loader thread that may start well after the signal on a loaded machine. raw-spares
// sends reloads a batch apart, and a reload read the file while the next one was rewriting
// it in place: "the configuration is empty", a rejected reload (ok 2, error 1 of 3; Node 26
// under taskset -c 1). The helper now replaces the file whole (replaceFile): here a reader
// thread reads the file over and over while versions are written, and must see only whole ones.

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/**
 * A thread reading `path` in a loop until told to stop, counting its reads in `reads[0]`;
 * replies with what it read that is no whole version.
 */
const READER = `
const { readFileSync } = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const reads = new Int32Array(workerData.reads);
let stop = false;
parentPort.on('message', () => (stop = true));
const torn = [];
(function loop() {
  for (let i = 0; i < 100; i++) {
    const text = readFileSync(workerData.path, 'latin1');
    Atomics.add(reads, 0, 1);
    if (!/^v\\d+\\n/.test(text) || !text.endsWith('\\nend\\n') || text.length !== workerData.size) torn.push(text.slice(0, 8) + '... ' + text.length + ' bytes');
  }
  if (stop) parentPort.postMessage({ torn: torn.slice(0, 3), tornCount: torn.length });
  else setImmediate(loop);
})();
`;

describe('replaceFile (startProxy().reload())', () => {
  it('a reader never sees a half-written version: a reader thread reads the file 2000 times while versions are written', async () => {
    const READS = 2_000;
    const SIZE = 16 * 1024;
    const dir = mkdtempSync(join(tmpdir(), 'kp-replace-'));
    dirs.push(dir);
    const path = join(dir, 'config.yaml');
    // Every version has the same length, so a short read is a torn one too.
    const version = (i: number): string => {
      const head = `v${i}\n`;
      return head + String(i % 10).repeat(SIZE - head.length - '\nend\n'.length) + '\nend\n';
    };
    replaceFile(path, version(0));
    const reads = new Int32Array(new SharedArrayBuffer(4));
    const reader = new Worker(READER, { eval: true, workerData: { path, size: SIZE, reads: reads.buffer } });
    const report = once<{ torn: string[]; tornCount: number }>(reader, 'message', 30_000);
    try {
      await until(() => Atomics.load(reads, 0) > 0, 10_000, 'the reader reading');
      // Bounded in time: a reader thread starved that long fails the last expectation.
      let written = 0;
      const deadline = Date.now() + 20_000;
      while (Atomics.load(reads, 0) < READS && Date.now() < deadline) {
        for (let i = 0; i < 100; i++) replaceFile(path, version(++written));
        await new Promise((resolve) => setImmediate(resolve));
      }
      const duringWrites = Atomics.load(reads, 0);
      reader.postMessage('stop');
      const { torn, tornCount } = await report;
      console.log(`${written} versions written, ${duringWrites} reads while writing, ${tornCount} torn`);
      expect(torn).toEqual([]);
      expect(duringWrites).toBeGreaterThanOrEqual(READS);
    } finally {
      await reader.terminate();
    }
  });
});
