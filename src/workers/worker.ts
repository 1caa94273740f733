import cluster from 'node:cluster';
import { createApp, type App } from '../app.js';
import { decodeConfig } from '../config/off-thread.js';
import type { ProxyConfig } from '../config/schema.js';
import { createRootLogger, type Logger } from '../log.js';
import { Metrics } from '../metrics/registry.js';
import { HELLO, isRequest, type Answers, type Envelope, type Kind, type Reply } from './messages.js';

// One worker process: it runs the routes of the config its primary sends (validated there,
// never read or parsed here: the event loop serving traffic never parses YAML), and answers the
// primary's requests (reload, metrics, connections, liveness pings, stop). Signals are the
// primary's to handle and fan out: a terminal's SIGINT or SIGHUP reaches the whole process
// group, and acting on it here too would apply it twice. A SIGTERM sent to this process alone drains
// it like a stop request (the primary then replaces it). When the primary goes away
// node:cluster ends this process at once.

export function runWorker(): void {
  let app: App | null = null;
  let log: Logger | null = null;
  let stopping: Promise<void> | null = null;

  const stop = (): Promise<void> =>
    (stopping ??= (app?.close() ?? Promise.resolve()).finally(() => {
      // Replies already queued go out before the exit: process.send is asynchronous.
      setImmediate(() => process.exit(0));
    }));

  const answer = async (request: Envelope): Promise<Answers[Kind]> => {
    switch (request.kp) {
      case 'start': {
        const config = decodeConfig(request.config) as ProxyConfig;
        log = createRootLogger(config.log.level).child({ worker: request.slot });
        const admin = request.admin;
        app = createApp(config, log, new Metrics(), { primaryListeners: () => (admin ? [admin] : []) });
        await app.start();
        return { listening: listening(app) };
      }
      case 'reload': {
        if (!app) throw new Error('reload before start');
        await app.reload(decodeConfig(request.config) as ProxyConfig);
        return { listening: listening(app) };
      }
      case 'metrics':
        return { metrics: app ? await app.metrics.registry.getMetricsAsJSON() : [] };
      case 'connections':
        return { connections: app?.connections() ?? [] };
      case 'ping':
        return {};
      case 'stop':
        await stop();
        return {};
    }
  };

  process.on('message', (message: unknown) => {
    if (!isRequest(message)) return;
    answer(message).then(
      (result) => send({ kp: 'reply', id: message.id, ok: true, answer: result }),
      (error: unknown) => {
        send({ kp: 'reply', id: message.id, ok: false, error: (error as Error).message });
        // A worker that could not start has nothing to serve; the primary decides what follows.
        if (message.kp === 'start') setImmediate(() => process.exit(1));
      },
    );
  });
  send(HELLO);
  for (const signal of ['SIGINT', 'SIGHUP'] as const) process.on(signal, () => {});
  process.on('SIGTERM', () => {
    log?.info({ signal: 'SIGTERM' }, 'worker stopping');
    void stop();
  });
  if (!cluster.isWorker) throw new Error('runWorker outside a cluster worker');
}

function listening(app: App): string[] {
  return app.routes().filter((route) => route.listening).map((route) => route.name);
}

function send(reply: Reply | typeof HELLO): void {
  // The channel is gone only when the primary is: node:cluster is ending this process then.
  if (process.connected) process.send!(reply);
}
