import { readFileSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { fileURLToPath } from 'node:url';

// What this process is: the package version, the Node.js version and the git commit it
// was built from. Read once from files on disk (package.json, and dist/build-info.json
// written by scripts/write-build-info.mjs at build time); never a shell-out at runtime.
//
// Public API:
//   PACKAGE_ROOT             the directory holding package.json (a clone or the installed package)
//   buildInfo(): BuildInfo   cached; "unknown" for what cannot be read

export interface BuildInfo {
  readonly version: string;
  readonly node: string;
  readonly commit: string;
}

/** src/build-info.ts and dist/build-info.js both sit one level below the package root. */
export const PACKAGE_ROOT = resolvePath(dirname(fileURLToPath(import.meta.url)), '..');

const UNKNOWN = 'unknown';
let cached: BuildInfo | null = null;

export function buildInfo(): BuildInfo {
  cached ??= {
    version: stringField(readJson('package.json'), 'version'),
    node: process.versions.node,
    commit: stringField(readJson('dist/build-info.json'), 'commit'),
  };
  return cached;
}

function readJson(relative: string): unknown {
  try {
    return JSON.parse(readFileSync(resolvePath(PACKAGE_ROOT, relative), 'utf8'));
  } catch {
    return null;
  }
}

function stringField(value: unknown, key: string): string {
  const field = value !== null && typeof value === 'object' ? (value as Record<string, unknown>)[key] : undefined;
  return typeof field === 'string' && field !== '' ? field : UNKNOWN;
}
