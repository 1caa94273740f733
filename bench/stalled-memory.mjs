#!/usr/bin/env node
// What a stalled pair costs in proxy memory: N clients each push 10 MiB through a tcp
// route to an upstream that accepts and never reads, so every pair ends with the kernel's
// buffers full and the proxy holding what it read last. The proxy's RSS is read from
// /proc once it stops moving; one run per N, so the fixed part (allocations of the bulk
// transfer still waiting for a garbage collection) and the part per pair can be told apart.
//
//   node bench/stalled-memory.mjs [--pairs 100,400,1600]
//
// Bounded: each wait has a deadline, and it ends only the processes it started (by PID).
// Needs `npm run build` first (it runs dist/main.js).

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { sleep, startProcess, stopProcess, waitForPort } from './lib/procs.mjs';

const ROOT = path.resolve(import.meta.dirname, '..');
const MAIN = path.join(ROOT, 'dist', 'main.js');
const UPSTREAM_PORT = 27_120;
const PROXY_PORT = 27_121;
const MiB = 1024 * 1024;
const PUSH_MIB = 10;

const { values } = parseArgs({ options: { pairs: { type: 'string', default: '100,400,1600' } } });
const sizes = values.pairs.split(',').map(Number);

function rssMiB(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
}

async function stalledRss(pairs, dir) {
  const held = new Set();
  const upstream = net.createServer({ pauseOnConnect: true }, (socket) => {
    held.add(socket);
    socket.on('error', () => {});
  });
  await new Promise((resolve) => upstream.listen(UPSTREAM_PORT, '127.0.0.1', resolve));
  const config = path.join(dir, 'stalled.yaml');
  writeFileSync(config, `admin: { listen: off }\nlog: { level: warn }\nroutes:\n  - { name: stalled, protocol: tcp, listen: "127.0.0.1:${PROXY_PORT}", upstream: "127.0.0.1:${UPSTREAM_PORT}" }\n`);
  const proxy = startProcess('keepalive-proxy', process.execPath, ['--max-semi-space-size=4', MAIN, '--config', config], { core: null });
  const clients = [];
  try {
    await waitForPort(PROXY_PORT, { proc: proxy });
    await sleep(500);
    const before = rssMiB(proxy.pid);
    const chunk = Buffer.alloc(MiB, 0x61);
    for (let i = 0; i < pairs; i++) {
      const client = net.connect(PROXY_PORT, '127.0.0.1');
      client.on('error', () => {});
      let sent = 0;
      const push = () => {
        while (sent < PUSH_MIB && client.write(chunk)) sent++;
        if (sent < PUSH_MIB) client.once('drain', () => ((sent += 1), push()));
      };
      client.on('connect', push);
      clients.push(client);
    }
    // Settled: RSS moved less than 0.5 MiB over a second, after at least 3 s (at most 30 s).
    let last = 0;
    for (let waited = 0; waited < 30_000; waited += 1_000) {
      await sleep(1_000);
      const now = rssMiB(proxy.pid);
      if (waited >= 3_000 && Math.abs(now - last) < 0.5) break;
      last = now;
    }
    return { pairs, beforeMiB: before, stalledMiB: rssMiB(proxy.pid) };
  } finally {
    for (const client of clients) client.destroy();
    await stopProcess(proxy, { signal: 'SIGKILL' });
    for (const socket of held) socket.destroy();
    await new Promise((resolve) => upstream.close(resolve));
  }
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'kp-stalled-'));
try {
  const rows = [];
  for (const pairs of sizes) rows.push(await stalledRss(pairs, dir));
  console.log('| stalled pairs | RSS before | RSS stalled | growth | growth per pair |');
  console.log('|--:|--:|--:|--:|--:|');
  for (const { pairs, beforeMiB, stalledMiB } of rows) {
    const grown = stalledMiB - beforeMiB;
    console.log(`| ${pairs} | ${beforeMiB.toFixed(1)} MiB | ${stalledMiB.toFixed(1)} MiB | ${grown.toFixed(1)} MiB | ${((grown * 1024) / pairs).toFixed(0)} KiB |`);
  }
  for (let i = 1; i < rows.length; i++) {
    const [a, b] = [rows[i - 1], rows[i]];
    const marginal = ((b.stalledMiB - b.beforeMiB - (a.stalledMiB - a.beforeMiB)) * 1024) / (b.pairs - a.pairs);
    console.log(`marginal ${a.pairs} -> ${b.pairs} pairs: ${marginal.toFixed(0)} KiB per stalled pair`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
