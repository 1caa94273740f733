import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ProxyError } from '../../src/errors.js';
import { classifyOpening, postgresStartTls } from '../../src/protocols/negotiate-postgres.js';
import { listen0 } from '../helpers/net.js';

// PostgreSQL's encryption negotiation, both sides: the answer a server gives to the
// proxy's SSLRequest (real sockets, a scripted server), and what a client's first bytes are.

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** A server that answers the SSLRequest with `answer`, in one write, and then waits. */
async function answering(answer: Buffer): Promise<number> {
  const server = await listen0((socket) => {
    socket.once('data', () => socket.write(answer));
    socket.on('error', () => {});
  });
  cleanups.push(() => server.close());
  return server.port;
}

async function negotiate(port: number): Promise<readonly Buffer[]> {
  const raw = net.connect(port, '127.0.0.1');
  raw.on('error', () => {});
  cleanups.push(() => raw.destroy());
  await new Promise((resolve) => raw.once('connect', resolve));
  return postgresStartTls.negotiate(raw);
}

describe('upstream SSLRequest', () => {
  it('S alone: the handshake may start, nothing for the client', async () => {
    expect(await negotiate(await answering(Buffer.from('S')))).toEqual([]);
  });

  it('refuses N, any other byte, and S followed by anything (bytes injected before the handshake)', async () => {
    // Generated: every first byte but S, and S with 1..64 trailing bytes of every kind.
    const answers: Buffer[] = [];
    for (let byte = 0; byte < 256; byte += 7) if (byte !== 0x53) answers.push(Buffer.from([byte]));
    answers.push(Buffer.from('N'), Buffer.from('E'));
    for (let extra = 1; extra <= 64; extra *= 2) answers.push(Buffer.concat([Buffer.from('S'), Buffer.alloc(extra, extra)]));
    // An injected plaintext ErrorResponse after S (the CVE-2021-23222 shape).
    answers.push(Buffer.concat([Buffer.from('S'), Buffer.from('E\0\0\0\x08SFATAL\0\0', 'latin1')]));
    for (const answer of answers) {
      const failure = await negotiate(await answering(answer)).then(
        () => null,
        (error: unknown) => error,
      );
      expect(failure, `answer ${answer.toString('hex')}`).toBeInstanceOf(ProxyError);
      expect((failure as ProxyError).code).toBe('TLS_FAILED');
    }
  }, 60_000);

  it('a server that closes instead of answering fails the negotiation', async () => {
    const server = await listen0((socket) => socket.once('data', () => socket.end()));
    cleanups.push(() => server.close());
    await expect(negotiate(server.port)).rejects.toMatchObject({ code: 'TLS_FAILED' });
  });
});

describe('client opening', () => {
  const ssl = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
  const gssenc = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
  const cancel = Buffer.from([0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2]);
  const startup = Buffer.from([0, 0, 0, 9, 0, 3, 0, 0, 0]);

  it('needs 8 bytes to tell a request, and every prefix of one is "more"', () => {
    for (const request of [ssl, gssenc]) {
      for (let n = 0; n < 8; n++) expect(classifyOpening(request.subarray(0, n))).toBe('more');
    }
    expect(classifyOpening(ssl)).toBe('ssl-request');
    expect(classifyOpening(gssenc)).toBe('gssenc-request');
  });

  it('a startup message and a CancelRequest are passed on once their length word is known', () => {
    expect(classifyOpening(startup)).toBe('other');
    expect(classifyOpening(cancel)).toBe('other');
    for (let n = 0; n < 4; n++) expect(classifyOpening(startup.subarray(0, n))).toBe('more');
    expect(classifyOpening(startup.subarray(0, 4))).toBe('other');
  });

  it('a length word PostgreSQL refuses (under 8, over 10000, a TLS ClientHello) is invalid, whatever follows', () => {
    expect(classifyOpening(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]))).toBe('invalid');
    // Generated: every length word, judged by PostgreSQL's own rule (8 <= length <= 10000).
    for (let seed = 1; seed < 5_000; seed++) {
      const bytes = Buffer.alloc(8);
      for (let i = 0; i < 8; i++) bytes[i] = (seed * (i + 31) * 2654435761) >>> 24;
      // Every fourth input has a length word near the bounds.
      if (seed % 4 === 0) bytes.writeUInt32BE([0, 7, 8, 9, 9_999, 10_000, 10_001, 0xffffffff][seed % 8]!, 0);
      if (bytes.equals(ssl) || bytes.equals(gssenc)) continue;
      const length = bytes.readUInt32BE(0);
      const verdict = classifyOpening(bytes);
      expect(verdict, bytes.toString('hex')).toBe(length < 8 || length > 10_000 ? 'invalid' : 'other');
      expect(classifyOpening(bytes.subarray(0, 4)), bytes.toString('hex')).toBe(length < 8 || length > 10_000 ? 'invalid' : length === 8 ? 'more' : 'other');
    }
  });
});
