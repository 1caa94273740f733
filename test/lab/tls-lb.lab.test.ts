import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { makePki, type Pki } from '../helpers/pki.js';
import { sample } from '../helpers/proxy.js';
import { startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep } from '../helpers/wait.js';
import { startAgent, type Agent } from './agent.js';
import { startDbClient, type DbClient } from './db-client.js';
import { startLoadBalancer, type LoadBalancer } from './lb.js';
import { ADDRESSES, createLab, type Lab } from './netns.js';
import { reportFailure, startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';

// TLS to the database through a payload-counting load balancer (issue 10), as
// heartbeat-lb.lab.test.ts does it in plaintext:
//   client ns: a plaintext client (pg / ioredis) and keepalive-proxy as its sidecar, which
//              speaks TLS to the database (upstreamTls)
//   lb ns:     HAProxy, mode tcp, timeout client/server LB_IDLE_TIMEOUT_MS; it passes the
//              TLS stream through and counts its records as payload
//   server ns: a TLS-only PostgreSQL (pg_hba: hostssl only) and a TLS-only redis-server
// Two routes per database to the same LB frontend: heartbeats every HEARTBEAT_EVERY (below
// the LB's timeout), sent inside TLS, and none. A session on each idles past the LB's
// timeout: with heartbeats it still answers from the same server connection (same backend
// pid / client id); without, the LB cut it.

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  console.warn('test/lab/tls-lb.lab.test.ts skipped: the middlebox lab needs root (ip netns, haproxy and servers in namespaces)');
}

const LB_IDLE_TIMEOUT_MS = 3_000;
const IDLE_MS = 2 * LB_IDLE_TIMEOUT_MS + 1_000;
const HEARTBEAT_EVERY_MS = 1_000;
const HEARTBEAT_TIMEOUT_MS = 2_000;
type TlsKind = 'redis' | 'postgres';
const KINDS: readonly TlsKind[] = ['redis', 'postgres'];
const LB_PORTS: Record<TlsKind, number> = { redis: 8_101, postgres: 8_102 };
const PROXY_PORTS: Record<TlsKind, { heartbeat: number; keepaliveOnly: number }> = {
  redis: { heartbeat: 15_101, keepaliveOnly: 15_102 },
  postgres: { heartbeat: 15_111, keepaliveOnly: 15_112 },
};
/** require for redis (encrypt, no check), verify-full for postgres: both modes cross the LB. */
const MODES: Record<TlsKind, string> = { redis: 'require', postgres: 'verify-full' };

function proxyYaml(pki: Pki): string {
  // The LB's address is not in the server certificate: verify-full checks the name the
  // certificate was issued for (localhost), as a client of a managed database would.
  const upstreamTls = (kind: TlsKind): string => `{ mode: ${MODES[kind]}, ca: "${pki.ca}", servername: localhost }`;
  const routes = KINDS.flatMap((kind) => [
    `  - name: ${kind}-heartbeat
    protocol: ${kind}
    listen: 127.0.0.1:${PROXY_PORTS[kind].heartbeat}
    upstream: ${ADDRESSES.middleClientSide}:${LB_PORTS[kind]}
    upstreamTls: ${upstreamTls(kind)}
    heartbeat: { every: ${HEARTBEAT_EVERY_MS}ms, timeout: ${HEARTBEAT_TIMEOUT_MS}ms }`,
    `  - name: ${kind}-keepalive-only
    protocol: ${kind}
    listen: 127.0.0.1:${PROXY_PORTS[kind].keepaliveOnly}
    upstream: ${ADDRESSES.middleClientSide}:${LB_PORTS[kind]}
    upstreamTls: ${upstreamTls(kind)}`,
  ]);
  return `
admin:
  listen: {{admin}}
log:
  level: info
shutdownTimeout: 2s
defaults:
  keepalive:
    client: { idle: 60s, interval: 10s, count: 6 }
    upstream: { idle: 1s, interval: 1s, count: 3 }
  userTimeout: 0
routes:
${routes.join('\n')}
`;
}

describe.skipIf(!isRoot)('middlebox lab: heartbeats inside upstream TLS keep a plaintext client session alive through HAProxy (mode tcp)', () => {
  let lab: Lab;
  let pki: Pki;
  const servers: Partial<Record<TlsKind, RunningServer>> = {};
  const balancers: LoadBalancer[] = [];
  let agent: Agent;
  let db: DbClient;
  let proxy: ProxyInNs;
  const figures: string[] = [];

  beforeAll(async () => {
    pki = makePki();
    lab = await createLab({ forwarding: false });
    const placement = { netns: lab.server, bind: ADDRESSES.server, tlsOnly: { cert: pki.server.cert, key: pki.server.key, ca: pki.ca } };
    [servers.redis, servers.postgres] = await Promise.all([startRedis(placement), startPostgres(placement)]);
    for (const kind of KINDS) {
      balancers.push(
        await startLoadBalancer(lab.middle, {
          listenHost: ADDRESSES.middleClientSide,
          listenPort: LB_PORTS[kind],
          upstreamHost: ADDRESSES.server,
          upstreamPort: servers[kind]!.port,
          idleTimeoutMs: LB_IDLE_TIMEOUT_MS,
        }),
      );
    }
    agent = await startAgent(lab.client);
    proxy = await startProxyInNs(lab.client, proxyYaml(pki), agent);
    db = await startDbClient(lab.client);
  }, 120_000);

  afterEach(async (context) => {
    await reportFailure(context, proxy, {
      'db client stderr': () => String(db?.node.stderr()),
      'haproxy output': () => balancers.map((lb) => lb.output()).join('\n'),
    });
  });

  afterAll(async () => {
    if (figures.length > 0) console.log(`[lab] idle survival over upstream TLS through HAProxy (timeout client/server ${LB_IDLE_TIMEOUT_MS} ms):\n${figures.join('\n')}`);
    await db?.stop();
    await proxy?.stop();
    await agent?.stop();
    for (const lb of balancers) await lb.stop();
    await Promise.all(Object.values(servers).map((server) => server.stop()));
    await lab?.destroy();
    pki?.cleanup();
  });

  async function metric(name: string, labels: Record<string, string>): Promise<number> {
    return sample(await proxy.metrics(), `keepalive_proxy_${name}`, labels);
  }

  it.each(KINDS)('%s: the same TLS session works after idling past the LB timeout with heartbeats, and dies without', async (kind) => {
    const withHeartbeat = await db.open(kind, '127.0.0.1', PROXY_PORTS[kind].heartbeat);
    const keepaliveOnly = await db.open(kind, '127.0.0.1', PROXY_PORTS[kind].keepaliveOnly);
    const before = { heartbeat: await db.query(withHeartbeat.session), keepaliveOnly: await db.query(keepaliveOnly.session) };
    expect(before.heartbeat.outcome).toBe('ok');
    expect(before.keepaliveOnly.outcome).toBe('ok');
    // Both sessions crossed the LB inside TLS.
    for (const route of [`${kind}-heartbeat`, `${kind}-keepalive-only`]) {
      expect(await metric('tls_handshakes_total', { route, side: 'upstream' }), route).toBeGreaterThanOrEqual(1);
    }
    const probesBefore = await metric('heartbeats_total', { route: `${kind}-heartbeat`, result: 'ok' });

    const since = db.node.mark();
    const idleFrom = Date.now();
    await sleep(IDLE_MS);
    const after = { heartbeat: await db.query(withHeartbeat.session), keepaliveOnly: await db.query(keepaliveOnly.session) };
    const probes = (await metric('heartbeats_total', { route: `${kind}-heartbeat`, result: 'ok' })) - probesBefore;
    const cut = db.closedEvent(keepaliveOnly.session, since);
    const cutAfterMs = cut ? Number(cut.t) - idleFrom : null;

    figures.push(
      `  ${kind.padEnd(8)} upstreamTls ${MODES[kind]}, heartbeat every ${HEARTBEAT_EVERY_MS} ms: idle ${IDLE_MS} ms survived: ${after.heartbeat.outcome === 'ok'} ` +
        `(same server connection: ${after.heartbeat.identity === before.heartbeat.identity}, ${probes} heartbeats during the silence, query ${after.heartbeat.ms.toFixed(1)} ms)\n` +
        `  ${kind.padEnd(8)} upstreamTls ${MODES[kind]}, no heartbeat: session cut ${cutAfterMs} ms into the silence; query after it: ${after.keepaliveOnly.outcome} (${after.keepaliveOnly.error ?? ''})`,
    );

    expect(after.heartbeat, 'with heartbeats the session survives the idle').toMatchObject({ outcome: 'ok', identity: before.heartbeat.identity });
    expect(db.closedEvent(withHeartbeat.session, since), 'the heartbeat session was never closed').toBeUndefined();
    expect(probes).toBeGreaterThanOrEqual(Math.floor(IDLE_MS / (HEARTBEAT_EVERY_MS + 500)) - 1);
    expect(await metric('evictions_total', { route: `${kind}-heartbeat`, reason: 'tls_error' })).toBe(0);
    expect(after.keepaliveOnly.outcome, 'without heartbeats the LB cut the idle session').toBe('error');
    expect(cut, 'the client saw its connection close during the silence').toBeDefined();
    expect(cutAfterMs!).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);

    await db.close(withHeartbeat.session);
    await db.close(keepaliveOnly.session);
  });
});
