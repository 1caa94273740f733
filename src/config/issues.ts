// What went wrong in a config, and where: every problem found in one pass is kept, so a
// user fixes them all at once. The text form `FILE:LINE:COL key.path: message` is an
// interface (editors jump to it; `check` prints it); flags are named instead of a place.
//
// Public API (re-exported by load.ts):
//   ConfigIssue, ConfigError (issues: ConfigIssue[]), formatIssue, formatIssues, formatPath

export type ConfigPath = readonly (string | number)[];

export interface ConfigIssue {
  /** The config file as given, or "(command line)" for flags. */
  readonly file: string;
  /** 1-based; 0 for an issue with a command-line flag. */
  readonly line: number;
  /** 1-based; 0 for an issue with a command-line flag. */
  readonly col: number;
  /** The key path, e.g. "routes[1].heartbeat.every"; "(root)" for the document itself. */
  readonly path: string;
  readonly message: string;
  /** The command-line flag the value came from ("--listen"), when it did. */
  readonly flag?: string;
}

/** "routes[1].heartbeat.every" from ['routes', 1, 'heartbeat', 'every']; "(root)" for []. */
export function formatPath(path: ConfigPath): string {
  let text = '';
  for (const segment of path) {
    text += typeof segment === 'number' ? `[${segment}]` : text === '' ? segment : `.${segment}`;
  }
  return text === '' ? '(root)' : text;
}

/** `FILE:LINE:COL key.path: message`, or `--flag: message` for a flag. */
export function formatIssue(issue: ConfigIssue): string {
  if (issue.flag) return `${issue.flag}: ${issue.message}`;
  return `${issue.file}:${issue.line}:${issue.col} ${issue.path}: ${issue.message}`;
}

/** One formatted line per issue, joined with "\n" (no trailing newline). */
export function formatIssues(issues: readonly ConfigIssue[]): string {
  return issues.map(formatIssue).join('\n');
}

/** Thrown by the loaders with every issue found; the message holds them all, formatted. */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID' as const;
  readonly issues: readonly ConfigIssue[];
  constructor(issues: readonly ConfigIssue[]) {
    const count = issues.length === 1 ? '1 error' : `${issues.length} errors`;
    super(`invalid configuration (${count}):\n${formatIssues(issues)}`);
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

/** Collects issues once each (a bad value in `defaults` is met by every route that inherits it). */
export class IssueList {
  readonly #seen = new Set<string>();
  readonly #issues: ConfigIssue[] = [];

  add(issue: ConfigIssue): void {
    const key = `${issue.file}\0${issue.line}\0${issue.col}\0${issue.flag ?? ''}\0${issue.path}\0${issue.message}`;
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    this.#issues.push(issue);
  }

  get size(): number {
    return this.#issues.length;
  }

  /** In file order (line, then column); flag issues keep the order they were found in. */
  sorted(): ConfigIssue[] {
    return [...this.#issues].sort((a, b) => a.line - b.line || a.col - b.col);
  }
}
