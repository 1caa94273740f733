import { describe, expect, it } from 'vitest';
import { until, sleep } from '../helpers/wait.js';
import { behindFirewall } from './behind-middlebox.js';
import { useEchoLab } from './echo-lab.js';
import { ADDRESSES, labAllowed } from './netns.js';
import { CLIENT_KEEPALIVE, labProxyYaml } from './proxy-yaml.js';

// The middlebox lab, conntrack firewall (issue 2):
//   client ns (legacy client, keepalive-proxy as sidecar) -- fw ns (nftables + conntrack) -- server ns (echo)
// (a) an idle client without keepalive loses its flow at the firewall; through the proxy it keeps it.
// (b) when the firewall starts dropping the flow, the proxy's kernel declares the upstream dead and
//     the proxy closes the client at once, counting evictions_total{reason="keepalive_timeout"}.

const isRoot = labAllowed('test/lab/firewall.lab.test.ts', 'ip netns, nftables, conntrack');

/** The firewall forgets an established flow after this much silence. */
const CONNTRACK_TIMEOUT_S = 3;
/** How long the clients stay silent: twice the firewall's timeout. */
const CLIENT_IDLE_MS = 2 * CONNTRACK_TIMEOUT_S * 1_000;
/** How long "no reply" must last before the direct connection counts as lost. */
const NO_REPLY_MS = 5_000;
/** Generous slack on every detection bound (scheduling, the proxy's reaction, JSON over pipes). */
const SLACK_MS = 5_000;
const PROXY_PORT = 15_000;
const ROUTE = 'lab';

function proxyYaml(echoPort: number, upstream: { idle: string; interval: string; count: number; userTimeout: string }): string {
  const { userTimeout, ...keepalive } = upstream;
  return labProxyYaml(
    { logLevel: 'debug', keepalive: { client: CLIENT_KEEPALIVE, upstream: keepalive }, userTimeout },
    [{ name: ROUTE, port: PROXY_PORT, upstream: `${ADDRESSES.server}:${echoPort}` }],
  );
}

describe.skipIf(!isRoot)('middlebox lab: stateful firewall with a short conntrack timeout', () => {
  const lab = useEchoLab(() => behindFirewall({ establishedTimeoutSeconds: CONNTRACK_TIMEOUT_S }));

  it('control: a direct client silent for less than the conntrack timeout keeps its connection', async () => {
    const conn = await lab.client.connect(ADDRESSES.server, lab.echo.port);
    await lab.client.roundTrip(conn, 'hello\n', 3_000);
    await sleep((CONNTRACK_TIMEOUT_S * 1_000) / 2);
    await lab.client.roundTrip(conn, 'still here\n', 3_000);
    await lab.client.destroy(conn);
  });

  it('(a) direct: a client without keepalive that idles past the conntrack timeout loses its connection', async () => {
    const conn = await lab.client.connect(ADDRESSES.server, lab.echo.port);
    await lab.client.roundTrip(conn, 'hello before idle\n', 3_000);

    // The flow is tracked with the firewall's short timeout, not the kernel's 5 days.
    const ofThisConnection = (line: string): boolean => line.includes(`sport=${lab.client.localPort(conn)} dport=${lab.echo.port}`);
    const flow = (await lab.path.firewall.flows()).find(ofThisConnection);
    expect(flow, 'the firewall tracks the flow').toBeDefined();
    const remaining = Number(/^tcp\s+\d+\s+(\d+)/.exec(flow!)?.[1]);
    expect(remaining).toBeLessThanOrEqual(CONNTRACK_TIMEOUT_S);

    await sleep(CLIENT_IDLE_MS);
    expect((await lab.path.firewall.flows()).some(ofThisConnection), 'the firewall forgot the flow').toBe(false);

    // The next write goes nowhere: the firewall drops the mid-stream segment (no conntrack
    // entry, not a SYN), the client retransmits into the void. Lost = no echo within the bound
    // (or an error, should the stack give up first).
    const started = Date.now();
    const outcome = await lab.client.roundTrip(conn, 'hello after idle\n', NO_REPLY_MS).then(
      () => 'echoed',
      (error: Error) => error.message,
    );
    console.log(`[lab] direct, no keepalive, idle ${CLIENT_IDLE_MS} ms: after ${Date.now() - started} ms: ${outcome}`);
    expect(outcome).not.toBe('echoed');
    await lab.client.destroy(conn);
  });

  it('(a) through the proxy: the same idle client keeps its connection (upstream keepalive below the firewall timeout)', async () => {
    await lab.startProxy(proxyYaml(lab.echo.port, { idle: '1s', interval: '1s', count: 3, userTimeout: '0' }));
    const conn = await lab.client.connect('127.0.0.1', PROXY_PORT);
    await lab.client.roundTrip(conn, 'hello before idle\n', 3_000);

    await sleep(CLIENT_IDLE_MS);
    const established = (await lab.path.firewall.flows()).filter((line) => line.includes('ESTABLISHED') && line.includes(`dport=${lab.echo.port}`));
    expect(established, 'the probes kept the flow').toHaveLength(1);

    const started = Date.now();
    await lab.client.roundTrip(conn, 'hello after idle\n', NO_REPLY_MS);
    console.log(
      `[lab] through the proxy, idle ${CLIENT_IDLE_MS} ms (firewall timeout ${CONNTRACK_TIMEOUT_S} s): echo back in ${Date.now() - started} ms`,
    );
    await lab.client.destroy(conn);
  });

  /**
   * A live idle connection through the proxy, then the firewall drops everything: resolves with
   * how long after the blackhole the client saw its connection end (bounded by boundMs).
   */
  async function blackholeDetection(upstream: Parameters<typeof proxyYaml>[1], boundMs: number): Promise<number> {
    const proxy = await lab.startProxy(proxyYaml(lab.echo.port, upstream));
    const conn = await lab.client.connect('127.0.0.1', PROXY_PORT);
    await lab.client.roundTrip(conn, 'hello\n', 3_000);
    await sleep(2_000); // idle: probes flowing and answered

    const since = lab.client.node.mark();
    await lab.path.firewall.blackhole(true);
    const blackholeAt = Date.now();
    const closed = await lab.client.waitClosed(conn, boundMs, since);
    const dropped = await lab.path.firewall.blackholeDrops();
    const detectionMs = closed ? Number(closed.t) - blackholeAt : null;
    console.log(
      `[lab] dead-peer detection (upstream keepalive idle ${upstream.idle} interval ${upstream.interval} count ${upstream.count}, userTimeout ${upstream.userTimeout}): ` +
        `client closed ${detectionMs} ms after the blackhole (${JSON.stringify(closed)}); ${dropped} packets dropped by the firewall`,
    );
    expect(closed, `the proxy closes the client within ${boundMs} ms`).not.toBeNull();
    expect(dropped).toBeGreaterThan(0);

    await until(async () => (await proxy.eviction(ROUTE, 'keepalive_timeout')) === 1, 3_000, 'evictions_total{reason="keepalive_timeout"} == 1', 100);
    console.log(`[lab] proxy log:\n${proxy.logLinesWith('"reason"').join('\n')}`);
    return detectionMs!;
  }

  it('(b) blackhole: keepalive probes go unanswered, the proxy closes the client within idle + interval x count + slack', async () => {
    // userTimeout 0: with TCP_USER_TIMEOUT set the kernel ignores the probe count and kills the
    // connection once nothing was received for the user timeout (man 7 tcp); 0 leaves the count in charge.
    const keepalive = { idleMs: 1_000, intervalMs: 1_000, count: 3 };
    await blackholeDetection(
      { idle: '1s', interval: '1s', count: keepalive.count, userTimeout: '0' },
      keepalive.idleMs + keepalive.intervalMs * keepalive.count + SLACK_MS,
    );
  });

  it('(b) blackhole with TCP_USER_TIMEOUT: the user timeout decides, still counted as keepalive_timeout', async () => {
    // The probe count alone would take idle + 1s x 20 = 21 s; with userTimeout 3s the kernel gives
    // up once 3 s passed without receiving anything and at least one probe went out.
    const userTimeoutMs = 3_000;
    const keepalive = { idleMs: 1_000, intervalMs: 1_000, count: 20 };
    const detectionMs = await blackholeDetection(
      { idle: '1s', interval: '1s', count: keepalive.count, userTimeout: '3s' },
      userTimeoutMs + keepalive.intervalMs + SLACK_MS,
    );
    expect(detectionMs, 'the user timeout, not the probe count, ended it').toBeLessThan(
      keepalive.idleMs + keepalive.intervalMs * keepalive.count,
    );
  });
});
