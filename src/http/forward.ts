import net from 'node:net';
import type { Allowlist } from './allowlist.js';
import { normaliseHost } from './allowlist.js';
import type { ClientSession } from './client-session.js';
import type { DestinationGuard } from './destination-guard.js';
import type { RequestHead } from './head-parser.js';
import { respondRaw } from './respond.js';
import { ClientWatch, dialForClient, type TunnelHost } from './tunnel.js';
import { formatHostPort } from '../config/hostport.js';

// Forward proxy mode (`protocol: http-forward`), for applications that honour
// HTTP_PROXY/HTTPS_PROXY: absolute-form requests ("GET http://host/path") go over the
// route's pool, one pool per destination; CONNECT opens a byte tunnel (TLS end to end
// between the client and the destination). Every destination must match the allowlist,
// and the address it resolves to must pass the destination guard; everything else gets
// 403: never an open proxy.

/** What decides where a forward route may go. */
export interface ForwardPolicy {
  readonly allowlist: Allowlist;
  readonly guard: DestinationGuard;
}

export interface ForwardDestination {
  readonly scheme: 'http' | 'https';
  /** Host as dialled: normalised, IPv6 without brackets. */
  readonly host: string;
  readonly port: number;
  /** origin-form target for the upstream hop. */
  readonly path: string;
  /** The Host field for the upstream hop. */
  readonly authority: string;
}

export type Resolution<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly status: number; readonly detail: string };

/** Where an absolute-form request goes, if it may go anywhere. */
export function resolveForwardRequest(url: string | undefined, policy: ForwardPolicy): Resolution<ForwardDestination> {
  let parsed: URL;
  try {
    if (!url || !/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) throw new TypeError('not absolute-form');
    parsed = new URL(url);
  } catch {
    return { ok: false, status: 400, detail: 'a forward proxy request needs an absolute URL (http://host/path)' };
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    return { ok: false, status: 400, detail: `scheme ${parsed.protocol} is not proxied` };
  }
  const scheme = parsed.protocol === 'https:' ? 'https' : 'http';
  const host = normaliseHost(parsed.hostname);
  const port = parsed.port ? Number(parsed.port) : scheme === 'https' ? 443 : 80;
  if (!host) return { ok: false, status: 400, detail: 'invalid destination host' };
  const refused = refusal(policy, host, port);
  if (refused) return { ok: false, status: 403, detail: refused };
  return { ok: true, value: { scheme, host, port, path: `${parsed.pathname}${parsed.search}`, authority: parsed.host } };
}

/**
 * Why host:port is refused before any dial: not in the allowlist, or an IP literal the
 * guard refuses (a literal is never looked up, so the dial's own check never sees it).
 */
function refusal(policy: ForwardPolicy, host: string, port: number): string | null {
  if (!policy.allowlist.allows(host, port)) return `${formatHostPort(host, port)} is not in this proxy's allowlist`;
  return net.isIP(host) ? policy.guard.refusal(host, port) : null;
}

/** "host:port" of a CONNECT request (RFC 9110 9.3.6: authority-form, the port is required). */
export function parseConnectAuthority(target: string | undefined): { host: string; port: number } | null {
  if (!target) return null;
  const bracketed = /^\[([^\]]+)\]:(\d{1,5})$/.exec(target);
  const plain = bracketed ? null : /^([^:/?#@\s[\]]+):(\d{1,5})$/.exec(target);
  const match = bracketed ?? plain;
  if (!match) return null;
  const port = Number(match[2]);
  if (port < 1 || port > 65_535) return null;
  const host = normaliseHost(match[1]!);
  return host ? { host, port } : null;
}


/** CONNECT host:port: a checked destination, a fresh upstream connection, then a tunnel. */
export function proxyConnect(host: TunnelHost, req: RequestHead, client: ClientSession, head: Buffer, policy: ForwardPolicy): void {
  const down = client.socket;
  const watch = new ClientWatch(client);
  const destination = parseConnectAuthority(req.url);
  if (!destination) {
    host.answered(400);
    respondRaw(client, 400, 'bad_request', 'CONNECT needs host:port');
    return;
  }
  const refused = refusal(policy, destination.host, destination.port);
  if (refused) {
    host.answered(403);
    host.log.info({ route: host.route, destination: formatHostPort(destination.host, destination.port), why: refused }, 'CONNECT denied');
    respondRaw(client, 403, 'forbidden', refused);
    return;
  }
  const target = { host: destination.host, port: destination.port, tls: null, lookup: policy.guard.lookupFor(destination.port) };
  dialForClient(host, client, target, 'the destination', (dialed) => {
    host.answered(200);
    down.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    const early = watch.take();
    if (head.length > 0) dialed.socket.write(head);
    if (early.length > 0) dialed.socket.write(early);
    host.startTunnel(client, dialed.socket, { kind: 'connect', tracker: null, heartbeat: null, earlyData: [] });
  });
}
