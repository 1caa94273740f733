import { describe, expect, it } from 'vitest';
import { Clock, ManualClock } from '../../src/clock.js';

// The one shared ticker and source of time (src/clock.ts): its timer runs only while
// someone listens, now() is coarse and precise() is not, and a manual clock fires every
// tick that falls due, in order, when a test moves it.

describe('Clock', () => {
  it('runs its timer only while subscribed', () => {
    const clock = new ManualClock(100);
    const ticks: number[] = [];
    expect(clock.ticking).toBe(false);
    const stopA = clock.subscribe((now) => ticks.push(now));
    const stopB = clock.subscribe(() => {});
    expect(clock.ticking).toBe(true);
    clock.advance(250);
    expect(ticks).toHaveLength(2);
    stopA();
    expect(clock.ticking).toBe(true); // B still listens
    stopB();
    expect(clock.ticking).toBe(false);
    clock.advance(1_000);
    expect(ticks).toHaveLength(2);
    stopB(); // a second unsubscribe is harmless
    expect(clock.ticking).toBe(false);
  });

  it('exactNow() reads the time afresh between ticks, where now() keeps the last tick (an age reported from it is never young)', () => {
    const clock = new ManualClock(100, 5_000);
    clock.subscribe(() => {});
    clock.advance(150);
    expect(clock.now()).toBe(5_100);
    expect(clock.exactNow()).toBe(5_150);
  });

  it('stops the system timer on the last unsubscribe (no tick after it)', async () => {
    const clock = new Clock(5);
    let ticks = 0;
    const stop = clock.subscribe(() => ticks++);
    await new Promise((resolve) => setTimeout(resolve, 60));
    stop();
    const seen = ticks;
    expect(seen).toBeGreaterThan(0);
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(ticks).toBe(seen);
    expect(clock.ticking).toBe(false);
  });

  it('gives a coarse now() that moves at ticks, and a precise now that moves always', () => {
    const clock = new ManualClock(250, 5_000_000);
    const stop = clock.subscribe(() => {});
    expect(clock.now()).toBe(5_000_000);
    expect(clock.preciseNow()).toBe(0);
    clock.advance(100);
    expect(clock.now(), 'between ticks: the last tick').toBe(5_000_000);
    expect(clock.preciseNow()).toBe(100);
    clock.advance(150);
    expect(clock.now(), 'at the tick').toBe(5_000_250);
    clock.advance(999);
    expect(clock.now()).toBe(5_001_000);
    expect(clock.preciseNow()).toBe(1_249);
    stop();
    expect(clock.now(), 'no ticker: read afresh').toBe(5_001_249);
  });

  it('reads the system clock afresh when nobody is subscribed', async () => {
    const clock = new Clock(60_000);
    const first = clock.now();
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(clock.now() - first).toBeGreaterThanOrEqual(20);
    expect(Math.abs(clock.now() - Date.now())).toBeLessThan(50);
  });

  it('fires every tick that falls due in an advance, in order, at period boundaries, each handler in subscription order', () => {
    const clock = new ManualClock(250, 0);
    const calls: string[] = [];
    clock.subscribe((now) => calls.push(`a@${now}`));
    clock.subscribe((now) => calls.push(`b@${now}`));
    clock.advance(249);
    expect(calls).toEqual([]);
    clock.advance(1);
    clock.advance(600);
    expect(calls).toEqual(['a@250', 'b@250', 'a@500', 'b@500', 'a@750', 'b@750']);
  });

  it('lets a handler unsubscribe itself or another mid-tick, and a deadline set in a handler be seen on a later tick', () => {
    const clock = new ManualClock(100, 0);
    const seen: number[] = [];
    let deadline = 0;
    const stop = clock.subscribe((now) => {
      if (deadline === 0) deadline = now + 300;
      else if (now >= deadline) {
        seen.push(now);
        stop();
      }
    });
    clock.advance(10_000);
    expect(seen).toEqual([400]);
    expect(clock.ticking).toBe(false);
  });
});
