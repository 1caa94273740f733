import { Clock } from './clock.js';
import { FdBudget } from './fd-budget.js';
import { HTTP_FAMILY, type ProxyConfig, type RouteConfig } from './config/schema.js';
import type { Logger } from './log.js';
import { Metrics } from './metrics/registry.js';
import { AdminServer } from './admin/server.js';
import type { ConnectionInfo, RouteDeps, RouteHandle } from './route.js';
import { createTcpRoute } from './tcp/route.js';
import { warnIfUnsupported } from './net/sockopt.js';
import { formatHostPort } from './config/hostport.js';

// The composition root: builds the routes and the admin listener from a config, and
// answers reload(config) and close(reason). It holds no protocol logic.

export interface App {
  start(): Promise<void>;
  /** Applies a new, already validated config: new connections get it, live ones are untouched. */
  reload(config: ProxyConfig): Promise<void>;
  /** Stops accepting, drains live connections up to shutdownTimeout, then closes the rest. */
  close(): Promise<void>;
  readonly metrics: Metrics;
  /** The process's shared ticker (process-wide checks subscribe to it too). */
  readonly clock: Clock;
  routes(): RouteHandle[];
  /** Every live connection, of retiring routes too (the admin /connections rows). */
  connections(): ConnectionInfo[];
  adminAddress(): { host: string; port: number } | null;
}

/** How this process serves: alone (the default), or as one of the workers of a primary (src/workers/). */
export interface AppOptions {
  /**
   * Set in a worker: the primary's own listeners (its admin), which a forward route must not
   * dial either. A worker's configs come with admin off: the primary serves it.
   */
  readonly primaryListeners?: () => ReadonlyArray<{ readonly host: string; readonly port: number }>;
}

/** The log line of a reload that a shutdown overtook (its drain owns the routes now). */
export const RELOAD_DROPPED = 'reload dropped: the proxy is shutting down';

export function createApp(config: ProxyConfig, log: Logger, metrics = new Metrics(), options: AppOptions = {}): App {
  return new ProxyApp(config, log, metrics, options);
}

class ProxyApp implements App {
  readonly metrics: Metrics;
  #config: ProxyConfig;
  readonly #log: Logger;
  readonly clock = new Clock(250);
  readonly #routes = new Map<string, RouteHandle>();
  /** Routes removed by a reload whose live connections are still running. */
  readonly #retiring = new Set<RouteHandle>();
  #admin: AdminServer | null = null;
  /** The process's fd budget, shared by every route listener (HAProxy's maxconn from ulimit-n). */
  readonly #fdBudget: FdBudget;
  #draining = false;
  /**
   * The stateDir every route's learner reads and writes: the config's, or during a reload
   * the incoming one's, so a route that reload starts finds what was kept there. Read
   * through a getter, so a learner a reload kept writes where the new file says.
   */
  #stateDir: string | null;
  readonly #options: AppOptions;

  constructor(config: ProxyConfig, log: Logger, metrics: Metrics, options: AppOptions) {
    this.#config = config;
    this.#stateDir = config.stateDir;
    this.#log = log;
    this.metrics = metrics;
    this.#options = options;
    this.#fdBudget = new FdBudget({ log, clock: this.clock, metrics });
  }

  routes(): RouteHandle[] {
    return [...this.#routes.values()];
  }

  adminAddress(): { host: string; port: number } | null {
    return this.#admin?.address() ?? null;
  }

  async start(): Promise<void> {
    warnIfUnsupported(this.#log);
    try {
      this.#admin = await this.#bindAdmin(this.#config);
      for (const config of this.#config.routes) {
        const route = await this.#buildRoute(config);
        this.#routes.set(config.name, route);
        await route.listen();
        this.#log.info(summary(config), 'route listening');
      }
    } catch (error) {
      // A listener that cannot bind is fatal at start (as in HAProxy): nothing stays
      // bound, and the caller reports the one error and exits non-zero.
      await Promise.all([...this.#routes.values()].map((r) => r.drain(0, 'shutdown')));
      this.#routes.clear();
      await this.#admin?.close();
      this.#admin = null;
      throw error;
    }
    // A worker's readiness is its primary's to announce, once for all.
    const ready = this.#options.primaryListeners ? 'worker ready' : 'keepalive-proxy ready';
    this.#log.info({ routes: this.#config.routes.map(summary), source: this.#config.source }, ready);
  }

  /**
   * All or nothing: every new listener is bound before anything running changes, so a
   * listener that cannot bind rejects the reload (the caller counts and logs it) and the
   * old routes, listeners and settings all stay as they were.
   */
  async reload(next: ProxyConfig): Promise<void> {
    // A shutdown has begun: its drain owns every route, and a listener bound now would
    // take clients that nothing drains (process exit would cut them uncounted).
    if (this.#draining) return this.#dropReload();
    const wanted = new Map(next.routes.map((r) => [r.name, r]));
    const leaving = [...this.#routes.values()].filter((route) => {
      const target = wanted.get(route.name);
      return !target || needsNewListener(route.config, target);
    });
    const entering = next.routes.filter((r) => !this.#routes.has(r.name) || leaving.some((old) => old.name === r.name));
    // An address that moves between routes (or changes kind) is still held by its old
    // listener: those are bound last, after the old one lets go.
    const heldBy = (config: RouteConfig): RouteHandle | undefined =>
      config.listen.port === 0 ? undefined : leaving.find((old) => old.listening && sameAddress(old.config.listen, config.listen));
    const ordered = [...entering.filter((r) => !heldBy(r)), ...entering.filter((r) => heldBy(r))];
    const bound = new Map<string, RouteHandle>();
    let admin: AdminServer | null = null;
    const adminMoves = !sameAddress(this.#config.admin.listen, next.admin.listen);
    this.#stateDir = next.stateDir;
    try {
      if (adminMoves) admin = await this.#bindAdmin(next);
      for (const config of ordered) {
        const route = await this.#buildRoute(config);
        bound.set(config.name, route);
        await heldBy(config)?.stopAccepting();
        await route.listen();
      }
    } catch (error) {
      await this.#undoReload(bound, admin);
      throw error;
    }
    // A shutdown began while the new listeners were binding: they never serve.
    if (this.#draining) {
      await this.#undoReload(bound, admin);
      return this.#dropReload();
    }
    // Commit: nothing below can fail to bind.
    this.#config = next;
    this.#log.level = next.log.level;
    for (const route of leaving) {
      this.#routes.delete(route.name);
      this.#retire(route);
    }
    for (const config of next.routes) {
      const fresh = bound.get(config.name);
      if (fresh) {
        this.#routes.set(config.name, fresh);
        this.#log.info(summary(config), 'route listening');
      } else this.#routes.get(config.name)!.update(config);
    }
    if (adminMoves) {
      await this.#admin?.close();
      this.#admin = admin;
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
    this.#fdBudget.close();
    this.#log.info('shutdown complete');
  }

  /** What a reload that does not commit had started: its routes, its admin, its stateDir. */
  async #undoReload(bound: Map<string, RouteHandle>, admin: AdminServer | null): Promise<void> {
    this.#stateDir = this.#config.stateDir;
    await Promise.all([...bound.values()].map((r) => r.drain(0, 'shutdown')));
    await admin?.close();
  }

  #dropReload(): void {
    this.#log.warn(RELOAD_DROPPED);
  }

  /** The admin listener of `config`, bound; null when the config turns it off. */
  async #bindAdmin(config: ProxyConfig): Promise<AdminServer | null> {
    if (!config.admin.listen) return null;
    const app = this;
    const admin = new AdminServer(
      {
        registry: this.metrics.registry,
        // Every configured route, including one still being built (the HTTP code loads on demand).
        notReady: () => this.#config.routes.filter((r) => !this.#routes.get(r.name)?.listening).map((r) => r.name),
        connections: () => this.connections(),
        get draining() {
          return app.#draining;
        },
      },
      this.#log,
    );
    await admin.listen(config.admin.listen);
    return admin;
  }

  connections(): ConnectionInfo[] {
    return [...this.#routes.values(), ...this.#retiring].flatMap((r) => r.connections());
  }

  /** Bound addresses of the admin listener and of every route, retiring ones included. */
  #ownListeners(): Array<{ host: string; port: number }> {
    const handles = [...this.#routes.values(), ...this.#retiring];
    const primary = this.#options.primaryListeners?.() ?? [];
    return [this.#admin?.address() ?? null, ...primary, ...handles.map((r) => r.address())].filter((a) => a !== null);
  }

  async #buildRoute(config: RouteConfig): Promise<RouteHandle> {
    const app = this;
    const deps: RouteDeps = {
      metrics: this.metrics,
      log: this.#log,
      clock: this.clock,
      fdBudget: this.#fdBudget,
      ownListeners: () => this.#ownListeners(),
      get stateDir() {
        return app.#stateDir;
      },
    };
    return HTTP_FAMILY.includes(config.protocol)
      ? // Loaded on demand: a TCP-only deployment never pays for the HTTP code.
        (await import('./http/route.js')).createHttpRoute(config, deps)
      : createTcpRoute(config, deps);
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

export function sameAddress(a: { host: string; port: number } | null, b: { host: string; port: number } | null): boolean {
  return a === b || (a !== null && b !== null && a.host === b.host && a.port === b.port);
}

/** A route's log fields. */
export function summary(route: RouteConfig): Record<string, unknown> {
  return {
    route: route.name,
    protocol: route.protocol,
    listen: formatHostPort(route.listen),
    upstream: route.upstreamUrl?.href ?? (route.upstream ? formatHostPort(route.upstream) : null),
  };
}
