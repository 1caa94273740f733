import { describe, expect, it } from 'vitest';
import { BODY_ERROR, BODY_MORE, BodyReader } from '../../src/http/body-reader.js';
import { HeadError, findHeadEnd, parseRequestHead, parseResponseHead, rawHeaders } from '../../src/http/head-parser.js';
import { downstreamResponseHead, upstreamRequestHead } from '../../src/http/head-writer.js';

// The lean HTTP/1.1 path's parsing and framing, on bytes: what is accepted, what is
// refused (and with which status), and where a body ends. Request smuggling lives in the
// gaps between two parsers, so every leniency is pinned down here.

function request(text: string) {
  const buf = Buffer.from(text, 'latin1');
  const end = findHeadEnd(buf, 0, 16_384, 431);
  if (end === -1) throw new Error('incomplete');
  return parseRequestHead(buf, 0, end);
}

function requestStatus(text: string): number {
  try {
    request(text);
    return 0;
  } catch (error) {
    if (error instanceof HeadError) return error.status;
    throw error;
  }
}

function response(text: string) {
  const buf = Buffer.from(text, 'latin1');
  const end = findHeadEnd(buf, 0, 65_536, 502);
  return parseResponseHead(buf, 0, end);
}

/** Feeds `pieces` to a reader; returns what reached the sink and where the body ended. */
function read(reader: (sink: { bodyBytes(b: Buffer, s: number, e: number): void }) => BodyReader, pieces: string[]) {
  const out: Buffer[] = [];
  const r = reader({ bodyBytes: (b, s, e) => out.push(Buffer.from(b.subarray(s, e))) });
  let end = BODY_MORE;
  let piece = 0;
  for (; piece < pieces.length; piece++) {
    end = r.feed(Buffer.from(pieces[piece]!, 'latin1'), 0);
    if (end !== BODY_MORE) break;
  }
  return { body: Buffer.concat(out).toString('latin1'), end, piece, error: r.error };
}

describe('request heads', () => {
  it('reads the request line, the fields and the framing', () => {
    const head = request('POST /a?b=1 HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\nhello');
    expect(head).toMatchObject({ method: 'POST', url: '/a?b=1', httpVersion: '1.1', body: 'length', contentLength: 5, keepAlive: false, forwardedFor: ['203.0.113.9'] });
    expect(head.headers.host).toBe('example');
    expect(rawHeaders(head)).toEqual(['Host', 'example', 'Content-Length', '5', 'X-Forwarded-For', '203.0.113.9', 'Connection', 'close']);
  });

  it('knows persistence per version: 1.1 unless close, 1.0 only with keep-alive', () => {
    expect(request('GET / HTTP/1.1\r\nHost: x\r\n\r\n').keepAlive).toBe(true);
    expect(request('GET / HTTP/1.0\r\n\r\n').keepAlive).toBe(false);
    expect(request('GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n').keepAlive).toBe(true);
    expect(request('GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n').keepAlive).toBe(false);
  });

  it('sees an upgrade only with Connection: upgrade and Upgrade, on HTTP/1.1', () => {
    expect(request('GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n').upgrade).toBe(true);
    expect(request('GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n').upgrade).toBe(false);
    expect(request('GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n').upgrade).toBe(false);
  });

  it.each([
    ['a request line that is not HTTP', 'GARBAGE\r\n\r\n'],
    ['a bad version', 'GET / HTTP/7.3\r\nHost: x\r\n\r\n'],
    ['HTTP/2 on the wire', 'GET / HTTP/2.0\r\nHost: x\r\n\r\n'],
    ['a space in the target', 'GET /a b HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['two spaces after the method', 'GET  / HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['Content-Length with Transfer-Encoding', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['two Content-Lengths', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n'],
    ['a Content-Length list', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n'],
    ['a signed Content-Length', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n'],
    ['a Content-Length too large to be exact', 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999999999\r\n\r\n'],
    ['a final coding other than chunked', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n'],
    ['chunked twice', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['a near-miss coding', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n'],
    ['Transfer-Encoding on HTTP/1.0', 'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['whitespace before a colon', 'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n'],
    ['obs-fold', 'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n'],
    ['a first field line that folds', 'GET / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n'],
    ['a NUL in a value', 'GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0000b\r\n\r\n'],
    ['a bare CR in a value', 'GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\rb\r\n\r\n'],
    ['a line without a colon', 'GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n'],
    ['an empty field name', 'GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n'],
    ['two Hosts', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'],
  ])('refuses %s with 400', (_what, text) => {
    expect(requestStatus(text)).toBe(400);
  });

  it('refuses bare LF line endings at once, and oversized heads with 431', () => {
    expect(() => findHeadEnd(Buffer.from('GET / HTTP/1.1\nHost: x\n'), 0, 16_384, 431)).toThrow(expect.objectContaining({ status: 400 }));
    expect(() => findHeadEnd(Buffer.from(`GET / HTTP/1.1\r\nX: ${'a'.repeat(200)}`), 0, 100, 431)).toThrow(expect.objectContaining({ status: 431 }));
    expect(findHeadEnd(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n'), 0, 100, 431)).toBe(-1);
  });
});

describe('response heads', () => {
  it('reads status, framing and persistence', () => {
    const head = response('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\n\r\n');
    expect(head).toMatchObject({ status: 200, reason: 'OK', body: 'length', contentLength: 3, persistent: true, keepAliveHeader: 'timeout=5', hasDate: false });
    expect(response('HTTP/1.1 204\r\n\r\n')).toMatchObject({ status: 204, reason: '' });
    expect(response('HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n').persistent).toBe(false);
    expect(response('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n')).toMatchObject({ body: 'chunked', transferEncoding: 'gzip, chunked' });
    // No length, or a final coding other than chunked: the body ends when the upstream closes.
    expect(response('HTTP/1.1 200 OK\r\n\r\n').body).toBe('close');
    expect(response('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n').body).toBe('close');
  });

  it.each([
    ['not HTTP', 'NOT HTTP AT ALL\r\n\r\n'],
    ['a two-digit status', 'HTTP/1.1 20 OK\r\n\r\n'],
    ['CL with TE', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n'],
    ['two different lengths', 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n'],
  ])('refuses %s with 502', (_what, text) => {
    expect(() => response(text)).toThrow(expect.objectContaining({ status: 502 }));
  });
});

describe('rewritten heads', () => {
  it('the upstream request: our Host and framing, X-Forwarded-*, no hop-by-hop field', () => {
    const head = request(
      'POST /p HTTP/1.0\r\nHost: public\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nProxy-Authorization: Basic eA==\r\nX-Keep: yes\r\n\r\n',
    );
    const text = upstreamRequestHead(head, { path: '/base/p', authority: 'api:8080', forwardedFor: '10.0.0.1', forwardedProto: 'http', dropProxyAuthorization: true });
    expect(text).toBe(
      'POST /base/p HTTP/1.1\r\nHost: api:8080\r\nX-Keep: yes\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: public\r\n' +
        'Content-Length: 0\r\nConnection: keep-alive\r\n\r\n',
    );
  });

  it('states the framing from the parse in both directions: Connection options cannot remove it', () => {
    const head = request('POST /p HTTP/1.1\r\nHost: h\r\nConnection: close, Content-Length, Host\r\nContent-Length: 03\r\n\r\n');
    expect(head.nominated).toBeNull();
    expect(upstreamRequestHead(head, { path: '/p', authority: 'api', forwardedFor: null, forwardedProto: 'http', dropProxyAuthorization: false })).toBe(
      'POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n',
    );
    const answer = response('HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Up\r\nX-Up: 1\r\nContent-Length: 5\r\n\r\n');
    expect(downstreamResponseHead(answer, 'length', 'Connection: keep-alive\r\n', '')).toBe('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n');
  });

  it("the client's response: the upstream's end-to-end lines, our framing, Connection and Date", () => {
    const head = response('HTTP/1.1 200 OK\r\nServer: s\r\nConnection: X-Up\r\nX-Up: 1\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n');
    expect(downstreamResponseHead(head, 'chunked', 'Connection: close\r\n', 'Date: D\r\n')).toBe(
      'HTTP/1.1 200 OK\r\nServer: s\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\nDate: D\r\nConnection: close\r\n\r\n',
    );
  });
});

describe('body framing', () => {
  it('ends a Content-Length body exactly, across pieces', () => {
    const result = read((sink) => BodyReader.length(7, sink), ['abc', 'defgNEXT']);
    expect(result).toMatchObject({ body: 'abcdefg', end: 4, piece: 1 });
  });

  it('passes a chunked body as framed (wire) or unframed (decode), trailers included or dropped', () => {
    const pieces = ['5\r\nhel', 'lo\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 1\r\n', '\r\nGET'];
    expect(read((sink) => BodyReader.chunked(sink, false), pieces)).toMatchObject({
      body: '5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n',
      end: 2,
      piece: 2,
    });
    expect(read((sink) => BodyReader.chunked(sink, true), pieces)).toMatchObject({ body: 'hello world', end: 2 });
  });

  it.each([
    ['a size that is not hex', 'zz\r\nhello\r\n0\r\n\r\n'],
    ['a 0x prefix', '0x5\r\nhello\r\n0\r\n\r\n'],
    ['a size with no digits', '\r\nhello\r\n0\r\n\r\n'],
    ['whitespace after the size without an extension', '5 \r\nhello\r\n0\r\n\r\n'],
    ['a bare LF after the size', '5\nhello\r\n0\r\n\r\n'],
    ['data longer than its size', '5\r\nhello!\r\n0\r\n\r\n'],
    ['a size past 2^52', '10000000000000\r\n'],
    ['a control character in an extension', '5;a\u0001\r\nhello\r\n0\r\n\r\n'],
    ['a trailer without a colon', '0\r\nNoColon\r\n\r\n'],
    ['a folded trailer', '0\r\nX: a\r\n b\r\n\r\n'],
  ])('refuses %s', (_what, text) => {
    expect(read((sink) => BodyReader.chunked(sink, false), [text]).end).toBe(BODY_ERROR);
  });
});
