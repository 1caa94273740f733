import { describe, expect, it } from 'vitest';
import { redisCodec } from '../../../src/protocols/redis.js';
import type { Tracker } from '../../../src/protocols/types.js';
import { bytes, clientSplit, everySplit, run } from './harness.js';

const PING = bytes('*1\r\n$4\r\nPING\r\n');
const PONG = bytes('+PONG\r\n');
const SUB_PONG = bytes('*2\r\n$4\r\npong\r\n$0\r\n\r\n');

/** A RESP command as a client library writes it. */
function command(...args: string[]): Buffer {
  return bytes(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a, 'latin1')}\r\n${a}\r\n`).join('')}`);
}

function fresh(): Tracker {
  return redisCodec.track({});
}

const message = (channel: string, text: string): Buffer =>
  bytes(`*3\r\n$7\r\nmessage\r\n$${channel.length}\r\n${channel}\r\n$${text.length}\r\n${text}\r\n`);
const confirm = (kind: string, channel: string, count: number): Buffer =>
  bytes(`*3\r\n$${kind.length}\r\n${kind}\r\n$${channel.length}\r\n${channel}\r\n:${count}\r\n`);
const push3 = (kind: string, channel: string, extra: string): Buffer =>
  bytes(`>3\r\n$${kind.length}\r\n${kind}\r\n$${channel.length}\r\n${channel}\r\n${extra}`);

describe('redis codec', () => {
  it('is quiet at start, probes before any client byte, and cuts +PONG', () => {
    expect(redisCodec.probesBeforeClient).toBe(true);
    run(fresh(), [
      { check: (t) => expect(t.state).toBe('quiet') },
      { probe: PING },
      { server: PONG, forwarded: bytes(''), state: 'quiet' },
      { check: (t) => expect(t.probing).toBe(false) },
    ]);
  });

  it('pairs replies with commands: busy while one is outstanding', () => {
    run(fresh(), [
      { client: command('SET', 'k', 'v'), state: 'busy' },
      { server: bytes('+OK\r\n'), state: 'quiet' },
      { client: Buffer.concat([command('GET', 'k'), command('GET', 'missing'), command('INCR', 'n')]), state: 'busy' },
      { server: bytes('$1\r\nv\r\n'), state: 'busy' },
      { server: bytes('$-1\r\n:1\r\n'), state: 'quiet' },
    ]);
  });

  it('a command split anywhere keeps the connection busy until it is complete', () => {
    const data = command('SET', 'key', 'a value with spaces');
    for (let cut = 1; cut < data.length; cut++) {
      const t = fresh();
      t.fromClient(data.subarray(0, cut));
      expect(t.state, `cut ${cut}`).toBe('busy');
      t.fromClient(data.subarray(cut));
      t.fromServer(bytes('+OK\r\n'));
      expect(t.state, `cut ${cut}`).toBe('quiet');
    }
  });

  it('follows every reply type split at every offset', () => {
    const replies = bytes(
      [
        '+OK\r\n',
        '-ERR wrong\r\n',
        ':-42\r\n',
        '$5\r\nhe\r\nl\r\n', // bulk containing CRLF
        '$0\r\n\r\n',
        '$-1\r\n',
        '*-1\r\n',
        '*0\r\n',
        '*3\r\n:1\r\n*2\r\n$1\r\na\r\n*-1\r\n$-1\r\n', // nested
        '*2\r\n*1\r\n*1\r\n:1\r\n+x\r\n',
      ].join(''),
    );
    const prepare = (t: Tracker): void => t.fromClient(Buffer.concat(Array.from({ length: 10 }, () => command('X'))));
    everySplit(redisCodec, prepare, 'server', replies, { state: 'quiet' });
    // one reply short: still busy
    const t = fresh();
    prepare(t);
    t.fromServer(replies.subarray(0, replies.length - 1));
    expect(t.state).toBe('busy');
  });

  it('follows RESP3 types after HELLO 3', () => {
    const hello = bytes('%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n');
    const replies = bytes(
      [
        '_\r\n',
        ',3.14\r\n',
        '#t\r\n',
        '(3492890328409238509324850943850943825024385\r\n',
        '=15\r\ntxt:Some string\r\n',
        '!21\r\nSYNTAX invalid syntax\r\n',
        '%2\r\n+a\r\n:1\r\n+b\r\n~2\r\n:1\r\n:2\r\n',
        '~1\r\n_\r\n',
        '|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n', // attribute then the reply
        '*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n', // attribute inside an aggregate: not an element
        '*?\r\n:1\r\n:2\r\n.\r\n', // streamed aggregate
        '$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;0\r\n', // streamed string
        '%?\r\n+a\r\n:1\r\n.\r\n',
      ].join(''),
    );
    const prepare = (t: Tracker): void => {
      t.fromClient(command('HELLO', '3'));
      t.fromServer(hello);
      t.fromClient(Buffer.concat(Array.from({ length: 13 }, () => command('X'))));
    };
    everySplit(redisCodec, prepare, 'server', replies, { state: 'quiet' });
  });

  it('cuts the probe reply split at every offset, with bytes after it in the same chunk', () => {
    everySplit(redisCodec, (t) => t.probe(), 'server', PONG, { state: 'quiet', forwarded: bytes(''), probing: false });
    // An error proves the server answers (e.g. NOAUTH before the client authenticated).
    const noauth = bytes('-NOAUTH Authentication required.\r\n');
    everySplit(redisCodec, (t) => t.probe(), 'server', noauth, { state: 'quiet', forwarded: bytes(''), probing: false });
  });

  it('passes RESP3 pushes around the probe reply and cuts only the PONG', () => {
    const hello3 = (t: Tracker): void => {
      t.fromClient(command('HELLO', '3'));
      t.fromServer(bytes('%1\r\n$5\r\nproto\r\n:3\r\n'));
    };
    const before = push3('invalidate', 'x', '');
    const invalidate = bytes('>2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n');
    const msg = push3('message', 'ch', '$2\r\nhi\r\n');
    void before;
    const data = Buffer.concat([invalidate, PONG, msg]);
    everySplit(
      redisCodec,
      (t) => {
        hello3(t);
        t.probe();
      },
      'server',
      data,
      { state: 'quiet', forwarded: Buffer.concat([invalidate, msg]), probing: false },
    );
  });

  it('RESP2 subscribe mode: messages pass, the probe is the pubsub PING and its pong array is cut', () => {
    const subscribe = (t: Tracker): void => {
      t.fromClient(command('SUBSCRIBE', 'a', 'b'));
      expect(t.state).toBe('busy');
      t.fromServer(confirm('subscribe', 'a', 1));
      expect(t.state).toBe('busy');
      t.fromServer(confirm('subscribe', 'b', 2));
      expect(t.state).toBe('quiet');
    };
    const data = Buffer.concat([message('a', 'one'), SUB_PONG, message('b', 'two')]);
    everySplit(
      redisCodec,
      (t) => {
        subscribe(t);
        t.probe();
      },
      'server',
      data,
      { state: 'quiet', forwarded: Buffer.concat([message('a', 'one'), message('b', 'two')]), probing: false },
    );
    // A message between a client PING and its pong does not disturb the pairing.
    run(fresh(), [
      { check: subscribe },
      { client: command('ping'), state: 'busy' },
      { server: message('a', 'x'), state: 'busy' },
      { server: SUB_PONG, state: 'quiet' },
      // unsubscribe all: one confirmation per channel, the last with count 0; then plain PONG again
      { client: command('UNSUBSCRIBE'), state: 'busy' },
      { server: Buffer.concat([confirm('unsubscribe', 'a', 1), confirm('unsubscribe', 'b', 0)]), state: 'quiet' },
      { probe: PING },
      { server: PONG, forwarded: bytes(''), state: 'quiet' },
    ]);
  });

  it('an error to SUBSCRIBE settles the command', () => {
    run(fresh(), [
      { client: command('SUBSCRIBE', 'a'), state: 'busy' },
      { server: bytes("-NOPERM this user has no permissions to access one of the channels\r\n"), state: 'quiet' },
      { client: command('GET', 'k') },
      { server: bytes('*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n'), state: 'quiet' }, // an ordinary array reply now
    ]);
  });

  it('MULTI..EXEC and blocking commands are busy until their replies', () => {
    run(fresh(), [
      { client: command('MULTI'), state: 'busy' },
      { server: bytes('+OK\r\n'), state: 'busy' },
      { client: command('INCR', 'a'), state: 'busy' },
      { server: bytes('+QUEUED\r\n'), state: 'busy' },
      { client: command('EXEC'), state: 'busy' },
      { server: bytes('*1\r\n:1\r\n'), state: 'quiet' },
      { client: command('MULTI') },
      { server: bytes('+OK\r\n') },
      { client: command('DISCARD') },
      { server: bytes('+OK\r\n'), state: 'quiet' },
      { client: command('BLPOP', 'list', '0'), state: 'busy' },
      { check: (t) => expect(t.state).toBe('busy') },
      { server: bytes('*2\r\n$4\r\nlist\r\n$1\r\nx\r\n'), state: 'quiet' },
      { client: command('XREAD', 'BLOCK', '0', 'STREAMS', 's', '$'), state: 'busy' },
      { server: bytes('*-1\r\n'), state: 'quiet' },
      { client: command('WAIT', '1', '0'), state: 'busy' },
      { server: bytes(':0\r\n'), state: 'quiet' },
    ]);
  });

  it('MONITOR, CLIENT REPLY OFF/SKIP and SYNC go off for good; CLIENT REPLY ON does not', () => {
    for (const [cmd, reason] of [
      [command('MONITOR'), 'monitor'],
      [command('client', 'reply', 'off'), 'client-reply'],
      [command('CLIENT', 'REPLY', 'SKIP'), 'client-reply'],
      [command('PSYNC', '?', '-1'), 'replication'],
    ] as const) {
      const t = fresh();
      t.fromClient(cmd);
      expect(t.state).toBe('off');
      expect(t.offReason).toBe(reason);
      const anything = bytes('+OK\r\n+1700000000.1 [0 127.0.0.1:5] "get" "k"\r\n');
      expect(t.fromServer(anything)).toBe(anything);
    }
    run(fresh(), [{ client: command('CLIENT', 'REPLY', 'ON') }, { server: bytes('+OK\r\n'), state: 'quiet' }]);
  });

  it('inline commands count as commands; empty lines are ignored', () => {
    run(fresh(), [
      { client: bytes('\r\n\r\n'), state: 'quiet' },
      { client: bytes('SET a "b c"\r\nGET a\r\n'), state: 'busy' },
      { server: bytes('+OK\r\n'), state: 'busy' },
      { server: bytes('$3\r\nb c\r\n'), state: 'quiet' },
      { client: bytes('monitor\n'), state: 'off' },
    ]);
  });

  it('RESET returns to RESP2 and leaves MULTI', () => {
    run(fresh(), [
      { client: command('HELLO', '3') },
      { server: bytes('%1\r\n$5\r\nproto\r\n:3\r\n') },
      { client: command('MULTI') },
      { server: bytes('+OK\r\n') },
      { client: command('RESET'), state: 'busy' },
      { server: bytes('+RESET\r\n'), state: 'quiet' },
      // back in RESP2: a RESP2 subscribe-mode pong is recognised again
      { client: command('SUBSCRIBE', 'c') },
      { server: confirm('subscribe', 'c', 1), state: 'quiet' },
      { probe: PING },
      { server: SUB_PONG, forwarded: bytes(''), state: 'quiet' },
    ]);
  });

  it('an unrecognised reply in the probe\'s place is forwarded whole and the tracker goes off', () => {
    const odd = bytes('$4\r\nPONG\r\n');
    everySplit(redisCodec, (t) => t.probe(), 'server', odd, { state: 'off', forwarded: odd, probing: false, offReason: 'desync' });
    // held bytes matching "+PONG" that then differ come back in order
    const near = bytes('+PONGY\r\n');
    everySplit(redisCodec, (t) => t.probe(), 'server', near, { state: 'off', forwarded: near, offReason: 'desync' });
  });

  it('a reply nobody asked for: off', () => {
    run(fresh(), [{ server: bytes('-ERR max number of clients reached\r\n'), state: 'off' }]);
  });

  it('garbage from the client: off', () => {
    run(fresh(), [{ client: bytes('*1\r\n#4\r\nPING\r\n'), state: 'off' }]);
  });

  it('owes a reply from each command to its answer, and gives blocking commands their own timeout as grace, split anywhere', () => {
    const cases: Array<[Buffer, number]> = [
      [command('GET', 'k'), 0],
      [command('BLPOP', 'k', '5'), 5_000],
      [command('brpop', 'a', 'b', 'c', 'd', '0.5'), 500],
      [command('BLMOVE', 'a', 'b', 'LEFT', 'RIGHT', '2'), 2_000],
      [command('BZPOPMIN', 'k', '0'), Infinity],
      [command('BLMPOP', '3', '1', 'k', 'LEFT'), 3_000],
      [command('BZMPOP', '0', '1', 'k', 'MIN'), Infinity],
      [command('WAIT', '1', '250'), 250],
      [command('WAITAOF', '1', '0', '400'), 400],
      [command('WAIT', '1', '0'), Infinity],
      [command('XREAD', 'COUNT', '1', 'BLOCK', '1500', 'STREAMS', 's', '$'), 1_500],
      [command('XREADGROUP', 'GROUP', 'g', 'c', 'BLOCK', '0', 'STREAMS', 's', '>'), Infinity],
      [command('XREAD', 'STREAMS', 's', '0'), 0],
      [command('BLPOP', 'k', 'soon'), 0], // rejected by the server at once: it does not block
      [command('BLPOP', 'k', '1'.padStart(40, '0')), Infinity], // longer than we read: exempt
      [command('SUBSCRIBE', 'ch'), Infinity],
      [bytes('BLPOP k 7\r\n'), 7_000],
      [bytes('BLPOP a b c 7\r\n'), Infinity], // inline, timeout not captured: exempt
      [bytes('XREAD BLOCK 10 STREAMS s $\r\n'), Infinity],
    ];
    for (const [data, grace] of cases) {
      for (let cut = 0; cut <= data.length; cut++) {
        const t = fresh();
        expect(t.awaitingReply).toBe(false);
        clientSplit(t, data, [cut]);
        const label = `${data.toString('latin1').replace(/\r\n/g, ' ')} cut ${cut}`;
        expect(t.awaitingReply, label).toBe(true);
        expect(t.replyGraceMs, label).toBe(grace);
      }
    }
  });

  it('generated pipelines, cut at random offsets: the grace is always the oldest unanswered command\'s', () => {
    const kinds: Array<[Buffer, number, Buffer]> = [
      [command('GET', 'k'), 0, bytes('$-1\r\n')],
      [command('BLPOP', 'a', 'b', '2'), 2_000, bytes('*-1\r\n')],
      [command('BZPOPMAX', 'z', '0'), Infinity, bytes('*-1\r\n')],
      [command('WAIT', '0', '75'), 75, bytes(':0\r\n')],
      [command('XREAD', 'BLOCK', '30', 'STREAMS', 's', '$'), 30, bytes('*-1\r\n')],
      [command('XREAD', 'COUNT', '2', 'STREAMS', 'block', '0'), 0, bytes('*-1\r\n')],
      [bytes('BLPOP k 9\r\n'), 9_000, bytes('*-1\r\n')],
      [command('SET', 'k', 'x'.repeat(40)), 0, bytes('+OK\r\n')],
    ];
    let seed = 12345;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (let round = 0; round < 300; round++) {
      const picked = Array.from({ length: 1 + random(6) }, () => kinds[random(kinds.length)]!);
      const stream = Buffer.concat(picked.map(([data]) => data));
      const t = fresh();
      const cuts = Array.from({ length: random(4) }, () => random(stream.length + 1)).sort((a, b) => a - b);
      clientSplit(t, stream, cuts);
      for (const [data, grace, reply] of picked) {
        const label = `round ${round}: ${data.toString('latin1').replace(/\r\n/g, ' ')}`;
        expect([t.awaitingReply, t.replyGraceMs], label).toEqual([true, grace]);
        expect(t.fromServer(reply).toString('latin1')).toBe(reply.toString('latin1'));
      }
      expect([t.awaitingReply, t.state]).toEqual([false, 'quiet']);
    }
  });

  it('a blocking command inside MULTI only queues; the grace follows the oldest unanswered command', () => {
    run(fresh(), [
      { client: Buffer.concat([command('MULTI'), command('BLPOP', 'k', '0')]) },
      { check: (t) => expect(t.replyGraceMs).toBe(0) },
      { server: bytes('+OK\r\n+QUEUED\r\n'), state: 'busy' },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
      { client: Buffer.concat([command('EXEC'), command('GET', 'a'), command('BLPOP', 'k', '4'), command('GET', 'b')]) },
      { check: (t) => expect([t.awaitingReply, t.replyGraceMs]).toEqual([true, 0]) },
      { server: bytes('*1\r\n*-1\r\n$-1\r\n') },
      { check: (t) => expect([t.awaitingReply, t.replyGraceMs]).toEqual([true, 4_000]) },
      { server: bytes('*-1\r\n') },
      { check: (t) => expect([t.awaitingReply, t.replyGraceMs]).toEqual([true, 0]) },
      { server: bytes('$-1\r\n'), state: 'quiet' },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
    ]);
  });

  it('the probe owes nothing to the client; MONITOR (off) has no reply deadline', () => {
    run(fresh(), [
      { probe: PING },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
      { server: PONG, forwarded: bytes(''), state: 'quiet' },
      { client: command('MONITOR'), state: 'off' },
      { check: (t) => expect(t.awaitingReply).toBe(false) },
    ]);
  });

  it('an error in answer to the probe is cut and marks it refused (every split); a PONG does not', () => {
    for (const reply of [bytes('-NOPERM User u has no permissions to run the \'ping\' command\r\n'), bytes('!5\r\nERR x\r\n')]) {
      everySplit(redisCodec, (t) => t.probe(), 'server', Buffer.concat([reply, bytes('+later\r\n')]), {
        state: 'off', // '+later' is a reply nobody asked for
        forwarded: bytes('+later\r\n'),
        probing: false,
      });
      const t = fresh();
      t.probe();
      expect(t.fromServer(reply).length).toBe(0);
      expect(t.probeRefused).toBe(true);
      t.probe();
      expect(t.probeRefused).toBe(false);
      expect(t.fromServer(PONG).length).toBe(0);
      expect(t.probeRefused).toBe(false);
    }
    const refusedAtEveryCut = (cut: number): boolean => {
      const t = fresh();
      t.probe();
      const reply = bytes('-NOPERM no\r\n');
      t.fromServer(reply.subarray(0, cut));
      t.fromServer(reply.subarray(cut));
      return t.probeRefused && !t.probing;
    };
    for (let cut = 0; cut <= 12; cut++) expect(refusedAtEveryCut(cut), `cut ${cut}`).toBe(true);
  });
});

