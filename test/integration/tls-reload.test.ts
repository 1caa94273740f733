import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { freePort, outcomeOf } from '../helpers/net.js';
import { makePki, type Pki } from '../helpers/pki.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startRedis, type RunningServer } from '../helpers/servers.js';
import { until } from '../helpers/wait.js';

// Certificate files are re-read on SIGHUP (issue 10): a bad file (missing, not PEM, a
// key that is not the certificate's, a CA file with garbage in it) is rejected like any
// other reload error: config_reloads_total{result="error"}, one log line naming the file
// and the problem, and new connections keep the TLS settings in force. A good new file is
// used by the next connection. The upstream is a TLS-only redis-server; the route's files
// are copies in the PKI directory, rewritten between reloads.

let pki: Pki;
let redis: RunningServer;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

beforeAll(async () => {
  pki = makePki();
  redis = await startRedis({ tlsOnly: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca } });
}, 60_000);
afterAll(async () => {
  await redis?.stop();
  pki?.cleanup();
});
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** The files the route names: a CA and a client certificate with its key. */
const routeFiles = (): { ca: string; cert: string; key: string } => ({ ca: join(pki.dir, 'route-ca.pem'), cert: join(pki.dir, 'route-client.pem'), key: join(pki.dir, 'route-client.key') });

async function proxyOnRouteFiles(routeLines = ''): Promise<{ proxy: RunningProxy; port: number; yaml: string }> {
  const files = routeFiles();
  const port = await freePort();
  const yaml = `admin: { listen: "{{admin}}" }
routes:
  - name: rd
    protocol: redis
    listen: 127.0.0.1:${port}
    upstream: 127.0.0.1:${redis.port}
    upstreamTls: { mode: verify-full, ca: ${files.ca}, cert: ${files.cert}, key: ${files.key} }
${routeLines}`;
  const proxy = await startProxy({ yaml });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return { proxy, port, yaml };
}

/** One PING through the proxy: 'PONG', or how the connection ended. */
async function ping(port: number): Promise<string> {
  // A reset (a tls_error) ends the wait at once, even one that overtakes the connect (outcomeOf).
  const { data, end } = await outcomeOf(port, '*1\r\n$4\r\nPING\r\n', { replyBytes: 7, timeoutMs: 10_000 });
  const reply = data.toString();
  return reply === '+PONG\r\n' ? 'PONG' : `no PONG (${JSON.stringify(reply)}, ${end})`;
}

async function reloads(proxy: RunningProxy, result: 'ok' | 'error'): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_config_reloads_total', { result });
}

const REJECTED = 'reload rejected: keeping the running configuration';

describe('SIGHUP re-reads certificate files', () => {
  it('a bad file of each kind is rejected with one line naming it; new connections keep the old TLS settings', async () => {
    const files = routeFiles();
    const good = (): void => {
      copyFileSync(pki.ca, files.ca);
      copyFileSync(pki.client.cert, files.cert);
      copyFileSync(pki.client.key, files.key);
    };
    good();
    const { proxy, port, yaml } = await proxyOnRouteFiles();
    expect(await ping(port)).toBe('PONG');
    const caText = readFileSync(pki.ca, 'latin1');
    const bad: Array<{ name: string; file: string; spoil: () => void; problem: RegExp }> = [
      { name: 'a missing CA file', file: files.ca, spoil: () => rmSync(files.ca), problem: /cannot read .*ENOENT|no such file/i },
      { name: 'a key file that is not PEM', file: files.key, spoil: () => writeFileSync(files.key, 'not a key at all\n'), problem: /not a PEM file/ },
      { name: 'a key that is not the certificate\'s', file: files.key, spoil: () => copyFileSync(pki.otherName.key, files.key), problem: /do not load.*key values mismatch/ },
      // The PEM armour is intact; the base64 inside is not a certificate (OpenSSL alone would skip it).
      { name: 'a CA file with garbage inside the block', file: files.ca, spoil: () => writeFileSync(files.ca, caText.replace(/\n[A-Za-z0-9+/]{20}/, '\n!!garbage-garbage!!!')), problem: /not a CA file: block 1 is not a valid certificate/ },
      { name: 'a CA file whose second block is cut off', file: files.ca, spoil: () => writeFileSync(files.ca, caText + caText.slice(0, 120)), problem: /not a CA file: block 2 .*no END line/ },
      { name: 'a CA file holding a private key', file: files.ca, spoil: () => copyFileSync(pki.client.key, files.ca), problem: /not a CA file: block 1 is a PRIVATE KEY/ },
    ];
    for (const [index, { name, file, spoil, problem }] of bad.entries()) {
      spoil();
      const linesBefore = proxy.logs.filter((line) => line['msg'] === REJECTED).length;
      await proxy.reload(yaml);
      await until(async () => (await reloads(proxy, 'error')) === index + 1, 10_000, `${name}: reload counted as an error`);
      await until(() => proxy.logs.filter((line) => line['msg'] === REJECTED).length === linesBefore + 1, 5_000, `${name}: one rejection line`);
      const line = proxy.logs.filter((entry) => entry['msg'] === REJECTED).at(-1)!;
      const errors = (line['errors'] as string[]).join('\n');
      expect(errors, name).toContain(file);
      expect(errors, name).toMatch(problem);
      expect(await ping(port), `${name}: the old settings still serve new connections`).toBe('PONG');
      good();
    }
    expect(await reloads(proxy, 'ok')).toBe(0);
  }, 120_000);

  it('a new valid CA is picked up by the next connection (from one that fails verify-full to one that passes)', async () => {
    const files = routeFiles();
    // A CA that never signed the server's certificate: verify-full fails with unknown CA.
    copyFileSync(pki.selfSigned.cert, files.ca);
    copyFileSync(pki.client.cert, files.cert);
    copyFileSync(pki.client.key, files.key);
    const { proxy, port, yaml } = await proxyOnRouteFiles();
    expect(await ping(port)).not.toBe('PONG');
    await until(() => proxy.logs.some((line) => line['reason'] === 'tls_error' && line['cause'] === 'unknown CA'), 5_000, 'unknown CA logged');
    copyFileSync(pki.ca, files.ca);
    await proxy.reload(yaml);
    await until(async () => (await reloads(proxy, 'ok')) === 1, 10_000, 'reload ok');
    expect(await ping(port)).toBe('PONG');
    // And back: the spoiled CA is a valid certificate, so the reload succeeds and verification fails again.
    copyFileSync(pki.selfSigned.cert, files.ca);
    await proxy.reload(yaml);
    await until(async () => (await reloads(proxy, 'ok')) === 2, 10_000, 'second reload ok');
    expect(await ping(port)).not.toBe('PONG');
  }, 60_000);

  // Spares are TLS sessions made under the files read at the time. A file rewritten in place
  // (same path, new content) is a changed route: its spares go, and the next client gets a
  // connection verified with the new CA. The same bytes written again change nothing.
  it('spares follow the content of a file rewritten at the same path, and survive the same bytes rewritten', async () => {
    const files = routeFiles();
    copyFileSync(pki.ca, files.ca);
    copyFileSync(pki.client.cert, files.cert);
    copyFileSync(pki.client.key, files.key);
    const { proxy, port, yaml } = await proxyOnRouteFiles('    pool: { warm: 2 }\n');
    const metrics = async (): Promise<Map<string, number>> => parseMetrics(await proxy.metrics());
    await until(async () => sample(await metrics(), 'keepalive_proxy_pool_idle', { route: 'rd' }) === 2, 10_000, 'two spares');

    copyFileSync(pki.ca, files.ca);
    await proxy.reload(yaml);
    await until(async () => (await reloads(proxy, 'ok')) === 1, 10_000, 'reload ok');
    expect(sample(await metrics(), 'keepalive_proxy_evictions_total', { route: 'rd', reason: 'reload' }), 'same bytes: spares kept').toBe(0);
    expect(await ping(port)).toBe('PONG');

    copyFileSync(pki.selfSigned.cert, files.ca);
    await proxy.reload(yaml);
    await until(async () => (await reloads(proxy, 'ok')) === 2, 10_000, 'second reload ok');
    expect(sample(await metrics(), 'keepalive_proxy_evictions_total', { route: 'rd', reason: 'reload' }), 'new CA: spares replaced').toBeGreaterThan(0);
    expect(await ping(port), 'a spare verified under the old CA must not serve').not.toBe('PONG');
  }, 60_000);
});
