import { describe, expect, it } from 'vitest';
import { configFingerprint } from '../../src/config/fingerprint.js';

// What a reload compares to keep an unchanged route's pool: bytes by content whatever their
// container (a reload's config comes back from a worker thread as plain Uint8Arrays).
describe('configFingerprint', () => {
  it('is equal for equal content: Buffer against Uint8Array, a slice of a larger buffer, a URL by href', () => {
    const pem = Buffer.from('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    const inLargerBuffer = Buffer.concat([Buffer.from('xx'), pem, Buffer.from('yy')]).subarray(2, 2 + pem.length);
    const a = { tls: { cert: pem, servername: 'db' }, url: new URL('http://db:80/') };
    const b = { tls: { cert: new Uint8Array(pem), servername: 'db' }, url: new URL('http://db:80/') };
    const c = { tls: { cert: inLargerBuffer, servername: 'db' }, url: new URL('http://db:80/') };
    expect(configFingerprint(a)).toBe(configFingerprint(b));
    expect(configFingerprint(a)).toBe(configFingerprint(c));
  });

  it('differs when a byte, a value or a URL differs', () => {
    const base = { cert: Buffer.from('one'), port: 5432, url: new URL('http://db/') };
    expect(configFingerprint(base)).not.toBe(configFingerprint({ ...base, cert: Buffer.from('onf') }));
    expect(configFingerprint(base)).not.toBe(configFingerprint({ ...base, port: 5433 }));
    expect(configFingerprint(base)).not.toBe(configFingerprint({ ...base, url: new URL('http://db2/') }));
    expect(configFingerprint(base)).not.toBe(configFingerprint({ ...base, cert: null }));
  });
});
