import net from 'node:net';
import { listen0 } from './net.js';

// A middlebox you can run without root: a TCP relay that forgets a flow after it has been
// idle (no payload either way) for `idleTimeoutMs`, as a conntrack firewall or a cloud
// load balancer does. What happens to a forgotten flow:
//   drop:  nothing is forwarded any more and nothing is answered (a firewall that dropped
//          the conntrack entry: the sender sees silence);
//   reset: the next bytes from either side are answered with a reset, to both sides
//          (a load balancer such as AWS NLB resets a flow it no longer knows).
// Its own sweep runs every 50 ms, so a flow is forgotten within 50 ms of its timeout.

export type ForgetMode = 'drop' | 'reset';

export interface IdleMiddlebox {
  readonly port: number;
  /** Flows forgotten so far. */
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
      if (flow.forgotten) {
        if (mode === 'reset') {
          inbound.resetAndDestroy();
          outbound.resetAndDestroy();
        }
        return; // drop: swallowed, never answered
      }
      flow.lastPayloadAt = Date.now();
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    };
    inbound.on('data', pass(inbound, outbound));
    outbound.on('data', pass(outbound, inbound));
    inbound.on('end', () => !flow.forgotten && outbound.end());
    outbound.on('end', () => !flow.forgotten && inbound.end());
  });
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const flow of flows) {
      if (!flow.forgotten && now - flow.lastPayloadAt >= timeoutMs) {
        flow.forgotten = true;
        forgotten++;
      }
    }
  }, 50);
  return {
    port: relay.port,
    forgotten: () => forgotten,
    flows: () => total,
    setIdleTimeout: (ms) => (timeoutMs = ms),
    close: async () => {
      clearInterval(sweep);
      for (const flow of flows) {
        flow.inbound.destroy();
        flow.outbound.destroy();
      }
      await relay.close();
    },
  };
}
