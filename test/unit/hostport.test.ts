import { describe, expect, it } from 'vitest';
import { formatHostPort, parseHostPort, sameListenAddress } from '../../src/config/hostport.js';

describe('parseHostPort', () => {
  it.each([
    ['127.0.0.1:80', { host: '127.0.0.1', port: 80 }],
    ['db.internal:5432', { host: 'db.internal', port: 5432 }],
    ['localhost:65535', { host: 'localhost', port: 65535 }],
    ['[::1]:6379', { host: '::1', port: 6379 }],
    ['[fe80::1%eth0]:22', { host: 'fe80::1%eth0', port: 22 }],
    ['my_host-1.example.:1', { host: 'my_host-1.example.', port: 1 }],
  ])('%j', (text, expected) => {
    expect(parseHostPort(text)).toEqual(expected);
  });

  it('accepts port 0 only when asked (listen addresses)', () => {
    expect(() => parseHostPort('127.0.0.1:0')).toThrow('port 0 (any free port) is only allowed for listen addresses');
    expect(parseHostPort('127.0.0.1:0', { allowPortZero: true })).toEqual({ host: '127.0.0.1', port: 0 });
  });

  it.each([
    [8080, 'expected "host:port", not a bare port: write "127.0.0.1:8080"'],
    [null, 'expected "host:port", e.g. "127.0.0.1:8080"'],
    ['', 'empty address; expected "host:port", e.g. "127.0.0.1:8080"'],
    ['http://a:1', '"http://a:1" is a URL; expected "host:port" (URLs are for http routes\' upstream)'],
    ['[::1:80', '"[::1:80": missing "]" after the IPv6 address'],
    ['[::1]80', '"[::1]80": missing ":port" after "]"'],
    ['[db]:80', '"[db]:80": "db" is not an IPv6 address'],
    ['db', '"db": missing port; expected "host:port", e.g. "db:8080"'],
    ['::1:80', '"::1:80": put an IPv6 address in brackets, e.g. "[::1]:8080"'],
    [':80', '":80": missing host; write "127.0.0.1:80" for loopback only or "0.0.0.0:80" for every interface'],
    ['a b:80', '"a b:80": "a b" is not a valid host name or IP address'],
    ['-db:80', '"-db:80": "-db" is not a valid host name or IP address'],
    ['db:http', '"db:http": port "http" is not a number from 1 to 65535'],
    ['db:-1', '"db:-1": port "-1" is not a number from 1 to 65535'],
    ['db:65536', '"db:65536": port 65536 is above 65535'],
  ])('%j is refused', (value, message) => {
    expect(() => parseHostPort(value)).toThrow(new RangeError(message));
  });
});

describe('formatHostPort', () => {
  it('brackets IPv6 hosts', () => {
    expect(formatHostPort({ host: '::1', port: 80 })).toBe('[::1]:80');
    expect(formatHostPort({ host: 'db', port: 5432 })).toBe('db:5432');
  });

  it('takes a socket\'s remote address as it comes (host and port apart, possibly undefined)', () => {
    expect(formatHostPort('::ffff:127.0.0.1', 40_000)).toBe('[::ffff:127.0.0.1]:40000');
    expect(formatHostPort('10.0.0.1', 1)).toBe('10.0.0.1:1');
    expect(formatHostPort(undefined, undefined)).toBe('unknown');
  });

  it('gives back what parseHostPort reads, for generated IPv4, IPv6 and name hosts and ports', () => {
    let seed = 7;
    const next = (n: number): number => {
      seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0;
      return seed % n;
    };
    const hex = (): string => next(0x10000).toString(16);
    const hosts = [
      (): string => `${next(256)}.${next(256)}.${next(256)}.${next(256)}`,
      (): string => Array.from({ length: 8 }, hex).join(':'),
      (): string => `${hex()}::${hex()}`,
      (): string => `::ffff:${next(256)}.${next(256)}.${next(256)}.${next(256)}`,
      (): string => `db-${next(1000)}.svc${next(10)}.example`,
    ];
    for (let i = 0; i < 2_000; i++) {
      const address = { host: hosts[i % hosts.length]!(), port: 1 + next(65_535) };
      const text = formatHostPort(address);
      expect(parseHostPort(text), text).toEqual(address);
      expect(formatHostPort(address.host, address.port)).toBe(text);
    }
  });
});

describe('sameListenAddress', () => {
  const at = (text: string) => parseHostPort(text, { allowPortZero: true });
  it.each([
    ['127.0.0.1:80', '127.0.0.1:80', true],
    ['LOCALHOST:80', 'localhost:80', true],
    ['127.0.0.1:80', '127.0.0.1:81', false],
    ['127.0.0.1:80', '127.0.0.2:80', false],
    ['0.0.0.0:80', '127.0.0.1:80', true],
    ['0.0.0.0:80', '[::1]:80', false],
    ['[::]:80', '127.0.0.1:80', true],
    ['[::]:80', '[::1]:80', true],
    ['127.0.0.1:0', '127.0.0.1:0', false],
  ])('%s and %s: %s', (a, b, clash) => {
    expect(sameListenAddress(at(a), at(b))).toBe(clash);
    expect(sameListenAddress(at(b), at(a))).toBe(clash);
  });
});
