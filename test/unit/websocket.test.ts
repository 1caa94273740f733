import { describe, expect, it } from 'vitest';
import { FrameWalker, OPCODE, WebSocketTracker, encodeFrame, parseFrameHeader } from '../../src/protocols/websocket.js';

// The WebSocket codec fed hex, with no sockets: the RFC 6455 section 5.7 examples, then
// the heartbeat tracker on every split of the stream that matters.

const hex = (text: string): Buffer => Buffer.from(text.replace(/\s+/g, ''), 'hex');
const PROBE = hex('0102030405060708');
const MASK = hex('37fa213d');
/** Deterministic "random" bytes: the probe payload, then the mask key. */
const fixedRandom = (size: number): Buffer => (size === 8 ? PROBE : MASK);
/** Our ping's pong as a server sends it (unmasked). */
const OUR_PONG = hex('8a08 0102030405060708');

function tracker(): WebSocketTracker {
  return new WebSocketTracker(fixedRandom);
}

describe('encodeFrame (RFC 6455 5.7 examples)', () => {
  it('builds unmasked and masked text, ping and pong frames', () => {
    expect(encodeFrame(OPCODE.text, Buffer.from('Hello')).toString('hex')).toBe('810548656c6c6f');
    expect(encodeFrame(OPCODE.text, Buffer.from('Hello'), { mask: MASK }).toString('hex')).toBe('818537fa213d7f9f4d5158');
    expect(encodeFrame(OPCODE.text, Buffer.from('Hel'), { fin: false }).toString('hex')).toBe('010348656c');
    expect(encodeFrame(OPCODE.continuation, Buffer.from('lo')).toString('hex')).toBe('80026c6f');
    expect(encodeFrame(OPCODE.ping, Buffer.from('Hello')).toString('hex')).toBe('890548656c6c6f');
    expect(encodeFrame(OPCODE.pong, Buffer.from('Hello'), { mask: MASK }).toString('hex')).toBe('8a8537fa213d7f9f4d5158');
  });

  it('uses 16- and 64-bit lengths', () => {
    expect(encodeFrame(OPCODE.binary, Buffer.alloc(256)).subarray(0, 4).toString('hex')).toBe('827e0100');
    expect(encodeFrame(OPCODE.binary, Buffer.alloc(65_536)).subarray(0, 10).toString('hex')).toBe('827f0000000000010000');
  });

  it('parses headers back, and refuses reserved opcodes and bad control frames', () => {
    expect(parseFrameHeader(hex('818537fa213d'))).toMatchObject({ fin: true, opcode: 1, masked: true, length: 5, headerLength: 6 });
    expect(parseFrameHeader(hex('827f0000000000010000'))).toMatchObject({ opcode: 2, length: 65_536, headerLength: 10 });
    expect(() => parseFrameHeader(hex('8300'))).toThrow(/reserved opcode/);
    expect(() => parseFrameHeader(hex('0900'))).toThrow(/control frame/); // fragmented ping
    expect(() => parseFrameHeader(hex('897e0080'))).toThrow(/control frame/); // 128-byte ping
  });
});

describe('FrameWalker', () => {
  it('follows boundaries fed one byte at a time', () => {
    const walker = new FrameWalker();
    const stream = Buffer.concat([hex('010348656c'), hex('80026c6f'), hex('8900')]);
    const events: string[] = [];
    for (const byte of stream) {
      let offset = 0;
      const one = Buffer.from([byte]);
      while (offset < 1) {
        const step = walker.step(one, offset);
        offset = step.offset;
        if (step.event !== 'none') events.push(`${step.event}:${walker.current!.opcode}`);
      }
    }
    expect(events).toEqual(['header:1', 'frame-end:1', 'header:0', 'frame-end:0', 'header:9']);
    expect(walker.atBoundary).toBe(true);
  });
});

describe('WebSocketTracker', () => {
  it('probes with a masked ping carrying its own payload', () => {
    const t = tracker();
    expect(t.state).toBe('quiet');
    expect(t.probe().toString('hex')).toBe('898837fa213d36f8223932fc2635');
    expect(t.probing).toBe(true);
  });

  it('cuts the matching pong, whole or split at every byte', () => {
    const whole = tracker();
    whole.probe();
    expect(whole.fromServer(OUR_PONG).length).toBe(0);
    expect(whole.probing).toBe(false);

    const split = tracker();
    split.probe();
    const out = [...OUR_PONG].map((byte) => split.fromServer(Buffer.from([byte])));
    expect(Buffer.concat(out).length).toBe(0);
    expect(split.probing).toBe(false);
  });

  it('cuts the pong out of a segment holding several frames, keeping the others in order', () => {
    const t = tracker();
    t.probe();
    const before = hex('810548656c6c6f');
    const after = hex('82020102');
    const out = t.fromServer(Buffer.concat([before, OUR_PONG, after]));
    expect(out.toString('hex')).toBe(Buffer.concat([before, after]).toString('hex'));
    expect(t.probing).toBe(false);
    // Afterwards everything passes, as the same buffer.
    const later = hex('810161');
    expect(t.fromServer(later)).toBe(later);
  });

  it('forwards pongs that are not ours: another payload, another length', () => {
    const t = tracker();
    t.probe();
    const otherPayload = hex('8a08 0807060504030201');
    expect(t.fromServer(otherPayload).toString('hex')).toBe(otherPayload.toString('hex'));
    const otherLength = hex('8a05 48656c6c6f');
    expect(t.fromServer(otherLength).toString('hex')).toBe(otherLength.toString('hex'));
    expect(t.probing).toBe(true);
    expect(t.fromServer(OUR_PONG).length).toBe(0);
  });

  it('holds at most a header while deciding, across a split data frame, then lets it through', () => {
    const t = tracker();
    t.probe();
    const big = encodeFrame(OPCODE.binary, Buffer.alloc(70_000, 9)); // 64-bit length
    const pieces = [big.subarray(0, 1), big.subarray(1, 5), big.subarray(5, 30_000), big.subarray(30_000), OUR_PONG];
    const out = pieces.map((piece) => t.fromServer(piece));
    expect(out[0]!.length).toBe(0); // one byte of a header: held
    expect(Buffer.concat(out).equals(big)).toBe(true);
    expect(t.probing).toBe(false);
  });

  it('passes server bytes untouched, as the same buffer, when no probe is out', () => {
    const t = tracker();
    const frame = hex('810548656c6c6f');
    expect(t.fromServer(frame)).toBe(frame);
    expect(t.fromServer(OUR_PONG)).toBe(OUR_PONG); // an unsolicited pong is the client's business
  });

  it('is busy in the middle of a client frame and quiet at its end', () => {
    const t = tracker();
    const masked = encodeFrame(OPCODE.text, Buffer.from('Hello'), { mask: MASK });
    t.fromClient(masked.subarray(0, 4));
    expect(t.state).toBe('busy');
    t.fromClient(masked.subarray(4));
    expect(t.state).toBe('quiet');
    // A ping between two fragments of one message is allowed (RFC 6455 5.4).
    t.fromClient(encodeFrame(OPCODE.text, Buffer.from('Hel'), { fin: false, mask: MASK }));
    expect(t.state).toBe('quiet');
  });

  it('goes off on a close frame either way, and on a reserved opcode, releasing the probe', () => {
    const closing = tracker();
    closing.fromClient(encodeFrame(OPCODE.close, hex('03e8'), { mask: MASK }));
    expect(closing.state).toBe('off');
    expect(closing.offReason).toBe('closing');

    const fromServer = tracker();
    fromServer.probe();
    const close = hex('880203e8');
    expect(fromServer.fromServer(close).toString('hex')).toBe('880203e8');
    expect(fromServer.state).toBe('off');
    expect(fromServer.probing).toBe(false);

    const desync = tracker();
    desync.probe();
    const junk = hex('8300 41');
    expect(desync.fromServer(junk).toString('hex')).toBe('830041');
    expect(desync.offReason).toBe('desync');
    expect(desync.probing).toBe(false);
    expect(desync.fromServer(OUR_PONG)).toBe(OUR_PONG);
  });
});
