import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../helpers/wait.js';
import { startAgent, type Agent } from './agent.js';
import { startLoadBalancer, type LoadBalancer } from './lb.js';
import { ADDRESSES, createLab, type Lab } from './netns.js';
import { reportFailure, startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';

// The middlebox lab, payload-counting load balancer:
//   client ns (legacy client, keepalive-proxy as sidecar) -- lb ns (HAProxy mode tcp, no forwarding) -- server ns (echo)
// HAProxy cuts a session after `timeout client`/`timeout server` without payload, and TCP
// keepalive probes are not payload: this is the middlebox that needs application heartbeats
// (issue 3 reuses this lab for redis, postgres and mysql).

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  console.warn('test/lab/lb.lab.test.ts skipped: the middlebox lab needs root (ip netns, haproxy in a namespace)');
}

const LB_IDLE_TIMEOUT_MS = 3_000;
const LB_PORT = 8_000;
const PROXY_PORT = 15_000;
const SLACK_MS = 5_000;

describe.skipIf(!isRoot)('middlebox lab: HAProxy (mode tcp) with a short idle timeout', () => {
  let lab: Lab;
  let lb: LoadBalancer;
  let server: Agent;
  let client: Agent;
  let proxy: ProxyInNs | null = null;

  beforeAll(async () => {
    lab = await createLab({ forwarding: false });
    server = await startAgent(lab.server);
    const echoPort = await server.listenEcho(ADDRESSES.server);
    lb = await startLoadBalancer(lab.middle, {
      listenHost: ADDRESSES.middleClientSide,
      listenPort: LB_PORT,
      upstreamHost: ADDRESSES.server,
      upstreamPort: echoPort,
      idleTimeoutMs: LB_IDLE_TIMEOUT_MS,
    });
    client = await startAgent(lab.client);
  });

  afterEach(async (context) => {
    await reportFailure(context, proxy, { 'haproxy output': () => lb.output() });
    await proxy?.stop();
    proxy = null;
  });

  afterAll(async () => {
    await client?.stop();
    await lb?.stop();
    await server?.stop();
    await lab?.destroy();
  });

  it('direct: the LB closes an idle connection after its timeout', async () => {
    const conn = await client.connect(ADDRESSES.middleClientSide, LB_PORT);
    await client.roundTrip(conn, 'hello through the lb\n', 3_000);
    const since = client.node.mark();
    const idleFrom = Date.now();
    const closed = await client.waitClosed(conn, LB_IDLE_TIMEOUT_MS + SLACK_MS, since);
    const cutAfterMs = closed ? Number(closed.t) - idleFrom : null;
    console.log(`[lab] HAProxy timeout ${LB_IDLE_TIMEOUT_MS} ms: idle direct connection closed after ${cutAfterMs} ms (${String(closed?.event)})`);
    expect(closed, 'the LB closes the idle connection').not.toBeNull();
    expect(cutAfterMs!).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);
  });

  it('direct: payload in time keeps the session (the LB counts bytes, not time since connect)', async () => {
    const conn = await client.connect(ADDRESSES.middleClientSide, LB_PORT);
    const since = client.node.mark();
    for (let round = 0; round < 6; round++) {
      await client.roundTrip(conn, `tick ${round}\n`, 3_000);
      await sleep(LB_IDLE_TIMEOUT_MS / 2);
    }
    expect(await client.waitClosed(conn, 0, since)).toBeNull();
    await client.destroy(conn);
  });

  it('through the proxy with TCP keepalive only: the LB still cuts the idle session (probes are not payload)', async () => {
    proxy = await startProxyInNs(
      lab.client,
      `
admin:
  listen: {{admin}}
log:
  level: debug
shutdownTimeout: 2s
defaults:
  keepalive:
    client: { idle: 60s, interval: 10s, count: 6 }
    upstream: { idle: 1s, interval: 1s, count: 3 }
  userTimeout: 0
routes:
  - name: lb
    listen: 127.0.0.1:${PROXY_PORT}
    upstream: ${ADDRESSES.middleClientSide}:${LB_PORT}
`,
      client,
    );
    const conn = await client.connect('127.0.0.1', PROXY_PORT);
    await client.roundTrip(conn, 'hello via proxy and lb\n', 3_000);
    const since = client.node.mark();
    const idleFrom = Date.now();
    const closed = await client.waitClosed(conn, LB_IDLE_TIMEOUT_MS + SLACK_MS, since);
    console.log(
      `[lab] HAProxy timeout ${LB_IDLE_TIMEOUT_MS} ms, proxy with keepalive only: client closed after ${closed ? Number(closed.t) - idleFrom : null} ms (${String(closed?.event)})`,
    );
    expect(closed, 'keepalive probes do not reset the LB timers').not.toBeNull();
  });
});
