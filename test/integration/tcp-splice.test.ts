import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, freePort, listen0, outcomeOf, readBytes, fullBacklogListener } from '../helpers/net.js';
import { parseMetrics, sample, startProxy, type RunningProxy } from '../helpers/proxy.js';
import { once, until } from '../helpers/wait.js';

// The TCP data path through the real CLI: integrity, half-close, resets, connect errors.

const MiB = 1024 * 1024;

function sha256(buffers: Buffer[]): string {
  const hash = createHash('sha256');
  for (const b of buffers) hash.update(b);
  return hash.digest('hex');
}

/** Sends `total` random bytes in 64 KiB writes honouring backpressure; resolves with their hash. */
async function sendRandom(socket: net.Socket, total: number): Promise<string> {
  const hash = createHash('sha256');
  let sent = 0;
  while (sent < total) {
    const chunk = randomBytes(Math.min(64 * 1024, total - sent));
    hash.update(chunk);
    sent += chunk.length;
    if (!socket.write(chunk)) await once(socket, 'drain', 30_000);
  }
  return hash.digest('hex');
}

/** Hashes everything read until EOF. */
function hashUntilEnd(socket: net.Socket, timeoutMs: number): Promise<{ hash: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const timer = setTimeout(() => reject(new Error(`no EOF after ${bytes} bytes`)), timeoutMs);
    socket.on('data', (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
    });
    socket.once('end', () => {
      clearTimeout(timer);
      resolve({ hash: hash.digest('hex'), bytes });
    });
    socket.once('error', reject);
  });
}

describe('tcp route data path', () => {
  let upstream: Awaited<ReturnType<typeof listen0>>;
  let onUpstream: (socket: net.Socket) => void = () => {};
  let proxy: RunningProxy;
  let port: number;

  beforeAll(async () => {
    upstream = await listen0((socket) => onUpstream(socket));
    port = await freePort();
    proxy = await startProxy({
      yaml: `
admin: { listen: "{{admin}}" }
log: { level: debug }
routes:
  - name: echo
    listen: 127.0.0.1:${port}
    upstream: 127.0.0.1:${upstream.port}
    connectTimeout: 2s
`,
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    await upstream?.close();
  });

  it('carries 64 MiB each way concurrently with both hashes intact', async () => {
    const serverReceived = new Promise<{ hash: string; bytes: number }>((resolve, reject) => {
      onUpstream = (socket) => {
        hashUntilEnd(socket, 60_000).then(resolve, reject);
        sendRandom(socket, 64 * MiB).then((h) => {
          serverSentHash = h;
          socket.end();
        });
      };
    });
    let serverSentHash = '';
    const client = await connect(port);
    const clientReceived = hashUntilEnd(client, 60_000);
    const clientSentHash = await sendRandom(client, 64 * MiB);
    client.end();
    const [down, up] = await Promise.all([clientReceived, serverReceived]);
    expect(up.bytes).toBe(64 * MiB);
    expect(up.hash).toBe(clientSentHash);
    expect(down.bytes).toBe(64 * MiB);
    expect(down.hash).toBe(serverSentHash);
    const metrics = parseMetrics(await proxy.metrics());
    expect(sample(metrics, 'keepalive_proxy_bytes_total', { route: 'echo', direction: 'upstream' })).toBeGreaterThanOrEqual(64 * MiB);
    expect(sample(metrics, 'keepalive_proxy_bytes_total', { route: 'echo', direction: 'downstream' })).toBeGreaterThanOrEqual(64 * MiB);
  });

  it("passes the client's FIN on as a FIN while the reply still flows back", async () => {
    const upstreamSaw = new Promise<Buffer>((resolve) => {
      onUpstream = (socket) => {
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.on('end', () => {
          // The client has finished sending; the upstream answers after that FIN.
          const request = Buffer.concat(chunks);
          socket.write(Buffer.concat([Buffer.from('reply-to:'), request]));
          setTimeout(() => socket.end(Buffer.from(':late')), 200);
          resolve(request);
        });
      };
    });
    const client = await connect(port);
    client.end('question');
    const reply = await readBytes(client, Number.MAX_SAFE_INTEGER, 5_000);
    expect((await upstreamSaw).toString()).toBe('question');
    expect(reply.toString()).toBe('reply-to:question:late');
  });

  it("passes the upstream's FIN on while the client can still send", async () => {
    const upstreamGot = new Promise<string>((resolve) => {
      onUpstream = (socket) => {
        socket.end('bye-from-server');
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.on('end', () => resolve(Buffer.concat(chunks).toString()));
      };
    });
    const client = await connect(port);
    const fromServer = await readBytes(client, Number.MAX_SAFE_INTEGER, 5_000); // until EOF
    expect(fromServer.toString()).toBe('bye-from-server');
    client.end('still-talking-after-your-fin');
    expect(await upstreamGot).toBe('still-talking-after-your-fin');
  });

  it('propagates an upstream reset to the client at once', async () => {
    onUpstream = (socket) => socket.once('data', () => socket.resetAndDestroy());
    const client = await connect(port);
    const closed = new Promise<NodeJS.ErrnoException | null>((resolve) => {
      client.on('error', (e) => resolve(e));
      client.on('close', () => resolve(null));
    });
    client.write('trigger');
    const error = await Promise.race([closed, new Promise<'hang'>((r) => setTimeout(() => r('hang'), 5_000))]);
    expect(error).not.toBe('hang');
    expect((error as NodeJS.ErrnoException | null)?.code).toBe('ECONNRESET');
    await until(async () => sample(parseMetrics(await proxy.metrics()), 'keepalive_proxy_evictions_total', { route: 'echo', reason: 'peer_reset' }) >= 1, 5_000, 'peer_reset eviction');
  });

  it('propagates a client reset to the upstream at once', async () => {
    let upstreamGotData!: () => void;
    const gotData = new Promise<void>((resolve) => (upstreamGotData = resolve));
    const upstreamClosed = new Promise<string>((resolve) => {
      onUpstream = (socket) => {
        socket.once('data', () => upstreamGotData());
        socket.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
        socket.on('close', () => resolve('close'));
      };
    });
    const client = await connect(port);
    client.write('x');
    await gotData; // the pair is established end to end
    client.resetAndDestroy();
    const result = await Promise.race([upstreamClosed, new Promise<string>((r) => setTimeout(() => r('hang'), 5_000))]);
    expect(result).toBe('ECONNRESET');
  });
});

/** A proxy with one route on a free port, given the route's other keys in YAML flow style. */
async function proxyWithRoute(routeKeys: string): Promise<{ proxy: RunningProxy; port: number }> {
  const port = await freePort();
  const proxy = await startProxy({
    yaml: `
admin: { listen: "{{admin}}" }
routes:
  - { listen: 127.0.0.1:${port}, ${routeKeys} }
`,
  });
  return { proxy, port };
}

describe('tcp route upstream names', () => {
  it('resolves a hostname upstream at connect time', async () => {
    const upstream = await listen0((socket) => {
      socket.on('data', (c: Buffer) => socket.write(c));
      socket.on('end', () => socket.end());
    });
    const { proxy, port } = await proxyWithRoute(`name: named, upstream: "localhost:${upstream.port}"`);
    try {
      const client = await connect(port);
      client.write('by-name');
      expect((await readBytes(client, 7)).toString()).toBe('by-name');
      client.end();
    } finally {
      expect(await proxy.stop()).toBe(0);
      await upstream.close();
    }
  });
});

describe('tcp route connect failures', () => {
  it('resets the client and counts connect_error when the upstream refuses', async () => {
    const dead = await freePort(); // nothing listens here
    const { proxy, port } = await proxyWithRoute(`name: refused, upstream: 127.0.0.1:${dead}`);
    try {
      // The reset may come before this process saw its connect complete (outcomeOf).
      const { end } = await outcomeOf(port);
      expect(['ECONNRESET', 'fin']).toContain(end);
      const metrics = parseMetrics(await proxy.metrics());
      expect(sample(metrics, 'keepalive_proxy_upstream_connects_total', { route: 'refused', result: 'error' })).toBe(1);
      expect(sample(metrics, 'keepalive_proxy_evictions_total', { route: 'refused', reason: 'connect_error' })).toBe(1);
      await proxy.logged((l) => l.msg === 'upstream connect failed; closing client');
    } finally {
      await proxy.stop();
    }
  });

  it('gives up after connectTimeout when the upstream never answers the SYN', async () => {
    const hole = await fullBacklogListener();
    const { proxy, port } = await proxyWithRoute(`name: slow, upstream: "127.0.0.1:${hole.port}", connectTimeout: 500ms`);
    try {
      const started = Date.now();
      const { end } = await outcomeOf(port, '', { timeoutMs: 8_000 });
      expect(end).not.toBe('open');
      expect(Date.now() - started).toBeGreaterThanOrEqual(400);
      const metrics = parseMetrics(await proxy.metrics());
      expect(sample(metrics, 'keepalive_proxy_upstream_connects_total', { route: 'slow', result: 'timeout' })).toBe(1);
    } finally {
      await proxy.stop();
      hole.stop();
    }
  });
});
