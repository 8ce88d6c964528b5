// Writes the Grafana dashboards in this folder from one description, so every board shares the
// same variables, units and layout. Run: node deploy/dashboards/build.mjs
// (`node deploy/dashboards/build.mjs --check` exits non-zero if a committed file differs.)
//
// Every query uses the Prometheus names the collector in deploy/telemetry/collector.yaml exposes
// and the recording rules of deploy/telemetry/rules.yaml; deploy/dashboards/check.mjs verifies
// that each names a series that exists and that promtool parses it.

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

const DS = { type: "prometheus", uid: "${datasource}" };
const T = 'tenant=~"$tenant"';
const M = 'gen_ai_request_model=~"$model"';

const ts = (title, unit, targets, extra = {}) => ({ type: "timeseries", title, unit, targets, ...extra });
const stat = (title, unit, expr, extra = {}) => ({ type: "stat", title, unit, targets: [{ expr, legend: "" }], ...extra });
const table = (title, unit, expr, extra = {}) => ({ type: "table", title, unit, targets: [{ expr, legend: "", instant: true }], ...extra });
const q = (expr, legend) => ({ expr, legend });

const boards = [
  {
    slug: "route-health",
    title: "Gateway Route Health",
    about: "Traffic, errors and latency per route and model alias, and the time the gateway itself adds.",
    vars: ["tenant", "model"],
    panels: [
      stat("Requests / s", "reqps", `sum(rate(gateway_requests_total{${T},${M}}[$__rate_interval]))`),
      stat("Error ratio", "percentunit", `sum(rate(gateway_requests_total{${T},${M},http_response_status_class=~"5xx"}[$__rate_interval])) / sum(rate(gateway_requests_total{${T},${M}}[$__rate_interval]))`),
      stat("Fallback share", "percentunit", `sum(fallback_route_share{${M}})`),
      ts("Requests by route and status", "reqps", [q(`sum by (http_route, http_response_status_class) (rate(gateway_requests_total{${T},${M}}[$__rate_interval]))`, "{{http_route}} {{http_response_status_class}}")]),
      ts("Latency p95 / p99 by alias", "s", [q(`route_latency_p95{${M}}`, "p95 {{gen_ai_request_model}}"), q(`route_latency_p99{${M}}`, "p99 {{gen_ai_request_model}}")]),
      ts("Time to first chunk p95 (streams)", "s", [q(`histogram_quantile(0.95, sum by (le, gen_ai_request_model) (rate(gateway_time_to_first_chunk_seconds_bucket{${M}}[$__rate_interval])))`, "{{gen_ai_request_model}}")]),
      ts("Gateway overhead p50 / p95 (whole answers)", "s", [
        q(`histogram_quantile(0.5, sum by (le) (rate(gateway_overhead_duration_seconds_bucket[$__rate_interval])))`, "p50"),
        q(`histogram_quantile(0.95, sum by (le) (rate(gateway_overhead_duration_seconds_bucket[$__rate_interval])))`, "p95"),
      ]),
      ts("Errors by type", "reqps", [q(`sum by (error_type) (rate(gateway_requests_total{${T},${M},error_type!=""}[$__rate_interval]))`, "{{error_type}}")]),
    ],
  },
  {
    slug: "provider-matrix",
    title: "Provider Availability Matrix",
    about: "Each provider and model: attempt outcomes, error rate against the 8 % alert, retries.",
    vars: ["model"],
    panels: [
      table("Error rate by provider (5 m)", "percentunit", "gateway_provider_error_rate"),
      table("Attempts by provider, model and outcome (1 h)", "short", `sum by (gen_ai_provider_name, gen_ai_response_model, outcome) (increase(gateway_provider_attempts_total{${M}}[1h]))`),
      ts("Error rate by provider", "percentunit", [q("gateway_provider_error_rate", "{{gen_ai_provider_name}}")], { threshold: 0.08 }),
      ts("Attempts by outcome", "ops", [q(`sum by (gen_ai_provider_name, outcome) (rate(gateway_provider_attempts_total{${M}}[$__rate_interval]))`, "{{gen_ai_provider_name}} {{outcome}}")]),
      ts("Retry ratio", "percentunit", [q("gateway_retry_ratio", "retries per request")], { threshold: 0.18 }),
      ts("Requests sent again with the second credential", "short", [q("sum by (gen_ai_provider_name) (increase(gateway_credential_fallbacks_total[$__rate_interval]))", "{{gen_ai_provider_name}}")]),
      ts("Latency p95 by provider", "s", [q(`histogram_quantile(0.95, sum by (le, gen_ai_provider_name) (rate(gen_ai_client_operation_duration_seconds_bucket{${M}}[$__rate_interval])))`, "{{gen_ai_provider_name}}")]),
    ],
  },
  {
    slug: "tenant-sla",
    title: "Tenant SLA Board",
    about: "Per tenant: availability, latency, limits hit and spend.",
    vars: ["tenant"],
    panels: [
      table("Availability by tenant (24 h)", "percentunit", `sum by (tenant) (increase(gateway_requests_total{${T},http_response_status_class="2xx"}[24h])) / sum by (tenant) (increase(gateway_requests_total{${T},http_response_status_class=~"2xx|5xx"}[24h]))`),
      table("Spend by tenant (24 h, USD)", "currencyUSD", `sum by (tenant) (increase(gateway_cost_total{${T}}[24h])) / 1e6`),
      ts("Latency p95 by tenant", "s", [q(`histogram_quantile(0.95, sum by (le, tenant) (rate(gen_ai_client_operation_duration_seconds_bucket{${T}}[$__rate_interval])))`, "{{tenant}}")]),
      ts("Refused by limits and budgets", "reqps", [q(`sum by (tenant, error_type) (rate(gateway_requests_total{${T},error_type=~"rate_limit_exceeded|budget_exceeded"}[$__rate_interval]))`, "{{tenant}} {{error_type}}")]),
      ts("Tokens / s by type (all tenants)", "short", [q(`sum by (gen_ai_token_type) (rate(gen_ai_client_token_usage_sum[$__rate_interval]))`, "{{gen_ai_token_type}}")]),
      ts("Queue wait p95 (routes with queue_ms)", "s", [q(`histogram_quantile(0.95, sum by (le, tenant) (rate(gateway_queue_duration_seconds_bucket{${T}}[$__rate_interval])))`, "{{tenant}}")]),
      ts("Spend rate by tenant (USD / h)", "currencyUSD", [q(`sum by (tenant) (rate(gateway_cost_total{${T}}[$__rate_interval])) * 3600 / 1e6`, "{{tenant}}")]),
    ],
  },
  {
    slug: "routing-outcomes",
    title: "Routing Policy Outcomes",
    about: "Where each alias is answered, how concentrated that is, and when it moves.",
    vars: ["model"],
    panels: [
      ts("Target share by alias", "percentunit", [q(`route_target_share{${M}}`, "{{gen_ai_request_model}} → {{gen_ai_provider_name}}/{{gen_ai_response_model}}")], { stacked: true }),
      ts("Route distribution entropy (bits)", "short", [q(`route_distribution_entropy{${M}}`, "{{gen_ai_request_model}}")]),
      ts("Fallback share by alias", "percentunit", [q(`fallback_route_share{${M}}`, "{{gen_ai_request_model}}")]),
      ts("Share moved in 10 m", "percentunit", [q(`max by (gen_ai_request_model) (abs(route_target_share{${M}} - route_target_share{${M}} offset 10m))`, "{{gen_ai_request_model}}")], { threshold: 0.25 }),
      ts("Residency refusals", "reqps", [q(`sum by (gen_ai_request_model) (rate(gateway_requests_total{${M},error_type="residency_unavailable"}[$__rate_interval]))`, "{{gen_ai_request_model}}")]),
    ],
  },
  {
    slug: "quality-cost",
    title: "Quality vs Cost Drift",
    about: "Feedback quality against spend per answer, per alias and policy version.",
    vars: ["model"],
    panels: [
      ts("Quality score by alias and policy version", "percentunit", [q(`quality_score{${M}}`, "{{gen_ai_request_model}} @ {{policy_version}}")], { threshold: 0.92 }),
      ts("Cost per successful response (USD)", "currencyUSD", [q(`cost_per_successful_response{${M}} / 1e6`, "{{gen_ai_request_model}}")]),
      ts("User escalation rate", "percentunit", [q(`user_escalation_rate{${M}}`, "{{gen_ai_request_model}}")]),
      ts("Feedback scores / s", "short", [q(`sum by (gen_ai_request_model, policy_version) (rate(gateway_feedback_score_count{${M}}[$__rate_interval]))`, "{{gen_ai_request_model}} @ {{policy_version}}")]),
      ts("Quality per dollar", "short", [q(`1e6 * quality_score{${M}} / ignoring (policy_version) group_left cost_per_successful_response{${M}}`, "{{gen_ai_request_model}} @ {{policy_version}}")]),
      ts("Edge cache hit ratio by alias", "percentunit", [q(`sum by (gen_ai_request_model) (rate(gateway_cache_requests_total{${M},status="hit"}[$__rate_interval])) / sum by (gen_ai_request_model) (rate(gateway_cache_requests_total{${M},status=~"hit|miss"}[$__rate_interval]))`, "{{gen_ai_request_model}}")]),
      ts("Spend the edge cache saved (USD / h)", "currencyUSD", [q(`sum by (gen_ai_request_model) (rate(gateway_cache_saved_cost_total{${M}}[$__rate_interval])) * 3600 / 1e6`, "{{gen_ai_request_model}}")]),
    ],
  },
  {
    slug: "deployment-timeline",
    title: "Deployment Change Timeline",
    about: "Which policy versions serve traffic, canary rollbacks, and what changed with them.",
    vars: ["tenant"],
    annotations: [{ name: "Canary rolled back", expr: "sum by (policy_version) (increase(gateway_canary_rollbacks_total[1m])) > 0", color: "red" }],
    panels: [
      ts("Requests by policy version", "reqps", [q(`sum by (policy_version) (rate(gateway_requests_total{${T}}[$__rate_interval]))`, "{{policy_version}}")], { stacked: true }),
      stat("Versions serving", "short", `count(sum by (policy_version) (rate(gateway_requests_total{${T}}[5m])) > 0)`),
      ts("Error ratio by policy version", "percentunit", [q(`sum by (policy_version) (rate(gateway_requests_total{${T},http_response_status_class="5xx"}[$__rate_interval])) / sum by (policy_version) (rate(gateway_requests_total{${T}}[$__rate_interval]))`, "{{policy_version}}")]),
      ts("Quality by policy version", "percentunit", [q("avg by (policy_version) (quality_score)", "{{policy_version}}")], { threshold: 0.92 }),
      ts("Canary rollbacks", "short", [q("sum by (policy_version) (increase(gateway_canary_rollbacks_total[$__rate_interval]))", "{{policy_version}}")]),
    ],
  },
  {
    slug: "prompt-security",
    title: "Prompt Security Control Plane",
    about: "What the firewall screens, blocks, sanitises and redacts, against the alert thresholds.",
    vars: ["tenant"],
    panels: [
      stat("Suspicious prompt ratio", "percentunit", `max(suspicious_prompt_ratio{${T}})`, { threshold: 0.03 }),
      stat("Denied rate", "percentunit", `max(prompt_policy_denied_rate{${T}})`, { threshold: 0.05 }),
      ts("Suspicious prompt ratio by tenant", "percentunit", [q(`suspicious_prompt_ratio{${T}}`, "{{tenant}}")], { threshold: 0.03 }),
      ts("Denied rate by tenant", "percentunit", [q(`prompt_policy_denied_rate{${T}}`, "{{tenant}}")], { threshold: 0.05 }),
      ts("Sanitiser invocations (5 m)", "short", [q(`sanitizer_invocations{${T}}`, "{{tenant}}")]),
      ts("Guard actions on answers", "ops", [q(`sum by (action) (rate(gateway_guard_actions_total{${T}}[$__rate_interval]))`, "{{action}}")]),
      ts("Guardrail latency p95", "s", [q(`histogram_quantile(0.95, sum by (le, stream) (rate(gateway_guardrail_duration_seconds_bucket[$__rate_interval])))`, "stream={{stream}}")], { threshold: 0.8 }),
    ],
  },
  {
    slug: "threat-patterns",
    title: "Threat Pattern Monitor",
    about: "Which rules fire, where, and how that changes.",
    vars: ["tenant"],
    panels: [
      table("Top rules (1 h)", "short", `topk(15, sum by (rule, stage) (increase(security_rule_hits_total{${T}}[1h])))`),
      table("Top tenants by rule hits (1 h)", "short", `topk(10, sum by (tenant) (increase(security_rule_hits_total{${T}}[1h])))`),
      ts("Rule hits by rule", "short", [q("security_rule_hit_count", "{{rule}} ({{stage}})")], { stacked: true }),
      ts("Rule hits by rule set", "ops", [q(`sum by (rule_set) (rate(security_rule_hits_total{${T}}[$__rate_interval]))`, "{{rule_set}}")]),
      ts("Injection share of screened prompts", "percentunit", [q(`sum(rate(gateway_prompts_screened_total{${T},suspicious="true"}[$__rate_interval])) / sum(rate(gateway_prompts_screened_total{${T}}[$__rate_interval]))`, "suspicious")]),
    ],
  },
  {
    slug: "security-timeline",
    title: "Gateway Security Timeline",
    about: "Security events in time order: containment, blocks, answers cut, canary rollbacks.",
    vars: ["tenant"],
    annotations: [
      { name: "Containment engaged", expr: `sum by (tenant, scope) (increase(gateway_containment_engaged_total{${T}}[1m])) > 0`, color: "orange" },
      { name: "Canary rolled back", expr: "sum by (policy_version) (increase(gateway_canary_rollbacks_total[1m])) > 0", color: "red" },
    ],
    panels: [
      ts("Containment engaged", "short", [q(`sum by (tenant, scope) (increase(gateway_containment_engaged_total{${T}}[$__rate_interval]))`, "{{tenant}} {{scope}}")]),
      ts("Prompts blocked", "ops", [q(`sum by (tenant) (rate(gateway_prompts_denied_total{${T}}[$__rate_interval]))`, "{{tenant}}")]),
      ts("Answers cut or redacted", "ops", [q(`sum by (tenant, action) (rate(gateway_guard_actions_total{${T},action=~"blocked|redacted"}[$__rate_interval]))`, "{{tenant}} {{action}}")]),
      ts("Authentication failures", "reqps", [q(`sum by (error_type) (rate(gateway_requests_total{error_type=~"invalid_api_key|invalid_token|missing_api_key|permission_denied"}[$__rate_interval]))`, "{{error_type}}")]),
    ],
  },
];

const VARS = {
  tenant: { name: "tenant", label: "Tenant", query: "label_values(gateway_requests_total, tenant)" },
  model: { name: "model", label: "Model alias", query: "label_values(gateway_requests_total, gen_ai_request_model)" },
};

function panel(p, id, index) {
  const width = p.type === "stat" ? 8 : 12;
  const out = {
    id,
    type: p.type,
    title: p.title,
    datasource: DS,
    gridPos: { h: p.type === "stat" ? 4 : 8, w: width, x: (index % 2) * 12, y: Math.floor(index / 2) * 8 },
    fieldConfig: {
      defaults: {
        unit: p.unit,
        ...(p.threshold !== undefined && {
          thresholds: { mode: "absolute", steps: [{ color: "green", value: null }, { color: "red", value: p.threshold }] },
        }),
        ...(p.type === "timeseries" && { custom: { stacking: { mode: p.stacked ? "normal" : "none" }, thresholdsStyle: { mode: p.threshold !== undefined ? "dashed" : "off" } } }),
      },
      overrides: [],
    },
    options: p.type === "table" ? { showHeader: true } : p.type === "stat" ? { reduceOptions: { calcs: ["lastNotNull"] } } : { legend: { displayMode: "table", placement: "bottom" } },
    targets: p.targets.map((t, i) => ({
      refId: String.fromCharCode(65 + i),
      datasource: DS,
      expr: t.expr,
      legendFormat: t.legend,
      ...(t.instant && { instant: true, format: "table" }),
    })),
  };
  return out;
}

export function dashboards() {
  return boards.map((b) => ({
    file: `${b.slug}.json`,
    json: {
      uid: `edgegate-${b.slug}`,
      title: `edgegate — ${b.title}`,
      description: b.about,
      tags: ["edgegate"],
      editable: true,
      schemaVersion: 39,
      time: { from: "now-6h", to: "now" },
      refresh: "1m",
      templating: {
        list: [
          { name: "datasource", label: "Prometheus", type: "datasource", query: "prometheus" },
          ...b.vars.map((v) => ({
            ...VARS[v],
            type: "query",
            datasource: DS,
            includeAll: true,
            multi: true,
            allValue: ".*",
            current: { text: "All", value: "$__all" },
            refresh: 2,
          })),
        ],
      },
      annotations: {
        list: (b.annotations ?? []).map((a) => ({ name: a.name, datasource: DS, enable: true, expr: a.expr, iconColor: a.color, titleFormat: a.name })),
      },
      panels: b.panels.map((p, i) => panel(p, i + 1, i)),
    },
  }));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes("--check");
  let stale = 0;
  for (const { file, json } of dashboards()) {
    const text = `${JSON.stringify(json, null, 2)}\n`;
    const path = join(HERE, file);
    if (check) {
      let old = "";
      try {
        old = readFileSync(path, "utf8");
      } catch {}
      if (old !== text) {
        console.error(`${file} is not what build.mjs writes: run node deploy/dashboards/build.mjs`);
        stale++;
      }
    } else {
      writeFileSync(path, text);
    }
  }
  process.exit(stale ? 1 : 0);
}
