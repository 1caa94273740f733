import { X509Certificate } from 'node:crypto';

// What OpenSSL lets pass in a CA file: Node's createSecureContext({ ca }) reads
// certificates until the first that does not parse and keeps quiet about the rest, so a
// truncated or garbled CA file would load, and every verification would then fail with
// "unknown CA" at connect time. A CA file is checked here instead, at load and reload:
// every PEM block must be a certificate that parses. Text outside the blocks (the
// comments of a CA bundle) is allowed.

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)(?:-----END \1-----|$)/g;
const CERTIFICATE_LABELS = new Set(['CERTIFICATE', 'TRUSTED CERTIFICATE']);

/** Why `pem` is not a usable CA file, or null when every block in it is a certificate. */
export function caFileProblem(pem: Buffer): string | null {
  const text = pem.toString('latin1');
  let count = 0;
  for (const match of text.matchAll(BLOCK)) {
    count++;
    const [block, label] = match;
    if (!block.endsWith(`-----END ${label}-----`)) return `block ${count} (${label}) has no END line`;
    if (!CERTIFICATE_LABELS.has(label!)) return `block ${count} is a ${label}, not a certificate`;
    if (label === 'TRUSTED CERTIFICATE') continue; // OpenSSL's own form; X509Certificate does not read it
    try {
      new X509Certificate(block);
    } catch (error) {
      return `block ${count} is not a valid certificate (${(error as Error).message})`;
    }
  }
  return count === 0 ? 'holds no certificate' : null;
}
