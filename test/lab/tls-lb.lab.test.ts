import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sample } from '../helpers/proxy.js';
import { labAllowed } from './netns.js';
import { reportFailure } from './proxy-in-ns.js';
import { idleFigure, openSessionPair, startSessionPairLab, type PairPorts, type SessionPairLab } from './session-pair.js';

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

const isRoot = labAllowed('test/lab/tls-lb.lab.test.ts', 'ip netns, haproxy and servers in namespaces');

const LB_IDLE_TIMEOUT_MS = 3_000;
const IDLE_MS = 2 * LB_IDLE_TIMEOUT_MS + 1_000;
const HEARTBEAT = { everyMs: 1_000, timeoutMs: 2_000 };
type TlsKind = 'redis' | 'postgres';
const KINDS: readonly TlsKind[] = ['redis', 'postgres'];
const LB_PORTS: Record<TlsKind, number> = { redis: 8_101, postgres: 8_102 };
const PROXY_PORTS: Record<TlsKind, PairPorts> = {
  redis: { heartbeat: 15_101, keepaliveOnly: 15_102 },
  postgres: { heartbeat: 15_111, keepaliveOnly: 15_112 },
};
/** require for redis (encrypt, no check), verify-full for postgres: both modes cross the LB. */
const MODES: Record<TlsKind, string> = { redis: 'require', postgres: 'verify-full' };

describe.skipIf(!isRoot)('middlebox lab: heartbeats inside upstream TLS keep a plaintext client session alive through HAProxy (mode tcp)', () => {
  let lab: SessionPairLab;
  const figures: string[] = [];

  beforeAll(async () => {
    lab = await startSessionPairLab({
      idleTimeoutMs: LB_IDLE_TIMEOUT_MS,
      tlsOnly: true,
      kinds: KINDS,
      lbPorts: LB_PORTS,
      proxyPorts: PROXY_PORTS,
      heartbeat: HEARTBEAT,
      // The LB's address is not in the server certificate: verify-full checks the name the
      // certificate was issued for (localhost), as a client of a managed database would.
      routeKeys: (kind, path) => ({ upstreamTls: `{ mode: ${MODES[kind]}, ca: "${path.pki!.ca}", servername: localhost }` }),
    });
  }, 120_000);

  afterEach(async (context) => {
    await reportFailure(context, lab?.proxy ?? null, lab?.outputs);
  });

  afterAll(async () => {
    if (figures.length > 0) console.log(`[lab] idle survival over upstream TLS through HAProxy (timeout client/server ${LB_IDLE_TIMEOUT_MS} ms):\n${figures.join('\n')}`);
    await lab?.stop();
  });

  async function metric(name: string, labels: Record<string, string>): Promise<number> {
    return sample(await lab.proxy.metrics(), `keepalive_proxy_${name}`, labels);
  }

  it.each(KINDS)('%s: the same TLS session works after idling past the LB timeout with heartbeats, and dies without', async (kind) => {
    const pair = await openSessionPair(lab.db, kind, PROXY_PORTS[kind]);
    const { before } = pair;
    expect(before.heartbeat.outcome).toBe('ok');
    expect(before.keepaliveOnly.outcome).toBe('ok');
    // Both sessions crossed the LB inside TLS.
    for (const route of [`${kind}-heartbeat`, `${kind}-keepalive-only`]) {
      expect(await metric('tls_handshakes_total', { route, side: 'upstream' }), route).toBeGreaterThanOrEqual(1);
    }

    const idle = await pair.idle(IDLE_MS, () => metric('heartbeats_total', { route: `${kind}-heartbeat`, result: 'ok' }));
    figures.push(idleFigure(kind, `upstreamTls ${MODES[kind]}, `, before, idle, HEARTBEAT.everyMs, IDLE_MS));

    expect(idle.after.heartbeat, 'with heartbeats the session survives the idle').toMatchObject({ outcome: 'ok', identity: before.heartbeat.identity });
    expect(idle.heartbeatClosed, 'the heartbeat session was never closed').toBeUndefined();
    expect(idle.probes).toBeGreaterThanOrEqual(Math.floor(IDLE_MS / (HEARTBEAT.everyMs + 500)) - 1);
    expect(await metric('evictions_total', { route: `${kind}-heartbeat`, reason: 'tls_error' })).toBe(0);
    expect(idle.after.keepaliveOnly.outcome, 'without heartbeats the LB cut the idle session').toBe('error');
    expect(idle.cut, 'the client saw its connection close during the silence').toBeDefined();
    expect(idle.cutAfterMs!).toBeGreaterThanOrEqual(LB_IDLE_TIMEOUT_MS - 500);

    await pair.close();
  });
});
