// Build step: records the git commit the build came from in dist/build-info.json, read
// once at start-up for keepalive_proxy_build_info. Outside a git checkout of this package
// (a registry tarball, a Docker context without .git, a copy inside another repository)
// the commit is "unknown".
import { execFileSync } from 'node:child_process';
import { realpathSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = realpathSync(fileURLToPath(new URL('..', import.meta.url)));

function git(...args) {
  return execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
}

let commit = 'unknown';
try {
  const [top, head] = [git('rev-parse', '--show-toplevel'), git('rev-parse', 'HEAD')];
  if (realpathSync(top) === root && /^[0-9a-f]{40}$/.test(head)) commit = head;
} catch {
  // no git, or not a checkout
}
writeFileSync(new URL('../dist/build-info.json', import.meta.url), `${JSON.stringify({ commit })}\n`);
