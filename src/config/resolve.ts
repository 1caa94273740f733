import { readFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { availableParallelism } from 'node:os';
import { createSecureContext } from 'node:tls';
import { resolve as resolvePath } from 'node:path';
import { KEEPALIVE_LIMITS } from '../net/sockopt.js';
import { formatDuration, MAX_DURATION_MS, parseDuration } from './duration.js';
import { formatHostPort, ListenerClashes, parseHostPort, sameListenAddress } from './hostport.js';
import { ConfigError, formatPath, IssueList, type ConfigPath } from './issues.js';
import {
  DEFAULTS,
  HTTP_FAMILY,
  MAX_WORKERS,
  TCP_FAMILY,
  type HeartbeatConfig,
  type HostPort,
  type HttpOptions,
  type HttpPoolConfig,
  type KeepaliveSide,
  type LogLevel,
  type Protocol,
  type ProxyConfig,
  type RouteConfig,
  type TlsConfig,
  type UpstreamTlsConfig,
  type ClientTlsConfig,
  UPSTREAM_TLS_MODES,
  type WarmPoolConfig,
} from './schema.js';
import { caFileProblem } from './pem.js';
import { closest } from './suggest.js';
import { heartbeatEveryBelow, keepaliveBelow, MIDDLEBOX_PRESETS, type Middlebox } from '../middlebox.js';

/** A PEM file as read: its absolute path (for messages) and its contents. */
interface PemFile {
  readonly file: string;
  readonly pem: Buffer;
}

// The one validator: a plain object (from YAML, or built from command-line flags) in,
// the resolved and frozen ProxyConfig out, or a ConfigError with every issue found.
// It knows nothing about YAML: the caller passes `locate`, which turns a key path into
// a file position (or a flag name).
//
// Inheritance: each route setting is looked up on the route, then at the same path in
// `defaults:` (a deep merge: `keepalive.client.idle` alone on a route keeps the
// inherited interval and count). A section written as `off` (heartbeat) is not merged.
// A null value counts as absent. Keys that do not apply to a route's protocol are an
// error when written on the route, and silently skipped when inherited from defaults,
// so one defaults block can serve tcp and http routes alike. A value that a route's
// protocol cannot take in a key that does apply to it (heartbeat.every: auto on an http
// route) is an error either way: inherited, it is reported at the defaults key, naming
// the route.
//
// Public API: resolveConfig(raw, { source, baseDir, locate }): ProxyConfig (throws ConfigError)

export type Where = 'key' | 'value';
export interface Place {
  readonly file: string;
  readonly line: number;
  readonly col: number;
  readonly flag?: string;
}
/** Where to report an issue with `path`: at its key or at its value (the nearest existing ancestor when absent). */
export type Locate = (path: ConfigPath, where: Where) => Place;

export interface ResolveOptions {
  /** ProxyConfig.source: the config file, or null for flags. */
  readonly source: string | null;
  /** Relative tls.ca/cert/key paths are read from here (the config file's directory). */
  readonly baseDir: string;
  readonly locate: Locate;
}

export function resolveConfig(raw: unknown, options: ResolveOptions): ProxyConfig {
  return new Resolver(options).resolve(raw);
}

// ---- the keys that exist, for unknown-key errors and their hints ----

type KeyTree = { readonly [key: string]: KeyTree | null };
const KEEPALIVE_SIDE_KEYS: KeyTree = { idle: null, interval: null, count: null };
const ROUTE_KEYS: KeyTree = {
  name: null,
  listen: null,
  upstream: null,
  protocol: null,
  keepalive: { client: KEEPALIVE_SIDE_KEYS, upstream: KEEPALIVE_SIDE_KEYS },
  userTimeout: null,
  connectTimeout: null,
  idleTimeout: null,
  maxConnections: null,
  noDelay: null,
  responseTimeout: null,
  middlebox: null,
  heartbeat: { every: null, min: null, max: null, timeout: null, jitter: null, inTransaction: null, maxIdle: null, send: null, sendHex: null, expect: null, expectHex: null },
  pool: { warm: null, maxIdle: null, maxSockets: null, idleTimeout: null, maxAge: null, maxRequests: null },
  tls: { ca: null, cert: null, key: null, servername: null, rejectUnauthorized: null },
  upstreamTls: { mode: null, ca: null, cert: null, key: null, servername: null },
  clientTls: { cert: null, key: null },
  http: {
    xForwarded: null,
    clientIdleTimeout: null,
    clientMaxRequests: null,
    maxHeaderSize: null,
    headersTimeout: null,
    bodyTimeout: null,
    responseTimeout: null,
    retry: null,
  },
  allow: null,
};
const ROOT_KEYS: KeyTree = {
  admin: { listen: null },
  log: { level: null },
  shutdownTimeout: null,
  workers: null,
  stateDir: null,
  defaults: ROUTE_KEYS,
  routes: null,
};
const unknownKeyHints = new WeakMap<KeyTree, string>();
/** "unknown key; valid keys here: ...", one string per level shared by all its unknown keys. */
function unknownKeyHint(tree: KeyTree): string {
  let hint = unknownKeyHints.get(tree);
  if (hint === undefined) {
    hint = `unknown key; valid keys here: ${Object.keys(tree).join(', ')}`;
    unknownKeyHints.set(tree, hint);
  }
  return hint;
}

/** Set on each route only: inheriting them would make every route clash. */
const PER_ROUTE_ONLY = ['name', 'listen', 'upstream'] as const;

const PROTOCOLS: readonly Protocol[] = ['tcp', 'redis', 'postgres', 'mysql', 'http', 'http-forward'];
const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error'];
const WARM_POOL_KEYS = ['warm', 'maxIdle'];
const HTTP_POOL_KEYS = ['maxSockets', 'idleTimeout', 'maxAge', 'maxRequests'];
const CUSTOM_HEARTBEAT_KEYS = ['send', 'sendHex', 'expect', 'expectHex'];
const ROUTE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Routes a config may hold: each is a listening socket. */
const MAX_ROUTES = 10_000;

// ---- value parsers: each throws RangeError with the message the user sees ----

type Parse<T> = (value: unknown) => T;

interface DurationLimits {
  /** Smallest accepted value in ms (default 0, which the keys that take it read as "off"). */
  readonly min?: number;
  readonly max?: number;
  /** TCP keepalive times are whole seconds in the kernel. */
  readonly wholeSeconds?: boolean;
}

function duration(limits: DurationLimits = {}): Parse<number> {
  return (value) => {
    const ms = parseDuration(value as string | number);
    const { min = 0, max = MAX_DURATION_MS } = limits;
    if (ms < min) throw new RangeError(min === 1 ? 'must be more than 0' : `must be at least ${formatDuration(min)}`);
    if (ms > max) throw new RangeError(`must be at most ${formatDuration(max)}`);
    if (limits.wholeSeconds && ms % 1_000 !== 0) {
      throw new RangeError(`${formatDuration(ms)}: TCP keepalive times are whole seconds`);
    }
    return ms;
  };
}

function integer(min: number, max: number): Parse<number> {
  return (value) => {
    if (typeof value !== 'number' || !Number.isInteger(value)) {
      throw new RangeError(`expected an integer from ${min} to ${max}, got ${describe(value)}`);
    }
    if (value < min || value > max) throw new RangeError(`must be from ${min} to ${max}, got ${value}`);
    return value;
  };
}

const boolean: Parse<boolean> = (value) => {
  if (typeof value !== 'boolean') throw new RangeError(`expected true or false, got ${describe(value)}`);
  return value;
};

function oneOf<T extends string>(values: readonly T[]): Parse<T> {
  return (value) => {
    if (typeof value === 'string' && (values as readonly string[]).includes(value)) return value as T;
    const guess = typeof value === 'string' ? closest(value, values) : null;
    const hint = guess ? `; did you mean "${guess}"?` : '';
    throw new RangeError(`${describe(value)} is not one of ${values.join(' | ')}${hint}`);
  };
}

const nonEmptyString: Parse<string> = (value) => {
  if (typeof value !== 'string' || value === '') throw new RangeError(`expected a non-empty string, got ${describe(value)}`);
  return value;
};

const hexBytes: Parse<Buffer> = (value) => {
  if (typeof value !== 'string') throw new RangeError(`expected a string of hex digits like "0d0a", got ${describe(value)}`);
  const digits = value.replace(/\s+/g, '');
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(digits)) {
    throw new RangeError(`invalid hex ${JSON.stringify(value)}: expected pairs of hex digits like "0d0a"`);
  }
  return Buffer.from(digits, 'hex');
};

const textBytes: Parse<Buffer> = (value) => Buffer.from(nonEmptyString(value), 'utf8');
/** An expected reply may be empty: a one-way probe that the upstream does not answer. */
const replyTextBytes: Parse<Buffer> = (value) => {
  if (typeof value !== 'string') throw new RangeError(`expected a string, got ${describe(value)}`);
  return Buffer.from(value, 'utf8');
};
const replyHexBytes: Parse<Buffer> = (value) => (value === '' ? Buffer.alloc(0) : hexBytes(value));

/** `workers:` auto (one per core this process may use, capped) or a count from 1 to MAX_WORKERS. */
function workerCount(value: unknown): number {
  if (value === 'auto') return Math.min(availableParallelism(), MAX_WORKERS);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_WORKERS) {
    throw new RangeError(`expected auto or an integer from 1 to ${MAX_WORKERS}, got ${describe(value)}`);
  }
  return value;
}
/** `middlebox:` a preset name or a duration (the hop's idle timeout). */
const middleboxValue: Parse<Middlebox> = (value) => {
  if (typeof value === 'string' && Object.hasOwn(MIDDLEBOX_PRESETS, value)) return { name: value, idleTimeoutMs: MIDDLEBOX_PRESETS[value]! };
  const presets = Object.keys(MIDDLEBOX_PRESETS);
  let ms: number;
  try {
    ms = parseDuration(value as string | number);
  } catch {
    const guess = typeof value === 'string' ? closest(value, presets) : null;
    throw new RangeError(`${describe(value)} is not one of ${presets.join(' | ')} or a duration${guess ? `; did you mean "${guess}"?` : ''}`);
  }
  // Below 3 s, kernel keepalive (whole seconds: 1 s idle + 1 s x 1 probe) cannot stay safely under it.
  if (ms < 3_000) throw new RangeError('a middlebox idle timeout must be at least 3s');
  return { name: formatDuration(ms), idleTimeoutMs: ms };
};

function describe(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return String(value);
}

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isOff(value: unknown): boolean {
  return value === false || value === 'off';
}

// ---- inherited lookups ----

interface Found {
  readonly value: unknown;
  readonly path: ConfigPath;
  /** Came from `defaults:` rather than the route itself. */
  readonly inherited: boolean;
}

type Dug = { state: 'found'; value: unknown; path: ConfigPath } | { state: 'missing' } | { state: 'blocked' };

/** Follows `keys` from `root`; a null on the way or at the end is absent, a non-mapping on the way blocks. */
function dig(root: unknown, rootPath: ConfigPath, keys: readonly string[]): Dug {
  let current = root;
  const path = [...rootPath];
  for (const key of keys) {
    if (current === null || current === undefined) return { state: 'missing' };
    if (!isMap(current)) return { state: 'blocked' };
    if (!Object.hasOwn(current, key)) return { state: 'missing' };
    current = current[key];
    path.push(key);
  }
  return current === null || current === undefined ? { state: 'missing' } : { state: 'found', value: current, path };
}

/** A route seen through its defaults: own keys first, then the same path in `defaults:`. */
class RouteView {
  readonly own: Record<string, unknown>;
  readonly path: ConfigPath;
  readonly #defaults: unknown;

  constructor(own: Record<string, unknown>, path: ConfigPath, defaults: unknown) {
    this.own = own;
    this.path = path;
    this.#defaults = defaults;
  }

  /** The route's own value only. */
  ownValue(keys: readonly string[]): Found | undefined {
    const dug = dig(this.own, this.path, keys);
    return dug.state === 'found' ? { value: dug.value, path: dug.path, inherited: false } : undefined;
  }

  /** The value in `defaults:` only. */
  inheritedValue(keys: readonly string[]): Found | undefined {
    const dug = dig(this.#defaults, ['defaults'], keys);
    return dug.state === 'found' ? { value: dug.value, path: dug.path, inherited: true } : undefined;
  }

  /** The route's value, else the inherited one (unless a non-mapping on the route blocks the way). */
  get(keys: readonly string[]): Found | undefined {
    const own = dig(this.own, this.path, keys);
    if (own.state === 'found') return { value: own.value, path: own.path, inherited: false };
    if (own.state === 'blocked') return undefined;
    return this.inheritedValue(keys);
  }
}

interface RouteContext {
  readonly view: RouteView;
  readonly protocol: Protocol;
  /** The upstream URL's scheme for http routes; null when unknown or not http. */
  readonly scheme: 'http:' | 'https:' | null;
  /**
   * Checking `defaults:` on its own (through a route with no keys), or a route whose
   * protocol is unknown: check values, skip requirements that depend on the route.
   */
  readonly virtual: boolean;
}

interface RouteIdentity {
  readonly index: number;
  readonly name: string | undefined;
  readonly listen: HostPort | undefined;
}

// ---- the resolver ----

class Resolver {
  readonly #options: ResolveOptions;
  readonly #issues = new IssueList();
  readonly #files = new Map<string, Buffer | Error>();

  constructor(options: ResolveOptions) {
    this.#options = options;
  }

  resolve(raw: unknown): ProxyConfig {
    if (raw === null || raw === undefined) {
      this.#report([], 'value', 'the configuration is empty; it needs at least a "routes:" list');
      throw new ConfigError(this.#issues.sorted());
    }
    if (!isMap(raw)) {
      this.#report([], 'value', `expected a mapping with routes:, defaults:, admin:, log:, got ${describe(raw)}`);
      throw new ConfigError(this.#issues.sorted());
    }
    this.#checkKeys(raw, ROOT_KEYS, []);
    const top = new RouteView(raw, [], undefined);

    for (const section of ['admin', 'log']) this.#section(top, [section]);
    const adminListen = this.#adminListen(top);
    const level = this.#read(top, ['log', 'level'], oneOf(LOG_LEVELS), DEFAULTS.logLevel);
    const shutdownTimeoutMs = this.#read(top, ['shutdownTimeout'], duration(), DEFAULTS.shutdownTimeoutMs);
    const workers = this.#read(top, ['workers'], workerCount, DEFAULTS.workers);
    const stateDir = this.#read(top, ['stateDir'], (value) => resolvePath(this.#options.baseDir, nonEmptyString(value)), null);
    const defaults = this.#defaults(raw);
    const { routes, identities } = this.#routes(raw, defaults);
    this.#checkClashes(identities, adminListen);

    if (this.#issues.size > 0) throw new ConfigError(this.#issues.sorted());
    return deepFreeze({
      source: this.#options.source,
      admin: { listen: adminListen },
      log: { level },
      shutdownTimeoutMs,
      workers,
      stateDir,
      routes,
    });
  }

  // -- reporting --

  #report(path: ConfigPath, where: Where, message: string): void {
    this.#issues.add({ ...this.#options.locate(path, where), path: formatPath(path), message });
  }

  /** Reads one setting through `parse`; a bad value is reported and `fallback` returned. */
  #read<T>(view: RouteView, keys: readonly string[], parse: Parse<T>, fallback: T): T {
    const found = view.get(keys);
    return found ? this.#parse(found, parse, fallback) : fallback;
  }

  #parse<T>(found: Found, parse: Parse<T>, fallback: T): T {
    try {
      return parse(found.value);
    } catch (error) {
      this.#report(found.path, 'value', error instanceof Error ? error.message : String(error));
      return fallback;
    }
  }

  #checkKeys(map: Record<string, unknown>, tree: KeyTree, path: ConfigPath): void {
    for (const [key, value] of Object.entries(map)) {
      if (!Object.hasOwn(tree, key)) {
        // Against the known keys only (a small fixed set), never the other unknown ones.
        const guess = closest(key, Object.keys(tree));
        this.#report([...path, key], 'key', guess ? `unknown key; did you mean "${guess}"?` : unknownKeyHint(tree));
        continue;
      }
      const subtree = tree[key];
      if (subtree && isMap(value)) this.#checkKeys(value, subtree, [...path, key]);
    }
  }

  /**
   * The state of a section (a mapping) seen through inheritance. A section that is not
   * a mapping is reported; `off` (or false) is allowed where `offAllowed`.
   */
  #section(view: RouteView, keys: readonly string[], offAllowed = false): { state: 'absent' | 'off' | 'bad' } | { state: 'map'; found: Found } {
    const found = view.get(keys);
    if (!found) return { state: 'absent' };
    if (isMap(found.value)) return { state: 'map', found };
    if (offAllowed && isOff(found.value)) return { state: 'off' };
    const expected = offAllowed ? 'a mapping or off' : 'a mapping';
    this.#report(found.path, 'value', `expected ${expected}, got ${describe(found.value)}`);
    return { state: 'bad' };
  }

  // -- top level --

  #adminListen(top: RouteView): HostPort | null {
    const found = top.get(['admin', 'listen']);
    if (!found) return { ...DEFAULTS.adminListen };
    if (isOff(found.value)) return null;
    return this.#parse(
      found,
      (value) => {
        try {
          return parseHostPort(value, { allowPortZero: true });
        } catch (error) {
          throw new RangeError(`${(error as Error).message} (or off to disable the admin listener)`);
        }
      },
      { ...DEFAULTS.adminListen },
    );
  }

  #defaults(raw: Record<string, unknown>): Record<string, unknown> | undefined {
    const value = raw['defaults'];
    if (value === undefined || value === null) return undefined;
    if (!isMap(value)) {
      this.#report(['defaults'], 'value', `expected a mapping of route settings, got ${describe(value)}`);
      return undefined;
    }
    for (const key of PER_ROUTE_ONLY) {
      if (Object.hasOwn(value, key)) {
        this.#report(['defaults', key], 'key', `cannot be inherited; set ${key} on each route`);
      }
    }
    // Check every inherited value once on its own, even those no current route reads.
    const view = new RouteView({}, ['defaults'], value);
    this.#read(view, ['protocol'], oneOf(PROTOCOLS), DEFAULTS.protocol);
    for (const [protocol, scheme] of [
      ['tcp', null],
      ['http', 'https:'],
      ['http-forward', null],
    ] as const) {
      this.#settings({ view, protocol, scheme, virtual: true });
    }
    return value;
  }

  #routes(raw: Record<string, unknown>, defaults: unknown): { routes: RouteConfig[]; identities: RouteIdentity[] } {
    const routes: RouteConfig[] = [];
    const identities: RouteIdentity[] = [];
    const list = raw['routes'];
    if (list === undefined || list === null) {
      this.#report(['routes'], 'key', 'required key is missing: a list of routes (listen -> upstream)');
      return { routes, identities };
    }
    if (!Array.isArray(list)) {
      this.#report(['routes'], 'value', `expected a list of routes (each item starting with "- name:"), got ${describe(list)}`);
      return { routes, identities };
    }
    if (list.length === 0) {
      this.#report(['routes'], 'value', 'needs at least one route');
      return { routes, identities };
    }
    if (list.length > MAX_ROUTES) {
      // Not resolved one by one: each costs a few KB, and this many is a generated mistake.
      this.#report(['routes'], 'value', `${list.length} routes; at most ${MAX_ROUTES} (each is a listener)`);
      return { routes, identities };
    }
    list.forEach((item: unknown, index) => {
      const path = ['routes', index];
      if (!isMap(item)) {
        this.#report(path, 'value', `expected a mapping with name, listen and upstream, got ${describe(item)}`);
        return;
      }
      this.#checkKeys(item, ROUTE_KEYS, path);
      const { route, identity } = this.#route(new RouteView(item, path, defaults), index);
      routes.push(route);
      identities.push(identity);
    });
    return { routes, identities };
  }

  // -- one route --

  #route(view: RouteView, index: number): { route: RouteConfig; identity: RouteIdentity } {
    const protocolFound = view.get(['protocol']);
    let protocol = DEFAULTS.protocol;
    let protocolKnown = true;
    if (protocolFound) {
      const parsed = this.#parse<Protocol | null>(protocolFound, oneOf(PROTOCOLS), null);
      protocolKnown = parsed !== null;
      protocol = parsed ?? DEFAULTS.protocol;
    }
    const name = this.#required(view, 'name', 'the route name (used in logs and metric labels)', routeName);
    const listen = this.#required(view, 'listen', 'the address to accept clients on, e.g. "127.0.0.1:15432"', (value) =>
      parseHostPort(value, { allowPortZero: true }),
    );
    const { upstream, upstreamUrl } = protocolKnown ? this.#upstream(view, protocol) : { upstream: null, upstreamUrl: null };
    const scheme = upstreamUrl ? (upstreamUrl.protocol as 'http:' | 'https:') : null;
    const context: RouteContext = { view, protocol, scheme, virtual: !protocolKnown };
    if (protocolKnown) this.#checkApplicable(context, upstreamUrl !== null || protocol !== 'http');
    const settings = this.#settings(context);
    return {
      route: {
        name: name ?? `routes[${index}]`,
        protocol,
        listen: listen ?? { host: '127.0.0.1', port: 0 },
        upstream,
        upstreamUrl,
        ...settings,
      },
      identity: { index, name, listen },
    };
  }

  /** A per-route key (never inherited); reported when missing. */
  #required<T>(view: RouteView, key: string, what: string, parse: Parse<T>): T | undefined {
    const found = view.ownValue([key]);
    if (!found) {
      const present = Object.hasOwn(view.own, key);
      this.#report([...view.path, key], 'key', present ? `is empty; expected ${what}` : `required key is missing: ${what}`);
      return undefined;
    }
    return this.#parse<T | undefined>(found, parse, undefined);
  }

  #upstream(view: RouteView, protocol: Protocol): { upstream: HostPort | null; upstreamUrl: URL | null } {
    const none = { upstream: null, upstreamUrl: null };
    if (protocol === 'http-forward') return none; // each request names its destination
    if (protocol === 'http') {
      const url = this.#required(view, 'upstream', 'the upstream URL, e.g. "http://127.0.0.1:8080"', upstreamUrl);
      if (!url) return none;
      const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
      const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
      return { upstream: { host, port }, upstreamUrl: url };
    }
    const upstream = this.#required(view, 'upstream', 'the upstream "host:port" to forward to', (value) => {
      if (typeof value === 'string' && /^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
        throw new RangeError(`a URL upstream is for protocol http (this route is protocol ${protocol}); write "host:port"`);
      }
      return parseHostPort(value);
    });
    return { upstream: upstream ?? null, upstreamUrl: null };
  }

  /** Keys written on the route that its protocol cannot use (inherited ones are skipped quietly). */
  #checkApplicable({ view, protocol, scheme }: RouteContext, upstreamKnown: boolean): void {
    const own = view.own;
    const notFor = `does not apply to protocol ${protocol}`;
    const tcpFamily = TCP_FAMILY.includes(protocol);
    const pool = own['pool'];
    if (isMap(pool)) {
      for (const key of Object.keys(pool)) {
        if (WARM_POOL_KEYS.includes(key) && !tcpFamily) {
          this.#report([...view.path, 'pool', key], 'key', `${notFor}: pool.${key} is for tcp, redis, postgres and mysql routes`);
        }
        if (HTTP_POOL_KEYS.includes(key) && tcpFamily) {
          this.#report([...view.path, 'pool', key], 'key', `${notFor}: pool.${key} is for http and http-forward routes`);
        }
      }
    }
    const heartbeat = own['heartbeat'];
    if (isMap(heartbeat) && protocol !== 'tcp') {
      const own = tcpFamily ? `${protocol} has its own heartbeat` : 'http routes send WebSocket pings';
      for (const key of Object.keys(heartbeat)) {
        if (CUSTOM_HEARTBEAT_KEYS.includes(key)) {
          this.#report([...view.path, 'heartbeat', key], 'key', `${notFor}: custom heartbeat bytes are for protocol tcp (${own})`);
        }
      }
    }
    if (Object.hasOwn(own, 'responseTimeout') && !tcpFamily) {
      this.#report([...view.path, 'responseTimeout'], 'key', `${notFor}: http routes take http.responseTimeout`);
    }
    if (Object.hasOwn(own, 'http') && tcpFamily) {
      this.#report([...view.path, 'http'], 'key', `${notFor}: the http section is for http and http-forward routes`);
    }
    if (Object.hasOwn(own, 'allow') && protocol !== 'http-forward') {
      this.#report([...view.path, 'allow'], 'key', `${notFor}: allow is for http-forward routes`);
    }
    if (Object.hasOwn(own, 'upstream') && protocol === 'http-forward') {
      this.#report(
        [...view.path, 'upstream'],
        'key',
        `${notFor}: each request names its destination (limit them with allow)`,
      );
    }
    if (Object.hasOwn(own, 'tls') && upstreamKnown && scheme !== 'https:') {
      const why = protocol === 'http' ? 'tls is for an https:// upstream' : `${notFor}: tls is for http routes with an https:// upstream`;
      this.#report([...view.path, 'tls'], 'key', why);
    }
    for (const key of ['upstreamTls', 'clientTls']) {
      if (Object.hasOwn(own, key) && !tcpFamily) {
        const instead = protocol === 'http' ? ' (an https:// upstream with tls: is the http equivalent)' : '';
        this.#report([...view.path, key], 'key', `${notFor}: ${key} is for tcp, redis, postgres and mysql routes${instead}`);
      }
    }
  }

  /** Every inheritable setting of a route, for its protocol. */
  #settings(context: RouteContext): Omit<RouteConfig, 'name' | 'protocol' | 'listen' | 'upstream' | 'upstreamUrl'> {
    const { view, protocol } = context;
    const tcpFamily = TCP_FAMILY.includes(protocol);
    const httpFamily = HTTP_FAMILY.includes(protocol);
    this.#section(view, ['keepalive']);
    const middlebox = this.#read(view, ['middlebox'], middleboxValue, null);
    const upstreamTls = tcpFamily ? this.#upstreamTls(context) : null;
    return {
      keepalive: {
        client: this.#keepaliveSide(view, 'client', DEFAULTS.keepaliveClient),
        upstream: this.#keepaliveSide(view, 'upstream', middlebox ? keepaliveBelow(middlebox, DEFAULTS.keepaliveUpstream) : DEFAULTS.keepaliveUpstream),
      },
      userTimeoutMs: this.#read(view, ['userTimeout'], duration({ max: KEEPALIVE_LIMITS.maxUserTimeoutMs }), DEFAULTS.userTimeoutMs),
      connectTimeoutMs: this.#read(view, ['connectTimeout'], duration({ min: 1 }), DEFAULTS.connectTimeoutMs),
      idleTimeoutMs: this.#read(view, ['idleTimeout'], duration(), DEFAULTS.idleTimeoutMs),
      maxConnections: this.#read(view, ['maxConnections'], integer(0, 1_000_000), DEFAULTS.maxConnections),
      noDelay: this.#read(view, ['noDelay'], boolean, DEFAULTS.noDelay),
      heartbeat: this.#heartbeat(context) ?? this.#middleboxHeartbeat(context, middlebox),
      responseTimeoutMs: tcpFamily ? this.#read(view, ['responseTimeout'], duration(), DEFAULTS.responseTimeoutMs[protocol] ?? 0) : 0,
      warmPool: tcpFamily ? this.#warmPool(view) : null,
      // Copies: the result is frozen, and DEFAULTS is not ours to freeze.
      httpPool: httpFamily ? this.#httpPool(view) : { ...DEFAULTS.httpPool },
      tls: context.scheme === 'https:' ? this.#tls(view) : null,
      upstreamTls,
      clientTls: tcpFamily ? this.#clientTls(context, upstreamTls) : null,
      http: httpFamily ? this.#httpOptions(view) : { ...DEFAULTS.http },
      allow: protocol === 'http-forward' ? this.#allow(context) : [],
      middlebox,
    };
  }

  /** A declared middlebox gives a protocol with a built-in heartbeat one below its timeout, unless heartbeat is written. */
  #middleboxHeartbeat({ view, protocol }: RouteContext, middlebox: Middlebox | null): HeartbeatConfig | null {
    if (!middlebox || view.get(['heartbeat']) !== undefined || !['redis', 'postgres', 'mysql'].includes(protocol)) return null;
    const everyMs = heartbeatEveryBelow(middlebox);
    return {
      everyMs,
      timeoutMs: Math.min(DEFAULTS.middleboxHeartbeatTimeoutMs, everyMs),
      jitter: DEFAULTS.heartbeatJitter,
      inTransaction: DEFAULTS.heartbeatInTransaction,
      maxIdleMs: DEFAULTS.heartbeatMaxIdleMs,
    };
  }

  #keepaliveSide(view: RouteView, side: 'client' | 'upstream', fallback: KeepaliveSide): KeepaliveSide {
    this.#section(view, ['keepalive', side]);
    const seconds = (max: number): Parse<number> => duration({ min: 1_000, max: max * 1_000, wholeSeconds: true });
    return {
      idleMs: this.#read(view, ['keepalive', side, 'idle'], seconds(KEEPALIVE_LIMITS.maxIdleSeconds), fallback.idleMs),
      intervalMs: this.#read(view, ['keepalive', side, 'interval'], seconds(KEEPALIVE_LIMITS.maxIntervalSeconds), fallback.intervalMs),
      count: this.#read(view, ['keepalive', side, 'count'], integer(1, KEEPALIVE_LIMITS.maxCount), fallback.count),
    };
  }

  #heartbeat({ view, protocol, virtual }: RouteContext): HeartbeatConfig | null {
    const section = this.#section(view, ['heartbeat'], true);
    if (section.state !== 'map') return null;
    const sectionPath = section.found.path;
    const everyFound = view.get(['heartbeat', 'every']);
    if (everyFound?.value === 'auto' && HTTP_FAMILY.includes(protocol)) {
      // The learner's canaries probe with the upstream's own protocol (redis, postgres, mysql, tcp bytes); an
      // http route's heartbeat is a WebSocket ping inside a live tunnel, with nothing to learn it with.
      // Inherited, it is refused too (at the defaults key, naming the route): a heartbeat does apply to
      // an http route, so skipping it would quietly drop the pings the user asked for.
      if (!everyFound.inherited) {
        this.#report(everyFound.path, 'value', 'every: auto is for tcp, redis, postgres and mysql routes; an http route takes a duration for its WebSocket pings (e.g. "20s")');
      } else if (!virtual) {
        const route = this.#describeRoute(view);
        this.#report(everyFound.path, 'value', `${route} is protocol ${protocol} and inherits every: auto, which is for tcp, redis, postgres and mysql routes; give it a duration (e.g. "20s") or heartbeat: off`);
      }
      return null;
    }
    const adaptive = everyFound?.value === 'auto' ? this.#adaptiveBounds(view) : undefined;
    const everyMs = adaptive ? adaptive.minMs : everyFound && adaptive === undefined ? this.#parse(everyFound, duration(), null) : null;
    if (adaptive === undefined) for (const key of ['min', 'max']) this.#onlyWithAuto(view, key);
    if (!everyFound && !virtual) {
      this.#report([...sectionPath, 'every'], 'key', 'required key is missing: how long a connection stays silent before a heartbeat (e.g. "20s"), or 0 for none');
    }
    const timeoutFound = view.get(['heartbeat', 'timeout']);
    const timeoutMs = timeoutFound ? this.#parse(timeoutFound, duration({ min: 1 }), null) : null;
    const jitter = this.#read(view, ['heartbeat', 'jitter'], fraction(0, 0.5), DEFAULTS.heartbeatJitter);
    const inTransaction = this.#read(view, ['heartbeat', 'inTransaction'], boolean, DEFAULTS.heartbeatInTransaction);
    const maxIdleMs = this.#read(view, ['heartbeat', 'maxIdle'], duration(), DEFAULTS.heartbeatMaxIdleMs);
    if (everyMs === 0) return null; // `every: 0` turns an inherited heartbeat off
    if (!timeoutFound && everyFound && !virtual) {
      this.#report([...sectionPath, 'timeout'], 'key', 'required key is missing: how long to wait for the heartbeat reply (e.g. "5s")');
    }
    // every and timeout are independent (as interval and timeout of HAProxy's checks):
    // every is the silence before a probe, timeout the wait for its reply.
    let send: Buffer | undefined;
    let expect: Buffer | undefined;
    if (protocol === 'tcp') {
      const sendBytes = this.#customBytes(view, 'send', 'sendHex');
      const expectBytes = this.#customBytes(view, 'expect', 'expectHex', true);
      if (sendBytes === 'invalid' || expectBytes === 'invalid') return null; // already reported
      send = sendBytes;
      expect = expectBytes;
      if (!send && expect) {
        const at = view.get(['heartbeat', 'expect']) ?? view.get(['heartbeat', 'expectHex'])!;
        this.#report(at.path, 'key', 'needs heartbeat.send (or sendHex): the probe whose reply this is');
        return null;
      }
      // send without expect is a one-way probe (as HAProxy's tcp-check send without
      // expect): it feeds payload-counting middleboxes but proves nothing; the route
      // logs a warning at start (tcp/route.ts).
      if (send && !expect) expect = Buffer.alloc(0);
      if (!send) {
        // An inherited heartbeat simply does not apply to a plain tcp route; one written on it must say what to send.
        if (!virtual && view.ownValue(['heartbeat'])) {
          this.#report(
            sectionPath,
            'value',
            'protocol tcp has no built-in heartbeat: give heartbeat.send (or sendHex) and expect (or expectHex), or use protocol redis, postgres or mysql',
          );
        }
        return null;
      }
    }
    if (everyMs === null || timeoutMs === null) return null;
    return { everyMs, timeoutMs, jitter, inTransaction, maxIdleMs, ...(adaptive ? { adaptive } : {}), ...(send ? { send } : {}), ...(expect !== undefined ? { expect } : {}) };
  }

  /** heartbeat.min and max of `every: auto`: min < max; null when invalid (reported). */
  #adaptiveBounds(view: RouteView): { minMs: number; maxMs: number } | null {
    const fallback = DEFAULTS.adaptiveHeartbeat;
    const minMs = this.#read(view, ['heartbeat', 'min'], duration({ min: 1_000 }), fallback.minMs);
    const maxMs = this.#read(view, ['heartbeat', 'max'], duration({ min: 1_000 }), Math.max(fallback.maxMs, minMs * 2));
    if (minMs >= maxMs) {
      const at = view.get(['heartbeat', 'max']) ?? view.get(['heartbeat', 'min']) ?? view.get(['heartbeat', 'every'])!;
      this.#report(at.path, 'value', `heartbeat.max (${formatDuration(maxMs)}) must be longer than heartbeat.min (${formatDuration(minMs)})`);
      return null;
    }
    return { minMs, maxMs };
  }

  /** `route "api" (routes[1] at FILE:LINE:COL)`, for an issue reported elsewhere (at an inherited key). */
  #describeRoute(view: RouteView): string {
    const { file, line, col } = this.#options.locate(view.path, 'key');
    const name = view.ownValue(['name']);
    const named = typeof name?.value === 'string' ? `route ${JSON.stringify(name.value)} ` : 'route ';
    return `${named}(${formatPath(view.path)} at ${file}:${line}:${col})`;
  }

  /** heartbeat.min/max written on a route whose every is not auto. */
  #onlyWithAuto(view: RouteView, key: string): void {
    const found = view.ownValue(['heartbeat', key]);
    if (found) this.#report(found.path, 'key', `heartbeat.${key} is for every: auto (the bounds of the learned interval)`);
  }

  /** heartbeat.send/sendHex (or expect/expectHex) from the first level that has either; both at one level is an error. */
  #customBytes(view: RouteView, textKey: string, hexKey: string, reply = false): Buffer | 'invalid' | undefined {
    for (const level of [view.ownValue(['heartbeat']), view.inheritedValue(['heartbeat'])]) {
      if (!level || !isMap(level.value)) continue;
      const hasText = Object.hasOwn(level.value, textKey) && level.value[textKey] !== null;
      const hasHex = Object.hasOwn(level.value, hexKey) && level.value[hexKey] !== null;
      if (hasText && hasHex) {
        this.#report([...level.path, hexKey], 'key', `give heartbeat.${textKey} or heartbeat.${hexKey}, not both`);
        return 'invalid';
      }
      const key = hasText ? textKey : hasHex ? hexKey : null;
      if (key === null) continue;
      const found = { ...level, value: level.value[key], path: [...level.path, key] };
      const parse = reply ? (hasText ? replyTextBytes : replyHexBytes) : hasText ? textBytes : hexBytes;
      return this.#parse<Buffer | 'invalid'>(found, parse, 'invalid');
    }
    return undefined;
  }

  #warmPool(view: RouteView): WarmPoolConfig | null {
    this.#section(view, ['pool']);
    const warm = this.#read(view, ['pool', 'warm'], integer(0, 10_000), DEFAULTS.warmPool.warm);
    const maxIdleMs = this.#read(view, ['pool', 'maxIdle'], duration(), DEFAULTS.warmPool.maxIdleMs);
    return warm > 0 ? { warm, maxIdleMs } : null;
  }

  #httpPool(view: RouteView): HttpPoolConfig {
    this.#section(view, ['pool']);
    const fallback = DEFAULTS.httpPool;
    return {
      maxSockets: this.#read(view, ['pool', 'maxSockets'], integer(0, 65_535), fallback.maxSockets),
      idleTimeoutMs: this.#read(view, ['pool', 'idleTimeout'], duration(), fallback.idleTimeoutMs),
      maxAgeMs: this.#read(view, ['pool', 'maxAge'], duration(), fallback.maxAgeMs),
      maxRequests: this.#read(view, ['pool', 'maxRequests'], integer(0, 1_000_000_000), fallback.maxRequests),
    };
  }

  #tls(view: RouteView): TlsConfig {
    this.#section(view, ['tls']);
    const ca = this.#pem(view, 'tls', 'ca');
    const cert = this.#pem(view, 'tls', 'cert');
    const key = this.#pem(view, 'tls', 'key');
    this.#checkPair(view, 'tls');
    const servername = view.get(['tls', 'servername']);
    return {
      ...(ca ? { ca: ca.pem, caFile: ca.file } : {}),
      ...(cert ? { cert: cert.pem, certFile: cert.file } : {}),
      ...(key ? { key: key.pem, keyFile: key.file } : {}),
      ...(servername ? { servername: this.#parse(servername, nonEmptyString, '') } : {}),
      rejectUnauthorized: this.#read(view, ['tls', 'rejectUnauthorized'], boolean, true),
    };
  }

  /** cert and key come together (a certificate is a pair). */
  #checkPair(view: RouteView, section: string): void {
    for (const [present, missing] of [
      ['cert', 'key'],
      ['key', 'cert'],
    ] as const) {
      const found = view.get([section, present]);
      if (found && !view.get([section, missing])) {
        this.#report(found.path, 'key', `${section}.${present} needs ${section}.${missing} too (a client certificate is a pair)`);
      }
    }
  }

  /** upstreamTls: the mode (libpq's words) and the files it uses; null when off. */
  #upstreamTls({ view }: RouteContext): UpstreamTlsConfig | null {
    const section = this.#section(view, ['upstreamTls'], true);
    if (section.state !== 'map') return null;
    const mode = this.#read(view, ['upstreamTls', 'mode'], oneOf(UPSTREAM_TLS_MODES), 'off');
    const ca = this.#pem(view, 'upstreamTls', 'ca');
    const cert = this.#pem(view, 'upstreamTls', 'cert');
    const key = this.#pem(view, 'upstreamTls', 'key');
    this.#checkPair(view, 'upstreamTls');
    const servername = view.get(['upstreamTls', 'servername']);
    if (mode === 'off') return null;
    this.#checkLoads(section.found.path, { ca, cert, key });
    return {
      mode,
      ...(ca ? { ca: ca.pem, caFile: ca.file } : {}),
      ...(cert ? { cert: cert.pem, certFile: cert.file } : {}),
      ...(key ? { key: key.pem, keyFile: key.file } : {}),
      ...(servername ? { servername: this.#parse(servername, nonEmptyString, '') } : {}),
    };
  }

  /** clientTls: the certificate and key the proxy presents to its clients. */
  #clientTls({ view, protocol, virtual }: RouteContext, upstreamTls: UpstreamTlsConfig | null): ClientTlsConfig | null {
    const section = this.#section(view, ['clientTls'], true);
    if (section.state !== 'map') return null;
    const cert = this.#pem(view, 'clientTls', 'cert');
    const key = this.#pem(view, 'clientTls', 'key');
    if (!virtual) {
      for (const name of ['cert', 'key']) {
        if (!view.get(['clientTls', name])) this.#report([...section.found.path, name], 'key', `required key is missing: the proxy's ${name === 'cert' ? 'certificate' : 'private key'} (PEM file)`);
      }
      // The proxy terminates a MySQL client's TLS by passing its SSL request on to a TLS
      // upstream (src/tcp/mysql-opening.ts); in front of a plaintext server it cannot.
      if (protocol === 'mysql' && !upstreamTls) {
        this.#report(section.found.path, 'value', 'clientTls on a mysql route needs upstreamTls (mode require or stronger)');
        return null;
      }
    }
    if (!cert || !key) return null;
    this.#checkLoads(section.found.path, { cert, key });
    return { cert: cert.pem, key: key.pem, certFile: cert.file, keyFile: key.file };
  }

  /** PEM files that read but do not load (a key that is not the certificate's) fail here, at load or reload, naming the files. */
  #checkLoads(path: ConfigPath, files: { ca?: PemFile; cert?: PemFile; key?: PemFile }): void {
    if ((files.cert === undefined) !== (files.key === undefined)) return; // the pair rule already reported it
    try {
      createSecureContext({ ca: files.ca?.pem, cert: files.cert?.pem, key: files.key?.pem });
    } catch (error) {
      const named = [files.cert, files.key, files.ca].flatMap((file) => (file ? [file.file] : [])).join(', ');
      this.#report(path, 'value', `the certificate files do not load (${named}): ${(error as Error).message}`);
    }
  }

  /** A PEM file named at <section>.<key>, read now so a missing file fails at load, not at the first connection. */
  #pem(view: RouteView, section: string, key: string): PemFile | undefined {
    const found = view.get([section, key]);
    if (!found) return undefined;
    return this.#parse<PemFile | undefined>(
      found,
      (value) => {
        const file = resolvePath(this.#options.baseDir, nonEmptyString(value));
        let contents = this.#files.get(file);
        if (!contents) {
          try {
            contents = readFileSync(file);
          } catch (error) {
            contents = error as Error;
          }
          this.#files.set(file, contents);
        }
        if (contents instanceof Error) throw new RangeError(`cannot read ${file}: ${fsReason(contents)}`);
        if (!contents.includes('-----BEGIN ')) throw new RangeError(`${file} is not a PEM file (no "-----BEGIN" line)`);
        const caProblem = key === 'ca' ? caFileProblem(contents) : null;
        if (caProblem) throw new RangeError(`${file} is not a CA file: ${caProblem}`);
        return { file, pem: contents };
      },
      undefined,
    );
  }

  #httpOptions(view: RouteView): HttpOptions {
    this.#section(view, ['http']);
    const fallback = DEFAULTS.http;
    const at = (key: string): string[] => ['http', key];
    return {
      xForwarded: this.#read(view, at('xForwarded'), boolean, fallback.xForwarded),
      clientIdleTimeoutMs: this.#read(view, at('clientIdleTimeout'), duration(), fallback.clientIdleTimeoutMs),
      clientMaxRequests: this.#read(view, at('clientMaxRequests'), integer(0, 1_000_000_000), fallback.clientMaxRequests),
      maxHeaderSize: this.#read(view, at('maxHeaderSize'), integer(1_024, 1_048_576), fallback.maxHeaderSize),
      headersTimeoutMs: this.#read(view, at('headersTimeout'), duration({ min: 1 }), fallback.headersTimeoutMs),
      bodyTimeoutMs: this.#read(view, at('bodyTimeout'), duration(), fallback.bodyTimeoutMs),
      responseTimeoutMs: this.#read(view, at('responseTimeout'), duration(), fallback.responseTimeoutMs),
      retry: this.#read(view, at('retry'), boolean, fallback.retry),
    };
  }

  #allow({ view, virtual }: RouteContext): string[] {
    const found = view.get(['allow']);
    if (!found) {
      if (!virtual) {
        this.#report(
          [...view.path, 'allow'],
          'key',
          'required for protocol http-forward: a list of allowed destinations like "*.example.com:443" (everything else gets 403)',
        );
      }
      return [];
    }
    if (!Array.isArray(found.value)) {
      this.#report(found.path, 'value', `expected a list of "host:port" patterns, got ${describe(found.value)}`);
      return [];
    }
    if (found.value.length === 0) {
      this.#report(found.path, 'value', 'needs at least one "host:port" pattern (an empty list would deny everything)');
      return [];
    }
    const patterns: string[] = [];
    found.value.forEach((item: unknown, index) => {
      const pattern = this.#parse<string | null>({ ...found, value: item, path: [...found.path, index] }, allowPattern, null);
      if (pattern !== null) patterns.push(pattern);
    });
    return patterns;
  }

  // -- across routes --

  #checkClashes(identities: readonly RouteIdentity[], adminListen: HostPort | null): void {
    const names = new Map<string, number>();
    for (const { index, name } of identities) {
      if (name === undefined) continue;
      const first = names.get(name);
      if (first === undefined) names.set(name, index);
      else this.#report(['routes', index, 'name'], 'value', `duplicate route name "${name}" (also routes[${first}].name)`);
    }
    const listeners = new ListenerClashes<RouteIdentity>();
    for (const identity of identities) {
      const { index, listen } = identity;
      if (!listen) continue;
      const address = formatHostPort(listen);
      if (adminListen && sameListenAddress(listen, adminListen)) {
        this.#report(['routes', index, 'listen'], 'value', `${address} clashes with the admin listener (admin.listen ${formatHostPort(adminListen)})`);
      }
      const earlier = listeners.claim(listen, identity);
      if (earlier) {
        const owner = earlier.name ? ` of route "${earlier.name}"` : '';
        this.#report(
          ['routes', index, 'listen'],
          'value',
          `${address} clashes with routes[${earlier.index}].listen (${formatHostPort(earlier.listen!)})${owner}`,
        );
      }
    }
  }
}

// ---- small parsers used above ----

const routeName: Parse<string> = (value) => {
  const name = nonEmptyString(value);
  if (!ROUTE_NAME.test(name)) {
    throw new RangeError(`${JSON.stringify(name)}: a route name is 1 to 64 letters, digits, ".", "_" or "-" (it is a metric label)`);
  }
  return name;
};

const upstreamUrl: Parse<URL> = (value) => {
  if (typeof value !== 'string') throw new RangeError(`expected an http:// or https:// URL, got ${describe(value)}`);
  if (!value.includes('://')) throw new RangeError(`expected a URL for an http route: write "http://${value}" or "https://${value}"`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new RangeError(`${JSON.stringify(value)} is not a valid URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new RangeError(`${JSON.stringify(value)}: the upstream URL must start with http:// or https://`);
  }
  if (url.hostname === '') throw new RangeError(`${JSON.stringify(value)} has no host`);
  if (url.username || url.password) throw new RangeError(`${JSON.stringify(value)}: credentials do not belong in the upstream URL`);
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) {
    throw new RangeError(`${JSON.stringify(value)}: the upstream URL is an origin only (scheme://host:port), with no path or query`);
  }
  return url;
};

function fraction(min: number, max: number): Parse<number> {
  return (value) => {
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new RangeError(`expected a number from ${min} to ${max} (a fraction of heartbeat.every), got ${describe(value)}`);
    }
    if (value < min || value > max) throw new RangeError(`must be from ${min} to ${max}, got ${value}`);
    return value;
  };
}

const PATTERN_HOST = /^[A-Za-z0-9_.*-]+$/;

/** "host:port" with `*` wildcards in the host labels and/or as the whole port; lower-cased. */
const allowPattern: Parse<string> = (value) => {
  if (typeof value !== 'string' || value === '') {
    throw new RangeError(`expected a "host:port" pattern like "*.example.com:443", got ${describe(value)}`);
  }
  const bracketed = value.match(/^\[([^\]]+)\]:(.*)$/);
  const colon = value.lastIndexOf(':');
  const host = bracketed ? bracketed[1]! : value.slice(0, colon);
  const port = bracketed ? bracketed[2]! : value.slice(colon + 1);
  if (!bracketed && (colon === -1 || host.includes(':'))) {
    throw new RangeError(`${JSON.stringify(value)}: expected "host:port" (e.g. "*.example.com:443", "10.0.0.5:*", "[::1]:8080")`);
  }
  const hostOk = bracketed ? isIPv6(host) : host !== '' && PATTERN_HOST.test(host);
  if (!hostOk) throw new RangeError(`${JSON.stringify(value)}: "${host}" is not a host name, address or * pattern`);
  if (port !== '*' && !(/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65_535)) {
    throw new RangeError(`${JSON.stringify(value)}: the port must be 1 to 65535 or *`);
  }
  return value.toLowerCase();
};

function fsReason(error: Error): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES') return 'permission denied';
  if (code === 'EISDIR') return 'it is a directory';
  return error.message;
}

/** Freezes the plain objects and arrays of the resolved config (Buffers and URLs are left as they are). */
function deepFreeze<T>(value: T): T {
  if (typeof value !== 'object' || value === null || Buffer.isBuffer(value) || value instanceof URL) return value;
  for (const child of Object.values(value)) deepFreeze(child);
  return Object.freeze(value);
}

