import net from 'node:net';
import { Clock } from '../../src/clock.js';
import type { HeartbeatConfig } from '../../src/config/schema.js';
import { HeartbeatSchedule } from '../../src/heartbeat/scheduler.js';
import type { HeartbeatCodec, Tracker } from '../../src/protocols/types.js';
import { listen0 } from './net.js';
import { until } from './wait.js';

// A test-only relay that runs a heartbeat codec between a real client and a real server,
// as the proxy's engine does (client bytes held while a probe is out, probe replies cut),
// but probing as often as the codec allows instead of after a silence: the harshest
// schedule for a codec. Whether a probe may go is the proxy's own schedule's call
// (src/heartbeat/scheduler.ts) with no interval, no jitter and no transaction or idle
// limit. It records every chunk each way, which is how the unit tests' fixtures were
// captured from real servers.

/** The proxy's schedule at its harshest: due at once whenever the codec is quiet, never timed out. */
const AS_OFTEN_AS_ALLOWED: HeartbeatConfig = { everyMs: 0, timeoutMs: Infinity, jitter: 0, inTransaction: true, maxIdleMs: 0 };

export interface RecordedEvent {
  from: 'client' | 'server' | 'probe' | 'probe-reply';
  hex: string;
  /** For server chunks that arrived while a probe was out: what went on to the client. */
  forwarded?: string;
}

export interface RelayedConnection {
  readonly tracker: Tracker;
  readonly events: RecordedEvent[];
  probesSent: number;
  probesAnswered: number;
  /** Whether the client has sent anything (probes before that only for probesBeforeClient codecs). */
  clientSpoke: boolean;
  /** Both sockets are gone (a probe may have been out when the server closed). */
  closed: boolean;
  probe(): boolean;
}

export interface CodecRelay {
  readonly port: number;
  readonly connections: RelayedConnection[];
  /** Probe every quiet connection once and wait (bounded) for the answers. */
  probeAll(timeoutMs?: number): Promise<number>;
  close(): Promise<void>;
}

export async function startCodecRelay(
  codec: HeartbeatCodec,
  upstreamPort: number,
  options: { probeEveryMs?: number } = {},
): Promise<CodecRelay> {
  const connections: RelayedConnection[] = [];
  const clock = new Clock();
  const upstreams = new Set<net.Socket>();
  const server = await listen0((down) => {
    const up = net.connect(upstreamPort, '127.0.0.1');
    upstreams.add(up);
    up.on('close', () => upstreams.delete(up));
    up.on('error', () => down.destroy());
    down.on('error', () => up.destroy());
    const tracker = codec.track({});
    const schedule = new HeartbeatSchedule(AS_OFTEN_AS_ALLOWED, clock, { clientSince: null });
    const held: Buffer[] = [];
    const connection: RelayedConnection = {
      tracker,
      events: [],
      probesSent: 0,
      probesAnswered: 0,
      clientSpoke: false,
      closed: false,
      probe() {
        if (up.destroyed || down.destroyed) return false;
        if (schedule.next(clock.now(), tracker, connection.clientSpoke || codec.probesBeforeClient) !== 'probe') return false;
        const bytes = schedule.probe(tracker, clock.now());
        connection.events.push({ from: 'probe', hex: bytes.toString('hex') });
        connection.probesSent++;
        up.write(bytes);
        return true;
      },
    };
    connections.push(connection);
    down.on('data', (chunk: Buffer) => {
      connection.clientSpoke = true;
      if (tracker.probing) {
        held.push(chunk);
        return;
      }
      connection.events.push({ from: 'client', hex: chunk.toString('hex') });
      tracker.fromClient(chunk);
      up.write(chunk);
    });
    up.on('data', (chunk: Buffer) => {
      const wasProbing = tracker.probing;
      const forward = tracker.fromServer(chunk);
      connection.events.push(
        wasProbing
          ? { from: 'probe-reply', hex: chunk.toString('hex'), forwarded: forward.toString('hex') }
          : { from: 'server', hex: chunk.toString('hex') },
      );
      if (forward.length > 0) down.write(forward);
      if (wasProbing && !tracker.probing) {
        connection.probesAnswered++;
        for (const chunk of held.splice(0)) {
          connection.events.push({ from: 'client', hex: chunk.toString('hex') });
          tracker.fromClient(chunk);
          up.write(chunk);
        }
      }
    });
    down.on('end', () => up.end());
    up.on('end', () => down.end());
    down.on('close', () => up.destroy());
    up.on('close', () => {
      connection.closed = true;
      down.destroy();
    });
  });
  const timer = options.probeEveryMs
    ? setInterval(() => {
        for (const connection of connections) connection.probe();
      }, options.probeEveryMs)
    : null;
  return {
    port: server.port,
    connections,
    async probeAll(timeoutMs = 5_000) {
      const probed = connections.filter((connection) => connection.probe());
      await until(() => probed.every((connection) => connection.closed || !connection.tracker.probing), timeoutMs, 'probe replies');
      return probed.length;
    },
    async close() {
      if (timer) clearInterval(timer);
      for (const socket of upstreams) socket.destroy();
      await server.close();
    },
  };
}
