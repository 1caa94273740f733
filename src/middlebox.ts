import { formatDuration } from './config/duration.js';
import type { KeepaliveSide, ProxyConfig, RouteConfig } from './config/schema.js';
import { SAFE_FRACTION, safeIntervalMs } from './discover/recommend.js';

// A route's declared middlebox (`middlebox: aws-nlb | ... | <duration>`): the idle
// timeout of the hop between the proxy and its upstream, from each vendor's documentation
// (README "Middleboxes" cites them). It lowers the defaults of kernel keepalive and of the
// heartbeat below that timeout, and `check` warns about settings that are not below it.

/** Vendor default idle timeouts, in ms. */
export const MIDDLEBOX_PRESETS: Readonly<Record<string, number>> = {
  'aws-nlb': 350_000, // AWS Network Load Balancer: TCP idle timeout 350 s
  'aws-alb': 60_000, // AWS Application Load Balancer: idle_timeout.timeout_seconds default 60 s
  'azure-lb': 240_000, // Azure Load Balancer: TCP idle timeout default 4 minutes
  'gcp-lb': 600_000, // Google Cloud passthrough load balancers and VPC firewall: 10 minutes of connection tracking
  'gcp-nat': 1_200_000, // Google Cloud NAT: tcpEstablishedIdleTimeoutSec default 1200 s
  'k8s-conntrack': 86_400_000, // kube-proxy: conntrack tcpEstablishedTimeout default 24 h
};

export interface Middlebox {
  /** The preset name, or the duration as written. */
  readonly name: string;
  readonly idleTimeoutMs: number;
}

/**
 * Kernel keepalive on upstream sockets under a middlebox: the inherited values, lowered
 * so that a dead peer is declared (idle + interval x count) within the safe fraction of
 * the timeout; the first probe then also refreshes the middlebox's entry long before it
 * expires. Whole seconds, at least 1 s each (the kernel's units).
 */
export function keepaliveBelow(middlebox: Middlebox, fallback: KeepaliveSide): KeepaliveSide {
  const budgetMs = safeIntervalMs(middlebox.idleTimeoutMs);
  const idleMs = Math.min(fallback.idleMs, wholeSeconds(budgetMs / 2));
  const intervalMs = Math.min(fallback.intervalMs, wholeSeconds((budgetMs - idleMs) / fallback.count));
  // At a few seconds the 1 s floors leave room for fewer probes than inherited.
  const count = Math.max(1, Math.min(fallback.count, Math.floor((budgetMs - idleMs) / intervalMs)));
  return { idleMs, intervalMs, count };
}

/** The heartbeat interval a declared middlebox implies. */
export function heartbeatEveryBelow(middlebox: Middlebox): number {
  return safeIntervalMs(middlebox.idleTimeoutMs);
}

function wholeSeconds(ms: number): number {
  return Math.max(1_000, Math.floor(ms / 1_000) * 1_000);
}

/**
 * What `check` warns about, per route: settings that let an idle connection outlive the
 * declared middlebox, and an idleTimeout that closes connections before any heartbeat.
 */
export function configWarnings(config: ProxyConfig): string[] {
  return config.routes.flatMap((route) => routeWarnings(route).map((text) => `route "${route.name}": ${text}`));
}

function routeWarnings(route: RouteConfig): string[] {
  const warnings: string[] = [];
  const heartbeat = route.heartbeat;
  const everyMs = heartbeat?.adaptive ? heartbeat.adaptive.minMs : heartbeat?.everyMs;
  if (route.idleTimeoutMs > 0 && everyMs !== undefined && route.idleTimeoutMs <= everyMs) {
    warnings.push(`idleTimeout ${formatDuration(route.idleTimeoutMs)} is not longer than heartbeat.every ${formatDuration(everyMs)}: the heartbeat could never fire`);
  }
  const middlebox = route.middlebox;
  if (!middlebox) return warnings;
  const safeMs = middlebox.idleTimeoutMs * SAFE_FRACTION;
  const hop = `${middlebox.name}'s idle timeout of ${formatDuration(middlebox.idleTimeoutMs)} (keep it at most ${formatDuration(safeMs)})`;
  const { idleMs, intervalMs, count } = route.keepalive.upstream;
  const detectMs = idleMs + intervalMs * count;
  if (detectMs > safeMs) {
    warnings.push(`keepalive.upstream idle + interval x count = ${formatDuration(detectMs)} is not safely below ${hop}`);
  }
  if (heartbeat && !heartbeat.adaptive && heartbeat.everyMs > safeMs) {
    warnings.push(`heartbeat.every ${formatDuration(heartbeat.everyMs)} is not safely below ${hop}`);
  }
  if (heartbeat?.adaptive && heartbeat.adaptive.maxMs > middlebox.idleTimeoutMs) {
    warnings.push(`heartbeat.max ${formatDuration(heartbeat.adaptive.maxMs)} is above ${hop}: the learner will probe past it`);
  }
  const poolIdleMs = route.warmPool ? route.warmPool.maxIdleMs : route.protocol === 'http' || route.protocol === 'http-forward' ? route.httpPool.idleTimeoutMs : 0;
  const poolKey = route.warmPool ? 'pool.maxIdle' : 'pool.idleTimeout';
  if (poolIdleMs > safeMs || (poolIdleMs === 0 && route.warmPool)) {
    warnings.push(`${poolKey} ${poolIdleMs === 0 ? 'off' : formatDuration(poolIdleMs)}: parked connections may idle past ${hop}`);
  }
  return warnings;
}
