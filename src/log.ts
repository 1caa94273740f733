import pino from 'pino';
import type { LogLevel } from './config/schema.js';

// One pino root per process, JSON lines on stdout. Rooms take child loggers so every
// line carries its route; nothing logs per packet.

export type Logger = pino.Logger;

export function createRootLogger(level: LogLevel): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}

/**
 * Logs the first of a burst of like events at once, then at most one line per interval
 * with how many were folded into it: an upstream outage with thousands of clients
 * retrying must not turn into thousands of log lines per second.
 */
export class BurstLog {
  readonly #log: Logger;
  readonly #msg: string;
  readonly #intervalMs: number;
  #windowStart = 0;
  #suppressed = 0;

  constructor(log: Logger, msg: string, intervalMs = 1_000) {
    this.#log = log;
    this.#msg = msg;
    this.#intervalMs = intervalMs;
  }

  warn(fields: Record<string, unknown>): void {
    const now = Date.now();
    if (now - this.#windowStart < this.#intervalMs) {
      this.#suppressed++;
      return;
    }
    const folded = this.#suppressed;
    this.#windowStart = now;
    this.#suppressed = 0;
    this.#log.warn(folded > 0 ? { ...fields, alsoInLastInterval: folded } : fields, this.#msg);
  }
}
