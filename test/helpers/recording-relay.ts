import net from 'node:net';
import { listen0 } from './net.js';

// A TCP relay that records every chunk each way with its arrival time (performance.now(),
// the same clock as the test that reads it), optionally delaying what comes back from the
// upstream. Put between the proxy and a server it shows what the proxy really writes
// upstream (client bytes and heartbeat probes) and what the server answers; with a delay
// the round trip of each probe is wide enough for a client write to land inside it.

export interface WireChunk {
  /** performance.now() when the relay received the chunk. */
  readonly at: number;
  /** 'down': from the relay's client (the proxy) toward the server; 'up': the server's bytes. */
  readonly from: 'down' | 'up';
  readonly bytes: Buffer;
}

export interface RecordedConnection {
  readonly chunks: WireChunk[];
  /** The relay's socket toward the server. */
  readonly upstream: net.Socket;
}

export interface RecordingRelay {
  readonly port: number;
  readonly connections: RecordedConnection[];
  close(): Promise<void>;
}

export async function recordingRelay(targetPort: number, options: { delayMs?: number } = {}): Promise<RecordingRelay> {
  const delayMs = options.delayMs ?? 0;
  const connections: RecordedConnection[] = [];
  const relay = await listen0((inbound) => {
    const outbound = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true });
    const connection: RecordedConnection = { chunks: [], upstream: outbound };
    connections.push(connection);
    outbound.on('error', () => inbound.destroy());
    inbound.on('error', () => outbound.destroy());
    inbound.on('data', (chunk: Buffer) => {
      connection.chunks.push({ at: performance.now(), from: 'down', bytes: chunk });
      outbound.write(chunk);
    });
    inbound.on('end', () => outbound.end());
    const back = (write: () => void): void => {
      if (delayMs > 0) setTimeout(write, delayMs);
      else write();
    };
    outbound.on('data', (chunk: Buffer) => {
      connection.chunks.push({ at: performance.now(), from: 'up', bytes: chunk });
      back(() => inbound.writable && inbound.write(chunk));
    });
    outbound.on('end', () => back(() => inbound.end()));
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => back(() => inbound.destroy()));
  });
  return {
    port: relay.port,
    connections,
    close: async () => {
      for (const connection of connections) connection.upstream.destroy();
      await relay.close();
    },
  };
}
