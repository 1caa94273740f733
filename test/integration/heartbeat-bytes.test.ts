import { execFile } from 'node:child_process';
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../helpers/net.js';
import { startProxy, type RunningProxy } from '../helpers/proxy.js';
import { recordingRelay, type RecordingRelay, type WireChunk } from '../helpers/recording-relay.js';
import { MARIADB_USER, startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep, until } from '../helpers/wait.js';

// A measurement, not a check: what application heartbeats cost on the wire per idle
// connection per hour, for each protocol, from a real exchange. A real client idles through
// the proxy; a recording relay between the proxy and the server sees every probe and every
// reply (their exact sizes), and the kernel's own counters for the proxy's upstream socket
// (ss -ti: segs_out, segs_in, bytes_sent, bytes_received) give the TCP segments per
// heartbeat, pure ACKs included. The hourly figures are for `every: 20s` (the INTERFACE
// example): 180 heartbeats. Header overhead per segment, stated as an assumption: IPv4 20 +
// TCP 20 + the timestamp option 12 (on by default in Linux) = 52 bytes; add 18 per segment
// for Ethernet (header + FCS) on a LAN. Nothing here is asserted except that probes happened.

/** Override with HB_BYTES_EVERY_MS (and HB_BYTES_WINDOW_MS) to measure at a slower pace. */
const MEASURE_EVERY_MS = Number(process.env.HB_BYTES_EVERY_MS ?? 250);
const REPORT_EVERY_S = 20;
const HEARTBEATS_PER_HOUR = 3600 / REPORT_EVERY_S;
const IP_TCP_HEADER_BYTES = 20 + 20 + 12;
const ETHERNET_BYTES = 14 + 4;
const WINDOW_MS = Number(process.env.HB_BYTES_WINDOW_MS ?? 3_000);
const PROBES: Record<string, Buffer> = {
  redis: Buffer.from('*1\r\n$4\r\nPING\r\n', 'latin1'),
  postgres: Buffer.from([0x53, 0, 0, 0, 4]),
  mysql: Buffer.from([1, 0, 0, 0, 0x0e]),
};

interface TcpCounters {
  bytesSent: number;
  bytesReceived: number;
  segsOut: number;
  segsIn: number;
}

/** The kernel's counters of the one established socket whose peer port is `port` (the proxy's upstream socket). */
function tcpCounters(port: number): Promise<TcpCounters> {
  return new Promise((resolve, reject) => {
    execFile('ss', ['-tinH', 'state', 'established', `( dport = :${port} )`], { timeout: 5_000, encoding: 'utf8' }, (error, stdout) => {
      if (error) return reject(error);
      const field = (name: string): number => Number(new RegExp(`\\b${name}:(\\d+)`).exec(stdout)?.[1] ?? 0);
      if (!/segs_out:/.test(stdout)) return reject(new Error(`no socket to port ${port}: ${stdout}`));
      resolve({ bytesSent: field('bytes_sent'), bytesReceived: field('bytes_received'), segsOut: field('segs_out'), segsIn: field('segs_in') });
    });
  });
}

/** Waits for the next probe reply the relay sees, then past a delayed ACK: a quiet point between two heartbeats. */
async function quietPoint(chunks: readonly WireChunk[]): Promise<number> {
  const seen = chunks.length;
  await until(() => chunks.slice(seen).some((chunk) => chunk.from === 'up'), MEASURE_EVERY_MS + 5_000, 'a probe reply');
  await sleep(100); // Linux delays a pure ACK by up to 40 ms; the next probe is >= 150 ms away
  return chunks.length;
}

describe('heartbeat bytes per idle connection (measurement)', () => {
  let redis: RunningServer;
  let postgres: RunningServer;
  let mariadb: RunningServer;
  let proxy: RunningProxy;
  const relays: Record<string, RecordingRelay> = {};
  const ports: Record<string, number> = {};
  const rows: string[] = [];

  beforeAll(async () => {
    [redis, postgres, mariadb] = await Promise.all([startRedis(), startPostgres(), startMariadb()]);
    relays.redis = await recordingRelay(redis.port);
    relays.postgres = await recordingRelay(postgres.port);
    relays.mysql = await recordingRelay(mariadb.port);
    const routes: string[] = [];
    for (const protocol of ['redis', 'postgres', 'mysql']) {
      ports[protocol] = await freePort();
      routes.push(
        `  - { name: ${protocol}, protocol: ${protocol}, listen: "127.0.0.1:${ports[protocol]}", upstream: "127.0.0.1:${relays[protocol]!.port}", heartbeat: { every: ${MEASURE_EVERY_MS}ms, timeout: 2s } }`,
      );
    }
    proxy = await startProxy({ yaml: `admin: { listen: "{{admin}}" }\nroutes:\n${routes.join('\n')}\n` });
  }, 120_000);

  afterAll(async () => {
    if (rows.length > 0) {
      console.log(
        `[heartbeat bytes] per idle connection, heartbeat every ${REPORT_EVERY_S}s (${HEARTBEATS_PER_HOUR}/h), measured at every ${MEASURE_EVERY_MS}ms over ${WINDOW_MS} ms:\n` +
          '| protocol | probe B | reply B | segments/heartbeat (out+in) | payload B/h | with IPv4+TCP headers (52 B/segment) B/h | + Ethernet (18 B/segment) B/h |\n' +
          '|---|---|---|---|---|---|---|\n' +
          rows.join('\n'),
      );
    }
    await proxy?.stop('SIGKILL');
    for (const relay of Object.values(relays)) await relay.close();
    await Promise.all([redis?.stop(), postgres?.stop(), mariadb?.stop()]);
  });

  async function measure(protocol: string, idleClient: () => Promise<() => Promise<void>>): Promise<void> {
    const relay = relays[protocol]!;
    const close = await idleClient();
    try {
      const chunks = relay.connections.at(-1)!.chunks;
      const from = await quietPoint(chunks);
      const before = await tcpCounters(relay.port);
      await sleep(WINDOW_MS);
      const to = await quietPoint(chunks);
      const after = await tcpCounters(relay.port);
      const window = chunks.slice(from, to);
      const probes = window.filter((chunk) => chunk.from === 'down');
      const replies = window.filter((chunk) => chunk.from === 'up');
      expect(probes.length, 'heartbeats went out during the silence').toBeGreaterThan(0);
      expect(probes.every((chunk) => chunk.bytes.equals(PROBES[protocol]!)), 'only probes went upstream while the client was idle').toBe(true);
      const count = probes.length;
      const probeBytes = probes[0]!.bytes.length;
      const replyBytes = replies.reduce((sum, chunk) => sum + chunk.bytes.length, 0) / count;
      const segments = (after.segsOut - before.segsOut + after.segsIn - before.segsIn) / count;
      const segmentsOut = (after.segsOut - before.segsOut) / count;
      const kernelBytes = { sent: (after.bytesSent - before.bytesSent) / count, received: (after.bytesReceived - before.bytesReceived) / count };
      const payloadPerHour = HEARTBEATS_PER_HOUR * (probeBytes + replyBytes);
      const withHeaders = payloadPerHour + HEARTBEATS_PER_HOUR * segments * IP_TCP_HEADER_BYTES;
      const withEthernet = withHeaders + HEARTBEATS_PER_HOUR * segments * ETHERNET_BYTES;
      rows.push(
        `| ${protocol} | ${probeBytes} | ${replyBytes} | ${segments.toFixed(2)} (${segmentsOut.toFixed(2)}+${(segments - segmentsOut).toFixed(2)}) | ` +
          `${Math.round(payloadPerHour)} | ${Math.round(withHeaders)} | ${Math.round(withEthernet)} |`,
      );
      console.log(
        `[heartbeat bytes] ${protocol}: ${count} heartbeats in the window; probe ${probeBytes} B, reply ${replyBytes} B ` +
          `(kernel: ${kernelBytes.sent} B sent, ${kernelBytes.received} B received per heartbeat); ${segments.toFixed(2)} segments per heartbeat`,
      );
    } finally {
      await close();
    }
  }

  it('redis (ioredis, idle)', async () => {
    await measure('redis', async () => {
      const client = new Redis({ host: '127.0.0.1', port: ports.redis!, lazyConnect: true, enableReadyCheck: false, maxRetriesPerRequest: 0 });
      await client.connect();
      await client.set('k', 'v');
      return async () => client.disconnect();
    });
  });

  it('postgres (pg, idle)', async () => {
    await measure('postgres', async () => {
      const client = new pg.Client({ host: '127.0.0.1', port: ports.postgres!, user: 'postgres', database: 'postgres' });
      await client.connect();
      await client.query('SELECT 1');
      return async () => client.end();
    });
  });

  it('mysql (mysql2, idle)', async () => {
    await measure('mysql', async () => {
      const client = await mysql.createConnection({ host: '127.0.0.1', port: ports.mysql!, user: MARIADB_USER });
      await client.query('SELECT 1');
      return async () => client.end();
    });
  });
});
