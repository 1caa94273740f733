import net from 'node:net';

// The forward proxy's destination allowlist: the only thing between keepalive-proxy and
// an open proxy. Patterns are "host:port" as the config loader validated them:
//   "*"                  any host            "*:443"  any host, port 443
//   "*.example.com"      any name under example.com, at any depth (not example.com itself)
//   "api-*.example.com"  `*` inside a label matches within that label only
//   "10.0.0.*"           the same rule for IPv4 labels
//   "[::1]"              IPv6 literals match exactly
// and the port is a number or `*`. Hosts are compared after the URL parser's
// normalisation (lower case, IPv4 in dotted decimal, no trailing dot), so "0x7f.1" or
// "LOCALHOST." cannot slip past a pattern written for "127.0.0.1" or "localhost".

interface Rule {
  readonly host: RegExp;
  /** null = any port. */
  readonly port: number | null;
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
    return this.#rules.some((rule) => (rule.port === null || rule.port === port) && rule.host.test(normalised));
  }
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
  if (bracketed) return { host: exact(canonicalIPv6(hostPart)), port };
  if (hostPart === '*') return { host: /^.+$/, port };
  const labels = hostPart.toLowerCase().replace(/\.$/, '').split('.');
  let source = '';
  if (labels[0] === '*' && labels.length > 1) {
    // A leading "*." stands for one or more whole labels.
    source = '(?:[^.]+\\.)+';
    labels.shift();
  }
  source += labels.map((label) => label.split('*').map(escapeRegExp).join('[^.]*')).join('\\.');
  return { host: new RegExp(`^${source}$`), port };
}

function exact(text: string): RegExp {
  return new RegExp(`^${escapeRegExp(text)}$`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
