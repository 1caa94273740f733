#!/usr/bin/env -S node --max-semi-space-size=4
// The flag above: a keepalive proxy mostly holds idle connections, and V8's default
// young generation (up to 3 x 16 MiB) is RSS it never needs, several KB per idle
// connection at thousands of them (BENCHMARKS.md). npm start and the Docker image pass it too.
import cluster from 'node:cluster';
import { createApp, RELOAD_DROPPED } from './app.js';
import type { Clock } from './clock.js';
import { parseCli } from './config/cli.js';
import { ConfigError, reportLines } from './config/load.js';
import type { ProxyConfig } from './config/schema.js';
import { runDiscover } from './discover/run.js';
import { watchLauncher } from './launcher-watch.js';
import { configWarnings } from './middlebox.js';
import { createRootLogger, type Logger } from './log.js';
import type { Metrics } from './metrics/registry.js';
import { Primary } from './workers/primary.js';
import { runWorker } from './workers/worker.js';

// argv -> config -> app.start(); signals. Nothing else lives here. With `workers: N` the
// app is a primary that runs the routes in N workers (src/workers/); a worker runs this
// file too, and takes its config from the primary.

/** What the signals act on: a single process's app, or a primary. */
interface Running {
  reload(next: ProxyConfig): Promise<void>;
  close(): Promise<void>;
  readonly metrics: Metrics;
  readonly clock: Clock;
}

async function main(argv: string[]): Promise<number> {
  if (cluster.isWorker) {
    runWorker();
    return new Promise<number>(() => {}); // runs until its primary stops it
  }
  const command = parseCli(argv);
  switch (command.kind) {
    case 'help':
      process.stdout.write(command.text);
      return 0;
    case 'version':
      process.stdout.write(`${command.version}\n`);
      return 0;
    case 'error':
      process.stderr.write(`keepalive-proxy: ${command.message}\nTry 'keepalive-proxy --help'.\n`);
      return 2;
    case 'discover':
      return runDiscover(command.options, { out: (text) => process.stdout.write(text), err: (text) => process.stderr.write(text) });
    case 'check': {
      const loaded = tryLoad(() => command.load());
      if (loaded instanceof ConfigError) {
        reportCheckErrors(reportLines(loaded).join('\n'));
        return 1;
      }
      const warnings = configWarnings(loaded);
      if (warnings.length > 0) reportCheckErrors(warnings.map((warning) => `${command.source}: warning: ${warning}`).join('\n'));
      process.stdout.write(`${command.source}: ok (${loaded.routes.length} route${loaded.routes.length === 1 ? '' : 's'})\n`);
      return 0;
    }
    case 'run': {
      const loaded = tryLoad(() => command.load());
      if (loaded instanceof ConfigError) {
        const report = reportLines(loaded);
        process.stderr.write(report.join('\n') + '\n');
        // Also one JSON line on stdout, where log collectors look.
        createRootLogger('error').fatal({ errors: report }, 'invalid configuration; not started');
        return 1;
      }
      const log = createRootLogger(loaded.log.level);
      for (const warning of configWarnings(loaded)) log.warn({ warning }, 'configuration warning');
      const app = loaded.workers > 1 ? new Primary(loaded, log) : createApp(loaded, log);
      if (!(await started(app, log))) return 1;
      handleSignals(app, log, command.reloadable ? () => command.loadOffThread() : null);
      return new Promise<number>(() => {}); // runs until a signal ends it
    }
  }
}

/**
 * `check` is a report: its lines go to stdout (like a linter's) and to stderr (like a
 * failing command's), so scripts find them whichever stream they read. In a terminal
 * where both streams are the same screen they are printed once.
 */
function reportCheckErrors(report: string): void {
  process.stderr.write(report + '\n');
  if (!(process.stdout.isTTY && process.stderr.isTTY)) process.stdout.write(report + '\n');
}

async function started(app: { start(): Promise<void> }, log: Logger): Promise<boolean> {
  try {
    await app.start();
    return true;
  } catch (error) {
    // One line that names what failed (e.g. the route, address and errno of a bind).
    log.fatal({ err: error }, `not started: ${(error as Error).message}`);
    return false;
  }
}

function tryLoad(load: () => ProxyConfig): ProxyConfig | ConfigError {
  try {
    return load();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
}

function handleSignals(app: Running, log: Logger, reload: (() => Promise<ProxyConfig>) | null): void {
  let stopping = false;
  // Reloads run one at a time: a SIGHUP arriving during a reload waits its turn.
  let reloading: Promise<void> = Promise.resolve();
  process.on('SIGHUP', () => {
    // Said, not silently ignored: every SIGHUP ends in one line (applied, rejected or dropped).
    if (stopping) {
      log.warn(RELOAD_DROPPED);
      return;
    }
    if (!reload) {
      log.warn('SIGHUP ignored: no config file (flags-only run)');
      return;
    }
    reloading = reloading.then(async () => {
      // Parsed and validated in a worker thread: proxied traffic never waits for it.
      const next = await reload().catch((error: unknown) => {
        if (error instanceof ConfigError) return error;
        throw error;
      });
      // A SIGTERM came while the file was loading: the drain has begun, nothing new binds.
      if (stopping) {
        log.warn(RELOAD_DROPPED);
        return;
      }
      if (next instanceof ConfigError) {
        app.metrics.configReloads.labels('error').inc();
        log.error({ errors: reportLines(next) }, 'reload rejected: keeping the running configuration');
        return;
      }
      await app.reload(next);
      app.metrics.configReloads.labels('ok').inc();
    }).catch((error: unknown) => {
      app.metrics.configReloads.labels('error').inc();
      log.error({ err: error }, `reload failed, keeping the running configuration: ${(error as Error).message}`);
    });
  });
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'stopping');
    app.close().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  watchLauncher(app.clock, () => {
    log.info('the npm process that started keepalive-proxy is gone');
    stop('SIGTERM');
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`keepalive-proxy: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  },
);
