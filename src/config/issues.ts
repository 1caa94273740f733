// What went wrong in a config, and where: every problem found in one pass is kept, so a
// user fixes them all at once. The text form `FILE:LINE:COL key.path: message` is an
// interface (editors jump to it; `check` prints it); flags are named instead of a place.
//
// A hostile file can hold a million mistakes: a ConfigError keeps the first
// MAX_REPORTED_ISSUES in file order and counts the rest, and no message or path is
// longer than MAX_ISSUE_TEXT (a 4 MiB key would otherwise be printed whole).
//
// Public API (re-exported by load.ts):
//   ConfigIssue, ConfigError (issues: ConfigIssue[], omitted), formatIssue, formatIssues,
//   reportLines, formatPath, MAX_REPORTED_ISSUES

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

/** How many issues a ConfigError keeps (and `check`, start and reload print). */
export const MAX_REPORTED_ISSUES = 50;
/** Longest message or key path kept; longer ones lose their middle. */
const MAX_ISSUE_TEXT = 240;

/** One line per kept issue, then "... and N more errors" when some were left out. */
export function reportLines(error: ConfigError): string[] {
  const lines = error.issues.map(formatIssue);
  if (error.omitted > 0) lines.push(`... and ${error.omitted} more error${error.omitted === 1 ? '' : 's'}`);
  return lines;
}

/**
 * Thrown by the loaders: the first MAX_REPORTED_ISSUES of `issues` (give them in file
 * order), plus `omitted` counted ones; the message holds the report.
 */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID' as const;
  readonly issues: readonly ConfigIssue[];
  /** Issues found but not kept. */
  readonly omitted: number;
  constructor(issues: readonly ConfigIssue[], omitted = 0) {
    const kept = issues.slice(0, MAX_REPORTED_ISSUES).map(elideIssue);
    const total = issues.length + omitted;
    super(`invalid configuration (${total === 1 ? '1 error' : `${total} errors`}):`);
    this.name = 'ConfigError';
    this.issues = kept;
    this.omitted = total - kept.length;
    this.message += `\n${reportLines(this).join('\n')}`;
  }
}

function elideIssue(issue: ConfigIssue): ConfigIssue {
  if (issue.message.length <= MAX_ISSUE_TEXT && issue.path.length <= MAX_ISSUE_TEXT) return issue;
  return { ...issue, path: elide(issue.path), message: elide(issue.message) };
}

/** Keeps both ends of a long text (a value's start, a message's hint) and says how much was cut. */
function elide(text: string): string {
  if (text.length <= MAX_ISSUE_TEXT) return text;
  const head = text.slice(0, MAX_ISSUE_TEXT / 2);
  const tail = text.slice(-MAX_ISSUE_TEXT / 4);
  return `${head}…(${text.length - head.length - tail.length} characters)…${tail}`;
}

/** Collects issues once each (a bad value in `defaults` is met by every route that inherits it). */
export class IssueList {
  /**
   * Issues by position: an issue is compared only with those at its own line and column,
   * so adding is O(1) and no key string is built per issue (a file can hold a million).
   */
  readonly #byPosition = new Map<string, ConfigIssue[]>();
  readonly #issues: ConfigIssue[] = [];

  add(issue: ConfigIssue): void {
    const position = `${issue.file}\0${issue.line}\0${issue.col}\0${issue.flag ?? ''}`;
    const here = this.#byPosition.get(position);
    if (here?.some((other) => other.path === issue.path && other.message === issue.message)) return;
    if (here) here.push(issue);
    else this.#byPosition.set(position, [issue]);
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
