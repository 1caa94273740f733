import type { LookupAddress } from 'node:dns';
import { readdirSync } from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Clock } from '../../src/clock.js';
import { ProxyError } from '../../src/errors.js';
import { canPauseAccepts, pauseAccepts } from '../../src/net/accept-pause.js';
import { addressesToAttempt } from '../../src/net/connect-order.js';
import { dialRaw, type DialOptions } from '../../src/net/dial.js';
import type { RawTcp } from '../../src/net/raw-tcp.js';
import { listen0 } from '../helpers/net.js';
import { until } from '../helpers/wait.js';

// dialRaw (src/net/dial.ts) to a name: resolved at every dial, its addresses tried in
// Node's order (src/net/connect-order.ts), the next one after a refusal or after the
// attempt timeout, on real loopback listeners. Where a test needs a name with several
// addresses it passes a resolver (DialOptions.lookup, the hook forward routes use).

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const clock = new Clock();

function options(host: string, port: number, extra: Partial<DialOptions> = {}): DialOptions {
  return { target: { host, port }, timeoutMs: 5_000, noDelay: true, clock, userTimeoutMs: 0, keepalive: null, ...extra } as DialOptions;
}

/** A resolver that answers `addresses` for any name, in that order. */
function resolvesTo(...addresses: string[]): net.LookupFunction {
  return ((_host: string, _options: unknown, callback: (error: Error | null, found: LookupAddress[]) => void) =>
    callback(null, addresses.map((address) => ({ address, family: net.isIP(address) })))) as net.LookupFunction;
}

/** An echo listener on host (port 0, or `port`). */
async function echoOn(host: string, port = 0): Promise<{ port: number; accepted: () => number }> {
  let accepted = 0;
  const server = await new Promise<net.Server>((resolve, reject) => {
    const listener = net.createServer((socket) => {
      accepted++;
      socket.on('error', () => {});
      socket.pipe(socket);
    });
    listener.once('error', reject);
    listener.listen(port, host, () => resolve(listener));
  });
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return { port: (server.address() as net.AddressInfo).port, accepted: () => accepted };
}

/** Sends `text` through a dialled raw end and waits for the echo. */
async function echoes(end: RawTcp, text: string): Promise<string> {
  const received: Buffer[] = [];
  const echoed = (): string => Buffer.concat(received).toString();
  const ignore = (): void => {};
  end.listen({ data: (_end, chunk) => received.push(chunk), end: ignore, error: ignore, drain: ignore, writeFailed: ignore, close: ignore });
  end.resume();
  end.write(Buffer.from(text));
  await until(() => echoed() === text, 5_000, 'the echo');
  return echoed();
}

describe('dialRaw to a name', () => {
  it('resolves localhost with the system resolver and connects', async () => {
    const echo = await echoOn('127.0.0.1');
    const { socket } = await dialRaw(options('localhost', echo.port)).done;
    cleanups.push(() => socket.destroy());
    expect(await echoes(socket, 'hello')).toBe('hello');
  });

  it('tries the next address after a refusal, in either family order', async () => {
    for (const [listenOn, order] of [
      ['127.0.0.1', ['::1', '127.0.0.1']],
      ['::1', ['127.0.0.1', '::1']],
    ] as const) {
      const echo = await echoOn(listenOn);
      const { socket } = await dialRaw(options('db.example', echo.port, { lookup: resolvesTo(...order) })).done;
      cleanups.push(() => socket.destroy());
      expect(await echoes(socket, `via ${listenOn}`)).toBe(`via ${listenOn}`);
    }
  });

  it('fails with the last refusal when no address answers', async () => {
    const gone = await listen0(() => {});
    await gone.close();
    const failure = await dialRaw(options('db.example', gone.port, { lookup: resolvesTo('127.0.0.1', '::1') })).done.then(
      () => null,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(ProxyError);
    expect((failure as ProxyError).code).toBe('CONNECT_FAILED');
    expect(((failure as ProxyError).cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  it("reports the resolver's error, and a resolver's own verdict as it is", async () => {
    const notFound = ((_h: string, _o: unknown, callback: (error: NodeJS.ErrnoException) => void) =>
      callback(Object.assign(new Error('getaddrinfo ENOTFOUND db.example'), { code: 'ENOTFOUND' }))) as unknown as net.LookupFunction;
    const failure = (await dialRaw(options('db.example', 5432, { lookup: notFound })).done.catch((error: unknown) => error)) as ProxyError;
    expect(failure.code).toBe('CONNECT_FAILED');
    expect(failure.message).toContain('db.example:5432');
    expect((failure.cause as NodeJS.ErrnoException).code).toBe('ENOTFOUND');

    const verdict = new ProxyError('DESTINATION_REFUSED', 'downstream', 'db.example resolves to a refused address');
    const guard = ((_h: string, _o: unknown, callback: (error: Error) => void) => callback(verdict)) as unknown as net.LookupFunction;
    expect(await dialRaw(options('db.example', 5432, { lookup: guard })).done.catch((error: unknown) => error)).toBe(verdict);
  });

  it.skipIf(!canPauseAccepts())('moves on to the next address when an attempt hangs, after the attempt timeout', async () => {
    const port = await stuckListener('127.0.0.2');
    const echo = await echoOn('127.0.0.1', port);

    const started = performance.now();
    const { socket } = await dialRaw(options('db.example', port, { lookup: resolvesTo('127.0.0.2', '127.0.0.1'), timeoutMs: 10_000 })).done;
    cleanups.push(() => socket.destroy());
    const tookMs = performance.now() - started;
    expect(await echoes(socket, 'after the hang')).toBe('after the hang');
    expect(echo.accepted()).toBe(1);
    // Node's attempt timeout (250 ms by default), well before the connect timeout.
    expect(tookMs).toBeGreaterThanOrEqual(net.getDefaultAutoSelectFamilyAttemptTimeout() - 5);
    expect(tookMs).toBeLessThan(5_000);
  });

  it.skipIf(!canPauseAccepts())('gives up at the connect timeout when every address hangs', async () => {
    const port = await stuckListener('127.0.0.2');
    const failure = (await dialRaw(options('db.example', port, { lookup: resolvesTo('127.0.0.2', '127.0.0.2'), timeoutMs: 600 })).done.catch(
      (error: unknown) => error,
    )) as ProxyError;
    expect(failure.code).toBe('CONNECT_TIMEOUT');
  });
});

describe('dialRaw under attack: mixed addresses, aborts, short connect timeouts', () => {
  /** Three kinds of loopback address on one port: a hung listener, nothing (refused), an echo server. */
  async function mixedPort(): Promise<{ port: number; accepted: () => number; kinds: Record<'hang' | 'refuse' | 'work', string> }> {
    const port = await stuckListener('127.0.0.2');
    const echo = await echoOn('127.0.0.1', port);
    return { port, accepted: echo.accepted, kinds: { hang: '127.0.0.2', refuse: '127.0.0.3', work: '127.0.0.1' } };
  }

  it.skipIf(!canPauseAccepts())('connects through any order of hung, refusing and working addresses, or fails as the last one did; no fd or timer left', async () => {
    const target = await mixedPort();
    const fds = openFds();
    const timers = activeTimers();
    let seed = 7;
    const random = (below: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * below;
    for (let round = 0; round < 24; round++) {
      const kinds = Array.from({ length: 1 + Math.floor(random(4)) }, () => (['hang', 'refuse', 'work'] as const)[Math.floor(random(3))]!);
      // Each address once (as Node's order has it); a kind named twice is one address.
      const addresses = [...new Set(kinds.map((kind) => target.kinds[kind]))];
      const accepted = target.accepted();
      const outcome = await dialRaw(options('db.example', target.port, { lookup: resolvesTo(...addresses), timeoutMs: 1_500 })).done.then(
        (result) => result,
        (error: ProxyError) => error,
      );
      const firstWorking = addresses.indexOf(target.kinds.work);
      const label = addresses.join(' ');
      if (firstWorking >= 0) {
        expect(outcome, label).not.toBeInstanceOf(Error);
        const { socket } = outcome as Exclude<typeof outcome, ProxyError>;
        expect(await echoes(socket, label)).toBe(label);
        socket.destroy();
        expect(target.accepted(), label).toBe(accepted + 1);
      } else {
        expect(outcome, label).toBeInstanceOf(ProxyError);
        // The last address decides: refused fails at once, a hang runs into the connect timeout.
        const last = addresses[addresses.length - 1];
        expect((outcome as ProxyError).code, label).toBe(last === target.kinds.hang ? 'CONNECT_TIMEOUT' : 'CONNECT_FAILED');
      }
    }
    await until(() => openFds() <= fds, 5_000, `fds back to ${fds}`);
    expect(activeTimers()).toBeLessThanOrEqual(timers);
  });

  it.skipIf(!canPauseAccepts())('leaves nothing behind when aborted during the resolution or between attempts: no attempt, no timer, no connection at the upstream', async () => {
    const target = await mixedPort();
    const fds = openFds();
    const timers = activeTimers();
    const slowResolver = (...addresses: string[]): net.LookupFunction =>
      ((host: string, lookupOptions: unknown, callback: (error: Error | null, found: LookupAddress[]) => void) =>
        setTimeout(() => (resolvesTo(...addresses) as unknown as (...args: unknown[]) => void)(host, lookupOptions, callback), 100)) as unknown as net.LookupFunction;
    const cases = [
      { when: 'during the resolution', lookup: slowResolver(target.kinds.work), abortAfterMs: 20 },
      { when: 'while the first address hangs', lookup: resolvesTo(target.kinds.hang, target.kinds.work), abortAfterMs: 100 },
      { when: 'after a refusal, before the hang times out', lookup: resolvesTo(target.kinds.refuse, target.kinds.hang, target.kinds.work), abortAfterMs: 100 },
    ];
    for (const { when, lookup, abortAfterMs } of cases) {
      const handle = dialRaw(options('db.example', target.port, { lookup, timeoutMs: 5_000 }));
      await new Promise((resolve) => setTimeout(resolve, abortAfterMs));
      handle.abort();
      const failure = (await handle.done.catch((error: unknown) => error)) as ProxyError;
      expect(failure.code, when).toBe('CONNECT_FAILED');
      expect(failure.side, when).toBe('downstream');
      // Longer than the resolver's delay and two attempt timeouts: nothing may still be going on.
      await new Promise((resolve) => setTimeout(resolve, 2 * net.getDefaultAutoSelectFamilyAttemptTimeout() + 200));
      expect(target.accepted(), when).toBe(0);
    }
    await until(() => openFds() <= fds, 5_000, `fds back to ${fds}`);
    expect(activeTimers()).toBeLessThanOrEqual(timers);
  });

  it.skipIf(!canPauseAccepts())('a connect timeout shorter than the attempt timeout ends the dial at the connect timeout, trying no further address', async () => {
    const target = await mixedPort();
    const fds = openFds();
    const started = performance.now();
    const failure = (await dialRaw(options('db.example', target.port, { lookup: resolvesTo(target.kinds.hang, target.kinds.work), timeoutMs: 100 })).done.catch(
      (error: unknown) => error,
    )) as ProxyError;
    expect(failure.code).toBe('CONNECT_TIMEOUT');
    expect(performance.now() - started).toBeLessThan(net.getDefaultAutoSelectFamilyAttemptTimeout());
    await new Promise((resolve) => setTimeout(resolve, 2 * net.getDefaultAutoSelectFamilyAttemptTimeout()));
    expect(target.accepted()).toBe(0);
    await until(() => openFds() <= fds, 5_000, `fds back to ${fds}`);
  });
});

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Timers alive in this process (a dial's attempt or connect timer that outlived it shows here). */
function activeTimers(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
}

/** A port on `host` whose SYNs go unanswered: a listener that never accepts, its two-slot queue full. */
async function stuckListener(host: string): Promise<number> {
  const stuck = net.createServer();
  await new Promise<void>((resolve) => stuck.listen({ host, port: 0, backlog: 1 }, resolve));
  cleanups.push(() => new Promise((resolve) => stuck.close(resolve)));
  // libuv adds the listener to its epoll set on the loop's next turn: pause after that.
  await until(() => pauseAccepts(stuck) !== null, 2_000, 'the listener paused');
  const port = (stuck.address() as net.AddressInfo).port;
  const fillers: net.Socket[] = [];
  cleanups.push(() => fillers.forEach((socket) => socket.destroy()));
  for (let i = 0; i < 4; i++) fillers.push(net.connect(port, host).on('error', () => {}));
  await until(() => fillers.filter((socket) => !socket.connecting).length >= 2, 5_000, 'the accept queue full');
  return port;
}

describe('addressesToAttempt (Node order)', () => {
  const v4 = (address: string): LookupAddress => ({ address, family: 4 });
  const v6 = (address: string): LookupAddress => ({ address, family: 6 });
  it('alternates families starting with the first answer, each address once', () => {
    expect(addressesToAttempt([v6('::1'), v6('::2'), v4('10.0.0.1'), v6('::1'), v4('10.0.0.2')], true).map((a) => a.address)).toEqual([
      '::1',
      '10.0.0.1',
      '::2',
      '10.0.0.2',
    ]);
    expect(addressesToAttempt([v4('10.0.0.1'), v6('::1')], true).map((a) => a.address)).toEqual(['10.0.0.1', '::1']);
  });
  it('keeps only the first answer when the process turned family selection off, and drops malformed entries', () => {
    expect(addressesToAttempt([v6('::1'), v4('10.0.0.1')], false).map((a) => a.address)).toEqual(['::1']);
    expect(addressesToAttempt([{ address: 'nonsense', family: 4 }, v4('10.0.0.1')], true).map((a) => a.address)).toEqual(['10.0.0.1']);
  });
});
