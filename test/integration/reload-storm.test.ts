import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { parseMetrics, sample, startProxy } from '../helpers/proxy.js';
import { processAlive, until } from '../helpers/wait.js';
import { rawRequest, startUpstream } from '../helpers/http.js';

// 50 SIGHUPs in a row (most leave the file as it was, some change a route, some are
// invalid) while clients churn through a warm-pool TCP route and an HTTP route: every
// client byte comes back in order, no client is cut, and at rest the gauges, the upstream
// sockets and the proxy's descriptors are back to what the pools hold.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const SPARES = 3;
const HTTP_MAX_SOCKETS = 8;
const RELOADS = 50;
const CLIENTS_PER_ROUTE = 6;

describe('a reload storm under client churn', () => {
  it('loses, reorders and cuts nothing; gauges, upstream sockets and fds settle to the pools', async () => {
    const echo = await listen0((socket) => socket.pipe(socket));
    cleanups.push(() => echo.close());
    const web = await startUpstream((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (chunk: Buffer) => parts.push(chunk));
      req.on('end', () => res.end(Buffer.concat(parts)));
    });
    cleanups.push(() => web.close());
    const [rawPort, webPort] = [await freePort(), await freePort()];
    // Variant 0 is the starting file; the others change one route each (a name that
    // resolves elsewhere, a connect timeout, the HTTP pool's size).
    const config = (variant: number): string => `admin: { listen: "{{admin}}" }
routes:
  - name: raw
    listen: 127.0.0.1:${rawPort}
    upstream: ${variant === 1 ? 'localhost' : '127.0.0.1'}:${echo.port}
    pool: { warm: ${SPARES}, maxIdle: 5m }
    connectTimeout: ${variant === 2 ? '4s' : '5s'}
  - name: web
    listen: 127.0.0.1:${webPort}
    protocol: http
    upstream: "${web.url}"
    pool: { maxSockets: ${variant === 3 ? HTTP_MAX_SOCKETS - 1 : HTTP_MAX_SOCKETS} }
`;
    const proxy = await startProxy({ yaml: config(0) });
    cleanups.push(() => proxy.stop('SIGKILL'));
    const metrics = async (): Promise<Map<string, number>> => parseMetrics(await proxy.metrics());
    await until(async () => sample(await metrics(), 'keepalive_proxy_pool_idle', { route: 'raw' }) === SPARES, 5_000, 'the spares dialled');
    const fdsAtStart = readdirSync(`/proc/${proxy.pid}/fd`).length;

    let stopping = false;
    const failures: string[] = [];
    const served = { raw: 0, web: 0 };
    const rawClient = async (): Promise<void> => {
      while (!stopping) {
        const socket = await connect(rawPort);
        socket.on('error', () => {});
        try {
          for (let i = 0; i < 3; i++) {
            const sent = randomBytes(1 + Math.floor(Math.random() * 20_000));
            socket.write(sent);
            if (!(await readBytes(socket, sent.length, 10_000)).equals(sent)) failures.push('raw: bytes differ');
          }
          served.raw++;
        } catch (error) {
          failures.push(`raw: ${String(error)}`);
        }
        socket.destroy();
      }
    };
    const webClient = async (): Promise<void> => {
      while (!stopping) {
        const body = randomBytes(64).toString('hex');
        try {
          const answer = await rawRequest(webPort, `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
          if (answer.status !== 200 || answer.body.toString() !== body) failures.push(`web: ${answer.status} ${answer.body.toString().slice(0, 80)}`);
          served.web++;
        } catch (error) {
          failures.push(`web: ${String(error)}`);
        }
      }
    };
    const clients = [...Array.from({ length: CLIENTS_PER_ROUTE }, rawClient), ...Array.from({ length: CLIENTS_PER_ROUTE }, webClient)];

    // Each SIGHUP waits for the one before to be handled: two sent close together may
    // reach the proxy as one (a pending signal is not queued twice), and each must count.
    const handled = async (): Promise<number> => {
      const m = await metrics();
      return sample(m, 'keepalive_proxy_config_reloads_total', { result: 'ok' }) + sample(m, 'keepalive_proxy_config_reloads_total', { result: 'error' });
    };
    let invalid = 0;
    for (let i = 0; i <= RELOADS; i++) {
      if (i % 7 === 3) {
        invalid++;
        await proxy.reload('routes: [ { name: raw, listen: nope } ]');
      } else await proxy.reload(config(i % 5 === 0 && i < RELOADS ? 1 + ((i / 5) % 3) : 0));
      await until(async () => (await handled()) === i + 1, 10_000, `SIGHUP ${i + 1} handled`, 10);
    }
    expect(sample(await metrics(), 'keepalive_proxy_config_reloads_total', { result: 'error' })).toBe(invalid);
    stopping = true;
    await Promise.all(clients);

    expect(failures).toEqual([]);
    expect(served.raw).toBeGreaterThan(0);
    expect(served.web).toBeGreaterThan(0);
    expect(processAlive(proxy.pid)).toBe(true);
    // A generous bound: a storm that leaked a pool or a config per reload would pass it soon enough.
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${proxy.pid}/status`, 'utf8'))?.[1]);
    expect(rssKb).toBeLessThan(400 * 1024);
    // At rest: the spares the last config asks for, the HTTP pool's idle connections, nothing else.
    await until(async () => {
      const m = await metrics();
      const busy = ['connections_active', 'pool_active'].flatMap((name) => ['raw', 'web'].map((route) => sample(m, `keepalive_proxy_${name}`, { route })));
      return busy.every((value) => value === 0) && sample(m, 'keepalive_proxy_pool_idle', { route: 'raw' }) === SPARES && echo.sockets.size === SPARES && sample(m, 'keepalive_proxy_pool_idle', { route: 'web' }) === web.openSockets().size;
    }, 10_000, 'pools settled').catch(() => {});
    const after = await metrics();
    const gauge = (name: string, route: string): number => sample(after, `keepalive_proxy_${name}`, { route });
    expect({ raw: [gauge('connections_active', 'raw'), gauge('pool_active', 'raw'), gauge('pool_idle', 'raw')], upstreamSockets: echo.sockets.size }).toEqual({ raw: [0, 0, SPARES], upstreamSockets: SPARES });
    const webIdle = gauge('pool_idle', 'web');
    expect({ web: [gauge('connections_active', 'web'), gauge('pool_active', 'web')], webIdle }).toEqual({ web: [0, 0], webIdle: web.openSockets().size });
    expect(webIdle).toBeLessThanOrEqual(HTTP_MAX_SOCKETS);
    // Ends only of the kinds this traffic makes: clients leaving, pools a reload replaced.
    const reasons = [...after.entries()].filter(([key, value]) => key.startsWith('keepalive_proxy_evictions_total{') && value > 0).map(([key]) => key.replace(/.*reason="([^"]+)".*/, '$1'));
    expect(reasons.filter((reason) => !['peer_closed', 'client_closed', 'reload'].includes(reason))).toEqual([]);
    expect(reasons).toContain('reload');
    const fdBound = fdsAtStart + webIdle;
    const openFds = (): string[] =>
      readdirSync(`/proc/${proxy.pid}/fd`).map((fd) => {
        try {
          return readlinkSync(`/proc/${proxy.pid}/fd/${fd}`);
        } catch {
          return 'gone';
        }
      });
    await until(() => openFds().length <= fdBound, 5_000, 'descriptors settled').catch(() => {});
    const fds = openFds();
    expect(fds.length, fds.join(' ')).toBeLessThanOrEqual(fdBound);
  }, 60_000);
});
