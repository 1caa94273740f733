import type { Protocol } from '../config/schema.js';
import type { StartTls } from '../net/dial.js';
import { mysqlStartTls } from './negotiate-mysql.js';
import { postgresStartTls } from './negotiate-postgres.js';

// Which protocols speak plaintext before TLS on an upstream connection. A protocol not
// listed (redis, tcp) starts TLS with the first byte. MySQL negotiates inside its
// handshake: its prelude reads the greeting, and the handshake waits for the client.

const STARTERS: Partial<Record<Protocol, StartTls>> = {
  postgres: postgresStartTls,
  mysql: mysqlStartTls,
};

export function startTlsFor(protocol: Protocol): StartTls | null {
  return STARTERS[protocol] ?? null;
}
