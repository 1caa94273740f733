import { describe, expect, it } from 'vitest';
import { customCodec } from '../../../src/protocols/custom.js';
import { codecFor } from '../../../src/protocols/registry.js';
import { bytes, everySplit, run } from './harness.js';

const send = bytes('NOOP\r\n');
const expectBytes = bytes('250 OK\r\n');

describe('custom tcp codec', () => {
  it('registry: tcp without send has no codec (TCP keepalive only)', () => {
    expect(codecFor('tcp', {})).toBeNull();
    expect(codecFor('tcp', { send })).toBe(customCodec);
    expect(codecFor('redis')?.name).toBe('redis');
    expect(codecFor('postgres')?.name).toBe('postgres');
    expect(codecFor('mysql')?.name).toBe('mysql');
    expect(codecFor('http')).toBeNull();
  });

  it('is quiet whenever no probe is out; cuts exactly the expected bytes at every split', () => {
    run(customCodec.track({ send, expect: expectBytes }), [
      { client: bytes('HELO x\r\n'), state: 'quiet' },
      { server: bytes('250 hi\r\n'), state: 'quiet' },
      { probe: send },
      { check: (t) => expect(t.state).toBe('busy') },
    ]);
    const after = bytes('more bytes');
    everySplit({ ...customCodec, track: () => customCodec.track({ send, expect: expectBytes }) }, (t) => t.probe(), 'server', Buffer.concat([expectBytes, after]), {
      state: 'quiet',
      probing: false,
      forwarded: after,
    });
  });

  it('a mismatch forwards everything received, in order, and goes off', () => {
    // Customising `track` options needs a tracker per split: everySplit uses track({}), so wrap.
    const data = bytes('250 NO\r\n');
    const codec = { ...customCodec, track: () => customCodec.track({ send, expect: expectBytes }) };
    everySplit(codec, (t) => t.probe(), 'server', data, { state: 'off', forwarded: data, offReason: 'desync', probing: false });
  });

  it('an empty expect is a one-way heartbeat: nothing to wait for', () => {
    const t = customCodec.track({ send: bytes('\r\n'), expect: Buffer.alloc(0) });
    expect(t.probe()).toEqual(bytes('\r\n'));
    expect(t.probing).toBe(false);
    expect(t.state).toBe('quiet');
    expect(t.fromServer(bytes('x'))).toEqual(bytes('x'));
  });

  it('owes a reply from any client byte to the next server byte (responseTimeout on a raw stream)', () => {
    const t = customCodec.track({ send: Buffer.from('PING\n'), expect: Buffer.from('PONG\n') });
    expect(t.awaitingReply).toBe(false);
    t.fromClient(Buffer.from('x'));
    expect([t.awaitingReply, t.replyGraceMs, t.inTransaction]).toEqual([true, 0, false]);
    t.fromServer(Buffer.from('y'));
    expect(t.awaitingReply).toBe(false);
    t.fromClient(Buffer.from('again'));
    t.probe();
    expect(t.fromServer(Buffer.from('PONG\n')).length).toBe(0);
    expect([t.awaitingReply, t.probeRefused]).toEqual([false, false]);
  });
});

