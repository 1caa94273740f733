import { parseArgs } from 'node:util';
import { parseDuration } from '../config/duration.js';
import { parseHostPort } from '../config/hostport.js';
import { TCP_FAMILY, type Protocol } from '../config/schema.js';
import { canaryProbe } from './probes.js';
import type { DiscoverOptions } from './run.js';

// `keepalive-proxy discover --upstream HOST:PORT [--protocol P] [--max 30m] [--parallel N]
// [--json]` and its probe flags, parsed into DiscoverOptions or a usage error.

export const DISCOVER_HELP = `Usage: keepalive-proxy discover --upstream HOST:PORT [options]

Finds the idle timeout of the path to an upstream: sacrificial connections (kernel
keepalive off) stay silent for different durations, then each is probed; the bracket in
which idle connections start to die is narrowed in parallel.

      --upstream HOST:PORT     the server to probe (required)
      --protocol P             tcp | redis | postgres | mysql (default tcp); the probe each
                               protocol answers without a login
      --send TEXT | --send-hex HEX
                               tcp: the probe bytes (required for tcp)
      --expect TEXT | --expect-hex HEX
                               tcp: the reply awaited (default: any reply byte)
      --max D                  the longest idle tried (default 30m)
      --parallel N             idle connections at once (default 32)
      --probe-timeout D        silence after a probe that counts as a dropped flow (default 3s)
      --json                   the result as one JSON object on the last line of stdout
`;

const OPTIONS = {
  upstream: { type: 'string' },
  protocol: { type: 'string' },
  send: { type: 'string' },
  'send-hex': { type: 'string' },
  expect: { type: 'string' },
  'expect-hex': { type: 'string' },
  max: { type: 'string' },
  min: { type: 'string' },
  parallel: { type: 'string' },
  'probe-timeout': { type: 'string' },
  'connect-timeout': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

const DEFAULTS = { maxMs: 30 * 60_000, minMs: 1_000, parallel: 32, probeTimeoutMs: 3_000, connectTimeoutMs: 5_000 };
const MAX_PARALLEL = 256;

export type DiscoverCommand =
  | { readonly kind: 'discover'; readonly options: DiscoverOptions }
  | { readonly kind: 'help'; readonly text: string }
  | { readonly kind: 'error'; readonly message: string };

export function parseDiscoverCli(argv: readonly string[]): DiscoverCommand {
  try {
    const { values, positionals } = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
    if (values.help) return { kind: 'help', text: DISCOVER_HELP };
    if (positionals.length > 0) throw new Error(`unexpected argument "${positionals[0]}"`);
    if (values.upstream === undefined) throw new Error('discover needs --upstream HOST:PORT');
    const upstream = flag('--upstream', () => parseHostPort(values.upstream));
    const protocol = (values.protocol ?? 'tcp') as Protocol;
    if (!TCP_FAMILY.includes(protocol)) throw new Error(`--protocol takes ${TCP_FAMILY.join(' | ')}, not "${values.protocol}"`);
    const send = bytes('--send', values.send, values['send-hex']);
    const expect = bytes('--expect', values.expect, values['expect-hex']);
    if (protocol !== 'tcp' && (send || expect)) throw new Error(`--send and --expect are for --protocol tcp; ${protocol} has its own probe`);
    if (protocol === 'tcp' && !send) throw new Error('--protocol tcp needs --send (or --send-hex): bytes the server answers, and optionally --expect');
    const maxMs = durationFlag('--max', values.max, DEFAULTS.maxMs);
    const minMs = durationFlag('--min', values.min, Math.min(DEFAULTS.minMs, maxMs));
    if (maxMs < minMs) throw new Error(`--max must be at least --min (${values.min ?? '1s'})`);
    const parallel = values.parallel === undefined ? DEFAULTS.parallel : Number(values.parallel);
    if (!Number.isInteger(parallel) || parallel < 1 || parallel > MAX_PARALLEL) throw new Error(`--parallel takes a whole number from 1 to ${MAX_PARALLEL}, not "${values.parallel}"`);
    return {
      kind: 'discover',
      options: {
        upstream,
        protocol,
        probe: canaryProbe(protocol, { ...(send ? { send } : {}), ...(expect ? { expect } : {}) }),
        maxMs,
        minMs,
        parallel,
        probeTimeoutMs: durationFlag('--probe-timeout', values['probe-timeout'], DEFAULTS.probeTimeoutMs),
        connectTimeoutMs: durationFlag('--connect-timeout', values['connect-timeout'], DEFAULTS.connectTimeoutMs),
        json: values.json ?? false,
      },
    };
  } catch (error) {
    return { kind: 'error', message: (error as Error).message };
  }
}

function flag<T>(name: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new Error(`${name}: ${(error as Error).message}`);
  }
}

function durationFlag(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const ms = flag(name, () => parseDuration(value));
  if (ms <= 0) throw new Error(`${name} must be longer than 0`);
  return ms;
}

function bytes(name: string, text: string | undefined, hex: string | undefined): Buffer | undefined {
  if (text !== undefined && hex !== undefined) throw new Error(`give ${name} or ${name}-hex, not both`);
  if (text !== undefined) return Buffer.from(text, 'utf8');
  if (hex === undefined) return undefined;
  const clean = hex.replace(/\s+/g, '');
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new Error(`${name}-hex takes pairs of hex digits, not "${hex}"`);
  return Buffer.from(clean, 'hex');
}
