import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readTcpInfo, type TcpInfo } from '../../src/net/tcp-info.js';
import { connect, freePort, listen0, readBytes } from '../helpers/net.js';
import { parseMetrics, sample, startProxy } from '../helpers/proxy.js';
import { Prng } from '../helpers/wire/prng.js';
import { sleep, until } from '../helpers/wait.js';

// TCP_INFO read through koffi, checked against the kernel's other reader of the same struct:
// `ss -tin` for the same connection (rtt/rttvar, retrans, unacked, lastsnd/lastrcv), on
// loopback pairs with generated traffic and on both sockets of a session through the proxy.

const SS = ['/usr/bin/ss', '/bin/ss', '/usr/sbin/ss', '/sbin/ss'].find((path) => existsSync(path));

interface SsInfo {
  rttMs: number;
  rttVarMs: number;
  retransmits: number;
  totalRetrans: number;
  unacked: number;
  lastSendMs: number;
  lastRecvMs: number;
}

/**
 * The ss filter for the one connection from local port `local` to port `remote`. Both ports:
 * Linux gives one ephemeral port to connections to different destinations, so another
 * process's connection can share a client's local port (ss listed it too, on Node 26 under load).
 */
function between(local: number, remote: number): string {
  return `sport = :${local} and dport = :${remote}`;
}

/** `ss -tinH` of the one established connection the filter selects (see between()). */
function ssInfo(filter: string): SsInfo {
  const out = execFileSync(SS!, ['-tinH', 'state', 'established', filter], { encoding: 'utf8', timeout: 5_000 });
  const lines = out.split('\n').filter((line) => line.trim() !== '');
  expect(lines, `ss ${filter}:\n${out}`).toHaveLength(2); // the socket line, then its info line
  const text = lines[1]!;
  const num = (pattern: RegExp, fallback?: number): number => {
    const match = pattern.exec(text);
    if (!match) {
      if (fallback === undefined) throw new Error(`ss printed no ${pattern} in: ${text}`);
      return fallback;
    }
    return Number(match[1]);
  };
  const retrans = /\bretrans:(\d+)\/(\d+)/.exec(text);
  return {
    rttMs: num(/\brtt:([\d.]+)\//),
    rttVarMs: num(/\brtt:[\d.]+\/([\d.]+)/),
    // ss prints retrans only when the total is not 0, unacked only when not 0.
    retransmits: retrans ? Number(retrans[1]) : 0,
    totalRetrans: retrans ? Number(retrans[2]) : 0,
    unacked: num(/\bunacked:(\d+)/, 0),
    // Likewise lastsnd and lastrcv only when not 0 ms (iproute2's tcp_stats_print: `if (s->lastsnd)`).
    lastSendMs: num(/\blastsnd:(\d+)/, 0),
    lastRecvMs: num(/\blastrcv:(\d+)/, 0),
  };
}

/**
 * ss of a connection once it is quiet: the last ACKs of the traffic (delayed ACKs, a slow
 * reader under load) still move the RTT for a moment after the data is read. Quiet = two
 * reads 200 ms apart with the same rtt/rttvar (bounded: 25 tries).
 */
async function quietSsInfo(filter: string): Promise<SsInfo> {
  let last = ssInfo(filter);
  for (let i = 0; i < 25; i++) {
    await sleep(200);
    const next = ssInfo(filter);
    if (next.rttMs === last.rttMs && next.rttVarMs === last.rttVarMs && next.unacked === 0) return next;
    last = next;
  }
  throw new Error(`ss ${filter}: the connection did not go quiet: ${JSON.stringify(last)}`);
}

/** Our read-back and ss's, taken back to back on an idle connection: the same values, within a generous margin. */
function expectSameAsSs(ours: TcpInfo | null, ss: SsInfo, what: string): void {
  expect(ours, `${what}: TCP_INFO read`).not.toBeNull();
  const info = ours!;
  const close = (a: number, b: number, absolute: number): boolean => Math.abs(a - b) <= absolute + 0.2 * Math.max(a, b);
  expect(close(info.rttUs / 1000, ss.rttMs, 0.002), `${what}: rtt ${info.rttUs} us vs ss ${ss.rttMs} ms`).toBe(true);
  expect(close(info.rttVarUs / 1000, ss.rttVarMs, 0.002), `${what}: rttvar ${info.rttVarUs} us vs ss ${ss.rttVarMs} ms`).toBe(true);
  expect(info.retransmits, `${what}: retransmits`).toBe(ss.retransmits);
  expect(info.totalRetrans, `${what}: total retransmissions`).toBe(ss.totalRetrans);
  expect(info.unacked, `${what}: unacked`).toBe(ss.unacked);
  // Read some milliseconds apart: ss's idle times are at least ours, and not by much.
  expect(ss.lastSendMs - info.lastDataSentMs, `${what}: lastsnd ${ss.lastSendMs} vs ${info.lastDataSentMs}`).toBeGreaterThanOrEqual(-5);
  expect(ss.lastSendMs - info.lastDataSentMs, `${what}: lastsnd`).toBeLessThan(2_000);
  expect(ss.lastRecvMs - info.lastDataRecvMs, `${what}: lastrcv ${ss.lastRecvMs} vs ${info.lastDataRecvMs}`).toBeGreaterThanOrEqual(-5);
  expect(ss.lastRecvMs - info.lastDataRecvMs, `${what}: lastrcv`).toBeLessThan(2_000);
}

describe.runIf(process.platform === 'linux' && SS !== undefined)('TCP_INFO read-back against ss -ti', () => {
  let echo: Awaited<ReturnType<typeof listen0>>;

  beforeAll(async () => {
    echo = await listen0((socket) => socket.pipe(socket));
  });
  afterAll(async () => {
    await echo?.close();
  });

  it('matches ss on loopback connections after generated traffic', async () => {
    const random = new Prng(0x7c9);
    const clients: net.Socket[] = [];
    try {
      for (let i = 0; i < 8; i++) {
        const client = await connect(echo.port);
        client.on('error', () => {});
        clients.push(client);
        const roundTrips = random.int(1, 20);
        for (let r = 0; r < roundTrips; r++) {
          const size = random.int(1, 100_000);
          client.write(Buffer.alloc(size, r));
          await readBytes(client, size);
        }
      }
      for (const client of clients) {
        await quietSsInfo(between(client.localPort!, echo.port));
        const ours = readTcpInfo(client);
        expectSameAsSs(ours, ssInfo(between(client.localPort!, echo.port)), `client :${client.localPort}`);
        expect(ours!.rttUs, 'an RTT was measured').toBeGreaterThan(0);
      }
    } finally {
      for (const client of clients) client.destroy();
    }
  });

  it('is null for a socket that is closed', async () => {
    const client = await connect(echo.port);
    client.destroy();
    expect(readTcpInfo(client)).toBeNull();
  });

  it('shows both sockets of a session in /connections as ss sees them, and samples the upstream RTT', async () => {
    const port = await freePort();
    const proxy = await startProxy({
      yaml: ['admin: { listen: "{{admin}}" }', 'routes:', '  - name: t', `    listen: 127.0.0.1:${port}`, `    upstream: 127.0.0.1:${echo.port}`, ''].join('\n'),
    });
    const client = await connect(port);
    client.on('error', () => {});
    try {
      for (let i = 0; i < 5; i++) {
        client.write(Buffer.alloc(20_000, i));
        await readBytes(client, 20_000);
      }
      await quietSsInfo(`dport = :${echo.port}`);
      await quietSsInfo(between(port, client.localPort!));
      const row = (await proxy.connections()).find((c) => c['route'] === 't') as { tcpInfo?: { client: TcpInfo | null; upstream: TcpInfo | null } } | undefined;
      expect(row?.tcpInfo, '/connections shows TCP_INFO').toBeDefined();
      // The proxy's socket to the echo server is the only established one with that destination port.
      expectSameAsSs(row!.tcpInfo!.upstream, ssInfo(`dport = :${echo.port}`), 'upstream');
      expectSameAsSs(row!.tcpInfo!.client, ssInfo(between(port, client.localPort!)), 'client');
      await until(
        async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_upstream_rtt_seconds_count', { route: 't' }) >= 1,
        10_000,
        'an upstream RTT sample',
        200,
      );
      expect(sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_upstream_half_open_total', { route: 't' })).toBe(0);
    } finally {
      client.destroy();
      await proxy.stop();
    }
  });
});
