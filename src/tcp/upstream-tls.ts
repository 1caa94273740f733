import type { RouteConfig } from '../config/schema.js';
import type { DialOptions } from '../net/dial.js';
import { startTlsFor } from '../protocols/start-tls.js';

// A TCP-family route's upstreamTls, in the dialer's terms. The modes mean what libpq's
// sslmode words mean: require encrypts without checking the certificate, verify-ca checks
// the chain to a trusted CA but not the name, verify-full checks both. As libpq does
// for sslmode=require, a route that names a CA (upstreamTls.ca) with mode require has the
// chain verified too: a CA given is a CA meant to be used. Without `ca`, verify-ca and
// verify-full trust Node's bundled Mozilla roots.

export function upstreamTlsDial(config: RouteConfig): Pick<DialOptions, 'tls' | 'startTls'> {
  const settings = config.upstreamTls;
  if (!settings) return { tls: null, startTls: null };
  const verify = settings.mode === 'verify-full' ? 'full' : settings.mode === 'verify-ca' || settings.ca ? 'chain' : 'none';
  return {
    tls: { servername: settings.servername, ca: settings.ca, cert: settings.cert, key: settings.key, verify },
    startTls: startTlsFor(config.protocol),
  };
}
