import { describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { Redis } from 'ioredis';
import pg from 'pg';
import mysql from 'mysql2/promise';
import { processAlive } from '../helpers/wait.js';
import { MARIADB_USER, startMariadb, startPostgres, startRedis, type RunningServer } from '../helpers/servers.js';

// The private server launchers: each starts on its own port and data dir, answers a real
// client, and stop() leaves neither process nor directory behind.


async function expectGone(server: RunningServer): Promise<void> {
  await server.stop();
  expect(processAlive(server.pid)).toBe(false);
  expect(existsSync(server.dataDir)).toBe(false);
}

describe('test server launchers', () => {
  it('starts redis-server, answers ioredis, stops', async () => {
    const server = await startRedis();
    try {
      const client = new Redis({ host: '127.0.0.1', port: server.port, lazyConnect: true, maxRetriesPerRequest: 0 });
      await client.connect();
      await client.set('k', 'v');
      expect(await client.get('k')).toBe('v');
      client.disconnect();
    } finally {
      await expectGone(server);
    }
  });

  it('starts postgres, answers pg, stops', async () => {
    const server = await startPostgres();
    try {
      const client = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres' });
      await client.connect();
      const result = await client.query('SELECT $1::int + 1 AS n', [41]);
      expect(result.rows[0].n).toBe(42);
      await client.end();
    } finally {
      await expectGone(server);
    }
  });

  it('starts mariadb, answers mysql2, stops', async () => {
    const server = await startMariadb();
    try {
      const connection = await mysql.createConnection({ host: '127.0.0.1', port: server.port, user: MARIADB_USER, database: 'test' });
      const [rows] = await connection.execute('SELECT ? + 1 AS n', [41]);
      expect((rows as Array<{ n: number }>)[0]!.n).toBe(42);
      await connection.end();
    } finally {
      await expectGone(server);
    }
  });

  it('pause() stops the answers, resume() brings them back', async () => {
    const server = await startRedis();
    try {
      const client = new Redis({ host: '127.0.0.1', port: server.port, lazyConnect: true, maxRetriesPerRequest: 0, commandTimeout: 500 });
      await client.connect();
      server.pause();
      await expect(client.ping()).rejects.toThrow(/timed out/i);
      server.resume();
      expect(await client.ping()).toBe('PONG');
      client.disconnect();
    } finally {
      await expectGone(server);
    }
  });

  it('pause() of postgres stops the backends too (they run in their own process groups)', async () => {
    const server = await startPostgres();
    try {
      const client = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres', query_timeout: 500 });
      await client.connect();
      server.pause();
      await expect(client.query('SELECT 1')).rejects.toThrow(/timeout/i);
      server.resume();
      const fresh = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres' });
      await fresh.connect();
      expect((await fresh.query('SELECT 1 AS one')).rows[0].one).toBe(1);
      await fresh.end();
      await client.end().catch(() => {});
    } finally {
      await expectGone(server);
    }
  });
});
