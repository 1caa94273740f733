import { describe, expect, it } from 'vitest';
import { postgresCodec } from '../../../src/protocols/postgres.js';
import type { Tracker } from '../../../src/protocols/types.js';
import { bytes, everySplit, run } from './harness.js';

/** A typed protocol message. */
function msg(type: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const payload = typeof body === 'string' ? bytes(body) : body;
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeUInt32BE(payload.length + 4, 1);
  return Buffer.concat([header, payload]);
}

function startup(params: Record<string, string>, code = 196608): Buffer {
  const pairs = Object.entries(params).map(([k, v]) => `${k}\0${v}\0`).join('') + '\0';
  const body = Buffer.concat([Buffer.alloc(4), bytes(pairs)]);
  body.writeUInt32BE(code, 0);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length + 4, 0);
  return Buffer.concat([length, body]);
}

function request(code: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(8, 0);
  b.writeUInt32BE(code, 4);
  return b;
}

const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n, 0);
  return b;
};
const SYNC = msg('S');
const ready = (status = 'I'): Buffer => msg('Z', status);
const authOk = msg('R', int32(0));
const param = (k: string, v: string): Buffer => msg('S', `${k}\0${v}\0`);
const notice = msg('N', 'SNOTICE\0Mhello\0\0');
const notification = msg('A', Buffer.concat([int32(42), bytes('chan\0payload\0')]));
const SERVER_HELLO = Buffer.concat([authOk, param('server_version', '15.0'), msg('K', Buffer.alloc(8)), ready()]);

function connected(): Tracker {
  const t = postgresCodec.track({});
  t.fromClient(startup({ user: 'postgres', database: 'postgres' }));
  t.fromServer(SERVER_HELLO);
  return t;
}

const query = (sql: string): Buffer => msg('Q', `${sql}\0`);
const SELECT_1_REPLY = Buffer.concat([
  msg('T', Buffer.concat([Buffer.from([0, 1]), bytes('one\0'), Buffer.alloc(18)])),
  msg('D', Buffer.concat([Buffer.from([0, 1]), int32(1), bytes('1')])),
  msg('C', 'SELECT 1\0'),
  ready(),
]);

describe('postgres codec', () => {
  it('is busy through the startup and quiet after the first ReadyForQuery', () => {
    expect(postgresCodec.probesBeforeClient).toBe(false);
    const t = postgresCodec.track({});
    expect(t.state).toBe('busy');
    const hello = startup({ user: 'postgres', database: 'postgres', application_name: 'x' });
    everySplit(postgresCodec, () => {}, 'client', hello, { state: 'busy' });
    everySplit(postgresCodec, (x) => x.fromClient(hello), 'server', SERVER_HELLO, { state: 'quiet' });
  });

  it('probes with Sync and cuts exactly its ReadyForQuery, at every split, with async messages around it', () => {
    const data = Buffer.concat([notice, param('TimeZone', 'UTC'), ready('I'), notification, notice]);
    const expected = Buffer.concat([notice, param('TimeZone', 'UTC'), notification, notice]);
    everySplit(
      postgresCodec,
      (t) => {
        t.fromClient(startup({ user: 'u' }));
        t.fromServer(SERVER_HELLO);
        expect(t.probe()).toEqual(SYNC);
      },
      'server',
      data,
      { state: 'quiet', forwarded: expected, probing: false },
    );
  });

  it('a simple query is busy until its ReadyForQuery; split anywhere', () => {
    everySplit(postgresCodec, (t) => {
      t.fromClient(startup({ user: 'u' }));
      t.fromServer(SERVER_HELLO);
      t.fromClient(query('SELECT 1'));
      expect(t.state).toBe('busy');
    }, 'server', SELECT_1_REPLY, { state: 'quiet' });
  });

  it('pipelined queries: quiet only after the last ReadyForQuery', () => {
    run(connected(), [
      { client: Buffer.concat([query('SELECT 1'), query('SELECT 1')]), state: 'busy' },
      { server: SELECT_1_REPLY, state: 'busy' },
      { server: SELECT_1_REPLY, state: 'quiet' },
    ]);
  });

  it('extended protocol: busy while Parse/Bind/Execute wait for their Sync, even after a Flush', () => {
    const parse = msg('P', '\0SELECT $1\0\0\0');
    const bind = msg('B', '\0\0\0\0\0\0\0\0');
    const execute = msg('E', Buffer.concat([bytes('\0'), int32(0)]));
    run(connected(), [
      { client: Buffer.concat([parse, msg('D', 'S\0'), msg('H')]), state: 'busy' },
      { server: Buffer.concat([msg('1'), msg('t', Buffer.from([0, 0])), msg('n')]), state: 'busy' }, // server waits: a Sync now would end the client's batch
      { client: Buffer.concat([bind, execute, SYNC]), state: 'busy' },
      { server: Buffer.concat([msg('2'), msg('C', 'SELECT 1\0'), ready('I')]), state: 'quiet' },
      // an error: the server skips to the Sync, whose ReadyForQuery ends it
      { client: Buffer.concat([parse, bind, execute, SYNC]) },
      { server: msg('E', 'SERROR\0Mboom\0\0'), state: 'busy' },
      { server: ready('I'), state: 'quiet' },
    ]);
  });

  it('probes inside a transaction block too (Sync does not end an explicit block)', () => {
    run(connected(), [
      { client: query('BEGIN') },
      { server: Buffer.concat([msg('C', 'BEGIN\0'), ready('T')]), state: 'quiet' },
      { probe: SYNC },
      { server: ready('T'), forwarded: bytes(''), state: 'quiet' },
      { check: (t) => expect((t as unknown as { transactionStatus: string }).transactionStatus).toBe('T') },
      { client: query('SELECT 1/0') },
      { server: Buffer.concat([msg('E', 'SERROR\0\0'), ready('E')]), state: 'quiet' },
      { probe: SYNC },
      { server: ready('E'), forwarded: bytes(''), state: 'quiet' },
    ]);
  });

  it('anything but async messages or ReadyForQuery in the probe\'s place: forwarded, off', () => {
    const fatal = msg('E', 'SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0');
    everySplit(postgresCodec, (t) => {
      t.fromClient(startup({ user: 'u' }));
      t.fromServer(SERVER_HELLO);
      t.probe();
    }, 'server', fatal, { state: 'off', forwarded: fatal, probing: false, offReason: 'desync' });
  });

  it('SSLRequest: N continues in clear, S goes off (tls); GSSENCRequest G goes off (gss)', () => {
    run(postgresCodec.track({}), [
      { client: request(80877103), state: 'busy' },
      { server: bytes('N'), forwarded: bytes('N'), state: 'busy' },
      { client: startup({ user: 'u' }) },
      { server: SERVER_HELLO, state: 'quiet' },
    ]);
    run(postgresCodec.track({}), [{ client: request(80877103) }, { server: bytes('S\x16\x03\x03'), state: 'off' }]);
    const gss = postgresCodec.track({});
    run(gss, [{ client: request(80877104) }, { server: bytes('G'), state: 'off' }]);
    expect(gss.offReason).toBe('gss');
    // a direct TLS ClientHello (PostgreSQL 17 sslnegotiation=direct)
    const direct = postgresCodec.track({});
    direct.fromClient(bytes('\x16\x03\x01\x02\x00'));
    expect(direct.offReason).toBe('tls');
  });

  it('COPY goes off (copy); replication connections go off (replication)', () => {
    const copy = connected();
    run(copy, [{ client: query('COPY t FROM STDIN') }, { server: msg('G', Buffer.from([0, 0, 0])), state: 'off' }]);
    expect(copy.offReason).toBe('copy');
    const copyOut = connected();
    run(copyOut, [{ client: query('COPY t TO STDOUT') }, { server: msg('H', Buffer.from([0, 0, 0])), state: 'off' }]);
    for (const value of ['database', 'true', 'on', '1']) {
      const t = postgresCodec.track({});
      t.fromClient(startup({ user: 'u', replication: value }));
      expect(t.offReason, value).toBe('replication');
    }
    const plain = postgresCodec.track({});
    plain.fromClient(startup({ user: 'u', replication: 'false' }));
    plain.fromServer(SERVER_HELLO);
    expect(plain.state).toBe('quiet');
  });

  it('a CancelRequest connection never probes', () => {
    const cancel = Buffer.alloc(16);
    cancel.writeUInt32BE(16, 0);
    cancel.writeUInt32BE(80877102, 4);
    const c = postgresCodec.track({});
    c.fromClient(cancel);
    expect(c.state).toBe('busy');
  });

  it('notifications while idle keep it quiet; Terminate keeps it busy', () => {
    run(connected(), [
      { server: notification, state: 'quiet' },
      { server: notice, state: 'quiet' },
      { client: msg('X'), state: 'busy' },
    ]);
  });

  it('a ReadyForQuery nobody asked for: off', () => {
    run(connected(), [{ server: ready(), state: 'off' }]);
  });

  it('is in a transaction after ReadyForQuery T or E and out after I, at every split', () => {
    const begin = Buffer.concat([msg('C', 'BEGIN\0'), ready('T')]);
    const failed = Buffer.concat([msg('E', 'SERROR\0C22012\0Mdivision by zero\0\0'), ready('E')]);
    const rolledBack = Buffer.concat([msg('C', 'ROLLBACK\0'), ready('I')]);
    const steps: Array<[string, Buffer, Buffer, boolean]> = [
      ['BEGIN', query('BEGIN'), begin, true],
      ['SELECT 1/0', query('SELECT 1/0'), failed, true],
      ['ROLLBACK', query('ROLLBACK'), rolledBack, false],
    ];
    for (let upTo = 0; upTo < steps.length; upTo++) {
      const [, sql, reply, inside] = steps[upTo]!;
      everySplit(
        postgresCodec,
        (t) => {
          t.fromClient(startup({ user: 'postgres', database: 'postgres' }));
          t.fromServer(SERVER_HELLO);
          for (const [, q, r] of steps.slice(0, upTo)) {
            t.fromClient(q);
            t.fromServer(r);
          }
          t.fromClient(sql);
          expect(t.awaitingReply).toBe(true);
        },
        'server',
        reply,
        { state: 'quiet' },
      );
      const t = connected();
      expect(t.inTransaction).toBe(false);
      for (const [, q, r] of steps.slice(0, upTo + 1)) {
        t.fromClient(q);
        t.fromServer(r);
      }
      expect(t.inTransaction, steps[upTo]![0]).toBe(inside);
      expect(t.awaitingReply).toBe(false);
      // Still quiet: whether to probe inside a transaction is the route's choice (heartbeat.inTransaction).
      expect(t.state).toBe('quiet');
    }
  });

  it('owes a reply from Query/Sync until ReadyForQuery, none while only Parse/Bind are unsynced or after going off', () => {
    run(connected(), [
      { check: (t) => expect(t.awaitingReply).toBe(false) },
      { client: Buffer.concat([msg('P', 'q\0SELECT 1\0\0\0'), msg('B', Buffer.alloc(10))]) },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
      { client: SYNC },
      { check: (t) => expect([t.awaitingReply, t.replyGraceMs]).toEqual([true, 0]) },
      { server: Buffer.concat([msg('1'), msg('2'), ready('I')]), state: 'quiet' },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
      { client: query('COPY t FROM STDIN') },
      { server: msg('G', Buffer.from([0, 0, 0])), state: 'off' },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
    ]);
  });
});


describe('postgres reply deadline during authentication', () => {
  // Codes that ask the client for an answer (RFC-less: protocol docs, "Message Formats"):
  // cleartext 3, MD5 5, GSS 7, GSSContinue 8, SSPI 9, SASL 10, SASLContinue 11.
  const ASKS = [3, 5, 7, 8, 9, 10, 11];
  const authRequest = (code: number): Buffer => msg('R', Buffer.concat([int32(code), code === 5 ? Buffer.from([1, 2, 3, 4]) : code === 10 ? bytes('SCRAM-SHA-256\0\0') : Buffer.alloc(0)]));

  it('owes nothing while the server waits for the client to answer an authentication request (every code, every split)', () => {
    for (const code of ASKS) {
      everySplit(postgresCodec, (t) => t.fromClient(startup({ user: 'u', database: 'd' })), 'server', authRequest(code), { state: 'busy' });
      const t = postgresCodec.track({});
      t.fromClient(startup({ user: 'u', database: 'd' }));
      expect(t.awaitingReply, `startup, code ${code}`).toBe(true);
      for (let cut = 0; cut <= authRequest(code).length; cut++) {
        const split = postgresCodec.track({});
        split.fromClient(startup({ user: 'u', database: 'd' }));
        split.fromServer(authRequest(code).subarray(0, cut));
        split.fromServer(authRequest(code).subarray(cut));
        expect(split.awaitingReply, `code ${code}, cut ${cut}: the client's turn`).toBe(false);
      }
      t.fromServer(authRequest(code));
      expect(t.awaitingReply, `code ${code}: the client's turn`).toBe(false);
      t.fromClient(msg('p', 'secret\0'));
      expect(t.awaitingReply, `code ${code}: answered, the server's turn again`).toBe(true);
    }
  });

  it('still owes a reply after AuthenticationOk and SASLFinal (no answer expected), until ReadyForQuery', () => {
    for (const code of [0, 12]) {
      const t = postgresCodec.track({});
      t.fromClient(startup({ user: 'u', database: 'd' }));
      t.fromServer(msg('R', Buffer.concat([int32(code), code === 12 ? bytes('v=abc') : Buffer.alloc(0)])));
      expect(t.awaitingReply, `code ${code}`).toBe(true);
      t.fromServer(Buffer.concat([param('server_version', '15'), ready('I')]));
      expect(t.awaitingReply).toBe(false);
      expect(t.state).toBe('quiet');
    }
  });
});
