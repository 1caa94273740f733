import type { HttpPoolConfig } from '../../src/config/schema.js';
import { HttpPool, type OriginPool } from '../../src/pool/http-pool.js';
import pino from 'pino';
import { ManualClock } from '../../src/clock.js';
import { SockoptRefusals } from '../../src/net/sockopt-refusals.js';
import { testRouteMetrics, type TestRouteMetrics } from './route-metrics.js';

// An HTTP pool for unit tests: plain TCP to one loopback origin, no limits unless given,
// its deadlines on a ManualClock the test moves. The caller owns destroy().

export interface TestHttpPool {
  readonly pool: HttpPool;
  readonly origin: OriginPool;
  readonly clock: ManualClock;
  readonly metric: TestRouteMetrics['metric'];
}

export function testHttpPool(port: number, limits: Partial<HttpPoolConfig> = {}): TestHttpPool {
  const metrics = testRouteMetrics('web');
  const clock = new ManualClock();
  const pool = new HttpPool({
    route: 'web',
    settings: {
      connectTimeoutMs: 5_000,
      keepalive: { idleMs: 30_000, intervalMs: 5_000, count: 3 },
      userTimeoutMs: 0,
      noDelay: true,
      sockopt: new SockoptRefusals('web', { metrics: metrics.registry, log: pino({ level: 'silent' }), clock }),
      clock,
      pool: { maxSockets: 0, idleTimeoutMs: 0, maxAgeMs: 0, maxRequests: 0, ...limits },
    },
    metrics: metrics.route,
    clock,
  });
  const origin = pool.origin({ host: '127.0.0.1', port, tls: null });
  return { pool, origin, clock, metric: metrics.metric };
}
