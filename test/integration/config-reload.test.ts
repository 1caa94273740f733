import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

// A reload parses and validates a config file that may be as large as the limit (4 MiB)
// and as hostile as its author: proxied connections must keep flowing meanwhile. The
// probe is a real proxied TCP connection doing round trips back to back; the largest
// gap between two answers while the reload runs is what a client would feel.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const REJECTED = 'reload rejected: keeping the running configuration';
const RELOADED = 'configuration reloaded';

async function echoProxy(): Promise<{ proxy: RunningProxy; client: net.Socket; head: string }> {
  const upstream = await listen0((socket) => socket.pipe(socket));
  cleanups.push(() => upstream.close());
  const port = await freePort();
  const head = `admin: { listen: "{{admin}}" }\nroutes:\n  - name: echo\n    listen: 127.0.0.1:${port}\n    upstream: 127.0.0.1:${upstream.port}\n`;
  const proxy = await startProxy({ yaml: head });
  cleanups.push(() => proxy.stop('SIGKILL'));
  const client = await connect(port);
  cleanups.push(() => client.destroy());
  return { proxy, client, head };
}

/** Round trips on `client` until `done()`, bounded in time; the largest gap between two answers, in ms. */
async function largestGapWhile(client: net.Socket, done: () => boolean, timeoutMs: number): Promise<{ gapMs: number; trips: number }> {
  const deadline = performance.now() + timeoutMs;
  let last = performance.now();
  let gapMs = 0;
  let trips = 0;
  while (!done()) {
    if (performance.now() > deadline) throw new Error(`reload not finished within ${timeoutMs} ms (${trips} round trips)`);
    client.write('ping');
    expect((await readBytes(client, 4, 10_000)).toString()).toBe('ping');
    const now = performance.now();
    gapMs = Math.max(gapMs, now - last);
    last = now;
    trips++;
  }
  return { gapMs, trips };
}

describe('reload off the event loop', () => {
  it('keeps a proxied connection answering while a 20,000-unknown-key file is rejected, and caps the errors logged', async () => {
    const { proxy, client, head } = await echoProxy();
    const unknown = Array.from({ length: 20_000 }, (_, i) => `    unknownKey${i}: ${i}\n`).join('');
    await proxy.reload(head + unknown);
    const { gapMs, trips } = await largestGapWhile(client, () => proxy.logs.some((l) => l.msg === REJECTED), 60_000);
    console.log(`20,000 unknown keys: largest gap between round trips ${gapMs.toFixed(1)} ms over ${trips} trips`);
    // Before the fix the loop froze for seconds (13.6 s for 20,000 keys on the report's machine).
    expect(gapMs).toBeLessThan(500);

    const errors = proxy.logs.find((l) => l.msg === REJECTED)!.errors as string[];
    expect(errors).toHaveLength(51);
    expect(errors[0]).toMatch(/config\.yaml:6:5 routes\[0\]\.unknownKey0: unknown key; /);
    expect(errors[50]).toBe('... and 19950 more errors');
    // The running config stays.
    client.write('still');
    expect((await readBytes(client, 5)).toString()).toBe('still');
  }, 90_000);

  it('keeps a proxied connection answering while a 3 MiB valid file is applied', async () => {
    const { proxy, client, head } = await echoProxy();
    let comments = '';
    for (let i = 0; comments.length < 3 * 1024 * 1024; i++) comments += `# comment line ${i} to make the file large but valid\n`;
    let bulk = '';
    for (let i = 0; i < 5_000; i++) bulk += `      - "host-${i}.example.com:443"\n`;
    const forward = `  - name: forward\n    protocol: http-forward\n    listen: 127.0.0.1:0\n    allow:\n${bulk}`;
    await proxy.reload(head + forward + comments);
    const { gapMs, trips } = await largestGapWhile(client, () => proxy.logs.some((l) => l.msg === RELOADED), 60_000);
    console.log(`3 MiB valid file: largest gap between round trips ${gapMs.toFixed(1)} ms over ${trips} trips`);
    expect(gapMs).toBeLessThan(500);
    await until(() => proxy.logs.some((l) => l.msg === 'route listening' && l.route === 'forward'), 5_000, 'the new route');
  }, 90_000);

  it('refuses a file over the size limit on reload, naming the file and the limit', async () => {
    const { proxy, client, head } = await echoProxy();
    await proxy.reload(head + '#'.repeat(4 * 1024 * 1024) + '\n');
    await until(() => proxy.logs.some((l) => l.msg === REJECTED), 20_000, 'reload rejected');
    const errors = proxy.logs.find((l) => l.msg === REJECTED)!.errors as string[];
    expect(errors).toEqual([expect.stringMatching(/^\S+config\.yaml:1:1 \(root\): the config file is larger than 4 MiB \(\d+ bytes\)/)]);
    client.write('alive');
    expect((await readBytes(client, 5)).toString()).toBe('alive');
  }, 60_000);
});
