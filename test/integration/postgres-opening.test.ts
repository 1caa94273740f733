import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { makePki, type Pki } from '../helpers/pki.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { startPostgres, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';
import { Prng } from '../helpers/wire/prng.js';

// The opening of a PostgreSQL connection on a route that speaks TLS upstream, attacked by
// an outsider on either side: a client that repeats SSLRequest, trickles its bytes, sends
// a length word PostgreSQL would refuse or stalls its opening; a server that answers 'S'
// and closes, or presents an expired certificate. The upstream for most cases is a small
// TLS server that answers 'S' like PostgreSQL and records every byte that reaches it
// through TLS, so a test can tell "refused by the proxy" from "passed on".

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
const GSSENC_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);

let pki: Pki;
let postgres: RunningServer;
let proxy: RunningProxy;
const upstreams: Array<{ close(): Promise<void> }> = [];
const ports: Record<string, number> = {};
/** What reached each fake upstream inside TLS, by route. */
const received: Record<string, Buffer[]> = {};

type FakeBehaviour = 'answer-s' | 's-then-close' | 'tls-at-once';

/** A TLS server on loopback: 'answer-s' and 's-then-close' read an SSLRequest first and answer 'S'. */
async function fakeUpstream(behaviour: FakeBehaviour, cert: { cert: string; key: string }, record: Buffer[]): Promise<number> {
  const context = tls.createSecureContext({ cert: readFileSync(cert.cert), key: readFileSync(cert.key) });
  const startTls = (socket: net.Socket): void => {
    const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: context });
    secure.on('error', () => {});
    secure.on('data', (chunk: Buffer) => record.push(chunk));
  };
  const server = await listen0((socket) => {
    if (behaviour === 'tls-at-once') {
      startTls(socket);
      return;
    }
    void readBytes(socket, 8).then((request) => {
      if (!request.equals(SSL_REQUEST)) return socket.destroy();
      if (behaviour === 's-then-close') return socket.end('S');
      socket.write('S');
      startTls(socket);
    }, () => socket.destroy());
  });
  upstreams.push(server);
  return server.port;
}

beforeAll(async () => {
  pki = makePki();
  postgres = await startPostgres({ tlsOnly: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca } });
  const routes: string[] = [];
  const route = async (name: string, upstreamPort: number, extra = ''): Promise<void> => {
    ports[name] = await freePort();
    routes.push(`  - { name: ${name}, protocol: postgres, listen: "127.0.0.1:${ports[name]}", upstream: "127.0.0.1:${upstreamPort}", upstreamTls: { mode: verify-full, ca: "${pki.ca}" }, connectTimeout: 1s${extra} }`);
  };
  for (const name of ['refuse', 'stall', 'tls-stall']) received[name] = [];
  await route('real', postgres.port);
  await route('refuse', await fakeUpstream('answer-s', pki.server, received['refuse']!));
  await route('stall', await fakeUpstream('answer-s', pki.server, received['stall']!));
  await route('tls-stall', await fakeUpstream('answer-s', pki.server, received['tls-stall']!), `, clientTls: { cert: "${pki.server.cert}", key: "${pki.server.key}" }`);
  await route('s-close', await fakeUpstream('s-then-close', pki.server, []));
  await route('expired', await fakeUpstream('answer-s', pki.expired, []));
  // A long connectTimeout (for a far upstream) must not give a client's opening as long.
  ports['no-timeout'] = await freePort();
  routes.push(
    `  - { name: no-timeout, protocol: redis, listen: "127.0.0.1:${ports['no-timeout']}", upstream: "127.0.0.1:${await fakeUpstream('tls-at-once', pki.server, [])}", upstreamTls: { mode: verify-full, ca: "${pki.ca}" }, clientTls: { cert: "${pki.server.cert}", key: "${pki.server.key}" }, connectTimeout: 5m }`,
  );
  proxy = await startProxy({ yaml: `admin: { listen: "{{admin}}" }\nroutes:\n${routes.join('\n')}\n` });
}, 120_000);

afterAll(async () => {
  await proxy?.stop('SIGKILL');
  for (const upstream of upstreams) await upstream.close();
  await postgres?.stop();
  pki?.cleanup();
});

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  return sample(parseMetrics(await proxy.metrics()), `keepalive_proxy_${name}`, labels);
}

/**
 * Everything the client receives until the proxy closes, and how it closed; `afterMs` counts from
 * `started` (default now). A lower bound on it counts from before the connect: the proxy's
 * deadline starts at its accept, which this process may see complete (its 'connect') later.
 */
function untilClosed(socket: net.Socket, timeoutMs: number, started = performance.now()): Promise<{ bytes: Buffer; how: string; afterMs: number }> {
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  return new Promise((resolve) => {
    const done = (how: string): void => {
      clearTimeout(timer);
      resolve({ bytes: Buffer.concat(chunks), how, afterMs: performance.now() - started });
    };
    const timer = setTimeout(() => done('still open'), timeoutMs);
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code ?? 'error'));
    socket.once('end', () => done('FIN'));
  });
}

/** A startup message for user postgres, database postgres, protocol 3.0. */
function startupMessage(): Buffer {
  const body = Buffer.from('\0\x03\0\0user\0postgres\0database\0postgres\0\0', 'latin1');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length + 4);
  return Buffer.concat([length, body]);
}

/** Reads server messages until ReadyForQuery ('Z'), bounded; returns their type bytes. */
function readUntilReady(socket: net.Socket): Promise<string> {
  let held = Buffer.alloc(0);
  let types = '';
  return new Promise((resolve, reject) => {
    const finish = (error: Error | null): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      if (error) reject(error);
      else resolve(types);
    };
    const timer = setTimeout(() => finish(new Error(`no ReadyForQuery in 10 s (got ${types})`)), 10_000);
    const onData = (chunk: Buffer): void => {
      held = Buffer.concat([held, chunk]);
      while (held.length >= 5 && held.length >= 1 + held.readUInt32BE(1)) {
        const type = String.fromCharCode(held[0]!);
        types += type;
        held = held.subarray(1 + held.readUInt32BE(1));
        if (type === 'Z') return finish(null);
      }
    };
    socket.on('data', onData);
  });
}

describe('postgres opening: a client that breaks the rules is refused before anything reaches the server', () => {
  it('SSLRequest and GSSENCRequest are answered once each; a repeat (in any generated order) is refused', async () => {
    const prng = new Prng(7);
    const before = await metric('evictions_total', { route: 'refuse', reason: 'error' });
    for (let round = 0; round < 12; round++) {
      // One of each, in either order, then a repeat of one of them, all in one write or one per write.
      const first = prng.chance(0.5) ? [SSL_REQUEST, GSSENC_REQUEST] : [GSSENC_REQUEST, SSL_REQUEST];
      const sequence = [...first, prng.chance(0.5) ? SSL_REQUEST : GSSENC_REQUEST, ...Array.from({ length: prng.int(0, 49) }, () => SSL_REQUEST)];
      const socket = await connect(ports['refuse']!);
      const closed = untilClosed(socket, 5_000);
      if (round % 2 === 0) socket.write(Buffer.concat(sequence));
      else for (const request of sequence) socket.write(request);
      const { bytes, how } = await closed;
      // One N per first request, never more; a reset may overtake the last of them.
      expect('NN'.startsWith(bytes.toString('latin1')), `round ${round}: ${bytes.toString('latin1')}`).toBe(true);
      // Reset, or a FIN when our answer was still being written (PostgreSQL itself closes with a FIN).
      expect(['ECONNRESET', 'FIN'], `round ${round}`).toContain(how);
      socket.destroy();
    }
    await until(async () => (await metric('evictions_total', { route: 'refuse', reason: 'error' })) >= before + 12, 5_000, 'twelve refusals counted');
    await until(() => proxy.logs.some((line) => line['msg'] === 'client opening refused; closing client' && String(line['err']).includes('a second')), 5_000, 'the log says why');
    expect(Buffer.concat(received['refuse']!).length, 'nothing reached the server').toBe(0);
  }, 60_000);

  it('a length word PostgreSQL refuses (generated: under 8, over 10000, a TLS ClientHello) is refused, after SSLRequest or not', async () => {
    const prng = new Prng(11);
    const lengths = [0, 1, 4, 7, 10_001, 65_536, 0x7fffffff, 0xffffffff, ...Array.from({ length: 8 }, () => 10_001 + prng.int(0, 2 ** 30))];
    for (const [index, length] of lengths.entries()) {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(length >>> 0);
      const garbage = Buffer.from(Array.from({ length: 64 + prng.int(0, 3_999) }, () => prng.int(0, 255)));
      const afterSslRequest = index % 2 === 1;
      const socket = await connect(ports['refuse']!);
      const closed = untilClosed(socket, 5_000);
      socket.write(Buffer.concat([afterSslRequest ? SSL_REQUEST : Buffer.alloc(0), head, garbage]));
      const { bytes, how } = await closed;
      expect((afterSslRequest ? 'N' : '').startsWith(bytes.toString('latin1')), `length ${length}`).toBe(true);
      expect(['ECONNRESET', 'FIN'], `length ${length}`).toContain(how);
      socket.destroy();
    }
    // A TLS ClientHello sent without SSLRequest (sslnegotiation=direct) is one of them.
    const direct = tls.connect({ host: '127.0.0.1', port: ports['refuse']!, servername: 'localhost', rejectUnauthorized: false });
    const helloRefused = await new Promise<string>((resolve) => {
      const timer = setTimeout(() => resolve('still open'), 5_000);
      direct.once('error', (error: NodeJS.ErrnoException) => (clearTimeout(timer), resolve(error.code ?? 'error')));
      direct.once('secureConnect', () => (clearTimeout(timer), resolve('handshake completed')));
    });
    direct.destroy();
    expect(helloRefused).toBe('ECONNRESET');
    await until(() => proxy.logs.some((line) => String(line['err']).includes('invalid startup packet length')), 5_000, 'the log says why');
    await sleep(200);
    expect(Buffer.concat(received['refuse']!).length, 'nothing reached the server').toBe(0);
  }, 60_000);

  it('an SSLRequest and a startup message trickled one byte at a time still open a real session', async () => {
    const socket = await connect(ports['real']!);
    const answer = readBytes(socket, 1);
    for (const byte of SSL_REQUEST) {
      socket.write(Buffer.from([byte]));
      await sleep(15);
    }
    expect((await answer).toString()).toBe('N');
    const ready = readUntilReady(socket);
    for (const byte of startupMessage()) {
      socket.write(Buffer.from([byte]));
      await sleep(5);
    }
    const types = await ready;
    expect(types.startsWith('R')).toBe(true);
    socket.destroy();
  }, 30_000);
});

describe('postgres opening: one deadline for the whole opening', () => {
  it('a client that sends nothing, or stops inside its first 8 bytes, is closed at connectTimeout (1 s), not after a minute', async () => {
    const before = await metric('evictions_total', { route: 'stall', reason: 'error' });
    for (const sent of [Buffer.alloc(0), SSL_REQUEST.subarray(0, 5), startupMessage().subarray(0, 3)]) {
      const connecting = performance.now();
      const socket = await connect(ports['stall']!);
      const closed = untilClosed(socket, 10_000, connecting);
      socket.write(sent);
      const { how, afterMs } = await closed;
      expect(how, `after ${sent.length} bytes`).toBe('ECONNRESET');
      expect(afterMs).toBeGreaterThanOrEqual(900);
      expect(afterMs).toBeLessThan(6_000);
      socket.destroy();
    }
    // Trickling bytes never extends the deadline: an SSLRequest at one byte every 300 ms.
    const socket = await connect(ports['stall']!);
    const closed = untilClosed(socket, 10_000);
    for (let i = 0; i < SSL_REQUEST.length - 1 && !socket.destroyed; i++) {
      socket.write(SSL_REQUEST.subarray(i, i + 1));
      await sleep(300);
    }
    expect((await closed).afterMs).toBeLessThan(2_000);
    await until(async () => (await metric('evictions_total', { route: 'stall', reason: 'error' })) >= before + 4, 5_000, 'four refusals counted');
    await until(() => proxy.logs.some((line) => String(line['err']).includes('no complete opening within 1000 ms')), 5_000, 'the log says why');
  }, 60_000);

  it('a client TLS handshake that stalls after our S is closed with tls_error, cause handshake timeout', async () => {
    const before = await metric('evictions_total', { route: 'tls-stall', reason: 'tls_error' });
    const socket = await connect(ports['tls-stall']!);
    const closed = untilClosed(socket, 10_000);
    socket.write(SSL_REQUEST);
    const { bytes, how, afterMs } = await closed;
    expect(bytes.toString('latin1')).toBe('S');
    expect(how).toBe('ECONNRESET');
    expect(afterMs).toBeLessThan(6_000);
    await until(async () => (await metric('evictions_total', { route: 'tls-stall', reason: 'tls_error' })) >= before + 1, 5_000, 'tls_error');
    await until(() => proxy.logs.some((line) => line['reason'] === 'tls_error' && line['cause'] === 'handshake timeout'), 5_000, 'the log names the cause');
  }, 30_000);

  it('with connectTimeout 5m a stalled client TLS handshake is still closed within 15 s', async () => {
    const connecting = performance.now();
    const socket = await connect(ports['no-timeout']!);
    const { how, afterMs } = await untilClosed(socket, 25_000, connecting);
    expect(how).toBe('ECONNRESET');
    expect(afterMs).toBeGreaterThanOrEqual(14_000);
    expect(afterMs).toBeLessThan(20_000);
    socket.destroy();
  }, 40_000);
});

describe('postgres opening: a server that misbehaves', () => {
  it('a server that answers S and closes: the client is reset, tls_error, and the proxy lives on', async () => {
    const before = await metric('evictions_total', { route: 's-close', reason: 'tls_error' });
    for (let i = 0; i < 5; i++) {
      const socket = await connect(ports['s-close']!);
      const closed = untilClosed(socket, 10_000);
      socket.write(startupMessage());
      const { bytes, how } = await closed;
      expect(bytes.length).toBe(0);
      expect(how).toBe('ECONNRESET');
      socket.destroy();
    }
    await until(async () => (await metric('evictions_total', { route: 's-close', reason: 'tls_error' })) >= before + 5, 5_000, 'five tls_error');
    // Still serving: a real session on another route.
    const socket = await connect(ports['real']!);
    const ready = readUntilReady(socket);
    socket.write(startupMessage());
    expect(await ready).toMatch(/^R/);
    socket.destroy();
  }, 60_000);

  it('a server certificate that has expired fails verify-full with tls_error, cause "expired"', async () => {
    const socket = await connect(ports['expired']!);
    const closed = untilClosed(socket, 10_000);
    socket.write(startupMessage());
    expect((await closed).how).toBe('ECONNRESET');
    await until(async () => (await metric('evictions_total', { route: 'expired', reason: 'tls_error' })) >= 1, 5_000, 'tls_error');
    await until(() => proxy.logs.some((line) => line['route'] === 'expired' && line['reason'] === 'tls_error' && line['cause'] === 'expired'), 5_000, 'the log names the cause');
  }, 30_000);
});
