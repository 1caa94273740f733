import type { Protocol } from '../config/schema.js';
import { mysqlCodec } from '../protocols/mysql.js';
import { redisCodec } from '../protocols/redis.js';

// What a canary sends after its idle period, per protocol, and what it waits for first.
// A canary never authenticates, so the probe must be one the server answers on a
// connection that has not logged in: any reply byte proves the flow still carries data
// both ways. The bytes come from the heartbeat codecs where those fit unauthenticated:
//   redis     PING (the codec's probe); +PONG, or -NOAUTH, both are answers.
//   mysql     the server's greeting on connect first, then COM_PING (the codec's probe);
//             out of place before login, the server answers with an error packet.
//   postgres  SSLRequest: the server answers one byte, 'S' or 'N'. (The codec's probe, a
//             Sync, is only valid after login: before it the server reads it as a bad
//             startup length and closes without a word.)
//   tcp       the user's --send bytes; --expect, when given, is the reply awaited.
// Servers time out a login that does not come (MySQL connect_timeout, 10 s by default;
// PostgreSQL authentication_timeout, 60 s): such a close is a FIN, reported as 'closed'.

export interface CanaryProbe {
  /** Wait for the server's first bytes (a greeting) before the idle period starts. */
  readonly awaitGreeting: boolean;
  readonly send: Buffer;
  /** The reply's expected first bytes; null: any byte is an answer. */
  readonly expect: Buffer | null;
}

/** PostgreSQL SSLRequest: length 8, code 80877103 (protocol.sgml, "SSLRequest"). */
const PG_SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

export function canaryProbe(protocol: Protocol, custom: { send?: Buffer; expect?: Buffer } = {}): CanaryProbe {
  switch (protocol) {
    case 'redis':
      return { awaitGreeting: false, send: redisCodec.track({}).probe(), expect: null };
    case 'mysql':
      return { awaitGreeting: true, send: mysqlCodec.track({}).probe(), expect: null };
    case 'postgres':
      return { awaitGreeting: false, send: PG_SSL_REQUEST, expect: null };
    case 'tcp':
      if (!custom.send || custom.send.length === 0) throw new RangeError('protocol tcp needs probe bytes to send');
      return { awaitGreeting: false, send: custom.send, expect: custom.expect && custom.expect.length > 0 ? custom.expect : null };
    default:
      throw new RangeError(`no canary probe for protocol ${protocol}`);
  }
}
