import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { resettableTls } from '../../src/net/tls-socket.js';
import { makePki } from '../helpers/pki.js';
import { afterEach, describe, expect, it } from 'vitest';
import { canPauseAccepts, pauseAccepts, resumeAccepts } from '../../src/net/accept-pause.js';
import { forgetReadableError, handleFd, interceptAccepts, resetOrDestroy, socketOnHandle } from '../../src/net/internals.js';
import { listen0 } from '../helpers/net.js';
import { once, sleep, until } from '../helpers/wait.js';

// Every Node internal the proxy relies on (src/net/internals.ts, and libuv's epoll set behind
// src/net/accept-pause.ts), checked on the Node that runs the suite: CI runs it on 20, 24 and 26, so a Node that drops or changes one fails
// here, by name, before it breaks the data path. Real sockets on 127.0.0.1.

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const undo of cleanup.splice(0)) undo();
});

async function connected(port: number): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  cleanup.push(() => socket.destroy());
  await once(socket, 'connect', 5_000);
  return socket;
}

describe(`Node internals on ${process.version}`, () => {
  it('handleFd: the fd of a listening server and of a connected socket; null while connecting and once destroyed', async () => {
    const server = await listen0(() => {});
    cleanup.push(() => void server.close());
    expect(handleFd(server.server)).toBeGreaterThan(2);
    const connecting = net.connect(server.port, '127.0.0.1');
    connecting.on('error', () => {});
    expect(handleFd(connecting)).toBeNull();
    await once(connecting, 'connect', 5_000);
    const fd = handleFd(connecting);
    expect(fd).toBeGreaterThan(2);
    expect(fd).not.toBe(handleFd(server.server));
    connecting.destroy();
    expect(handleFd(connecting)).toBeNull();
  });

  it('interceptAccepts + socketOnHandle: accepted sockets built with our options (onread, pauseOnCreate)', async () => {
    const server = net.createServer();
    cleanup.push(() => server.close());
    server.on('connection', () => {
      throw new Error('the connection event must not fire once accepts are intercepted');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening', 5_000);
    const reads: string[] = [];
    const built = new Promise<net.Socket>((resolve) => {
      expect(
        interceptAccepts(server, (errno, handle) => {
          expect(errno).toBe(0);
          const buffer = Buffer.alloc(1024);
          const onread = { buffer, callback: (bytes: number, into: Buffer) => void reads.push(into.toString('latin1', 0, bytes)) };
          const options = { allowHalfOpen: true, pauseOnCreate: true, onread };
          const socket = socketOnHandle(handle, options);
          cleanup.push(() => socket.destroy());
          resolve(socket);
        }),
      ).toBe(true);
    });
    const client = await connected((server.address() as net.AddressInfo).port);
    const accepted = await built;
    client.write('hello');
    await sleep(50);
    expect(reads, 'pauseOnCreate: nothing is read before resume()').toEqual([]);
    accepted.resume();
    await until(() => reads.join('') === 'hello', 5_000, 'the client bytes');
    expect(accepted.remotePort).toBe(client.localPort);
    accepted.write('back');
    await once(client, 'data', 5_000);
  });

  it('onread: the buffer function runs right after each read callback of the same socket', async () => {
    const server = await listen0((socket) => {
      for (let i = 0; i < 20; i++) setTimeout(() => socket.write(`chunk ${i};`), i * 5);
    });
    cleanup.push(() => void server.close());
    const events: string[] = [];
    const buffer = Buffer.alloc(64 * 1024);
    let received = '';
    const socket = net.connect({
      port: server.port,
      // @types/node types `onread.callback` as returning boolean; node ignores anything but false.
      host: '127.0.0.1',
      onread: {
        buffer: () => {
          events.push('buffer');
          return buffer;
        },
        callback: (bytes: number): boolean => {
          events.push('callback');
          received += buffer.toString('latin1', 0, bytes);
          return true;
        },
      },
    });
    socket.on('error', () => {});
    cleanup.push(() => socket.destroy());
    await until(() => received.endsWith('chunk 19;'), 5_000, 'all chunks');
    expect(events[0]).toBe('buffer');
    events.forEach((event, i) => {
      if (event === 'callback') expect(events[i + 1], `event ${i + 1} follows callback ${i}`).toBe('buffer');
    });
  });

  it('forgetReadableError: the readable side keeps the state it clears', async () => {
    const server = await listen0(() => {});
    cleanup.push(() => void server.close());
    const socket = await connected(server.port);
    const state = (socket as unknown as { _readableState?: Record<string, unknown> })._readableState;
    expect(state).toBeDefined();
    expect('errored' in state!).toBe(true);
    state!.errored = new Error('write failed');
    forgetReadableError(socket);
    expect(state!.errored).toBeNull();
  });

  it('pauseAccepts/resumeAccepts: a paused listener leaves a client queued in its backlog, unaccepted; resumed, it accepts it', async () => {
    // The fd budget pauses accepts this way (src/fd-budget.ts); CI's Node lines run on Linux x64.
    const supported = process.platform === 'linux' && ['x64', 'arm64'].includes(process.arch);
    expect(canPauseAccepts(), `koffi and uv_backend_fd on ${process.platform}/${process.arch}`).toBe(supported);
    const accepted: net.Socket[] = [];
    const server = await listen0((socket) => {
      accepted.push(socket);
      socket.on('data', (chunk: Buffer) => socket.write(chunk));
    });
    cleanup.push(() => void server.close());
    // libuv adds a new listener to its epoll set at a later poll (one setImmediate is not always
    // enough): an accepted first client proves it is there, as a serving route's listener is.
    await connected(server.port);
    await until(() => accepted.length === 1, 5_000, 'the first client accepted');
    const fd = pauseAccepts(server.server);
    if (!supported) {
      expect(fd, 'unsupported here: pausing reports null and the caller only counts').toBeNull();
      return;
    }
    expect(fd).toBe(handleFd(server.server));
    // The kernel completes the handshake for the paused listener: the client waits, it is not refused.
    const queued = await connected(server.port);
    queued.write('queued;');
    // A control listener on the same loop: once its client (connected after the queued one) is
    // accepted, the loop has polled since the queued client became acceptable.
    const control = await listen0(() => {});
    cleanup.push(() => void control.close());
    await connected(control.port);
    await until(() => control.sockets.size === 1, 5_000, 'the control listener accepts');
    await sleep(20);
    expect(accepted, 'no accept while paused').toHaveLength(1);

    expect(resumeAccepts(server.server, fd!)).toBe(true);
    await until(() => accepted.length === 2, 5_000, 'the queued client accepted after resume');
    await once(queued, 'data', 5_000);
    expect(accepted[1]!.remotePort).toBe(queued.localPort);
    // Resuming a listener that is registered already is harmless (EEXIST); a paused one closes cleanly.
    expect(resumeAccepts(server.server, fd!)).toBe(true);
    expect(pauseAccepts(server.server)).toBe(fd);
    await server.close();
    expect(resumeAccepts(server.server, fd!)).toBe(false);
  });

  it('resetOrDestroy: RST on a connected socket, a plain destroy on one still connecting', async () => {
    let accepted: net.Socket | undefined;
    const server = await listen0((socket) => (accepted = socket));
    cleanup.push(() => void server.close());
    const socket = await connected(server.port);
    await until(() => accepted, 5_000, 'the accepted socket');
    const peerError = new Promise<NodeJS.ErrnoException>((resolve) => accepted!.once('error', resolve));
    resetOrDestroy(socket);
    expect(socket.destroyed).toBe(true);
    expect((await peerError).code).toBe('ECONNRESET');

    const connecting = net.connect(server.port, '127.0.0.1');
    connecting.on('error', () => {});
    expect(() => resetOrDestroy(connecting)).not.toThrow();
    expect(connecting.destroyed).toBe(true);
  });

  it("resetOrDestroy while a FIN is on its way: closed, its 'close' told and its fd freed (node's resetAndDestroy leaks both then)", async () => {
    const server = await listen0((socket) => socket.on('error', () => {}));
    cleanup.push(() => void server.close());
    const fdsBefore = readdirSync('/proc/self/fd').length;
    const TRIES = 20;
    let closes = 0;
    const errors: string[] = [];
    // Right after end(), and one tick later: libuv's shutdown is then in flight.
    for (let i = 0; i < TRIES; i++) {
      const socket = await connected(server.port);
      socket.on('close', () => closes++);
      socket.on('error', (error: NodeJS.ErrnoException) => errors.push(`${error.syscall} ${error.code}`));
      socket.end();
      if (i % 2) await new Promise((resolve) => process.nextTick(resolve));
      resetOrDestroy(socket);
    }
    await until(() => closes === TRIES, 5_000, `${TRIES} closes`);
    expect(errors).toEqual([]);
    await until(() => readdirSync('/proc/self/fd').length <= fdsBefore + TRIES, 5_000, 'the client fds freed (the accepted ones may still be open)');
    await server.close();
    await until(() => readdirSync('/proc/self/fd').length <= fdsBefore, 5_000, 'every fd freed');
  });

  it('a resettable TLS socket ended and then reset: closed, with its TCP socket, and told', async () => {
    const pki = makePki();
    cleanup.push(() => pki.cleanup());
    const server = tls.createServer({ cert: readFileSync(pki.server.cert), key: readFileSync(pki.server.key) }, (socket) => socket.on('error', () => {}));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => void server.close());
    const port = (server.address() as net.AddressInfo).port;
    for (const wait of [false, true]) {
      const raw = await connected(port);
      const secure = resettableTls(tls.connect({ socket: raw, rejectUnauthorized: false }), raw);
      secure.on('error', () => {});
      await once(secure, 'secureConnect', 5_000);
      const closed = new Promise((resolve) => raw.once('close', resolve));
      const secureClosed = new Promise((resolve) => secure.once('close', resolve));
      secure.end();
      if (wait) await new Promise((resolve) => process.nextTick(resolve));
      resetOrDestroy(secure);
      await Promise.all([closed, secureClosed]);
      expect(raw.destroyed && secure.destroyed).toBe(true);
    }
  });
});
