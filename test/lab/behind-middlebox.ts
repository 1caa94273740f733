import { makePki, type Pki } from '../helpers/pki.js';
import { startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { startAgent } from './agent.js';
import type { DbKind } from './db-client.js';
import { installFirewall, type Firewall } from './firewall.js';
import { startLoadBalancer, type LoadBalancer } from './lb.js';
import { ADDRESSES, createLab, inNs, type Lab } from './netns.js';

// The lab's one fixture: servers in the server namespace behind a middlebox in the middle one,
// the client namespace free for the client and keepalive-proxy as its sidecar:
//   balancer: HAProxy mode tcp with an idle timeout, one frontend per server (no forwarding:
//             the LB is the only way through);
//   firewall: nftables with a short conntrack timeout for established flows (forwarding);
//   router:   forwarding only, with netem delay when the kernel has it.
// A server is a database (redis, postgres, mysql; TLS-only with `tlsOnly`, certificates from a
// fresh PKI) or an echo agent; serve() returns the address the proxy dials to reach it.
// The fixture owns everything it starts: destroy() stops it in reverse order and removes the
// namespaces and the PKI, also after a set-up that failed half-way.

export type ServerKind = DbKind | 'echo';

export interface Served {
  /** host:port the client side dials: the LB frontend, or the server itself behind a firewall or router. */
  readonly upstream: string;
  /** The server's own port on ADDRESSES.server. */
  readonly port: number;
}

export interface BehindMiddlebox {
  readonly lab: Lab;
  /** The certificates of TLS-only servers (with `tlsOnly`), else null. */
  readonly pki: Pki | null;
  /** Starts a server of `kind` behind the middlebox; a balancer listens for it on `frontPort`. */
  serve(kind: ServerKind, frontPort?: number): Promise<Served>;
  /** Puts the middlebox in front of a port the caller serves in the server namespace; returns the upstream. */
  front(serverPort: number, frontPort?: number): Promise<string>;
  /** The middlebox's state or output, for reportFailure. */
  readonly outputs: Record<string, () => string | Promise<string>>;
  /** Undoes what a test switched on in the middlebox (a firewall's blackhole). */
  reset(): Promise<void>;
  /** Stops every server and balancer, removes the namespaces and the PKI; safe to call twice. */
  destroy(): Promise<void>;
}

export type BehindFirewall = BehindMiddlebox & { readonly firewall: Firewall };
/** `latency` says what the router adds: netem delay each way, or why there is none. */
export type BehindRouter = BehindMiddlebox & { readonly latency: string };

interface Common {
  /** TLS-only database servers. */
  readonly tlsOnly?: boolean;
}

export function behindBalancer(options: Common & { readonly idleTimeoutMs: number }): Promise<BehindMiddlebox> {
  const balancers: LoadBalancer[] = [];
  return build({ forwarding: false, tlsOnly: options.tlsOnly }, async (lab, owned) => ({
    reset: nothingToReset,
    outputs: { 'haproxy output': () => balancers.map((lb) => lb.output()).join('\n') },
    async front(serverPort, frontPort) {
      if (frontPort === undefined) throw new Error('a balancer needs a frontend port');
      const lb = await startLoadBalancer(lab.middle, {
        listenHost: ADDRESSES.middleClientSide,
        listenPort: frontPort,
        upstreamHost: ADDRESSES.server,
        upstreamPort: serverPort,
        idleTimeoutMs: options.idleTimeoutMs,
      });
      balancers.push(lb);
      owned.push(() => lb.stop());
      return `${ADDRESSES.middleClientSide}:${frontPort}`;
    },
  }));
}

export function behindFirewall(options: Common & { readonly establishedTimeoutSeconds: number }): Promise<BehindFirewall> {
  return build({ forwarding: true, tlsOnly: options.tlsOnly }, async (lab) => {
    const firewall = await installFirewall(lab.middle, { establishedTimeoutSeconds: options.establishedTimeoutSeconds });
    return { firewall, outputs: { firewall: () => firewall.ruleset() }, front: direct, reset: () => firewall.blackhole(false) };
  });
}

export function behindRouter(options: Common & { readonly netemDelayMs: number }): Promise<BehindRouter> {
  return build({ forwarding: true, tlsOnly: options.tlsOnly }, async (lab) => ({
    latency: await addNetemDelay(lab.middle, options.netemDelayMs),
    reset: nothingToReset,
    outputs: {},
    front: direct,
  }));
}

const nothingToReset = async (): Promise<void> => {};

/** Behind a firewall or router the server's own address is the way through. */
const direct = async (serverPort: number): Promise<string> => `${ADDRESSES.server}:${serverPort}`;

async function addNetemDelay(router: string, delayMs: number): Promise<string> {
  try {
    for (const device of ['labc', 'labs']) {
      await inNs(router, 'tc', ['qdisc', 'add', 'dev', device, 'root', 'netem', 'delay', `${delayMs}ms`]);
    }
    return `netem ${delayMs} ms each way on the router (round trip +${2 * delayMs} ms)`;
  } catch (error) {
    const lines = String((error as Error).message).split('\n').map((line) => line.trim()).filter(Boolean);
    return `no added latency: tc netem failed here (${lines.find((line) => line.startsWith('Error')) ?? lines.at(-1)})`;
  }
}

type Stop = () => void | Promise<void>;
type Middle = Pick<BehindMiddlebox, 'front' | 'outputs' | 'reset'>;

/**
 * The namespaces, the PKI and serve() around the middle `setUp` builds. Whatever was started is
 * stopped, newest first, by destroy(), or at once when the set-up throws.
 */
async function build<M extends Middle>(
  options: { readonly forwarding: boolean; readonly tlsOnly?: boolean },
  setUp: (lab: Lab, owned: Stop[]) => Promise<M>,
): Promise<BehindMiddlebox & M> {
  const owned: Stop[] = [];
  const destroy = async (): Promise<void> => {
    for (const stop of owned.splice(0).reverse()) await stop();
  };
  try {
    const pki = options.tlsOnly ? makePki() : null;
    if (pki) owned.push(() => pki.cleanup());
    const lab = await createLab({ forwarding: options.forwarding });
    owned.push(() => lab.destroy());
    const middle = await setUp(lab, owned);
    const serve = async (kind: ServerKind, frontPort?: number): Promise<Served> => {
      const server = await startServer(kind, lab.server, pki);
      owned.push(server.stop);
      return { upstream: await middle.front(server.port, frontPort), port: server.port };
    };
    return { ...middle, lab, pki, serve, destroy };
  } catch (error) {
    await destroy();
    throw error;
  }
}

async function startServer(kind: ServerKind, ns: string, pki: Pki | null): Promise<{ port: number; stop: Stop }> {
  if (kind === 'echo') {
    const agent = await startAgent(ns);
    try {
      return { port: await agent.listenEcho(ADDRESSES.server), stop: () => agent.stop() };
    } catch (error) {
      await agent.stop();
      throw error;
    }
  }
  const tlsOnly = pki ? { cert: pki.server.cert, key: pki.server.key, ca: pki.ca } : undefined;
  const start: Record<DbKind, typeof startRedis> = { redis: startRedis, postgres: startPostgres, mysql: startMariadb };
  const server: RunningServer = await start[kind]({ netns: ns, bind: ADDRESSES.server, tlsOnly });
  return { port: server.port, stop: () => server.stop() };
}
