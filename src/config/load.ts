import { readFileSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { ConfigError, formatPath, type ConfigIssue, type ConfigPath } from './issues.js';
import { resolveConfig, type Locate, type Place } from './resolve.js';
import type { ProxyConfig } from './schema.js';

// YAML text -> the resolved, frozen ProxyConfig. The YAML is parsed keeping node ranges
// so every issue names FILE:LINE:COL and its key path; all issues are collected and
// thrown together in one ConfigError. Validation itself lives in resolve.ts and is
// shared with the command-line flags (cli.ts).
//
// Public API:
//   loadConfigFile(path, overrides?): ProxyConfig           throws ConfigError (an unreadable file too, at 1:1)
//   readConfigText(path): string                            the file's text; throws ConfigError as loadConfigFile
//   parseConfigText(text, file, overrides?): ProxyConfig    throws ConfigError; `file` names the text in issues and resolves tls paths
//   ConfigOverrides                                         --admin / --log-level given with --config
//   ConfigError, ConfigIssue, formatIssue, formatIssues     (from issues.ts)

export { ConfigError, formatIssue, formatIssues, type ConfigIssue } from './issues.js';

/** Values from command-line flags that replace the file's, reported against the flag. */
export interface ConfigOverrides {
  /** --admin: "host:port" or "off". */
  readonly admin?: string;
  /** --log-level. */
  readonly logLevel?: string;
  /** --workers: "auto" or a count. */
  readonly workers?: string | number;
}

export function loadConfigFile(path: string, overrides: ConfigOverrides = {}): ProxyConfig {
  return parseConfigText(readConfigText(path), path, overrides);
}

export function readConfigText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (error as Error).message;
    throw new ConfigError([{ file: path, line: 1, col: 1, path: '(root)', message: `cannot read the config file: ${reason}` }]);
  }
}

export function parseConfigText(text: string, file: string, overrides: ConfigOverrides = {}): ProxyConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number): { line: number; col: number } => lineCounter.linePos(offset);

  // A document that does not parse has no reliable shape: report the syntax and stop.
  const syntax = [...doc.errors, ...doc.warnings].map((error): ConfigIssue => {
    const offset = error.pos[0];
    const firstLine =
      error.code === 'MULTIPLE_DOCS'
        ? 'the file holds more than one YAML document (a second "---"); keep one'
        : (error.message.split('\n')[0] ?? error.message);
    return { file, ...at(offset), path: formatPath(pathAtOffset(doc, offset)), message: `invalid YAML: ${firstLine}` };
  });
  if (syntax.length > 0) throw new ConfigError(syntax.sort((a, b) => a.line - b.line || a.col - b.col));

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (error) {
    throw new ConfigError([{ file, line: 1, col: 1, path: '(root)', message: `invalid YAML: ${(error as Error).message}` }]);
  }

  const fileLocate = yamlLocator(doc, file, at);
  const flagged: Array<[string, string]> = [];
  if (overrides.admin !== undefined || overrides.logLevel !== undefined || overrides.workers !== undefined) {
    raw = applyOverrides(raw, overrides);
    if (overrides.admin !== undefined) flagged.push(['admin.listen', '--admin']);
    if (overrides.logLevel !== undefined) flagged.push(['log.level', '--log-level']);
    if (overrides.workers !== undefined) flagged.push(['workers', '--workers']);
  }
  const locate: Locate = (path, where) => {
    const text = formatPath(path);
    const flag = flagged.find(([prefix]) => text === prefix)?.[1];
    return flag ? { file: '(command line)', line: 0, col: 0, flag } : fileLocate(path, where);
  };
  return resolveConfig(raw, { source: resolvePath(file), baseDir: dirname(resolvePath(file)), locate });
}

function applyOverrides(raw: unknown, overrides: ConfigOverrides): unknown {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return raw; // the resolver reports the shape
  const copy: Record<string, unknown> = { ...(raw as Record<string, unknown>) };
  const section = (key: string): Record<string, unknown> => {
    const value = copy[key];
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? { ...(value as Record<string, unknown>) } : {};
  };
  if (overrides.admin !== undefined) copy['admin'] = { ...section('admin'), listen: overrides.admin };
  if (overrides.logLevel !== undefined) copy['log'] = { ...section('log'), level: overrides.logLevel };
  if (overrides.workers !== undefined) copy['workers'] = overrides.workers;
  return copy;
}

// ---- positions ----

type Located = { node: Node | null; key: Node | null; complete: boolean };

/** Follows a key path through the YAML nodes as far as it exists (aliases followed to their anchors). */
function walk(doc: Document, path: ConfigPath): Located {
  let node: Node | null = (doc.contents as Node | null) ?? null;
  let key: Node | null = null;
  for (const segment of path) {
    if (node && isAlias(node)) node = (node.resolve(doc) as Node | undefined) ?? null;
    if (node && isMap(node)) {
      const pair = node.items.find((item) => keyText(item.key) === String(segment));
      if (!pair) return { node, key, complete: false };
      key = (pair.key as Node | null) ?? null;
      node = (pair.value as Node | null) ?? null;
    } else if (node && isSeq(node) && typeof segment === 'number') {
      const item = node.items[segment] as Node | undefined;
      if (!item) return { node, key, complete: false };
      key = item;
      node = item;
    } else {
      return { node, key, complete: false };
    }
  }
  return { node, key, complete: true };
}

function keyText(key: unknown): string {
  return isScalar(key) ? String(key.value) : String(key);
}

function yamlLocator(doc: Document, file: string, at: (offset: number) => { line: number; col: number }): Locate {
  return (path, where): Place => {
    const { node, key, complete } = walk(doc, path);
    // An empty value (`listen:`) has no text of its own: point at its key.
    const emptyValue = node === null || (isScalar(node) && node.value === null);
    let target: Node | null;
    if (!complete) target = node ?? key;
    else if (where === 'key' || emptyValue) target = key ?? node;
    else target = node;
    const offset = target?.range?.[0] ?? 0;
    return { file, ...at(offset) };
  };
}

/** The key path of the deepest node containing `offset`, for syntax errors. */
function pathAtOffset(doc: Document, offset: number): ConfigPath {
  const path: Array<string | number> = [];
  const contains = (node: unknown): boolean => {
    const range = (node as Node | null)?.range;
    return !!range && range[0] <= offset && offset <= range[2];
  };
  let node: unknown = doc.contents;
  for (let depth = 0; depth < 64; depth++) {
    if (isMap(node)) {
      const pair = node.items.find((item) => contains(item.key) || contains(item.value));
      if (!pair) break;
      path.push(keyText(pair.key));
      if (!contains(pair.value)) break;
      node = pair.value;
    } else if (isSeq(node)) {
      const index = node.items.findIndex((item) => contains(item));
      if (index === -1) break;
      path.push(index);
      node = node.items[index];
    } else {
      break;
    }
  }
  return path;
}
