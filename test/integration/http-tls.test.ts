import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type tls from 'node:tls';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { httpRouteConfig, rawRequest, request, startRoute, type RunningRoute } from '../helpers/http.js';
import { once } from '../helpers/wait.js';

// https upstreams: a plain-HTTP legacy client gets pooled TLS to its upstream. The CA,
// server and client certificates are made here, at test time, with openssl.

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

let pki: string;

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: pki, stdio: 'pipe' });
}

beforeAll(() => {
  pki = mkdtempSync(join(tmpdir(), 'kp-pki-'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=keepalive-proxy test CA');
  writeFileSync(join(pki, 'server.ext'), 'subjectAltName=DNS:localhost,DNS:api.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  openssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext');
  writeFileSync(join(pki, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  openssl('req', ...ec, '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=legacy-app');
  openssl('x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client.pem', '-days', '2', '-extfile', 'client.ext');
});

interface TlsUpstream {
  readonly port: number;
  readonly handshakes: Array<{ servername: string | false | null; resumed: boolean; peer: string | string[] | undefined }>;
}

async function tlsUpstream(options: https.ServerOptions = {}): Promise<TlsUpstream> {
  const handshakes: TlsUpstream['handshakes'] = [];
  const server = https.createServer(
    { key: readFileSync(join(pki, 'server.key')), cert: readFileSync(join(pki, 'server.pem')), keepAliveTimeout: 60_000, ...options },
    (req, res) => {
      req.resume();
      req.on('end', () => res.end(`secure ${req.url}`));
    },
  );
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    const peer = socket.getPeerCertificate();
    handshakes.push({ servername: socket.servername, resumed: socket.isSessionReused(), peer: peer?.subject?.CN });
  });
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening', 5_000);
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port: (server.address() as net.AddressInfo).port, handshakes };
}

async function routeTo(url: string, extra: string): Promise<RunningRoute> {
  const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: ${url}\n${extra}`, pki));
  cleanups.push(() => route.close());
  return route;
}

describe('https upstreams', () => {
  it('gives a plain-HTTP legacy client pooled TLS: handshakes only pool-size many, SNI set', async () => {
    const upstream = await tlsUpstream();
    const route = await routeTo(`https://localhost:${upstream.port}`, 'pool: { maxSockets: 2 }\ntls: { ca: ca.pem }');
    for (let start = 0; start < 30; start += 6) {
      const responses = await Promise.all(
        Array.from({ length: 6 }, (_, i) => rawRequest(route.port, `GET /s${start + i} HTTP/1.0\r\n\r\n`)),
      );
      responses.forEach((response, i) => expect(response.body.toString()).toBe(`secure /s${start + i}`));
    }
    expect(upstream.handshakes.length).toBeLessThanOrEqual(2);
    expect(upstream.handshakes.every((h) => h.servername === 'localhost')).toBe(true);
    const full = await route.metric('tls_handshakes_total', { route: 'web', resumed: 'false' });
    const resumed = await route.metric('tls_handshakes_total', { route: 'web', resumed: 'true' });
    expect(full + resumed).toBe(upstream.handshakes.length);
    expect(await route.metric('reuse_total', { route: 'web' })).toBeGreaterThanOrEqual(28);
  });

  it('resumes TLS sessions when the pool opens new connections', async () => {
    const upstream = await tlsUpstream();
    // maxRequests 1: every request on a new connection, each after the previous one's ticket.
    const route = await routeTo(`https://localhost:${upstream.port}`, 'pool: { maxSockets: 1, maxRequests: 1 }\ntls: { ca: ca.pem }');
    for (let i = 0; i < 5; i++) expect((await request(route.port, { path: `/r${i}` })).status).toBe(200);
    expect(upstream.handshakes.length).toBe(5);
    expect(upstream.handshakes[0]!.resumed).toBe(false);
    expect(upstream.handshakes.slice(1).filter((h) => h.resumed).length).toBeGreaterThanOrEqual(3);
    expect(await route.metric('tls_handshakes_total', { route: 'web', resumed: 'true' })).toBe(upstream.handshakes.filter((h) => h.resumed).length);
  });

  it('verifies the upstream certificate: 502 without the CA, through with rejectUnauthorized: false', async () => {
    const upstream = await tlsUpstream();
    const strict = await routeTo(`https://localhost:${upstream.port}`, 'pool: { maxSockets: 1 }');
    const refused = await request(strict.port, { path: '/' });
    expect(refused.status).toBe(502);
    expect(upstream.handshakes.length).toBe(0);
    const lax = await routeTo(`https://localhost:${upstream.port}`, 'tls: { rejectUnauthorized: false }');
    expect((await request(lax.port, { path: '/' })).body.toString()).toBe('secure /');
  });

  it('presents a client certificate and sends the configured SNI', async () => {
    const upstream = await tlsUpstream({ requestCert: true, rejectUnauthorized: true, ca: readFileSync(join(pki, 'ca.pem')) });
    const withCert = await routeTo(`https://127.0.0.1:${upstream.port}`, 'tls: { ca: ca.pem, cert: client.pem, key: client.key, servername: api.test }');
    expect((await request(withCert.port, { path: '/mtls' })).body.toString()).toBe('secure /mtls');
    expect(upstream.handshakes.at(-1)).toMatchObject({ servername: 'api.test', peer: 'legacy-app' });
    const withoutCert = await routeTo(`https://127.0.0.1:${upstream.port}`, 'tls: { ca: ca.pem, servername: api.test }');
    expect((await request(withoutCert.port, { path: '/mtls' })).status).toBe(502);
  });
});
