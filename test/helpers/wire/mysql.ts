import { MARIADB_USER } from '../servers.js';
import type { Prng } from './prng.js';
import { gapAround, type ReplyReader, type Script, type Step } from './script.js';

// MySQL/MariaDB on the wire for the equivalence test: a handshake response for a
// passwordless user (mysql_native_password with an empty password sends an empty auth
// response, so the bytes can be prepared in advance), command packets (COM_QUERY,
// COM_PING, COM_INIT_DB, COM_STMT_PREPARE/EXECUTE/CLOSE/RESET), a reader that follows
// each response to its end by the shape the step announced, the values that legitimately
// differ between two connections (the greeting's connection id and auth scramble), and
// a random script generator. The client does not ask for CLIENT_DEPRECATE_EOF, so result
// sets keep their EOF packets, nor for TLS, compression or session tracking.

const CLIENT_LONG_FLAG = 0x4;
const CLIENT_CONNECT_WITH_DB = 0x8;
const CLIENT_PROTOCOL_41 = 0x200;
const CLIENT_TRANSACTIONS = 0x2000;
const CLIENT_SECURE_CONNECTION = 0x8000;
const CLIENT_MULTI_STATEMENTS = 0x10000;
const CLIENT_MULTI_RESULTS = 0x20000;
const CLIENT_PS_MULTI_RESULTS = 0x40000;
const CLIENT_PLUGIN_AUTH = 0x80000;
const SERVER_MORE_RESULTS_EXISTS = 0x0008;
const UTF8MB4_GENERAL_CI = 45;

function packet(seq: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUIntLE(payload.length, 0, 3);
  header[3] = seq;
  return Buffer.concat([header, payload]);
}

const command = (code: number, ...parts: Buffer[]): Buffer => packet(0, Buffer.concat([Buffer.from([code]), ...parts]));
const text = (value: string): Buffer => Buffer.from(value, 'utf8');

export function handshakeResponse(database: string): Buffer {
  const capabilities =
    CLIENT_LONG_FLAG | CLIENT_CONNECT_WITH_DB | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION |
    CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS | CLIENT_PS_MULTI_RESULTS | CLIENT_PLUGIN_AUTH;
  const fixed = Buffer.alloc(32);
  fixed.writeUInt32LE(capabilities, 0);
  fixed.writeUInt32LE(16 * 1024 * 1024, 4);
  fixed[8] = UTF8MB4_GENERAL_CI;
  const payload = Buffer.concat([
    fixed,
    text(`${MARIADB_USER}\0`),
    Buffer.from([0]), // empty auth response: the password is empty
    text(`${database}\0`),
    text('mysql_native_password\0'),
  ]);
  return packet(1, payload);
}

export const comQuery = (sql: string): Buffer => command(0x03, text(sql));
export const COM_PING = command(0x0e);
export const comInitDb = (database: string): Buffer => command(0x02, text(database));
export const comStmtPrepare = (sql: string): Buffer => command(0x16, text(sql));
export function comStmtExecute(statementId: number, params: ReadonlyArray<bigint | string | null>): Buffer {
  const head = Buffer.alloc(9);
  head.writeUInt32LE(statementId, 0);
  head[4] = 0; // no cursor
  head.writeUInt32LE(1, 5); // iteration count
  if (params.length === 0) return command(0x17, head);
  const nullBitmap = Buffer.alloc((params.length + 7) >> 3);
  const types: Buffer[] = [];
  const values: Buffer[] = [];
  params.forEach((param, i) => {
    if (param === null) {
      nullBitmap[i >> 3]! |= 1 << (i & 7);
      types.push(Buffer.from([0x06, 0x00])); // MYSQL_TYPE_NULL
    } else if (typeof param === 'bigint') {
      types.push(Buffer.from([0x08, 0x00])); // MYSQL_TYPE_LONGLONG, signed
      const value = Buffer.alloc(8);
      value.writeBigInt64LE(param);
      values.push(value);
    } else {
      types.push(Buffer.from([0xfe, 0x00])); // MYSQL_TYPE_STRING
      const bytes = text(param);
      if (bytes.length >= 251) throw new Error('test strings stay under 251 bytes (one-byte length)');
      values.push(Buffer.from([bytes.length]), bytes);
    }
  });
  return command(0x17, head, nullBitmap, Buffer.from([1]), ...types, ...values);
}
export const comStmtClose = (statementId: number): Buffer => {
  const id = Buffer.alloc(4);
  id.writeUInt32LE(statementId);
  return command(0x19, id);
};
export const comStmtReset = (statementId: number): Buffer => {
  const id = Buffer.alloc(4);
  id.writeUInt32LE(statementId);
  return command(0x1a, id);
};

export type ResponseShape = 'greeting' | 'ok' | 'result' | 'prepare';

function lenenc(payload: Buffer, at: number): { value: number; next: number } {
  const first = payload[at]!;
  if (first < 0xfb) return { value: first, next: at + 1 };
  if (first === 0xfc) return { value: payload.readUInt16LE(at + 1), next: at + 3 };
  if (first === 0xfd) return { value: payload.readUIntLE(at + 1, 3), next: at + 4 };
  if (first === 0xfe) return { value: Number(payload.readBigUInt64LE(at + 1)), next: at + 9 };
  throw new Error(`bad length-encoded integer 0x${first.toString(16)}`);
}

export class MysqlReader implements ReplyReader {
  units = 0;
  /** Statement ids from COM_STMT_PREPARE responses, in order (null for a failed prepare). */
  readonly statementIds: Array<number | null> = [];
  /** Where each statement id sits in the received stream: the server numbers statements server-wide. */
  readonly statementIdOffsets: number[] = [];
  #pending: Buffer = Buffer.alloc(0);
  /** Stream offset of #pending[0]. */
  #consumed = 0;
  /** Stream offset of the payload being handled. */
  #payloadAt = 0;
  /** The responses still owed, oldest first; the server's greeting comes unasked. */
  #shapes: ResponseShape[] = ['greeting'];
  #step: 'first' | 'columns' | 'columns-eof' | 'rows' = 'first';
  #left = 0;

  expect(shape: ResponseShape): void {
    this.#shapes.push(shape);
  }

  feed(chunk: Buffer): void {
    this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    let at = 0;
    while (at + 4 <= this.#pending.length) {
      const length = this.#pending.readUIntLE(at, 3);
      if (at + 4 + length > this.#pending.length) break;
      this.#payloadAt = this.#consumed + at + 4;
      this.#packet(this.#pending.subarray(at + 4, at + 4 + length));
      at += 4 + length;
    }
    this.#pending = this.#pending.subarray(at);
    this.#consumed += at;
  }

  #done(): void {
    this.#shapes.shift();
    this.#step = 'first';
    this.#left = 0;
    this.units++;
  }

  #packet(payload: Buffer): void {
    const shape = this.#shapes[0];
    if (shape === undefined) throw new Error(`a packet nobody asked for: ${payload.subarray(0, 16).toString('hex')}`);
    const first = payload.length > 0 ? payload[0]! : -1;
    switch (shape) {
      case 'greeting':
      case 'ok':
        return this.#done();
      case 'prepare':
        return this.#preparePacket(first, payload);
      case 'result':
        return this.#resultPacket(first, payload);
    }
  }

  #preparePacket(first: number, payload: Buffer): void {
    if (this.#step === 'first') {
      if (first === 0xff) {
        this.statementIds.push(null);
        return this.#done();
      }
      this.statementIds.push(payload.readUInt32LE(1));
      this.statementIdOffsets.push(this.#payloadAt + 1);
      const columns = payload.readUInt16LE(5);
      const params = payload.readUInt16LE(7);
      this.#left = params + (params > 0 ? 1 : 0) + columns + (columns > 0 ? 1 : 0);
      this.#step = 'rows';
    } else {
      this.#left--;
    }
    if (this.#left === 0) this.#done();
  }

  #resultPacket(first: number, payload: Buffer): void {
    switch (this.#step) {
      case 'first': {
        if (first === 0xff) return this.#done();
        if (first === 0x00) {
          const affected = lenenc(payload, 1);
          const insertId = lenenc(payload, affected.next);
          return this.#resultEnd(payload.readUInt16LE(insertId.next));
        }
        if (first === 0xfb) throw new Error('LOCAL INFILE request');
        this.#left = lenenc(payload, 0).value;
        this.#step = 'columns';
        return;
      }
      case 'columns':
        if (--this.#left === 0) this.#step = 'columns-eof';
        return;
      case 'columns-eof':
        if (first !== 0xfe) throw new Error(`expected the EOF after the column definitions, got 0x${first.toString(16)}`);
        this.#step = 'rows';
        return;
      case 'rows':
        if (first === 0xfe && payload.length < 9) return this.#resultEnd(payload.readUInt16LE(3));
        if (first === 0xff) return this.#done();
        return;
    }
  }

  #resultEnd(status: number): void {
    if (status & SERVER_MORE_RESULTS_EXISTS) {
      this.#step = 'first';
      return;
    }
    this.#done();
  }
}

/**
 * Zeroes what differs between two connections: the greeting's connection id and random
 * auth scramble, and the statement ids in COM_STMT_PREPARE's OK (MariaDB numbers prepared
 * statements server-wide, so the second run gets later ids). Everything else is compared
 * as received.
 */
export function normaliseMysql(bytes: Buffer, reader: MysqlReader): Buffer {
  const copy = Buffer.from(bytes);
  for (const offset of reader.statementIdOffsets) copy.fill(0, offset, offset + 4);
  if (copy.length < 5 || copy[4] !== 0x0a) return copy;
  const payload = 4;
  const nul = copy.indexOf(0, payload + 1);
  if (nul < 0) return copy;
  copy.fill(0, nul + 1, nul + 5); // connection id
  copy.fill(0, nul + 5, nul + 13); // scramble, first 8 bytes
  copy.fill(0, nul + 32, nul + 44); // scramble, last 12 bytes
  return copy;
}

type MysqlStep = Step<MysqlReader>;

/**
 * A random MySQL session on table `test.eq (id int primary key, v varchar(100))`: text
 * queries (row sets of random size, several statements in one query, inserts), errors
 * (syntax, a missing table, a duplicate key), prepared statements (prepare, executes with
 * silences between them, reset, close; a failing prepare), transactions with silences
 * inside, the client's own COM_PING, COM_INIT_DB, and a command packet split across two
 * writes with a silence between.
 */
export function mysqlScript(name: string, prng: Prng, everyMs: number, blocks: number): Script<MysqlReader> {
  const steps: MysqlStep[] = [];
  const gap = (): number => gapAround(prng, everyMs);
  const add = (label: string, shape: ResponseShape | null, write: ((reader: MysqlReader) => Buffer) | null, gapMs = gap()): void => {
    steps.push({
      label,
      gapMs,
      write: write ?? undefined,
      expect: shape ? (reader) => reader.expect(shape) : undefined,
      units: shape ? 1 : 0,
    });
  };
  const fixed = (bytes: Buffer) => () => bytes;
  // The reader expects the greeting from the start: the server speaks first.
  steps.push({ label: 'greeting', gapMs: 0, units: 1 });
  add('handshake response', 'ok', fixed(handshakeResponse('test')), 0);
  add('TRUNCATE eq', 'result', fixed(comQuery('TRUNCATE TABLE eq')), 0);
  let nextId = 1;
  let prepared = 0;

  const select = (): string =>
    prng.pick([
      () => `WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ${prng.int(1, 150)}) SELECT i, REPEAT(CHAR(65 + i % 26), ${prng.int(0, 300)}) AS s FROM r`,
      () => 'SELECT id, v FROM eq ORDER BY id',
      () => `SELECT COUNT(*) AS n, ${prng.int(0, 1000)} AS k, NULL AS nothing FROM eq`,
      () => `SELECT '${prng.word(prng.int(0, 30))}' AS t, ${prng.int(-50, 50)} / 7 AS q`,
    ])();
  const insert = (): string => `INSERT INTO eq VALUES (${nextId++}, '${prng.word(prng.int(1, 40))}')`;

  for (let block = 0; block < blocks; block++) {
    const kind = prng.pick(['query', 'query', 'errors', 'prepared', 'transaction', 'misc', 'split'] as const);
    switch (kind) {
      case 'query': {
        const sql = prng.pick([select, insert, () => `${select()}; ${insert()}; SELECT 'after' AS a`])();
        add(`COM_QUERY ${JSON.stringify(sql.slice(0, 50))}`, 'result', fixed(comQuery(sql)));
        break;
      }
      case 'errors': {
        const sql = prng.pick(['SELEC 1', 'SELECT * FROM no_such_table', `INSERT INTO eq VALUES (${Math.max(1, nextId - 1)}, 'dup'), (${Math.max(1, nextId - 1)}, 'dup')`]);
        add(`COM_QUERY failing: ${sql.slice(0, 40)}`, 'result', fixed(comQuery(sql)));
        break;
      }
      case 'prepared': {
        const statement = prepared++;
        const insertsRows = prng.chance(0.4);
        const sql = insertsRows ? 'INSERT INTO eq VALUES (?, ?)' : 'SELECT ? + 1 AS x, CONCAT(?, \'!\') AS t, id FROM eq WHERE id <= ? ORDER BY id';
        add(`COM_STMT_PREPARE ${sql.slice(0, 30)}`, 'prepare', fixed(comStmtPrepare(sql)));
        const id = (reader: MysqlReader): number => {
          const value = reader.statementIds[statement];
          if (value === null || value === undefined) throw new Error('no statement id');
          return value;
        };
        const runs = prng.int(1, 3);
        for (let i = 0; i < runs; i++) {
          const params = insertsRows
            ? [BigInt(nextId++), prng.chance(0.2) ? null : prng.word(prng.int(0, 30))]
            : [BigInt(prng.int(-9, 99)), prng.word(prng.int(0, 20)), BigInt(prng.int(0, 5))];
          add(`COM_STMT_EXECUTE #${i}`, 'result', (reader) => comStmtExecute(id(reader), params));
        }
        if (prng.chance(0.3)) add('COM_STMT_RESET', 'ok', (reader) => comStmtReset(id(reader)));
        // COM_STMT_CLOSE has no response: the next step's replies prove the stream is intact.
        add('COM_STMT_CLOSE', null, (reader) => comStmtClose(id(reader)));
        if (prng.chance(0.3)) {
          prepared++;
          add('COM_STMT_PREPARE of bad SQL (error)', 'prepare', fixed(comStmtPrepare('SELECT FROM WHERE')));
        }
        break;
      }
      case 'transaction': {
        add('BEGIN', 'result', fixed(comQuery('BEGIN')));
        const statements = prng.int(1, 3);
        for (let i = 0; i < statements; i++) add('INSERT in transaction', 'result', fixed(comQuery(insert())));
        if (prng.chance(0.5)) add('a failing statement in the transaction', 'result', fixed(comQuery('SELECT * FROM no_such_table')));
        add('SELECT in transaction', 'result', fixed(comQuery('SELECT id, v FROM eq ORDER BY id')));
        const end = prng.pick(['COMMIT', 'ROLLBACK']);
        add(end, 'result', fixed(comQuery(end)));
        break;
      }
      case 'misc': {
        if (prng.chance(0.5)) add("the client's own COM_PING", 'ok', fixed(COM_PING));
        else add('COM_INIT_DB test', 'ok', fixed(comInitDb('test')));
        break;
      }
      case 'split': {
        // Half a command packet, a silence, the rest: no heartbeat may go into the middle of it.
        const bytes = comQuery(`SELECT '${prng.word(prng.int(5, 40))}' AS split`);
        const cut = prng.int(1, bytes.length - 1);
        add(`COM_QUERY split at byte ${cut}: first part`, null, fixed(bytes.subarray(0, cut)));
        add('COM_QUERY split: rest', 'result', fixed(bytes.subarray(cut)));
        break;
      }
    }
  }
  add('SELECT at the end', 'result', fixed(comQuery('SELECT id, v FROM eq ORDER BY id')));
  return { name, steps };
}

/** Simple queries with silences swept across the probe window (the race). */
export function mysqlRaceScript(name: string, gaps: readonly number[]): Script<MysqlReader> {
  const steps: MysqlStep[] = [
    { label: 'greeting', gapMs: 0, units: 1 },
    { label: 'handshake response', gapMs: 0, write: () => handshakeResponse('test'), expect: (reader) => reader.expect('ok'), units: 1 },
  ];
  gaps.forEach((gapMs, i) => {
    const write = comQuery(`SELECT ${i} AS step, REPEAT('r', ${i * 10}) AS pad`);
    steps.push({ label: `query #${i}`, gapMs, write: () => write, expect: (reader) => reader.expect('result'), units: 1 });
  });
  return { name, steps };
}
