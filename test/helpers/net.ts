import net from 'node:net';
import { once } from './wait.js';

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

/** A free port on 127.0.0.1 (bound, then released): for configs that need a fixed port up front. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = net.createServer();
  server.listen(0, host);
  await once(server, 'listening', 5_000);
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A client socket; half-open allowed so a test can keep sending after the peer's FIN. */
export async function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  await once(socket, 'connect', 5_000);
  return socket;
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
