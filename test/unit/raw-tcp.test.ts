import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { rawTcpBindings } from '../../src/net/internals.js';
import { RawTcp } from '../../src/net/raw-tcp.js';
import type { EndEvents, SpliceEnd } from '../../src/net/splice-end.js';
import { readSocketOptions, unacknowledgedBytes } from '../../src/net/sockopt.js';
import { acceptedRawPair, dialledRawPair, Received } from '../helpers/pairs.js';
import { listen0, tcpState, TCP_CLOSE } from '../helpers/net.js';
import { sleep, until } from '../helpers/wait.js';

// src/net/raw-tcp.ts on real loopback connections: what a splice end must do that the
// session's own tests (test/unit/session.test.ts, run over raw ends too) do not reach.
// The bindings it drives are Node's internals: this file runs on every Node line CI runs.

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/** Every event an end reports, in order. */
class Recorder implements EndEvents {
  readonly log: string[] = [];
  readonly received: Buffer[] = [];
  readonly errors: NodeJS.ErrnoException[] = [];
  data(_end: SpliceEnd, chunk: Buffer): void {
    this.log.push('data');
    this.received.push(chunk);
  }
  end(): void {
    this.log.push('end');
  }
  error(_end: SpliceEnd, error: NodeJS.ErrnoException): void {
    this.log.push(`error:${error.code}`);
    this.errors.push(error);
  }
  drain(): void {
    this.log.push('drain');
  }
  writeFailed(_end: SpliceEnd, error: NodeJS.ErrnoException): void {
    this.log.push(`writeFailed:${error.code}`);
  }
  close(): void {
    this.log.push('close');
  }
  get text(): string {
    return Buffer.concat(this.received).toString('latin1');
  }
}

async function accepted(): Promise<{ peer: net.Socket; end: RawTcp; events: Recorder; atPeer: Received }> {
  const pair = await acceptedRawPair();
  cleanups.push(pair.close);
  const events = new Recorder();
  pair.far.listen(events);
  return { peer: pair.near, end: pair.far, events, atPeer: new Received(pair.near) };
}

describe(`raw TCP ends on ${process.version}`, () => {
  it("has node's tcp_wrap and stream_wrap bindings as net/internals.ts expects them", () => {
    expect(rawTcpBindings()).not.toBeNull();
  });

  it('reads nothing before resume(), then every byte in order across many reads of the shared buffer', async () => {
    const a = await accepted();
    const b = await accepted();
    a.peer.write('early');
    await sleep(50);
    expect(a.events.received).toEqual([]);
    expect(a.end.paused).toBe(true);
    a.end.resume();
    b.end.resume();
    // Two connections read into the one shared buffer, interleaved: each keeps its own bytes.
    const expectedA = ['early'];
    const expectedB: string[] = [];
    for (let i = 0; i < 200; i++) {
      const chunkA = `a${i}-`.repeat(1 + (i % 50));
      const chunkB = `B${i}.`.repeat(1 + ((i * 7) % 300));
      expectedA.push(chunkA);
      expectedB.push(chunkB);
      a.peer.write(chunkA);
      b.peer.write(chunkB);
      if (i % 20 === 0) await sleep(1);
    }
    await until(() => a.events.text === expectedA.join('') && b.events.text === expectedB.join(''), 5_000, 'both streams whole');
  });

  it('says where the peer is, and has an fd until it is closed', async () => {
    const a = await accepted();
    expect(a.end.remoteAddress).toBe('127.0.0.1');
    expect(a.end.remotePort).toBe(a.peer.localPort);
    expect(a.end.fd).toBeGreaterThan(2);
    expect(readSocketOptions(a.end)).not.toBeNull();
    a.end.destroy();
    expect(a.end.fd).toBeNull();
    expect(a.end.destroyed).toBe(true);
    expect(readSocketOptions(a.end)).toBeNull();
    await until(() => a.events.log.includes('close'), 5_000, 'close reported');
  });

  it('end() sends FIN and goes on reading; the connection closes once the peer ends too, and close is reported once', async () => {
    const a = await accepted();
    a.end.resume();
    a.end.write(Buffer.from('reply'));
    a.end.end();
    await until(() => a.atPeer.ended, 5_000, 'FIN at the peer');
    expect(a.atPeer.text()).toBe('reply');
    a.peer.write('after our FIN');
    await until(() => a.events.text === 'after our FIN', 5_000, 'half-closed read');
    expect(a.end.destroyed).toBe(false);
    a.peer.end();
    await until(() => a.events.log.includes('close'), 5_000, 'closed after both FINs');
    await sleep(50);
    expect(a.events.log.filter((e) => e === 'close')).toHaveLength(1);
    expect(a.events.log.slice(-2)).toEqual(['end', 'close']);
  });

  it('write() returns false when the kernel does not take it all, holds one write, and reports drain when it went', async () => {
    const a = await accepted();
    a.peer.pause();
    const chunk = Buffer.alloc(256 * 1024, 7);
    let writes = 0;
    while (a.end.write(chunk) && writes < 1000) writes++;
    expect(writes).toBeLessThan(1000);
    expect(a.end.writableLength).toBeGreaterThan(0);
    // What the end holds is what the last write left, never more than one chunk.
    expect(a.end.writableLength).toBeLessThanOrEqual(chunk.length);
    let flushed = false;
    a.end.whenFlushed(() => (flushed = true));
    await sleep(50);
    expect(flushed).toBe(false);
    a.peer.resume();
    await until(() => a.events.log.includes('drain'), 5_000, 'drain');
    expect(flushed).toBe(true);
    expect(a.end.writableLength).toBe(0);
    await until(() => a.atPeer.length === chunk.length * (writes + 1), 10_000, 'every byte at the peer');
  });

  it("reset() ends the connection with RST: the peer sees ECONNRESET, not a FIN", async () => {
    const a = await accepted();
    a.end.resume();
    a.end.reset();
    await until(() => a.atPeer.error !== null || a.atPeer.ended, 5_000, 'the end at the peer');
    expect(a.atPeer.error?.code).toBe('ECONNRESET');
    expect(a.atPeer.ended).toBe(false);
  });

  it("a peer's reset is an error then close; a failed write keeps the end open for the peer's last bytes", async () => {
    const a = await accepted();
    a.end.resume();
    a.peer.write('last words');
    await until(() => a.events.text === 'last words', 5_000, 'bytes before the reset');
    a.peer.resetAndDestroy();
    await until(() => a.events.log.includes('close'), 5_000, 'close after the reset');
    const errorAt = a.events.log.findIndex((e) => e.startsWith('error:'));
    expect(a.events.log[errorAt]).toBe('error:ECONNRESET');
    expect(errorAt).toBeLessThan(a.events.log.indexOf('close'));

    const b = await accepted();
    b.peer.resetAndDestroy();
    await until(() => tcpState(b.end) === TCP_CLOSE, 5_000, 'the reset arrived in the kernel');
    // Not read yet: the reset is only known through the write that fails.
    expect(b.end.write(Buffer.from('into a reset connection'))).toBe(false);
    await until(() => b.events.log.some((e) => e.startsWith('writeFailed:')), 5_000, 'the failed write reported');
    expect(b.end.destroyed).toBe(false);
    // Its reads go on to the end of what the peer sent (the write took the reset's error: EOF follows); the owner closes then.
    b.end.resume();
    await until(() => b.events.log.includes('end') || b.events.log.some((e) => e.startsWith('error:')), 5_000, 'its reads ran to their end');
    expect(b.events.log).not.toContain('close');
  });

  it('closeSoon() flushes, sends FIN and closes even if the peer never answers', async () => {
    const a = await accepted();
    a.end.write(Buffer.from('bye'));
    a.end.closeSoon();
    await until(() => a.atPeer.ended, 5_000, 'FIN at the peer');
    expect(a.atPeer.text()).toBe('bye');
    await until(() => a.events.log.includes('close'), 5_000, 'closed without the peer ending');
  });

  it('connects to an IP address and fails a refused connect with ECONNREFUSED, once', async () => {
    const pair = await dialledRawPair();
    cleanups.push(pair.close);
    expect(pair.near.remotePort).toBe(pair.far.localPort);
    expect(unacknowledgedBytes(pair.near)).toBe(0);

    const closed = await listen0(() => {});
    const port = closed.port;
    await closed.close();
    const results: Array<NodeJS.ErrnoException | null> = [];
    const end = RawTcp.connect('127.0.0.1', port, (error) => results.push(error));
    cleanups.push(() => end.destroy());
    await until(() => results.length > 0, 5_000, 'the connect result');
    await sleep(50);
    expect(results).toHaveLength(1);
    expect(results[0]?.code).toBe('ECONNREFUSED');
    expect(end.destroyed).toBe(true);
  });

  it('connects over IPv6 where the host has ::1', async (context) => {
    const server = net.createServer();
    const listening = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(0, '::1', () => resolve(true));
    });
    if (!listening) context.skip(); // no IPv6 loopback on this host
    cleanups.push(() => server.close());
    const arrived = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const results: Array<NodeJS.ErrnoException | null> = [];
    const end = RawTcp.connect('::1', (server.address() as net.AddressInfo).port, (error) => results.push(error));
    cleanups.push(() => end.destroy());
    const far = await arrived;
    cleanups.push(() => far.destroy());
    await until(() => results.length > 0, 5_000, 'connected');
    expect(results).toEqual([null]);
    expect(end.remoteAddress).toBe('::1');
  });
});
