import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../src/clock.js';
import { Canary } from '../../../src/discover/canary.js';
import { canaryProbe } from '../../../src/discover/probes.js';
import { listen0 } from '../../helpers/net.js';

// A canary against a real echo server, timed by a manual clock whose coarse now() lags the
// precise time by part of a tick (as the shared clock does between ticks). What it reports
// as survived must be the silence the flow really had, never the planned idle: a survival
// overstated by a tick puts the bracket's lower bound above a timeout it should contain.

describe('Canary', () => {
  let echo: Awaited<ReturnType<typeof listen0>>;
  beforeAll(async () => {
    echo = await listen0((socket) => socket.on('data', (chunk: Buffer) => socket.write(chunk)));
  });
  afterAll(async () => {
    await echo?.close();
  });

  for (const lagMs of [1, 40, 120, 200, 249]) {
    it(`reports the silence it measured, not the plan (connected ${lagMs} ms after the last tick)`, async () => {
      const clock = new ManualClock(250);
      const unsubscribe = clock.subscribe(() => {});
      try {
        clock.advance(lagMs); // coarse now() stays at the last tick; precise time moved on
        const probe = canaryProbe('tcp', { send: Buffer.from('ping\n'), expect: Buffer.from('ping\n') });
        const canary = new Canary({ target: { host: '127.0.0.1', port: echo.port }, idleMs: 1_000, probe, connectTimeoutMs: 5_000, probeTimeoutMs: 5_000, clock });
        await new Promise((resolve) => setTimeout(resolve, 100)); // the real connect completes
        const connectedAt = clock.preciseNow();
        let finished = false;
        void canary.done.then(() => (finished = true));
        let probedAt = 0;
        for (let tick = 0; tick < 12 && !finished; tick++) {
          clock.advance(250 - ((clock.preciseNow() - 1_000_000) % 250)); // to the next tick
          probedAt = clock.preciseNow(); // the tick that sends the probe is the last before the answer
          canary.tick(clock.now());
          await new Promise((resolve) => setTimeout(resolve, 30));
        }
        const outcome = await canary.done;
        expect(outcome.kind).toBe('survived');
        if (outcome.kind !== 'survived') return;
        expect(outcome.idleMs).toBeLessThanOrEqual(probedAt - connectedAt);
        expect(outcome.idleMs).toBeGreaterThan(0);
      } finally {
        unsubscribe();
      }
    });
  }
});
