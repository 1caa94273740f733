import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ProxyAgent, fetch } from 'undici';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { httpRouteConfig, request, startRoute, startUpstream, type RunningRoute, type Upstream } from '../helpers/http.js';
import { freePort } from '../helpers/net.js';
import { startProxy } from '../helpers/proxy.js';
import { once, until } from '../helpers/wait.js';

// Forward proxy mode with real clients: curl -x and undici's ProxyAgent, absolute-form
// requests pooled per destination, CONNECT tunnels (TLS inside), and the allowlist.

const run = promisify(execFile);
const CURL = '/usr/bin/curl';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

let pki: string;
beforeAll(async () => {
  pki = mkdtempSync(join(tmpdir(), 'kp-fwd-pki-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const openssl = (...args: string[]) => run('openssl', args, { cwd: pki });
  await openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=kp forward test CA');
  writeFileSync(join(pki, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  await openssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  await openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext');
});

async function upstreamNamed(name: string): Promise<Upstream & { seen: http.IncomingHttpHeaders[] }> {
  const seen: http.IncomingHttpHeaders[] = [];
  const upstream = await startUpstream((req, res) => {
    seen.push(req.headers);
    req.resume();
    req.on('end', () => res.end(`${name} ${req.url}`));
  });
  cleanups.push(() => upstream.close());
  return Object.assign(upstream, { seen });
}

async function forwardProxy(allow: string[], extra = ''): Promise<RunningRoute> {
  const list = allow.map((pattern) => `  - "${pattern}"`).join('\n');
  const route = await startRoute(httpRouteConfig(`protocol: http-forward\nallow:\n${list}\n${extra}`));
  cleanups.push(() => route.close());
  return route;
}

async function curl(args: string[]): Promise<{ status: number; body: string }> {
  try {
    const { stdout } = await run(CURL, ['-sS', '--max-time', '10', '-o', '-', '-w', '\n%{http_code}', ...args]);
    const cut = stdout.lastIndexOf('\n');
    return { body: stdout.slice(0, cut), status: Number(stdout.slice(cut + 1)) };
  } catch (error) {
    // curl fails outright when a CONNECT is refused: "CONNECT tunnel failed, response 403".
    const refused = /response (\d{3})/.exec(String((error as { stderr?: string }).stderr));
    if (refused) return { status: Number(refused[1]), body: '' };
    throw error;
  }
}

describe('forward proxy', () => {
  it('takes absolute-form requests from curl -x to allowlisted destinations, one pool per destination', async () => {
    const a = await upstreamNamed('A');
    const b = await upstreamNamed('B');
    // localhost resolves to loopback: the address has to be spelled out as well.
    const proxy = await forwardProxy([`127.0.0.1:${a.port}`, `localhost:${b.port}`, `127.0.0.1:${b.port}`], 'pool: { maxSockets: 2 }');
    const proxyUrl = `http://127.0.0.1:${proxy.port}`;
    for (let i = 0; i < 5; i++) {
      expect(await curl(['--proxy', proxyUrl, `http://127.0.0.1:${a.port}/a${i}`])).toEqual({ status: 200, body: `A /a${i}` });
      expect(await curl(['--proxy', proxyUrl, `http://localhost:${b.port}/b${i}`])).toEqual({ status: 200, body: `B /b${i}` });
    }
    // Ten curl runs, ten client connections; each destination saw one pooled connection.
    expect(await proxy.metric('connections_accepted_total', { route: 'web' })).toBe(10);
    expect(a.connections()).toBe(1);
    expect(b.connections()).toBe(1);
    expect(await proxy.metric('reuse_total', { route: 'web' })).toBe(8);
    expect(a.seen[0]!.host).toBe(`127.0.0.1:${a.port}`);
  });

  it('denies everything else with 403: other ports, other names, other schemes; never reaching them', async () => {
    const a = await upstreamNamed('A');
    const other = await upstreamNamed('other');
    const proxy = await forwardProxy([`127.0.0.1:${a.port}`]);
    const proxyUrl = `http://127.0.0.1:${proxy.port}`;
    expect((await curl(['--proxy', proxyUrl, `http://127.0.0.1:${other.port}/`])).status).toBe(403);
    expect((await curl(['--proxy', proxyUrl, `http://localhost:${a.port}/`])).status).toBe(403);
    expect((await curl(['--proxy', proxyUrl, '-p', `http://127.0.0.1:${other.port}/`])).status).toBe(403); // CONNECT
    // The same host written differently is the same host: allowed.
    expect((await curl(['--proxy', proxyUrl, `http://0x7f.0.0.1:${a.port}/x`])).body).toBe('A /x');
    // Origin-form is not a forward proxy request.
    expect((await request(proxy.port, { path: '/' })).status).toBe(400);
    expect(other.connections()).toBe(0);
    expect(await proxy.metric('requests_total', { route: 'web', code: '403' })).toBe(3);
  });

  it('never matches an IP-shaped pattern against a name: 10.0.0.evil is not 10.0.0.*', async () => {
    const proxy = await forwardProxy(['10.0.0.*:*', '169.254.*:*']);
    const proxyUrl = `http://127.0.0.1:${proxy.port}`;
    for (const name of ['10.0.0.evil', '10.0.0.localhost', '169.254.metadata', '169.254.1.evil']) {
      expect((await curl(['--proxy', proxyUrl, `http://${name}/`])).status, name).toBe(403);
      expect((await curl(['--proxy', proxyUrl, '-p', `http://${name}:80/`])).status, `CONNECT ${name}`).toBe(403);
    }
    expect(await proxy.metric('upstream_connects_total', { route: 'web', result: 'error' })).toBe(0);
  });

  it('refuses a name that resolves to loopback, for absolute-form and CONNECT, unless the address is spelled out', async () => {
    const a = await upstreamNamed('A');
    for (const allow of [['*:*'], [`localhost:${a.port}`], ['*:*', '127.0.0.*:*']]) {
      const proxy = await forwardProxy(allow);
      const proxyUrl = `http://127.0.0.1:${proxy.port}`;
      expect((await curl(['--proxy', proxyUrl, `http://localhost:${a.port}/`])).status, allow.join()).toBe(403);
      expect((await curl(['--proxy', proxyUrl, '-p', `http://localhost:${a.port}/`])).status, allow.join()).toBe(403);
      // IP literals in any spelling, IPv4-mapped IPv6 included.
      for (const host of ['127.0.0.1', '2130706433', '0x7f.0.0.1', '[::ffff:127.0.0.1]', '[::1]']) {
        expect((await curl(['--proxy', proxyUrl, `http://${host}:${a.port}/`])).status, `${host} under ${allow.join()}`).toBe(403);
      }
      await proxy.close();
    }
    expect(a.connections()).toBe(0);
    // Spelled out, the same name goes through (to that address only).
    const proxy = await forwardProxy([`localhost:${a.port}`, `127.0.0.1:${a.port}`]);
    expect(await curl(['--proxy', `http://127.0.0.1:${proxy.port}`, `http://localhost:${a.port}/ok`])).toEqual({ status: 200, body: 'A /ok' });
  });

  it("never reaches the proxy's own listeners, even with loopback opened by a literal pattern", async () => {
    const listen = await freePort();
    const proxy = await startProxy({
      yaml: `
admin: { listen: "{{admin}}" }
routes:
  - { name: fwd, protocol: http-forward, listen: 127.0.0.1:${listen}, allow: ["127.0.0.1:*", "localhost:*", "*:*"] }
`,
    });
    cleanups.push(async () => void (await proxy.stop('SIGKILL')));
    const admin = new URL(proxy.adminUrl).port;
    const proxyUrl = `http://127.0.0.1:${listen}`;
    for (const target of [`127.0.0.1:${admin}`, `localhost:${admin}`, `127.0.0.1:${listen}`, `[::ffff:127.0.0.1]:${admin}`]) {
      expect((await curl(['--proxy', proxyUrl, `http://${target}/metrics`])).status, target).toBe(403);
      expect((await curl(['--proxy', proxyUrl, '-p', `http://${target}/metrics`])).status, `CONNECT ${target}`).toBe(403);
    }
    await proxy.logged((l) => l.msg === 'forward destination refused after resolution');
  });

  it('drops Proxy-Authorization and Proxy-Connection before the destination', async () => {
    const a = await upstreamNamed('A');
    const proxy = await forwardProxy([`127.0.0.1:${a.port}`]);
    await request(proxy.port, {
      path: `http://127.0.0.1:${a.port}/p`,
      headers: { Host: `127.0.0.1:${a.port}`, 'Proxy-Authorization': 'Basic c2VjcmV0', 'Proxy-Connection': 'keep-alive' },
    });
    expect(a.seen[0]!['proxy-authorization']).toBeUndefined();
    expect(a.seen[0]!['proxy-connection']).toBeUndefined();
  });

  it("carries undici's ProxyAgent (CONNECT) and a TLS session inside a CONNECT tunnel", async () => {
    const a = await upstreamNamed('A');
    const secure = https.createServer({ key: readFileSync(join(pki, 'server.key')), cert: readFileSync(join(pki, 'server.pem')) }, (req, res) =>
      res.end(`tls ${req.url}`),
    );
    secure.listen(0, '127.0.0.1');
    await once(secure, 'listening', 5_000);
    cleanups.push(async () => {
      secure.closeAllConnections();
      await new Promise<void>((resolve) => secure.close(() => resolve()));
    });
    const securePort = (secure.address() as net.AddressInfo).port;
    const proxy = await forwardProxy([`127.0.0.1:${a.port}`, `localhost:${securePort}`, `127.0.0.1:${securePort}`]);
    const proxyUrl = `http://127.0.0.1:${proxy.port}`;

    const dispatcher = new ProxyAgent(proxyUrl);
    cleanups.push(() => dispatcher.close());
    const viaUndici = await fetch(`http://127.0.0.1:${a.port}/undici`, { dispatcher });
    expect(viaUndici.status).toBe(200);
    expect(await viaUndici.text()).toBe('A /undici');

    const viaTunnel = await curl(['--proxy', proxyUrl, '--cacert', join(pki, 'ca.pem'), `https://localhost:${securePort}/inside`]);
    expect(viaTunnel).toEqual({ status: 200, body: 'tls /inside' });
    expect(await proxy.metric('requests_total', { route: 'web', code: '200' })).toBeGreaterThanOrEqual(2);
    expect(await proxy.metric('upstream_connects_total', { route: 'web', result: 'ok' })).toBeGreaterThanOrEqual(2);
  });

  it('keeps a CONNECT tunnel alive with TCP keepalive on both sides, and closes it after idleTimeout', async () => {
    const echo = net.createServer((socket) => socket.pipe(socket));
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening', 5_000);
    cleanups.push(() => new Promise<void>((resolve) => echo.close(() => resolve())));
    const echoPort = (echo.address() as net.AddressInfo).port;
    const proxy = await forwardProxy([`127.0.0.1:${echoPort}`], 'idleTimeout: 600ms\nkeepalive:\n  client: { idle: 7s, interval: 3s, count: 4 }\n  upstream: { idle: 11s, interval: 2s, count: 5 }');
    const socket = net.connect(proxy.port, '127.0.0.1');
    socket.on('error', () => {});
    await once(socket, 'connect', 5_000);
    socket.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
    const established = (await once<Buffer>(socket, 'data', 5_000)).toString();
    expect(established).toMatch(/^HTTP\/1\.1 200 /);
    socket.write('ping through the tunnel');
    expect((await once<Buffer>(socket, 'data', 5_000)).toString()).toBe('ping through the tunnel');
    const [row] = proxy.route.connections() as unknown as Array<Record<string, unknown>>;
    expect(row).toMatchObject({ protocol: 'connect' });
    const options = row!.socketOptions as { client: { idleSeconds: number } | null; upstream: { idleSeconds: number; count: number } | null };
    if (options.client) expect(options.client.idleSeconds).toBe(7);
    if (options.upstream) expect(options.upstream).toMatchObject({ idleSeconds: 11, count: 5 });
    const closedAt = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now())));
    const quietSince = Date.now();
    const closed = await closedAt;
    expect(closed - quietSince).toBeGreaterThanOrEqual(500);
    await until(async () => (await proxy.metric('evictions_total', { route: 'web', reason: 'idle_timeout' })) === 1, 5_000, 'idle_timeout eviction');
  });
});
