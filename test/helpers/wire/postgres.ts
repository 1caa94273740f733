import type { Prng } from './prng.js';
import { gapAround, type ReplyReader, type Script, type Step } from './script.js';

// PostgreSQL on the wire for the equivalence test: frontend message builders (protocol
// 3.0), a reader that counts ReadyForQuery messages (one per Query or Sync, and one after
// authentication), the value that legitimately differs between two connections
// (BackendKeyData: the backend's PID and cancel key), and a random script generator.

function message(type: string, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

const cstring = (text: string): Buffer => Buffer.from(`${text}\0`, 'utf8');
const int16 = (value: number): Buffer => {
  const buffer = Buffer.alloc(2);
  buffer.writeInt16BE(value);
  return buffer;
};
const int32 = (value: number): Buffer => {
  const buffer = Buffer.alloc(4);
  buffer.writeInt32BE(value);
  return buffer;
};

export function startup(user: string, database: string): Buffer {
  const body = Buffer.concat([int32(196608), cstring('user'), cstring(user), cstring('database'), cstring(database), Buffer.from([0])]);
  return Buffer.concat([int32(body.length + 4), body]);
}

export const pgQuery = (sql: string): Buffer => message('Q', cstring(sql));
export const pgParse = (name: string, sql: string): Buffer => message('P', cstring(name), cstring(sql), int16(0));
/** Bind with every parameter and result in text format. */
export function pgBind(portal: string, statement: string, params: ReadonlyArray<string | null>): Buffer {
  const values = params.map((param) => (param === null ? int32(-1) : Buffer.concat([int32(Buffer.byteLength(param)), Buffer.from(param, 'utf8')])));
  return message('B', cstring(portal), cstring(statement), int16(0), int16(params.length), ...values, int16(0));
}
export const pgDescribe = (kind: 'S' | 'P', name: string): Buffer => message('D', Buffer.from(kind, 'latin1'), cstring(name));
export const pgExecute = (portal: string): Buffer => message('E', cstring(portal), int32(0));
export const pgClose = (kind: 'S' | 'P', name: string): Buffer => message('C', Buffer.from(kind, 'latin1'), cstring(name));
export const PG_SYNC = message('S');
export const PG_FLUSH = message('H');

/** Walks backend messages: (type, offset of the type byte, total length) for each complete one. */
function* messages(bytes: Buffer): Generator<{ type: number; at: number; length: number }> {
  let at = 0;
  while (at + 5 <= bytes.length) {
    const length = bytes.readInt32BE(at + 1) + 1;
    if (at + length > bytes.length) return;
    yield { type: bytes[at]!, at, length };
    at += length;
  }
}

export class PgReader implements ReplyReader {
  units = 0;
  #pending: Buffer = Buffer.alloc(0);

  feed(chunk: Buffer): void {
    this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    let consumed = 0;
    for (const { type, at, length } of messages(this.#pending)) {
      if (type === 0x5a /* Z */) this.units++;
      consumed = at + length;
    }
    this.#pending = this.#pending.subarray(consumed);
  }
}

/** BackendKeyData ('K': process id and secret key) differs between any two connections: zeroed. */
export function normalisePostgres(bytes: Buffer): Buffer {
  const copy = Buffer.from(bytes);
  for (const { type, at, length } of messages(copy)) {
    if (type === 0x4b /* K */) copy.fill(0, at + 5, at + length);
  }
  return copy;
}

type PgStep = Step<PgReader>;

/**
 * A random PostgreSQL session on table `eq (id int primary key, v text)`: simple queries
 * (row sets of random size, several statements in one Query, an empty query, a NOTICE),
 * extended-protocol pipelines (Parse/Bind/Describe/Execute x n, one Sync; a named statement
 * and its Close), a batch left unsynced across a silence (with and without Flush),
 * transactions with silences inside, errors (a bad Parse, a failing Execute, a failing
 * statement inside a transaction block and the statements after it).
 */
export function postgresScript(name: string, prng: Prng, everyMs: number, blocks: number): Script<PgReader> {
  const steps: PgStep[] = [];
  const gap = (): number => gapAround(prng, everyMs);
  const add = (label: string, write: Buffer, units: number, gapMs = gap()): void => {
    steps.push({ label, gapMs, write: () => write, units });
  };
  add('startup', startup('postgres', 'postgres'), 1, 0);
  add('TRUNCATE eq', pgQuery('TRUNCATE eq'), 1, 0);
  let nextId = 1;
  let statement = 0;

  const select = (): string =>
    prng.pick([
      () => `SELECT i, repeat(md5(i::text), ${prng.int(0, 60)}) AS s FROM generate_series(1, ${prng.int(0, 120)}) AS i`,
      () => 'SELECT id, v FROM eq ORDER BY id',
      () => `SELECT count(*) AS n, ${prng.int(0, 1000)}::int AS k FROM eq`,
      () => `SELECT '${prng.word(prng.int(0, 30))}'::text AS t, ${prng.int(-5, 5)} / 3 AS q`,
    ])();
  const insert = (): string => `INSERT INTO eq VALUES (${nextId++}, '${prng.word(prng.int(1, 40))}')`;
  const extendedBatch = (): { label: string; bytes: Buffer } => {
    const count = prng.int(1, 4);
    const parts: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      parts.push(pgParse('', 'SELECT $1::int + 1 AS x, $2::text AS t'), pgBind('', '', [String(prng.int(0, 99)), prng.chance(0.2) ? null : prng.word(5)]));
      if (prng.chance(0.5)) parts.push(pgDescribe('P', ''));
      parts.push(pgExecute(''));
    }
    return { label: `extended x${count}`, bytes: Buffer.concat(parts) };
  };

  for (let block = 0; block < blocks; block++) {
    const kind = prng.pick(['simple', 'simple', 'extended', 'named', 'unsynced', 'transaction', 'failed-transaction', 'errors'] as const);
    switch (kind) {
      case 'simple': {
        const sql = prng.pick([select, insert, () => `${select()}; ${insert()}; SELECT 'after' AS a`, () => '', () => "DO $$BEGIN RAISE NOTICE 'note %', 7; END$$"])();
        add(`Query ${JSON.stringify(sql.slice(0, 50))}`, pgQuery(sql), 1);
        break;
      }
      case 'extended': {
        const batch = extendedBatch();
        add(`${batch.label} + Sync`, Buffer.concat([batch.bytes, PG_SYNC]), 1);
        break;
      }
      case 'named': {
        const statementName = `s${statement++}`;
        add(`Parse ${statementName} + Describe + Sync`, Buffer.concat([pgParse(statementName, 'SELECT id, v FROM eq WHERE id >= $1 ORDER BY id'), pgDescribe('S', statementName), PG_SYNC]), 1);
        const runs = prng.int(1, 3);
        for (let i = 0; i < runs; i++) {
          add(`Bind/Execute ${statementName} + Sync`, Buffer.concat([pgBind('', statementName, [String(prng.int(0, 5))]), pgExecute(''), PG_SYNC]), 1);
        }
        add(`Close ${statementName} + Sync`, Buffer.concat([pgClose('S', statementName), PG_SYNC]), 1);
        break;
      }
      case 'unsynced': {
        // A batch without its Sync, a silence (a Sync from the proxy now would end the
        // client's implicit transaction early), then the client's own Sync.
        const batch = extendedBatch();
        const flush = prng.chance(0.5);
        add(`${batch.label}${flush ? ' + Flush' : ''}, no Sync yet`, flush ? Buffer.concat([batch.bytes, PG_FLUSH]) : batch.bytes, 0);
        add('the Sync, after a silence', PG_SYNC, 1);
        break;
      }
      case 'transaction': {
        add('BEGIN', pgQuery('BEGIN'), 1);
        const statements = prng.int(1, 3);
        for (let i = 0; i < statements; i++) {
          if (prng.chance(0.5)) add('INSERT in transaction', pgQuery(insert()), 1);
          else {
            const batch = extendedBatch();
            add(`${batch.label} + Sync in transaction`, Buffer.concat([batch.bytes, PG_SYNC]), 1);
          }
        }
        add('SELECT in transaction', pgQuery('SELECT id, v FROM eq ORDER BY id'), 1);
        if (prng.chance(0.5)) add('COMMIT', pgQuery('COMMIT'), 1);
        else add('ROLLBACK', pgQuery('ROLLBACK'), 1);
        break;
      }
      case 'failed-transaction': {
        add('BEGIN', pgQuery('BEGIN'), 1);
        add('INSERT', pgQuery(insert()), 1);
        add('a failing statement (division by zero)', pgQuery('SELECT 1 / 0'), 1);
        add('a statement in the failed block (error)', pgQuery('SELECT 1'), 1);
        add('an extended batch in the failed block (error)', Buffer.concat([pgParse('', 'SELECT 2'), pgBind('', '', []), pgExecute(''), PG_SYNC]), 1);
        const end = prng.pick(['COMMIT', 'ROLLBACK']);
        add(`${end} of the failed block`, pgQuery(end), 1);
        break;
      }
      case 'errors': {
        add('Parse of bad SQL + Bind + Execute + Sync', Buffer.concat([pgParse('', 'SELEC nothing'), pgBind('', '', []), pgExecute(''), PG_SYNC]), 1);
        add('Execute failing at run time + Sync', Buffer.concat([pgParse('', 'SELECT 10 / $1::int'), pgBind('', '', ['0']), pgExecute(''), PG_SYNC]), 1);
        add('Query on a missing table', pgQuery('SELECT * FROM no_such_table'), 1);
        add('duplicate key', pgQuery(`INSERT INTO eq VALUES (${Math.max(1, nextId - 1)}, 'dup'), (${Math.max(1, nextId - 1)}, 'dup')`), 1);
        break;
      }
    }
  }
  add('SELECT at the end', pgQuery('SELECT id, v FROM eq ORDER BY id'), 1);
  return { name, steps };
}

/** Simple queries with silences swept across the probe window (the race). */
export function postgresRaceScript(name: string, gaps: readonly number[]): Script<PgReader> {
  const steps: PgStep[] = [
    { label: 'startup', gapMs: 0, write: () => startup('postgres', 'postgres'), units: 1 },
  ];
  gaps.forEach((gapMs, i) => {
    const write = i % 3 === 2
      ? Buffer.concat([pgParse('', 'SELECT $1::int * 2 AS d'), pgBind('', '', [String(i)]), pgExecute(''), PG_SYNC])
      : pgQuery(`SELECT ${i} AS step, repeat('r', ${i * 10}) AS pad`);
    steps.push({ label: `query #${i}`, gapMs, write: () => write, units: 1 });
  });
  return { name, steps };
}
