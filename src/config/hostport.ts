import { isIPv4, isIPv6 } from 'node:net';
import type { HostPort } from './schema.js';

// Addresses in the config: "host:port" or "[v6]:port". The host is a name (resolved at
// connect time, never here), an IPv4 address or a bracketed IPv6 address; an IPv6 host
// is returned without its brackets, as node:net wants it. ":port" alone is refused: it
// would listen on every interface, and a sidecar that does so by accident is exposed.
//
// Public API:
//   parseHostPort(value, { allowPortZero? }): HostPort   throws RangeError with a message fit for a config error
//   formatHostPort(hostPort | host, port): string         "127.0.0.1:80", "[::1]:80" (the one formatter)
//   sameListenAddress(a, b): boolean                      would binding both clash? (a wildcard host clashes with any host on its port)
//   ListenerClashes<T>: claim(address, owner)             the earliest earlier owner that clashes, in O(1) per listener

export interface HostPortOptions {
  /** Port 0 (the kernel picks a free port): for listen addresses only, useful in tests. */
  readonly allowPortZero?: boolean;
}

const HOST_LABEL = '[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?';
const HOSTNAME = new RegExp(`^${HOST_LABEL}(?:\\.${HOST_LABEL})*\\.?$`);
const EXAMPLE = '"127.0.0.1:8080"';

/** { host, port } from "host:port" or "[v6]:port". Throws RangeError. */
export function parseHostPort(value: unknown, options: HostPortOptions = {}): HostPort {
  if (typeof value === 'number') {
    throw new RangeError(`expected "host:port", not a bare port: write "127.0.0.1:${value}"`);
  }
  if (typeof value !== 'string') throw new RangeError(`expected "host:port", e.g. ${EXAMPLE}`);
  const text = value.trim();
  if (text === '') throw new RangeError(`empty address; expected "host:port", e.g. ${EXAMPLE}`);
  if (text.includes('://')) {
    throw new RangeError(`"${text}" is a URL; expected "host:port" (URLs are for http routes' upstream)`);
  }

  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close === -1) throw new RangeError(`"${text}": missing "]" after the IPv6 address`);
    host = text.slice(1, close);
    if (!isIPv6(host)) throw new RangeError(`"${text}": "${host}" is not an IPv6 address`);
    const rest = text.slice(close + 1);
    if (!rest.startsWith(':')) throw new RangeError(`"${text}": missing ":port" after "]"`);
    portText = rest.slice(1);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon === -1) throw new RangeError(`"${text}": missing port; expected "host:port", e.g. "${text}:8080"`);
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) {
      throw new RangeError(`"${text}": put an IPv6 address in brackets, e.g. "[::1]:8080"`);
    }
    if (host === '') {
      throw new RangeError(
        `"${text}": missing host; write "127.0.0.1${text}" for loopback only or "0.0.0.0${text}" for every interface`,
      );
    }
    if (!isIPv4(host) && (host.length > 253 || !HOSTNAME.test(host))) {
      throw new RangeError(`"${text}": "${host}" is not a valid host name or IP address`);
    }
  }
  return { host, port: parsePort(text, portText, options) };
}

function parsePort(text: string, portText: string, options: HostPortOptions): number {
  if (!/^\d{1,5}$/.test(portText)) {
    throw new RangeError(`"${text}": port "${portText}" is not a number from 1 to 65535`);
  }
  const port = Number(portText);
  if (port > 65_535) throw new RangeError(`"${text}": port ${port} is above 65535`);
  if (port === 0 && !options.allowPortZero) {
    throw new RangeError(`"${text}": port 0 (any free port) is only allowed for listen addresses`);
  }
  return port;
}

/**
 * "host:port", with brackets around a host that holds a colon (IPv6), so the port is
 * never ambiguous: the one formatter of addresses for logs, errors, /connections and
 * config messages. A socket's remote address may be undefined (closed): "unknown".
 */
export function formatHostPort(address: HostPort): string;
export function formatHostPort(host: string | undefined, port: number | undefined): string;
export function formatHostPort(hostOrAddress: HostPort | string | undefined, port?: number): string {
  const host = typeof hostOrAddress === 'object' ? hostOrAddress.host : hostOrAddress;
  if (typeof hostOrAddress === 'object') port = hostOrAddress.port;
  if (!host) return 'unknown';
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Whether two listeners would clash: same port (not 0) and the same host, or a wildcard
 * host that covers the other ("::" covers every address, "0.0.0.0" every IPv4 one).
 */
export function sameListenAddress(a: HostPort, b: HostPort): boolean {
  if (a.port === 0 || a.port !== b.port) return false;
  const hostA = a.host.toLowerCase();
  const hostB = b.host.toLowerCase();
  return hostA === hostB || covers(hostA, hostB) || covers(hostB, hostA);
}

function covers(wildcard: string, host: string): boolean {
  if (wildcard === '::') return true;
  return wildcard === '0.0.0.0' && !isIPv6(host);
}

/**
 * Finds clashing listeners (as sameListenAddress) without comparing each new one with
 * every earlier one: per port, the first listener on each host and the first wildcard
 * and IPv4 one are all that can be the earliest clash.
 */
export class ListenerClashes<T> {
  readonly #ports = new Map<number, PortListeners<T>>();

  /** The earliest claimed owner whose address clashes with `address`; then `owner` claims it too. */
  claim(address: HostPort, owner: T): T | undefined {
    if (address.port === 0) return undefined; // any free port: never a clash
    let port = this.#ports.get(address.port);
    if (!port) {
      port = { count: 0, hosts: new Map() };
      this.#ports.set(address.port, port);
    }
    const host = address.host.toLowerCase();
    const ipv6 = isIPv6(host);
    const candidates =
      host === '::'
        ? [port.first]
        : host === '0.0.0.0'
          ? [port.firstIPv4, port.hosts.get('::')]
          : [port.hosts.get(host), port.hosts.get('::'), ipv6 ? undefined : port.hosts.get('0.0.0.0')];
    const clash = candidates.reduce<Claim<T> | undefined>((earliest, c) => (c && (!earliest || c.order < earliest.order) ? c : earliest), undefined);

    const claim = { owner, order: port.count++ };
    port.first ??= claim;
    if (!ipv6) port.firstIPv4 ??= claim;
    if (!port.hosts.has(host)) port.hosts.set(host, claim);
    return clash?.owner;
  }
}

type Claim<T> = { readonly owner: T; readonly order: number };
interface PortListeners<T> {
  count: number;
  first?: Claim<T>;
  /** The first listener whose host is not IPv6 (a name, an IPv4 address, 0.0.0.0). */
  firstIPv4?: Claim<T>;
  /** The first listener on each host, lower-cased. */
  readonly hosts: Map<string, Claim<T>>;
}
