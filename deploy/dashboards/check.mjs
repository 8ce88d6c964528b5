// Checks the Grafana dashboards: they are what build.mjs writes; the nine boards are there with
// unique uids; every panel queries the `datasource` variable; every metric a query names is one
// edgegate exports (shared/src/metrics.rs, as Prometheus names it) or a recording rule of
// deploy/telemetry/rules.yaml; and promtool parses and evaluates every query.
// Usage: node deploy/dashboards/check.mjs PROMTOOL   (part of the test command)

import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { dashboards } from "./build.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const REQUIRED = [
  "Gateway Route Health",
  "Provider Availability Matrix",
  "Tenant SLA Board",
  "Routing Policy Outcomes",
  "Quality vs Cost Drift",
  "Deployment Change Timeline",
  "Prompt Security Control Plane",
  "Threat Pattern Monitor",
  "Gateway Security Timeline",
];
const problems = [];

// The series edgegate exports, named as the collector's Prometheus exporter names them.
const source = readFileSync(join(ROOT, "shared/src/metrics.rs"), "utf8");
const known = new Set();
for (const [, constant, name, unit] of source.matchAll(/const (\w+): Instrument =\s*Instrument \{\s*name: "([^"]+)",\s*unit: "([^"]+)"/g)) {
  const base = name.replaceAll(".", "_") + (unit === "s" ? "_seconds" : "");
  if (new RegExp(`self\\.add\\(\\s*${constant}\\b`).test(source)) known.add(`${base}_total`);
  if (new RegExp(`self\\.record\\(\\s*${constant}\\b`).test(source)) for (const s of ["_bucket", "_sum", "_count"]) known.add(base + s);
}
for (const [, name] of readFileSync(join(ROOT, "deploy/telemetry/rules.yaml"), "utf8").matchAll(/- record: (\S+)/g)) known.add(name);
if (known.size < 20) problems.push(`found only ${known.size} series in metrics.rs and rules.yaml: the parser is out of date`);

const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "offset", "and", "or", "unless", "bool", "inf", "nan"]);
function metricsOf(expr) {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, "")
    .replace(/\[[^\]]*\]/g, "")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "")
    .replace(/offset\s+\d+[smhdwy]/g, "")
    .replace(/\b\d+(\.\d+)?(e\d+)?\b/g, "");
  return [...stripped.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?/g)].filter(([, name, call]) => !call && !KEYWORDS.has(name)).map(([, name]) => name);
}
const concrete = (expr) => expr.replaceAll("$__rate_interval", "5m").replaceAll('"$tenant"', '".*"').replaceAll('"$model"', '".*"');

const built = dashboards();
const exprs = new Set();
const titles = [];
const uids = new Set();
for (const { file, json } of built) {
  const committed = (() => {
    try {
      return readFileSync(join(HERE, file), "utf8");
    } catch {
      return "";
    }
  })();
  if (committed !== `${JSON.stringify(json, null, 2)}\n`) problems.push(`${file}: not what build.mjs writes (run node deploy/dashboards/build.mjs)`);
  titles.push(json.title.replace(/^edgegate — /, ""));
  if (uids.has(json.uid)) problems.push(`${file}: uid ${json.uid} is used twice`);
  uids.add(json.uid);
  if (!json.panels.length) problems.push(`${file}: no panels`);
  const queries = [...json.panels.flatMap((p) => p.targets.map((t) => [p, t.expr])), ...json.annotations.list.map((a) => [a, a.expr])];
  for (const [p, expr] of queries) {
    if (p.datasource?.uid !== "${datasource}") problems.push(`${file}: "${p.title ?? p.name}" does not use the datasource variable`);
    for (const m of metricsOf(expr)) if (!known.has(m)) problems.push(`${file}: "${p.title ?? p.name}" queries ${m}, which edgegate does not export`);
    exprs.add(concrete(expr));
  }
  for (const p of json.panels) if (!p.targets.length) problems.push(`${file}: "${p.title}" has no query`);
}
for (const t of REQUIRED) if (!titles.includes(t)) problems.push(`no dashboard titled "${t}"`);

// promtool parses and evaluates every query (over no data: each must be valid and come back empty).
const promtool = process.argv[2];
if (promtool) {
  const dir = mkdtempSync(join(tmpdir(), "edgegate-dashboards-"));
  const tests = [...exprs].map((e) => `      - expr: ${JSON.stringify(e)}\n        eval_time: 1m\n        exp_samples: []`).join("\n");
  writeFileSync(join(dir, "rules.yaml"), readFileSync(join(ROOT, "deploy/telemetry/rules.yaml")));
  writeFileSync(join(dir, "test.yaml"), `rule_files: [rules.yaml]\nevaluation_interval: 30s\ntests:\n  - interval: 30s\n    input_series: []\n    promql_expr_test:\n${tests}\n`);
  const run = spawnSync(promtool, ["test", "rules", "test.yaml"], { cwd: dir, encoding: "utf8" });
  if (run.status !== 0) problems.push(`promtool rejected a dashboard query:\n${run.stdout}${run.stderr}`);
  rmSync(dir, { recursive: true, force: true });
}

if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`${built.length} dashboards, ${exprs.size} queries over ${known.size} known series: ok${promtool ? " (promtool parsed them all)" : ""}`);
