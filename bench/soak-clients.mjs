#!/usr/bin/env node
// The soak's Node-side peers (bench/lib/soak.mjs starts them; the compiled tcpload does the TCP churn
// and the idle heartbeating connections):
//   soak-clients.mjs origin PORT                         HTTP/1.1 origin answering every request with a short body
//   soak-clients.mjs http-close PORT CONCURRENCY SECONDS  GET loops, a new connection with Connection: close each time
//   soak-clients.mjs connect PORT TARGET CONCURRENCY SECONDS
//                                                        CONNECT TARGET through a forward proxy, echo 64 bytes, close
// The load modes stop after SECONDS and print one JSON line: { mode, ok, errors, firstError }.
// Every exchange has its own deadline, so a stalled proxy shows up as errors, never as a hang.

import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';

const EXCHANGE_TIMEOUT_MS = 10_000;
const ECHO_BYTES = 64;

const [mode, ...args] = process.argv.slice(2);

function startOrigin(port) {
  const body = 'hello from the soak origin\n';
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end(body));
  });
  server.keepAliveTimeout = 300_000;
  server.listen(port, '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
}

/** One connection: write `request`, read until `done(received)` says so, resolve true/false. */
function exchange(port, request, done) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (ok, why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(ok ? null : why);
    };
    const timer = setTimeout(() => finish(false, 'timeout'), EXCHANGE_TIMEOUT_MS);
    socket.once('connect', () => socket.write(request(socket)));
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      const verdict = done(received, socket);
      if (verdict !== undefined) finish(verdict === true, verdict);
    });
    socket.once('end', () => {
      const verdict = done(received, socket, true);
      finish(verdict === true, verdict ?? 'closed early');
    });
    socket.once('error', (err) => finish(false, err.code ?? err.message));
  });
}

/** A GET with Connection: close; ok when the server closes after a complete 200 response. */
function httpClose(port) {
  return exchange(
    port,
    () => 'GET /soak HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    (received, _socket, ended) => {
      if (!ended) return undefined;
      const text = received.toString('latin1');
      return text.startsWith('HTTP/1.1 200') && text.endsWith('hello from the soak origin\n') ? true : `bad response: ${JSON.stringify(text.slice(0, 80))}`;
    },
  );
}

/** CONNECT target, then 64 random bytes that must come back in order, then close. */
function connectTunnel(port, target) {
  const payload = randomBytes(ECHO_BYTES);
  let headerEnd = -1;
  return exchange(
    port,
    () => `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`,
    (received, socket, ended) => {
      if (headerEnd < 0) {
        headerEnd = received.indexOf('\r\n\r\n');
        if (headerEnd < 0) return ended ? 'closed before the CONNECT reply' : undefined;
        if (!received.toString('latin1', 0, 12).startsWith('HTTP/1.1 200')) return `CONNECT refused: ${received.toString('latin1', 0, headerEnd)}`;
        socket.write(payload);
      }
      const echoed = received.subarray(headerEnd + 4);
      if (echoed.length < ECHO_BYTES) return ended ? 'tunnel closed early' : undefined;
      return echoed.length === ECHO_BYTES && echoed.equals(payload) ? true : 'echo differs from what was sent';
    },
  );
}

async function loop(name, concurrency, seconds, once) {
  const deadline = Date.now() + seconds * 1000;
  const tally = { mode: name, ok: 0, errors: 0, firstError: null };
  const worker = async () => {
    while (Date.now() < deadline) {
      const error = await once();
      if (error === null) tally.ok++;
      else {
        tally.errors++;
        tally.firstError ??= error;
        await new Promise((resolve) => setTimeout(resolve, 50)); // no hot loop against a refusing proxy
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  console.log(JSON.stringify(tally));
}

if (mode === 'origin') startOrigin(Number(args[0]));
else if (mode === 'http-close') await loop(mode, Number(args[1]), Number(args[2]), () => httpClose(Number(args[0])));
else if (mode === 'connect') await loop(mode, Number(args[2]), Number(args[3]), () => connectTunnel(Number(args[0]), args[1]));
else {
  console.error('usage: soak-clients.mjs origin PORT | http-close PORT CONCURRENCY SECONDS | connect PORT TARGET CONCURRENCY SECONDS');
  process.exit(2);
}
