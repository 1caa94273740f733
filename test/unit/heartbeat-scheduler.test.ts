import { describe, expect, it } from 'vitest';
import { Clock, ManualClock, type TimeSource } from '../../src/clock.js';
import type { HeartbeatConfig } from '../../src/config/schema.js';
import { HeartbeatSchedule, type HeartbeatDecision } from '../../src/heartbeat/scheduler.js';
import { codecFor } from '../../src/protocols/registry.js';
import type { Tracker, TrackerState } from '../../src/protocols/types.js';
import { generator } from '../helpers/random.js';

// The one heartbeat schedule (src/heartbeat/scheduler.ts), driven by a ManualClock: due
// after every x jitter of silence, never while the codec is busy, in a transaction or
// past maxIdle, a timeout verdict for an unanswered probe, the round trip measured, and
// a live change of the interval (every: auto) honoured. The trackers are real codecs fed
// real protocol bytes.

const REDIS_PONG = Buffer.from('+PONG\r\n');

function config(overrides: Partial<HeartbeatConfig> = {}): HeartbeatConfig {
  return { everyMs: 10_000, timeoutMs: 2_000, jitter: 0, inTransaction: false, maxIdleMs: 0, ...overrides };
}

/** One PostgreSQL message: type, length, body. */
function pgMessage(type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeUInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

/** A PostgreSQL connection past startup and `BEGIN`: quiet, inside a transaction block. */
function postgresInTransaction(): Tracker {
  const tracker = codecFor('postgres')!.track({});
  const params = Buffer.from('user\0postgres\0database\0postgres\0\0');
  const startup = Buffer.alloc(8 + params.length);
  startup.writeUInt32BE(startup.length, 0);
  startup.writeUInt32BE(196608, 4);
  params.copy(startup, 8);
  tracker.fromClient(startup);
  tracker.fromServer(Buffer.concat([pgMessage('R', Buffer.alloc(4)), pgMessage('Z', Buffer.from('I'))]));
  tracker.fromClient(pgMessage('Q', Buffer.from('BEGIN\0')));
  tracker.fromServer(Buffer.concat([pgMessage('C', Buffer.from('BEGIN\0')), pgMessage('Z', Buffer.from('T'))]));
  return tracker;
}

function redisTracker(): Tracker {
  return codecFor('redis')!.track({});
}

/** Every tick's decision until `ms` from now, with the tick time it came at (elapsed from the start). */
function decisionsOver(clock: ManualClock, ms: number, decide: (now: number) => HeartbeatDecision): Array<[number, HeartbeatDecision]> {
  const start = clock.now();
  const seen: Array<[number, HeartbeatDecision]> = [];
  const stop = clock.subscribe((now) => seen.push([now - start, decide(now)]));
  clock.advance(ms);
  stop();
  return seen;
}

/** The first tick (elapsed ms) at which `decision` came, or -1. */
function firstAt(seen: Array<[number, HeartbeatDecision]>, decision: HeartbeatDecision): number {
  return seen.find(([, d]) => d === decision)?.[0] ?? -1;
}

describe('HeartbeatSchedule', () => {
  it('is due after `every` of silence on the upstream wire, and any byte either way restarts the silence', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const schedule = new HeartbeatSchedule(config(), clock, { clientSince: clock.now() });
    expect(firstAt(decisionsOver(clock, 9_750, (now) => schedule.next(now, tracker)), 'probe')).toBe(-1);
    schedule.heard(clock.now()); // a server byte at 9.75 s
    expect(firstAt(decisionsOver(clock, 9_750, (now) => schedule.next(now, tracker)), 'probe')).toBe(-1);
    schedule.clientSent(clock.now()); // a client byte at 19.5 s
    const seen = decisionsOver(clock, 12_000, (now) => schedule.next(now, tracker));
    expect(firstAt(seen, 'probe')).toBe(10_000);
  });

  it('spreads connections by their jitter: each is due at every x its own factor, within every +- jitter', () => {
    for (const [random, factor] of [
      [0, 0.8],
      [0.5, 1],
      [0.999, 1.2],
    ] as const) {
      const clock = new ManualClock(100);
      const schedule = new HeartbeatSchedule(config({ jitter: 0.2 }), clock, { clientSince: null, random: () => random });
      const tracker = redisTracker();
      const due = firstAt(decisionsOver(clock, 13_000, (now) => schedule.next(now, tracker)), 'probe');
      // Due on the first tick at or past every x factor (ticks every 100 ms).
      expect(due).toBeGreaterThanOrEqual(10_000 * factor - 1);
      expect(due).toBeLessThan(10_000 * factor + 100);
    }
  });

  it('draws a different factor per connection from Math.random, all inside every +- jitter', () => {
    const clock = new ManualClock(100);
    const dues = new Set<number>();
    for (let i = 0; i < 200; i++) {
      const due = new HeartbeatSchedule(config({ jitter: 0.3 }), clock, { clientSince: null }).dueAfterMs;
      expect(due).toBeGreaterThanOrEqual(7_000);
      expect(due).toBeLessThanOrEqual(13_000);
      dues.add(Math.round(due / 100));
    }
    // 200 draws over 60 buckets of 100 ms: lockstep would put them all in one.
    expect(dues.size).toBeGreaterThan(20);
  });

  it('never probes while the codec is busy (a request awaits its reply), and probes once it is quiet again', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const schedule = new HeartbeatSchedule(config(), clock, { clientSince: clock.now() });
    tracker.fromClient(Buffer.from('*2\r\n$3\r\nGET\r\n$1\r\nk\r\n'));
    expect(tracker.state).toBe<TrackerState>('busy');
    expect(firstAt(decisionsOver(clock, 30_000, (now) => schedule.next(now, tracker)), 'probe')).toBe(-1);
    tracker.fromServer(Buffer.from('$-1\r\n'));
    expect(tracker.state).toBe<TrackerState>('quiet');
    expect(schedule.next(clock.now(), tracker)).toBe('probe');
  });

  it('never probes where the owner forbids it (a half-closed pair)', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const schedule = new HeartbeatSchedule(config(), clock, { clientSince: clock.now() });
    expect(firstAt(decisionsOver(clock, 30_000, (now) => schedule.next(now, tracker, false)), 'probe')).toBe(-1);
  });

  it('leaves a transaction alone unless inTransaction is set', () => {
    for (const inTransaction of [false, true]) {
      const clock = new ManualClock(250);
      const tracker = postgresInTransaction();
      expect(tracker.inTransaction).toBe(true);
      expect(tracker.state).toBe<TrackerState>('quiet');
      const schedule = new HeartbeatSchedule(config({ inTransaction }), clock, { clientSince: clock.now() });
      const due = firstAt(decisionsOver(clock, 30_000, (now) => schedule.next(now, tracker)), 'probe');
      expect(due).toBe(inTransaction ? 10_000 : -1);
    }
  });

  it('stops probing once the client has been silent past maxIdle; a parked spare (no client) has no maxIdle', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const session = new HeartbeatSchedule(config({ everyMs: 1_000, maxIdleMs: 5_000 }), clock, { clientSince: clock.now() });
    const spare = new HeartbeatSchedule(config({ everyMs: 1_000, maxIdleMs: 5_000 }), clock, { clientSince: null });
    const sessionProbes: number[] = [];
    const spareProbes: number[] = [];
    const start = clock.now();
    const stop = clock.subscribe((now) => {
      for (const [schedule, probes] of [[session, sessionProbes], [spare, spareProbes]] as const) {
        if (schedule.next(now, tracker) !== 'probe') continue;
        probes.push(now - start);
        schedule.probe(tracker, now);
        tracker.fromServer(REDIS_PONG);
      }
    });
    clock.advance(10_000);
    stop();
    expect(sessionProbes).toEqual([1_000, 2_000, 3_000, 4_000]);
    expect(spareProbes).toEqual([1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000]);
  });

  it('gives the timeout verdict for a probe unanswered after `timeout`, and none for one answered in time', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const schedule = new HeartbeatSchedule(config({ everyMs: 1_000, timeoutMs: 2_000 }), clock, { clientSince: clock.now() });
    clock.advance(1_000);
    expect(schedule.next(clock.now(), tracker)).toBe('probe');
    expect(schedule.probe(tracker, clock.now())).toEqual(Buffer.from('*1\r\n$4\r\nPING\r\n'));
    const seen = decisionsOver(clock, 3_000, (now) => schedule.next(now, tracker));
    expect(firstAt(seen, 'timeout')).toBe(2_000);
    expect(seen.filter(([, d]) => d === 'probe')).toEqual([]);
    expect(schedule.waited(clock.now())).toBe(3_000);

    const answered = redisTracker();
    const other = new HeartbeatSchedule(config({ everyMs: 1_000, timeoutMs: 2_000 }), clock, { clientSince: clock.now() });
    clock.advance(1_000);
    other.probe(answered, clock.now());
    clock.advance(1_750);
    answered.fromServer(REDIS_PONG);
    expect(firstAt(decisionsOver(clock, 5_000, (now) => other.next(now, answered)), 'timeout')).toBe(-1);
  });

  it('measures the round trip on the precise clock', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const schedule = new HeartbeatSchedule(config(), clock, { clientSince: null });
    schedule.probe(tracker, clock.now());
    clock.advance(37);
    tracker.fromServer(REDIS_PONG);
    expect(schedule.answered()).toBe(37);
  });

  it('says once that the tracker went off, then waits for ever', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    tracker.fromClient(Buffer.from('*1\r\n$7\r\nMONITOR\r\n'));
    tracker.fromServer(Buffer.from('+OK\r\n'));
    expect(tracker.state).toBe<TrackerState>('off');
    const schedule = new HeartbeatSchedule(config({ everyMs: 1_000 }), clock, { clientSince: clock.now() });
    const seen = decisionsOver(clock, 10_000, (now) => schedule.next(now, tracker));
    expect(seen.filter(([, d]) => d !== 'wait')).toEqual([[250, 'off']]);
  });

  // The clock's ticks come late on a loaded machine (a blocked event loop, a starved core): a byte
  // between two ticks carries the earlier one's time, so a late tick used to read its whole gap as
  // silence and probe a connection that was busy a moment before (redis 'sends no heartbeat on a busy
  // connection' failed so under taskset -c 1). Generated tick gaps and bytes, against the real times.
  it('never probes a connection that carried a byte since the last tick, however late the ticks come', () => {
    const PERIOD_MS = 250;
    const EVERY_MS = 300;
    let probes = 0;
    const wrong: Array<{ seed: number; tick: number; byteSinceTick: boolean; silenceMs: number }> = [];
    for (let seed = 1; seed <= 200; seed++) {
      const random = generator(seed);
      let wallMs = 1_000_000;
      let fire: () => void = () => {};
      const time: TimeSource = {
        wallNow: () => wallMs,
        preciseNow: () => wallMs,
        every: (_periodMs, tick) => {
          fire = tick;
          return () => {};
        },
      };
      const clock = new Clock(PERIOD_MS, time);
      const tracker = redisTracker();
      const schedule = new HeartbeatSchedule(config({ everyMs: EVERY_MS }), clock, { clientSince: clock.now() });
      let lastByteAt = wallMs;
      let byteSinceTick = false;
      let tick = 0;
      clock.subscribe((now) => {
        if (schedule.next(now, tracker) !== 'probe') return;
        probes++;
        // Accurate to one period, as every deadline on the shared clock.
        const silenceMs = now - lastByteAt;
        if (byteSinceTick || silenceMs < EVERY_MS - PERIOD_MS) wrong.push({ seed, tick, byteSinceTick, silenceMs });
      });
      for (; tick < 100; tick++) {
        // On time, or late by up to five periods.
        const gapMs = PERIOD_MS + (random(2) < 1 ? 0 : Math.floor(random(5 * PERIOD_MS)));
        if (random(3) < 2) {
          lastByteAt = wallMs + Math.floor(random(gapMs));
          if (random(2) < 1) schedule.heard(clock.now());
          else schedule.clientSent(clock.now());
          byteSinceTick = true;
        }
        wallMs += gapMs;
        fire();
        byteSinceTick = false;
      }
    }
    expect(wrong).toEqual([]);
    // Idle gaps of a period or more come often enough: the schedule still probes (this test can fail).
    expect(probes).toBeGreaterThan(100);
  });

  it('honours a live change of the interval (every: auto) at the next check', () => {
    const clock = new ManualClock(250);
    const tracker = redisTracker();
    const interval = { everyMs: 60_000 };
    const schedule = new HeartbeatSchedule(config({ everyMs: 60_000 }), clock, { clientSince: clock.now(), interval });
    expect(firstAt(decisionsOver(clock, 5_000, (now) => schedule.next(now, tracker)), 'probe')).toBe(-1);
    interval.everyMs = 6_000; // the learner found a shorter path timeout
    expect(firstAt(decisionsOver(clock, 5_000, (now) => schedule.next(now, tracker)), 'probe')).toBe(1_000);
  });
});
