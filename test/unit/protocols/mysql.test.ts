import { describe, expect, it } from 'vitest';
import { mysqlCodec } from '../../../src/protocols/mysql.js';
import type { Tracker } from '../../../src/protocols/types.js';
import { bytes, everySplit, run } from './harness.js';

const PROTOCOL_41 = 0x200;
const SECURE = 0x8000;
const PLUGIN_AUTH = 1 << 19;
const MULTI_RESULTS = 1 << 17;
const DEPRECATE_EOF = 1 << 24;
const SSL = 0x800;
const COMPRESS = 0x20;
const CACHE_METADATA = 1 << 4; // MariaDB extended
const MORE_RESULTS = 0x0008;

function packet(seq: number, payload: Buffer | number[]): Buffer {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const header = Buffer.alloc(4);
  header.writeUIntLE(body.length, 0, 3);
  header[3] = seq;
  return Buffer.concat([header, body]);
}

const u16 = (n: number): Buffer => Buffer.from([n & 0xff, (n >> 8) & 0xff]);
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
};
const lenencString = (text: string): Buffer => Buffer.concat([Buffer.from([text.length]), bytes(text)]);

/** A MariaDB-style greeting (CLIENT_MYSQL clear, extended capabilities present). */
function greeting(capabilities: number, extended = 0): Buffer {
  return packet(
    0,
    Buffer.concat([
      Buffer.from([0x0a]),
      bytes('5.5.5-10.11.6-MariaDB\0'),
      u32(7),
      bytes('12345678'),
      Buffer.from([0]),
      u16(capabilities & 0xffff),
      Buffer.from([45]),
      u16(2),
      u16(capabilities >>> 16),
      Buffer.from([21]),
      Buffer.alloc(6),
      u32(extended),
      bytes('123456789012\0'),
      bytes('mysql_native_password\0'),
    ]),
  );
}

function handshakeResponse(capabilities: number, extended = 0, seq = 1): Buffer {
  return packet(
    seq,
    Buffer.concat([u32(capabilities), u32(16 << 20), Buffer.from([45]), Buffer.alloc(19), u32(extended), bytes('test\0'), Buffer.from([0])]),
  );
}

const ok = (seq: number, status = 2, affected = 0): Buffer => packet(seq, Buffer.concat([Buffer.from([0x00, affected, 0]), u16(status), u16(0)]));
const okFe = (seq: number, status = 2): Buffer => packet(seq, Buffer.concat([Buffer.from([0xfe, 0, 0]), u16(status), u16(0)]));
const eof = (seq: number, status = 2): Buffer => packet(seq, Buffer.concat([Buffer.from([0xfe]), u16(0), u16(status)]));
const err = (seq: number, code = 1064): Buffer => packet(seq, Buffer.concat([Buffer.from([0xff]), u16(code), bytes('#42000boom')]));
const columnDef = (seq: number, name: string): Buffer =>
  packet(seq, Buffer.concat([lenencString('def'), lenencString(''), lenencString(''), lenencString(''), lenencString(name), lenencString(name), Buffer.from([0x0c]), u16(45), u32(1), Buffer.from([8, 0, 0, 0, 0, 0])]));
const textRow = (seq: number, ...values: string[]): Buffer => packet(seq, Buffer.concat(values.map(lenencString)));
const command = (code: number, body: Buffer | string = Buffer.alloc(0)): Buffer =>
  packet(0, Buffer.concat([Buffer.from([code]), typeof body === 'string' ? bytes(body) : body]));
const query = (sql: string): Buffer => command(0x03, sql);

const COM_PING = Buffer.from([1, 0, 0, 0, 0x0e]);
const BASE = PROTOCOL_41 | SECURE | PLUGIN_AUTH | MULTI_RESULTS;

function connected(options: { deprecateEof?: boolean; extended?: number } = {}): Tracker {
  const caps = BASE | (options.deprecateEof ? DEPRECATE_EOF : 0);
  const t = mysqlCodec.track({});
  t.fromServer(greeting(BASE | DEPRECATE_EOF | COMPRESS | SSL, 0xffff));
  t.fromClient(handshakeResponse(caps, options.extended ?? 0));
  t.fromServer(ok(2));
  return t;
}

/** A two-column text result set, classic EOF style, sequence ids from 1. */
function resultSet(deprecateEof: boolean, rows: number, lastStatus = 2): Buffer {
  const parts: Buffer[] = [packet(1, [2]), columnDef(2, 'a'), columnDef(3, 'b')];
  let seq = 4;
  if (!deprecateEof) parts.push(eof(seq++));
  for (let r = 0; r < rows; r++) parts.push(textRow(seq++, `v${r}`, 'x'));
  parts.push(deprecateEof ? okFe(seq, lastStatus) : eof(seq, lastStatus));
  return Buffer.concat(parts);
}

describe('mysql codec', () => {
  it('is busy through the handshake (auth switch included) and quiet after the OK', () => {
    expect(mysqlCodec.probesBeforeClient).toBe(false);
    run(mysqlCodec.track({}), [
      { check: (t) => expect(t.state).toBe('busy') },
      { server: greeting(BASE | DEPRECATE_EOF), state: 'busy' },
      { client: handshakeResponse(BASE), state: 'busy' },
      { server: packet(2, Buffer.concat([Buffer.from([0xfe]), bytes('mysql_native_password\0'), bytes('12345678901234567890\0')])), state: 'busy' },
      { client: packet(3, bytes('01234567890123456789')), state: 'busy' },
      { server: ok(4), state: 'quiet' },
    ]);
  });

  it('probes with COM_PING and cuts its OK at every split, leaving later bytes alone', () => {
    everySplit(mysqlCodec, (t) => {
      t.fromServer(greeting(BASE));
      t.fromClient(handshakeResponse(BASE));
      t.fromServer(ok(2));
      expect(t.probe()).toEqual(COM_PING);
    }, 'server', ok(1), { state: 'quiet', forwarded: bytes(''), probing: false });
  });

  it('follows a text result set, classic EOFs, split anywhere', () => {
    everySplit(mysqlCodec, (t) => {
      t.fromServer(greeting(BASE));
      t.fromClient(handshakeResponse(BASE));
      t.fromServer(ok(2));
      t.fromClient(query('SELECT a, b FROM t'));
      expect(t.state).toBe('busy');
    }, 'server', resultSet(false, 3), { state: 'quiet' });
  });

  it('follows a result set with CLIENT_DEPRECATE_EOF (OK with 0xFE header)', () => {
    run(connected({ deprecateEof: true }), [
      { client: query('SELECT a, b FROM t'), state: 'busy' },
      { server: resultSet(true, 2).subarray(0, 30), state: 'busy' },
      { server: resultSet(true, 2).subarray(30), state: 'quiet' },
    ]);
  });

  it('multi-results: SERVER_MORE_RESULTS_EXISTS keeps the response going', () => {
    const first = resultSet(false, 1, 2 | MORE_RESULTS);
    const lastSeq = first[first.length - 9 + 3]!; // seq of the closing EOF
    run(connected(), [
      { client: query('CALL p()'), state: 'busy' },
      { server: first, state: 'busy' },
      { server: ok(lastSeq + 1, 2 | MORE_RESULTS), state: 'busy' },
      { server: ok(lastSeq + 2, 2), state: 'quiet' },
    ]);
  });

  it('an ERR ends a response, even in the middle of rows', () => {
    const partial = resultSet(false, 2).subarray(0, -9);
    run(connected(), [
      { client: query('SELECT 1') },
      { server: partial, state: 'busy' },
      { server: err(7), state: 'quiet' },
      { client: query('bad sql') },
      { server: err(1), state: 'quiet' },
    ]);
  });

  it('prepared statements: PREPARE definitions, binary EXECUTE rows, CLOSE without a response', () => {
    const prepareOk = packet(1, Buffer.concat([Buffer.from([0]), u32(1), u16(1), u16(2), Buffer.from([0]), u16(0)]));
    const prepareReply = Buffer.concat([prepareOk, columnDef(2, '?'), columnDef(3, '?'), eof(4), columnDef(5, 'a'), eof(6)]);
    const execute = command(0x17, Buffer.concat([u32(1), Buffer.from([0]), u32(1), Buffer.from([0, 1, 8, 0]), Buffer.alloc(16)]));
    const binaryRows = Buffer.concat([packet(1, [1]), columnDef(2, 'a'), eof(3), packet(4, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]), packet(5, [0, 0, 0xfe, 1, 2, 3, 4, 5, 6, 7]), eof(6)]);
    run(connected(), [
      { client: command(0x16, 'SELECT a FROM t WHERE x = ? AND y = ?'), state: 'busy' },
      { server: prepareReply.subarray(0, prepareReply.length - 1), state: 'busy' },
      { server: prepareReply.subarray(prepareReply.length - 1), state: 'quiet' },
      { client: execute, state: 'busy' },
      { server: binaryRows, state: 'quiet' },
      { client: command(0x19, u32(1)), state: 'quiet' }, // COM_STMT_CLOSE: no response
      { probe: COM_PING },
      { server: ok(1), forwarded: bytes(''), state: 'quiet' },
    ]);
  });

  it('MariaDB metadata caching: a column count with "metadata follows" = 0 has no definitions', () => {
    const execute = command(0x17, Buffer.concat([u32(1), Buffer.from([0]), u32(1)]));
    run(connected({ extended: CACHE_METADATA }), [
      { client: execute },
      { server: Buffer.concat([packet(1, [1, 0]), eof(2), packet(3, [0, 0, 7]), eof(4)]), state: 'quiet' },
      { client: execute },
      { server: Buffer.concat([packet(1, [1, 1]), columnDef(2, 'a'), eof(3), packet(4, [0, 0, 7]), eof(5)]), state: 'quiet' },
    ]);
  });

  it('pipelined commands are answered in order', () => {
    run(connected(), [
      { client: Buffer.concat([command(0x16, 'SELECT 1'), command(0x17, Buffer.concat([u32(0xffffffff), Buffer.from([0]), u32(1)]))]), state: 'busy' },
      { server: Buffer.concat([packet(1, Buffer.concat([Buffer.from([0]), u32(1), u16(1), u16(0), Buffer.from([0]), u16(0)])), columnDef(2, '1'), eof(3)]), state: 'busy' },
      { server: Buffer.concat([packet(1, [1]), columnDef(2, '1'), eof(3), packet(4, [0, 0, 1]), eof(5)]), state: 'quiet' },
    ]);
  });

  it('packets of 16 MiB and more: 0xffffff payloads continue in the next packet', () => {
    const big = Buffer.alloc(0xffffff, 0x61);
    big[0] = 0xfe; // a text row whose first column is longer than 16 MiB starts with 0xFE
    const rows = Buffer.concat([packet(1, [1]), columnDef(2, 'a'), eof(3), packet(4, big), packet(5, bytes('tail')), eof(6)]);
    const t = connected();
    t.fromClient(query('SELECT big'));
    for (let at = 0; at < rows.length; at += 1 << 20) t.fromServer(rows.subarray(at, Math.min(rows.length, at + (1 << 20))));
    expect(t.state).toBe('quiet');
    // and a command of more than 16 MiB from the client: the response's sequence ids follow it
    const sql = Buffer.alloc(0xffffff + 10, 0x20);
    sql[0] = 0x03;
    const cmd = Buffer.concat([packet(0, sql.subarray(0, 0xffffff)), packet(1, sql.subarray(0xffffff))]);
    t.fromClient(cmd);
    t.fromServer(ok(2));
    expect(t.state).toBe('quiet');
  });

  it('LOCAL INFILE, TLS, compression, cursors, replication: off', () => {
    const infile = connected();
    run(infile, [{ client: query("LOAD DATA LOCAL INFILE 'x' INTO TABLE t") }, { server: packet(1, Buffer.concat([Buffer.from([0xfb]), bytes('x')])), state: 'off' }]);
    expect(infile.offReason).toBe('local-infile');

    const tls = mysqlCodec.track({});
    run(tls, [{ server: greeting(BASE | SSL) }, { client: packet(1, Buffer.concat([u32(BASE | SSL), u32(1 << 24), Buffer.from([45]), Buffer.alloc(23)])), state: 'off' }]);
    expect(tls.offReason).toBe('tls');

    // clientTls: the proxy terminated the client's TLS and shows the codec what is inside
    // it: the whole response (sequence id 2, after the SSL request the codec never saw)
    // with CLIENT_SSL, then authentication and commands as usual.
    const terminated = mysqlCodec.track({});
    run(terminated, [
      { server: greeting(BASE | SSL) },
      { client: handshakeResponse(BASE | SSL, 0, 2), state: 'busy' },
      { server: ok(3), state: 'quiet' },
      { client: query('SELECT 1'), state: 'busy' },
      { server: ok(1), state: 'quiet' },
    ]);
    expect(terminated.offReason).toBeNull();

    const compressed = mysqlCodec.track({});
    run(compressed, [{ server: greeting(BASE | COMPRESS) }, { client: handshakeResponse(BASE | COMPRESS), state: 'off' }]);
    expect(compressed.offReason).toBe('compression');

    const cursor = connected();
    cursor.fromClient(command(0x17, Buffer.concat([u32(1), Buffer.from([1]), u32(1)])));
    expect(cursor.offReason).toBe('cursor');

    const binlog = connected();
    binlog.fromClient(command(0x12, Buffer.alloc(10)));
    expect(binlog.offReason).toBe('replication');
  });

  it('COM_QUIT: busy for good; COM_STATISTICS: one packet', () => {
    run(connected(), [
      { client: command(0x09), state: 'busy' },
      { server: packet(1, bytes('Uptime: 5  Threads: 1')), state: 'quiet' },
      { client: command(0x01), state: 'busy' },
    ]);
  });

  it('COM_CHANGE_USER runs authentication again', () => {
    run(connected(), [
      { client: command(0x11, 'root\0\0'), state: 'busy' },
      { server: packet(1, Buffer.concat([Buffer.from([0xfe]), bytes('mysql_native_password\0'), bytes('12345678901234567890\0')])), state: 'busy' },
      { client: packet(2, bytes('01234567890123456789')), state: 'busy' },
      { server: ok(3), state: 'quiet' },
    ]);
  });

  it('a wrong sequence id or an unsolicited packet: off (desync)', () => {
    const wrong = connected();
    run(wrong, [{ client: query('SELECT 1') }, { server: ok(5), state: 'off' }]);
    expect(wrong.offReason).toBe('desync');
    run(connected(), [{ server: err(0, 1927), state: 'off' }]);
  });

  it('anything but OK/ERR in the probe\'s place is forwarded whole, then off', () => {
    const columnCount = Buffer.concat([packet(1, [1]), columnDef(2, 'a')]);
    everySplit(mysqlCodec, (t) => {
      t.fromServer(greeting(BASE));
      t.fromClient(handshakeResponse(BASE));
      t.fromServer(ok(2));
      t.probe();
    }, 'server', columnCount, { state: 'off', forwarded: columnCount, probing: false, offReason: 'desync' });
  });

  it('a probe ERR reply (the server answers) is cut too', () => {
    run(connected(), [{ probe: COM_PING }, { server: err(1, 1040), forwarded: bytes(''), state: 'quiet' }]);
  });

  it('follows SERVER_STATUS_IN_TRANS from OK and EOF packets, at every split', () => {
    const IN_TRANS = 0x0001;
    const AUTOCOMMIT = 0x0002;
    for (const deprecateEof of [false, true]) {
      const prepare = (t: Tracker): void => {
        t.fromServer(greeting(BASE | DEPRECATE_EOF));
        t.fromClient(handshakeResponse(BASE | (deprecateEof ? DEPRECATE_EOF : 0)));
        t.fromServer(ok(2));
      };
      const begin = ok(1, IN_TRANS | AUTOCOMMIT);
      everySplit(mysqlCodec, (t) => { prepare(t); t.fromClient(query('START TRANSACTION')); }, 'server', begin, { state: 'quiet' });
      const t = mysqlCodec.track({});
      prepare(t);
      expect(t.inTransaction).toBe(false);
      t.fromClient(query('START TRANSACTION'));
      expect([t.awaitingReply, t.replyGraceMs]).toEqual([true, 0]);
      t.fromServer(begin);
      expect([t.inTransaction, t.awaitingReply, t.state]).toEqual([true, false, 'quiet']);
      // A result set's closing EOF (or OK with 0xFE) carries the status too.
      t.fromClient(query('SELECT a, b FROM t'));
      const rows = resultSet(deprecateEof, 2, IN_TRANS | AUTOCOMMIT);
      for (let i = 0; i < rows.length; i++) t.fromServer(rows.subarray(i, i + 1));
      expect(t.inTransaction).toBe(true);
      t.fromClient(query('COMMIT'));
      t.fromServer(ok(1, AUTOCOMMIT));
      expect([t.inTransaction, t.state]).toEqual([false, 'quiet']);
    }
  });

  it('an ERR in answer to COM_PING is cut and marks the probe refused', () => {
    const t = connected();
    expect(t.probe()).toEqual(COM_PING);
    expect(t.awaitingReply).toBe(false);
    const reply = err(1, 1227);
    for (let i = 0; i < reply.length; i++) expect(t.fromServer(reply.subarray(i, i + 1)).length).toBe(0);
    expect([t.probing, t.probeRefused, t.state]).toEqual([false, true, 'quiet']);
    t.probe();
    expect(t.fromServer(ok(1)).length).toBe(0);
    expect(t.probeRefused).toBe(false);
  });
});


describe('mysql reply deadline during authentication', () => {
  const authSwitch = (seq: number, plugin = 'mysql_native_password'): Buffer => packet(seq, Buffer.concat([Buffer.from([0xfe]), bytes(`${plugin}\0`), bytes('12345678901234567890\0')]));
  const moreData = (seq: number, data: number[]): Buffer => packet(seq, [0x01, ...data]);
  const handshaken = (): Tracker => {
    const t = mysqlCodec.track({});
    t.fromServer(greeting(BASE | DEPRECATE_EOF));
    t.fromClient(handshakeResponse(BASE));
    return t;
  };

  it('owes nothing while the server waits for the client (auth switch, full-auth request, PAM dialog prompt), at every split', () => {
    const asks: Array<[string, Buffer]> = [
      ['auth switch', authSwitch(2)],
      ['dialog (PAM) prompt', authSwitch(2, 'dialog')],
      ['caching_sha2 full authentication', moreData(2, [0x04])],
      ['sha256 public key', moreData(2, [...bytes('-----BEGIN PUBLIC KEY-----\n')])],
    ];
    for (const [name, ask] of asks) {
      for (let cut = 0; cut <= ask.length; cut++) {
        const t = handshaken();
        expect(t.awaitingReply, `${name}: the handshake response owes the server's answer`).toBe(true);
        t.fromServer(ask.subarray(0, cut));
        t.fromServer(ask.subarray(cut));
        expect(t.awaitingReply, `${name}, cut ${cut}: the client's turn`).toBe(false);
        t.fromClient(packet(3, bytes('secret')));
        expect(t.awaitingReply, `${name}, cut ${cut}: answered, the server's turn`).toBe(true);
        t.fromServer(ok(4));
        expect([t.awaitingReply, t.state]).toEqual([false, 'quiet']);
      }
    }
  });

  it("still owes the OK after caching_sha2's fast-auth success (01 03), which needs no answer", () => {
    const t = handshaken();
    t.fromServer(moreData(2, [0x03]));
    expect(t.awaitingReply).toBe(true);
    t.fromServer(ok(3));
    expect([t.awaitingReply, t.state]).toEqual([false, 'quiet']);
  });
});
