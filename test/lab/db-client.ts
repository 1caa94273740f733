import { REPO_ROOT } from '../helpers/proxy.js';
import { nodeInNs, type JsonLine, type NsNode } from './netns.js';

// Real database clients (ioredis, pg, mysql2) run inside a lab namespace (nodeInNs), driven
// over stdin/stdout as JSON lines like agent.ts. Each session is one client object on one
// connection, set up like an application that trusts its connection: no reconnects, no
// offline queue, no keepalive. A query reports its outcome as JSON (never throws), with the
// server-side id of the connection that answered, so a test can tell "the same session
// still works" from "it quietly reconnected". The socket's close is reported as an event.

const DB_CLIENT_SOURCE = String.raw`
import { createRequire } from 'node:module';
import net from 'node:net';

// The script lives in a temp dir: resolve the client libraries from the repository.
const require = createRequire(REPO_PACKAGE_JSON);
const { Redis } = require('ioredis');
const pg = require('pg');
const mysql = require('mysql2/promise');

const sessions = new Map();
let nextSession = 1;

function watchSocket(session, socket) {
  socket.once('close', () => emit({ event: 'closed', session }));
}

function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(what + ' timed out after ' + ms + ' ms')), ms))),
  ]);
}

const drivers = {
  async redis(session, host, port) {
    const client = new Redis({
      host, port, lazyConnect: true, connectTimeout: 5000,
      retryStrategy: () => null, reconnectOnError: () => false, maxRetriesPerRequest: 0,
      enableOfflineQueue: false, enableReadyCheck: false, autoResendUnfulfilledCommands: false,
    });
    client.on('error', (error) => emit({ event: 'error', session, message: error.message }));
    await client.connect();
    watchSocket(session, client.stream);
    return {
      identity: async () => Number(await client.client('ID')),
      close: async () => client.disconnect(),
    };
  },
  async postgres(session, host, port) {
    const client = new pg.Client({ host, port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 5000 });
    client.on('error', (error) => emit({ event: 'error', session, message: error.message }));
    await client.connect();
    watchSocket(session, client.connection.stream);
    return {
      identity: async () => (await client.query('SELECT pg_backend_pid() AS id')).rows[0].id,
      close: async () => client.end(),
    };
  },
  async mysql(session, host, port) {
    const connection = await mysql.createConnection({ host, port, user: 'test', connectTimeout: 5000 });
    connection.on('error', (error) => emit({ event: 'error', session, message: error.message }));
    watchSocket(session, connection.connection.stream);
    return {
      identity: async () => Number((await connection.query('SELECT CONNECTION_ID() AS id'))[0][0].id),
      close: async () => connection.end(),
    };
  },
};

const ops = {
  async open({ kind, host, port }) {
    const session = nextSession++;
    const started = performance.now();
    const handle = await within(drivers[kind](session, host, port), 10000, 'connect');
    const connectMs = performance.now() - started;
    sessions.set(session, handle);
    return { session, connectMs };
  },
  // Never throws: the outcome is the answer. startedAt: this clock before the query left.
  async query({ session, timeoutMs = 5000 }) {
    const handle = sessions.get(session);
    const startedAt = Date.now();
    const started = performance.now();
    try {
      const identity = await within(handle.identity(), timeoutMs, 'query');
      return { outcome: 'ok', identity, startedAt, ms: performance.now() - started };
    } catch (error) {
      return { outcome: 'error', error: String(error?.message ?? error), startedAt, ms: performance.now() - started };
    }
  },
  async close({ session }) {
    await sessions.get(session)?.close().catch(() => {});
    sessions.delete(session);
    return {};
  },
  // Time from connect() to the first byte the server sends (a MySQL greeting), then close.
  async firstByte({ host, port, timeoutMs = 5000 }) {
    const started = performance.now();
    const socket = net.connect({ host, port });
    try {
      return await within(new Promise((resolve, reject) => {
        socket.once('data', (chunk) => resolve({ ms: performance.now() - started, bytes: chunk.length }));
        socket.once('error', reject);
        socket.once('close', () => reject(new Error('closed before the first byte')));
      }), timeoutMs, 'first byte');
    } finally {
      socket.destroy();
    }
  },
};
`.replace('REPO_PACKAGE_JSON', JSON.stringify(`${REPO_ROOT}/package.json`));

export type DbKind = 'redis' | 'postgres' | 'mysql';

export interface QueryOutcome {
  readonly outcome: 'ok' | 'error';
  /** The server's id for the connection that answered (CLIENT ID, pg_backend_pid(), CONNECTION_ID()). */
  readonly identity?: number;
  readonly error?: string;
  /** The client's clock (Date.now()) just before the query left: no reply to it can be older. */
  readonly startedAt: number;
  readonly ms: number;
}

export interface DbClient {
  readonly node: NsNode;
  /** Opens one session (one client object, one connection); resolves with its id and the connect time. */
  open(kind: DbKind, host: string, port: number): Promise<{ session: number; connectMs: number }>;
  query(session: number, timeoutMs?: number): Promise<QueryOutcome>;
  close(session: number): Promise<void>;
  /** The 'closed' event of a session's socket, if it came (from event index `since` on). */
  closedEvent(session: number, since?: number): JsonLine | undefined;
  /** connect() to the first byte from the server, in ms. */
  firstByte(host: string, port: number): Promise<number>;
  stop(): Promise<void>;
}

export async function startDbClient(ns: string): Promise<DbClient> {
  const node = await nodeInNs(ns, DB_CLIENT_SOURCE);
  return {
    node,
    async open(kind, host, port) {
      const reply = await node.request({ op: 'open', kind, host, port }, 15_000);
      return { session: reply.session as number, connectMs: reply.connectMs as number };
    },
    async query(session, timeoutMs = 5_000) {
      const reply = await node.request({ op: 'query', session, timeoutMs }, timeoutMs + 5_000);
      return {
        outcome: reply.outcome as 'ok' | 'error',
        identity: reply.identity as number | undefined,
        error: reply.error as string | undefined,
        startedAt: reply.startedAt as number,
        ms: reply.ms as number,
      };
    },
    async close(session) {
      await node.request({ op: 'close', session });
    },
    closedEvent(session, since = 0) {
      return node.events.slice(since).find((event) => event.event === 'closed' && event.session === session);
    },
    async firstByte(host, port) {
      return (await node.request({ op: 'firstByte', host, port }, 10_000)).ms as number;
    },
    stop: () => node.stop(),
  };
}
