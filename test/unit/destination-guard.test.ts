import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { Allowlist } from '../../src/http/allowlist.js';
import { DestinationGuard } from '../../src/http/destination-guard.js';
import { resolveForwardRequest } from '../../src/http/forward.js';
import { ProxyError } from '../../src/errors.js';

// Where a forward-proxy destination really goes: IP-shaped patterns never match names,
// and after resolution loopback, link-local, unspecified and the proxy's own listeners
// are refused unless a pattern spells the address out.

function policy(patterns: string[], own: Array<{ host: string; port: number }> = []) {
  const allowlist = new Allowlist(patterns);
  return { allowlist, guard: new DestinationGuard(allowlist, () => own, () => {}) };
}

describe('IP-shaped allow patterns', () => {
  const ipPatterns = ['10.0.0.*', '10.*', '*.0.0.1', '1*.0.0.1', '10.0.*.5', '127.0.0.1', '0x7f.1'];
  // (Not '0x' or '0x1': the URL parser reads those as hex octets, so they make IP literals.)
  const fillers = ['evil', 'a', 'x1', '1x', 'evil-1', 'xn--e1a', '_', 'local', 'ex', '1e1'];

  it.each(ipPatterns)('%s matches IP literals, never a name built from it', (pattern) => {
    const list = new Allowlist([`${pattern}:*`]);
    // Names: every wildcard (or the last octet of a literal) replaced by a label.
    const base = pattern.includes('*') ? pattern : '127.0.0.*';
    for (const filler of fillers) {
      const name = base.replaceAll('*', filler);
      expect(list.allows(name, 80), `${name} against ${pattern}`).toBe(false);
      expect(list.allows(`${name}.example`, 80)).toBe(false);
    }
    const literal = pattern === '0x7f.1' ? '127.0.0.1' : pattern === '10.*' ? '10.20.30.40' : pattern.replaceAll('*', '1');
    expect(list.allows(literal, 80), literal).toBe(true);
  });

  it('name patterns still match names', () => {
    expect(new Allowlist(['*.example.com:*']).allows('a.example.com', 1)).toBe(true);
    expect(new Allowlist(['*:*']).allows('10.0.0.evil', 1)).toBe(true); // "*" is any host: the guard judges where it goes
  });
});

describe('the destination guard', () => {
  const refusedSpellings = [
    '127.0.0.1', '127.1.2.3', '2130706433', '0x7f.1', '0177.0.0.1', '017700000001', '0x7f000001',
    '[::1]', '[0:0:0:0:0:0:0:1]', '[::ffff:127.0.0.1]', '[::ffff:7f00:1]',
    '0.0.0.0', '0', '[::]', '169.254.169.254', '0xa9.0xfe.0xa9.0xfe', '2852039166', '[::ffff:169.254.169.254]', '[fe80::1]', '[febf::1]',
  ];

  it.each(refusedSpellings)('refuses http://%s/ under "*:*" (403)', (host) => {
    const result = resolveForwardRequest(`http://${host}:8080/x`, policy(['*:*']));
    expect(result).toMatchObject({ ok: false, status: 403 });
  });

  it('lets ordinary addresses through', () => {
    for (const host of ['192.0.2.10', '10.1.2.3', '[2001:db8::1]', '[fec0::1]', '169.253.0.1', '128.0.0.1']) {
      expect(resolveForwardRequest(`http://${host}/`, policy(['*:*'])).ok, host).toBe(true);
    }
  });

  it('opens a special address only to a pattern that spells it out', () => {
    const { guard } = policy(['127.0.0.1:6379', '[::1]:*', '169.254.*:*', '127.0.0.*:*']);
    expect(guard.refusal('127.0.0.1', 6379)).toBeNull();
    expect(guard.refusal('::ffff:127.0.0.1', 6379)).toBeNull();
    expect(guard.refusal('127.0.0.1', 6380)).toMatch(/loopback/);
    expect(guard.refusal('127.0.0.2', 6379)).toMatch(/loopback/); // a wildcard does not spell it out
    expect(guard.refusal('::1', 1)).toBeNull();
    expect(guard.refusal('169.254.169.254', 80)).toMatch(/link-local/);
  });

  it("refuses the proxy's own listeners unless a pattern names address and port", () => {
    const own = [{ host: '127.0.0.1', port: 9901 }];
    expect(policy(['127.0.0.1:*'], own).guard.refusal('127.0.0.1', 9901)).toMatch(/own listener/);
    expect(policy(['127.0.0.1:*'], own).guard.refusal('127.0.0.1', 9902)).toBeNull();
    expect(policy(['127.0.0.1:9901'], own).guard.refusal('127.0.0.1', 9901)).toBeNull();
    // A wildcard listener answers on every interface address too.
    const wildcard = [{ host: '0.0.0.0', port: 9901 }];
    const local = Object.values(os.networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
    if (local) expect(policy(['*:*'], wildcard).guard.refusal(local.address, 9901)).toMatch(/own listener/);
    expect(policy(['*:*'], wildcard).guard.refusal('127.0.0.1', 9901)).toMatch(/own listener/);
  });

  it('resolves a name once and hands the socket only addresses it may reach', async () => {
    const lookup = (patterns: string[]) =>
      new Promise<{ error: unknown; addresses: unknown }>((resolve) =>
        policy(patterns).guard.lookupFor(8080)('localhost', { all: true }, (error, addresses) => resolve({ error, addresses })),
      );
    const refused = await lookup(['*:*']);
    expect(refused.error).toBeInstanceOf(ProxyError);
    expect((refused.error as ProxyError).code).toBe('DESTINATION_REFUSED');
    const allowed = await lookup(['*:*', '127.0.0.1:8080']);
    expect(allowed.error).toBeNull();
    expect(allowed.addresses).toEqual([{ address: '127.0.0.1', family: 4 }]);
  });
});
