import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

// "One of each shared mechanism" (DESIGN.md), held by reading the sources: a second
// copy of a mechanism is the place where the next fix lands in one copy only.

const SRC = new URL('../../src/', import.meta.url).pathname;

function sources(dir = SRC): { file: string; text: string }[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith('.ts') ? [{ file: relative(SRC, path), text: readFileSync(path, 'utf8') }] : [];
  });
}

/** Lines of src/ matching `pattern`, outside the files allowed to hold it: "file:line: text". */
function occurrences(pattern: RegExp, allowed: readonly string[]): string[] {
  const found: string[] = [];
  for (const { file, text } of sources()) {
    if (allowed.includes(file)) continue;
    text.split('\n').forEach((line, index) => {
      if (pattern.test(line)) found.push(`${file}:${index + 1}: ${line.trim()}`);
    });
  }
  return found;
}

describe('one of each', () => {
  it('formats host:port in one place (config/hostport.ts formatHostPort)', () => {
    // A bracketed host before a port, written out: `[${host}]:${port}`.
    expect(occurrences(/\[\$\{[^}]+\}\]:\$\{/, ['config/hostport.ts'])).toEqual([]);
  });
});

describe('Node internals stay in src/net/internals.ts', () => {
  // Each entry: a file allowed to use one, and why.
  const ALLOWED = [
    'net/internals.ts',
    // resettableTls makes a TLS socket's resetAndDestroy (public API since Node 16.17) reset
    // the TCP socket under it: the TLS socket's own throws. It lives with the other TLS socket helpers.
    'net/tls-socket.ts',
  ];

  it('no _handle, stream state, undocumented option, symbol lookup or resetAndDestroy elsewhere', () => {
    const internal = /\b_handle\b|_readableState|_writableState|\bpauseOnCreate\b|getOwnPropertySymbols|Symbol\.for\(|\bresetAndDestroy\b|internalBinding|process\.binding/;
    expect(occurrences(internal, ALLOWED)).toEqual([]);
  });
});

describe('socket options are applied with their result checked', () => {
  it('calls applyKeepalive only through net/sockopt-refusals.ts (counted and logged when refused)', () => {
    expect(occurrences(/\bapplyKeepalive\(/, ['net/sockopt.ts', 'net/sockopt-refusals.ts'])).toEqual([]);
  });
});

describe('time comes from the injected clock', () => {
  it('reads Date.now() and performance.now() only in src/clock.ts', () => {
    expect(occurrences(/\bDate\.now\(|\bperformance\.now\(/, ['clock.ts'])).toEqual([]);
  });
});

describe('one heartbeat schedule (src/heartbeat/scheduler.ts)', () => {
  it('writes probes and reads the jitter only through the schedule', () => {
    const ALLOWED = [
      'heartbeat/scheduler.ts',
      // A canary takes the codec's probe bytes to send once; when it sends is the idle
      // search's business (discover/search.ts), not a heartbeat schedule.
      'discover/probes.ts',
    ];
    expect(occurrences(/\.probe\(\)/, ALLOWED)).toEqual([]);
    expect(occurrences(/\.jitter\b/, ['heartbeat/scheduler.ts', 'config/resolve.ts'])).toEqual([]);
  });
});

describe('one route lifecycle (src/route-base.ts)', () => {
  it('binds route listeners, refuses past maxConnections and waits for drains only in the route base', () => {
    // The admin server binds through listenOn too: it is no route.
    expect(occurrences(/\blistenOn\(/, ['route-base.ts', 'net/listen.ts', 'admin/server.ts'])).toEqual([]);
    expect(occurrences(/\bapplyKeepaliveToListener\(/, ['route-base.ts', 'net/sockopt.ts'])).toEqual([]);
    expect(occurrences(/maxConnections reached|\bdrainWaiters\b/, ['route-base.ts'])).toEqual([]);
  });

  it('keeps every upstream pool in src/pool/ (the warm pool beside the HTTP pool)', () => {
    const pools = sources().filter(({ file }) => !file.startsWith('pool/')).map(({ file }) => file);
    expect(occurrences(/\bclass \w*(Pool|Source)\b/, []).filter((line) => pools.some((file) => line.startsWith(`${file}:`)))).toEqual([]);
  });
});
