import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Clock, ManualClock } from '../../../src/clock.js';
import { Canary } from '../../../src/discover/canary.js';
import { canaryProbe } from '../../../src/discover/probes.js';
import { listen0 } from '../../helpers/net.js';
import { once } from '../../helpers/wait.js';

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

  for (const { protocol, greeting } of [{ protocol: 'tcp', greeting: '' }, { protocol: 'mysql', greeting: 'hello' }] as const) {
    it(`places a death at no less than the silence the flow had, when this process saw its last packet late (${protocol}${greeting ? ', after a greeting' : ''})`, async () => {
      // The flow's clock runs in another process (as a middlebox's does): it resets each
      // connection RESET_AFTER_MS after accepting it (and sending its greeting), so the flow
      // was silent at least that long.
      const RESET_AFTER_MS = 1_000;
      const LATE_MS = 400;
      const resetter = spawn(process.execPath, ['-e', `
        const net = require('node:net');
        const server = net.createServer((socket) => {
          socket.on('error', () => {});
          if ('${greeting}') socket.write('${greeting}');
          setTimeout(() => socket.resetAndDestroy(), ${RESET_AFTER_MS});
        });
        server.listen(0, '127.0.0.1', () => console.log(server.address().port));
      `], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        const port = Number(String(await once(resetter.stdout!, 'data', 10_000)).trim());
        const probe = canaryProbe(protocol, { send: Buffer.from('ping\n'), expect: Buffer.from('ping\n') });
        const canary = new Canary({ target: { host: '127.0.0.1', port }, idleMs: 30_000, probe, connectTimeoutMs: 5_000, probeTimeoutMs: 5_000, clock: new Clock() });
        // net connects on the next tick; this one comes after it: the handshake (and the
        // greeting) reach the kernel while this process is busy, and the canary sees them
        // LATE_MS later (as a loaded machine does).
        process.nextTick(() => {
          const busyUntil = performance.now() + LATE_MS;
          while (performance.now() < busyUntil);
        });
        const outcome = await canary.done;
        expect(outcome.kind).toBe('died');
        if (outcome.kind !== 'died') return;
        expect(outcome.how).toBe('reset');
        expect(outcome.idleMs).toBeGreaterThanOrEqual(RESET_AFTER_MS);
      } finally {
        resetter.kill('SIGKILL');
      }
    });
  }
});
