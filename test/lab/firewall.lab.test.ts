import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { until, sleep } from '../helpers/wait.js';
import { startAgent, type Agent } from './agent.js';
import { installFirewall, type Firewall } from './firewall.js';
import { ADDRESSES, createLab, type Lab } from './netns.js';
import { reportFailure, startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';

// The middlebox lab, conntrack firewall (issue 2):
//   client ns (legacy client, keepalive-proxy as sidecar) -- fw ns (nftables + conntrack) -- server ns (echo)
// (a) an idle client without keepalive loses its flow at the firewall; through the proxy it keeps it.
// (b) when the firewall starts dropping the flow, the proxy's kernel declares the upstream dead and
//     the proxy closes the client at once, counting evictions_total{reason="keepalive_timeout"}.

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  console.warn('test/lab/firewall.lab.test.ts skipped: the middlebox lab needs root (ip netns, nftables, conntrack)');
}

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
  return `
admin:
  listen: {{admin}}
log:
  level: debug
shutdownTimeout: 2s
defaults:
  keepalive:
    client: { idle: 60s, interval: 10s, count: 6 }
    upstream: { idle: ${upstream.idle}, interval: ${upstream.interval}, count: ${upstream.count} }
  userTimeout: ${upstream.userTimeout}
routes:
  - name: ${ROUTE}
    listen: 127.0.0.1:${PROXY_PORT}
    upstream: ${ADDRESSES.server}:${echoPort}
`;
}

describe.skipIf(!isRoot)('middlebox lab: stateful firewall with a short conntrack timeout', () => {
  let lab: Lab;
  let firewall: Firewall;
  let server: Agent;
  let client: Agent;
  let echoPort: number;
  let proxy: ProxyInNs | null = null;

  beforeAll(async () => {
    lab = await createLab({ forwarding: true });
    firewall = await installFirewall(lab.middle, { establishedTimeoutSeconds: CONNTRACK_TIMEOUT_S });
    server = await startAgent(lab.server);
    echoPort = await server.listenEcho(ADDRESSES.server);
    client = await startAgent(lab.client);
  });

  afterEach(async (context) => {
    await reportFailure(context, proxy, { firewall: () => firewall.ruleset() });
    await proxy?.stop();
    proxy = null;
    await firewall?.blackhole(false);
  });

  afterAll(async () => {
    await client?.stop();
    await server?.stop();
    await lab?.destroy();
  });

  it('control: a direct client silent for less than the conntrack timeout keeps its connection', async () => {
    const conn = await client.connect(ADDRESSES.server, echoPort);
    await client.roundTrip(conn, 'hello\n', 3_000);
    await sleep((CONNTRACK_TIMEOUT_S * 1_000) / 2);
    await client.roundTrip(conn, 'still here\n', 3_000);
    await client.destroy(conn);
  });

  it('(a) direct: a client without keepalive that idles past the conntrack timeout loses its connection', async () => {
    const conn = await client.connect(ADDRESSES.server, echoPort);
    await client.roundTrip(conn, 'hello before idle\n', 3_000);

    // The flow is tracked with the firewall's short timeout, not the kernel's 5 days.
    const ofThisConnection = (line: string): boolean => line.includes(`sport=${client.localPort(conn)} dport=${echoPort}`);
    const flow = (await firewall.flows()).find(ofThisConnection);
    expect(flow, 'the firewall tracks the flow').toBeDefined();
    const remaining = Number(/^tcp\s+\d+\s+(\d+)/.exec(flow!)?.[1]);
    expect(remaining).toBeLessThanOrEqual(CONNTRACK_TIMEOUT_S);

    await sleep(CLIENT_IDLE_MS);
    expect((await firewall.flows()).some(ofThisConnection), 'the firewall forgot the flow').toBe(false);

    // The next write goes nowhere: the firewall drops the mid-stream segment (no conntrack
    // entry, not a SYN), the client retransmits into the void. Lost = no echo within the bound
    // (or an error, should the stack give up first).
    const started = Date.now();
    const outcome = await client.roundTrip(conn, 'hello after idle\n', NO_REPLY_MS).then(
      () => 'echoed',
      (error: Error) => error.message,
    );
    console.log(`[lab] direct, no keepalive, idle ${CLIENT_IDLE_MS} ms: after ${Date.now() - started} ms: ${outcome}`);
    expect(outcome).not.toBe('echoed');
    await client.destroy(conn);
  });

  it('(a) through the proxy: the same idle client keeps its connection (upstream keepalive below the firewall timeout)', async () => {
    proxy = await startProxyInNs(
      lab.client,
      proxyYaml(echoPort, { idle: '1s', interval: '1s', count: 3, userTimeout: '0' }),
      client,
    );
    const conn = await client.connect('127.0.0.1', PROXY_PORT);
    await client.roundTrip(conn, 'hello before idle\n', 3_000);

    await sleep(CLIENT_IDLE_MS);
    const established = (await firewall.flows()).filter((line) => line.includes('ESTABLISHED') && line.includes(`dport=${echoPort}`));
    expect(established, 'the probes kept the flow').toHaveLength(1);

    const started = Date.now();
    await client.roundTrip(conn, 'hello after idle\n', NO_REPLY_MS);
    console.log(
      `[lab] through the proxy, idle ${CLIENT_IDLE_MS} ms (firewall timeout ${CONNTRACK_TIMEOUT_S} s): echo back in ${Date.now() - started} ms`,
    );
    await client.destroy(conn);
  });

  /**
   * A live idle connection through the proxy, then the firewall drops everything: resolves with
   * how long after the blackhole the client saw its connection end (bounded by boundMs).
   */
  async function blackholeDetection(upstream: Parameters<typeof proxyYaml>[1], boundMs: number): Promise<number> {
    proxy = await startProxyInNs(lab.client, proxyYaml(echoPort, upstream), client);
    const conn = await client.connect('127.0.0.1', PROXY_PORT);
    await client.roundTrip(conn, 'hello\n', 3_000);
    await sleep(2_000); // idle: probes flowing and answered

    const since = client.node.mark();
    await firewall.blackhole(true);
    const blackholeAt = Date.now();
    const closed = await client.waitClosed(conn, boundMs, since);
    const dropped = await firewall.blackholeDrops();
    const detectionMs = closed ? Number(closed.t) - blackholeAt : null;
    console.log(
      `[lab] dead-peer detection (upstream keepalive idle ${upstream.idle} interval ${upstream.interval} count ${upstream.count}, userTimeout ${upstream.userTimeout}): ` +
        `client closed ${detectionMs} ms after the blackhole (${JSON.stringify(closed)}); ${dropped} packets dropped by the firewall`,
    );
    expect(closed, `the proxy closes the client within ${boundMs} ms`).not.toBeNull();
    expect(dropped).toBeGreaterThan(0);

    await until(async () => (await proxy!.eviction(ROUTE, 'keepalive_timeout')) === 1, 3_000, 'evictions_total{reason="keepalive_timeout"} == 1', 100);
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
