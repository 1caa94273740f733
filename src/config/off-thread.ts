import { Worker } from 'node:worker_threads';
import { ConfigError, type ConfigIssue } from './issues.js';
import type { ConfigOverrides } from './load.js';
import type { ProxyConfig } from './schema.js';

// Loading a config on a reload, off the event loop. Parsing and validating a file at the
// size limit takes seconds of CPU (the yaml library alone is ~1 us per byte), and on the
// main thread that would freeze every proxied connection and heartbeat for as long.
// Reading asynchronously and yielding between phases would not help: one phase (the
// parse) is the whole cost and cannot be split. So a worker thread does read, parse
// and validate, and the main thread only revives the result (linear in the resolved
// config, not the file) and applies it.
//
// Public API:
//   loadConfigFileOffThread(path, overrides?): Promise<ProxyConfig>   rejects with ConfigError, or Error if the worker died
//   encodeConfig, WorkerReply                                         for load-worker.ts
//   encodeConfig, decodeConfig                                        a config across any structured-clone channel (src/workers/)

/** The worker's heap: a hostile file exhausts this, not the proxy's own. */
const WORKER_HEAP_MB = 512;

export type WorkerReply =
  | { readonly ok: true; readonly config: unknown }
  | { readonly ok: false; readonly issues: readonly ConfigIssue[]; readonly omitted: number };

export function loadConfigFileOffThread(path: string, overrides: ConfigOverrides = {}): Promise<ProxyConfig> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./load-worker.js', import.meta.url), {
      workerData: { path, overrides },
      resourceLimits: { maxOldGenerationSizeMb: WORKER_HEAP_MB },
    });
    // Owned by this promise: the thread ends by itself once it has posted its one reply.
    let settled = false;
    worker.once('message', (reply: WorkerReply) => {
      settled = true;
      if (reply.ok) resolve(decodeConfig(reply.config) as ProxyConfig);
      else reject(new ConfigError(reply.issues, reply.omitted));
    });
    worker.once('error', (error: NodeJS.ErrnoException) => {
      settled = true;
      if (error.code !== 'ERR_WORKER_OUT_OF_MEMORY') reject(new Error(`loading the config failed: ${error.message}`));
      else {
        const message = `loading the config needs more than ${WORKER_HEAP_MB} MB of memory; refusing it`;
        reject(new ConfigError([{ file: path, line: 1, col: 1, path: '(root)', message }]));
      }
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`loading the config failed: the loader thread exited with code ${code}`));
    });
  });
}

// Structured clone keeps plain objects, arrays, strings and typed arrays, but turns a
// URL into {} and a Buffer into a Uint8Array: both are tagged here and revived below.

const URL_TAG = '__url';

export function encodeConfig(value: unknown): unknown {
  if (value instanceof URL) return { [URL_TAG]: value.href };
  // A copy of just these bytes: a small Buffer is a view into an 8 KiB shared pool.
  if (Buffer.isBuffer(value)) return new Uint8Array(value);
  if (Array.isArray(value)) return value.map(encodeConfig);
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([key, child]) => [key, encodeConfig(child)]));
  }
  return value;
}

/** The encoded config back as the loader returned it: URLs, Buffers, and frozen throughout. */
export function decodeConfig(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return Object.freeze(value.map(decodeConfig));
  if (typeof value === 'object' && value !== null) {
    const url = (value as Record<string, unknown>)[URL_TAG];
    if (typeof url === 'string') return new URL(url);
    for (const [key, child] of Object.entries(value)) (value as Record<string, unknown>)[key] = decodeConfig(child);
    return Object.freeze(value);
  }
  return value;
}
