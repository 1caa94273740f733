import { createRequire } from 'node:module';
import net from 'node:net';
import { IPPROTO_TCP, readSockoptBytes } from '../../src/net/sockopt.js';
import type { TcpRef } from '../../src/net/splice-end.js';
import { testForks } from './forks.js';
import { once, until } from './wait.js';

/** A TCP server on 127.0.0.1:0; closing it destroys the sockets it accepted. */
export async function listen0(
  onConnection: (socket: net.Socket) => void,
  host = '127.0.0.1',
): Promise<{ server: net.Server; port: number; sockets: Set<net.Socket>; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  // Half-open allowed: a test upstream decides itself when to send its FIN.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onConnection(socket);
  });
  server.listen(0, host);
  await once(server, 'listening', 5_000);
  const port = (server.address() as net.AddressInfo).port;
  return {
    server,
    port,
    sockets,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// KP_TEST_PORT_BASE / KP_TEST_PORT_SPAN let two suites run side by side on one machine
// (separate checkouts) without drawing the same ports.
const PORT_BASE = Number(process.env.KP_TEST_PORT_BASE ?? 20_000);
const PORT_SPAN = Number(process.env.KP_TEST_PORT_SPAN ?? 12_000);
/** Vitest runs test files in parallel workers, each with its own slice of the ports. */
const WORKER_SLOTS = testForks();
const RECENT_PORTS = 512;
const handedOut: number[] = [];
/**
 * Ports fetch() refuses to reach ("fetch failed", cause "bad port": 5060, 6000, 6666, ...,
 * the Fetch standard's port blocking), so the admin and HTTP ports a test fetches are never
 * one of them. The list undici applies, read from the undici package (it does not export it).
 */
const FETCH_BLOCKED_PORTS = (createRequire(import.meta.url)('undici/lib/web/fetch/constants.js') as { badPortsSet: ReadonlySet<string> }).badPortsSet;

/**
 * A free port on 127.0.0.1 (bound, then released): for configs that need a fixed port up
 * front. Picked below the kernel's ephemeral range (ip_local_port_range starts at 32768),
 * so no outgoing connection of a parallel test can take it as its source port between
 * this check and the proxy's bind: a listener on such a port would receive SYNs meant for
 * that connection's mirror and a client's connect could hang.
 *
 * Never a port fetch() refuses (FETCH_BLOCKED_PORTS).
 *
 * The port is free only at the moment of the check: each parallel worker draws from its
 * own slice of the range, and a port handed out recently is not handed out again, so two
 * servers never race for the same port before either has bound it.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const slot = (Number(process.env.VITEST_POOL_ID ?? 1) - 1) % WORKER_SLOTS;
  const sliceSize = Math.floor(PORT_SPAN / WORKER_SLOTS);
  const sliceStart = PORT_BASE + slot * sliceSize;
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = sliceStart + Math.floor(Math.random() * sliceSize);
    if (handedOut.includes(port) || FETCH_BLOCKED_PORTS.has(String(port))) continue;
    const server = net.createServer();
    const bound = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, host, () => resolve(true));
    });
    if (!bound) continue;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    handedOut.push(port);
    if (handedOut.length > RECENT_PORTS) handedOut.shift();
    return port;
  }
  throw new Error(`no free port found in ${sliceStart}-${sliceStart + sliceSize - 1} after 100 attempts`);
}

/**
 * True when nothing listens on host:port (the connect is refused). Only ECONNREFUSED counts:
 * a listener that accepts and at once resets (a proxy whose upstream is down) can make the
 * connect itself fail with ECONNRESET, and that port is listening.
 */
export function refused(port: number, host = '127.0.0.1'): Promise<boolean> {
  const probe = net.connect(port, host);
  return new Promise<boolean>((resolve) => {
    probe.on('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED'));
    probe.on('connect', () => {
      probe.destroy();
      resolve(false);
    });
  });
}

/** A client socket; half-open allowed so a test can keep sending after the peer's FIN. */
export async function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  await connected(socket, 5_000);
  return socket;
}

/**
 * Resolves when the socket connects; rejects with the connect error (ECONNREFUSED...) or
 * after timeoutMs. Later errors are ignored: a reset when a test tears the proxy down is
 * expected, and tests that care listen themselves.
 */
export function connected(socket: net.Socket, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => settle(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    const onConnect = (): void => settle(null);
    const onError = (error: Error): void => settle(error);
    function settle(error: Error | null): void {
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('error', onError);
      socket.on('error', () => {});
      if (!error) return resolve();
      socket.destroy();
      reject(error);
    }
    socket.once('connect', onConnect);
    socket.once('error', onError);
  });
}

/** How a connection that the proxy may end at once ended, and what came back first. */
export interface Outcome {
  readonly data: Buffer;
  /** 'fin', an error code (ECONNRESET...), 'replied' (`replyBytes` arrived) or 'open' (timeoutMs passed). */
  readonly end: string;
}

/**
 * Connects, sends `send` and waits for how the connection ends, without waiting for
 * 'connect' first: when the proxy resets the client at once (its upstream refused, a
 * failed upstream TLS dial) and this process was slower to see its connect complete, the
 * reset is reported as the connect's own error (ECONNRESET). connect() would reject
 * then; here that is the outcome. Stops early once `replyBytes` arrived (0: never).
 */
export function outcomeOf(port: number, send: Buffer | string = '', options: { replyBytes?: number; timeoutMs?: number } = {}): Promise<Outcome> {
  const { replyBytes = 0, timeoutMs = 5_000 } = options;
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => finish('open'), timeoutMs);
    function finish(end: string): void {
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(chunks), end });
    }
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (replyBytes > 0 && size >= replyBytes) finish('replied');
    });
    socket.on('error', (error: NodeJS.ErrnoException) => finish(error.code ?? 'error'));
    socket.on('end', () => finish('fin'));
    if (send.length > 0) socket.write(send);
  });
}

/** Reads until the socket ends or `length` bytes arrived, bounded by timeoutMs. */
export function readBytes(socket: net.Socket, length: number, timeoutMs = 5_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => finish(new Error(`read ${size}/${length} bytes before timeout`)), timeoutMs);
    function onData(chunk: Buffer): void {
      chunks.push(chunk);
      size += chunk.length;
      if (size >= length) finish();
    }
    function finish(error?: Error): void {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      if (error) reject(error);
      else resolve(Buffer.concat(chunks));
    }
    function onEnd(): void {
      finish();
    }
    socket.on('data', onData);
    socket.on('end', onEnd);
  });
}

/**
 * A relay that delays every chunk from the upstream by `delayMs` (order kept): makes a
 * heartbeat's round trip long enough for a client write to land inside it. With
 * `towardUpstreamMs` the other direction is delayed too (a path with latency both ways).
 */
export async function delayingRelay(targetPort: number, delayMs: number, towardUpstreamMs = 0): Promise<{ port: number; close(): Promise<void> }> {
  const relay = await listen0((inbound) => {
    const outbound = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true });
    outbound.on('error', () => inbound.destroy());
    inbound.on('error', () => outbound.destroy());
    if (towardUpstreamMs > 0) {
      inbound.on('data', (c: Buffer) => setTimeout(() => outbound.writable && outbound.write(c), towardUpstreamMs));
      inbound.on('end', () => setTimeout(() => outbound.end(), towardUpstreamMs));
    } else {
      inbound.on('data', (c: Buffer) => outbound.write(c));
      inbound.on('end', () => outbound.end());
    }
    outbound.on('data', (c: Buffer) => setTimeout(() => inbound.writable && inbound.write(c), delayMs));
    outbound.on('end', () => setTimeout(() => inbound.end(), delayMs));
    inbound.on('close', () => outbound.destroy());
  });
  return { port: relay.port, close: relay.close };
}

/**
 * A listener that does not accept, with its accept queue already full: Linux then drops
 * further SYNs, so a connect to it hangs (a real connect timeout without leaving loopback)
 * until acceptNow(), after which the connect completes on its next SYN retransmission
 * (1 s, 3 s, 7 s after the first) and every connection it accepts is echoed.
 */
export async function fullBacklogListener(): Promise<{ port: number; acceptNow(): void; stop(): void }> {
  const { spawn } = await import('node:child_process');
  const child = spawn(
    'python3',
    [
      '-c',
      [
        'import os, socket, sys, threading',
        // Bounded: gone after 120 s whatever happens to the test.
        'threading.Timer(120, lambda: os._exit(0)).start()',
        's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)',
        'print(s.getsockname()[1], flush=True)',
        // A test that never says "accept" (stdin closed) leaves the queue full until exit.
        'if sys.stdin.readline().strip() != "accept": os._exit(0)',
        'def echo(c):',
        '    while True:',
        '        d = c.recv(65536)',
        '        if not d: break',
        '        c.sendall(d)',
        '    c.close()',
        'while True:',
        '    c, _ = s.accept()',
        '    threading.Thread(target=echo, args=(c,), daemon=True).start()',
      ].join('\n'),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const port = Number((await once<Buffer>(child.stdout!, 'data', 5_000)).toString().trim());
  const fillers: net.Socket[] = [];
  // Fill the queue: connects that complete go into the (unaccepted) queue until it is full.
  for (let i = 0; i < 4; i++) {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    fillers.push(socket);
  }
  // Full once a connect has completed into it (backlog 0 holds one): waited for, not assumed after a sleep.
  await until(() => fillers.some((socket) => !socket.connecting), 5_000, 'the accept queue full');
  return {
    port,
    acceptNow: () => child.stdin!.write('accept\n'),
    stop: () => {
      for (const socket of fillers) socket.destroy();
      child.kill('SIGKILL');
    },
  };
}

const TCP_INFO = 11;
/** tcpi_state of a closed connection (include/net/tcp_states.h): what a received RST leaves. */
export const TCP_CLOSE = 7;

/**
 * The kernel's TCP state of a socket (tcpi_state, the first byte of TCP_INFO), or null where it
 * cannot be read: tells that a peer's RST has arrived without reading the socket.
 */
export function tcpState(socket: TcpRef): number | null {
  const info = new Uint8Array(8);
  return readSockoptBytes(socket, IPPROTO_TCP, TCP_INFO, info) === null ? null : info[0]!;
}
