import { readdirSync } from 'node:fs';
import type net from 'node:net';
import { RawTcp } from '../../src/net/raw-tcp.js';
import pino from 'pino';
import { SockoptRefusals } from '../../src/net/sockopt-refusals.js';
import { afterEach, describe, expect, it } from 'vitest';
import { Clock } from '../../src/clock.js';
import { parseConfigText } from '../../src/config/load.js';
import type { RouteConfig } from '../../src/config/schema.js';
import { readInto } from '../../src/net/shared-reads.js';
import { codecFor } from '../../src/protocols/registry.js';
import { WarmPool, type Lease } from '../../src/pool/warm.js';
import { listen0 } from '../helpers/net.js';
import { Received } from '../helpers/pairs.js';
import { testRouteMetrics, type TestRouteMetrics } from '../helpers/route-metrics.js';
import { until } from '../helpers/wait.js';

// src/pool/warm.ts (the warm pool of a TCP-family route) against a real upstream
// listener on loopback: lease and hand-off, refill, maxIdle eviction driven through
// tick(now), a parked spare that gets EOF, RST or bytes, and the early data kept. Every
// case runs twice: spares parked as sockets, and as raw TCP ends (a route whose clients
// are raw, lease(true)).

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface Upstream {
  readonly port: number;
  /** Server ends of every connection accepted so far, in order. */
  readonly accepted: net.Socket[];
  /** The server end of a lease: the one that receives what is written on it (`marker`, written here). */
  serverEndOf(lease: Lease, marker?: string): Promise<net.Socket>;
}

async function upstream(onConnection: (socket: net.Socket) => void = () => {}): Promise<Upstream> {
  const accepted: net.Socket[] = [];
  const server = await listen0((socket) => {
    accepted.push(socket);
    onConnection(socket);
  });
  cleanups.push(() => server.close());
  const received = new Map<net.Socket, Received>();
  return {
    port: server.port,
    accepted,
    async serverEndOf(lease, marker = `lease-${Math.random()}`) {
      for (const socket of accepted) if (!received.has(socket)) received.set(socket, new Received(socket));
      lease.socket.write(Buffer.from(marker));
      let found: net.Socket | undefined;
      await until(() => (found = accepted.find((socket) => received.get(socket)?.text().includes(marker))) !== undefined, 5_000, 'the marker at the upstream');
      return found!;
    },
  };
}

function routeConfig(upstreamPort: number, extra: string, protocol = 'tcp'): RouteConfig {
  const text = `admin: { listen: off }\nroutes:\n  - { name: warm, protocol: ${protocol}, listen: "127.0.0.1:0", upstream: "127.0.0.1:${upstreamPort}"${extra} }\n`;
  return parseConfigText(text, 'warm-pool.test.yaml').routes[0]!;
}

interface Pool {
  readonly source: WarmPool;
  readonly metric: TestRouteMetrics['metric'];
}

/** Bytes read from a leased socket or raw end, as a session would read them. */
function readFrom(lease: Lease): { text(): string } {
  const read: Buffer[] = [];
  const socket = lease.socket;
  if (socket instanceof RawTcp) {
    const ignore = (): void => {};
    socket.listen({ data: (_end, chunk) => read.push(chunk), end: ignore, error: ignore, drain: ignore, writeFailed: ignore, close: ignore });
  } else {
    readInto(socket, (_socket, chunk) => read.push(chunk));
  }
  socket.resume();
  return { text: () => Buffer.concat(read).toString() };
}

const KINDS = [
  { spares: 'sockets', raw: false },
  { spares: 'raw TCP ends', raw: true },
] as const;

describe.each(KINDS)('warm pool (pool/warm.ts), spares as $spares', ({ raw }) => {
  /** `metrics`: another pool's, for the old and the new pool of one route across a reload. */
  function pool(config: RouteConfig, metrics: TestRouteMetrics = testRouteMetrics(config.name)): Pool & { readonly metrics: TestRouteMetrics } {
    const deps = { metrics: metrics.registry, log: pino({ level: 'silent' }), clock: new Clock(), ownListeners: () => [] };
    const source = new WarmPool(config, codecFor(config.protocol, { send: config.heartbeat?.send }), deps, metrics.route, new SockoptRefusals(config.name, deps), {
      rawSpares: raw,
    });
    cleanups.push(() => source.close('shutdown'));
    return { source, metric: metrics.metric, metrics };
  }

  it("keeps the route's gauges right while the pool a reload replaced still has a lease out", async () => {
    const up = await upstream();
    const config = routeConfig(up.port, ', pool: { warm: 2, maxIdle: 1m }');
    const old = pool(config);
    old.source.start();
    await until(async () => (await old.metric('pool_idle')) === 2, 5_000, 'two spares');
    const lease = await leased(old.source);
    await until(async () => (await old.metric('pool_idle')) === 2, 5_000, 'refilled');
    expect(await old.metric('pool_active')).toBe(1);

    // The reload: a new pool for the route, the old one closed with its lease still in use.
    const replacement = pool(config, old.metrics);
    old.source.close('reload');
    replacement.source.start();
    await until(async () => (await old.metric('pool_idle')) === 2, 5_000, "the new pool's two spares");
    expect(await old.metric('pool_active')).toBe(1);
    // The old pool's session ends: only its share moves.
    lease.pool.release(lease);
    expect(await old.metric('pool_active')).toBe(0);
    expect(await old.metric('pool_idle')).toBe(2);
    // And a lease from the new pool counts as the old one did.
    const next = await leased(replacement.source);
    expect(await old.metric('pool_active')).toBe(1);
    next.pool.release(next);
    expect(await old.metric('pool_active')).toBe(0);
  });

  async function leased(source: WarmPool): Promise<Lease> {
    const lease = await source.lease(raw).done;
    cleanups.push(() => lease.socket.destroy());
    expect(lease.socket instanceof RawTcp).toBe(raw);
    return lease;
  }

  it('parks `warm` spares, hands one over as reused, and refills behind it', async () => {
    const up = await upstream();
    const p = pool(routeConfig(up.port, ', pool: { warm: 2, maxIdle: 1m }'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 2, 5_000, 'two spares');
    await until(() => up.accepted.length === 2, 5_000, 'two accepted at the upstream');

    const lease = await leased(p.source);
    expect(lease.reused).toBe(true);
    // One of the two parked sockets, not a new one; and it works both ways after the
    // hand-off (its reads go to one reader, as a session's do).
    const read = readFrom(lease);
    const serverEnd = await up.serverEndOf(lease, 'ping');
    expect(up.accepted.slice(0, 2)).toContain(serverEnd);
    serverEnd.write('pong');
    await until(() => read.text() === 'pong', 5_000, 'bytes from the upstream');
    await until(() => up.accepted.length === 3, 5_000, 'the refill dial');
    await until(async () => (await p.metric('pool_idle')) === 2, 5_000, 'two spares again');
    expect(await p.metric('reuse_total')).toBe(1);
    expect(await p.metric('pool_active')).toBe(1);

    lease.pool.release(lease);
    expect(await p.metric('pool_active')).toBe(0);
  });

  it('dials a fresh socket per lease without a warm pool, counted as not reused', async () => {
    const up = await upstream();
    const p = pool(routeConfig(up.port, ''));
    p.source.start();
    const lease = await leased(p.source);
    expect(lease.reused).toBe(false);
    expect(lease.earlyData).toEqual([]);
    // Leased at its connect; the upstream's 'connection' for it may come a poll later.
    await until(() => up.accepted.length >= 1, 5_000, 'accepted at the upstream');
    expect(up.accepted).toHaveLength(1);
    expect(await p.metric('reuse_total')).toBe(0);
    expect(await p.metric('upstream_connects_total', { result: 'ok' })).toBe(1);
  });

  it('evicts spares parked for maxIdle on the tick, not before, and refills', async () => {
    const up = await upstream();
    const p = pool(routeConfig(up.port, ', pool: { warm: 2, maxIdle: 60s }'));
    const before = Date.now();
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 2, 5_000, 'two spares');
    const parked = Date.now();
    await until(() => up.accepted.length === 2, 5_000, 'two accepted at the upstream');
    const first = up.accepted.map((socket) => new Received(socket));

    p.source.tick(before + 60_000 - 1);
    expect(await p.metric('evictions_total', { reason: 'idle_timeout' })).toBe(0);
    expect(await p.metric('pool_idle')).toBe(2);

    p.source.tick(parked + 60_000);
    expect(await p.metric('evictions_total', { reason: 'idle_timeout' })).toBe(2);
    await until(() => first.every((r) => r.ended || r.closed), 5_000, 'the evicted sockets closed at the upstream');
    // The same tick asked for new spares. A spare is parked at its connect; the upstream's
    // 'connection' for it may come a poll later.
    await until(async () => (await p.metric('pool_idle')) === 2, 5_000, 'two new spares');
    await until(() => up.accepted.length >= 4, 5_000, 'the refills accepted at the upstream');
    expect(up.accepted).toHaveLength(4);
  });

  const deaths = [
    { name: 'EOF', kill: (socket: net.Socket) => socket.end(), reason: 'peer_closed' },
    { name: 'RST', kill: (socket: net.Socket) => socket.resetAndDestroy(), reason: 'peer_reset' },
    // Linux reports this as end-of-stream with the reset left pending (SO_ERROR).
    { name: 'bytes then RST', kill: (socket: net.Socket) => socket.write('-ERR going away\r\n', () => socket.resetAndDestroy()), reason: 'peer_reset' },
    { name: 'more early bytes than a greeting', kill: (socket: net.Socket) => socket.write(Buffer.alloc(256 * 1024, 0x61)), reason: 'error' },
  ] as const;

  it.each(deaths)('evicts a spare that gets $name while parked, and never hands it out', async (death) => {
    const up = await upstream();
    const p = pool(routeConfig(up.port, ', pool: { warm: 1, maxIdle: 1m }'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 1, 5_000, 'one spare');
    await until(() => up.accepted.length === 1, 5_000, 'accepted at the upstream');
    const doomed = up.accepted[0]!;
    const atDoomed = new Received(doomed);
    death.kill(doomed);
    await until(async () => (await p.metric('evictions_total', { reason: death.reason })) === 1, 5_000, `eviction ${death.reason}`);
    expect(await p.metric('pool_idle')).toBe(0);
    await until(() => atDoomed.closed, 5_000, 'the evicted socket closed');
    // The eviction makes a tick refill: at once for a spare that proved itself, after the
    // refill backoff for one the upstream dropped within SPARE_PROVEN_MS (as here).
    await until(
      async () => {
        p.source.tick(Date.now());
        return (await p.metric('pool_idle')) === 1;
      },
      5_000,
      'a new spare',
    );
    const lease = await leased(p.source);
    expect(await up.serverEndOf(lease)).toBe(up.accepted[1]);
  });

  it("keeps what the upstream sends first while parked and hands it over with the socket, in order", async () => {
    let allWritten = false;
    const up = await upstream((socket) => {
      socket.write('greet');
      setTimeout(() => socket.write('ing\n', () => (allWritten = true)), 10);
    });
    const p = pool(routeConfig(up.port, ', pool: { warm: 1, maxIdle: 1m }'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 1, 5_000, 'one spare');
    // Not a fixed sleep: on a loaded machine both timers can fire in one turn and the lease
    // would overtake the second write. Once the kernel has taken it (loopback: it is in the
    // spare's receive queue), the next poll phase reads it; two turns of the loop let it.
    await until(() => allWritten, 5_000, 'both parts written by the upstream');
    for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve));
    const lease = await leased(p.source);
    expect(lease.reused).toBe(true);
    expect(Buffer.concat(lease.earlyData as Buffer[]).toString()).toBe('greeting\n');
    expect(await p.metric('evictions_total', { reason: 'error' })).toBe(0);
  });

  it('probes a parked redis spare on the tick and evicts it when the reply is late', async () => {
    const up = await upstream();
    const p = pool(routeConfig(up.port, ', pool: { warm: 1, maxIdle: 1h }, heartbeat: { every: 10s, timeout: 2s, jitter: 0 }', 'redis'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 1, 5_000, 'one spare');
    await until(() => up.accepted.length === 1, 5_000, 'accepted at the upstream');
    const atServer = new Received(up.accepted[0]!);
    const parked = Date.now();
    const probeAt = parked + 10_000;
    p.source.tick(probeAt);
    await until(() => atServer.text() === '*1\r\n$4\r\nPING\r\n', 5_000, 'a PING at the upstream');
    p.source.tick(probeAt + 1_999);
    expect(await p.metric('pool_idle')).toBe(1);
    p.source.tick(probeAt + 2_000);
    expect(await p.metric('evictions_total', { reason: 'heartbeat_timeout' })).toBe(1);
    expect(await p.metric('heartbeats_total', { result: 'timeout' })).toBe(1);
  });

  it('closes every spare on close(reason), counts them, and dials no more', async () => {
    const up = await upstream();
    const p = pool(routeConfig(up.port, ', pool: { warm: 3, maxIdle: 1m }'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 3, 5_000, 'three spares');
    await until(() => up.accepted.length === 3, 5_000, 'three accepted at the upstream');
    const atServer = up.accepted.map((socket) => new Received(socket));
    p.source.close('shutdown');
    expect(await p.metric('evictions_total', { reason: 'shutdown' })).toBe(3);
    expect(await p.metric('pool_idle')).toBe(0);
    await until(() => atServer.every((r) => r.ended || r.closed), 5_000, 'spares closed at the upstream');
    p.source.tick(Date.now() + 3_600_000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(up.accepted).toHaveLength(3);
  });

  // The hand-off yields one turn (#handOff) with the spare already out of the pool: what
  // the upstream does in that turn, and a client that leaves in it, must still end with
  // every spare closed once, counted once by its own reason, and the gauges right.
  const handOffDeaths = [
    // Each is sent before lease() returns, so it is read in the yield's turn.
    { name: 'FIN', kill: (socket: net.Socket) => socket.destroy(), reason: 'peer_closed' },
    { name: 'RST', kill: (socket: net.Socket) => socket.resetAndDestroy(), reason: 'peer_reset' },
    // libuv since Node 24 stops reading at a short read, so the bytes are read in one poll and
    // the reset in the next: lease() comes after the first, the reset lands in the yield's turn.
    { name: 'bytes then RST', kill: (socket: net.Socket) => (socket.write('-ERR going away\r\n'), socket.resetAndDestroy()), reason: 'peer_reset', pollsFirst: 1 },
    { name: 'more early bytes than a greeting', kill: (socket: net.Socket) => socket.write(Buffer.alloc(256 * 1024, 0x61)), reason: 'error' },
  ] as const;

  it.each(handOffDeaths)('closes and counts once a spare that gets $name during the hand-off, and dials the client afresh', async (death) => {
    const up = await upstream();
    const baseline = openFds();
    const p = pool(routeConfig(up.port, ', pool: { warm: 1, maxIdle: 1m }'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 1, 5_000, 'one spare');
    await until(() => up.accepted.length === 1, 5_000, 'accepted at the upstream');
    // From a check-phase callback, the hand-off's own setImmediate runs after the next poll.
    const attempt = await new Promise<ReturnType<WarmPool['lease']>>((resolve) =>
      setImmediate(() => {
        death.kill(up.accepted[0]!);
        const lease = (): void => resolve(p.source.lease(raw));
        if ('pollsFirst' in death) setImmediate(lease);
        else lease();
      }),
    );
    const lease = await attempt.done;
    expect(lease.reused).toBe(false);
    expect(lease.socket instanceof RawTcp).toBe(raw);
    expect(lease.earlyData).toEqual([]);
    expect(await p.metric('evictions_total', { reason: death.reason })).toBe(1);
    expect(await evictionsTotal(p)).toBe(1);
    expect(await p.metric('pool_active')).toBe(1);
    lease.socket.destroy();
    p.source.release(lease);
    p.source.close('shutdown');
    for (const socket of up.accepted) socket.destroy();
    await until(() => openFds() <= baseline, 5_000, `fds back to ${baseline}`);
    expect(await p.metric('pool_active')).toBe(0);
    expect(await p.metric('pool_idle')).toBe(0);
    // The dead spare once, then every other spare once, at shutdown.
    expect(await evictionsTotal(p)).toBe(up.accepted.length - 1);
  });

  it('gives the spare back when the client leaves during the hand-off: pool_active 0, each spare closed and counted once', async () => {
    const up = await upstream();
    const baseline = openFds();
    const p = pool(routeConfig(up.port, ', pool: { warm: 2, maxIdle: 1m }'));
    p.source.start();
    await until(async () => (await p.metric('pool_idle')) === 2, 5_000, 'two spares');
    for (let round = 0; round < 20; round++) {
      const attempt = p.source.lease(raw);
      attempt.abort();
      await expect(attempt.done).rejects.toMatchObject({ code: 'CONNECT_FAILED', side: 'downstream' });
      expect(await p.metric('pool_active')).toBe(0);
    }
    await until(async () => (await p.metric('pool_idle')) === 2, 5_000, 'two spares again');
    expect(await p.metric('reuse_total')).toBe(0);
    p.source.close('shutdown');
    for (const socket of up.accepted) socket.destroy();
    await until(() => openFds() <= baseline, 5_000, `fds back to ${baseline}`);
    expect(await evictionsTotal(p)).toBe(up.accepted.length - 2 + 2);
    expect(await p.metric('pool_idle')).toBe(0);
    expect(await p.metric('pool_active')).toBe(0);
  });
});

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** evictions_total over every reason. */
async function evictionsTotal(p: Pool): Promise<number> {
  let total = 0;
  for (const reason of ['peer_closed', 'peer_reset', 'error', 'shutdown', 'idle_timeout', 'heartbeat_timeout', 'reload']) total += await p.metric('evictions_total', { reason });
  return total;
}
