import type net from 'node:net';
import type { HostPort } from '../config/schema.js';
import { ProxyError } from '../errors.js';

/** Binds a server; rejects with LISTEN_FAILED naming the route and address. */
export function listenOn(server: net.Server, address: HostPort, owner: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      reject(new ProxyError('LISTEN_FAILED', 'proxy', `${owner} on ${formatAddress(address.host, address.port)}: ${error.code ?? error.message}`, { cause: error }));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    // A deep backlog absorbs connection bursts (the kernel caps it at somaxconn).
    server.listen({ host: address.host, port: address.port, backlog: 4096 });
  });
}

export function formatAddress(host: string | undefined, port: number | undefined): string {
  if (!host) return 'unknown';
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
