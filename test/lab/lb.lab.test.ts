import { describe, expect, it } from 'vitest';
import { sleep } from '../helpers/wait.js';
import { behindBalancer } from './behind-middlebox.js';
import { useEchoLab } from './echo-lab.js';
import { ADDRESSES, labAllowed } from './netns.js';
import { CLIENT_KEEPALIVE, labProxyYaml } from './proxy-yaml.js';

// The middlebox lab, payload-counting load balancer:
//   client ns (legacy client, keepalive-proxy as sidecar) -- lb ns (HAProxy mode tcp, no forwarding) -- server ns (echo)
// HAProxy cuts a session after `timeout client`/`timeout server` without payload, and TCP
// keepalive probes are not payload: this is the middlebox that needs application heartbeats
// (issue 3 reuses this lab for redis, postgres and mysql).

const isRoot = labAllowed('test/lab/lb.lab.test.ts', 'ip netns, haproxy in a namespace');

const LB_IDLE_TIMEOUT_MS = 3_000;
const LB_PORT = 8_000;
const PROXY_PORT = 15_000;
const SLACK_MS = 5_000;

describe.skipIf(!isRoot)('middlebox lab: HAProxy (mode tcp) with a short idle timeout', () => {
  const lab = useEchoLab(() => behindBalancer({ idleTimeoutMs: LB_IDLE_TIMEOUT_MS }), { frontPort: LB_PORT });

  it('direct: the LB closes an idle connection after its timeout', async () => {
    const conn = await lab.client.connect(ADDRESSES.middleClientSide, LB_PORT);
    // Timed from the agent's clock before its write: the LB's idle timer starts later, at the
    // echo, so the silence measured is never shorter than the LB's, however late the echo's
    // line reaches this process.
    const idleFrom = await lab.client.roundTrip(conn, 'hello through the lb\n', 3_000);
    const since = lab.client.node.mark();
    const closed = await lab.client.waitClosed(conn, LB_IDLE_TIMEOUT_MS + SLACK_MS, since);
    const cutAfterMs = closed ? Number(closed.t) - idleFrom : null;
    console.log(`[lab] HAProxy timeout ${LB_IDLE_TIMEOUT_MS} ms: idle direct connection closed after ${cutAfterMs} ms (${String(closed?.event)})`);
    expect(closed, 'the LB closes the idle connection').not.toBeNull();
    expect(cutAfterMs!).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);
  });

  it('direct: payload in time keeps the session (the LB counts bytes, not time since connect)', async () => {
    const conn = await lab.client.connect(ADDRESSES.middleClientSide, LB_PORT);
    const since = lab.client.node.mark();
    for (let round = 0; round < 6; round++) {
      await lab.client.roundTrip(conn, `tick ${round}\n`, 3_000);
      await sleep(LB_IDLE_TIMEOUT_MS / 2);
    }
    expect(await lab.client.waitClosed(conn, 0, since)).toBeNull();
    await lab.client.destroy(conn);
  });

  it('through the proxy with TCP keepalive only: the LB still cuts the idle session (probes are not payload)', async () => {
    await lab.startProxy(
      labProxyYaml(
        { logLevel: 'debug', keepalive: { client: CLIENT_KEEPALIVE, upstream: { idle: '1s', interval: '1s', count: 3 } }, userTimeout: '0' },
        [{ name: 'lb', port: PROXY_PORT, upstream: lab.echo.upstream }],
      ),
    );
    const conn = await lab.client.connect('127.0.0.1', PROXY_PORT);
    const idleFrom = await lab.client.roundTrip(conn, 'hello via proxy and lb\n', 3_000);
    const since = lab.client.node.mark();
    const closed = await lab.client.waitClosed(conn, LB_IDLE_TIMEOUT_MS + SLACK_MS, since);
    console.log(
      `[lab] HAProxy timeout ${LB_IDLE_TIMEOUT_MS} ms, proxy with keepalive only: client closed after ${closed ? Number(closed.t) - idleFrom : null} ms (${String(closed?.event)})`,
    );
    expect(closed, 'keepalive probes do not reset the LB timers').not.toBeNull();
  });
});
