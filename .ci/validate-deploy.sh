#!/usr/bin/env bash
# Checks the package and every file in deploy/ with a real tool, not by eye:
#   npm pack            the tarball holds dist/, config/, deploy/, LICENSE, no tests, no source maps
#   promtool            alert rules, the dashboard's queries as PromQL, and a live /metrics
#   check-deploy-metrics.mjs  every metric the dashboard and rules query is exported
#   keepalive-proxy check     the config embedded in the ConfigMap
#   systemd-analyze verify    the unit, with ExecStart pointed at this checkout's dist/main.js
#   kubernetes-models   the manifests against the Kubernetes and Prometheus Operator schemas,
#                       strictly (an unknown field anywhere fails, as kubectl --validate=strict),
#                       and the break test: every field misspelled in turn must fail
# Needs dist/ (npm run build). Installs promtool (Debian "prometheus") when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  echo "validate-deploy: installing prometheus (promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

work=$(mktemp -d)
proxy_pid=
cleanup() {
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== npm pack"
npm pack --dry-run --json --ignore-scripts > "$work/pack.json"
node -e '
  const files = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[0].files.map((f) => f.path);
  const bad = files.filter((f) => /\.map$|(^|\/)test\//.test(f) || !/^(dist|config|deploy)\/|^(LICENSE|README\.md|CHANGELOG\.md|package\.json)$/.test(f));
  const missing = ["LICENSE", "CHANGELOG.md", "dist/main.js", "dist/build-info.json", "deploy/systemd/keepalive-proxy.service"].filter((f) => !files.includes(f));
  if (bad.length || missing.length) { console.error("unexpected:", bad, "missing:", missing); process.exit(1); }
  console.log(`npm pack: ${files.length} files`);
' "$work/pack.json"

echo "== promtool check rules"
promtool check rules deploy/prometheus/alerts.yaml

echo "== live /metrics"
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
node dist/main.js --listen 127.0.0.1:0 --upstream 127.0.0.1:9 --admin "127.0.0.1:$port" --log-level warn > "$work/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/metrics" -o "$work/metrics.txt" 2>/dev/null && break
  sleep 0.1
done
[ -s "$work/metrics.txt" ] || { echo "no /metrics from the proxy"; cat "$work/proxy.log"; exit 1; }
promtool check metrics < "$work/metrics.txt"
echo "promtool check metrics: ok"

echo "== dashboard and rules query exported metrics"
node .ci/check-deploy-metrics.mjs "$work/metrics.txt" "$work/dashboard-rules.json" deploy/grafana/*.json deploy/prometheus/*.yaml
promtool check rules "$work/dashboard-rules.json"

echo "== ConfigMap's config"
node -e '
  const { parseAllDocuments } = require("yaml");
  const doc = parseAllDocuments(require("fs").readFileSync("deploy/kubernetes/configmap.yaml", "utf8"))[0].toJS();
  require("fs").writeFileSync(process.argv[1], doc.data["keepalive-proxy.yaml"]);
' "$work/configmap-config.yaml"
node dist/main.js check --config "$work/configmap-config.yaml"

echo "== systemd-analyze verify"
# verify wants ExecStart's binary to exist: the unit's /usr/local/bin/keepalive-proxy
# (npm install -g) is this checkout's dist/main.js here. Any output is a failure:
# verify exits 0 on values it ignores.
mkdir -p "$work/systemd"
sed "s#/usr/local/bin/keepalive-proxy#$PWD/dist/main.js#g" deploy/systemd/keepalive-proxy.service > "$work/systemd/keepalive-proxy.service"
verify=$(systemd-analyze verify "$work/systemd/keepalive-proxy.service" 2>&1) || { echo "$verify"; exit 1; }
[ -z "$verify" ] || { echo "$verify"; exit 1; }
echo "systemd-analyze verify: ok"

echo "== kubernetes schemas"
# Pinned, into a scratch directory: CI-only tools, not dependencies of the package.
npm install --prefix "$work/k8s" --no-save --no-audit --no-fund --loglevel=error \
  kubernetes-models@5.1.0 @kubernetes-models/prometheus-operator@6.0.0 yaml@2.9.1 typescript@5.9.3 >/dev/null
cp .ci/validate-kubernetes.mjs .ci/kubernetes-strict-fields.mjs .ci/kubernetes-misspellings.mjs "$work/k8s/"
node "$work/k8s/validate-kubernetes.mjs" deploy/kubernetes/*.yaml
node "$work/k8s/validate-kubernetes.mjs" --misspell deploy/kubernetes/*.yaml

echo "validate-deploy: all checks passed"
