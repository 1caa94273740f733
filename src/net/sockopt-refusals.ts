import type { TcpRef } from './splice-end.js';
import type { Clock } from '../clock.js';
import type { KeepaliveSide } from '../config/schema.js';
import { BurstLog } from '../log-burst.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics/registry.js';
import { applyKeepalive, lastSockoptError, lastSockoptOption, NO_FD } from './sockopt.js';

// A route's keepalive on each socket it owns, with the result checked: a socket option the
// kernel refused (or a socket with no fd left to set it on) is counted in
// sockopt_errors_total{route,option} and logged through one burst folding per route (the
// first line at once, then at most one a second), never dropped silently and never one
// line per socket. The socket goes on either way: with libuv's keepalive where only the
// finer options were refused (net/sockopt.ts), else with the kernel's defaults.

export type SockoptSide = 'client' | 'upstream';

export class SockoptRefusals {
  readonly #route: string;
  readonly #metrics: Metrics;
  readonly #log: BurstLog;

  constructor(route: string, deps: { readonly metrics: Metrics; readonly log: Logger; readonly clock: Clock }) {
    this.#route = route;
    this.#metrics = deps.metrics;
    this.#log = new BurstLog(deps.log, deps.clock, { level: 'warn', msg: 'socket option refused; the connection goes on without it', countBy: 'options' });
  }

  /** applyKeepalive (net/sockopt.ts), and a refusal counted and logged. */
  keepalive(socket: TcpRef, side: SockoptSide, keepalive: KeepaliveSide, userTimeoutMs: number): boolean {
    if (applyKeepalive(socket, keepalive, userTimeoutMs)) return true;
    const option = lastSockoptOption() ?? NO_FD;
    this.#metrics.sockoptErrors.labels(this.#route, option).inc();
    this.#log.note({ route: this.#route, side, option, err: lastSockoptError() }, option);
    return false;
  }

  /** Writes what the burst folding holds (the route is closing). */
  flush(): void {
    this.#log.flush();
  }
}
