import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sample } from '../helpers/proxy.js';
import type { DbKind } from './db-client.js';
import { labAllowed } from './netns.js';
import { reportFailure } from './proxy-in-ns.js';
import { idleFigure, openSessionPair, startSessionPairLab, type PairPorts, type SessionPairLab } from './session-pair.js';

// Application heartbeats through a payload-counting load balancer (issue 3):
//   client ns: a real client (ioredis / pg / mysql2) and keepalive-proxy as its sidecar
//   lb ns:     HAProxy, mode tcp, timeout client/server LB_IDLE_TIMEOUT_MS (no IP forwarding)
//   server ns: redis-server, postgres, mariadbd
// One proxy, two routes per protocol to the same LB frontend: one with a heartbeat every
// HEARTBEAT_EVERY (below the LB's timeout), one without (TCP keepalive only, which HAProxy
// does not count). A session on each idles for IDLE_MS (over twice the LB's timeout), then
// runs a query on the same client object: with heartbeats it answers from the same server
// connection; without, the LB cut the session during the silence and the query fails.

const isRoot = labAllowed('test/lab/heartbeat-lb.lab.test.ts', 'ip netns, haproxy and servers in namespaces');

const LB_IDLE_TIMEOUT_MS = 3_000;
const IDLE_MS = 2 * LB_IDLE_TIMEOUT_MS + 1_000;
const HEARTBEAT = { everyMs: 1_000, timeoutMs: 2_000 };
const LB_PORTS: Record<DbKind, number> = { redis: 8_001, postgres: 8_002, mysql: 8_003 };
const PROXY_PORTS: Record<DbKind, PairPorts> = {
  redis: { heartbeat: 15_001, keepaliveOnly: 15_002 },
  postgres: { heartbeat: 15_011, keepaliveOnly: 15_012 },
  mysql: { heartbeat: 15_021, keepaliveOnly: 15_022 },
};
const KINDS: readonly DbKind[] = ['redis', 'postgres', 'mysql'];

describe.skipIf(!isRoot)('middlebox lab: heartbeats keep a real client session alive through HAProxy (mode tcp)', () => {
  let lab: SessionPairLab;
  const figures: string[] = [];

  beforeAll(async () => {
    lab = await startSessionPairLab({ idleTimeoutMs: LB_IDLE_TIMEOUT_MS, kinds: KINDS, lbPorts: LB_PORTS, proxyPorts: PROXY_PORTS, heartbeat: HEARTBEAT });
  }, 120_000);

  afterEach(async (context) => {
    await reportFailure(context, lab?.proxy ?? null, lab?.outputs);
  });

  afterAll(async () => {
    if (figures.length > 0) console.log(`[lab] idle survival through HAProxy (timeout client/server ${LB_IDLE_TIMEOUT_MS} ms):\n${figures.join('\n')}`);
    await lab?.stop();
  });

  async function heartbeatsOk(route: string): Promise<number> {
    return sample(await lab.proxy.metrics(), 'keepalive_proxy_heartbeats_total', { route, result: 'ok' });
  }

  it.each(KINDS)('%s: the same session works after idling past the LB timeout with heartbeats, and dies without', async (kind) => {
    const pair = await openSessionPair(lab.db, kind, PROXY_PORTS[kind]);
    const { before } = pair;
    expect(before.heartbeat.outcome).toBe('ok');
    expect(before.keepaliveOnly.outcome).toBe('ok');

    const idle = await pair.idle(IDLE_MS, () => heartbeatsOk(`${kind}-heartbeat`));
    figures.push(idleFigure(kind, '', before, idle, HEARTBEAT.everyMs, IDLE_MS));

    expect(idle.after.heartbeat, 'with heartbeats the session survives the idle').toMatchObject({ outcome: 'ok', identity: before.heartbeat.identity });
    expect(idle.heartbeatClosed, 'the heartbeat session was never closed').toBeUndefined();
    expect(idle.probes).toBeGreaterThanOrEqual(Math.floor(IDLE_MS / (HEARTBEAT.everyMs + 500)) - 1);
    expect(idle.after.keepaliveOnly.outcome, 'without heartbeats the LB cut the idle session').toBe('error');
    expect(idle.cut, 'the client saw its connection close during the silence').toBeDefined();
    expect(idle.cutAfterMs!).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);

    await pair.close();
  });
});
