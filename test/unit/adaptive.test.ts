import { describe, expect, it } from 'vitest';
import type { CanaryOutcome } from '../../src/discover/canary.js';
import { LEARNED_FRACTION } from '../../src/discover/recommend.js';
import { AdaptiveHeartbeat, type CanaryHandle, type Learned } from '../../src/heartbeat/adaptive.js';

// The learning state machine on a fake clock with scripted canaries: a canary that idles
// `ms` on a path whose timeout is `timeoutMs` survives when ms < timeoutMs, and answers
// when its idle period ends on the fake clock.

class FakePath {
  timeoutMs: number;
  readonly started: number[] = [];
  #now = 0;
  readonly #pending = new Set<{ endsAt: number; ms: number; resolve(o: CanaryOutcome): void }>();
  constructor(timeoutMs: number) {
    this.timeoutMs = timeoutMs;
  }
  start = (ms: number): CanaryHandle => {
    this.started.push(ms);
    let resolve!: (o: CanaryOutcome) => void;
    const done = new Promise<CanaryOutcome>((r) => (resolve = r));
    const entry = { endsAt: this.#now + ms, ms, resolve };
    this.#pending.add(entry);
    return {
      done,
      tick: () => {},
      cancel: () => {
        this.#pending.delete(entry);
        resolve({ kind: 'failed', reason: 'cancelled' });
      },
    };
  };
  get inFlight(): number {
    return this.#pending.size;
  }
  /** Advance the clock to `now`, answering canaries whose idle ended. */
  async advance(learner: AdaptiveHeartbeat, now: number): Promise<void> {
    this.#now = now;
    for (const entry of [...this.#pending]) {
      if (entry.endsAt > now) continue;
      this.#pending.delete(entry);
      entry.resolve(entry.ms < this.timeoutMs ? { kind: 'survived', idleMs: entry.ms } : { kind: 'died', idleMs: entry.ms, how: 'silence' });
    }
    await Promise.resolve();
    await Promise.resolve();
    learner.tick(now);
  }
}

const OPTIONS = { minMs: 1_000, maxMs: 60_000, canaries: 2, reprobeMs: 600_000 };

async function run(path: FakePath, learner: AdaptiveHeartbeat, untilMs: number, each?: (now: number) => void): Promise<void> {
  for (let now = 0; now <= untilMs; now += 250) {
    await path.advance(learner, now);
    each?.(now);
  }
}

describe('AdaptiveHeartbeat', () => {
  it('starts at min, rises as canaries prove longer idles, and converges below the timeout for many timeouts', async () => {
    for (let timeoutMs = 3_000; timeoutMs <= 100_000; timeoutMs = Math.round(timeoutMs * 1.37)) {
      const path = new FakePath(timeoutMs);
      const changes: Learned[] = [];
      const learner = new AdaptiveHeartbeat(OPTIONS, path.start, { onChange: (l) => changes.push(l) });
      expect(learner.interval.everyMs).toBe(OPTIONS.minMs);
      let maxInFlight = 0;
      await run(path, learner, 6 * timeoutMs, () => {
        maxInFlight = Math.max(maxInFlight, path.inFlight);
        // Never at or above the timeout, never above max, at any moment.
        expect(learner.interval.everyMs).toBeLessThan(timeoutMs);
        expect(learner.interval.everyMs).toBeLessThanOrEqual(OPTIONS.maxMs);
      });
      expect(maxInFlight).toBeLessThanOrEqual(OPTIONS.canaries);
      const expected = Math.min(OPTIONS.maxMs, timeoutMs);
      expect(learner.interval.everyMs, `timeout ${timeoutMs}`).toBeGreaterThanOrEqual(Math.min(OPTIONS.maxMs, expected / 2));
      expect(learner.learnedMs).toBeLessThan(timeoutMs);
      expect(changes.length).toBeGreaterThan(0);
    }
  });

  it('backs off while canaries cannot tell (upstream down) instead of dialling at every tick', async () => {
    let dials = 0;
    const unreachable = (): CanaryHandle => {
      dials++;
      return { done: Promise.resolve({ kind: 'failed', reason: 'connect: ECONNREFUSED' }), tick: () => {}, cancel: () => {} };
    };
    const learner = new AdaptiveHeartbeat(OPTIONS, unreachable, { onChange: () => {} });
    for (let now = 0; now <= 10 * 60_000; now += 250) {
      learner.tick(now);
      await Promise.resolve();
      await Promise.resolve();
    }
    // 2,400 ticks in 10 minutes: with a doubling pause up to a minute, a few dozen dials at most.
    expect(dials).toBeGreaterThan(2);
    expect(dials).toBeLessThan(40);
    expect(learner.interval.everyMs).toBe(OPTIONS.minMs);
    learner.close();
  });

  it('never exceeds max on a path with no timeout', async () => {
    const path = new FakePath(Number.POSITIVE_INFINITY);
    const learner = new AdaptiveHeartbeat({ ...OPTIONS, maxMs: 10_000 }, path.start, { onChange: () => {} });
    await run(path, learner, 120_000, () => expect(learner.interval.everyMs).toBeLessThanOrEqual(10_000));
    expect(learner.interval.everyMs).toBe(10_000);
    expect(Math.max(...path.started)).toBeLessThanOrEqual(20_000);
  });

  it('falls back to min at once when a client is lost to the path, then learns again', async () => {
    const path = new FakePath(20_000);
    const learner = new AdaptiveHeartbeat(OPTIONS, path.start, { onChange: () => {} });
    await run(path, learner, 80_000);
    expect(learner.interval.everyMs).toBeGreaterThan(OPTIONS.minMs);
    learner.onClientLost();
    expect(learner.interval.everyMs).toBe(OPTIONS.minMs);
    expect(path.inFlight).toBe(0);
    await run(path, learner, 80_000);
    expect(learner.interval.everyMs).toBeGreaterThanOrEqual(10_000);
  });

  it('re-probes after reprobeMs and follows a path whose timeout got shorter', async () => {
    const path = new FakePath(40_000);
    const learner = new AdaptiveHeartbeat({ ...OPTIONS, reprobeMs: 30_000 }, path.start, { onChange: () => {} });
    await run(path, learner, 200_000);
    const before = learner.interval.everyMs;
    expect(before).toBeGreaterThanOrEqual(20_000);
    const startedBefore = path.started.length;
    path.timeoutMs = 8_000; // the path changed
    for (let now = 200_000; now <= 600_000; now += 250) await path.advance(learner, now);
    expect(path.started.length).toBeGreaterThan(startedBefore);
    expect(learner.interval.everyMs).toBeLessThan(8_000);
  });

  it('starts from a stored value and uses the learned fraction', async () => {
    const path = new FakePath(30_000);
    const learner = new AdaptiveHeartbeat(OPTIONS, path.start, { onChange: () => {} }, { survivedMs: 20_000, intervalMs: 15_000 });
    expect(learner.interval.everyMs).toBe(20_000 * LEARNED_FRACTION);
    learner.close();
    expect(path.inFlight).toBe(0);
  });
});
