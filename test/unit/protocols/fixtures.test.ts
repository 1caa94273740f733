import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { codecFor } from '../../../src/protocols/registry.js';
import type { HeartbeatCodec, Tracker } from '../../../src/protocols/types.js';

// Replays conversations captured from real servers and real clients (redis-server 7.0 with
// ioredis and a raw RESP3 client, PostgreSQL 15 with pg, MariaDB 10.11 with mysql2; recorded
// by test/integration/protocol-codecs.test.ts with RECORD_FIXTURES=1): as captured, byte by
// byte, with adjacent server chunks merged, and with a probe injected at every quiet point.

interface Event {
  from: 'client' | 'server' | 'probe' | 'probe-reply';
  hex: string;
  forwarded?: string;
}
interface Fixture {
  codec: 'redis' | 'postgres' | 'mysql';
  scenario: string;
  connections: Event[][];
}

const DIR = join(import.meta.dirname, 'fixtures');
const fixtures: Fixture[] = readdirSync(DIR)
  .filter((name) => name.endsWith('.json'))
  .map((name) => JSON.parse(readFileSync(join(DIR, name), 'utf8')) as Fixture);

/** A reply every codec accepts for its probe in any mode (an error proves the server answers). */
const INJECTED_REPLY: Record<Fixture['codec'], Buffer> = {
  redis: Buffer.from('-ERR injected\r\n', 'latin1'),
  postgres: Buffer.from('5a0000000549', 'hex'),
  mysql: Buffer.from('0700000100000002000000', 'hex'),
};

function codecOf(fixture: Fixture): HeartbeatCodec {
  return codecFor(fixture.codec)!;
}

type Feed = (tracker: Tracker, side: 'client' | 'server', data: Buffer) => Buffer;

const whole: Feed = (tracker, side, data) => {
  if (side === 'client') {
    tracker.fromClient(data);
    return data;
  }
  return Buffer.from(tracker.fromServer(data));
};

const byteByByte: Feed = (tracker, side, data) => {
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i++) {
    const piece = data.subarray(i, i + 1);
    if (side === 'client') tracker.fromClient(piece);
    else out.push(Buffer.from(tracker.fromServer(piece)));
  }
  return side === 'client' ? data : Buffer.concat(out);
};

/** Replays one connection; returns how many probes were answered. */
function replay(codec: HeartbeatCodec, events: Event[], feed: Feed, injectProbes: Buffer | null): number {
  const tracker = codec.track({});
  let answered = 0;
  let clientSpoke = false;
  for (const [index, event] of events.entries()) {
    const where = `event ${index} (${event.from})`;
    if (injectProbes && tracker.state === 'quiet' && !tracker.probing && (clientSpoke || codec.probesBeforeClient)) {
      tracker.probe();
      expect(feed(tracker, 'server', injectProbes).length, `${where}: injected reply cut`).toBe(0);
      expect(tracker.probing, `${where}: injected reply consumed`).toBe(false);
      expect(tracker.state, `${where}: quiet after the injected probe`).toBe('quiet');
      answered++;
    }
    const data = Buffer.from(event.hex, 'hex');
    switch (event.from) {
      case 'client':
        clientSpoke = true;
        feed(tracker, 'client', data);
        break;
      case 'server':
        expect(feed(tracker, 'server', data).toString('hex'), `${where}: forwarded unchanged`).toBe(event.hex);
        break;
      case 'probe':
        expect(tracker.state, where).toBe('quiet');
        expect(tracker.probe().toString('hex'), `${where}: probe bytes`).toBe(event.hex);
        break;
      case 'probe-reply':
        expect(feed(tracker, 'server', data).toString('hex'), `${where}: forwarded`).toBe(event.forwarded);
        if (!tracker.probing) answered++;
        break;
    }
    expect(tracker.state, `${where}: never off (${tracker.offReason})`).not.toBe('off');
  }
  expect(tracker.probing, 'no probe left unanswered').toBe(false);
  return answered;
}

/** Adjacent server chunks (no client bytes between them) merged into one. */
function mergeServerChunks(events: Event[]): Event[] {
  const merged: Event[] = [];
  for (const event of events) {
    const last = merged[merged.length - 1];
    if (last && event.from === 'server' && last.from === 'server') last.hex += event.hex;
    else merged.push({ ...event });
  }
  return merged;
}

describe('codecs replay real-server conversations', () => {
  it('has fixtures for every codec', () => {
    expect(new Set(fixtures.map((f) => f.codec))).toEqual(new Set(['redis', 'postgres', 'mysql']));
  });

  for (const fixture of fixtures) {
    describe(fixture.scenario, () => {
      it('as captured: server bytes unchanged, the real probe reply cut', () => {
        for (const events of fixture.connections) expect(replay(codecOf(fixture), events, whole, null)).toBe(1);
      });

      it('byte by byte', () => {
        for (const events of fixture.connections) expect(replay(codecOf(fixture), events, byteByByte, null)).toBe(1);
      });

      it('with adjacent server chunks merged (several replies per chunk)', () => {
        for (const events of fixture.connections) replay(codecOf(fixture), mergeServerChunks(events), whole, null);
      });

      it('with a probe injected at every quiet point', () => {
        let injected = 0;
        for (const events of fixture.connections) injected += replay(codecOf(fixture), events, whole, INJECTED_REPLY[fixture.codec]);
        expect(injected).toBeGreaterThan(fixture.connections.length * 2);
      });
    });
  }
});
