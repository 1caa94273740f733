import { readFileSync } from 'node:fs';
import type { Clock } from './clock.js';

// Stops the proxy when the npm that launched it goes away.
//
// `npx keepalive-proxy` and `npm start` run us as npm -> sh -c -> node. On SIGTERM npm
// forwards the signal to the shell only (@npmcli/run-script), the shell dies without
// passing it on, npm exits, and node would be re-parented and keep its ports; on SIGKILL
// of npm the shell even stays, so our own parent never changes. A supervisor or script
// that stops "the npx PID" must really stop the proxy, so we watch every link of the
// chain between us and npm: when any process in it gets a new parent, npm is gone.
//
// Only under npm (npm_* in the environment): a proxy started any other way and then
// orphaned on purpose (`nohup keepalive-proxy &`) keeps running, and under PID 1 or a
// container runtime (parent 0 or 1 from the start) there is nothing to watch.

/** One link of the chain: `pid` had `parent` as its parent when we started. */
interface Link {
  readonly pid: number;
  readonly parent: number;
}

/** npm's own process (its title, or its CLI script when the title is not set). */
const NPM_COMMAND = /^npm\b|\/npm-cli\.js\b|\/npx-cli\.js\b/;
/** How far up npm may be: node, the shell npm spawned, npm. */
const MAX_DEPTH = 4;

export function startedByNpm(env: NodeJS.ProcessEnv): boolean {
  return env['npm_lifecycle_event'] !== undefined || env['npm_command'] !== undefined || env['npm_execpath'] !== undefined;
}

/**
 * Calls `onGone` once, on the first clock tick after npm (or, where /proc cannot tell
 * which process is npm, our parent) went away. Returns the unsubscribe; null when there
 * is nothing to watch.
 */
export function watchLauncher(clock: Clock, onGone: () => void, env: NodeJS.ProcessEnv = process.env): (() => void) | null {
  if (!startedByNpm(env) || process.ppid <= 1) return null;
  const chain = launcherChain();
  let fired = false;
  const unsubscribe = clock.subscribe(() => {
    if (fired || chain.every(holds)) return;
    fired = true;
    unsubscribe();
    onGone();
  });
  return unsubscribe;
}

/** The links from us up to npm; just our own link when npm is not found above us. */
function launcherChain(): Link[] {
  const chain: Link[] = [{ pid: process.pid, parent: process.ppid }];
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    const { parent } = chain[chain.length - 1]!;
    if (isNpm(parent)) return chain;
    const grandparent = parentOf(parent);
    if (grandparent === null || grandparent <= 1) break;
    chain.push({ pid: parent, parent: grandparent });
  }
  return chain.slice(0, 1);
}

function holds(link: Link): boolean {
  return (link.pid === process.pid ? process.ppid : parentOf(link.pid)) === link.parent;
}

/** The parent of `pid` from /proc (field 4 of stat, after the command name in parentheses); null when gone. */
function parentOf(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const parent = Number(fields[1]);
    return Number.isInteger(parent) ? parent : null;
  } catch {
    return null;
  }
}

function isNpm(pid: number): boolean {
  try {
    return NPM_COMMAND.test(readFileSync(`/proc/${pid}/cmdline`, 'latin1').replaceAll('\0', ' '));
  } catch {
    return false;
  }
}
