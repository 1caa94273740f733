import net from 'node:net';
import type { ProxyConfig } from '../config/schema.js';
import { ProxyError } from '../errors.js';
import { formatHostPort } from '../config/hostport.js';

// `listen: host:0` asks for any free port. With workers every process must bind the same
// one, and a worker that replaces a dead one must find it again: the primary picks the
// port once (the kernel's choice, bound and let go at once) and every worker binds that.
// The short window between the pick and the workers' bind is the price; port 0 is for
// tests and local tools, where nothing else races for a fresh ephemeral port.

export type Pins = Readonly<Record<string, number>>;

/**
 * The ports to bind for `next`'s port-0 routes: a route whose listen the previous config
 * had the same (same name, host and port 0) keeps its port, so a reload does not move it;
 * the others get a fresh one.
 */
export async function pinPorts(next: ProxyConfig, previous: { config: ProxyConfig; pins: Pins } | null): Promise<Pins> {
  const pins: Record<string, number> = {};
  for (const route of next.routes) {
    if (route.listen.port !== 0) continue;
    const before = previous?.config.routes.find((r) => r.name === route.name);
    const kept = before && before.listen.host === route.listen.host && before.listen.port === 0 ? previous?.pins[route.name] : undefined;
    pins[route.name] = kept ?? (await freePort(route.listen.host).catch((error: NodeJS.ErrnoException) => {
      throw new ProxyError('LISTEN_FAILED', 'proxy', `${route.name} on ${formatHostPort(route.listen.host, 0)}: ${error.code ?? error.message}`, { cause: error });
    }));
  }
  return pins;
}

/** `config` as a worker runs it: the pinned ports in place of 0, and no admin listener (the primary serves it). */
export function workerConfig(config: ProxyConfig, pins: Pins): ProxyConfig {
  return {
    ...config,
    admin: { listen: null },
    routes: config.routes.map((route) => {
      const port = route.listen.port === 0 ? pins[route.name] : undefined;
      return port === undefined ? route : { ...route, listen: { ...route.listen, port } };
    }),
  };
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen({ host, port: 0, exclusive: true }, () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
