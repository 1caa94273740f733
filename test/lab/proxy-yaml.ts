// The config every lab proxy runs with: admin on `{{admin}}` (startProxyInNs fills in a free
// address on the namespace's loopback), a log level, a short shutdown, the keepalive defaults
// the test is about, then its routes. A key left out keeps the proxy's own default, so a
// test states only what it depends on.

export interface KeepaliveYaml {
  /** Durations as the config writes them ('1s', '60s'). */
  readonly idle: string;
  readonly interval: string;
  readonly count: number;
}

/** The client side of the lab routes: slow probes, the client's own path is never in question. */
export const CLIENT_KEEPALIVE: KeepaliveYaml = { idle: '60s', interval: '10s', count: 6 };

export interface LabProxyHeader {
  readonly logLevel: 'info' | 'debug';
  readonly stateDir?: string;
  /** defaults.keepalive, per side. */
  readonly keepalive?: { readonly client?: KeepaliveYaml; readonly upstream?: KeepaliveYaml };
  /** defaults.userTimeout; '0' leaves the keepalive probe count in charge (man 7 tcp). */
  readonly userTimeout?: string;
}

export interface LabRoute {
  readonly name: string;
  readonly protocol?: string;
  /** The route listens on this port of the namespace's loopback. */
  readonly port: number;
  /** host:port, or a URL for an http route. */
  readonly upstream: string;
  /** More keys of the route, each value as YAML text, e.g. { heartbeat: '{ every: 1s, timeout: 800ms }' }. */
  readonly more?: Readonly<Record<string, string>>;
}

const keepaliveText = ({ idle, interval, count }: KeepaliveYaml): string => `{ idle: ${idle}, interval: ${interval}, count: ${count} }`;

function routeText(route: LabRoute): string {
  const keys: Array<[string, string]> = [
    ['name', route.name],
    ...(route.protocol === undefined ? [] : [['protocol', route.protocol] as [string, string]]),
    ['listen', `127.0.0.1:${route.port}`],
    ['upstream', route.upstream],
    ...Object.entries(route.more ?? {}),
  ];
  return keys.map(([key, value], index) => `${index === 0 ? '  - ' : '    '}${key}: ${value}`).join('\n');
}

export function labProxyYaml(header: LabProxyHeader, routes: readonly LabRoute[]): string {
  const lines = ['admin:', '  listen: {{admin}}', 'log:', `  level: ${header.logLevel}`, 'shutdownTimeout: 2s'];
  if (header.stateDir !== undefined) lines.push(`stateDir: ${header.stateDir}`);
  const { client, upstream } = header.keepalive ?? {};
  if (client || upstream || header.userTimeout !== undefined) lines.push('defaults:');
  if (client || upstream) lines.push('  keepalive:');
  if (client) lines.push(`    client: ${keepaliveText(client)}`);
  if (upstream) lines.push(`    upstream: ${keepaliveText(upstream)}`);
  if (header.userTimeout !== undefined) lines.push(`  userTimeout: ${header.userTimeout}`);
  lines.push('routes:', ...routes.map(routeText));
  return `${lines.join('\n')}\n`;
}
