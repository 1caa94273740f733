import { closeSync, constants, fstatSync, mkdirSync, openSync, readSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

// Small learned values kept across restarts in `stateDir` (top-level config key): one
// JSON file per key. A write goes to a temporary file renamed over the old one, so a
// crash leaves the old value or the new one, never half of one. What is read back is
// checked like any other input: a damaged or foreign file is ignored, never trusted.

/** Larger files are not ours: they are not read. */
const MAX_FILE_BYTES = 4_096;

function fileFor(stateDir: string, key: string): string {
  // Route names and host:port, made safe as one file name.
  return join(stateDir, `${key.replace(/[^A-Za-z0-9_.-]/g, '_')}.json`);
}

/** The stored object for `key`, or null when absent or unreadable. */
export function readState(stateDir: string, key: string): Record<string, unknown> | null {
  let fd = -1;
  try {
    // Opened without blocking and checked before reading: a FIFO or a device put in the
    // directory must neither hang the start nor be read without end.
    fd = openSync(fileFor(stateDir, key), constants.O_RDONLY | constants.O_NONBLOCK);
    const stat = fstatSync(fd);
    if (!stat.isFile() || stat.size > MAX_FILE_BYTES) return null;
    const buffer = Buffer.alloc(MAX_FILE_BYTES + 1);
    const length = readSync(fd, buffer, 0, buffer.length, 0);
    if (length > MAX_FILE_BYTES) return null;
    const value: unknown = JSON.parse(buffer.toString('utf8', 0, length));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  } finally {
    if (fd !== -1) closeSync(fd);
  }
}

/** Stores `value` for `key`; returns the error message when it could not (the caller logs it). */
export function writeState(stateDir: string, key: string, value: Record<string, unknown>): string | null {
  try {
    mkdirSync(stateDir, { recursive: true });
    const file = fileFor(stateDir, key);
    const temporary = `${file}.${process.pid}.tmp`;
    writeFileSync(temporary, JSON.stringify(value));
    renameSync(temporary, file);
    return null;
  } catch (error) {
    return (error as Error).message;
  }
}
