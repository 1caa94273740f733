import type { Registry } from 'prom-client';
import type { ConnectionInfo } from '../route.js';

// What the primary and its workers say to each other over the cluster IPC channel. The
// primary asks, a worker answers the request with the same id; nothing else is sent.
// Every message carries `kp` so it is never mistaken for anything else on the channel.

/**
 * A config as the primary validated it (read and parsed once, for all), as workerConfig()
 * gives it, through encodeConfig(): the channel uses structured clone ('advanced'
 * serialization), which keeps typed arrays but not Buffers or URLs.
 */
export interface EncodedConfig {
  readonly config: unknown;
}

export type Request =
  | ({ readonly kp: 'start'; readonly slot: number; readonly admin: { host: string; port: number } | null } & EncodedConfig)
  | ({ readonly kp: 'reload'; readonly admin: { host: string; port: number } | null } & EncodedConfig)
  | { readonly kp: 'metrics' }
  | { readonly kp: 'connections' }
  /** Liveness: answered at once by a worker whose event loop runs (see WorkerLink.ping). */
  | { readonly kp: 'ping' }
  | { readonly kp: 'stop' };

export type Kind = Request['kp'];

/** One registry's metrics as prom-client's aggregator takes them. */
export type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/** The answer to each kind of request when it succeeded. */
export interface Answers {
  /** The routes listening in the worker now. */
  start: { readonly listening: string[] };
  reload: { readonly listening: string[] };
  metrics: { readonly metrics: MetricsJson };
  connections: { readonly connections: ConnectionInfo[] };
  ping: Record<string, never>;
  stop: Record<string, never>;
}

export type Reply = { readonly kp: 'reply'; readonly id: number } & ({ readonly ok: true; readonly answer: unknown } | { readonly ok: false; readonly error: string });

export type Envelope = Request & { readonly id: number };

/** A worker's first message: it listens for requests from now on. */
export const HELLO = { kp: 'hello' } as const;

export function isHello(message: unknown): boolean {
  return typeof message === 'object' && message !== null && (message as { kp?: unknown }).kp === HELLO.kp;
}

const REQUEST_KINDS: ReadonlySet<string> = new Set<Kind>(['start', 'reload', 'metrics', 'connections', 'ping', 'stop']);

export function isRequest(message: unknown): message is Envelope {
  return hasId(message) && REQUEST_KINDS.has(String(message.kp));
}

export function isReply(message: unknown): message is Reply {
  return hasId(message) && message.kp === 'reply';
}

function hasId(message: unknown): message is { kp: unknown; id: number } {
  return typeof message === 'object' && message !== null && 'kp' in message && typeof (message as { id?: unknown }).id === 'number';
}
