// Checks that every metric the shipped dashboard and alert rules query is one a live proxy
// exports. Usage:
//   node .ci/check-deploy-metrics.mjs EXPOSITION_FILE RULES_OUT FILE...
// EXPOSITION_FILE: a scrape of /metrics. FILE: Grafana dashboards (.json) and Prometheus
// rule files (.yaml). RULES_OUT: the dashboard's queries written as a rule file, with
// Grafana's variables given values, so `promtool check rules` can parse them as PromQL.
// Exits 1 naming each unknown metric, and each of the proxy's own metrics that no dashboard
// panel or rule shows (a metric added later must reach the operator's screen or an alert;
// the process_ and nodejs_ runtime metrics are exempt).
import { readFileSync, writeFileSync } from 'node:fs';
import { parse } from 'yaml';

const [expositionFile, rulesOut, ...files] = process.argv.slice(2);
if (!expositionFile || !rulesOut || files.length === 0) {
  console.error('usage: check-deploy-metrics.mjs EXPOSITION_FILE RULES_OUT FILE...');
  process.exit(2);
}

/** Sample names a scrape can contain (each family, and a histogram's _bucket, _sum, _count) -> their family. */
function exportedNames(text) {
  const names = new Map();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.set(name, name);
    if (type === 'histogram' || type === 'summary') for (const suffix of ['_bucket', '_sum', '_count']) names.set(name + suffix, name);
  }
  return names;
}

/** The proxy's own families, not the runtime's: each must be queried somewhere. */
const RUNTIME_METRIC = /^keepalive_proxy_(process|nodejs)_/;

/** [where, PromQL] of every query in a dashboard (panels, nested rows, template variables) or a rule file. */
function queries(file) {
  const found = [];
  if (file.endsWith('.json')) {
    const dashboard = JSON.parse(readFileSync(file, 'utf8'));
    const visit = (panels) => {
      for (const panel of panels ?? []) {
        for (const target of panel.targets ?? []) if (target.expr) found.push([`${file}: panel "${panel.title}" ${target.refId}`, target.expr]);
        visit(panel.panels);
      }
    };
    visit(dashboard.panels);
    for (const variable of dashboard.templating?.list ?? []) {
      const query = typeof variable.query === 'string' ? variable.query : variable.query?.query;
      const series = variable.type === 'query' && /^label_values\((.*),\s*\w+\)$/.exec(query ?? '')?.[1];
      if (series) found.push([`${file}: variable $${variable.name}`, series]);
    }
  } else {
    for (const group of parse(readFileSync(file, 'utf8')).groups ?? []) {
      for (const rule of group.rules ?? []) found.push([`${file}: ${rule.alert ?? rule.record}`, String(rule.expr)]);
    }
  }
  return found;
}

const KEYWORDS = new Set(['and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool', 'inf', 'nan', 'atan2']);

/** Metric names in a PromQL expression: identifiers left once strings, label matchers, ranges, grouping clauses and function calls are set aside. */
function metricNames(expr) {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = [];
  for (const match of bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const rest = bare.slice(match.index + match[0].length);
    const precededByDigit = /[0-9.]$/.test(bare.slice(0, match.index));
    if (/^\s*\(/.test(rest) || KEYWORDS.has(match[0].toLowerCase()) || precededByDigit) continue;
    names.push(match[0]);
  }
  return names;
}

/** Grafana's variables given a value PromQL accepts. */
function withVariables(expr) {
  return expr.replaceAll('$__rate_interval', '5m').replaceAll('$__range', '1h').replaceAll('$__interval', '1m').replace(/\$\{?\w+\}?/g, '.*');
}

const exported = exportedNames(readFileSync(expositionFile, 'utf8'));
if (exported.size === 0) {
  console.error(`${expositionFile}: no # TYPE lines: not a scrape of /metrics`);
  process.exit(1);
}
const problems = [];
const queried = new Set();
const dashboardRules = [];
let checked = 0;
for (const file of files) {
  const found = queries(file);
  if (found.length === 0) problems.push(`${file}: no queries found`);
  for (const [where, expr] of found) {
    const names = metricNames(expr);
    if (names.length === 0) problems.push(`${where}: no metric in "${expr}"`);
    for (const name of names) {
      checked++;
      if (exported.has(name)) queried.add(exported.get(name));
      else problems.push(`${where}: ${name} is not exported by the proxy`);
    }
    if (file.endsWith('.json')) dashboardRules.push({ record: `dashboard:query:${dashboardRules.length}`, expr: withVariables(expr) });
  }
}
for (const family of new Set(exported.values())) {
  if (!RUNTIME_METRIC.test(family) && !queried.has(family)) problems.push(`${family}: exported, but no dashboard panel or alert rule queries it`);
}
writeFileSync(rulesOut, JSON.stringify({ groups: [{ name: 'dashboard-queries', rules: dashboardRules }] }, null, 2));
if (problems.length > 0) {
  for (const problem of problems) console.error(problem);
  process.exit(1);
}
console.log(`deploy metrics: ${checked} metric references in ${files.length} files, all exported`);
