import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ProxyError } from '../../src/errors.js';
import { parseKeepAliveTimeoutMs, type PooledConnection } from '../../src/pool/http-connection.js';
import type { HttpPool, OriginPool, PoolWaiter } from '../../src/pool/http-pool.js';
import type { HttpPoolConfig } from '../../src/config/schema.js';
import { testHttpPool } from '../helpers/http-pool.js';
import type { ManualClock } from '../../src/clock.js';
import { listen0, freePort } from '../helpers/net.js';
import { Received } from '../helpers/pairs.js';
import type { TestRouteMetrics } from '../helpers/route-metrics.js';
import { sleep, until } from '../helpers/wait.js';

// src/pool/http-pool.ts and http-connection.ts against a real upstream listener on
// loopback. The pool hands out sockets; what goes over them is the exchange's business
// (test/unit/exchange.test.ts), so here a test plays the exchange: it takes a connection,
// and gives it back with release(). Deadlines run on an injected ManualClock.

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** Plays the exchange: records what the pool and the connection tell it. */
class TestWaiter implements PoolWaiter {
  connection: PooledConnection | null = null;
  reused: boolean | null = null;
  failure: unknown = null;
  abandoned = false;
  readonly data: Buffer[] = [];
  upstreamEnded = false;
  closedWith: NodeJS.ErrnoException | null | undefined = undefined;

  connectionReady(connection: PooledConnection, reused: boolean): void {
    this.connection = connection;
    this.reused = reused;
  }
  connectionFailed(error: unknown): void {
    this.failure = error;
  }
  upstreamData(chunk: Buffer): void {
    // A copy: the chunk may be a view of the connection's reused read buffer.
    this.data.push(Buffer.from(chunk));
  }
  upstreamEnd(): void {
    this.upstreamEnded = true;
  }
  upstreamClosed(error: NodeJS.ErrnoException | null): void {
    this.closedWith = error;
  }
  upstreamDrained(): void {}
}

interface Fixture {
  readonly pool: HttpPool;
  readonly origin: OriginPool;
  readonly clock: ManualClock;
  readonly metric: TestRouteMetrics['metric'];
  /** Server ends of the connections the upstream accepted, in order. */
  readonly accepted: net.Socket[];
  /** A waiter that asked for a connection and got one. */
  served(fresh?: boolean): Promise<TestWaiter & { connection: PooledConnection }>;
}

async function fixture(limits: Partial<HttpPoolConfig> = {}, port?: number): Promise<Fixture> {
  const accepted: net.Socket[] = [];
  const upstream = await listen0((socket) => accepted.push(socket));
  cleanups.push(() => upstream.close());
  const { pool, origin, clock, metric } = testHttpPool(port ?? upstream.port, limits);
  cleanups.push(() => pool.destroy('shutdown'));
  const served = async (fresh = false): Promise<TestWaiter & { connection: PooledConnection }> => {
    const waiter = new TestWaiter();
    origin.acquire(waiter, fresh);
    await until(() => waiter.connection ?? waiter.failure, 5_000, 'a connection');
    if (waiter.failure) throw waiter.failure;
    return waiter as TestWaiter & { connection: PooledConnection };
  };
  return { pool, origin, clock, metric, accepted, served };
}

/** The upstream's end of a pooled connection. */
function serverEnd(f: Fixture, connection: PooledConnection): net.Socket {
  return f.accepted.find((s) => s.remotePort === connection.socket.localPort)!;
}

describe('HTTP pool: lease and release', () => {
  it('dials for the first request, parks the connection on release and reuses it for the next', async () => {
    const f = await fixture();
    const first = await f.served();
    expect(first.reused).toBe(false);
    expect(await f.metric('pool_active')).toBe(1);
    f.origin.release(first.connection);
    expect(first.connection.state).toBe('idle');
    expect([await f.metric('pool_idle'), await f.metric('pool_active')]).toEqual([1, 0]);

    const second = await f.served();
    expect(second.connection).toBe(first.connection);
    expect(second.reused).toBe(true);
    expect(second.connection.requests).toBe(2);
    expect(await f.metric('reuse_total')).toBe(1);
    expect(f.accepted).toHaveLength(1);
    // The connection's events go to whoever uses it now.
    serverEnd(f, second.connection).write('HTTP/1.1 200 OK\r\n');
    await until(() => second.data.length > 0, 5_000, 'bytes at the second user');
    expect(first.data).toHaveLength(0);
  });

  it('queues requests past maxSockets and serves them, in order, on released connections', async () => {
    const f = await fixture({ maxSockets: 2 });
    const [a, b] = [await f.served(), await f.served()];
    const queued = [new TestWaiter(), new TestWaiter()];
    for (const waiter of queued) f.origin.acquire(waiter, false);
    await sleep(100);
    expect(queued.map((w) => w.connection)).toEqual([null, null]);
    expect(f.origin.total).toBe(2);

    f.origin.release(b.connection);
    await until(() => queued[0]!.connection, 5_000, 'the first queued request served');
    expect(queued[0]!.connection).toBe(b.connection);
    expect(queued[1]!.connection).toBeNull();
    f.origin.release(a.connection);
    await until(() => queued[1]!.connection, 5_000, 'the second queued request served');
    expect(queued[1]!.connection).toBe(a.connection);
    await until(() => f.accepted.length === 2, 5_000, 'two connections at the upstream');
    expect(f.origin.total).toBe(2);
  });

  it('skips a waiter that gave up while queued', async () => {
    const f = await fixture({ maxSockets: 1 });
    const a = await f.served();
    const gone = new TestWaiter();
    const next = new TestWaiter();
    f.origin.acquire(gone, false);
    f.origin.acquire(next, false);
    gone.abandoned = true;
    f.origin.release(a.connection);
    await until(() => next.connection, 5_000, 'the live waiter served');
    expect(gone.connection).toBeNull();
  });

  it('makes room for a retry (a fresh connection) in a full pool by closing an idle one', async () => {
    const f = await fixture({ maxSockets: 1 });
    const a = await f.served();
    f.origin.release(a.connection);
    const retry = await f.served(true);
    expect(retry.connection).not.toBe(a.connection);
    expect(retry.reused).toBe(false);
    expect(await f.metric('evictions_total', { reason: 'replaced' })).toBe(1);
  });

  it('tells the waiter when the upstream cannot be reached, and counts the connect', async () => {
    const f = await fixture({}, await freePort());
    await expect(f.served()).rejects.toBeInstanceOf(ProxyError);
    expect(await f.metric('upstream_connects_total', { result: 'error' })).toBe(1);
    expect(await f.metric('pool_active')).toBe(0);
  });
});

describe('HTTP pool: eviction', () => {
  it('evicts a connection idle for idleTimeout on the tick, not before', async () => {
    const f = await fixture({ idleTimeoutMs: 10_000 });
    const a = await f.served();
    f.origin.release(a.connection);
    f.clock.advance(9_999);
    expect(a.connection.state).toBe('idle');
    f.clock.advance(1);
    await until(() => a.connection.state === 'closed', 5_000, 'evicted');
    expect(await f.metric('evictions_total', { reason: 'idle_timeout' })).toBe(1);
    expect(await f.metric('pool_idle')).toBe(0);
  });

  // clock: switch to the injected clock once src/clock.ts injection lands (PooledConnection.createdAt reads Date.now()).
  it('retires a connection at maxAge: parked ones on the tick, busy ones when released', async () => {
    const f = await fixture({ maxAgeMs: 60_000 });
    const started = f.clock.now();
    const [parked, busy] = [await f.served(), await f.served()];
    f.origin.release(parked.connection);
    f.clock.advance(60_000 - 1);
    expect(parked.connection.state).toBe('idle');
    // Generous: createdAt is the wall clock when the dial completed, a little after `started`.
    f.clock.advance(started + 65_000 - f.clock.now());
    await until(() => parked.connection.state === 'closed', 5_000, 'the parked one evicted');
    f.origin.release(busy.connection);
    await until(() => busy.connection.state === 'closed', 5_000, 'the busy one retired on release');
    expect(await f.metric('evictions_total', { reason: 'max_age' })).toBe(2);
  });

  it('retires a connection after maxRequests instead of parking it', async () => {
    const f = await fixture({ maxRequests: 3 });
    let connection: PooledConnection | null = null;
    for (let i = 1; i <= 3; i++) {
      const w = await f.served();
      connection ??= w.connection;
      expect(w.connection).toBe(connection);
      expect(w.connection.requests).toBe(i);
      f.origin.release(w.connection);
    }
    await until(() => connection!.state === 'closed', 5_000, 'retired');
    expect(await f.metric('evictions_total', { reason: 'max_requests' })).toBe(1);
    const next = await f.served();
    expect(next.connection).not.toBe(connection);
  });

  const whileParked = [
    { name: 'sends bytes', act: (s: net.Socket) => s.write('HTTP/1.1 408 Request Timeout\r\n\r\n'), reason: 'unexpected_data' },
    { name: 'sends FIN', act: (s: net.Socket) => s.end(), reason: 'peer_closed' },
    { name: 'resets', act: (s: net.Socket) => s.resetAndDestroy(), reason: 'peer_reset' },
  ] as const;

  it.each(whileParked)('evicts a parked connection whose upstream $name, and never hands it out', async (c) => {
    const f = await fixture();
    const a = await f.served();
    f.origin.release(a.connection);
    const upstreamEnd = serverEnd(f, a.connection);
    const atUpstream = new Received(upstreamEnd);
    c.act(upstreamEnd);
    await until(() => a.connection.state === 'closed', 5_000, 'evicted');
    expect(await f.metric('evictions_total', { reason: c.reason })).toBe(1);
    expect(await f.metric('pool_idle')).toBe(0);
    await until(() => atUpstream.ended || atUpstream.closed, 5_000, 'closed at the upstream');
    const next = await f.served();
    expect(next.connection).not.toBe(a.connection);
    expect(next.reused).toBe(false);
  });

  it("hands over a connection parked in an earlier turn only after that turn's FIN was seen", async () => {
    const f = await fixture();
    const a = await f.served();
    f.origin.release(a.connection);
    await sleep(20); // the park is an earlier turn now
    const upstreamEnd = serverEnd(f, a.connection);
    upstreamEnd.end();
    // Give the FIN time to arrive in the kernel without letting node read it, then ask.
    const spin = Date.now() + 50;
    while (Date.now() < spin);
    const w = new TestWaiter();
    f.origin.acquire(w, false);
    await until(() => w.connection, 5_000, 'a connection');
    expect(w.connection).not.toBe(a.connection);
    expect(w.reused).toBe(false);
  });

  it("leaves before the upstream's Keep-Alive timeout by a margin and a tick", async () => {
    const f = await fixture({ idleTimeoutMs: 50_000 });
    const a = await f.served();
    a.connection.keepAliveHintMs = 5_000; // what the exchange read from "Keep-Alive: timeout=5"
    f.origin.release(a.connection);
    const limit = 5_000 - 1_000 - f.clock.periodMs;
    expect(f.pool.idleLimitMs(a.connection)).toBe(limit);
    f.clock.advance(limit - 1);
    expect(a.connection.state).toBe('idle');
    f.clock.advance(1);
    await until(() => a.connection.state === 'closed', 5_000, 'evicted before the upstream closes it');
    expect(await f.metric('evictions_total', { reason: 'idle_timeout' })).toBe(1);
  });

  it('does not park a connection whose upstream allows less idle time than the margin', async () => {
    const f = await fixture({ idleTimeoutMs: 50_000 });
    const a = await f.served();
    a.connection.keepAliveHintMs = 400;
    f.origin.release(a.connection);
    await until(() => a.connection.state === 'closed', 5_000, 'closed at once');
    expect(await f.metric('evictions_total', { reason: 'idle_timeout' })).toBe(1);
  });

  it('closes idle connections on close(reason), lets busy ones finish, then leaves the clock', async () => {
    const f = await fixture();
    const [idle, busy] = [await f.served(), await f.served()];
    f.origin.release(idle.connection);
    expect(f.clock.ticking).toBe(true);
    f.pool.close('shutdown');
    await until(() => idle.connection.state === 'closed', 5_000, 'the idle one closed');
    expect(busy.connection.state).toBe('busy');
    // A busy connection coming back is not parked any more.
    f.origin.release(busy.connection);
    await until(() => busy.connection.state === 'closed', 5_000, 'the busy one closed on release');
    expect(await f.metric('evictions_total', { reason: 'shutdown' })).toBe(2);
    expect(f.clock.ticking).toBe(false);
  });

  // A request queued on a full pool whose client left is no work: a pool a reload closed
  // used to stay on the shared clock for good once its last connection went, because the
  // gone request was still in the queue when it checked.
  it('leaves the clock once closed even when a request that gave up is still queued', async () => {
    const f = await fixture({ maxSockets: 1 });
    const busy = await f.served();
    const gone = new TestWaiter();
    f.origin.acquire(gone, false);
    gone.abandoned = true;
    f.pool.close('reload');
    f.origin.release(busy.connection);
    await until(() => busy.connection.state === 'closed', 5_000, 'the busy one closed on release');
    expect(await f.metric('evictions_total', { reason: 'reload' })).toBe(1);
    expect(gone.connection).toBeNull();
    expect(f.origin.empty).toBe(true);
    expect(f.clock.ticking).toBe(false);
  });
});

describe('parseKeepAliveTimeoutMs', () => {
  it.each([
    ['timeout=5', 5_000],
    ['timeout=5, max=1000', 5_000],
    ['max=100, timeout=7', 7_000],
    ['Timeout = 3', 3_000],
    ['timeout="4"', 4_000],
    [['max=5', 'timeout=9'], 9_000],
    ['max=5', 0],
    ['timeout=', 0],
    ['timeout=-3', 0],
    ['keeptimeout=5', 0],
    ['', 0],
    [undefined, 0],
  ] as Array<[string | string[] | undefined, number]>)('%j -> %d ms', (header, expected) => {
    expect(parseKeepAliveTimeoutMs(header)).toBe(expected);
  });

  it('returns a finite, non-negative number for any header bytes', () => {
    for (let i = 0; i < 2_000; i++) {
      const length = i % 40;
      let header = '';
      for (let j = 0; j < length; j++) header += 'timeout=,; "0123456789aZ\t'[(i * 7 + j * 13) % 25];
      const ms = parseKeepAliveTimeoutMs(header);
      expect(Number.isFinite(ms) && ms >= 0, JSON.stringify(header)).toBe(true);
    }
  });
});
