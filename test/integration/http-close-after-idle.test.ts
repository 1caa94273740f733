import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { httpRouteConfig, request, startRoute } from '../helpers/http.js';
import { listen0 } from '../helpers/net.js';
import { sleep } from '../helpers/wait.js';

// Backends that close idle keep-alive connections sooner than their `Keep-Alive: timeout=60`
// says. The pool learns the idle age at which the upstream closed one of its connections and
// parks connections for less from then on:
//  - a lazy closer (it finds the connection stale only when the next request arrives, and
//    drops it unanswered) costs one retried request, then no more;
//  - an eager closer (FIN after N ms idle, while the connection is parked) stops beating the
//    pool to it: the pool retires its connections first (idle_timeout), not the upstream.

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

type Closer = { kind: 'lazy'; close: 'fin' | 'rst' } | { kind: 'eager' };

/** GET-only HTTP/1.1 origin that advertises timeout=60 and closes after `idleCloseMs` of idle. */
async function earlyClosingOrigin(idleCloseMs: number, closer: Closer) {
  let answered = 0;
  let dropped = 0;
  const server = await listen0((socket: net.Socket) => {
    let buffered = '';
    let lastAnsweredAt = Date.now();
    let idleTimer: NodeJS.Timeout | null = null;
    socket.on('close', () => idleTimer && clearTimeout(idleTimer));
    socket.setEncoding('latin1');
    socket.on('data', (text: string) => {
      buffered += text;
      for (let end = buffered.indexOf('\r\n\r\n'); end !== -1; end = buffered.indexOf('\r\n\r\n')) {
        buffered = buffered.slice(end + 4);
        if (closer.kind === 'lazy' && Date.now() - lastAnsweredAt > idleCloseMs) {
          dropped++;
          if (closer.close === 'rst') socket.resetAndDestroy();
          else socket.destroy();
          return;
        }
        answered++;
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\nok');
        lastAnsweredAt = Date.now();
        if (closer.kind === 'eager') {
          if (idleTimer) clearTimeout(idleTimer);
          idleTimer = setTimeout(() => socket.end(), idleCloseMs);
        }
      }
    });
  });
  cleanups.push(() => server.close());
  return { port: server.port, answered: () => answered, dropped: () => dropped };
}

async function routeTo(port: number) {
  const route = await startRoute(
    httpRouteConfig(`
      protocol: http
      upstream: http://127.0.0.1:${port}
      pool: { maxSockets: 4, idleTimeout: 50s }
    `),
  );
  cleanups.push(() => route.close());
  return route;
}

describe('HTTP pool: learning an upstream that closes idle connections before its Keep-Alive says', () => {
  // Several closers and idle gaps: the class, not one timing.
  const lazyCases: Array<{ idleCloseMs: number; gapMs: number; close: 'fin' | 'rst' }> = [
    { idleCloseMs: 200, gapMs: 500, close: 'fin' },
    { idleCloseMs: 300, gapMs: 900, close: 'rst' },
    { idleCloseMs: 600, gapMs: 1_300, close: 'fin' },
  ];

  for (const { idleCloseMs, gapMs, close } of lazyCases) {
    it(`a lazy closer (${close} after ${idleCloseMs} ms idle, requests every ${gapMs} ms): one retry, then none`, async () => {
      const origin = await earlyClosingOrigin(idleCloseMs, { kind: 'lazy', close });
      const route = await routeTo(origin.port);
      const REQUESTS = 8;
      const retriesAfter: number[] = [];
      for (let i = 0; i < REQUESTS; i++) {
        const reply = await request(route.port, { path: `/${i}` });
        expect(reply.status, `request ${i}`).toBe(200);
        retriesAfter.push(await route.metric('retries_total', { route: 'web' }));
        await sleep(gapMs);
      }
      // The first reuse meets the stale connection (one retry); learned, the pool never reuses one that old again.
      expect(retriesAfter[1], `retries after each request: ${retriesAfter}`).toBe(1);
      expect(retriesAfter[REQUESTS - 1], `retries after each request: ${retriesAfter}`).toBe(1);
      const learned = await route.metric('pool_learned_idle_timeout_seconds', { route: 'web' });
      expect(learned).toBeGreaterThanOrEqual(idleCloseMs / 1000);
      expect(learned).toBeLessThan((gapMs + 500) / 1000);
      expect(origin.dropped()).toBe(1);
    }, 30_000);
  }

  it('an eager closer (FIN after 700 ms idle): after the first, the pool retires its connections before the upstream closes them', async () => {
    const origin = await earlyClosingOrigin(700, { kind: 'eager' });
    const route = await routeTo(origin.port);
    const closedByUpstream: number[] = [];
    for (let i = 0; i < 5; i++) {
      expect((await request(route.port, { path: `/${i}` })).status).toBe(200);
      await sleep(1_200);
      closedByUpstream.push(await route.metric('evictions_total', { route: 'web', reason: 'peer_closed' }));
    }
    expect(closedByUpstream[closedByUpstream.length - 1], `upstream closes after each idle gap: ${closedByUpstream}`).toBe(1);
    expect(await route.metric('evictions_total', { route: 'web', reason: 'idle_timeout' })).toBeGreaterThanOrEqual(3);
    const learned = await route.metric('pool_learned_idle_timeout_seconds', { route: 'web' });
    expect(learned).toBeGreaterThanOrEqual(0.6);
    expect(learned).toBeLessThan(1.2);
  }, 30_000);
});
