import http from 'node:http';
import type net from 'node:net';
import type { HeartbeatConfig } from '../config/schema.js';
import type { DialTarget, DialedSocket } from '../pool/http-dial.js';
import { WebSocketTracker } from '../protocols/websocket.js';
import type { ClientSession } from './client-session.js';
import type { RequestHead } from './head-parser.js';
import { HOP_BY_HOP, endToEnd } from './headers.js';
import { respondRaw } from './respond.js';
import { ClientWatch, dialForClient, type TunnelHost } from './tunnel.js';
import { resettableTls } from '../net/tls-socket.js';

// Upgrade passthrough (WebSocket, or any protocol the upstream agrees to): the handshake
// goes to the upstream over a fresh connection, its 101 goes back verbatim, and from
// then on the two sockets are one tunnel. With a heartbeat configured and a WebSocket
// agreed, the tunnel pings the upstream when silent and expects the pong. An upstream
// that declines (any answer but 101) has its answer relayed, and the client connection
// goes back to its HTTP session to be closed (it asked for Connection: close).

export interface UpgradeTarget {
  readonly dial: DialTarget;
  readonly path: string;
  /** The upstream request's headers, Connection: Upgrade and Upgrade included. */
  readonly headers: string[];
  readonly heartbeat: HeartbeatConfig | null;
  readonly responseTimeoutMs: number;
}

/** Fields the declined answer states from node's parse instead of copying. */
const FRAMING: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding']);

/** Extensions known to leave control frames alone (RFC 7692 compresses data frames only). */
const SAFE_EXTENSIONS: ReadonlySet<string> = new Set(['permessage-deflate']);

export function proxyUpgrade(host: TunnelHost, req: RequestHead, client: ClientSession, head: Buffer, target: UpgradeTarget): void {
  const watch = new ClientWatch(client);
  dialForClient(host, client, target.dial, 'the upstream', (dialed) => handshake(host, req, client, watch, head, dialed, target));
}

function handshake(host: TunnelHost, req: RequestHead, client: ClientSession, watch: ClientWatch, head: Buffer, dialed: DialedSocket, target: UpgradeTarget): void {
  const down = client.socket;
  let settled = false;
  const ureq = http.request({
    createConnection: () => dialed.socket,
    method: req.method,
    path: target.path,
    headers: target.headers as unknown as http.OutgoingHttpHeaders,
  });
  // One timer for one handshake, gone once the upstream answers.
  const timer =
    target.responseTimeoutMs > 0
      ? setTimeout(() => fail(504, 'the upstream did not answer the upgrade in time'), target.responseTimeoutMs)
      : null;
  const onClientGone = (): void => fail(0, '');
  down.once('close', onClientGone);

  function fail(status: number, detail: string): void {
    if (settled) return;
    settled = true;
    if (timer) clearTimeout(timer);
    down.off('close', onClientGone);
    ureq.destroy();
    dialed.socket.destroy();
    if (status > 0 && !down.destroyed) {
      host.answered(status);
      respondRaw(client, status, 'client_error', detail);
    }
  }

  ureq.on('error', () => fail(502, 'the upstream closed the connection'));
  ureq.on('upgrade', (ures: http.IncomingMessage, up: net.Socket, upstreamHead: Buffer) => {
    if (settled) {
      up.destroy();
      return;
    }
    settled = true;
    if (timer) clearTimeout(timer);
    down.off('close', onClientGone);
    if (down.destroyed) {
      up.destroy();
      return;
    }
    // The 101 goes back as the upstream wrote it, minus fields that describe our hop only
    // and minus Content-Length (a 1xx has no body: RFC 9110 8.6).
    const lines = [`HTTP/1.1 ${ures.statusCode} ${ures.statusMessage ?? ''}`];
    const raw = ures.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      if (name === 'content-length') continue;
      if (name === 'connection' || name === 'upgrade' || !HOP_BY_HOP.has(name)) lines.push(`${raw[i]}: ${raw[i + 1]}`);
    }
    down.write(`${lines.join('\r\n')}\r\n\r\n`);
    host.answered(ures.statusCode ?? 101);

    const tracker = heartbeatTracker(target.heartbeat, ures);
    const early = watch.take();
    for (const chunk of [head, early]) {
      if (chunk.length === 0) continue;
      tracker?.fromClient(chunk);
      up.write(chunk);
    }
    const fromUpstream = upstreamHead.length > 0 ? [tracker ? tracker.fromServer(upstreamHead) : upstreamHead] : [];
    host.startTunnel(client, resettableTls(up, dialed.raw), {
      kind: 'upgrade',
      tracker,
      heartbeat: tracker ? target.heartbeat : null,
      earlyData: fromUpstream.filter((chunk) => chunk.length > 0),
    });
  });
  ureq.on('response', (ures: http.IncomingMessage) => {
    // The upstream declined the upgrade: relay its answer, then close (the client socket
    // left the HTTP server, so this exchange is its last).
    if (settled) {
      ures.resume();
      return;
    }
    settled = true;
    if (timer) clearTimeout(timer);
    down.off('close', onClientGone);
    // The session watches the client again while the answer is relayed, then closes it.
    watch.take();
    const closeClient = client.reclaim();
    const status = ures.statusCode ?? 502;
    host.answered(status);
    const lines = [`HTTP/1.1 ${status} ${ures.statusMessage ?? ''}`];
    const kept = endToEnd(ures.rawHeaders, FRAMING);
    for (let i = 0; i < kept.length; i += 2) lines.push(`${kept[i]}: ${kept[i + 1]}`);
    // Framing from node's parse, never from the upstream's field lines: its length when it
    // framed the body by one; otherwise (chunked, decoded by node) the close ends the body.
    const length = ures.headers['content-length'];
    if (length !== undefined && ures.headers['transfer-encoding'] === undefined && status !== 204) lines.push(`Content-Length: ${length}`);
    lines.push('Connection: close');
    down.write(`${lines.join('\r\n')}\r\n\r\n`);
    ures.on('data', (chunk: Buffer) => {
      if (!down.write(chunk)) {
        ures.pause();
        down.once('drain', () => ures.resume());
      }
    });
    ures.on('end', () => {
      closeClient();
      dialed.socket.destroy();
    });
    ures.on('error', () => {
      // The relayed answer broke off: a reset, so the client cannot take it for complete.
      client.close('client_error', 'reset');
      dialed.socket.destroy();
    });
    down.once('close', () => dialed.socket.destroy());
  });
  ureq.end();
}

/** A heartbeat tracker when one is configured and the tunnel is a WebSocket we can follow. */
function heartbeatTracker(heartbeat: HeartbeatConfig | null, ures: http.IncomingMessage): WebSocketTracker | null {
  if (!heartbeat || ures.statusCode !== 101) return null;
  if ((ures.headers.upgrade ?? '').toLowerCase() !== 'websocket') return null;
  const extensions = (ures.headers['sec-websocket-extensions'] ?? '')
    .split(',')
    .map((item) => item.split(';')[0]!.trim().toLowerCase())
    .filter(Boolean);
  // An unknown extension may give reserved opcodes a meaning: then we do not touch the stream.
  if (extensions.some((name) => !SAFE_EXTENSIONS.has(name))) return null;
  return new WebSocketTracker();
}
