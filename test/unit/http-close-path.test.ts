import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

// DESIGN.md: every socket end on the HTTP side goes through one close path with a reason
// and a metric; a bare destroy() or end() elsewhere is a bug. This guard reads src/http/
// (and route-base.ts, whose lifecycle the HTTP route runs on) and fails on any
// socket-ending call that is not on the short list below, each with why it may stay. An entry nothing matches any more fails too, so the list cannot go stale.

const HTTP_DIR = resolve(import.meta.dirname, '..', '..', 'src', 'http');
const ENDING_CALL = /\.(destroy|end|resetAndDestroy|destroySoon)\(|\bresetOrDestroy\(/;

interface Allowed {
  readonly file: string;
  /** The whole line, trimmed. */
  readonly line: string;
  /** How many lines of the file read exactly so. */
  readonly count: number;
  readonly why: string;
}

const ALLOWED: readonly Allowed[] = [
  { file: 'client-session.ts', line: 'resetOrDestroy(socket);', count: 1, why: 'the one close path (#endSocket): reset (net/internals.ts)' },
  { file: 'client-session.ts', line: 'socket.destroy();', count: 1, why: 'the one close path (#endSocket): destroy' },
  { file: 'client-session.ts', line: 'socket.end();', count: 1, why: 'the one close path (#endSocket): FIN after the flush' },
  { file: 'route-tunnels.ts', line: 'for (const session of [...this.#tunnels]) session.destroy(reason);', count: 1, why: "a tunnel's own close(reason) (tcp/session.ts), which counts it" },
  { file: 'route.ts', line: 'if (waited) this.#pool.destroy(poolReason);', count: 1, why: "the upstream pool's close path, which counts each connection" },
  {
    file: '../route-base.ts',
    line: 'socket.destroy();',
    count: 1,
    why: 'refused at accept (maxConnections): no session exists yet; counted max_connections just above',
  },
  { file: 'upgrade.ts', line: 'ureq.end();', count: 1, why: 'ends the handshake request message, not a socket' },
  {
    file: 'upgrade.ts',
    line: 'ureq.destroy();',
    count: 1,
    why: 'upstream side of a tunnel not yet started (never pooled, not counted): outside the client-side slice of issue 9',
  },
  { file: 'upgrade.ts', line: 'dialed.socket.destroy();', count: 3, why: 'upstream side of a tunnel not yet started (as above)' },
  { file: 'upgrade.ts', line: 'up.destroy();', count: 2, why: 'upstream side of a tunnel not yet started (as above)' },
  { file: 'upgrade.ts', line: "down.once('close', () => dialed.socket.destroy());", count: 1, why: 'upstream side of a tunnel not yet started (as above)' },
  { file: 'tunnel.ts', line: 'dialed.socket.destroy();', count: 1, why: 'a dial that finished after its client left: upstream side, never used' },
];

function endingCalls(): Map<string, number> {
  const found = new Map<string, number>();
  const files = [...readdirSync(HTTP_DIR).filter((name) => name.endsWith('.ts')), '../route-base.ts'];
  for (const file of files) {
    for (const raw of readFileSync(join(HTTP_DIR, file), 'utf8').split('\n')) {
      const line = raw.trim();
      if (line.startsWith('//') || line.startsWith('*') || !ENDING_CALL.test(line)) continue;
      const key = `${file}: ${line}`;
      found.set(key, (found.get(key) ?? 0) + 1);
    }
  }
  return found;
}

describe('src/http/ ends sockets only through the one close path', () => {
  it('has no socket-ending call outside the allowed list, and every allowed entry still matches', () => {
    const expected = new Map(ALLOWED.map((entry) => [`${entry.file}: ${entry.line}`, entry.count]));
    expect(Object.fromEntries(endingCalls())).toEqual(Object.fromEntries(expected));
  });

  it('recognises the calls it guards', () => {
    for (const call of ['socket.destroy();', 'down.end(buf);', 'x.resetAndDestroy()', 'socket.destroySoon();']) expect(ENDING_CALL.test(call)).toBe(true);
    for (const call of ['socket.destroyed', 'reader.ended', 'endToEnd(raw)']) expect(ENDING_CALL.test(call)).toBe(false);
  });
});
