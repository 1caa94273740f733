import { describe, expect, it } from 'vitest';
import { ListenerClashes, sameListenAddress } from '../../src/config/hostport.js';
import type { HostPort } from '../../src/config/schema.js';
import { closest, editDistance } from '../../src/config/suggest.js';

// The linear mechanisms of config loading (config-limits.test.ts) checked against the
// simple quadratic ones they replaced, over generated inputs.

describe('the linear mechanisms agree with the simple ones', () => {
  it('ListenerClashes finds the same earliest clash as comparing with every earlier listener', () => {
    const hosts = ['127.0.0.1', '127.0.0.2', '0.0.0.0', '::', '::1', 'LOCALHOST', 'localhost', 'fe80::1'];
    let seed = 7;
    const random = (n: number): number => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31), seed % n);
    for (let run = 0; run < 200; run++) {
      const listeners: HostPort[] = Array.from({ length: 30 }, () => ({ host: hosts[random(hosts.length)]!, port: random(4) }));
      const clashes = new ListenerClashes<number>();
      listeners.forEach((listen, index) => {
        const naive = listeners.slice(0, index).findIndex((other) => sameListenAddress(other, listen));
        expect(clashes.claim(listen, index)).toBe(naive === -1 ? undefined : naive);
      });
    }
  });

  it('editDistance is the Levenshtein distance with swaps, and closest still guesses', () => {
    const reference = (a: string, b: string): number => {
      const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
      for (let i = 1; i <= a.length; i++) {
        for (let j = 1; j <= b.length; j++) {
          d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
          if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
        }
      }
      return d[a.length]![b.length]!;
    };
    let seed = 11;
    const word = (): string => {
      const length = (seed = (seed * 69_069 + 1) % 2 ** 32) % 12;
      return Array.from({ length }, () => 'abcde'[(seed = (seed * 69_069 + 1) % 2 ** 32) % 5]).join('');
    };
    for (let i = 0; i < 2_000; i++) {
      const [a, b] = [word(), word()];
      expect(editDistance(a, b)).toBe(reference(a, b));
    }
    expect(closest('idel', ['idle', 'interval'])).toBe('idle');
    expect(closest('user_timeout', ['userTimeout'])).toBe('userTimeout');
    expect(closest('x'.repeat(100_000), ['idle', 'interval'])).toBeNull();
  });
});
