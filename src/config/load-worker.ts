import { parentPort, workerData } from 'node:worker_threads';
import { ConfigError, loadConfigFile, type ConfigOverrides } from './load.js';
import { encodeConfig, type WorkerReply } from './off-thread.js';

// The body of the thread started by loadConfigFileOffThread: read, parse and validate
// one config file, post the result (or the reported issues) and end.

const { path, overrides } = workerData as { path: string; overrides: ConfigOverrides };
let reply: WorkerReply;
try {
  reply = { ok: true, config: encodeConfig(loadConfigFile(path, overrides)) };
} catch (error) {
  if (!(error instanceof ConfigError)) throw error; // the parent sees the worker fail
  reply = { ok: false, issues: error.issues, omitted: error.omitted };
}
parentPort!.postMessage(reply);
