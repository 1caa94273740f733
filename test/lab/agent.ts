import { nodeInNs, type JsonLine, type NsNode } from './netns.js';

// A small TCP/HTTP agent run inside a lab namespace (nodeInNs): it plays the echo server or
// the unmodified client. Commands arrive on stdin as JSON lines { id, op, ... }; every answer
// and every socket event goes back on stdout as a JSON line with a timestamp `t`.
// The client sockets set no keepalive and no timeout: they behave like a legacy app.

const AGENT_SOURCE = String.raw`
import net from 'node:net';

const sockets = new Map();
let nextConn = 1;

function watch(socket) {
  const conn = nextConn++;
  sockets.set(conn, socket);
  socket.setEncoding('utf8');
  socket.on('data', (data) => emit({ event: 'data', conn, data }));
  socket.on('end', () => emit({ event: 'end', conn }));
  socket.on('error', (error) => emit({ event: 'error', conn, code: error.code, message: error.message }));
  socket.on('close', (hadError) => {
    sockets.delete(conn);
    emit({ event: 'close', conn, hadError });
  });
  return conn;
}

function socketOf(conn) {
  const socket = sockets.get(conn);
  if (!socket) throw new Error('no connection ' + conn);
  return socket;
}

const ops = {
  // An echo server: every accepted connection gets its bytes back.
  async listen({ host, port = 0 }) {
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.pipe(socket);
      emit({ event: 'accepted', remote: socket.remoteAddress + ':' + socket.remotePort });
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, resolve);
    });
    return { port: server.address().port };
  },
  async connect({ host, port, timeoutMs = 5000 }) {
    const socket = net.connect({ host, port });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error('connect timeout'));
      }, timeoutMs);
      socket.once('connect', () => { clearTimeout(timer); resolve(); });
      socket.once('error', (error) => { clearTimeout(timer); reject(error); });
    });
    const conn = watch(socket);
    return { conn, localPort: socket.localPort };
  },
  // sentAt: taken before the bytes leave, so no activity they cause can be older.
  write({ conn, data }) {
    const socket = socketOf(conn);
    const sentAt = Date.now();
    socket.write(data);
    return { sentAt };
  },
  destroy({ conn }) {
    sockets.get(conn)?.destroy();
    return {};
  },
  async fetch({ url, timeoutMs = 5000 }) {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: response.status, body: await response.text() };
  },
};
`;

export interface Agent {
  readonly node: NsNode;
  /** Starts an echo server; resolves with its port. */
  listenEcho(host: string, port?: number): Promise<number>;
  /** Connects (no keepalive, no timeout, like a legacy client); resolves with the connection id. */
  connect(host: string, port: number, timeoutMs?: number): Promise<number>;
  /** The local (source) port of a connection this agent opened. */
  localPort(conn: number): number;
  write(conn: number, data: string): Promise<void>;
  destroy(conn: number): Promise<void>;
  /**
   * Writes `text` and waits for it to come back; rejects when it does not within timeoutMs.
   * Resolves with the agent's own clock just before the write: a silence that follows starts
   * no earlier, however late the echo's line reaches this process.
   */
  roundTrip(conn: number, text: string, timeoutMs: number): Promise<number>;
  /** Resolves with the first end/error/close event of `conn` from `since` on, or null after timeoutMs. */
  waitClosed(conn: number, timeoutMs: number, since?: number): Promise<JsonLine | null>;
  fetch(url: string, timeoutMs?: number): Promise<{ status: number; body: string }>;
  stop(): Promise<void>;
}

export async function startAgent(ns: string): Promise<Agent> {
  const node = await nodeInNs(ns, AGENT_SOURCE);
  const localPorts = new Map<number, number>();
  return {
    node,
    async listenEcho(host, port = 0) {
      return (await node.request({ op: 'listen', host, port })).port as number;
    },
    async connect(host, port, timeoutMs = 5_000) {
      const reply = await node.request({ op: 'connect', host, port, timeoutMs }, timeoutMs + 2_000);
      localPorts.set(reply.conn as number, reply.localPort as number);
      return reply.conn as number;
    },
    localPort(conn) {
      const port = localPorts.get(conn);
      if (port === undefined) throw new Error(`no connection ${conn}`);
      return port;
    },
    async write(conn, data) {
      await node.request({ op: 'write', conn, data });
    },
    async destroy(conn) {
      await node.request({ op: 'destroy', conn });
    },
    async roundTrip(conn, text, timeoutMs) {
      const since = node.mark();
      const { sentAt } = await node.request({ op: 'write', conn, data: text });
      // Collect this connection's data from `since` until the whole text is back.
      let received = '';
      await node.waitFor(
        (event) => {
          if (event.conn !== conn) return false;
          if (event.event === 'data') received += String(event.data);
          else if (event.event === 'error' || event.event === 'end' || event.event === 'close') {
            throw new Error(`connection ${conn} ${String(event.event)} (${String(event.code ?? '')}) before the echo`);
          }
          return received.includes(text);
        },
        timeoutMs,
        since,
      );
      return sentAt as number;
    },
    async waitClosed(conn, timeoutMs, since = 0) {
      try {
        return await node.waitFor(
          (event) => event.conn === conn && ['end', 'error', 'close'].includes(String(event.event)),
          timeoutMs,
          since,
        );
      } catch {
        return null;
      }
    },
    async fetch(url, timeoutMs = 5_000) {
      const reply = await node.request({ op: 'fetch', url, timeoutMs }, timeoutMs + 2_000);
      return { status: reply.status as number, body: reply.body as string };
    },
    stop: () => node.stop(),
  };
}
