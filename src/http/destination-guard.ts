import dns from 'node:dns';
import net from 'node:net';
import os from 'node:os';
import { ProxyError } from '../errors.js';
import { canonicalAddress, type Allowlist } from './allowlist.js';
import { formatHostPort } from '../config/hostport.js';

// Where a forward-proxy connection really goes. The allowlist judges the name a client
// asked for; a name is whatever its owner's DNS says, so the address it resolves to is
// judged here, at the dial: the lookup below resolves once and the socket connects to
// exactly the addresses it returned, so a DNS answer that changes between the check
// and the connect (rebinding) has nothing to slip through.
//
// Refused unless an allow pattern spells out the address (e.g. "127.0.0.1:6379"):
// loopback, unspecified and link-local addresses (the cloud metadata service at
// 169.254.169.254 among them), IPv4-mapped IPv6 forms of these included; and the
// proxy's own listeners (admin and routes), which need the address and the exact port.

const SPECIAL = new net.BlockList();
SPECIAL.addSubnet('127.0.0.0', 8, 'ipv4');
SPECIAL.addSubnet('0.0.0.0', 8, 'ipv4');
SPECIAL.addSubnet('169.254.0.0', 16, 'ipv4');
SPECIAL.addAddress('::1', 'ipv6');
SPECIAL.addAddress('::', 'ipv6');
SPECIAL.addSubnet('fe80::', 10, 'ipv6');

export type OwnListeners = () => ReadonlyArray<{ readonly host: string; readonly port: number }>;

/** Told of each name whose every address was refused (one line per refused dial, never per packet). */
export type OnRefused = (fields: { destination: string; why: string }) => void;

export class DestinationGuard {
  #allowlist: Allowlist;
  readonly #own: OwnListeners;
  readonly #onRefused: OnRefused;

  constructor(allowlist: Allowlist, own: OwnListeners, onRefused: OnRefused) {
    this.#allowlist = allowlist;
    this.#own = own;
    this.#onRefused = onRefused;
  }

  /** A reload's new allowlist; dials from here on are judged by it. */
  update(allowlist: Allowlist): void {
    this.#allowlist = allowlist;
  }

  /** Why the proxy will not connect to address:port, or null when it may. */
  refusal(address: string, port: number): string | null {
    const ip = canonicalAddress(address);
    const family = net.isIPv4(ip) ? 'ipv4' : 'ipv6';
    if (this.#isOwnListener(ip, port)) {
      return this.#allowlist.namesLiterally(ip, port, true) ? null : `${formatHostPort(ip, port)} is this proxy's own listener`;
    }
    if (SPECIAL.check(ip, family)) {
      return this.#allowlist.namesLiterally(ip, port, false) ? null : `${formatHostPort(ip, port)} is a loopback, link-local or unspecified address`;
    }
    return null;
  }

  /**
   * net.connect's `lookup` for a dial to `port`: resolves the name once and hands the
   * socket only the addresses that may be reached; fails with DESTINATION_REFUSED when
   * none may.
   */
  lookupFor(port: number): net.LookupFunction {
    return (hostname, options, callback) => {
      dns.lookup(hostname, { ...options, all: true }, (error, addresses) => {
        if (error) {
          callback(error, '');
          return;
        }
        const allowed = addresses.filter((a) => this.refusal(a.address, port) === null);
        if (allowed.length === 0) {
          const why = `${hostname} resolves to ${addresses.length > 0 ? this.refusal(addresses[0]!.address, port) : 'no address'}`;
          this.#onRefused({ destination: formatHostPort(hostname, port), why });
          callback(new ProxyError('DESTINATION_REFUSED', 'downstream', why) as NodeJS.ErrnoException, '');
          return;
        }
        if (options.all) callback(null, allowed);
        else callback(null, allowed[0]!.address, allowed[0]!.family);
      });
    };
  }

  #isOwnListener(ip: string, port: number): boolean {
    return this.#own().some((listener) => {
      if (listener.port !== port) return false;
      const bound = canonicalAddress(listener.host);
      // A wildcard listener answers on loopback and on every interface address.
      if (bound === '0.0.0.0' || bound === '::') return SPECIAL.check(ip, net.isIPv4(ip) ? 'ipv4' : 'ipv6') || localAddresses().has(ip);
      return bound === ip;
    });
  }
}

function localAddresses(): Set<string> {
  return new Set(
    Object.values(os.networkInterfaces())
      .flat()
      .map((info) => canonicalAddress(info!.address.replace(/%.*$/, ''))),
  );
}
