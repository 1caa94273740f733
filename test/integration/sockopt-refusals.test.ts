import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Clock } from '../../src/clock.js';
import { Metrics } from '../../src/metrics/registry.js';
import { SockoptRefusals } from '../../src/net/sockopt-refusals.js';
import { sockoptSupport } from '../../src/net/sockopt.js';
import { once } from '../helpers/wait.js';

// A socket option the kernel refuses is counted and logged, never ignored. The refusal is
// real: a Unix-domain stream socket takes SO_KEEPALIVE but refuses every IPPROTO_TCP option
// (EOPNOTSUPP), so TCP_KEEPIDLE fails in the kernel, not in a mock.

const KEEPALIVE = { idleMs: 30_000, intervalMs: 5_000, count: 3 };

let dir: string;
let server: net.Server;
let path: string;
const sockets: net.Socket[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kp-sockopt-'));
  path = join(dir, 's');
  server = net.createServer((socket) => sockets.push(socket));
  server.listen(path);
  await once(server, 'listening', 5_000);
});

afterAll(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

async function unixSocket(): Promise<net.Socket> {
  const socket = net.connect(path);
  sockets.push(socket);
  await once(socket, 'connect', 5_000);
  return socket;
}

function capture(): { log: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

async function count(metrics: Metrics, route: string, option: string): Promise<number> {
  const metric = await metrics.sockoptErrors.get();
  return metric.values.find((v) => v.labels.route === route && v.labels.option === option)?.value ?? 0;
}

describe.runIf(process.platform === 'linux' && sockoptSupport.native)('a refused socket option', () => {
  it('is counted per socket and logged once per burst, with the option, the side and the errno', async () => {
    const metrics = new Metrics(false);
    const { log, lines } = capture();
    const refusals = new SockoptRefusals('db', { metrics, log, clock: new Clock(250) });
    const SOCKETS = 40;
    // Connected first, refused after in one synchronous run: the burst is one burst however slow
    // the connects are (a real clock tick between two refusals a second apart would summarize early).
    const unix: net.Socket[] = [];
    for (let i = 0; i < SOCKETS; i++) unix.push(await unixSocket());
    for (const [i, socket] of unix.entries()) {
      // A user timeout keeps every Node line on the setsockopt path (Node 24.22+ would use setKeepAlive without it).
      expect(refusals.keepalive(socket, i % 2 ? 'client' : 'upstream', KEEPALIVE, 10_000)).toBe(false);
    }
    expect(await count(metrics, 'db', 'TCP_KEEPIDLE')).toBe(SOCKETS);
    refusals.flush();
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines.length, JSON.stringify(lines)).toBe(2); // the first at once, the rest in one summary
    expect(lines[0]).toMatchObject({ level: 40, route: 'db', side: 'upstream', option: 'TCP_KEEPIDLE', err: 'setsockopt(TCP_KEEPIDLE): EOPNOTSUPP' });
    expect(lines[1]).toMatchObject({ alsoInLastInterval: SOCKETS - 1, options: { TCP_KEEPIDLE: SOCKETS - 1 } });
  });

  it('counts a socket closed before its options were set as no_fd, and a TCP socket not at all', async () => {
    const metrics = new Metrics(false);
    const { log } = capture();
    const refusals = new SockoptRefusals('web', { metrics, log, clock: new Clock(250) });
    const closed = await unixSocket();
    closed.destroy();
    expect(refusals.keepalive(closed, 'client', KEEPALIVE, 0)).toBe(false);
    expect(await count(metrics, 'web', 'no_fd')).toBe(1);

    const tcpServer = net.createServer((socket) => sockets.push(socket)).listen(0, '127.0.0.1');
    await once(tcpServer, 'listening', 5_000);
    const tcp = net.connect((tcpServer.address() as net.AddressInfo).port, '127.0.0.1');
    sockets.push(tcp);
    await once(tcp, 'connect', 5_000);
    expect(refusals.keepalive(tcp, 'upstream', KEEPALIVE, 10_000)).toBe(true);
    expect((await metrics.sockoptErrors.get()).values.filter((v) => v.labels.route === 'web').map((v) => v.labels.option)).toEqual(['no_fd']);
    tcp.destroy();
    await new Promise((resolve) => tcpServer.close(resolve));
  });
});
