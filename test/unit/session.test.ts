import type net from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { HeartbeatConfig } from '../../src/config/schema.js';
import { Clock, ManualClock } from '../../src/clock.js';
import type { EvictionReason, Side } from '../../src/errors.js';
import { customCodec } from '../../src/protocols/custom.js';
import { Session, type HeartbeatResult, type SessionEvents, type SessionOptions } from '../../src/tcp/session.js';
import { acceptedRawPair, dialledRawPair, Received, socketPair } from '../helpers/pairs.js';
import { SocketEnd, type SpliceEnd } from '../../src/net/splice-end.js';
import { Prng } from '../helpers/wire/prng.js';
import { sleep, until } from '../helpers/wait.js';

// src/tcp/session.ts on real loopback socket pairs, no mocks:
//   client <-> down [Session] up <-> server
// The test plays client and server on the outer ends. Every case runs twice: with the
// proxy's ends as raw TCP handles (net/raw-tcp.ts, the plain TCP path) and as sockets
// (net/splice-end.ts SocketEnd: TLS, tunnels). Deadlines (idle timeout, heartbeat
// schedule, probe timeout) are driven by calling session.tick(now) with chosen times.

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

class RecordedEvents implements SessionEvents {
  readonly closing: Array<{ reason: EvictionReason; side: Side }> = [];
  readonly closed: Array<{ reason: EvictionReason; side: Side }> = [];
  readonly heartbeats: Array<{ result: HeartbeatResult; detail?: string }> = [];
  readonly bytes = { upstream: 0, downstream: 0 };
  onClosing(_session: Session, reason: EvictionReason, side: Side): void {
    this.closing.push({ reason, side });
  }
  onClosed(_session: Session, reason: EvictionReason, side: Side): void {
    // onClosing must have come first with the same reason and side (the route counts the end
    // there): a miss is recorded as reason 'error', which no case expects.
    const told = this.closing.at(-1);
    this.closed.push(told?.reason === reason && told.side === side ? { reason, side } : { reason: 'error', side });
  }
  onBytes(direction: 'upstream' | 'downstream', count: number): void {
    this.bytes[direction] += count;
  }
  onHeartbeat(_session: Session, result: HeartbeatResult, _rttMs: number, detail?: string): void {
    this.heartbeats.push({ result, detail });
  }
}

interface Spliced {
  readonly session: Session;
  readonly events: RecordedEvents;
  readonly client: net.Socket;
  readonly server: net.Socket;
  readonly atClient: Received;
  readonly atServer: Received;
}

type EndKind = 'raw' | 'socket';
/** The kind of end the running cases splice (set by the describe.each around them). */
let endKind: EndKind = 'raw';

/** client <-> down and up <-> server, with down and up of the running kind. */
async function pairs(): Promise<{ client: net.Socket; down: SpliceEnd; up: SpliceEnd; server: net.Socket }> {
  if (endKind === 'raw') {
    const downstream = await acceptedRawPair();
    const upstream = await dialledRawPair();
    cleanups.push(downstream.close, upstream.close);
    return { client: downstream.near, down: downstream.far, up: upstream.near, server: upstream.far };
  }
  const downstream = await socketPair();
  const upstream = await socketPair();
  cleanups.push(downstream.close, upstream.close);
  return { client: downstream.near, down: new SocketEnd(downstream.far), up: new SocketEnd(upstream.near), server: upstream.far };
}

async function spliced(options: Partial<SessionOptions> = {}): Promise<Spliced> {
  const { client, down, up, server } = await pairs();
  const events = new RecordedEvents();
  const atClient = new Received(client);
  const atServer = new Received(server);
  const session = new Session(down, up, events, {
    id: 't',
    idleTimeoutMs: 0,
    heartbeat: null,
    tracker: null,
    reused: false,
    earlyData: [],
    clock: new Clock(),
    ...options,
  });
  down.resume();
  up.resume();
  return { session, events, client, server, atClient, atServer };
}

const PING = Buffer.from('PING\n');
const PONG = Buffer.from('PONG\n');

function heartbeat(overrides: Partial<HeartbeatConfig> = {}): HeartbeatConfig {
  return { everyMs: 5_000, timeoutMs: 1_000, jitter: 0, inTransaction: false, maxIdleMs: 0, send: PING, expect: PONG, ...overrides };
}

function withHeartbeat(overrides: Partial<HeartbeatConfig> = {}): Partial<SessionOptions> {
  const config = heartbeat(overrides);
  return { heartbeat: config, tracker: customCodec.track({ send: config.send, expect: config.expect }) };
}

/** A pattern whose every byte depends on its offset: a drop, a duplicate or a swap shows. */
function pattern(length: number, seed = 1): Buffer {
  const buffer = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buffer[i] = (i * 31 + seed + (i >> 8)) & 0xff;
  return buffer;
}

async function closedOnce(s: Spliced): Promise<{ reason: EvictionReason; side: Side }> {
  await until(() => s.events.closed.length > 0, 5_000, 'session closed');
  // Later events of the same sockets must not report a second close.
  await sleep(50);
  expect(s.events.closed).toHaveLength(1);
  return s.events.closed[0]!;
}

/**
 * Waits (bounded) until a peer saw its socket end, by FIN or by error: the session reports its
 * close once its own sockets are closed, which can be before a peer has read the FIN.
 */
async function sawTheEnd(peer: Received, who: string): Promise<void> {
  await until(() => peer.ended || peer.error !== null, 5_000, `the end at ${who}`);
}

describe.each(['raw', 'socket'] as const)('%s ends', (kind) => {
  beforeAll(() => {
    endKind = kind;
  });

  describe('Session: the splice', () => {
    it('carries bytes both ways and counts them', async () => {
      const s = await spliced();
      s.client.write('hello');
      await until(() => s.atServer.length === 5, 5_000, 'request at the server');
      s.server.write('world!');
      await until(() => s.atClient.length === 6, 5_000, 'reply at the client');
      expect(s.atServer.text()).toBe('hello');
      expect(s.atClient.text()).toBe('world!');
      expect([s.session.bytesUp, s.session.bytesDown]).toEqual([5, 6]);
      expect(s.events.bytes).toEqual({ upstream: 5, downstream: 6 });
    });

    it("hands the upstream's early bytes to the client before anything the upstream sends later", async () => {
      const s = await spliced({ earlyData: [Buffer.from('greet'), Buffer.from('ing;')] });
      s.server.write('later');
      await until(() => s.atClient.length === 14, 5_000, 'early data and the later bytes');
      expect(s.atClient.text()).toBe('greeting;later');
      expect(s.session.bytesDown).toBe(14);
    });

    // Loopback socket buffers can hold several MiB per hop (autotuned), so the transfer is
    // much larger than all of them together: a proxy that reads on regardless of the other
    // side's full buffer reads it all into memory.
    const BULK = 64 * 1024 * 1024;

    const directions = [
      { name: 'the client while the upstream does not read (backpressure up)', from: 'client', to: 'server', count: 'bytesUp', reading: 'down', writing: 'up' },
      { name: 'the upstream while the client does not read (backpressure down)', from: 'server', to: 'client', count: 'bytesDown', reading: 'up', writing: 'down' },
    ] as const;
    it.each(directions)('stops reading $name, then delivers every byte in order', async (d) => {
      const s = await spliced();
      const receiver = d.to === 'server' ? s.atServer : s.atClient;
      s[d.to].pause();
      const data = pattern(BULK, d.count.length);
      s[d.from].write(data);
      const stalled = await stalledAt(() => s.session[d.count]);
      expect(stalled).toBeLessThan(BULK / 2);
      expect(s.session[d.reading].paused).toBe(true);
      // What the proxy holds in memory is bounded by the socket buffers, not by the peer.
      expect(s.session[d.writing].writableLength).toBeLessThan(1024 * 1024);
      s[d.to].resume();
      await until(() => receiver.length === BULK, 30_000, `the whole transfer at the ${d.to}`);
      expect(receiver.bytes.equals(data)).toBe(true);
    });

    it("passes the client's FIN on as a FIN: the server can still answer, then the pair closes once", async () => {
      const s = await spliced();
      s.client.end('last request');
      await until(() => s.atServer.ended, 5_000, 'FIN at the server');
      expect(s.atServer.text()).toBe('last request');
      expect(s.atClient.ended).toBe(false);
      s.server.write('late answer');
      await until(() => s.atClient.length === 11, 5_000, 'answer after the half-close');
      expect(s.events.closed).toHaveLength(0);
      s.server.end();
      expect(await closedOnce(s)).toEqual({ reason: 'peer_closed', side: 'proxy' });
      await sawTheEnd(s.atClient, 'the client');
      expect(s.atClient.text()).toBe('late answer');
      expect(s.atClient.ended).toBe(true);
      expect(s.atClient.error).toBeNull();
    });

    it("passes the upstream's FIN on as a FIN: the client can still send, then the pair closes once", async () => {
      const s = await spliced();
      s.server.end('bye');
      await until(() => s.atClient.ended, 5_000, 'FIN at the client');
      s.client.write('still talking');
      await until(() => s.atServer.length === 13, 5_000, 'client bytes after the half-close');
      expect(s.events.closed).toHaveLength(0);
      s.client.end();
      expect(await closedOnce(s)).toEqual({ reason: 'peer_closed', side: 'proxy' });
      await sawTheEnd(s.atServer, 'the server');
      expect(s.atServer.text()).toBe('still talking');
      expect(s.atServer.ended).toBe(true);
    });

    it("resets the upstream when the client resets, after the client's last bytes", async () => {
      const s = await spliced();
      s.client.write('last words');
      await until(() => s.atServer.length === 10, 5_000, 'last words at the server');
      s.client.resetAndDestroy();
      expect(await closedOnce(s)).toEqual({ reason: 'peer_reset', side: 'downstream' });
      await until(() => s.atServer.closed, 5_000, 'server socket closed');
      expect(s.atServer.error?.code).toBe('ECONNRESET');
    });

    it("resets the client when the upstream resets, after the upstream's last bytes", async () => {
      const s = await spliced();
      s.server.write('-ERR going away\r\n');
      await until(() => s.atClient.length === 17, 5_000, 'error reply at the client');
      s.server.resetAndDestroy();
      expect(await closedOnce(s)).toEqual({ reason: 'peer_reset', side: 'upstream' });
      await until(() => s.atClient.closed, 5_000, 'client socket closed');
      expect(s.atClient.error?.code).toBe('ECONNRESET');
      expect(s.atClient.text()).toBe('-ERR going away\r\n');
    });

    it('reports close(reason, side) exactly once whatever order the ending events come in', async () => {
      type Step = (s: Spliced) => void;
      const steps: Record<string, Step> = {
        clientFin: (s) => s.client.end(),
        serverFin: (s) => s.server.end(),
        clientReset: (s) => s.client.resetAndDestroy(),
        serverReset: (s) => s.server.resetAndDestroy(),
        closeShutdown: (s) => s.session.close('shutdown', 'proxy'),
        closeError: (s) => s.session.close('heartbeat_timeout', 'upstream'),
        destroy: (s) => s.session.destroy('shutdown'),
        idleTick: (s) => s.session.tick(s.session.lastPayloadAt + 60_000),
        graceTick: (s) => s.session.tick(Date.now() + 3_600_000),
      };
      const names = Object.keys(steps);
      const random = new Prng(20_250_609);
      for (let round = 0; round < 24; round++) {
        const s = await spliced({ idleTimeoutMs: 60_000 });
        const order = Array.from({ length: random.int(2, 5) }, () => random.pick(names));
        for (const name of order) {
          steps[name]!(s);
          // Sometimes let the sockets' events run between steps, sometimes not.
          if (random.chance(0.5)) await sleep(random.int(0, 4));
        }
        // Whatever happened, the pair must end: a clean close whose peer never reads ends at the grace.
        s.session.tick(Date.now() + 3_600_000);
        await until(() => s.events.closed.length > 0, 5_000, `a close after ${order.join(', ')}`);
        await sleep(30);
        s.session.close('error', 'proxy');
        s.session.destroy('shutdown');
        s.session.tick(Date.now() + 7_200_000);
        expect(s.events.closed, order.join(', ')).toHaveLength(1);
        expect(s.session.down.destroyed && s.session.up.destroyed, order.join(', ')).toBe(true);
      }
    });

    it('keeps the reason and side of the first close when the sockets close afterwards', async () => {
      const s = await spliced();
      s.session.close('heartbeat_timeout', 'upstream');
      s.server.resetAndDestroy();
      s.client.resetAndDestroy();
      expect(await closedOnce(s)).toEqual({ reason: 'heartbeat_timeout', side: 'upstream' });
    });
  });

  describe('Session: deadlines on the tick', () => {
    it('closes an idle pair at idleTimeout, not a millisecond before, with a FIN to both sides', async () => {
      const s = await spliced({ idleTimeoutMs: 10_000 });
      s.session.tick(s.session.startedAt + 9_999);
      expect(s.session.closed).toBe(false);
      s.session.tick(s.session.startedAt + 10_000);
      expect(s.session.closed).toBe(true);
      expect(await closedOnce(s)).toEqual({ reason: 'idle_timeout', side: 'proxy' });
      await sawTheEnd(s.atClient, 'the client');
      await sawTheEnd(s.atServer, 'the server');
      expect(s.atClient.ended && s.atServer.ended).toBe(true);
      expect(s.atClient.error ?? s.atServer.error).toBeNull();
    });

    it('restarts the idle deadline on payload', async () => {
      const clock = new ManualClock();
      const s = await spliced({ idleTimeoutMs: 10_000, clock });
      clock.advance(60_000);
      s.client.write('x');
      await until(() => s.atServer.length === 1, 5_000, 'the byte at the server');
      s.session.tick(clock.now());
      expect(s.session.closed).toBe(false);
      s.session.tick(s.session.lastPayloadAt + 10_000);
      expect(s.session.closed).toBe(true);
    });

    it('never closes for idleness with idleTimeout 0', async () => {
      const s = await spliced({ idleTimeoutMs: 0 });
      s.session.tick(Date.now() + 365 * 24 * 3_600_000);
      expect(s.session.closed).toBe(false);
    });

    it('sends the probe when the wire has been silent for `every`, not before, and cuts its reply out', async () => {
      const s = await spliced(withHeartbeat());
      const silentSince = s.session.lastWireAt;
      s.session.tick(silentSince + 4_999);
      expect(s.session.probing).toBe(false);
      s.session.tick(silentSince + 5_000);
      expect(s.session.probing).toBe(true);
      await until(() => s.atServer.length === PING.length, 5_000, 'probe at the server');
      expect(s.atServer.text()).toBe('PING\n');
      s.server.write(Buffer.concat([PONG, Buffer.from('unsolicited')]));
      await until(() => s.atClient.length === 11, 5_000, 'bytes after the reply at the client');
      expect(s.atClient.text()).toBe('unsolicited');
      expect(s.session.probing).toBe(false);
      expect(s.events.heartbeats.map((h) => h.result)).toEqual(['ok']);
      // The next probe is `every` after the reply, not after the probe.
      const next = s.session.lastWireAt;
      s.session.tick(next + 4_999);
      expect(s.session.probing).toBe(false);
      s.session.tick(next + 5_000);
      expect(s.session.probing).toBe(true);
    });

    it('sends nothing at all without a heartbeat, at a time when a heartbeat would have probed', async () => {
      for (const on of [true, false]) {
        const s = await spliced(on ? withHeartbeat() : {});
        // An upstream that answers probes, so that the marker is not held behind one.
        s.server.on('data', (chunk: Buffer) => chunk.includes(PING) && s.server.write(PONG));
        s.session.tick(s.session.lastWireAt + 3_600_000);
        // Round trip a marker through the server so anything the proxy wrote before it is in.
        s.client.write('marker');
        await until(() => s.atServer.text().endsWith('marker'), 5_000, 'marker at the server');
        expect(s.atServer.text(), on ? 'heartbeat on' : 'heartbeat off').toBe(on ? 'PING\nmarker' : 'marker');
      }
    });

    it('spreads the first probe within every +- jitter, differently per session', async () => {
      const dueAfter: number[] = [];
      for (let i = 0; i < 12; i++) {
        const s = await spliced(withHeartbeat({ everyMs: 10_000, jitter: 0.2 }));
        const since = s.session.lastWireAt;
        let at = -1;
        for (let t = 0; t <= 13_000 && at === -1; t += 100) {
          s.session.tick(since + t);
          if (s.session.probing) at = t;
        }
        dueAfter.push(at);
      }
      for (const at of dueAfter) {
        expect(at).toBeGreaterThanOrEqual(8_000);
        expect(at).toBeLessThanOrEqual(12_100);
      }
      expect(new Set(dueAfter).size).toBeGreaterThan(1);
    });

    it('closes with heartbeat_timeout when the reply is later than timeout, not before', async () => {
      const s = await spliced(withHeartbeat({ timeoutMs: 1_000 }));
      const probeAt = s.session.lastWireAt + 5_000;
      s.session.tick(probeAt);
      expect(s.session.probing).toBe(true);
      s.session.tick(probeAt + 999);
      expect(s.session.closed).toBe(false);
      s.session.tick(probeAt + 1_000);
      expect(await closedOnce(s)).toEqual({ reason: 'heartbeat_timeout', side: 'upstream' });
      expect(s.events.heartbeats.map((h) => h.result)).toEqual(['timeout']);
      // The client is reset so its pool drops the connection at once.
      await until(() => s.atClient.closed, 5_000, 'client socket closed');
      expect(s.atClient.error?.code).toBe('ECONNRESET');
    });

    it('does not probe a half-closed pair', async () => {
      const s = await spliced(withHeartbeat());
      s.server.end();
      await until(() => s.atClient.ended, 5_000, 'FIN at the client');
      s.session.tick(s.session.lastWireAt + 3_600_000);
      expect(s.session.probing).toBe(false);
    });

    it('holds client bytes sent during a probe and releases them in order right after the reply', async () => {
      const random = new Prng(42);
      for (let round = 0; round < 5; round++) {
        const s = await spliced(withHeartbeat());
        s.session.tick(s.session.lastWireAt + 5_000);
        await until(() => s.atServer.length === PING.length, 5_000, 'probe at the server');
        // Up to ~400 KiB: more than one read takes, so bytes still queued in the kernel must follow the held ones.
        const chunks = Array.from({ length: random.int(1, 20) }, (_, i) => pattern(random.int(1, 20_000), round * 100 + i));
        const expected = Buffer.concat(chunks);
        for (const chunk of chunks) {
          s.client.write(chunk);
          if (random.chance(0.3)) await sleep(1);
        }
        // The proxy reads the first of them and then stops reading the client: what it holds is bounded.
        await until(() => s.session.bytesUp > 0, 5_000, 'client bytes read by the proxy');
        await sleep(20);
        expect(s.session.down.paused).toBe(true);
        // Nothing of the client's passed the probe: the server would take it for the reply's context.
        expect(s.atServer.text()).toBe('PING\n');
        // The reply, split across segments.
        s.server.write(PONG.subarray(0, 2));
        await sleep(5);
        s.server.write(PONG.subarray(2));
        await until(() => s.atServer.length === PING.length + expected.length, 5_000, 'held bytes at the server');
        expect(s.atServer.bytes.equals(Buffer.concat([PING, expected]))).toBe(true);
        expect(s.atClient.length).toBe(0);
        expect(s.events.heartbeats.map((h) => h.result)).toEqual(['ok']);
      }
    });

    it("passes a FIN the client sent during a probe on after its held bytes", async () => {
      const s = await spliced(withHeartbeat());
      s.session.tick(s.session.lastWireAt + 5_000);
      await until(() => s.atServer.length === PING.length, 5_000, 'probe at the server');
      s.client.end('quit');
      await until(() => s.session.bytesUp === 4, 5_000, 'client bytes read by the proxy');
      await sleep(20);
      expect(s.atServer.ended).toBe(false);
      s.server.write(PONG);
      await until(() => s.atServer.ended, 5_000, 'FIN at the server');
      expect(s.atServer.text()).toBe('PING\nquit');
    });
  });

  /** Waits until a growing count stops moving (bounded), and returns where it stopped. */
  async function stalledAt(count: () => number): Promise<number> {
    let last = -1;
    for (let i = 0; i < 100; i++) {
      await sleep(100);
      const now = count();
      if (now === last) return now;
      last = now;
    }
    throw new Error(`still moving after 10 s (at ${last})`);
  }
});
