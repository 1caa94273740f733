import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sample } from '../helpers/proxy.js';
import { startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';
import { sleep } from '../helpers/wait.js';
import { startAgent, type Agent } from './agent.js';
import { startDbClient, type DbClient, type DbKind } from './db-client.js';
import { startLoadBalancer, type LoadBalancer } from './lb.js';
import { ADDRESSES, createLab, type Lab } from './netns.js';
import { reportFailure, startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';

// Application heartbeats through a payload-counting load balancer (issue 3):
//   client ns: a real client (ioredis / pg / mysql2) and keepalive-proxy as its sidecar
//   lb ns:     HAProxy, mode tcp, timeout client/server LB_IDLE_TIMEOUT_MS (no IP forwarding)
//   server ns: redis-server, postgres, mariadbd
// One proxy, two routes per protocol to the same LB frontend: one with a heartbeat every
// HEARTBEAT_EVERY (below the LB's timeout), one without (TCP keepalive only, which HAProxy
// does not count). A session on each idles for IDLE_MS (over twice the LB's timeout), then
// runs a query on the same client object: with heartbeats it answers from the same server
// connection; without, the LB cut the session during the silence and the query fails.

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  console.warn('test/lab/heartbeat-lb.lab.test.ts skipped: the middlebox lab needs root (ip netns, haproxy and servers in namespaces)');
}

const LB_IDLE_TIMEOUT_MS = 3_000;
const IDLE_MS = 2 * LB_IDLE_TIMEOUT_MS + 1_000;
const HEARTBEAT_EVERY_MS = 1_000;
const HEARTBEAT_TIMEOUT_MS = 2_000;
const LB_PORTS: Record<DbKind, number> = { redis: 8_001, postgres: 8_002, mysql: 8_003 };
const PROXY_PORTS: Record<DbKind, { heartbeat: number; keepaliveOnly: number }> = {
  redis: { heartbeat: 15_001, keepaliveOnly: 15_002 },
  postgres: { heartbeat: 15_011, keepaliveOnly: 15_012 },
  mysql: { heartbeat: 15_021, keepaliveOnly: 15_022 },
};
const KINDS: readonly DbKind[] = ['redis', 'postgres', 'mysql'];

function proxyYaml(): string {
  const routes = KINDS.flatMap((kind) => [
    `  - name: ${kind}-heartbeat
    protocol: ${kind}
    listen: 127.0.0.1:${PROXY_PORTS[kind].heartbeat}
    upstream: ${ADDRESSES.middleClientSide}:${LB_PORTS[kind]}
    heartbeat: { every: ${HEARTBEAT_EVERY_MS}ms, timeout: ${HEARTBEAT_TIMEOUT_MS}ms }`,
    `  - name: ${kind}-keepalive-only
    protocol: ${kind}
    listen: 127.0.0.1:${PROXY_PORTS[kind].keepaliveOnly}
    upstream: ${ADDRESSES.middleClientSide}:${LB_PORTS[kind]}`,
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

describe.skipIf(!isRoot)('middlebox lab: heartbeats keep a real client session alive through HAProxy (mode tcp)', () => {
  let lab: Lab;
  const servers: Partial<Record<DbKind, RunningServer>> = {};
  const balancers: LoadBalancer[] = [];
  let agent: Agent;
  let db: DbClient;
  let proxy: ProxyInNs;
  const figures: string[] = [];

  beforeAll(async () => {
    lab = await createLab({ forwarding: false });
    const placement = { netns: lab.server, bind: ADDRESSES.server };
    [servers.redis, servers.postgres, servers.mysql] = await Promise.all([startRedis(placement), startPostgres(placement), startMariadb(placement)]);
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
    proxy = await startProxyInNs(lab.client, proxyYaml(), agent);
    db = await startDbClient(lab.client);
  }, 120_000);

  afterEach(async (context) => {
    await reportFailure(context, proxy, {
      'db client stderr': () => String(db?.node.stderr()),
      'haproxy output': () => balancers.map((lb) => lb.output()).join('\n'),
    });
  });

  afterAll(async () => {
    if (figures.length > 0) console.log(`[lab] idle survival through HAProxy (timeout client/server ${LB_IDLE_TIMEOUT_MS} ms):\n${figures.join('\n')}`);
    await db?.stop();
    await proxy?.stop();
    await agent?.stop();
    for (const lb of balancers) await lb.stop();
    await Promise.all(Object.values(servers).map((server) => server.stop()));
    await lab?.destroy();
  });

  async function heartbeatsOk(route: string): Promise<number> {
    return sample(await proxy.metrics(), 'keepalive_proxy_heartbeats_total', { route, result: 'ok' });
  }

  it.each(KINDS)('%s: the same session works after idling past the LB timeout with heartbeats, and dies without', async (kind) => {
    const withHeartbeat = await db.open(kind, '127.0.0.1', PROXY_PORTS[kind].heartbeat);
    const keepaliveOnly = await db.open(kind, '127.0.0.1', PROXY_PORTS[kind].keepaliveOnly);
    const before = { heartbeat: await db.query(withHeartbeat.session), keepaliveOnly: await db.query(keepaliveOnly.session) };
    expect(before.heartbeat.outcome).toBe('ok');
    expect(before.keepaliveOnly.outcome).toBe('ok');
    const probesBefore = await heartbeatsOk(`${kind}-heartbeat`);

    const since = db.node.mark();
    const idleFrom = Date.now();
    await sleep(IDLE_MS);
    const after = { heartbeat: await db.query(withHeartbeat.session), keepaliveOnly: await db.query(keepaliveOnly.session) };
    const probes = (await heartbeatsOk(`${kind}-heartbeat`)) - probesBefore;
    const cut = db.closedEvent(keepaliveOnly.session, since);
    const cutAfterMs = cut ? Number(cut.t) - idleFrom : null;

    figures.push(
      `  ${kind.padEnd(8)} heartbeat every ${HEARTBEAT_EVERY_MS} ms: idle ${IDLE_MS} ms survived: ${after.heartbeat.outcome === 'ok'} ` +
        `(same server connection: ${after.heartbeat.identity === before.heartbeat.identity}, ${probes} heartbeats during the silence, query ${after.heartbeat.ms.toFixed(1)} ms)\n` +
        `  ${kind.padEnd(8)} keepalive only:      session cut ${cutAfterMs} ms into the silence; query after it: ${after.keepaliveOnly.outcome} (${after.keepaliveOnly.error ?? ''})`,
    );

    expect(after.heartbeat, 'with heartbeats the session survives the idle').toMatchObject({ outcome: 'ok', identity: before.heartbeat.identity });
    expect(db.closedEvent(withHeartbeat.session, since), 'the heartbeat session was never closed').toBeUndefined();
    expect(probes).toBeGreaterThanOrEqual(Math.floor(IDLE_MS / (HEARTBEAT_EVERY_MS + 500)) - 1);
    expect(after.keepaliveOnly.outcome, 'without heartbeats the LB cut the idle session').toBe('error');
    expect(cut, 'the client saw its connection close during the silence').toBeDefined();
    expect(cutAfterMs!).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);

    await db.close(withHeartbeat.session);
    await db.close(keepaliveOnly.session);
  });
});
