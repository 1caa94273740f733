import { Clock } from './clock.js';
import { HTTP_FAMILY, type ProxyConfig, type RouteConfig } from './config/schema.js';
import type { Logger } from './log.js';
import { Metrics } from './metrics/registry.js';
import { AdminServer } from './admin/server.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from './route.js';
import { createTcpRoute } from './tcp/route.js';
import { warnIfUnsupported } from './net/sockopt.js';
import { describe } from './net/dial.js';

// The composition root: builds the routes and the admin listener from a config, and
// answers reload(config) and close(reason). It holds no protocol logic.

export interface App {
  start(): Promise<void>;
  /** Applies a new, already validated config: new connections get it, live ones are untouched. */
  reload(config: ProxyConfig): Promise<void>;
  /** Stops accepting, drains live connections up to shutdownTimeout, then closes the rest. */
  close(): Promise<void>;
  readonly metrics: Metrics;
  routes(): RouteHandle[];
  adminAddress(): { host: string; port: number } | null;
}

export function createApp(config: ProxyConfig, log: Logger, metrics = new Metrics()): App {
  return new ProxyApp(config, log, metrics);
}

class ProxyApp implements App {
  readonly metrics: Metrics;
  #config: ProxyConfig;
  readonly #log: Logger;
  readonly #clock = new Clock(250);
  readonly #routes = new Map<string, RouteHandle>();
  /** Routes removed by a reload whose live connections are still running. */
  readonly #retiring = new Set<RouteHandle>();
  #admin: AdminServer | null = null;
  #draining = false;

  constructor(config: ProxyConfig, log: Logger, metrics: Metrics) {
    this.#config = config;
    this.#log = log;
    this.metrics = metrics;
  }

  routes(): RouteHandle[] {
    return [...this.#routes.values()];
  }

  adminAddress(): { host: string; port: number } | null {
    return this.#admin?.address() ?? null;
  }

  async start(): Promise<void> {
    warnIfUnsupported(this.#log);
    await this.#startAdmin(this.#config);
    for (const route of this.#config.routes) await this.#addRoute(route);
    this.#log.info({ routes: this.#config.routes.map(summary), source: this.#config.source }, 'keepalive-proxy ready');
  }

  async reload(next: ProxyConfig): Promise<void> {
    const previous = this.#config;
    this.#config = next;
    this.#log.level = next.log.level;
    const wanted = new Map(next.routes.map((r) => [r.name, r]));
    // Retire first, so an address moved from one route to another is free to bind.
    for (const [name, route] of this.#routes) {
      const target = wanted.get(name);
      if (target && !needsNewListener(route.config, target)) continue;
      this.#routes.delete(name);
      this.#retire(route);
    }
    for (const target of next.routes) {
      const existing = this.#routes.get(target.name);
      if (existing) existing.update(target);
      else await this.#addRoute(target);
    }
    if (!sameAddress(previous.admin.listen, next.admin.listen)) {
      await this.#admin?.close();
      this.#admin = null;
      await this.#startAdmin(next);
    }
    this.#log.info({ routes: next.routes.map(summary) }, 'configuration reloaded');
  }

  async close(): Promise<void> {
    this.#draining = true;
    const all = [...this.#routes.values(), ...this.#retiring];
    const live = all.reduce((n, r) => n + r.activeCount, 0);
    this.#log.info({ live, deadlineMs: this.#config.shutdownTimeoutMs }, 'shutting down: draining live connections');
    await Promise.all(all.map((r) => r.drain(this.#config.shutdownTimeoutMs, 'shutdown')));
    await this.#admin?.close();
    this.#log.info('shutdown complete');
  }

  async #startAdmin(config: ProxyConfig): Promise<void> {
    if (!config.admin.listen) return;
    const app = this;
    const admin = new AdminServer(
      {
        metrics: this.metrics,
        // Every configured route, including one still being built (the HTTP code loads on demand).
        notReady: () => this.#config.routes.filter((r) => !this.#routes.get(r.name)?.listening).map((r) => r.name),
        connections: () => this.#connections(),
        get draining() {
          return app.#draining;
        },
      },
      this.#log,
    );
    await admin.listen(config.admin.listen);
    this.#admin = admin;
  }

  #connections(): ConnectionInfo[] {
    return [...this.#routes.values(), ...this.#retiring].flatMap((r) => r.connections());
  }

  async #addRoute(config: RouteConfig): Promise<void> {
    const deps: RouteDeps = { metrics: this.metrics, log: this.#log, clock: this.#clock };
    const route = HTTP_FAMILY.includes(config.protocol)
      ? // Loaded on demand: a TCP-only deployment never pays for the HTTP code.
        (await import('./http/route.js')).createHttpRoute(config, deps)
      : createTcpRoute(config, deps);
    this.#routes.set(config.name, route);
    try {
      await route.listen();
      this.#log.info(summary(config), 'route listening');
    } catch (error) {
      // The route stays registered but not ready: /readyz says which one.
      this.#log.error({ route: config.name, err: (error as Error).message }, 'route could not listen');
    }
  }

  #retire(route: RouteHandle): void {
    this.#retiring.add(route);
    this.#log.info({ route: route.name, live: route.activeCount }, 'route retired; live connections continue');
    // No deadline: a reload never cuts a live connection. Shutdown drains them with its own.
    route.drain(Number.POSITIVE_INFINITY, 'route_removed').then(
      () => this.#retiring.delete(route),
      (error: unknown) => this.#log.error({ route: route.name, err: error }, 'retiring route failed'),
    );
  }
}

function needsNewListener(current: RouteConfig, next: RouteConfig): boolean {
  const kind = (r: RouteConfig): string => (HTTP_FAMILY.includes(r.protocol) ? 'http' : 'tcp');
  return !sameAddress(current.listen, next.listen) || kind(current) !== kind(next);
}

function sameAddress(a: { host: string; port: number } | null, b: { host: string; port: number } | null): boolean {
  return a === b || (a !== null && b !== null && a.host === b.host && a.port === b.port);
}

function summary(route: RouteConfig): Record<string, unknown> {
  return {
    route: route.name,
    protocol: route.protocol,
    listen: describe(route.listen),
    upstream: route.upstreamUrl?.href ?? (route.upstream ? describe(route.upstream) : null),
  };
}
