import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { CST, isAlias, isMap, isScalar, isSeq, Lexer, LineCounter, parseDocument, visit, type Document, type Node, type Pair, type YAMLMap } from 'yaml';
import { ConfigError, formatPath, MAX_REPORTED_ISSUES, type ConfigIssue, type ConfigPath } from './issues.js';
import { resolveConfig, type Locate, type Place } from './resolve.js';
import type { ProxyConfig } from './schema.js';

// YAML text -> the resolved, frozen ProxyConfig. The YAML is parsed keeping node ranges
// so every issue names FILE:LINE:COL and its key path; all issues are collected and
// thrown together in one ConfigError. Validation itself lives in resolve.ts and is
// shared with the command-line flags (cli.ts).
//
// Public API:
//   loadConfigFile(path, overrides?): ProxyConfig           throws ConfigError (an unreadable file too, at 1:1)
//   parseConfigText(text, file, overrides?): ProxyConfig    throws ConfigError; `file` names the text in issues and resolves tls paths
//   ConfigOverrides                                         --admin / --log-level / --workers given with --config
//   ConfigError, ConfigIssue, formatIssue, formatIssues,
//   reportLines                                             (from issues.ts)
//   MAX_CONFIG_BYTES, MAX_YAML_VALUES, MAX_ALIAS_EXPANSION   the limits that keep loading a hostile file bounded

export { ConfigError, formatIssue, formatIssues, reportLines, type ConfigIssue } from './issues.js';

/** Values from command-line flags that replace the file's, reported against the flag. */
export interface ConfigOverrides {
  /** --admin: "host:port" or "off". */
  readonly admin?: string;
  /** --log-level. */
  readonly logLevel?: string;
  /** --workers: "auto" or a count. */
  readonly workers?: string | number;
}

/** Largest config file accepted, checked before it is read or parsed (a config is a few KB). */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
/**
 * Values (scalars, flow collections, aliases) a file may hold. The parsed document costs
 * about 500 bytes of heap per value, so a 4 MiB file of `a: 1` lines would need more than
 * half a GB; a real config has a few hundred values, a generated one some thousands.
 */
export const MAX_YAML_VALUES = 200_000;
/** Nodes that aliases may add to the document by repeating their anchors' contents. */
export const MAX_ALIAS_EXPANSION = 10_000;

export function loadConfigFile(path: string, overrides: ConfigOverrides = {}): ProxyConfig {
  return parseConfigText(readConfigFile(path), path, overrides);
}

/** The file's text, refused past MAX_CONFIG_BYTES (a FIFO or /dev/zero too: it reads at most one byte more). */
function readConfigFile(path: string): string {
  const refuse = (message: string): never => {
    throw new ConfigError([{ file: path, line: 1, col: 1, path: '(root)', message }]);
  };
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const { size } = fstatSync(fd);
    if (size > MAX_CONFIG_BYTES) refuse(tooLarge(`${size} bytes`));
    const buffer = Buffer.allocUnsafe(MAX_CONFIG_BYTES + 1);
    let length = 0;
    for (let read = -1; read !== 0 && length < buffer.length; length += read) {
      read = readSync(fd, buffer, length, buffer.length - length, null);
    }
    if (length > MAX_CONFIG_BYTES) refuse(tooLarge('it grew while being read'));
    return buffer.toString('utf8', 0, length);
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    const code = (error as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (error as Error).message;
    return refuse(`cannot read the config file: ${reason}`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function tooLarge(size: string): string {
  return `the config file is larger than ${MAX_CONFIG_BYTES / 1024 / 1024} MiB (${size}); refusing to parse it`;
}

export function parseConfigText(text: string, file: string, overrides: ConfigOverrides = {}): ProxyConfig {
  // Characters never outnumber UTF-8 bytes, so a file within the limit always passes here.
  if (text.length > MAX_CONFIG_BYTES) {
    throw new ConfigError([{ file, line: 1, col: 1, path: '(root)', message: tooLarge(`${text.length} characters`) }]);
  }
  if (countValues(text, MAX_YAML_VALUES + 1) > MAX_YAML_VALUES) {
    const message = `invalid YAML: more than ${MAX_YAML_VALUES} values (keys, items, scalars); refusing to load it`;
    throw new ConfigError([{ file, line: 1, col: 1, path: '(root)', message }]);
  }
  const lineCounter = new LineCounter();
  // uniqueKeys is checked below in one pass: the library compares each key with every
  // earlier one of its map, quadratic in a map's size.
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: false });
  const at = (offset: number): { line: number; col: number } => lineCounter.linePos(offset);

  // A document that does not parse has no reliable shape: report the syntax and stop.
  const parseErrors = [...doc.errors, ...doc.warnings].map(
    (error): SyntaxIssue => ({
      offset: error.pos[0],
      message:
        error.code === 'MULTIPLE_DOCS'
          ? 'the file holds more than one YAML document (a second "---"); keep one'
          : (error.message.split('\n')[0] ?? error.message),
    }),
  );
  const syntax = parseErrors.length > 0 ? parseErrors : checkTree(doc);
  if (syntax.length > 0) {
    // Only the reported issues are located (each costs a walk from the root).
    const sorted = syntax.sort((a, b) => a.offset - b.offset).slice(0, MAX_REPORTED_ISSUES);
    const issues = sorted.map(
      ({ offset, message }): ConfigIssue => ({ file, ...at(offset), path: formatPath(pathAtOffset(doc, offset)), message: `invalid YAML: ${message}` }),
    );
    throw new ConfigError(issues, syntax.length - issues.length);
  }

  // Aliases are expanded already (checkTree), so the library's alias accounting never runs;
  // maxAliasCount stays as a second guard.
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

// ---- before parsing: the number of values ----

const VALUE_TOKENS = new Set(['scalar', 'single-quoted-scalar', 'double-quoted-scalar', 'block-scalar-header', 'flow-map-start', 'flow-seq-start', 'alias']);

/** Values in `text`, counting no further than `limit`: the lexer alone, which builds no nodes. */
function countValues(text: string, limit: number): number {
  let count = 0;
  for (const token of new Lexer().lex(text)) {
    if (VALUE_TOKENS.has(CST.tokenType(token) ?? '') && ++count >= limit) break;
  }
  return count;
}

// ---- one pass over the tree: duplicate keys, aliases ----

type SyntaxIssue = { offset: number; message: string };

/**
 * Duplicate keys, and aliases replaced by copies of their anchors' nodes, in one walk in
 * document order. Expanding here keeps every later step linear: the library's own alias
 * resolution scans the whole document per alias (quadratic in anchors, and seconds for a
 * nested "billion laughs" before its maxAliasCount refuses it). Copies are counted against
 * MAX_ALIAS_EXPANSION, which refuses a bomb after that many nodes.
 */
function checkTree(doc: Document): SyntaxIssue[] {
  const issues: SyntaxIssue[] = [];
  const anchors = new Map<string, Node>();
  /** Offsets of duplicate keys met already: a copied map repeats its original's. */
  const duplicates = new Set<number>();
  let budget = MAX_ALIAS_EXPANSION;
  visit(doc, {
    Node(_key, node) {
      if (isAlias(node)) {
        const target = anchors.get(node.source);
        const offset = node.range?.[0] ?? 0;
        if (!target) {
          issues.push({ offset, message: `unknown alias *${node.source} (its anchor &${node.source} must come before it)` });
          return visit.SKIP;
        }
        const [start = 0, , end = 0] = target.range ?? [];
        if (start <= offset && offset < end) {
          issues.push({ offset, message: `the alias *${node.source} is inside its own anchor, an endless value` });
          return visit.BREAK;
        }
        budget -= nodeCount(target, budget + 1);
        if (budget < 0) {
          issues.push({ offset, message: `aliases repeat more than ${MAX_ALIAS_EXPANSION} nodes (an alias bomb?); write the values out` });
          return visit.BREAK;
        }
        const copy = target.clone() as Node;
        copy.anchor = undefined;
        return copy;
      }
      if (node.anchor) anchors.set(node.anchor, node);
      if (isMap(node)) {
        const seen = new Set<unknown>();
        for (const { key } of node.items) {
          if (!isScalar(key)) continue;
          const offset = key.range?.[0] ?? 0;
          if (!seen.has(key.value)) seen.add(key.value);
          else if (!duplicates.has(offset)) {
            duplicates.add(offset);
            issues.push({ offset, message: 'Map keys must be unique' });
          }
        }
      }
      return undefined;
    },
  });
  return issues;
}

/** Nodes in `root`'s tree, counting no further than `limit`. */
function nodeCount(root: Node, limit: number): number {
  let count = 0;
  visit(root, { Node: () => (++count >= limit ? visit.BREAK : undefined) });
  return count;
}

// ---- positions ----

type Located = { node: Node | null; key: Node | null; complete: boolean };

/** Each map's pairs by key text, built on first use: locating an issue must not scan a map. */
const pairIndexes = new WeakMap<YAMLMap, Map<string, Pair>>();

function pairByKey(map: YAMLMap, key: string): Pair | undefined {
  let index = pairIndexes.get(map);
  if (!index) {
    index = new Map();
    // The first pair wins, as in the library's toJS.
    for (const pair of map.items) if (!index.has(keyText(pair.key))) index.set(keyText(pair.key), pair);
    pairIndexes.set(map, index);
  }
  return index.get(key);
}

/** Follows a key path through the YAML nodes as far as it exists (aliases are expanded already). */
function walk(doc: Document, path: ConfigPath): Located {
  let node: Node | null = (doc.contents as Node | null) ?? null;
  let key: Node | null = null;
  for (const segment of path) {
    if (node && isMap(node)) {
      const pair = pairByKey(node, String(segment));
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
