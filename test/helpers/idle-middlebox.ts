import net from 'node:net';
import { readTcpInfo } from '../../src/net/tcp-info.js';
import { listen0 } from './net.js';

// A middlebox you can run without root: a TCP relay that forgets a flow after it has been
// idle (no payload either way) for `idleTimeoutMs`, as a conntrack firewall or a cloud
// load balancer does. What happens to a forgotten flow:
//   drop:  nothing is forwarded any more and nothing is answered (a firewall that dropped
//          the conntrack entry: the sender sees silence);
//   reset: the next bytes from either side are answered with a reset, to both sides
//          (a load balancer such as AWS NLB resets a flow it no longer knows).
// A flow is judged when something arrives on it, at the time the kernel got it (TCP_INFO's
// last receive, less one jiffy): this process, on a loaded machine, may read the bytes much
// later, and a flow must not be forgotten for the time they waited here. So a flow is
// forgotten within about 10 ms of its timeout, never before it.

export type ForgetMode = 'drop' | 'reset';

export interface IdleMiddlebox {
  readonly port: number;
  /** Flows forgotten so far (judged when something reached them past the timeout). */
  readonly forgotten: () => number;
  /** Flows relayed so far. */
  readonly flows: () => number;
  setIdleTimeout(ms: number): void;
  close(): Promise<void>;
}

interface Flow {
  readonly inbound: net.Socket;
  readonly outbound: net.Socket;
  lastPayloadAt: number;
  forgotten: boolean;
}

export async function idleMiddlebox(targetPort: number, idleTimeoutMs: number, mode: ForgetMode): Promise<IdleMiddlebox> {
  const flows = new Set<Flow>();
  let timeoutMs = idleTimeoutMs;
  let forgotten = 0;
  let total = 0;
  const relay = await listen0((inbound) => {
    const outbound = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true });
    const flow: Flow = { inbound, outbound, lastPayloadAt: Date.now(), forgotten: false };
    flows.add(flow);
    total++;
    const end = (): void => {
      flows.delete(flow);
      inbound.destroy();
      outbound.destroy();
    };
    outbound.on('error', end);
    inbound.on('error', end);
    inbound.on('close', end);
    outbound.on('close', end);
    const pass = (from: net.Socket, to: net.Socket) => (chunk: Buffer) => {
      if (forgets(flow, arrivedAt(from))) {
        if (mode === 'reset') {
          inbound.resetAndDestroy();
          outbound.resetAndDestroy();
        }
        return; // drop: swallowed, never answered
      }
      flow.lastPayloadAt = Date.now(); // as it leaves here: no sooner than the other side can get it
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    };
    inbound.on('data', pass(inbound, outbound));
    outbound.on('data', pass(outbound, inbound));
    inbound.on('end', () => !forgets(flow, Date.now()) && outbound.end());
    outbound.on('end', () => !forgets(flow, Date.now()) && inbound.end());
  });
  /** Whether the flow is forgotten when something reaches it at `at`: once forgotten, for ever. */
  const forgets = (flow: Flow, at: number): boolean => {
    if (!flow.forgotten && at - flow.lastPayloadAt >= timeoutMs) {
      flow.forgotten = true;
      forgotten++;
    }
    return flow.forgotten;
  };
  return {
    port: relay.port,
    forgotten: () => forgotten,
    flows: () => total,
    setIdleTimeout: (ms) => (timeoutMs = ms),
    close: async () => {
      for (const flow of flows) {
        flow.inbound.destroy();
        flow.outbound.destroy();
      }
      await relay.close();
    },
  };
}

/** TCP_INFO's last-receive age is counted in jiffies: up to one (10 ms at HZ=100) may be missing. */
const KERNEL_AGE_SLACK_MS = 10;

/** The earliest the kernel can have got the bytes just read from `socket` (Date.now() scale). */
function arrivedAt(socket: net.Socket): number {
  const info = readTcpInfo(socket);
  if (info === null) throw new Error('the idle middlebox needs TCP_INFO (Linux)');
  return Date.now() - info.lastDataRecvMs - KERNEL_AGE_SLACK_MS;
}
