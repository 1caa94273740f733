import cluster from 'node:cluster';
import type net from 'node:net';
import type { HostPort } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import { BurstLog } from '../log-burst.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import type { RouteDeps } from '../route.js';
import { formatHostPort } from '../config/hostport.js';

/** Binds a server; rejects with LISTEN_FAILED naming the route and address. */
export function listenOn(server: net.Server, address: HostPort, owner: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      reject(new ProxyError('LISTEN_FAILED', 'proxy', `${owner} on ${formatHostPort(address.host, address.port)}: ${error.code ?? error.message}`, { cause: error }));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    // A deep backlog absorbs connection bursts (the kernel caps it at somaxconn).
    server.listen({ host: address.host, port: address.port, backlog: 4096, ...(cluster.isWorker ? workerListenOptions() : {}) });
  });
}

/**
 * How the workers of src/workers/ share a route's address. Where Node has listen({ reusePort })
 * (22.12+, 23.1+; checked on 24.22, and the fallback on 20.20), each worker binds a socket of its own with
 * SO_REUSEPORT (exclusive: not through the primary): the kernel spreads connections across
 * them by address hash and no connection passes through another process. Node 20 cannot set
 * it before bind, so there workers share the primary's socket through node:cluster, which
 * accepts each connection and hands it to the next worker (round robin).
 */
export function workersReusePort(): boolean {
  const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

function workerListenOptions(): { reusePort?: boolean; exclusive?: boolean } {
  return workersReusePort() ? { reusePort: true, exclusive: true } : {};
}

/**
 * A route listener's errors once it is bound. A failed accept (EMFILE or ENFILE at the fd
 * limit, ECONNABORTED) is counted in accept_errors_total and logged folded; the listener
 * goes on (libuv drops that connection and keeps polling), so the route serves again as
 * soon as descriptors free up. Returns the burst log, for the route to flush when it stops.
 */
export function watchListenerErrors(server: net.Server, route: string, metrics: RouteMetrics, deps: RouteDeps): BurstLog {
  const acceptErrors = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'accept failed; the listener goes on', countBy: 'codes' });
  server.on('error', (error: NodeJS.ErrnoException) => {
    // A bind failure is listen()'s to report, once (fatal at start, an error on reload).
    if (error.syscall === 'listen' || error.syscall === 'bind') return;
    if (error.syscall !== 'accept') {
      deps.log.error({ route, err: error }, 'listener error');
      return;
    }
    const code = error.code ?? 'unknown';
    metrics.acceptError(code).inc();
    acceptErrors.note({ route, code }, code);
  });
  return acceptErrors;
}
