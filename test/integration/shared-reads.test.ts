import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { markSharedReads, ownReadBuffers, readInto, sharedOnread } from '../../src/net/shared-reads.js';
import { connected, listen0 } from '../helpers/net.js';
import { until } from '../helpers/wait.js';

// The TCP path's reads land in one process-wide buffer: every chunk a reader gets must be
// its own copy, bytes that came before any reader must reach the first one in order, and
// a reader handing the socket on mid-way must not lose or repeat a byte.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function pairWithSharedReads(): Promise<{ client: net.Socket; server: net.Socket }> {
  let accepted: net.Socket | null = null;
  const upstream = await listen0((socket) => (accepted = socket));
  cleanups.push(() => upstream.close());
  const client = net.connect({ port: upstream.port, host: '127.0.0.1', onread: sharedOnread });
  markSharedReads(client);
  cleanups.push(() => client.destroy());
  await connected(client, 5_000);
  await until(() => accepted !== null, 5_000, 'accepted');
  return { client, server: accepted! };
}

/**
 * Writes `text` and waits (bounded) until the client's socket has read it: each write is then
 * a read of its own, kept as its own early chunk, however late this process polls.
 */
async function writeAndAwaitRead(client: net.Socket, server: net.Socket, text: string): Promise<void> {
  const readBefore = client.bytesRead;
  server.write(text);
  await until(() => client.bytesRead === readBefore + text.length, 5_000, `the client to read ${JSON.stringify(text)}`, 5);
}

describe('shared read buffer', () => {
  it('keeps bytes that arrive before any reader and hands them over first, in order, as copies', async () => {
    const { client, server } = await pairWithSharedReads();
    await writeAndAwaitRead(client, server, 'greeting-1;');
    await writeAndAwaitRead(client, server, 'greeting-2;');
    const got: Buffer[] = [];
    readInto(client, (_socket, chunk) => got.push(chunk));
    server.write('after;');
    await until(() => Buffer.concat(got).length === 'greeting-1;greeting-2;after;'.length, 5_000, 'all bytes');
    expect(Buffer.concat(got).toString()).toBe('greeting-1;greeting-2;after;');
    // Later reads overwrite the shared buffer: what a reader got earlier must not change.
    const first = got[0]!.toString();
    server.write('x'.repeat(4096));
    await until(() => Buffer.concat(got).length >= 'greeting-1;greeting-2;after;'.length + 4096, 5_000, 'more bytes');
    expect(got[0]!.toString()).toBe(first);
  });

  it('passes the rest of the early bytes to the next reader when the first hands the socket on', async () => {
    const { client, server } = await pairWithSharedReads();
    for (const part of ['a;', 'b;', 'c;']) await writeAndAwaitRead(client, server, part);
    const first: string[] = [];
    const second: string[] = [];
    const secondReader = (_socket: net.Socket, chunk: Buffer): void => void second.push(chunk.toString());
    readInto(client, (socket, chunk) => {
      first.push(chunk.toString());
      socket.pause();
      readInto(socket, null);
    });
    expect(first.join('')).not.toBe('');
    readInto(client, secondReader);
    client.resume();
    server.write('d;');
    await until(() => (first.join('') + second.join('')).length === 8, 5_000, 'all bytes once');
    // The first reader got one early chunk and handed the socket on; the rest went to the second.
    expect(first).toEqual(['a;']);
    expect(second.join('')).toBe('b;c;d;');
  });

  it('hands a bulk stream over in buffers of its own, intact, and gives them back on close', async () => {
    const { client, server } = await pairWithSharedReads();
    const payload = randomBytes(16 * 1024 * 1024);
    const got: Buffer[] = [];
    let received = 0;
    let mostOwn = 0;
    readInto(client, (_socket, chunk) => {
      got.push(chunk); // kept past the callback: later reads must not overwrite it
      received += chunk.length;
      mostOwn = Math.max(mostOwn, ownReadBuffers());
    });
    server.end(payload);
    await until(() => received === payload.length, 20_000, 'the whole payload');
    const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    expect(digest(Buffer.concat(got))).toBe(digest(payload));
    expect(mostOwn).toBeGreaterThan(0);
    client.destroy();
    await until(() => ownReadBuffers() === 0, 5_000, 'own buffers released');
  });

  it('releases the own buffer of a socket closed in full flow', async () => {
    const { client, server } = await pairWithSharedReads();
    let received = 0;
    let heldAtClose = 0;
    // Closed from inside a bulk read, so the socket holds its own buffer at that moment
    // whatever the scheduling (on a loaded machine a read may come in small and release it).
    readInto(client, (_socket, chunk) => {
      received += chunk.length;
      if (received >= 4 * 1024 * 1024 && heldAtClose === 0 && ownReadBuffers() > 0) {
        heldAtClose = ownReadBuffers();
        client.destroy();
      }
    });
    // Keep the stream in full flow (never a small last read) until the client goes.
    const block = Buffer.alloc(1024 * 1024, 7);
    const pump = (): void => {
      while (!server.destroyed && server.write(block)) {
        if (received > 256 * 1024 * 1024) return;
      }
    };
    server.on('drain', pump);
    server.on('error', () => {});
    pump();
    await until(() => client.destroyed, 20_000, 'closed during a bulk read');
    expect(heldAtClose).toBeGreaterThan(0);
    await until(() => ownReadBuffers() === 0, 5_000, 'own buffer released on close');
  });

  it('reads a socket without the shared buffer through its data events', async () => {
    let accepted: net.Socket | null = null;
    const upstream = await listen0((socket) => (accepted = socket));
    cleanups.push(() => upstream.close());
    const client = net.connect({ port: upstream.port, host: '127.0.0.1' });
    cleanups.push(() => client.destroy());
    await connected(client, 5_000);
    await until(() => accepted !== null, 5_000, 'accepted');
    const got: string[] = [];
    readInto(client, (_socket, chunk) => got.push(chunk.toString()));
    accepted!.write('plain');
    await until(() => got.join('') === 'plain', 5_000, 'plain bytes');
  });
});
