// How long loading a large config blocks the event loop: on the main thread (check,
// start) versus off it (SIGHUP). Needs `npm run build`. Usage: node bench/config-reload.mjs
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { loadConfigFile } from '../dist/config/load.js';
import { loadConfigFileOffThread } from '../dist/config/off-thread.js';

const HEAD = 'routes:\n  - name: a\n    listen: 127.0.0.1:10001\n    upstream: 127.0.0.1:20001\n';
const fill = (line) => {
  let text = '';
  for (let i = 0; text.length < 3.9 * 1024 * 1024; i++) text += line(i);
  return text;
};
const FILES = {
  'unknown keys (20,000)': HEAD + Array.from({ length: 20_000 }, (_, i) => `    unknownKey${i}: ${i}\n`).join(''),
  'unknown keys (3.9 MiB)': HEAD + fill((i) => `    unknownKey${i}: ${i}\n`),
  'allow list (3.9 MiB, valid)': 'routes:\n  - name: f\n    protocol: http-forward\n    listen: 127.0.0.1:0\n    allow:\n' + fill((i) => `      - "host-${i}.example.com:443"\n`),
  'comments (3.9 MiB, valid)': HEAD + fill((i) => `# comment ${i}\n`),
};

const dir = mkdtempSync(join(tmpdir(), 'kp-bench-config-'));
const histogram = monitorEventLoopDelay({ resolution: 1 });
async function blocked(load) {
  histogram.reset();
  histogram.enable();
  await new Promise((resolve) => setTimeout(resolve, 20)); // the histogram's timer is armed
  const start = performance.now();
  let outcome;
  try {
    const config = await load();
    outcome = `ok, ${config.routes.length} route(s)`;
  } catch (error) {
    outcome = `rejected, ${error.issues?.length ?? 0} kept + ${error.omitted ?? 0} counted`;
  }
  await new Promise((resolve) => setTimeout(resolve, 20)); // let the histogram see the last turn
  histogram.disable();
  return { wallMs: performance.now() - start, maxBlockMs: histogram.max / 1e6, outcome };
}
try {
  // What the shared machine itself costs the loop: the floor for the worker column.
  const idle = await blocked(() => new Promise((resolve) => setTimeout(() => resolve({ routes: [] }), 1_000)));
  console.log(`idle loop for 1 s: blocked up to ${idle.maxBlockMs.toFixed(1)} ms`);
  for (const [name, text] of Object.entries(FILES)) {
    const path = join(dir, 'config.yaml');
    writeFileSync(path, text);
    const main = await blocked(async () => loadConfigFile(path));
    const worker = await blocked(() => loadConfigFileOffThread(path));
    console.log(
      `${name.padEnd(28)} ${(text.length / 1024).toFixed(0).padStart(5)} KiB  main thread: ${main.wallMs.toFixed(0).padStart(5)} ms, ` +
        `loop blocked ${main.maxBlockMs.toFixed(0).padStart(5)} ms | worker: ${worker.wallMs.toFixed(0).padStart(5)} ms, ` +
        `loop blocked ${worker.maxBlockMs.toFixed(1).padStart(6)} ms  (${worker.outcome})`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
