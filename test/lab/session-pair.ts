import { sleep } from '../helpers/wait.js';
import { startAgent, type Agent } from './agent.js';
import { behindBalancer, type BehindMiddlebox } from './behind-middlebox.js';
import { startDbClient, type DbClient, type DbKind, type QueryOutcome } from './db-client.js';
import type { JsonLine } from './netns.js';
import { startProxyInNs, type ProxyInNs } from './proxy-in-ns.js';
import { CLIENT_KEEPALIVE, labProxyYaml, type LabRoute } from './proxy-yaml.js';

// Heartbeats against a middlebox that forgets idle sessions, as the lab measures them: two
// routes of one protocol to the same upstream, `<kind>-heartbeat` with a heartbeat and
// `<kind>-keepalive-only` without (TCP keepalive only), and one real client session on each.
// Both idle together; a query afterwards on the same client object tells whether its session
// survived, and the server's connection id whether it is still the same connection.

export interface PairPorts {
  readonly heartbeat: number;
  readonly keepaliveOnly: number;
}

export interface HeartbeatYaml {
  readonly everyMs: number;
  readonly timeoutMs: number;
}

/** The two routes; `more` holds keys both routes carry (e.g. upstreamTls). */
export function sessionPairRoutes(
  kind: DbKind,
  ports: PairPorts,
  upstream: string,
  heartbeat: HeartbeatYaml,
  more: Readonly<Record<string, string>> = {},
): LabRoute[] {
  return [
    { name: `${kind}-heartbeat`, protocol: kind, port: ports.heartbeat, upstream, more: { ...more, heartbeat: `{ every: ${heartbeat.everyMs}ms, timeout: ${heartbeat.timeoutMs}ms }` } },
    { name: `${kind}-keepalive-only`, protocol: kind, port: ports.keepaliveOnly, upstream, more },
  ];
}

export interface SessionPairLabOptions<K extends DbKind> {
  /** The balancer's idle timeout (HAProxy timeout client/server). */
  readonly idleTimeoutMs: number;
  readonly tlsOnly?: boolean;
  readonly kinds: readonly K[];
  /** The balancer's frontend port per database. */
  readonly lbPorts: Readonly<Record<K, number>>;
  readonly proxyPorts: Readonly<Record<K, PairPorts>>;
  readonly heartbeat: HeartbeatYaml;
  /** Keys both routes of a database carry (e.g. upstreamTls), given the fixture (its PKI). */
  readonly routeKeys?: (kind: K, path: BehindMiddlebox) => Readonly<Record<string, string>>;
}

/** The databases behind the balancer, and in the client namespace the proxy and a real client. */
export interface SessionPairLab {
  readonly path: BehindMiddlebox;
  readonly proxy: ProxyInNs;
  readonly db: DbClient;
  /** For reportFailure: the db client's stderr and the balancer's output. */
  readonly outputs: Record<string, () => string | Promise<string>>;
  stop(): Promise<void>;
}

/**
 * One proxy with sessionPairRoutes for each database, upstream keepalive every second (which
 * HAProxy does not count as payload). Stops what it started when the set-up fails half-way.
 */
export async function startSessionPairLab<K extends DbKind>(options: SessionPairLabOptions<K>): Promise<SessionPairLab> {
  const path = await behindBalancer({ idleTimeoutMs: options.idleTimeoutMs, tlsOnly: options.tlsOnly });
  let agent: Agent | undefined;
  let proxy: ProxyInNs | undefined;
  let db: DbClient | undefined;
  const stop = async (): Promise<void> => {
    await db?.stop();
    await proxy?.stop();
    await agent?.stop();
    await path.destroy();
  };
  try {
    // Settled, not Promise.all: on a failure every server has started (and is owned) before stop().
    const served = await Promise.allSettled(options.kinds.map((kind) => path.serve(kind, options.lbPorts[kind])));
    const upstreams = served.map((result) => {
      if (result.status === 'rejected') throw result.reason;
      return result.value.upstream;
    });
    const routes = options.kinds.flatMap((kind, index) =>
      sessionPairRoutes(kind, options.proxyPorts[kind], upstreams[index]!, options.heartbeat, options.routeKeys?.(kind, path)),
    );
    const yaml = labProxyYaml(
      { logLevel: 'info', keepalive: { client: CLIENT_KEEPALIVE, upstream: { idle: '1s', interval: '1s', count: 3 } }, userTimeout: '0' },
      routes,
    );
    agent = await startAgent(path.lab.client);
    proxy = await startProxyInNs(path.lab.client, yaml, agent);
    db = await startDbClient(path.lab.client);
    const client = db;
    return { path, proxy, db, outputs: { 'db client stderr': () => String(client.node.stderr()), ...path.outputs }, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

export interface PairQueries {
  readonly heartbeat: QueryOutcome;
  readonly keepaliveOnly: QueryOutcome;
}

export interface IdleOutcome {
  readonly after: PairQueries;
  /** Heartbeats answered on the heartbeat route during the silence. */
  readonly probes: number;
  /** The heartbeat session's socket closed during the silence (it must not). */
  readonly heartbeatClosed: JsonLine | undefined;
  /** The keepalive-only session's socket closed during the silence, and when. */
  readonly cut: JsonLine | undefined;
  readonly cutAfterMs: number | null;
}

export interface SessionPair {
  /** One query on each session right after it opened. */
  readonly before: PairQueries;
  /** Both sessions idle for idleMs, then query again; `heartbeatsOk` reads the heartbeat route's answered count. */
  idle(idleMs: number, heartbeatsOk: () => Promise<number>): Promise<IdleOutcome>;
  close(): Promise<void>;
}

export async function openSessionPair(db: DbClient, kind: DbKind, ports: PairPorts): Promise<SessionPair> {
  const withHeartbeat = await db.open(kind, '127.0.0.1', ports.heartbeat);
  const keepaliveOnly = await db.open(kind, '127.0.0.1', ports.keepaliveOnly);
  const queryBoth = async (): Promise<PairQueries> => ({ heartbeat: await db.query(withHeartbeat.session), keepaliveOnly: await db.query(keepaliveOnly.session) });
  const before = await queryBoth();
  // The silence (and the LB's idle timer) starts with the keepalive-only session's last query,
  // not when idle() is called, nor when its reply's line reached this process: the scrapes a
  // test makes in between, and a late pipe, must not count against the cut's time. Timed from
  // the client's clock before that query left, so the silence is never under-counted; its
  // events are watched from here too, so a cut during those scrapes is still seen.
  const quietSince = before.keepaliveOnly.startedAt;
  const since = db.node.mark();
  return {
    before,
    async idle(idleMs, heartbeatsOk) {
      const probesBefore = await heartbeatsOk();
      await sleep(idleMs);
      const after = await queryBoth();
      const probes = (await heartbeatsOk()) - probesBefore;
      const cut = db.closedEvent(keepaliveOnly.session, since);
      return { after, probes, heartbeatClosed: db.closedEvent(withHeartbeat.session, since), cut, cutAfterMs: cut ? Number(cut.t) - quietSince : null };
    },
    async close() {
      await db.close(withHeartbeat.session);
      await db.close(keepaliveOnly.session);
    },
  };
}

/** Two lines for the [lab] figures: what the heartbeat session and the keepalive-only one went through. */
export function idleFigure(kind: DbKind, label: string, before: PairQueries, outcome: IdleOutcome, heartbeatEveryMs: number, idleMs: number): string {
  const { after, probes, cutAfterMs } = outcome;
  return (
    `  ${kind.padEnd(8)} ${label}heartbeat every ${heartbeatEveryMs} ms: idle ${idleMs} ms survived: ${after.heartbeat.outcome === 'ok'} ` +
    `(same server connection: ${after.heartbeat.identity === before.heartbeat.identity}, ${probes} heartbeats during the silence, query ${after.heartbeat.ms.toFixed(1)} ms)\n` +
    `  ${kind.padEnd(8)} ${label}no heartbeat: session cut ${cutAfterMs} ms into the silence; query after it: ${after.keepaliveOnly.outcome} (${after.keepaliveOnly.error ?? ''})`
  );
}
