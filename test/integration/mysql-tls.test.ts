import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import mysql from 'mysql2/promise';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { delayingRelay, freePort } from '../helpers/net.js';
import { makePki, type Pki } from '../helpers/pki.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { MARIADB_USER, startMariadb, type RunningServer } from '../helpers/servers.js';
import { until } from '../helpers/wait.js';
import { warmVsCold } from '../helpers/warm-vs-cold.js';

// TLS to MySQL / MariaDB (issue 10): TLS is negotiated inside the MySQL handshake. A
// plaintext client on loopback reaches a MariaDB with require_secure_transport=ON through
// the proxy, which sends the SSL request (made from the client's own response), handshakes
// and shifts sequence ids through authentication; with clientTls it terminates the
// client's TLS too. Real server, real clients (mysql2, the mariadb CLI).

const run = promisify(execFile);
const MARIADB_CLI = '/usr/bin/mariadb';

let pki: Pki;
let maria: RunningServer;
const cleanups: Array<() => Promise<unknown> | unknown> = [];

beforeAll(async () => {
  pki = makePki();
  maria = await startMariadb({ tlsOnly: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca } });
  const admin = await direct({});
  try {
    await admin.query("CREATE USER 'pw'@'127.0.0.1' IDENTIFIED BY 'secret'");
    await admin.query("GRANT ALL PRIVILEGES ON *.* TO 'pw'@'127.0.0.1'");
    // A user whose plugin differs from the greeting's (mysql_native_password): an auth switch.
    await admin.query("INSTALL SONAME 'auth_ed25519'");
    await admin.query("CREATE USER 'ed'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('edpass')");
    await admin.query("GRANT ALL PRIVILEGES ON *.* TO 'ed'@'127.0.0.1'");
  } finally {
    await admin.end();
  }
}, 120_000);
afterAll(async () => {
  await maria?.stop();
  pki?.cleanup();
});
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A mysql2 connection straight to the server, over TLS (the server requires it). */
function direct(options: mysql.ConnectionOptions): Promise<mysql.Connection> {
  return mysql.createConnection({ host: '127.0.0.1', port: maria.port, user: MARIADB_USER, ssl: { ca: readFileSync(pki.ca) }, connectTimeout: 5_000, ...options });
}

/** A plaintext mysql2 connection through the proxy. */
function proxied(port: number, options: mysql.ConnectionOptions = {}): Promise<mysql.Connection> {
  return mysql.createConnection({ host: '127.0.0.1', port, user: MARIADB_USER, connectTimeout: 5_000, ...options });
}

async function proxyWith(route: string): Promise<{ proxy: RunningProxy; port: number }> {
  const port = await freePort();
  const proxy = await startProxy({
    yaml: `
admin: { listen: "{{admin}}" }
routes:
  - listen: 127.0.0.1:${port}
${route.replace(/^/gm, '    ')}
`,
  });
  cleanups.push(() => proxy.stop('SIGKILL'));
  return { proxy, port };
}

function mysqlRoute(extra = '', upstreamPort = maria.port): string {
  return `name: my
protocol: mysql
upstream: 127.0.0.1:${upstreamPort}
upstreamTls: { mode: verify-full, ca: ${pki.ca} }
${extra}`;
}

async function metric(proxy: RunningProxy, name: string, labels: Record<string, string>): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), `keepalive_proxy_${name}`, labels);
}

async function sslCipher(connection: mysql.Connection): Promise<string> {
  const [rows] = await connection.query("SHOW STATUS LIKE 'Ssl_cipher'");
  return String((rows as Array<{ Value: string }>)[0]?.Value ?? '');
}

async function failure(connect: Promise<mysql.Connection>): Promise<{ errno: unknown; message: string }> {
  try {
    const connection = await connect;
    await connection.end();
  } catch (error) {
    const { errno, message } = error as { errno?: unknown; message: string };
    return { errno, message };
  }
  throw new Error('the connection succeeded');
}

describe('mysql: plaintext client, TLS-only MariaDB', () => {
  it('the server refuses a plaintext client itself (the fixture is what it claims)', async () => {
    // MariaDB answers require_secure_transport with "Access denied"; the same user over TLS is let in.
    const refused = await failure(mysql.createConnection({ host: '127.0.0.1', port: maria.port, user: MARIADB_USER, connectTimeout: 5_000 }));
    expect(refused.errno).toBe(1045);
    const overTls = await direct({});
    expect(await sslCipher(overTls)).not.toBe('');
    await overTls.end();
  });

  it('mysql2 reaches it in plaintext; Ssl_cipher is set; queries work; heartbeats are answered', async () => {
    const { proxy, port } = await proxyWith(mysqlRoute('heartbeat: { every: 500ms, timeout: 3s }'));
    const connection = await proxied(port);
    cleanups.push(() => connection.end().catch(() => {}));
    expect(await sslCipher(connection)).not.toBe('');
    const [rows] = await connection.query('SELECT 41 + 1 AS n');
    expect(rows).toEqual([{ n: 42 }]);
    await until(async () => (await metric(proxy, 'heartbeats_total', { route: 'my', result: 'ok' })) >= 3, 15_000, 'answered heartbeats');
    const [after] = await connection.query('SELECT 7 AS n');
    expect(after).toEqual([{ n: 7 }]);
    expect(await metric(proxy, 'heartbeats_total', { route: 'my', result: 'unsupported' })).toBe(0);
    expect(await metric(proxy, 'tls_handshakes_total', { route: 'my', side: 'upstream' })).toBeGreaterThanOrEqual(1);
    const row = (await proxy.connections()).find((c) => c['route'] === 'my') as { tls: { client: unknown; upstream: { version: string } } };
    expect(row.tls.client).toBeNull();
    expect(row.tls.upstream.version).toMatch(/^TLSv1\.[23]$/);
  }, 60_000);

  it('the session runs with the client’s own flags, charset and database (the SSL request is made from its response)', async () => {
    const { port } = await proxyWith(mysqlRoute());
    // Generated client settings, each compared with the same client connected directly.
    const variants: mysql.ConnectionOptions[] = [
      {},
      { database: 'test' },
      { charset: 'latin1_swedish_ci', multipleStatements: true },
      { charset: 'utf8mb4_unicode_ci', flags: ['-FOUND_ROWS'] },
      { charset: 'binary', flags: ['FOUND_ROWS', 'INTERACTIVE'], database: 'mysql' },
      { flags: ['-MULTI_RESULTS', '-PS_MULTI_RESULTS'], multipleStatements: false },
    ];
    const probe =
      'SELECT DATABASE() AS db, @@character_set_client AS cs, @@collation_connection AS coll, @@wait_timeout = @@interactive_timeout AS interactive, ' +
      "(SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_VERSION') <> '' AS tls";
    for (const options of variants) {
      const seen: unknown[] = [];
      for (const open of [() => direct(options), () => proxied(port, options)]) {
        const connection = await open();
        try {
          const [rows] = await connection.query(probe);
          // Multi-statements follow the client's flag: allowed only where it asked.
          const multi = await connection.query('SELECT 1; SELECT 2').then(() => 'allowed', (error: { errno?: number }) => `refused ${error.errno}`);
          // FOUND_ROWS: an UPDATE that matches a row without changing it reports 1 or 0.
          await connection.query('CREATE TEMPORARY TABLE test.t (a INT)');
          await connection.query('INSERT INTO test.t VALUES (1)');
          const [update] = await connection.query('UPDATE test.t SET a = 1');
          seen.push({ rows, multi, affected: (update as { affectedRows: number }).affectedRows });
        } finally {
          await connection.end();
        }
      }
      expect(seen[1], JSON.stringify(options)).toEqual(seen[0]);
    }
  }, 60_000);

  it('a wrong password fails exactly as direct (same error number and message)', async () => {
    const { port } = await proxyWith(mysqlRoute());
    const viaProxy = await failure(proxied(port, { user: 'pw', password: 'wrong' }));
    const straight = await failure(direct({ user: 'pw', password: 'wrong' }));
    expect(viaProxy).toEqual(straight);
    expect(viaProxy.errno).toBe(1045);
    const right = await proxied(port, { user: 'pw', password: 'secret' });
    expect(await sslCipher(right)).not.toBe('');
    await right.end();
  }, 30_000);

  it('the mariadb CLI in plaintext; an auth switch to ed25519 succeeds, and fails with a wrong password exactly as direct', async () => {
    const { port } = await proxyWith(mysqlRoute());
    const cli = (p: number, ...args: string[]) => run(MARIADB_CLI, ['--protocol=TCP', '-h', '127.0.0.1', '-P', String(p), '-N', '-B', ...args], { timeout: 10_000 });
    const plain = await cli(port, '--skip-ssl', '-u', MARIADB_USER, '-e', "SHOW STATUS LIKE 'Ssl_cipher'");
    expect(plain.stdout.trim()).toMatch(/^Ssl_cipher\t\S+/);
    const switched = await cli(port, '--skip-ssl', '-u', 'ed', '-pedpass', '-e', "SELECT CURRENT_USER(), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER')");
    expect(switched.stdout.trim()).toMatch(/^ed@127\.0\.0\.1\t\S+/);
    const error = (p: number, ...tls: string[]) => cli(p, ...tls, '-u', 'ed', '-pnope', '-e', 'SELECT 1').then(() => 'succeeded', (e: { stderr: string }) => e.stderr.trim());
    const viaProxy = await error(port, '--skip-ssl');
    expect(viaProxy).toMatch(/ERROR 1045/);
    expect(viaProxy).toBe(await error(maria.port, '--ssl'));
  }, 60_000);

  it('a server without TLS is refused: tls_error, never a silent plaintext session', async () => {
    const plain = await startMariadb();
    cleanups.push(() => plain.stop());
    const { proxy, port } = await proxyWith(mysqlRoute('', plain.port));
    await failure(proxied(port));
    await until(async () => (await metric(proxy, 'evictions_total', { route: 'my', reason: 'tls_error' })) >= 1, 5_000, 'tls_error');
    await proxy.logged((line) => line['reason'] === 'tls_error' && /CLIENT_SSL/.test(String(line['err'])));
  }, 90_000);
});

describe('mysql: clientTls and warm pools', () => {
  it('a TLS client: the proxy terminates its TLS and passes its SSL request on; heartbeats still answered', async () => {
    const { proxy, port } = await proxyWith(
      mysqlRoute(`clientTls: { cert: ${pki.server.cert}, key: ${pki.server.key} }
heartbeat: { every: 500ms, timeout: 3s }`),
    );
    const connection = await mysql.createConnection({ host: 'localhost', port, user: 'pw', password: 'secret', ssl: { ca: readFileSync(pki.ca) }, connectTimeout: 5_000 });
    cleanups.push(() => connection.end().catch(() => {}));
    expect(await sslCipher(connection)).not.toBe('');
    await until(async () => (await metric(proxy, 'heartbeats_total', { route: 'my', result: 'ok' })) >= 2, 15_000, 'answered heartbeats');
    expect(await metric(proxy, 'tls_handshakes_total', { route: 'my', side: 'client' })).toBe(1);
    const row = (await proxy.connections()).find((c) => c['route'] === 'my') as { tls: { client: { version: string } } };
    expect(row.tls.client.version).toMatch(/^TLSv1\.[23]$/);
    // A plaintext client of the same route still gets the TLS upstream.
    const plain = await proxied(port);
    expect(await sslCipher(plain)).not.toBe('');
    await plain.end();
    // The CLI with TLS verified against the proxy's certificate.
    const cli = await run(MARIADB_CLI, ['--protocol=TCP', '-h', 'localhost', '-P', String(port), '--ssl', `--ssl-ca=${pki.ca}`, '--ssl-verify-server-cert', '-u', 'ed', '-pedpass', '-N', '-B', '-e', 'SELECT 5'], { timeout: 10_000 });
    expect(cli.stdout.trim()).toBe('5');
  }, 60_000);

  it('a warm spare holds the greeting; the hand-off saves the TCP round trip and the greeting', async () => {
    // 20 ms each way on the path, as to a database in another zone.
    const relay = await delayingRelay(maria.port, 20, 20);
    cleanups.push(() => relay.close());
    const route = (warm: number): string => mysqlRoute(`pool: { warm: ${warm} }`, relay.port);
    const timed = async (port: number): Promise<number> => {
      const started = performance.now();
      const connection = await proxied(port);
      const [rows] = await connection.query('SELECT 1 AS one');
      expect(rows).toEqual([{ one: 1 }]);
      const elapsed = performance.now() - started;
      await connection.end();
      return elapsed;
    };
    const cold = await proxyWith(route(0));
    const warm = await proxyWith(route(2));
    await until(async () => (await metric(warm.proxy, 'pool_idle', { route: 'my' })) === 2, 10_000, 'two spares');
    const { coldMs, warmMs } = await warmVsCold({
      rounds: 5,
      timed,
      coldPort: cold.port,
      warmPort: warm.port,
      refilled: async () => (await metric(warm.proxy, 'pool_idle', { route: 'my' })) === 2,
    });
    console.log(`first query through a 20 ms-per-direction path, median of 5: cold (TCP + greeting + TLS + auth + query) ${coldMs.toFixed(1)} ms, warm spare ${warmMs.toFixed(1)} ms`);
    expect(await metric(warm.proxy, 'reuse_total', { route: 'my' })).toBe(5);
    // No timing assertion: for mysql the spare saves only the greeting's one-way delay (the TLS
    // handshake waits for the client's response), ~10 % of the total, within the noise of a
    // loaded machine; the figure is printed above and the reuse is asserted.
  }, 90_000);
});
