import cluster from 'node:cluster';
import { sameAddress, summary } from '../app.js';
import { AdminServer } from '../admin/server.js';
import { Clock } from '../clock.js';
import { encodeConfig } from '../config/off-thread.js';
import type { ProxyConfig } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Metrics } from '../metrics/registry.js';
import { workersReusePort } from '../net/listen.js';
import type { ConnectionInfo } from '../route.js';
import { MetricsAggregate } from './aggregate.js';
import { WorkerLink } from './link.js';
import type { MetricsJson } from './messages.js';
import { pinPorts, workerConfig, type Pins } from './ports.js';

// `workers: N` (N > 1): this process is the primary. It owns the config (read and
// validated once per load), the admin listener, reloads and signals; N worker processes
// (node:cluster) run the routes. The primary gathers /metrics, /connections and readiness
// (every route listening, every worker answering its liveness ping) from them, fans reloads and shutdown out to them, and replaces a worker that dies, with a
// backoff so a worker that crashes at once does not spin.

/** How long a worker may take to answer, per request. */
const START_TIMEOUT_MS = 60_000;
const RELOAD_TIMEOUT_MS = 60_000;
const SCRAPE_TIMEOUT_MS = 5_000;
/** After shutdownTimeout, how long a worker may take to close what is left before it is killed. */
const EXIT_GRACE_MS = 5_000;
/** A worker that ran this long before dying is replaced at once; one that dies sooner waits longer each time. */
const STABLE_AFTER_MS = 10_000;
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/**
 * Liveness: each serving worker is pinged over the channel this often. One whose ping has
 * gone unanswered for LIVENESS_DEADLINE_MS (stopped, or its event loop blocked) makes /readyz
 * 503, naming it, until it answers: it still holds its share of the listening sockets, so
 * the load balancer must send its clients elsewhere.
 */
const LIVENESS_EVERY_MS = 1_000;
const LIVENESS_DEADLINE_MS = 3_000;

/** One of the N places a worker runs in; its worker is replaced when it dies. */
interface Slot {
  /** 1..N, in logs and in /connections. */
  readonly number: number;
  link: WorkerLink | null;
  /** Routes the worker listens on; null until it has started. */
  listening: ReadonlySet<string> | null;
  /** Its metrics as last scraped: served when it does not answer in time, kept when it exits. */
  lastMetrics: MetricsJson;
  startedAt: number;
  /** Consecutive deaths within STABLE_AFTER_MS of starting. */
  quickDeaths: number;
  restartTimer: NodeJS.Timeout | null;
  /** Its liveness ping is past LIVENESS_DEADLINE_MS (logged once per change). */
  silent: boolean;
}

export class Primary {
  readonly metrics = new Metrics();
  readonly clock = new Clock(250);
  readonly #log: Logger;
  #current: ProxyConfig;
  #pins: Pins = {};
  readonly #slots: Slot[];
  readonly #aggregate = new MetricsAggregate();
  #admin: AdminServer | null = null;
  /** Set once every worker has started: from then on a dead worker is replaced. */
  #serving = false;
  #stopping = false;
  #stopLiveness: (() => void) | null = null;

  constructor(config: ProxyConfig, log: Logger) {
    this.#current = config;
    this.#log = log;
    this.#slots = Array.from({ length: config.workers }, (_, i) => ({
      number: i + 1,
      link: null,
      listening: null,
      lastMetrics: [],
      startedAt: 0,
      quickDeaths: 0,
      restartTimer: null,
      silent: false,
    }));
    // Round robin where workers share the primary's socket (Node without reusePort):
    // the kernel's own spread over processes sharing one socket is very uneven.
    cluster.schedulingPolicy = cluster.SCHED_RR;
    // Structured clone on the channel: configs carry typed arrays (see messages.ts).
    cluster.setupPrimary({ serialization: 'advanced' });
  }

  /** Binds the admin listener and starts every worker; rejects (with nothing left running) when any cannot. */
  async start(): Promise<void> {
    const config = this.#current;
    try {
      this.#admin = await this.#bindAdmin(config);
      this.#pins = await pinPorts(config, null);
      await Promise.all(this.#slots.map((slot) => this.#spawn(slot)));
    } catch (error) {
      this.#stopping = true;
      await this.#stopWorkers(EXIT_GRACE_MS);
      await this.#admin?.close();
      this.#admin = null;
      throw error;
    }
    this.#serving = true;
    this.#stopLiveness = this.clock.subscribe((nowMs) => this.#checkLiveness(nowMs));
    this.#log.info(
      { routes: workerConfig(config, this.#pins).routes.map(summary), source: config.source, workers: this.#slots.length, sharing: workersReusePort() ? 'SO_REUSEPORT' : 'round-robin' },
      'keepalive-proxy ready',
    );
  }

  /**
   * Every worker applies `next` (each all or nothing, as a single process does). When none
   * can, everything stays as it was; when only some can, the others are replaced so that
   * every worker ends up running it. Either way the reload rejects, and is counted as failed.
   */
  async reload(next: ProxyConfig): Promise<void> {
    if (next.workers !== this.#slots.length) {
      this.#log.warn({ running: this.#slots.length, configured: next.workers }, 'workers: a new count takes effect at the next start');
    }
    const adminMoves = !sameAddress(this.#current.admin.listen, next.admin.listen);
    const admin = adminMoves ? await this.#bindAdmin(next) : null;
    let pins: Pins;
    try {
      pins = await pinPorts(next, { config: this.#current, pins: this.#pins });
    } catch (error) {
      await admin?.close();
      throw error;
    }
    const adminAddress = (admin ?? this.#admin)?.address() ?? null;
    const live = this.#slots.filter((slot) => slot.link && slot.listening);
    const encoded = encodeConfig(workerConfig(next, pins));
    const results = await Promise.allSettled(
      live.map(async (slot) => {
        const answer = await slot.link!.request({ kp: 'reload', config: encoded, admin: adminAddress }, RELOAD_TIMEOUT_MS);
        slot.listening = new Set(answer.listening);
      }),
    );
    const failed = live.flatMap((slot, i) => {
      const result = results[i]!;
      return result.status === 'rejected' ? [{ slot, error: result.reason as Error }] : [];
    });
    if (live.length > 0 && failed.length === live.length) {
      await admin?.close();
      throw new Error(`no worker could apply it: ${failed[0]!.error.message}`);
    }
    this.#current = next;
    this.#pins = pins;
    this.#log.level = next.log.level;
    if (adminMoves) {
      await this.#admin?.close();
      this.#admin = admin;
    }
    if (failed.length > 0) {
      // Out of step with the others: drained and replaced by a worker that starts on the new config.
      for (const { slot } of failed) slot.link?.worker.process.kill('SIGTERM');
      const names = failed.map(({ slot, error }) => `worker ${slot.number} (${error.message})`).join(', ');
      throw new Error(`${names} could not apply it and ${failed.length === 1 ? 'is' : 'are'} being replaced; the other workers run the new configuration`);
    }
    this.#log.info({ routes: workerConfig(next, pins).routes.map(summary), workers: live.length }, 'configuration reloaded');
  }

  /** Every worker drains (up to shutdownTimeout) and exits; then the admin listener closes. Rejects when a worker had to be killed. */
  async close(): Promise<void> {
    this.#stopping = true;
    this.#stopLiveness?.();
    this.#stopLiveness = null;
    const deadlineMs = this.#current.shutdownTimeoutMs;
    this.#log.info({ workers: this.#slots.filter((s) => s.link).length, deadlineMs }, 'shutting down: every worker drains its live connections');
    const killed = await this.#stopWorkers(deadlineMs + EXIT_GRACE_MS);
    await this.#admin?.close();
    if (killed.length > 0) throw new Error(`worker ${killed.join(', ')} did not exit in time and was killed`);
    this.#log.info('shutdown complete');
  }

  /** On each tick: pings the serving workers, and logs each one that stops or starts answering again. */
  #checkLiveness(nowMs: number): void {
    for (const slot of this.#slots) {
      const link = slot.link;
      if (!link || !slot.listening) continue;
      link.ping(nowMs, LIVENESS_EVERY_MS);
      this.#noteSilence(slot, link.unansweredMs(nowMs));
    }
  }

  /** Records whether the slot's worker is past its deadline and logs the change, so the log never lags what /readyz says. */
  #noteSilence(slot: Slot, silentMs: number): void {
    const silent = silentMs >= LIVENESS_DEADLINE_MS;
    if (silent === slot.silent) return;
    slot.silent = silent;
    const fields = { worker: slot.number, pid: slot.link?.worker.process.pid };
    if (silent) this.#log.error({ ...fields, deadlineMs: LIVENESS_DEADLINE_MS }, 'worker stopped answering; not ready until it does');
    else this.#log.info(fields, 'worker answers again');
  }

  /** Serving workers whose liveness ping is past its deadline, as /readyz names them. */
  #unresponsive(): string[] {
    const nowMs = this.clock.now();
    return this.#slots.flatMap((slot) => {
      if (!slot.link || !slot.listening) return [];
      const silentMs = slot.link.unansweredMs(nowMs);
      this.#noteSilence(slot, silentMs);
      if (!slot.silent) return [];
      return [`worker ${slot.number} (pid ${slot.link.worker.process.pid}) silent for ${(silentMs / 1_000).toFixed(1)}s`];
    });
  }

  /** Forks the slot's worker and starts it on the current config; resolves once it listens. */
  async #spawn(slot: Slot): Promise<void> {
    slot.restartTimer = null;
    slot.startedAt = this.clock.now();
    const worker = cluster.fork();
    const link = new WorkerLink(worker);
    slot.link = link;
    slot.listening = null;
    slot.silent = false;
    worker.once('exit', (code, signal) => this.#onExit(slot, link, code, signal));
    const config = this.#current;
    let answer = await link.request(
      { kp: 'start', slot: slot.number, config: encodeConfig(workerConfig(config, this.#pins)), admin: this.#admin?.address() ?? null },
      START_TIMEOUT_MS,
    );
    // A reload may have committed while this worker was starting on the config before it.
    if (this.#current !== config) {
      const latest = workerConfig(this.#current, this.#pins);
      answer = await link.request({ kp: 'reload', config: encodeConfig(latest), admin: this.#admin?.address() ?? null }, RELOAD_TIMEOUT_MS);
    }
    slot.listening = new Set(answer.listening);
  }

  #onExit(slot: Slot, link: WorkerLink, code: number | null, signal: string | null): void {
    if (slot.link !== link) return;
    slot.link = null;
    slot.listening = null;
    const last = slot.lastMetrics;
    slot.lastMetrics = [];
    this.#aggregate.retire(last).catch((error: unknown) => this.#log.error({ err: error }, 'keeping the counts of an exited worker failed'));
    if (this.#stopping || !this.#serving) return;
    this.metrics.workerRestarts.inc();
    const delayMs = this.#scheduleRestart(slot);
    this.#log.error({ worker: slot.number, pid: link.worker.process.pid, code, signal, restartInMs: delayMs }, 'worker exited unexpectedly; replacing it');
  }

  /** Forks the slot's next worker after its backoff; returns the delay. */
  #scheduleRestart(slot: Slot): number {
    const ranMs = this.clock.now() - slot.startedAt;
    slot.quickDeaths = ranMs < STABLE_AFTER_MS ? slot.quickDeaths + 1 : 0;
    const delayMs = slot.quickDeaths === 0 ? 0 : Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (slot.quickDeaths - 1));
    slot.restartTimer = setTimeout(() => {
      this.#spawn(slot).then(
        () => this.#log.info({ worker: slot.number, pid: slot.link?.worker.process.pid }, 'worker replaced'),
        (error: unknown) => {
          this.#log.error({ worker: slot.number, err: error }, `replacement worker could not start: ${(error as Error).message}`);
          if (this.#stopping) return;
          // A worker that answered with an error exits by itself, and one that did not answer
          // is ended here: either way its exit schedules the next try. A fork that failed
          // left no process behind to exit.
          if (slot.link) slot.link.worker.process.kill('SIGKILL');
          else this.#scheduleRestart(slot);
        },
      );
    }, delayMs);
    return delayMs;
  }

  /** SIGTERM to every worker (each drains), then SIGKILL to any still there after `graceMs`; returns the numbers of those killed. */
  async #stopWorkers(graceMs: number): Promise<number[]> {
    for (const slot of this.#slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      slot.restartTimer = null;
    }
    const live = this.#slots.filter((slot) => slot.link);
    for (const slot of live) slot.link!.worker.process.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
    await Promise.race([Promise.all(live.map((slot) => slot.link!.exited)), deadline]);
    clearTimeout(timer);
    const stuck = live.filter((slot) => slot.link);
    for (const slot of stuck) slot.link!.worker.process.kill('SIGKILL');
    await Promise.all(stuck.map((slot) => slot.link?.exited));
    return stuck.map((slot) => slot.number);
  }

  async #bindAdmin(config: ProxyConfig): Promise<AdminServer | null> {
    if (!config.admin.listen) return null;
    const primary = this;
    const admin = new AdminServer(
      {
        registry: { contentType: this.metrics.registry.contentType, metrics: () => this.#scrape() },
        notReady: () => this.#notReady(),
        unresponsive: () => this.#unresponsive(),
        connections: () => this.#connections(),
        get draining() {
          return primary.#stopping;
        },
      },
      this.#log,
    );
    await admin.listen(config.admin.listen);
    return admin;
  }

  /** Routes that some worker is not listening on, or every route while a worker is missing. */
  #notReady(): string[] {
    const names = this.#current.routes.map((route) => route.name);
    return names.filter((name) => this.#slots.some((slot) => !slot.listening?.has(name)));
  }

  async #scrape(): Promise<string> {
    const live = this.#slots.filter((slot) => slot.link && slot.listening);
    await Promise.all(
      live.map(async (slot) => {
        try {
          slot.lastMetrics = (await slot.link!.request({ kp: 'metrics' }, SCRAPE_TIMEOUT_MS)).metrics;
        } catch (error) {
          // Its last scrape stands in: a total that dips would read as a counter reset.
          this.#log.warn({ worker: slot.number, err: (error as Error).message }, 'worker did not answer the scrape; serving its last metrics');
        }
      }),
    );
    return this.#aggregate.exposition(this.metrics.registry, this.#slots.map((slot) => slot.lastMetrics));
  }

  async #connections(): Promise<ConnectionInfo[]> {
    const live = this.#slots.filter((slot) => slot.link && slot.listening);
    const lists = await Promise.all(
      live.map(async (slot) => {
        const link = slot.link!;
        try {
          const { connections } = await link.request({ kp: 'connections' }, SCRAPE_TIMEOUT_MS);
          return connections.map((row) => ({ ...row, worker: slot.number, pid: link.worker.process.pid }));
        } catch (error) {
          this.#log.warn({ worker: slot.number, err: (error as Error).message }, 'worker did not list its connections');
          return [];
        }
      }),
    );
    return lists.flat();
  }
}
