import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawRequest, startUpstream, type Upstream } from '../helpers/http.js';
import { freePort } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { once, until } from '../helpers/wait.js';

// End to end through the CLI (dist/main.js) with http routes written in YAML, exactly as a
// user runs it: a reverse route and a forward route, /metrics and /connections, a SIGHUP
// reload that changes the pool, SIGTERM.

const run = promisify(execFile);

let upstream: Upstream;
let proxy: RunningProxy;
let apiPort: number;
let forwardPort: number;

function yaml(maxSockets: number): string {
  return `
admin:
  listen: "{{admin}}"
log:
  level: warn
shutdownTimeout: 3s
routes:
  - name: api
    listen: 127.0.0.1:${apiPort}
    protocol: http
    upstream: http://127.0.0.1:${upstream.port}
    pool: { maxSockets: ${maxSockets}, idleTimeout: 50s, maxAge: 10m, maxRequests: 1000 }
  - name: egress
    listen: 127.0.0.1:${forwardPort}
    protocol: http-forward
    allow: ["127.0.0.1:${upstream.port}"]
`;
}

beforeAll(async () => {
  upstream = await startUpstream((req, res) => {
    req.resume();
    req.on('end', () => res.end(`up ${req.url}`));
  });
  apiPort = await freePort();
  forwardPort = await freePort();
  proxy = await startProxy({ yaml: yaml(2) });
});

afterAll(async () => {
  await proxy?.stop('SIGKILL');
  await upstream?.close();
});

describe('keepalive-proxy CLI with http routes', () => {
  it('pools a legacy client over at most maxSockets connections and reports it in /metrics', async () => {
    for (let start = 0; start < 24; start += 6) {
      const responses = await Promise.all(Array.from({ length: 6 }, (_, i) => rawRequest(apiPort, `GET /n${start + i} HTTP/1.0\r\n\r\n`)));
      responses.forEach((response, i) => expect(response.body.toString()).toBe(`up /n${start + i}`));
    }
    expect(upstream.connections()).toBeLessThanOrEqual(2);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_requests_total', { route: 'api', code: '200' })).toBe(24);
    expect(sample(metrics, 'keepalive_proxy_reuse_total', { route: 'api' })).toBeGreaterThanOrEqual(22);
    expect(sample(metrics, 'keepalive_proxy_pool_idle', { route: 'api' })).toBe(upstream.connections());
    expect(sample(metrics, 'keepalive_proxy_upstream_connects_total', { route: 'api', result: 'ok' })).toBe(upstream.connections());
  });

  it('lists a kept-alive client connection in /connections', async () => {
    const socket = net.connect(apiPort, '127.0.0.1');
    socket.on('error', () => {});
    await once(socket, 'connect', 5_000);
    socket.write('GET /held HTTP/1.1\r\nHost: x\r\n\r\n');
    await once(socket, 'data', 5_000);
    const rows = await proxy.connections();
    const row = rows.find((r) => r.route === 'api');
    expect(row).toMatchObject({ protocol: 'http', upstream: `http://127.0.0.1:${upstream.port}` });
    socket.destroy();
  });

  it('forwards for curl -x through the allowlisted route, 403 elsewhere', async () => {
    const { stdout } = await run('/usr/bin/curl', ['-sS', '--max-time', '10', '--proxy', `http://127.0.0.1:${forwardPort}`, `http://127.0.0.1:${upstream.port}/via-forward`]);
    expect(stdout).toBe('up /via-forward');
    const other = await freePort();
    const { stdout: code } = await run('/usr/bin/curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', '--proxy', `http://127.0.0.1:${forwardPort}`, `http://127.0.0.1:${other}/`]);
    expect(code).toBe('403');
  });

  it('takes a new pool on SIGHUP and exits 0 on SIGTERM', async () => {
    const before = upstream.connections();
    await proxy.reload(yaml(1));
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_config_reloads_total', { result: 'ok' }) === 1, 5_000, 'reload');
    for (let i = 0; i < 6; i++) expect((await rawRequest(apiPort, `GET /after${i} HTTP/1.0\r\n\r\n`)).body.toString()).toBe(`up /after${i}`);
    // The old pool's connections were closed; the new pool has one.
    expect(upstream.connections() - before).toBe(1);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_evictions_total', { route: 'api', reason: 'reload' })).toBeGreaterThanOrEqual(1);
    expect(await proxy.stop('SIGTERM')).toBe(0);
  });
});
