import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, sample } from '../helpers/proxy.js';
import { sleep } from '../helpers/wait.js';
import { startAgent, type Agent } from './agent.js';
import { behindBalancer, type BehindMiddlebox } from './behind-middlebox.js';
import { ADDRESSES, labAllowed, nodeInNs, type NsNode } from './netns.js';
import { reportFailure, startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';
import { labProxyYaml } from './proxy-yaml.js';

// A WebSocket across the payload-counting load balancer (HAProxy, mode tcp, 3 s idle
// timeout), with a real ws client and server in their own namespaces and keepalive-proxy
// (an http route) as the client's sidecar:
//   client ns: ws client -> keepalive-proxy 127.0.0.1:15000 -- lb ns: HAProxy -- server ns: ws server
// Idle past the LB's timeout, the WebSocket dies without a heartbeat and survives with one.

const isRoot = labAllowed('test/lab/websocket.lab.test.ts', 'ip netns, haproxy in a namespace');

const LB_IDLE_TIMEOUT_MS = 3_000;
const LB_PORT = 8_000;
/** Each test's proxy listens on its own port, so none can meet the previous test's listener. */
let proxyPort = 15_000;
const WS_MODULE = pathToFileURL(join(REPO_ROOT, 'node_modules', 'ws', 'wrapper.mjs')).href;

// A ws client or server driven over JSON lines (see netns.ts nodeInNs).
const WS_AGENT_SOURCE = String.raw`
import WebSocket, { WebSocketServer } from '${WS_MODULE}';

const clients = new Map();
let nextConn = 1;

const ops = {
  async serve({ host, port = 0 }) {
    const wss = new WebSocketServer({ host, port });
    await new Promise((resolve, reject) => { wss.once('listening', resolve); wss.once('error', reject); });
    wss.on('connection', (ws) => {
      emit({ event: 'server-connection' });
      ws.on('ping', () => emit({ event: 'server-ping' }));
      ws.on('message', (data) => ws.send('echo ' + data.toString()));
      ws.on('close', (code) => emit({ event: 'server-close', code }));
      ws.on('error', () => {});
    });
    return { port: wss.address().port };
  },
  async connect({ url }) {
    const ws = new WebSocket(url);
    const conn = nextConn++;
    clients.set(conn, ws);
    ws.on('message', (data) => emit({ event: 'message', conn, data: data.toString() }));
    ws.on('pong', () => emit({ event: 'pong', conn }));
    ws.on('close', (code) => emit({ event: 'close', conn, code }));
    ws.on('error', (error) => emit({ event: 'error', conn, message: error.message }));
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    return { conn };
  },
  // sentAt: taken before the message leaves, so no activity it causes can be older.
  send({ conn, data }) {
    const ws = clients.get(conn);
    const sentAt = Date.now();
    ws.send(data);
    return { sentAt };
  },
};
`;

describe.skipIf(!isRoot)('middlebox lab: a WebSocket through HAProxy (mode tcp) with a 3 s idle timeout', () => {
  let path: BehindMiddlebox;
  /** host:port of the LB's frontend for the ws server. */
  let lbUpstream: string;
  let wsServer: NsNode;
  let wsClient: NsNode;
  let admin: Agent;
  let proxy: ProxyInNs | null = null;

  beforeAll(async () => {
    path = await behindBalancer({ idleTimeoutMs: LB_IDLE_TIMEOUT_MS });
    wsServer = await nodeInNs(path.lab.server, WS_AGENT_SOURCE);
    const { port } = await wsServer.request({ op: 'serve', host: ADDRESSES.server });
    lbUpstream = await path.front(port as number, LB_PORT);
    wsClient = await nodeInNs(path.lab.client, WS_AGENT_SOURCE);
    admin = await startAgent(path.lab.client);
  });

  afterEach(async (context) => {
    await reportFailure(context, proxy, path?.outputs);
    await proxy?.stop();
    proxy = null;
  });

  afterAll(async () => {
    await wsClient?.stop();
    await wsServer?.stop();
    await admin?.stop();
    await path?.destroy();
  });

  /** `heartbeat`: the route's heartbeat as YAML text, or none. */
  function yaml(heartbeat?: string): string {
    proxyPort += 1;
    return labProxyYaml({ logLevel: 'debug' }, [
      { name: 'ws', protocol: 'http', port: proxyPort, upstream: `http://${lbUpstream}`, more: heartbeat ? { heartbeat } : {} },
    ]);
  }

  /** A new WebSocket with one echoed message; sentAt: the ws client's clock just before it sent it. */
  async function openAndEcho(): Promise<{ conn: number; sentAt: number }> {
    const { conn } = await wsClient.request({ op: 'connect', url: `ws://127.0.0.1:${proxyPort}/live` });
    const since = wsClient.mark();
    const { sentAt } = await wsClient.request({ op: 'send', conn, data: 'hello' });
    await wsClient.waitFor((e) => e.event === 'message' && e.conn === conn && e.data === 'echo hello', 5_000, since);
    return { conn: conn as number, sentAt: sentAt as number };
  }

  it('without a heartbeat: the idle WebSocket is cut by the LB', async () => {
    proxy = await startProxyInNs(path.lab.client, yaml(), admin);
    // Timed from the client's clock before its message: the LB's idle timer starts later, at the
    // echo, so the silence measured is never shorter than the LB's, however late the echo's
    // line reaches this process.
    const { conn, sentAt: idleFrom } = await openAndEcho();
    const since = wsClient.mark();
    const closed = await wsClient.waitFor((e) => e.event === 'close' && e.conn === conn, LB_IDLE_TIMEOUT_MS + 5_000, since);
    console.log(`[lab] ws without heartbeat: closed after ${Number(closed.t) - idleFrom} ms (code ${String(closed.code)})`);
    expect(Number(closed.t) - idleFrom).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);
  });

  it('with a heartbeat: pings (answered, and never shown to the client) keep it alive past 3x the LB timeout', async () => {
    proxy = await startProxyInNs(path.lab.client, yaml('{ every: 1s, timeout: 800ms }'), admin);
    const { conn } = await openAndEcho();
    const since = wsClient.mark();
    const serverSince = wsServer.mark();
    await sleep(3 * LB_IDLE_TIMEOUT_MS);
    const silenceEnd = Date.now();
    const seenByClient = wsClient.events.slice(since).filter((e) => e.conn === conn);
    expect(seenByClient.filter((e) => e.event === 'close')).toEqual([]);
    expect(seenByClient.filter((e) => e.event === 'pong')).toEqual([]);
    // The server's ping lines reach this process through its stdout pipe, maybe after the sleep
    // ended: wait (bounded) until five have been read, then count those the server saw (by its
    // own clock) within the silence.
    let pingsRead = 0;
    await wsServer.waitFor((e) => e.event === 'server-ping' && ++pingsRead >= 5, 5_000, serverSince).catch(() => null);
    const pingsInSilence = wsServer.events.slice(serverSince).filter((e) => e.event === 'server-ping' && Number(e.t) <= silenceEnd);
    expect(pingsInSilence.length).toBeGreaterThanOrEqual(5);
    await wsClient.request({ op: 'send', conn, data: 'after the idle spell' });
    await wsClient.waitFor((e) => e.event === 'message' && e.conn === conn && e.data === 'echo after the idle spell', 5_000, since);
    const metrics = await proxy.metrics();
    const answered = sample(metrics, 'keepalive_proxy_heartbeats_total', { route: 'ws', result: 'ok' });
    console.log(`[lab] ws with heartbeat every 1 s: alive after ${3 * LB_IDLE_TIMEOUT_MS} ms idle, ${answered} pings answered`);
    expect(answered).toBeGreaterThanOrEqual(5);
    expect(sample(metrics, 'keepalive_proxy_heartbeats_total', { route: 'ws', result: 'timeout' })).toBe(0);
  });
});
