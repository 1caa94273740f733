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
