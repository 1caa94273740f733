import type { Protocol } from '../config/schema.js';
import { customCodec } from './custom.js';
import { mysqlCodec } from './mysql.js';
import { postgresCodec } from './postgres.js';
import { redisCodec } from './redis.js';
import type { CodecOptions, HeartbeatCodec } from './types.js';

// Which heartbeat codec a route's protocol uses. Adding a protocol: one file beside this
// one and one line here.

const CODECS: Partial<Record<Protocol, HeartbeatCodec>> = {
  redis: redisCodec,
  postgres: postgresCodec,
  mysql: mysqlCodec,
};

/**
 * The codec for `protocol`, or null when the route can only rely on TCP keepalive: a
 * plain tcp route without custom `send` bytes, and the http family (whose keep-alive
 * lives in the HTTP pool, not here).
 */
export function codecFor(protocol: Protocol, options: CodecOptions = {}): HeartbeatCodec | null {
  if (protocol === 'tcp') return options.send && options.send.length > 0 ? customCodec : null;
  return CODECS[protocol] ?? null;
}
