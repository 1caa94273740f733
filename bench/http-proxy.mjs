#!/usr/bin/env node
// What keepalive-proxy's HTTP route costs and saves, measured with wrk on loopback:
//
//   node bench/http-proxy.mjs [--duration 5] [--connections 32] [--json]     (needs `npm run build` and wrk)
//
// Four runs against one node:http upstream (in its own process, counting the TCP
// connections it accepts):
//   direct, keep-alive        wrk -> upstream
//   direct, Connection: close wrk -> upstream, one connection per request (a legacy client)
//   proxy, Connection: close  wrk -> keepalive-proxy (http route, pool maxSockets 32) -> upstream
//   proxy, keep-alive         wrk -> keepalive-proxy -> upstream
// For each: requests/s, p50 and p99 latency (wrk --latency), and upstream connections
// opened per 10,000 requests (what the far upstream and every middlebox on the way see).

import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const MAIN = join(HERE, '..', 'dist', 'main.js');
const run = promisify(execFile);
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(`--${name}`);
  return index === -1 ? fallback : args[index + 1];
};

if (args[0] === '--serve') serve();
else await main();

function serve() {
  let connections = 0;
  const body = Buffer.from('hello world');
  const server = http.createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
    if (req.url === '/stats') {
      res.end(JSON.stringify({ connections }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
    res.end(body);
  });
  server.keepAliveTimeout = 120_000;
  server.on('connection', () => connections++);
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
  process.on('SIGTERM', () => process.exit(0));
}

async function freePort() {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function firstLine(child) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('child did not start')), 10_000);
    child.stdout.setEncoding('utf8').once('data', (text) => {
      clearTimeout(timer);
      resolve(text.trim());
    });
  });
}

async function upstreamConnections(port) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/stats', agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (t) => (text += t)).on('end', () => resolve(JSON.parse(text).connections));
    }).on('error', reject);
  });
}

async function startProxy(upstreamPort, listenPort, adminPort) {
  const dir = mkdtempSync(join(tmpdir(), 'kp-bench-'));
  const config = join(dir, 'config.yaml');
  writeFileSync(
    config,
    `admin:\n  listen: 127.0.0.1:${adminPort}\nlog:\n  level: warn\nroutes:\n  - name: bench\n    listen: 127.0.0.1:${listenPort}\n` +
      `    protocol: http\n    upstream: http://127.0.0.1:${upstreamPort}\n    pool: { maxSockets: 32, idleTimeout: 60s, maxAge: 0, maxRequests: 0 }\n`,
  );
  const child = spawn(process.execPath, [MAIN, '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const response = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      if (response.ok) break;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error('proxy not ready');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return child;
}

/** wrk's summary: requests/s, p50, p99 (ms), total requests, socket errors. */
async function wrk(url, seconds, connections, close) {
  const wrkArgs = ['-t', '1', '-c', String(connections), '-d', `${seconds}s`, '--latency'];
  if (close) wrkArgs.push('-H', 'Connection: close');
  const { stdout } = await run('wrk', [...wrkArgs, url], { timeout: (seconds + 30) * 1000 });
  const ms = (text) => {
    const match = /([\d.]+)(us|ms|s)/.exec(text);
    if (!match) return NaN;
    const value = Number(match[1]);
    return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value;
  };
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1]);
  const total = Number(/(\d+) requests in/.exec(stdout)?.[1]);
  const p50 = ms(/\s50%\s+(\S+)/.exec(stdout)?.[1] ?? '');
  const p99 = ms(/\s99%\s+(\S+)/.exec(stdout)?.[1] ?? '');
  const errors = /Socket errors: (.*)/.exec(stdout)?.[1] ?? 'none';
  return { rps: Math.round(rps), p50ms: +p50.toFixed(3), p99ms: +p99.toFixed(3), requests: total, socketErrors: errors };
}

async function main() {
  if (!existsSync(MAIN)) throw new Error('build first: npm run build');
  const seconds = Number(option('duration', '5'));
  const connections = Number(option('connections', '32'));
  const upstream = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const upstreamPort = Number(await firstLine(upstream));
  const proxyPort = await freePort();
  const proxy = await startProxy(upstreamPort, proxyPort, await freePort());
  const results = {};
  try {
    const runs = [
      ['direct, keep-alive', upstreamPort, false],
      ['direct, Connection: close', upstreamPort, true],
      ['proxy, Connection: close', proxyPort, true],
      ['proxy, keep-alive', proxyPort, false],
    ];
    for (const [name, port, close] of runs) {
      await wrk(`http://127.0.0.1:${port}/`, 2, connections, close); // warm-up: JIT, the pool filled
      const before = await upstreamConnections(upstreamPort);
      const result = await wrk(`http://127.0.0.1:${port}/`, seconds, connections, close);
      // Minus one: the /stats request that reads the count opens a connection itself.
      const opened = (await upstreamConnections(upstreamPort)) - before - 1;
      results[name] = { ...result, upstreamConnectionsPer10k: +((opened / result.requests) * 10_000).toFixed(2) };
    }
  } finally {
    proxy.kill('SIGTERM');
    upstream.kill('SIGTERM');
  }
  if (args.includes('--json')) {
    console.log(JSON.stringify({ node: process.version, seconds, connections, results }, null, 2));
    return;
  }
  console.log(`node ${process.version}, wrk -t1 -c${connections}, ${seconds} s per run, loopback`);
  for (const [name, r] of Object.entries(results)) {
    console.log(
      `${name.padEnd(27)} ${String(r.rps).padStart(6)} req/s  p50 ${r.p50ms} ms  p99 ${r.p99ms} ms  ` +
        `upstream connections per 10k requests: ${r.upstreamConnectionsPer10k}  (socket errors: ${r.socketErrors})`,
    );
  }
}
