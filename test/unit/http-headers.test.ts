import type http from 'node:http';
import { describe, expect, it } from 'vitest';
import { Allowlist, normaliseHost } from '../../src/http/allowlist.js';
import { DestinationGuard } from '../../src/http/destination-guard.js';
import { parseConnectAuthority, resolveForwardRequest } from '../../src/http/forward.js';
import { connectionNominated, endToEnd, upstreamRequestHeaders } from '../../src/http/headers.js';
import { parseKeepAliveTimeoutMs } from '../../src/pool/http-connection.js';

// Pure pieces of the HTTP routes: header rewriting, the allowlist, target parsing.

function incoming(method: string, rawHeaders: string[], remote = '10.1.2.3'): http.IncomingMessage {
  const headers: Record<string, string> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) headers[rawHeaders[i]!.toLowerCase()] = rawHeaders[i + 1]!;
  return { method, rawHeaders, headers, socket: { remoteAddress: remote } } as unknown as http.IncomingMessage;
}

describe('hop-by-hop headers', () => {
  it('removes RFC 9110 7.6.1 fields and those Connection nominates, keeping case and order', () => {
    const raw = ['Host', 'a', 'Connection', 'close, X-Hop', 'X-Hop', '1', 'Keep-Alive', 'timeout=5', 'TE', 'trailers', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Upgrade', 'h2c', 'Trailer', 'X', 'Transfer-Encoding', 'chunked', 'Proxy-Connection', 'keep-alive'];
    expect([...connectionNominated(raw)]).toEqual(['close', 'x-hop']);
    expect(endToEnd(raw)).toEqual(['Host', 'a', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2']);
  });

  it('builds the upstream request: Host, X-Forwarded-*, and our own framing', () => {
    const req = incoming('POST', ['Host', 'public.example', 'X-Forwarded-For', '203.0.113.9', 'Transfer-Encoding', 'chunked', 'Connection', 'keep-alive']);
    const headers = upstreamRequestHeaders(req, { host: 'api.internal:8080', forwarded: { clientIp: '10.1.2.3', proto: 'http', host: 'public.example' } });
    expect(headers).toEqual([
      'Host', 'api.internal:8080',
      'X-Forwarded-For', '203.0.113.9, 10.1.2.3',
      'X-Forwarded-Proto', 'http',
      'X-Forwarded-Host', 'public.example',
      'Transfer-Encoding', 'chunked',
    ]);
  });

  it('says Content-Length: 0 for a bodiless POST, nothing for a GET', () => {
    expect(upstreamRequestHeaders(incoming('POST', ['Host', 'a']), { host: 'u', forwarded: null })).toEqual(['Host', 'u', 'Content-Length', '0']);
    expect(upstreamRequestHeaders(incoming('GET', ['Host', 'a']), { host: 'u', forwarded: null })).toEqual(['Host', 'u']);
  });

  it('writes the framing of the Upgrade request from the parse: a Connection option cannot remove Content-Length or Host', () => {
    const req = incoming('POST', ['Host', 'a', 'Connection', 'Upgrade, Content-Length, Host, X-Hop', 'Content-Length', '5', 'X-Hop', '1', 'Upgrade', 'websocket']);
    expect([...connectionNominated(req.rawHeaders)]).toEqual(['upgrade', 'x-hop']);
    expect(upstreamRequestHeaders(req, { host: 'u', forwarded: null, upgrade: 'websocket' })).toEqual([
      'Host', 'u', 'Connection', 'Upgrade', 'Upgrade', 'websocket', 'Content-Length', '5',
    ]);
  });

  it('keeps Upgrade for a WebSocket handshake and drops Proxy-Authorization when asked', () => {
    const req = incoming('GET', ['Host', 'a', 'Connection', 'Upgrade', 'Upgrade', 'websocket', 'Proxy-Authorization', 'Basic eA==', 'Sec-WebSocket-Key', 'k']);
    expect(upstreamRequestHeaders(req, { host: 'u', forwarded: null, upgrade: 'websocket', drop: ['proxy-authorization'] })).toEqual([
      'Host', 'u', 'Sec-WebSocket-Key', 'k', 'Connection', 'Upgrade', 'Upgrade', 'websocket',
    ]);
  });

  it("reads the upstream's Keep-Alive timeout", () => {
    expect(parseKeepAliveTimeoutMs('timeout=5')).toBe(5_000);
    expect(parseKeepAliveTimeoutMs('max=100, timeout=2')).toBe(2_000);
    expect(parseKeepAliveTimeoutMs('Timeout = 30')).toBe(30_000);
    expect(parseKeepAliveTimeoutMs(undefined)).toBe(0);
    expect(parseKeepAliveTimeoutMs('max=5')).toBe(0);
  });
});

describe('the forward allowlist', () => {
  const list = new Allowlist(['*.example.com:443', 'api-*.corp.test:8080', '10.0.0.*:*', '[::1]:8443', 'exact.test:80']);

  it.each([
    ['a.example.com', 443, true],
    ['a.b.example.com', 443, true],
    ['example.com', 443, false],
    ['a.example.com', 80, false],
    ['evil-example.com', 443, false],
    ['a.example.com.evil.test', 443, false],
    ['API-eu.corp.test', 8080, true],
    ['api-eu.x.corp.test', 8080, false],
    ['10.0.0.7', 22, true],
    ['10.0.1.7', 22, false],
    ['[::1]', 8443, true],
    ['::1', 8443, true],
    ['[0:0:0:0:0:0:0:1]', 8443, true],
    ['exact.test.', 80, true],
    ['0x0a.0.0.5', 9000, true],
    ['exact.test', 81, false],
  ])('%s:%i -> %s', (host, port, allowed) => {
    expect(list.allows(host as string, port as number)).toBe(allowed);
  });

  it('"*" alone is any host', () => {
    expect(new Allowlist(['*:443']).allows('anything.test', 443)).toBe(true);
    expect(new Allowlist(['*:443']).allows('anything.test', 80)).toBe(false);
  });

  it('normalises hosts the way URL parsers do', () => {
    expect(normaliseHost('LOCALHOST.')).toBe('localhost');
    expect(normaliseHost('0x7f.1')).toBe('127.0.0.1');
    expect(normaliseHost('2130706433')).toBe('127.0.0.1');
    expect(normaliseHost('[::ffff:127.0.0.1]')).toBe('::ffff:7f00:1');
    expect(normaliseHost('bad host')).toBeNull();
  });
});

describe('forward targets', () => {
  const allowlist = new Allowlist(['origin.test:*', '[::1]:443']);
  const list = { allowlist, guard: new DestinationGuard(allowlist, () => [], () => {}) };

  it('resolves absolute-form requests and refuses the rest', () => {
    expect(resolveForwardRequest('http://origin.test:8080/a?b=1', list)).toEqual({
      ok: true,
      value: { scheme: 'http', host: 'origin.test', port: 8080, path: '/a?b=1', authority: 'origin.test:8080' },
    });
    expect(resolveForwardRequest('https://origin.test/x', list)).toMatchObject({ ok: true, value: { scheme: 'https', port: 443 } });
    expect(resolveForwardRequest('/relative', list)).toMatchObject({ ok: false, status: 400 });
    expect(resolveForwardRequest('ftp://origin.test/', list)).toMatchObject({ ok: false, status: 400 });
    expect(resolveForwardRequest('http://other.test/', list)).toMatchObject({ ok: false, status: 403 });
  });

  it('parses CONNECT authorities, port required', () => {
    expect(parseConnectAuthority('origin.test:443')).toEqual({ host: 'origin.test', port: 443 });
    expect(parseConnectAuthority('[::1]:443')).toEqual({ host: '::1', port: 443 });
    expect(parseConnectAuthority('origin.test')).toBeNull();
    expect(parseConnectAuthority('origin.test:0')).toBeNull();
    expect(parseConnectAuthority('user@origin.test:443')).toBeNull();
    expect(parseConnectAuthority('http://origin.test:443')).toBeNull();
  });
});
