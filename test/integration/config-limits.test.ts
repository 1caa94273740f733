import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { MAIN, parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

// check and start print at most 50 errors and a count of the rest. A reload parses and validates a config file that may be as large as the limit (4 MiB)
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

/**
 * The proxy's own longest event-loop delay since the previous call (prom-client's
 * nodejs_eventloop_lag_max_seconds, reset at each scrape), in ms. What the round trips feel also
 * holds this process's and its echo server's stalls, which a loaded machine makes long; the
 * defect is the proxy's loop blocked by the parse.
 */
async function longestStallMs(proxy: RunningProxy): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_nodejs_eventloop_lag_max_seconds') * 1000;
}

describe('reload off the event loop', () => {
  it('keeps a proxied connection answering while a 20,000-unknown-key file is rejected, and caps the errors logged', async () => {
    const { proxy, client, head } = await echoProxy();
    const unknown = Array.from({ length: 20_000 }, (_, i) => `    unknownKey${i}: ${i}\n`).join('');
    await longestStallMs(proxy); // starts the proxy's record afresh
    await proxy.reload(head + unknown);
    const { gapMs, trips } = await largestGapWhile(client, () => proxy.logs.some((l) => l.msg === REJECTED), 60_000);
    const stallMs = await longestStallMs(proxy);
    console.log(`20,000 unknown keys: proxy's longest event-loop stall ${stallMs.toFixed(1)} ms; largest gap between round trips ${gapMs.toFixed(1)} ms over ${trips} trips`);
    // Before the fix the loop froze for seconds (13.6 s for 20,000 keys on the report's machine).
    expect(stallMs).toBeLessThan(500);

    const errors = proxy.logs.find((l) => l.msg === REJECTED)!.errors as string[];
    expect(errors).toHaveLength(51);
    expect(errors[0]).toMatch(/config\.yaml:6:5 routes\[0\]\.unknownKey0: unknown key; /);
    expect(errors[50]).toBe('... and 19950 more errors');
    // The running config stays.
    client.write('still');
    expect((await readBytes(client, 5)).toString()).toBe('still');
  }, 90_000);

  it('keeps a proxied connection answering while a 3.9 MiB valid file is applied', async () => {
    const { proxy, client, head } = await echoProxy();
    // Validated in full (defaults are checked even when no route inherits them), though the
    // resolved config stays small: this measures loading, not building routes.
    let allow = '';
    for (let i = 0; allow.length < 3.9 * 1024 * 1024; i++) allow += `    - "host-${i}.example.com:443"\n`;
    await longestStallMs(proxy);
    await proxy.reload(`${head}defaults:\n  allow:\n${allow}`);
    const { gapMs, trips } = await largestGapWhile(client, () => proxy.logs.some((l) => l.msg === RELOADED), 60_000);
    const stallMs = await longestStallMs(proxy);
    console.log(`3.9 MiB valid file: proxy's longest event-loop stall ${stallMs.toFixed(1)} ms; largest gap between round trips ${gapMs.toFixed(1)} ms over ${trips} trips`);
    expect(stallMs).toBeLessThan(500);
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

describe('check and start with many errors', () => {
  let path = '';
  beforeAll(() => {
    const dir = mkdtempSync(join(tmpdir(), 'kp-limits-'));
    path = join(dir, 'many.yaml');
    writeFileSync(
      path,
      'routes:\n  - name: a\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n' +
        Array.from({ length: 20_000 }, (_, i) => `    unknownKey${i}: ${i}\n`).join(''),
    );
  });
  afterAll(() => rmSync(dirname(path), { recursive: true, force: true }));
  const expected = (lines: string[]): void => {
    expect(lines).toHaveLength(51);
    // The list of valid keys grows with the product; its head and the position are what this checks.
    expect(lines[0]!.startsWith(`${path}:5:5 routes[0].unknownKey0: unknown key; valid keys here: name, listen, upstream, protocol, keepalive,`)).toBe(true);
    expect(lines[49]).toMatch(new RegExp(`^${path}:54:5 routes\\[0\\]\\.unknownKey49: `));
    expect(lines[50]).toBe('... and 19950 more errors');
  };

  it('check prints the first 50 errors and a count, and exits 1', () => {
    const result = spawnSync(process.execPath, [MAIN, 'check', '--config', path], { encoding: 'utf8', timeout: 30_000 });
    expect(result.status).toBe(1);
    expected(result.stderr.trimEnd().split('\n'));
    expected(result.stdout.trimEnd().split('\n'));
  });

  it('start refuses with the same capped report, and one JSON line', () => {
    const result = spawnSync(process.execPath, [MAIN, '--config', path], { encoding: 'utf8', timeout: 30_000 });
    expect(result.status).toBe(1);
    expected(result.stderr.trimEnd().split('\n'));
    const line = JSON.parse(result.stdout.trim().split('\n').at(-1)!) as { msg: string; errors: string[] };
    expect(line.msg).toBe('invalid configuration; not started');
    expected(line.errors);
  });
});
