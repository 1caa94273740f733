import { describe, expect, it } from 'vitest';
import { MysqlAuthShift } from '../../../src/protocols/mysql-auth-shift.js';
import { classifyFirstPacket, offerTls, sslRequestFrom } from '../../../src/protocols/negotiate-mysql.js';

// The sequence-id shift of a MySQL authentication carried over a TLS upstream the client
// does not know about: generated conversations (auth switches, more-data rounds, payloads
// full of bytes that look like headers), each fed in random splits both ways, must come
// out exactly as the other side expects them; after authentication nothing changes.

const SSL = 0x800;
const BASE = 0x200 | 0x8000 | (1 << 19);

function packet(seq: number, payload: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUIntLE(payload.length, 0, 3);
  header[3] = seq & 0xff;
  return Buffer.concat([header, payload]);
}

/** A deterministic generator, so a failure names a seed that reproduces it. */
function random(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
}

function payload(rand: (n: number) => number, first: number, length: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i++) bytes[i] = rand(4) === 0 ? 0 : rand(256);
  bytes[0] = first;
  return bytes;
}

function response(rand: (n: number) => number, flags: number): Buffer {
  const fixed = Buffer.alloc(32);
  fixed.writeUInt32LE(flags >>> 0, 0);
  fixed.writeUInt32LE(1 << 24, 4);
  fixed[8] = 45;
  return Buffer.concat([fixed, Buffer.from('user\0'), payload(rand, 20, 1 + rand(40))]);
}

interface Conversation {
  /** What each side writes, in the client's numbering and in the server's. */
  clientView: { client: Buffer; server: Buffer };
  serverView: { client: Buffer; server: Buffer };
}

/** A login of 0..4 auth rounds, its OK or ERR, then commands answered (not shifted). */
function conversation(seed: number): Conversation {
  const rand = random(seed);
  const flags = BASE | (rand(2) ? 1 << 24 : 0);
  const cv = { client: [] as Buffer[], server: [] as Buffer[] };
  const sv = { client: [] as Buffer[], server: [] as Buffer[] };
  const body = response(rand, flags);
  cv.client.push(packet(1, body));
  const withSsl = Buffer.from(body);
  withSsl.writeUInt32LE((flags | SSL) >>> 0, 0);
  sv.client.push(packet(2, withSsl));
  let seq = 2;
  for (let round = rand(5); round > 0; round--) {
    // Auth switch (0xFE plugin + data) or more data (0x01), answered by the client.
    const ask = payload(rand, rand(2) ? 0xfe : 0x01, 1 + rand(60));
    cv.server.push(packet(seq, ask));
    sv.server.push(packet(seq + 1, ask));
    const answer = payload(rand, rand(256), rand(2) ? 0 : 1 + rand(60));
    cv.client.push(packet(seq + 1, answer));
    sv.client.push(packet(seq + 2, answer));
    seq += 2;
  }
  const end = payload(rand, rand(2) ? 0x00 : 0xff, 7 + rand(30));
  cv.server.push(packet(seq, end));
  sv.server.push(packet(seq + 1, end));
  // After authentication: commands with id 0 and their replies, identical on both sides.
  for (let command = rand(3); command > 0; command--) {
    const asked = packet(0, payload(rand, 3, 1 + rand(30)));
    const answered = packet(1, payload(rand, rand(2) ? 0x00 : 0x01, 1 + rand(30)));
    cv.client.push(asked);
    sv.client.push(asked);
    cv.server.push(answered);
    sv.server.push(answered);
  }
  return {
    clientView: { client: Buffer.concat(cv.client), server: Buffer.concat(cv.server) },
    serverView: { client: Buffer.concat(sv.client), server: Buffer.concat(sv.server) },
  };
}

/** Feeds `data` in pieces cut at random, returns what came out. */
function through(rewrite: (chunk: Buffer) => Buffer, data: Buffer, rand: (n: number) => number): Buffer {
  const out: Buffer[] = [];
  let from = 0;
  while (from < data.length) {
    const to = Math.min(data.length, from + 1 + rand(rand(3) === 0 ? 3 : 40));
    const chunk = data.subarray(from, to);
    const copy = Buffer.from(chunk);
    out.push(Buffer.from(rewrite(chunk)));
    // The input is never written to: a held chunk may still be referenced elsewhere.
    expect(chunk.equals(copy)).toBe(true);
    from = to;
  }
  return Buffer.concat(out);
}

describe('MysqlAuthShift', () => {
  it('generated logins in random splits: each side sees its own numbering, and CLIENT_SSL in the response', () => {
    for (let seed = 1; seed <= 400; seed++) {
      const { clientView, serverView } = conversation(seed);
      const rand = random(seed * 7919);
      const shift = new MysqlAuthShift();
      expect(through((c) => shift.toServer(c), clientView.client, rand).equals(serverView.client), `seed ${seed} toServer`).toBe(true);
      expect(through((c) => shift.toClient(c), serverView.server, rand).equals(clientView.server), `seed ${seed} toClient`).toBe(true);
    }
  });

  it('done once the server ended authentication and the client sent a command; then chunks pass as they are', () => {
    const shift = new MysqlAuthShift();
    shift.toServer(packet(1, response(random(3), BASE)));
    shift.toClient(packet(3, Buffer.from([0x00, 0, 0, 2, 0, 0, 0])));
    expect(shift.done).toBe(false);
    const command = packet(0, Buffer.from([0x03, 0x31]));
    expect(shift.toServer(command)).toBe(command);
    expect(shift.done).toBe(true);
    const reply = packet(1, Buffer.from([0x00, 0, 0, 2, 0, 0, 0]));
    expect(shift.toClient(reply)).toBe(reply);
  });
});

describe('the SSL request and the greeting', () => {
  it('the SSL request carries the client’s own flags, max packet size, charset and MariaDB extended capabilities', () => {
    const rand = random(11);
    for (let i = 0; i < 100; i++) {
      const body = response(rand, (rand(0x10000) | (rand(0x10000) << 16)) & ~SSL);
      body.writeUInt32LE(rand(0x10000) * 0x10000 + rand(0x10000), 28);
      const request = sslRequestFrom(packet(1, body));
      expect(request.readUIntLE(0, 3)).toBe(32);
      expect(request[3]).toBe(1);
      expect(request.readUInt32LE(4)).toBe((body.readUInt32LE(0) | SSL) >>> 0);
      expect(request.subarray(8).equals(body.subarray(4, 32))).toBe(true);
      expect(classifyFirstPacket(request)).toBe('ssl-request');
      expect(classifyFirstPacket(packet(1, body))).toBe('response');
    }
  });

  it('a first packet is classified only once enough of it has come', () => {
    const request = sslRequestFrom(packet(1, response(random(5), BASE)));
    for (let cut = 0; cut < request.length; cut++) expect(classifyFirstPacket(request.subarray(0, cut))).toBe('more');
    expect(classifyFirstPacket(packet(1, Buffer.from('short\0')))).toBe('short-response');
  });

  it('offerTls sets or clears CLIENT_SSL in the greeting and nothing else', () => {
    const greeting = packet(
      0,
      Buffer.concat([Buffer.from([0x0a]), Buffer.from('10.11.19-MariaDB\0'), Buffer.alloc(4, 7), Buffer.alloc(8, 9), Buffer.from([0]), Buffer.from([0xff, 0xff]), Buffer.alloc(20, 1)]),
    );
    const hidden = offerTls(greeting, false);
    const capabilitiesAt = 4 + 1 + 17 + 4 + 8 + 1;
    expect(hidden.readUInt16LE(capabilitiesAt)).toBe(0xffff & ~SSL);
    expect(offerTls(hidden, true).equals(greeting)).toBe(true);
    for (let i = 0; i < greeting.length; i++) if (i !== capabilitiesAt + 1) expect(hidden[i]).toBe(greeting[i]);
  });
});
