// A configuration value as a string that is equal exactly when the values are: what a
// reload compares to tell a route (or a pool's settings) it left as it was from one it
// changed. Bytes (certificates, keys, heartbeat payloads) count by content, so a file
// rewritten with a new certificate is a change; a URL counts by its href.

export function configFingerprint(value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key: string, json: unknown) {
    // JSON.stringify has already applied Buffer's toJSON; the raw value is still on `this`.
    const raw = this[key];
    return raw instanceof Uint8Array ? Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('base64') : json;
  });
}
