#!/usr/bin/env node
// Which HTTP/1.1 client should carry keepalive-proxy's upstream pool? Measured, not guessed.
//
//   node bench/http-client-compare.mjs [--duration 5] [--rounds 3] [--concurrency 32] [--race 400] [--json]
//
// Contenders (all as the client of one upstream on loopback, the upstream in a child
// process so it never shares the client's event loop):
//   node-agent  node:http request() over http.Agent({ keepAlive: true, maxSockets })
//   undici      undici Pool({ connections }) .request()
// keepalive-proxy's own pool, which neither of them turned out to be, is measured through
// the whole proxy by `npm run bench` (workloads http-ka and http-close).
//
// Three measurements:
//   1. throughput and latency: `concurrency` loops of GET / (11-byte body) for `duration` s;
//   2. the same with a 64 KiB response (the body pump's share);
//   3. the stale-connection race: an upstream that closes connections idle for 100 ms,
//      without a Keep-Alive hint, and whose FIN is "in flight" for 20 ms: a request that
//      arrives in that window is answered with a RST (the real race, widened from the
//      ~20 us of loopback to a WAN-like 20 ms). One sequential client paces its requests
//      90..130 ms apart, so about half of them land in the window. Half the requests are
//      GETs, half POSTs with a body; the upstream counts every POST id it processed, so a
//      POST sent twice shows up as a duplicate.
// The figures chose the design recorded in src/pool/http-pool.ts.

import http from 'node:http';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const index = args.indexOf(`--${name}`);
  return index === -1 ? fallback : args[index + 1];
};

if (args[0] === '--serve') await serve(args[1]);
else await main();

// ---------------------------------------------------------------- upstream (child process)

async function serve(mode) {
  let server;
  if (mode === 'fast') {
    const small = Buffer.from('hello world');
    const large = Buffer.alloc(64 * 1024, 120);
    server = http.createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
      req.resume();
      req.on('end', () => {
        const body = req.url === '/large' ? large : small;
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
        res.end(body);
      });
    });
    server.keepAliveTimeout = 120_000;
  } else {
    server = raceServer();
  }
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
  process.on('SIGTERM', () => process.exit(0));
}

/** A minimal HTTP/1.1 upstream that closes idle connections the way the race needs. */
function raceServer() {
  const IDLE_MS = 100;
  const FIN_IN_FLIGHT_MS = 20;
  const processedPosts = new Map();
  let connections = 0;
  let resets = 0;
  return net.createServer((socket) => {
    connections++;
    socket.on('error', () => {});
    let buffered = Buffer.alloc(0);
    let closing = false;
    let idleTimer = null;
    const armIdle = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        // The server has decided: from now on this connection is closed; the FIN reaches
        // the client FIN_IN_FLIGHT_MS later.
        closing = true;
        setTimeout(() => socket.end(), FIN_IN_FLIGHT_MS);
      }, IDLE_MS);
    };
    armIdle();
    socket.on('close', () => clearTimeout(idleTimer));
    socket.on('data', (chunk) => {
      if (closing) {
        resets++;
        socket.resetAndDestroy();
        return;
      }
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        const headEnd = buffered.indexOf('\r\n\r\n');
        if (headEnd === -1) return;
        const head = buffered.subarray(0, headEnd).toString('latin1');
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffered.length < headEnd + 4 + length) return;
        buffered = buffered.subarray(headEnd + 4 + length);
        const [method, path] = head.split(' ');
        let body = 'ok';
        if (path === '/stats') {
          const duplicates = [...processedPosts.values()].filter((n) => n > 1).length;
          body = JSON.stringify({ connections, resets, posts: processedPosts.size, duplicates });
        } else if (method === 'POST') {
          const id = /\r\nx-id: *(\S+)/i.exec(head)?.[1] ?? '?';
          processedPosts.set(id, (processedPosts.get(id) ?? 0) + 1);
        }
        socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
        armIdle();
      }
    });
  });
}

async function startUpstream(mode) {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve', mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('upstream did not start')), 10_000);
    child.stdout.setEncoding('utf8').once('data', (text) => {
      clearTimeout(timer);
      resolve(Number(text.trim()));
    });
  });
  return { port, stop: () => child.kill('SIGTERM') };
}

// ---------------------------------------------------------------- contenders

async function contenders(concurrency) {
  const list = [];
  list.push({
    name: 'node-agent',
    make(port) {
      const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency, scheduling: 'lifo' });
      return {
        request: (options) => nodeRequest({ ...options, port, agent }),
        close: () => agent.destroy(),
        connections: () => null,
      };
    },
  });
  const undici = await import('undici');
  list.push({
    name: 'undici',
    make(port) {
      let opened = 0;
      const pool = new undici.Pool(`http://127.0.0.1:${port}`, { connections: concurrency, keepAliveTimeout: 60_000 });
      pool.on('connect', () => opened++);
      return {
        request: async ({ method, path, headers, body }) => {
          const res = await pool.request({ method, path, headers, body });
          await res.body.dump({ limit: Infinity });
          return res.statusCode;
        },
        close: () => pool.close(),
        connections: () => opened,
      };
    },
  });
  return list;
}

function nodeRequest({ port, agent, method, path, headers, body }) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, agent, method, path, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// ---------------------------------------------------------------- measurements

async function throughput(client, seconds, concurrency, path) {
  const latencies = [];
  let errors = 0;
  const deadline = performance.now() + seconds * 1000;
  const loop = async () => {
    while (performance.now() < deadline) {
      const started = performance.now();
      try {
        await client.request({ method: 'GET', path, headers: {} });
        latencies.push(performance.now() - started);
      } catch {
        errors++;
      }
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, loop));
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const pick = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? NaN;
  return {
    requests: latencies.length,
    rps: Math.round(latencies.length / elapsed),
    p50ms: +pick(0.5).toFixed(3),
    p99ms: +pick(0.99).toFixed(3),
    errors,
  };
}

/** The round with the median throughput. */
function median(runs) {
  return [...runs].sort((a, b) => a.rps - b.rps)[Math.floor(runs.length / 2)];
}

async function race(client, count, port) {
  const errors = {};
  let ok = 0;
  for (let i = 0; i < count; i++) {
    await new Promise((resolve) => setTimeout(resolve, 90 + Math.random() * 40));
    const post = i % 2 === 1;
    try {
      await client.request({
        method: post ? 'POST' : 'GET',
        path: '/',
        headers: post ? { 'x-id': String(i), 'content-type': 'text/plain' } : {},
        body: post ? `payload ${i}` : undefined,
      });
      ok++;
    } catch (error) {
      const key = `${post ? 'POST' : 'GET'} ${error.code ?? error.message}`;
      errors[key] = (errors[key] ?? 0) + 1;
    }
  }
  const stats = await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/stats', agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (t) => (text += t)).on('end', () => resolve(JSON.parse(text)));
    }).on('error', reject);
  });
  return { ok, failed: count - ok, errors, upstream: stats };
}

async function main() {
  const seconds = Number(option('duration', '5'));
  const concurrency = Number(option('concurrency', '32'));
  const raceCount = Number(option('race', '400'));
  const results = {};
  const list = await contenders(concurrency);
  const rounds = Number(option('rounds', '3'));
  const fast = await startUpstream('fast');
  try {
    // Contenders take turns, round after round, and each reports its median round: on a
    // shared machine a burst of someone else's load then hits every contender alike.
    const clients = list.map((contender) => contender.make(fast.port));
    for (const client of clients) await throughput(client, 1, concurrency, '/'); // warm-up: JIT, connections
    const samples = list.map(() => ({ small: [], large: [] }));
    for (let round = 0; round < rounds; round++) {
      for (const [index, client] of clients.entries()) {
        samples[index].small.push(await throughput(client, seconds, concurrency, '/'));
        samples[index].large.push(await throughput(client, seconds, concurrency, '/large'));
      }
    }
    for (const [index, contender] of list.entries()) {
      results[contender.name] = { small: median(samples[index].small), large: median(samples[index].large), connectionsOpened: clients[index].connections() };
      await clients[index].close();
    }
  } finally {
    fast.stop();
  }
  for (const contender of list) {
    const upstream = await startUpstream('race');
    try {
      const client = contender.make(upstream.port);
      results[contender.name].race = await race(client, raceCount, upstream.port);
      await client.close();
    } finally {
      upstream.stop();
    }
  }
  if (args.includes('--json')) {
    console.log(JSON.stringify({ node: process.version, seconds, concurrency, results }, null, 2));
    return;
  }
  console.log(`node ${process.version}, ${concurrency} concurrent, median of ${rounds} interleaved ${seconds} s runs, loopback`);
  for (const [name, r] of Object.entries(results)) {
    console.log(
      `${name.padEnd(11)} small: ${r.small.rps} req/s p50 ${r.small.p50ms} ms p99 ${r.small.p99ms} ms | ` +
        `64KiB: ${r.large.rps} req/s p50 ${r.large.p50ms} ms p99 ${r.large.p99ms} ms`,
    );
    console.log(
      `${''.padEnd(11)} race (${raceCount} paced requests): ${r.race.ok} ok, ${r.race.failed} failed ${JSON.stringify(r.race.errors)}; ` +
        `upstream saw ${r.race.upstream.connections} connections, sent ${r.race.upstream.resets} RSTs, ` +
        `POSTs processed ${r.race.upstream.posts}, duplicated ${r.race.upstream.duplicates}`,
    );
  }
}
