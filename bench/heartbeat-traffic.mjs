#!/usr/bin/env node
// What heartbeats cost on the wire: N idle client connections through one keepalive-proxy
// redis route to a local redis-server, `heartbeat: { every: E }` for each E asked, and the
// proxy's upstream sockets read with `ss -tin` (bytes and segments each way, from the
// kernel) at the start and end of a measured window. Extrapolated per idle connection per
// hour; kernel keepalive is pushed past the window (idle 2h) so only heartbeats count.
// The window is rounded up to a whole number of intervals.
//
//   node bench/heartbeat-traffic.mjs [--connections 5000] [--every 5s,20s] [--window 30]
//
// Bounded: every wait has a deadline, the run stops by itself, and it ends only the
// processes it started (by PID). Needs `npm run build` first (it runs dist/main.js).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { counterSum } from './lib/footprint.mjs';
import { ORIGIN_PORTS, startRedis } from './lib/origins.mjs';
import { sleep, startProcess, stopAll, stopProcess, waitForPort } from './lib/procs.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const MAIN = path.join(ROOT, 'dist', 'main.js');
/** IPv4 header 20 + TCP header 20 + timestamps option 12: per segment on loopback (no link header). */
const HEADER_BYTES_PER_SEGMENT = 52;
const PROXY_PORT = 27_110;
const ADMIN_PORT = 27_111;
const CONNECT_BATCH = 250;

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '5000' },
    every: { type: 'string', default: '5s,20s' },
    window: { type: 'string', default: '30' },
  },
});
const connections = Number(values.connections);
const windowS = Number(values.window);
const intervals = values.every.split(',').map((text) => text.trim());
const secondsOf = (text) => Number(/^(\d+(?:\.\d+)?)s$/.exec(text)?.[1] ?? Number.NaN);
if (!(connections > 0 && connections <= 20_000) || !(windowS > 0 && windowS <= 600) || intervals.some((e) => !(secondsOf(e) > 0))) {
  console.error('usage: heartbeat-traffic.mjs [--connections 1..20000] [--every 5s,20s] [--window SECONDS<=600]');
  process.exit(2);
}

const log = (text) => console.error(`[heartbeat-traffic] ${text}`);

/** Sums of ss -tin counters over the proxy's sockets to redis (destination port ORIGIN_PORTS.redis). */
function upstreamCounters() {
  const out = execFileSync('ss', ['-tinH', 'state', 'established', `dport = :${ORIGIN_PORTS.redis}`], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 30_000 });
  const sum = { sockets: 0, bytesSent: 0, bytesReceived: 0, segsOut: 0, segsIn: 0 };
  const field = (line, name) => Number(new RegExp(`\\b${name}:(\\d+)`).exec(line)?.[1] ?? 0);
  for (const line of out.split('\n')) {
    if (!line.includes('segs_out:')) continue;
    sum.sockets++;
    sum.bytesSent += field(line, 'bytes_sent');
    sum.bytesReceived += field(line, 'bytes_received');
    sum.segsOut += field(line, 'segs_out');
    sum.segsIn += field(line, 'segs_in');
  }
  return sum;
}

function yaml(every) {
  return `admin: { listen: 127.0.0.1:${ADMIN_PORT} }
log: { level: warn }
shutdownTimeout: 2s
defaults:
  keepalive:
    client: { idle: 2h, interval: 10s, count: 6 }
    upstream: { idle: 2h, interval: 10s, count: 3 }
routes:
  - name: hb
    protocol: redis
    listen: 127.0.0.1:${PROXY_PORT}
    upstream: 127.0.0.1:${ORIGIN_PORTS.redis}
    maxConnections: ${connections + 100}
    heartbeat: { every: ${every}, timeout: 5s }
`;
}

/** Opens `count` idle client connections in batches; resolves with the sockets. */
async function openClients(count) {
  const sockets = [];
  for (let start = 0; start < count; start += CONNECT_BATCH) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + CONNECT_BATCH); i++) {
      batch.push(
        new Promise((resolve, reject) => {
          const socket = net.connect({ host: '127.0.0.1', port: PROXY_PORT });
          const timer = setTimeout(() => reject(new Error('connect timed out')), 10_000);
          socket.once('connect', () => (clearTimeout(timer), resolve(socket)));
          socket.once('error', (error) => (clearTimeout(timer), reject(error)));
        }),
      );
    }
    sockets.push(...(await Promise.all(batch)));
  }
  for (const socket of sockets) socket.on('error', () => {});
  return sockets;
}

async function measure(every, dir) {
  const config = path.join(dir, `hb-${every}.yaml`);
  writeFileSync(config, yaml(every));
  const proxy = startProcess('keepalive-proxy', process.execPath, [MAIN, '--config', config], { core: null });
  let clients = [];
  try {
    if (!(await waitForPort(PROXY_PORT, { proc: proxy, timeoutMs: 15_000 }))) throw new Error(`proxy did not start:\n${proxy.output()}`);
    clients = await openClients(connections);
    // Every upstream connected (one per client), then one interval so each heartbeat schedule runs.
    const deadline = Date.now() + 60_000;
    while (upstreamCounters().sockets < connections) {
      if (Date.now() > deadline) throw new Error('upstream connections did not all open within 60 s');
      await sleep(500);
    }
    await sleep(secondsOf(every) * 1000 + 2_000);
    const before = upstreamCounters();
    const heartbeatsBefore = (await counterSum(ADMIN_PORT, 'keepalive_proxy_heartbeats_total')) ?? 0;
    const started = performance.now();
    // A whole number of intervals: connections opened together heartbeat in step, so a
    // window that is not a multiple of the interval would catch one round more or less.
    await sleep(Math.ceil(windowS / secondsOf(every)) * secondsOf(every) * 1000);
    const after = upstreamCounters();
    const heartbeatsAfter = (await counterSum(ADMIN_PORT, 'keepalive_proxy_heartbeats_total')) ?? 0;
    const seconds = (performance.now() - started) / 1000;
    const perConnHour = (delta) => (delta / connections) * (3600 / seconds);
    const payload = after.bytesSent - before.bytesSent + (after.bytesReceived - before.bytesReceived);
    const segments = after.segsOut - before.segsOut + (after.segsIn - before.segsIn);
    const heartbeats = heartbeatsAfter - heartbeatsBefore;
    const stillOpen = clients.filter((socket) => !socket.destroyed).length;
    return {
      every,
      connections,
      windowSeconds: Number(seconds.toFixed(1)),
      upstreamSockets: after.sockets,
      clientsStillOpen: stillOpen,
      heartbeats,
      perHeartbeat: { payloadBytes: +(payload / heartbeats).toFixed(1), segments: +(segments / heartbeats).toFixed(2) },
      perConnectionPerHour: {
        heartbeats: Math.round(perConnHour(heartbeats)),
        payloadBytes: Math.round(perConnHour(payload)),
        segments: Math.round(perConnHour(segments)),
        ipBytes: Math.round(perConnHour(payload + segments * HEADER_BYTES_PER_SEGMENT)),
      },
      at5000ConnectionsPerHourMiB: +((perConnHour(payload + segments * HEADER_BYTES_PER_SEGMENT) * 5000) / 2 ** 20).toFixed(2),
    };
  } finally {
    for (const socket of clients) socket.destroy();
    await stopProcess(proxy, { graceMs: 5_000 });
  }
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'kp-hb-traffic-'));
const redisServer = execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim();
let redis = null;
try {
  redis = await startRedis({ 'redis-server': redisServer }, dir);
  log(`${connections} idle connections, heartbeat every ${intervals.join(' / ')}, ${windowS} s window each; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  for (const every of intervals) {
    const result = await measure(every, dir);
    console.log(JSON.stringify(result));
  }
  log(`done; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
} finally {
  await stopProcess(redis);
  await stopAll();
  rmSync(dir, { recursive: true, force: true });
}
