import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { rawRequest, startUpstream } from '../helpers/http.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';
import { makePki } from '../helpers/pki.js';

// Failures leave a trace (issue 8, defect 10): each one is counted in a metric and
// logged through the same burst folding (the first line at once, then at most one line
// a second with a count), never silent and never one line per event.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function proxyWith(routes: string, options: { wrap?: string[] } = {}): Promise<RunningProxy> {
  const proxy = await startProxy({ yaml: `admin: { listen: "{{admin}}" }\nroutes:\n${routes}`, wrap: options.wrap });
  cleanups.push(() => proxy.stop('SIGKILL'));
  if (options.wrap) await until(async () => (await fetch(`${proxy.adminUrl}/readyz`)).ok, 20_000, 'proxy /readyz', 50);
  return proxy;
}

async function metric(proxy: RunningProxy, name: string, labels: Record<string, string>): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), `keepalive_proxy_${name}`, labels);
}

function lines(proxy: RunningProxy, msg: string): Array<Record<string, unknown>> {
  return proxy.logs.filter((l) => l.msg === msg);
}

/** Events a folded log has accounted for: a first line is one, a summary line the count it folded. */
function accountedFor(logLines: Array<Record<string, unknown>>): number {
  return logLines.reduce((n, l) => n + Number(l.alsoInLastInterval ?? 1), 0);
}

/** Opens `count` clients at once, left idle; returns their release (also run at cleanup). */
function openClients(port: number, count: number): () => void {
  const clients: net.Socket[] = [];
  const release = (): void => clients.splice(0).forEach((c) => c.destroy());
  cleanups.push(release);
  for (let i = 0; i < count; i++) {
    const client = net.connect({ host: '127.0.0.1', port });
    client.on('error', () => {});
    clients.push(client);
  }
  return release;
}

/** A loopback port with nothing listening: connects to it are refused. */
async function refusedPort(): Promise<number> {
  return freePort();
}

describe('failures are counted and logged, folded', () => {
  it('an HTTP upstream that refuses: 502, upstream_connects_total{result="error"} and a log line', async () => {
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: web, protocol: http, listen: 127.0.0.1:${port}, upstream: "http://127.0.0.1:${await refusedPort()}" }\n`);
    const response = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(response.status).toBe(502);
    await until(() => lines(proxy, 'upstream connect failed; answering 502/504').length > 0, 5_000, 'a log line for the refused connect');
    expect(lines(proxy, 'upstream connect failed; answering 502/504')[0]).toMatchObject({ route: 'web', result: 'error', level: 'warn' });
    expect(await metric(proxy, 'upstream_connects_total', { route: 'web', result: 'error' })).toBeGreaterThanOrEqual(1);
  });

  it('an HTTP outage with many requests is one line at once, then per-second counts of every failure', async () => {
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: web, protocol: http, listen: 127.0.0.1:${port}, upstream: "http://127.0.0.1:${await refusedPort()}" }\n`);
    const requests = 60;
    const statuses = await Promise.all(Array.from({ length: requests }, () => rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n').then((r) => r.status)));
    expect(statuses.every((s) => s === 502)).toBe(true);
    const failures = await metric(proxy, 'upstream_connects_total', { route: 'web', result: 'error' });
    expect(failures).toBeGreaterThanOrEqual(1);
    // Every failed connect is accounted for by the lines, once the last summary is out.
    await until(() => accountedFor(lines(proxy, 'upstream connect failed; answering 502/504')) === failures, 5_000, 'the summary line');
    expect(lines(proxy, 'upstream connect failed; answering 502/504').length).toBeLessThanOrEqual(4);
  });

  it('a warm pool whose refills fail: counted in upstream_connects_total and logged, folded', async () => {
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: warm, protocol: tcp, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${await refusedPort()}, pool: { warm: 4, maxIdle: 1m } }\n`);
    await until(async () => (await metric(proxy, 'upstream_connects_total', { route: 'warm', result: 'error' })) >= 8, 10_000, 'refills retried');
    const logged = await proxy.logged((l) => l.msg === 'warm pool refill failed; retrying with backoff');
    expect(logged[0]).toMatchObject({ route: 'warm', result: 'error', level: 'warn' });
    // Four dials fail together every backoff step: the other three fold into a summary.
    const summary = await until(() => lines(proxy, 'warm pool refill failed; retrying with backoff').find((l) => l.alsoInLastInterval !== undefined), 5_000, 'a summary');
    expect(Number(summary.alsoInLastInterval)).toBeGreaterThanOrEqual(3);
    expect(summary.results).toMatchObject({ error: Number(summary.alsoInLastInterval) });
  });

  it('200 connections evicted at once: every one counted, a bounded number of lines accounting for all', async () => {
    const upstream = await listen0(() => {});
    cleanups.push(() => upstream.close());
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: mass, protocol: tcp, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port} }\n`);
    const clients: net.Socket[] = [];
    cleanups.push(() => clients.forEach((c) => c.destroy()));
    for (let i = 0; i < 200; i++) {
      const client = await connect(port);
      client.on('error', () => {});
      clients.push(client);
    }
    await until(() => upstream.sockets.size === 200, 10_000, '200 upstream connections');
    const started = Date.now();
    for (const socket of upstream.sockets) socket.resetAndDestroy();
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'mass', reason: 'peer_reset' })) === 200, 10_000, '200 evictions counted');
    const evicted = (): Array<Record<string, unknown>> => lines(proxy, 'connection evicted');
    await until(() => accountedFor(evicted()) === 200, 5_000, 'the summary line');
    const seconds = Math.ceil((Date.now() - started) / 1000);
    // The first line, then at most one a second.
    expect(evicted().length).toBeLessThanOrEqual(2 + seconds);
    const summary = evicted().find((l) => l.alsoInLastInterval !== undefined);
    expect(summary).toMatchObject({ reasons: { peer_reset: Number(summary?.alsoInLastInterval) } });
  }, 60_000);

  it('spares dropped by a reload are counted with reason reload', async () => {
    const upstream = await listen0(() => {});
    cleanups.push(() => upstream.close());
    const port = await freePort();
    const route = (warm: number): string =>
      `admin: { listen: "{{admin}}" }\nroutes:\n  - { name: warm, protocol: tcp, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${upstream.port}, pool: { warm: ${warm}, maxIdle: 1m } }\n`;
    const proxy = await startProxy({ yaml: route(2) });
    cleanups.push(() => proxy.stop('SIGKILL'));
    await until(async () => (await metric(proxy, 'pool_idle', { route: 'warm' })) === 2, 5_000, 'two spares');
    await proxy.reload(route(3));
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'warm', reason: 'reload' })) === 2, 5_000, 'spares evicted for the reload');
    expect(await metric(proxy, 'evictions_total', { route: 'warm', reason: 'route_removed' })).toBe(0);
  });

  // Envoy keeps an unchanged cluster's pools through a config update; a SIGHUP used to drop
  // and re-dial every spare of every route. The clientTls route carries certificate bytes
  // through the reload's worker thread: they must compare by content, not by object.
  it('a reload keeps the spares of a route it left as it was, and replaces those of a route it changed', async () => {
    const pki = makePki();
    cleanups.push(() => pki.cleanup());
    const upstream = await listen0(() => {});
    cleanups.push(() => upstream.close());
    const [plainPort, tlsPort, addedPort] = [await freePort(), await freePort(), await freePort()];
    const config = (plainWarm: number, added: boolean): string =>
      `admin: { listen: "{{admin}}" }\nroutes:\n` +
      `  - { name: plain, protocol: tcp, listen: 127.0.0.1:${plainPort}, upstream: 127.0.0.1:${upstream.port}, pool: { warm: ${plainWarm}, maxIdle: 1m } }\n` +
      `  - { name: tls, protocol: tcp, listen: 127.0.0.1:${tlsPort}, upstream: 127.0.0.1:${upstream.port}, pool: { warm: 2, maxIdle: 1m }, clientTls: { cert: ${pki.server.cert}, key: ${pki.server.key} } }\n` +
      (added ? `  - { name: added, protocol: tcp, listen: 127.0.0.1:${addedPort}, upstream: 127.0.0.1:${upstream.port} }\n` : '');
    const proxy = await startProxy({ yaml: config(2, false) });
    cleanups.push(() => proxy.stop('SIGKILL'));
    const spares = async (): Promise<Map<string, number>> => parseMetrics(await proxy.metrics());
    await until(async () => {
      const values = await spares();
      return sample(values, 'keepalive_proxy_pool_idle', { route: 'plain' }) === 2 && sample(values, 'keepalive_proxy_pool_idle', { route: 'tls' }) === 2;
    }, 5_000, 'two spares on each route');
    // Every spare is an accepted upstream connection (the server side may lag the proxy's connect).
    await until(() => upstream.sockets.size === 4, 5_000, 'the upstream holding four spares');
    const spareSockets = [...upstream.sockets];

    await proxy.reload(config(2, true));
    await until(async () => sample(await spares(), 'keepalive_proxy_config_reloads_total', { result: 'ok' }) === 1, 5_000, 'the first reload applied');
    const kept = await spares();
    for (const route of ['plain', 'tls']) {
      expect(sample(kept, 'keepalive_proxy_evictions_total', { route, reason: 'reload' })).toBe(0);
      expect(sample(kept, 'keepalive_proxy_pool_idle', { route })).toBe(2);
    }
    expect(spareSockets.every((socket) => !socket.destroyed)).toBe(true);

    // Changing one route replaces its spares only.
    await proxy.reload(config(3, true));
    await until(async () => sample(await spares(), 'keepalive_proxy_evictions_total', { route: 'plain', reason: 'reload' }) === 2, 5_000, 'the changed route\'s spares dropped');
    await until(async () => sample(await spares(), 'keepalive_proxy_pool_idle', { route: 'plain' }) === 3, 5_000, 'the changed route refilled to its new size');
    expect(sample(await spares(), 'keepalive_proxy_evictions_total', { route: 'tls', reason: 'reload' })).toBe(0);
  });

  it('clients the fd limit refuses are counted in accept_errors_total, and the route serves again once fds free up', async () => {
    // The echo closes its side on the client's half-close (as a server does), so released pairs free their fds.
    const echo = await listen0((socket) => socket.on('data', (c: Buffer) => socket.write(c)).on('end', () => socket.end()));
    cleanups.push(() => echo.close());
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: lim, protocol: tcp, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${echo.port} }\n`, {
      wrap: ['bash', '-c', 'ulimit -n 64; exec "$@"', 'bash'],
    });
    // Each proxied client takes two of the proxy's 64 descriptors: 60 clients cannot all fit.
    const release = openClients(port, 60);
    // The fd budget pauses accepts before EMFILE (the clients past it wait in the backlog);
    // an upstream connect that still meets EMFILE is counted in accept_errors_total. Either
    // way the limit leaves a log line and a count.
    await until(
      () => lines(proxy, 'file descriptor budget reached; accepts paused, new clients wait in the backlog').length > 0 || lines(proxy, 'upstream connect failed; closing client').some((l) => String(l.err).includes('EMFILE')),
      10_000,
      'the fd limit logged',
    );
    await until(
      async () => (await metric(proxy, 'fd_budget_reached_total', {})) + (await metric(proxy, 'accept_errors_total', { route: 'lim', code: 'EMFILE' })) > 0,
      10_000,
      'the fd limit counted',
    );
    release();
    // Descriptors are free again: the same listener proxies a new client.
    const echoed = await until(async () => {
      const socket = await connect(port);
      socket.on('error', () => {});
      cleanups.push(() => socket.destroy());
      socket.write('alive?');
      return (await readBytes(socket, 6, 2_000)).toString() === 'alive?';
    }, 10_000, 'an echo through the proxy after the fd limit');
    expect(echoed).toBe(true);
    expect(proxy.child.exitCode).toBeNull();
  }, 60_000);

  // Issue 8, defect 10: at EMFILE libuv accepts the queued clients and closes them unseen.
  // The proxy stops accepting at its fd budget instead: the rest wait in the backlog.
  it('at the fd limit no client is closed unseen: accepts pause, the rest wait and are served, admin answers', async () => {
    // The echo closes its side when the client's half-close reaches it, so each pair's fds free up.
    const echo = await listen0((socket) => socket.on('data', (c: Buffer) => socket.write(c)).on('end', () => socket.end()));
    cleanups.push(() => echo.close());
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: lim, protocol: tcp, listen: 127.0.0.1:${port}, upstream: 127.0.0.1:${echo.port} }\n`, {
      wrap: ['bash', '-c', 'ulimit -n 64; exec "$@"', 'bash'],
    });
    // Each client holds its pair a while after its echo, so 80 of them cannot fit at once.
    const HOLD_MS = 1_500;
    let healthzDuringPause: number | null = null;
    const outcomes = await Promise.all(
      Array.from({ length: 80 }, (_, i) =>
        new Promise<string>((resolve) => {
          const payload = `client-${i}\n`;
          let got = '';
          const client = net.connect({ host: '127.0.0.1', port });
          cleanups.push(() => client.destroy());
          const deadline = setTimeout(() => finish('no echo within 45 s'), 45_000);
          const finish = (outcome: string): void => {
            clearTimeout(deadline);
            resolve(outcome);
            setTimeout(() => client.destroy(), outcome === 'echoed' ? HOLD_MS : 0);
          };
          client.on('error', (error) => finish(`error ${(error as NodeJS.ErrnoException).code}`));
          client.on('close', () => finish(`closed after ${JSON.stringify(got)}`));
          client.on('data', (chunk: Buffer) => {
            got += chunk.toString();
            if (got === payload) finish('echoed');
          });
          client.write(payload);
        }),
      ).concat([
        (async () => {
          await until(async () => (await metric(proxy, 'accept_paused', {})) === 1, 20_000, 'accepts paused at the fd budget', 50);
          healthzDuringPause = (await fetch(`${proxy.adminUrl}/healthz`)).status;
          return 'echoed';
        })(),
      ]),
    );
    expect(outcomes.filter((o) => o !== 'echoed')).toEqual([]);
    expect(healthzDuringPause).toBe(200);
    expect(await metric(proxy, 'fd_budget_reached_total', {})).toBeGreaterThanOrEqual(1);
    await proxy.logged((l) => l.msg === 'file descriptor budget reached; accepts paused, new clients wait in the backlog');
    await until(async () => (await metric(proxy, 'accept_paused', {})) === 0, 10_000, 'accepts resumed');
    const socket = await connect(port);
    cleanups.push(() => socket.destroy());
    socket.write('after');
    expect((await readBytes(socket, 5, 5_000)).toString()).toBe('after');
    expect(proxy.child.exitCode).toBeNull();
  }, 90_000);

  // A guard rather than a defect's proof (it passes on the code before issue 8 too): libuv
  // accepts and closes what it cannot keep, and the listener must stay up through it.
  it('idle clients past the fd limit do not stop an HTTP route or its admin listener', async () => {
    const upstream = await startUpstream((_req, res) => res.end('alive'));
    cleanups.push(() => upstream.close());
    const port = await freePort();
    const proxy = await proxyWith(`  - { name: lim, protocol: http, listen: 127.0.0.1:${port}, upstream: "${upstream.url}" }\n`, {
      wrap: ['bash', '-c', 'ulimit -n 64; exec "$@"', 'bash'],
    });
    const release = openClients(port, 80);
    await until(async () => (await metric(proxy, 'connections_active', { route: 'lim' }).catch(() => 0)) >= 30, 10_000, 'the route full of idle clients');
    release();
    const response = await until(async () => {
      const r = await rawRequest(port, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', 2_000);
      return r.status === 200 ? r : null;
    }, 10_000, 'a response through the proxy after the fd limit');
    expect(response.body.toString()).toBe('alive');
    expect(proxy.child.exitCode).toBeNull();
  }, 60_000);
});
