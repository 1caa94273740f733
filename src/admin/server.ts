import http from 'node:http';
import type { HostPort } from '../config/schema.js';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.js';
import type { ConnectionInfo } from '../route.js';
import { listenOn } from '../net/listen.js';
import { formatHostPort } from '../config/hostport.js';

// The admin listener: /metrics (Prometheus text), /healthz (the process answers),
// /readyz (every route's listener is bound and, with workers, every worker answers), /connections (JSON). Read-only; it binds
// to loopback unless the config says otherwise.

/** What the admin listener shows: this process's own state, or (workers) every worker's, gathered. */
export interface AdminSource {
  /** The Prometheus exposition. */
  readonly registry: Pick<Registry, 'contentType' | 'metrics'>;
  /** Names of routes whose listener is not bound; empty when ready. */
  notReady(): string[];
  /** Worker processes that stopped answering (workers: N), described for /readyz; empty or absent when all answer. */
  unresponsive?(): string[];
  connections(): ConnectionInfo[] | Promise<ConnectionInfo[]>;
  readonly draining: boolean;
}

export class AdminServer {
  readonly #server: http.Server;
  readonly #source: AdminSource;
  readonly #log: Logger;

  constructor(source: AdminSource, log: Logger) {
    this.#source = source;
    this.#log = log;
    this.#server = http.createServer((req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        log.error({ err: error }, 'admin request failed');
        if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
        else res.destroy();
      });
    });
    // A failed accept (EMFILE at the fd limit) must not end the process: the listener goes on.
    this.#server.on('error', (error: NodeJS.ErrnoException) => log.warn({ code: error.code, err: error.message }, 'admin listener error'));
    this.#server.keepAliveTimeout = 5_000;
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
  }

  async listen(address: HostPort): Promise<void> {
    await listenOn(this.#server, address, 'admin');
    const bound = this.#server.address();
    if (bound && typeof bound === 'object') this.#log.info({ admin: formatHostPort(bound.address, bound.port) }, 'admin listening');
  }

  address(): { host: string; port: number } | null {
    const a = this.#server.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : null;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      send(res, 405, 'text/plain', 'method not allowed\n');
      return;
    }
    const path = (req.url ?? '/').split('?')[0];
    switch (path) {
      case '/metrics': {
        const { registry } = this.#source;
        send(res, 200, registry.contentType, await registry.metrics());
        return;
      }
      case '/healthz':
        send(res, 200, 'text/plain', 'ok\n');
        return;
      case '/readyz': {
        const missing = this.#source.notReady();
        const silent = this.#source.unresponsive?.() ?? [];
        const problems = [...(missing.length > 0 ? [`not listening: ${missing.join(', ')}`] : []), ...(silent.length > 0 ? [`not answering: ${silent.join(', ')}`] : [])];
        if (this.#source.draining) send(res, 503, 'text/plain', 'draining\n');
        else if (problems.length > 0) send(res, 503, 'text/plain', `${problems.join('\n')}\n`);
        else send(res, 200, 'text/plain', 'ready\n');
        return;
      }
      case '/connections':
        send(res, 200, 'application/json', JSON.stringify(await this.#source.connections(), null, 1) + '\n');
        return;
      default:
        send(res, 404, 'text/plain', 'not found: try /metrics /healthz /readyz /connections\n');
    }
  }
}

function send(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}
