import net from 'node:net';

// The forward proxy's destination allowlist: the only thing between keepalive-proxy and
// an open proxy. Patterns are "host:port" as the config loader validated them:
//   "*"                  any host            "*:443"  any host, port 443
//   "*.example.com"      any name under example.com, at any depth (not example.com itself)
//   "api-*.example.com"  `*` inside a label matches within that label only
//   "10.0.0.*"           the same rule over IPv4 octets: IP literals only, never a name
//   "[::1]"              IPv6 literals match exactly
// and the port is a number or `*`. Hosts are compared after the URL parser's
// normalisation (lower case, IPv4 in dotted decimal, no trailing dot), so "0x7f.1" or
// "LOCALHOST." cannot slip past a pattern written for "127.0.0.1" or "localhost".
//
// A pattern shaped like an IP address ("10.0.0.*", "10.*", "127.0.0.1") never matches a
// name: "10.0.0.evil" is a name anyone can point anywhere. Where a name really goes is
// checked after resolution (destination-guard.ts), where `namesLiterally` lets a pattern
// that spells out an address open a loopback or link-local one on purpose.

interface Rule {
  readonly host: RegExp;
  /** null = any port. */
  readonly port: number | null;
  /** Shaped like an IP address: matches IP literals only. */
  readonly ipOnly: boolean;
  /** The address this pattern names exactly (no wildcard), canonical; else null. */
  readonly literal: string | null;
}

export class Allowlist {
  readonly #rules: Rule[];
  readonly patterns: readonly string[];

  constructor(patterns: readonly string[]) {
    this.patterns = patterns;
    this.#rules = patterns.map(parseRule);
  }

  /** Whether host:port may be reached. `host` as it appears in a URL or CONNECT authority. */
  allows(host: string, port: number): boolean {
    const normalised = normaliseHost(host);
    if (normalised === null) return false;
    const literal = net.isIP(normalised) !== 0;
    return this.#rules.some((rule) => (rule.port === null || rule.port === port) && (literal || !rule.ipOnly) && rule.host.test(normalised));
  }

  /**
   * Whether a pattern spells out this IP address (no wildcard in the host) for this port;
   * with `exactPort`, a pattern with port `*` does not count.
   */
  namesLiterally(address: string, port: number, exactPort: boolean): boolean {
    const wanted = canonicalAddress(address);
    return this.#rules.some((rule) => rule.literal === wanted && (rule.port === port || (rule.port === null && !exactPort)));
  }
}

/** An IP address as one string per address: IPv6 canonical, IPv4-mapped IPv6 as the IPv4 it maps. */
export function canonicalAddress(address: string): string {
  if (!net.isIPv6(address)) return address;
  const canonical = canonicalIPv6(address);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (!mapped) return canonical;
  const high = parseInt(mapped[1]!, 16);
  const low = parseInt(mapped[2]!, 16);
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`;
}

/** Lower case, brackets and trailing dot removed, IPv4 forms canonical; null when unparsable. */
export function normaliseHost(host: string): string | null {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (net.isIPv6(bare)) return canonicalIPv6(bare);
  try {
    // The WHATWG URL parser is what every client uses to turn "0x7f.1" into 127.0.0.1.
    const parsed = new URL(`http://${bare}/`).hostname;
    return parsed.replace(/\.$/, '');
  } catch {
    return null;
  }
}

function canonicalIPv6(address: string): string {
  return new URL(`http://[${address}]/`).hostname.slice(1, -1);
}

function parseRule(pattern: string): Rule {
  const bracketed = /^\[([^\]]+)\]:(.*)$/.exec(pattern);
  const colon = pattern.lastIndexOf(':');
  const hostPart = bracketed ? bracketed[1]! : pattern.slice(0, colon);
  const portPart = bracketed ? bracketed[2]! : pattern.slice(colon + 1);
  const port = portPart === '*' ? null : Number(portPart);
  if (bracketed) {
    const address = canonicalIPv6(hostPart);
    return { host: exact(address), port, ipOnly: true, literal: canonicalAddress(address) };
  }
  if (hostPart === '*') return { host: /^.+$/, port, ipOnly: false, literal: null };
  // "127.0.0.1", "0x7f.1", "2130706433": one address, in its canonical spelling.
  const asAddress = hostPart.includes('*') ? null : normaliseHost(hostPart);
  if (asAddress !== null && net.isIP(asAddress)) return { host: exact(asAddress), port, ipOnly: true, literal: canonicalAddress(asAddress) };
  const labels = hostPart.toLowerCase().replace(/\.$/, '').split('.');
  // Octets and wildcards only ("10.0.0.*", "10.*", "*.0.0.1"): an address pattern.
  const ipOnly = labels.every((label) => /^[0-9*]+$/.test(label)) && /[0-9]/.test(hostPart);
  let source = '';
  if (labels[0] === '*' && labels.length > 1) {
    // A leading "*." stands for one or more whole labels.
    source = '(?:[^.]+\\.)+';
    labels.shift();
  }
  // In an address pattern a trailing "*" stands for the remaining octets ("10.*" is 10/8).
  const rest = ipOnly && labels.length > 1 && labels[labels.length - 1] === '*' ? (labels.pop(), '\\.[^.]+(?:\\.[^.]+)*') : '';
  source += labels.map((label) => label.split('*').map(escapeRegExp).join('[^.]*')).join('\\.') + rest;
  return { host: new RegExp(`^${source}$`), port, ipOnly, literal: null };
}

function exact(text: string): RegExp {
  return new RegExp(`^${escapeRegExp(text)}$`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
