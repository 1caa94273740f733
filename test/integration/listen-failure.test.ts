import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes, refused } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

// A listener that cannot bind: fatal at start (one error line, exit 1, never "ready",
// nothing left listening), an error on SIGHUP that leaves the running config whole.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A port someone else holds for the whole test. */
async function occupiedPort(): Promise<number> {
  const holder = await listen0((socket) => socket.destroy());
  cleanups.push(() => holder.close());
  return holder.port;
}

async function echo(tag: string): Promise<number> {
  const upstream = await listen0((socket) => {
    socket.on('data', (chunk: Buffer) => socket.write(`${tag}:${chunk.toString()}`));
    socket.on('end', () => socket.end());
  });
  cleanups.push(() => upstream.close());
  return upstream.port;
}


async function startExpectingFailure(options: { yaml?: string; args?: string[] }): Promise<{ code: number | null; proxy: RunningProxy }> {
  const proxy = await startProxy({ ...options, waitReady: false });
  cleanups.push(() => proxy.stop('SIGKILL'));
  const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 20_000).unref());
  const code = await Promise.race([proxy.exited, timeout]);
  if (code === 'timeout') throw new Error(`the proxy kept running; logs: ${JSON.stringify(proxy.logs)}`);
  return { code, proxy };
}

const errorLines = (proxy: RunningProxy): Array<Record<string, unknown>> =>
  proxy.logs.filter((l) => l.level === 'error' || l.level === 'fatal');

describe('a listener that cannot bind at start', () => {
  it.each([
    ['a tcp route, with the admin listener', 'tcp', true],
    ['a tcp route, --admin off', 'tcp', false],
    ['an http route, with the admin listener', 'http', true],
    ['an http route, --admin off', 'http', false],
  ])('%s: one error line naming it, exit 1, never ready, nothing left listening', async (_name, protocol, withAdmin) => {
    const taken = await occupiedPort();
    const first = await freePort();
    const upstream = await echo('u');
    const target = protocol === 'http' ? `http://127.0.0.1:${upstream}` : `127.0.0.1:${upstream}`;
    const admin = await freePort();
    const { code, proxy } = await startExpectingFailure({
      yaml: `
admin: { listen: ${withAdmin ? `127.0.0.1:${admin}` : 'off'} }
routes:
  - { name: fine, listen: 127.0.0.1:${first}, upstream: 127.0.0.1:${upstream} }
  - { name: blocked, protocol: ${protocol}, listen: 127.0.0.1:${taken}, upstream: "${target}" }
`,
    });
    expect(code).toBe(1);
    const errors = errorLines(proxy);
    expect(errors).toHaveLength(1);
    expect(String(errors[0]!.msg)).toContain(`blocked on 127.0.0.1:${taken}: EADDRINUSE`);
    expect(proxy.logs.some((l) => l.msg === 'keepalive-proxy ready')).toBe(false);
    // The route that did bind and the admin listener were let go before the exit.
    expect(await refused(first)).toBe(true);
    expect(await refused(admin)).toBe(true);
  });

  it('the admin listener in use is fatal too', async () => {
    const taken = await occupiedPort();
    const { code, proxy } = await startExpectingFailure({ args: ['--listen', `127.0.0.1:${await freePort()}`, '--upstream', '127.0.0.1:1', '--admin', `127.0.0.1:${taken}`] });
    expect(code).toBe(1);
    const errors = errorLines(proxy);
    expect(errors).toHaveLength(1);
    expect(String(errors[0]!.msg)).toContain(`admin on 127.0.0.1:${taken}: EADDRINUSE`);
  });

  it('an address this user may not bind (EACCES on a privileged port) is fatal', async () => {
    if (process.getuid?.() === 0) {
      // Root may bind port 1: a non-local address (EADDRNOTAVAIL) stands for "cannot bind" instead.
      const { code, proxy } = await startExpectingFailure({ args: ['--listen', '192.0.2.1:7000', '--upstream', '127.0.0.1:1', '--admin', 'off'] });
      expect(code).toBe(1);
      expect(String(errorLines(proxy)[0]!.msg)).toContain('EADDRNOTAVAIL');
      expect(errorLines(proxy)).toHaveLength(1);
      return;
    }
    const { code, proxy } = await startExpectingFailure({ args: ['--listen', '127.0.0.1:1', '--upstream', '127.0.0.1:2', '--admin', 'off'] });
    expect(code).toBe(1);
    expect(String(errorLines(proxy)[0]!.msg)).toContain('EACCES');
  });
});

describe('a listener that cannot bind on SIGHUP', () => {
  it('keeps the old listeners and settings, counts an error, applies nothing of that file', async () => {
    const a = await echo('a');
    const b = await echo('b');
    const taken = await occupiedPort();
    const p1 = await freePort();
    const p2 = await freePort();
    const yaml1 = `
admin: { listen: "{{admin}}" }
routes:
  - { name: one, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${a} }
  - { name: two, listen: 127.0.0.1:${p2}, upstream: 127.0.0.1:${a} }
`;
    const proxy = await startProxy({ yaml: yaml1 });
    cleanups.push(() => proxy.stop('SIGKILL'));
    const live = await connect(p2);
    cleanups.push(() => live.destroy());

    // Route one would change upstream, route two would move to a taken port, route three is new.
    const p3 = await freePort();
    await proxy.reload(`
admin: { listen: "{{admin}}" }
routes:
  - { name: one, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${b} }
  - { name: two, listen: 127.0.0.1:${taken}, upstream: 127.0.0.1:${b} }
  - { name: three, listen: 127.0.0.1:${p3}, upstream: 127.0.0.1:${b} }
`);
    await until(() => errorLines(proxy).length > 0, 10_000, 'reload error logged');
    expect(String(errorLines(proxy)[0]!.msg)).toContain(`two on 127.0.0.1:${taken}: EADDRINUSE`);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_config_reloads_total', { result: 'error' })).toBe(1);
    expect(proxy.logs.some((l) => l.msg === 'configuration reloaded')).toBe(false);

    // Nothing of the rejected file applies: old upstreams, old listeners, no new route.
    for (const port of [p1, p2]) {
      const socket = await connect(port);
      cleanups.push(() => socket.destroy());
      socket.write('x');
      expect((await readBytes(socket, 3)).toString()).toBe('a:x');
    }
    live.write('y');
    expect((await readBytes(live, 3)).toString()).toBe('a:y');
    expect(await refused(p3)).toBe(true);
    expect((await fetch(`${proxy.adminUrl}/readyz`)).status).toBe(200);

    // The same move once the port is free goes through.
    const p4 = await freePort();
    await proxy.reload(`
admin: { listen: "{{admin}}" }
routes:
  - { name: one, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${b} }
  - { name: two, listen: 127.0.0.1:${p4}, upstream: 127.0.0.1:${b} }
`);
    await until(() => proxy.logs.some((l) => l.msg === 'configuration reloaded'), 10_000, 'reload applied');
    const moved = await connect(p4);
    cleanups.push(() => moved.destroy());
    moved.write('z');
    expect((await readBytes(moved, 3)).toString()).toBe('b:z');
    expect(await refused(p2)).toBe(true);
  });

  it('an address handed from one route to another on reload is bound by the new one', async () => {
    const a = await echo('a');
    const b = await echo('b');
    const p1 = await freePort();
    const proxy = await startProxy({
      yaml: `
admin: { listen: "{{admin}}" }
routes:
  - { name: old, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${a} }
`,
    });
    cleanups.push(() => proxy.stop('SIGKILL'));
    await proxy.reload(`
admin: { listen: "{{admin}}" }
routes:
  - { name: new, listen: 127.0.0.1:${p1}, upstream: 127.0.0.1:${b} }
`);
    await until(() => proxy.logs.some((l) => l.msg === 'configuration reloaded'), 10_000, 'reload applied');
    const socket = await connect(p1);
    cleanups.push(() => socket.destroy());
    socket.write('q');
    expect((await readBytes(socket, 3)).toString()).toBe('b:q');
    expect(errorLines(proxy)).toHaveLength(0);
  });
});
