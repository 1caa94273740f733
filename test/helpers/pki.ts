import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Certificates made at test time with the openssl CLI, in a temporary directory the
// caller removes with cleanup(): a CA, a server certificate for localhost and 127.0.0.1,
// one for another name (verify-full must refuse it), one for localhost that has expired
// (its notAfter a day before its notBefore, which is now: OpenSSL 3.0's x509 has no
// -not_after), a client certificate, and a self-signed server certificate no CA vouches for.

export interface Pki {
  readonly dir: string;
  /** Absolute paths. */
  readonly ca: string;
  readonly server: { readonly cert: string; readonly key: string };
  readonly otherName: { readonly cert: string; readonly key: string };
  readonly expired: { readonly cert: string; readonly key: string };
  readonly client: { readonly cert: string; readonly key: string };
  readonly selfSigned: { readonly cert: string; readonly key: string };
  cleanup(): void;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'kp-pki-'));
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: 'pipe', timeout: 30_000 });
  };
  const signed = (name: string, subject: string, extensions: string, days = 2): { cert: string; key: string } => {
    writeFileSync(join(dir, `${name}.ext`), extensions);
    openssl('req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', String(days), '-extfile', `${name}.ext`);
    return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  };
  openssl('req', '-x509', ...EC, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=keepalive-proxy test CA');
  const server = signed('server', '/CN=localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  const otherName = signed('other', '/CN=db.other.test', 'subjectAltName=DNS:db.other.test\nextendedKeyUsage=serverAuth\n');
  const expired = signed('expired', '/CN=localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n', -1);
  const client = signed('client', '/CN=postgres', 'extendedKeyUsage=clientAuth\n');
  openssl('req', '-x509', ...EC, '-keyout', 'self.key', '-out', 'self.pem', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1');
  return {
    dir,
    ca: join(dir, 'ca.pem'),
    server,
    otherName,
    expired,
    client,
    selfSigned: { cert: join(dir, 'self.pem'), key: join(dir, 'self.key') },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
