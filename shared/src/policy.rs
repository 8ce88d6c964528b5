//! Policy snapshots: parse the raw document, then compile it into lookup tables.
//!
//! [`Policy::compile`] is the only way to get a [`Policy`]; it returns every problem it finds, each
//! with the JSON path of the offending value, and precomputes the per-request lookups.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::chat::Usage;
use crate::firewall::{Action, FirewallPolicy};
use crate::health::BreakerSettings;
use crate::jwt::{JwtIssuer, RawJwtIssuer};
use crate::ledger::{Limit, Meter, Window};
use crate::routing::{Class, Location, Residency, Strategy};

/// An edgegate policy document: tenants, their API keys, providers and model aliases.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema), schemars(title = "edgegate policy"))]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// The schema editors validate this document with (ignored by the gateway).
    #[serde(rename = "$schema", default)]
    #[allow(dead_code)]
    schema: Option<String>,
    /// Plans: limits and models shared by the tenants on them.
    #[serde(default)]
    plans: Vec<RawPlan>,
    /// The tenants that may use the gateway.
    #[serde(default)]
    tenants: Vec<RawTenant>,
    /// API keys, stored as hashes only.
    #[serde(default)]
    keys: Vec<RawKey>,
    /// Where models are served.
    #[serde(default)]
    providers: Vec<RawProvider>,
    /// Model aliases callers ask for, each an ordered list of targets.
    #[serde(default)]
    models: Vec<RawModel>,
    /// Identity providers whose JSON Web Tokens are accepted as credentials.
    #[serde(default)]
    jwt_issuers: Vec<RawJwtIssuer>,
    /// Custom firewall rule sets by name, each versioned; `firewall.rule_sets` at any level
    /// applies them.
    #[serde(default)]
    rule_sets: BTreeMap<String, crate::firewall::custom::RawRuleSet>,
    /// Prices by model name (the name sent to providers), over the embedded list prices; a
    /// target's own `price` wins over both.
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    /// How the gateway itself behaves.
    #[serde(default)]
    settings: RawSettings,
}

/// Gateway-wide settings.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// Output tokens a request without `max_tokens` is assumed to use until it settles (default 256).
    estimated_output_tokens: Option<u64>,
    /// Usage percentages of daily and monthly budgets at which an alert is recorded, once each
    /// per period (default 50, 80, 100).
    budget_alert_percents: Option<Vec<u8>>,
    /// How often each isolate re-reads the `policy/active` and `policy/canary` pointers, in
    /// seconds (default 10; 0 re-reads on every request). Workers KV may add up to 60 s of its
    /// own propagation on top.
    policy_refresh_seconds: Option<u32>,
    /// When a provider deployment's circuit breaker opens and closes.
    breaker: Option<BreakerSettings>,
    /// How long to wait for providers, for routes that do not say (defaults: first byte 120 s,
    /// total 600 s).
    timeouts: Option<RawTimeouts>,
    /// The prompt firewall for every tenant and route that does not say otherwise (default: flag
    /// injection and personal data, block nothing).
    firewall: Option<FirewallPolicy>,
    /// When a tenant's or route's share of suspicious prompts contains it (on by default).
    containment: Option<RawContainment>,
    /// Where metrics and traces go (OTLP/HTTP, JSON encoding); none are exported without it.
    telemetry: Option<RawTelemetry>,
    /// The per-tenant audit log (on by default, entries kept 90 days).
    audit: Option<RawAudit>,
    /// Feedback quality: the SLO a canary policy is held to.
    quality: Option<RawQuality>,
    /// Which requests the host logs, one JSON record a line (Workers Logs and `wrangler tail`,
    /// Spin's log): `all` (default), or `notable` ones only (see [`RequestLogs::Notable`]).
    /// Metrics, traces and the audit log see every request either way.
    #[serde(default)]
    request_logs: RequestLogs,
}

/// Which request records become log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestLogs {
    /// Every request's.
    #[default]
    All,
    /// Those that failed (an error, or a status of 400 or more) or carry something to act on: a
    /// failed attempt, a firewall or guard finding, a budget alert, containment engaged, a
    /// breaker transition, a credential fallback, degraded mode, an exhausted retry budget, or a
    /// policy, health, cache or audit fault. A log line costs the isolate time on every request.
    Notable,
}

/// Quality of answers, from `POST /v1/feedback`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawQuality {
    /// The lowest acceptable mean feedback score, 0-1 (default 0.92).
    slo: Option<f64>,
    /// Feedback scores on a canary version before its mean counts (default 50).
    min_feedback: Option<u32>,
    /// Whether a canary whose mean falls below the SLO is rolled back automatically (default true).
    auto_rollback: Option<bool>,
}

/// Compiled quality settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QualitySettings {
    /// The SLO, per mille.
    pub slo_permille: u64,
    /// Scores before a canary's mean counts.
    pub min_feedback: u64,
    /// Whether a canary below the SLO is rolled back.
    pub auto_rollback: bool,
}

/// The audit log.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// Whether requests and admin actions are appended to the audit log (default true).
    enabled: Option<bool>,
    /// Days an entry is kept (default 90, 1-3650); older ones are removed as new ones arrive.
    retention_days: Option<u32>,
}

/// Metrics export.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    /// The collector's OTLP/HTTP base URL, e.g. `http://otel-collector:4318`; metrics are posted
    /// to `{otlp_endpoint}/v1/metrics`, spans to `{otlp_endpoint}/v1/traces`.
    otlp_endpoint: String,
    /// How often an isolate exports what it aggregated, seconds (default 10; hosts that start an
    /// instance per request, such as Spin, export after each request).
    export_interval_seconds: Option<u32>,
    /// `service.name` of the exported resource (default `edgegate`).
    service_name: Option<String>,
    /// Name of a host secret holding an `authorization` header value for the collector.
    authorization_secret: Option<String>,
    /// Percent of traces kept when the caller's `traceparent` does not decide (default 100).
    trace_sample_percent: Option<u8>,
}

/// Compiled metrics export settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// `{otlp_endpoint}/v1/metrics`.
    pub metrics_url: String,
    /// Export interval, milliseconds.
    pub interval_ms: u64,
    /// `service.name`.
    pub service_name: String,
    /// Secret with the `authorization` header value.
    pub authorization_secret: Option<String>,
    /// `{otlp_endpoint}/v1/traces`.
    pub traces_url: String,
    /// Percent of traces kept.
    pub trace_sample_percent: u8,
}

/// Containment: when the share of a tenant's (or one of its routes') prompts whose injection
/// score reaches the threshold crosses `ratio_percent` over `window_seconds`, the gateway holds
/// that scope to a stricter firewall and lower per-minute limits until an admin lifts it
/// (`DELETE /admin/tenants/{id}/containment`).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawContainment {
    /// Whether the gateway watches for it (default true).
    enabled: Option<bool>,
    /// The suspicious share that trips it, percent (default 3).
    ratio_percent: Option<u8>,
    /// The window the share is measured over, seconds (default 600).
    window_seconds: Option<u32>,
    /// Fewest prompts in the window before the share counts (default 20).
    min_prompts: Option<u32>,
    /// Per-minute limits of a contained scope, percent of their policy value (default 25).
    rate_percent: Option<u8>,
    /// The firewall a contained scope is held to, over every other level (default: injection
    /// `block` at threshold 2).
    firewall: Option<FirewallPolicy>,
}

/// Compiled containment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainmentPolicy {
    /// When it trips, and how far limits drop.
    pub rule: crate::ledger::ContainmentRule,
    /// The firewall of contained scopes.
    pub firewall: FirewallPolicy,
}

/// How long to wait for a provider, per attempt. A timed-out attempt counts against the
/// deployment's breaker and the plan moves on (before the first content of a stream).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    /// Until the connection to the provider is set up, milliseconds (default: the runtime's).
    /// Honoured on Spin; Workers' `fetch` has no connection timeout, so there `first_byte_ms`
    /// bounds connection and response head together.
    connect_ms: Option<u64>,
    /// Until the response head arrives, connection included, milliseconds.
    first_byte_ms: Option<u64>,
    /// Until the whole answer has arrived (the end of a stream), milliseconds. A stream that
    /// runs over ends with an error event.
    total_ms: Option<u64>,
}

/// Compiled waits for one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the connection is set up, milliseconds (where the runtime can bound it).
    pub connect_ms: Option<u64>,
    /// Until the response head, milliseconds.
    pub first_byte_ms: u64,
    /// Until the end of the answer, milliseconds.
    pub total_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect_ms: None, first_byte_ms: 120_000, total_ms: 600_000 }
    }
}

impl RawTimeouts {
    fn over(self, base: Timeouts) -> Timeouts {
        Timeouts {
            connect_ms: self.connect_ms.or(base.connect_ms),
            first_byte_ms: self.first_byte_ms.unwrap_or(base.first_byte_ms),
            total_ms: self.total_ms.unwrap_or(base.total_ms),
        }
    }
}

/// A plan (tier): limits and models every tenant on it has, on top of its own.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawPlan {
    /// Unique plan id.
    id: String,
    /// Limits each tenant on the plan gets, counted per tenant (counters `plan/...`); a tenant's
    /// own limits apply inside them.
    #[serde(default)]
    limits: RawLimits,
    /// Model aliases tenants on the plan may use (`*` for all); absent: every alias.
    models: Option<Vec<String>>,
}

/// A tenant.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawTenant {
    /// Unique tenant id.
    id: String,
    /// The tenant's plan.
    plan: Option<String>,
    /// The tenant's limits.
    #[serde(default)]
    limits: RawLimits,
    /// Model aliases the tenant may use (`*` for all); absent: every alias. Keys narrow it further.
    models: Option<Vec<String>>,
    /// The tenant's canary group: a canary published for this group reaches it.
    canary_group: Option<String>,
    /// Books the tenant's ledger is split into (1–64; default 1), for a tenant whose request
    /// rate is above what one ledger book serves (about 1,000 a second on Workers). Every limit
    /// is split evenly between the books and a request that finds no room in its book tries the
    /// others, so limits are never exceeded; see docs/limits.md for what else changes.
    ledger_shards: Option<u16>,
    /// Limits per feature of the tenant's product, for requests that name the feature in the
    /// `x-edgegate-feature` header or `metadata.feature` (counters `feature:{name}/...`).
    #[serde(default)]
    features: BTreeMap<String, RawLimits>,
    /// Where the tenant's requests may be processed; checked before any routing strategy, and
    /// never relaxed: with no allowed deployment available the request fails.
    residency: Option<Residency>,
    /// The prompt firewall for this tenant (over `settings.firewall`, under a route's).
    firewall: Option<FirewallPolicy>,
}

/// Limits of a tenant or key; each absent one is unlimited. Minute windows are aligned to the
/// minute, days and months to UTC.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// Requests admitted per minute.
    requests_per_minute: Option<u64>,
    /// Tokens (input plus output) per minute. A request holds its prompt estimate plus its
    /// `max_tokens` (or `settings.estimated_output_tokens`) until it ends and settles its usage.
    tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    concurrent_requests: Option<u64>,
    /// Token budget per UTC day; spent, it answers 429 `budget_exceeded` until the day ends.
    tokens_per_day: Option<u64>,
    /// Token budget per UTC calendar month.
    tokens_per_month: Option<u64>,
    /// Longest prompt accepted, in estimated tokens; longer ones are refused with 400
    /// `context_length_exceeded` before anything is reserved or sent.
    max_prompt_tokens: Option<u64>,
    /// Largest output a request may ask for: a larger (or absent) `max_tokens` is set to this,
    /// so the reservation covers everything the provider can return.
    max_output_tokens: Option<u64>,
    /// Spend per UTC day, in US dollars (kept as integer micro-dollars). Counts targets with a `price`.
    usd_per_day: Option<f64>,
    /// Spend per UTC calendar month, in US dollars.
    usd_per_month: Option<f64>,
}

/// US dollars as integer micro-dollars; `None` for a negative or non-finite amount.
impl RawPrice {
    fn compile(&self) -> Option<Price> {
        let input = micro_usd(self.input_usd_per_mtok)?;
        let or_input = |v: Option<f64>| v.map_or(Some(input), micro_usd);
        Some(Price {
            input_micro_usd_per_mtok: input,
            cache_read_micro_usd_per_mtok: or_input(self.cache_read_usd_per_mtok)?,
            cache_write_micro_usd_per_mtok: or_input(self.cache_write_usd_per_mtok)?,
            output_micro_usd_per_mtok: micro_usd(self.output_usd_per_mtok)?,
        })
    }
}

fn micro_usd(usd: f64) -> Option<u64> {
    // Amounts are at most a few million dollars, far inside f64's exact integer range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e6).round() as u64)
}

/// Compiled limits of a tenant, key or model alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Ledger counters.
    pub counters: Vec<Limit>,
    /// Prompt cap, estimated tokens.
    pub max_prompt_tokens: Option<u64>,
    /// Output cap, tokens.
    pub max_output_tokens: Option<u64>,
}

impl RawLimits {
    /// The limits, each counter named `{scope}/{field}`, daily and monthly budgets alerting at
    /// `alerts` percent; problems are reported under `path`.
    fn compile(&self, scope: &str, path: &str, alerts: &[u8], errors: &mut Vec<PolicyError>) -> Limits {
        Limits {
            counters: self.counters(scope, path, alerts, errors),
            max_prompt_tokens: self.max_prompt_tokens,
            max_output_tokens: self.max_output_tokens,
        }
    }

    fn counters(&self, scope: &str, path: &str, alerts: &[u8], errors: &mut Vec<PolicyError>) -> Vec<Limit> {
        let mut usd = |name: &str, v: Option<f64>| {
            v.and_then(|v| {
                let m = micro_usd(v);
                if m.is_none() {
                    errors.push(PolicyError { path: format!("{path}.{name}"), message: "must be a non-negative amount".into() });
                }
                m
            })
        };
        let (per_day, per_month) = (usd("usd_per_day", self.usd_per_day), usd("usd_per_month", self.usd_per_month));
        let entries = [
            ("requests_per_minute", Meter::Requests, Window::Minute, self.requests_per_minute),
            ("tokens_per_minute", Meter::Tokens, Window::Minute, self.tokens_per_minute),
            ("concurrent_requests", Meter::Concurrent, Window::Open, self.concurrent_requests),
            ("tokens_per_day", Meter::Tokens, Window::Day, self.tokens_per_day),
            ("tokens_per_month", Meter::Tokens, Window::Month, self.tokens_per_month),
            ("usd_per_day", Meter::Spend, Window::Day, per_day),
            ("usd_per_month", Meter::Spend, Window::Month, per_month),
        ];
        entries
            .into_iter()
            .filter_map(|(name, meter, window, max)| {
                max.map(|max| {
                    let alerts = if matches!(window, Window::Day | Window::Month) { alerts.to_vec() } else { vec![] };
                    Limit { id: format!("{scope}/{name}"), meter, window, max, alerts }
                })
            })
            .collect()
    }
}

/// An API key.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawKey {
    /// Key id, safe to log.
    id: String,
    /// The owning tenant's id.
    tenant: String,
    /// `sha256:<64 hex digits>` of the secret key.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = "^sha256:[0-9a-f]{64}$")))]
    hash: String,
    /// Aliases this key may use (`*` for all); absent means every alias.
    models: Option<Vec<String>>,
    /// What the key may do; absent means `["invoke"]`. Admin roles never imply `invoke`.
    roles: Option<Vec<Role>>,
    /// When the key stops working, in seconds since the Unix epoch; absent: never.
    expires_at: Option<u64>,
    /// Limits of this key alone, inside its tenant's.
    #[serde(default)]
    limits: RawLimits,
}

/// What a credential may do. Roles are separate by design: a key that can invoke models cannot
/// change policy, and an admin key cannot invoke models unless it also has `invoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Role {
    /// Call models (`/v1/...`).
    #[serde(rename = "invoke")]
    Invoke,
    /// Read the active policy, its versions and history (`GET /admin/policy...`).
    #[serde(rename = "policy:read")]
    PolicyRead,
    /// Publish, promote and roll back policy.
    #[serde(rename = "policy:write")]
    PolicyWrite,
    /// Read audit records.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Create and revoke API keys.
    #[serde(rename = "keys:admin")]
    KeysAdmin,
    /// Say where a request comes from with `x-edgegate-origin-country` and
    /// `x-edgegate-origin-continent` (for trusted backends that relay end users' requests);
    /// residency constraints then follow the asserted origin.
    #[serde(rename = "origin:assert")]
    OriginAssert,
}

impl Role {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The role's name as written in policy.
    pub fn name(self) -> &'static str {
        match self {
            Role::Invoke => "invoke",
            Role::PolicyRead => "policy:read",
            Role::PolicyWrite => "policy:write",
            Role::AuditRead => "audit:read",
            Role::KeysAdmin => "keys:admin",
            Role::OriginAssert => "origin:assert",
        }
    }
}

/// A set of [`Role`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// Every admin role, without `invoke`.
    pub const ADMIN: Roles = Roles(0b1_1110);

    /// Whether `role` is in the set.
    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        Roles(iter.into_iter().fold(0, |acc, r| acc | r.bit()))
    }
}

/// A provider: where and how models are called.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawProvider {
    /// Unique provider id.
    id: String,
    /// Wire format and transport.
    kind: ProviderKind,
    /// Base URL (`http://` or `https://`; `workers-ai://BINDING` for Workers AI); some kinds have a default.
    base_url: Option<String>,
    /// Name of the secret (Workers secret, Spin variable) holding the credential. Never the secret.
    api_key_secret: Option<String>,
    /// Name of a second secret with a credential that is also live, for rotation without
    /// downtime: when the provider refuses the first (401/403), the request is sent once more
    /// with this one and the record notes it (`credential_fallbacks`).
    api_key_secret_secondary: Option<String>,
    /// API version for providers that version URLs (Azure OpenAI).
    api_version: Option<String>,
    /// Cloud region (Bedrock).
    region: Option<String>,
    /// Differences of OpenAI-compatible servers.
    #[serde(default)]
    quirks: Quirks,
    /// Where this deployment runs, for residency constraints. Unlabelled deployments fail every
    /// constraint that checks the missing label.
    #[serde(default)]
    location: Location,
}

/// Differences of OpenAI-compatible servers from OpenAI (vLLM, Ollama, llama.cpp, Groq, …).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Quirks {
    /// Whether the server accepts `stream_options.include_usage` (default true). When false the
    /// gateway does not ask, and a stream's usage is what the server volunteers.
    pub stream_usage: bool,
    /// The field the server reads the output cap from: `max_tokens` or `max_completion_tokens`;
    /// the caller's value is moved there. Absent: sent as the caller wrote it.
    pub max_tokens_field: Option<MaxTokensField>,
    /// Request fields the server rejects; removed before sending.
    pub drop_fields: Vec<String>,
    /// Whether the server ends streams with `data: [DONE]` (default true). When false, a stream
    /// that ends after every choice has a finish reason is complete; one that ends before is
    /// still a cut.
    pub done_marker: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks { stream_usage: true, max_tokens_field: None, drop_fields: Vec::new(), done_marker: true }
    }
}

/// Names of the output-cap field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens` (most compatible servers).
    MaxTokens,
    /// `max_completion_tokens` (newer OpenAI models).
    MaxCompletionTokens,
}

/// A model alias.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawModel {
    /// The name callers put in `model`.
    alias: String,
    /// Where the alias is served, tried in order.
    targets: Vec<RawTarget>,
    /// Limits of this alias, counted per tenant (counters `model:{alias}/...`).
    #[serde(default)]
    limits: RawLimits,
    /// Another alias to serve the request when a limit refuses it here (instead of a 429), or
    /// when every target refuses it for quota (provider 429).
    overflow: Option<String>,
    /// How the targets are ordered for each request (default `priority`: as listed).
    #[serde(default)]
    strategy: Strategy,
    /// Where this route's requests may be processed, on top of the tenant's residency.
    residency: Option<Residency>,
    /// Whether the route is critical (default true). A critical route tries deployments whose
    /// breaker is open when it has no healthy one; a non-critical route answers in `degraded`
    /// mode instead when every target fails.
    critical: Option<bool>,
    /// What a non-critical route answers when every target fails.
    degraded: Option<RawDegraded>,
    /// Share of this route's requests (per location, over 10 s) that may be retries on another
    /// target, percent (default 20; ten retries a second are always allowed).
    retry_budget_percent: Option<u8>,
    /// When a per-minute or concurrency limit has no room, wait up to this long for it, in turn
    /// (first come, first served) instead of answering 429 at once, milliseconds (0-10000;
    /// default 0: no waiting).
    queue_ms: Option<u32>,
    /// How long to wait for each target (default: `settings.timeouts`).
    timeouts: Option<RawTimeouts>,
    /// Mirror a sample of this route's chat requests to another target after the answer is sent,
    /// to compare it side by side (latency, tokens, cost, similarity). The caller never waits
    /// for it and its cost is never charged to the caller's budgets.
    shadow: Option<RawShadow>,
    /// The prompt firewall for this route (over the tenant's and `settings.firewall`).
    firewall: Option<FirewallPolicy>,
    /// Serve repeated chat requests from the edge cache (see the README's "Edge cache").
    cache: Option<RawCache>,
    /// What to do with a chat prompt over its `max_prompt_tokens` (default `refuse`).
    #[serde(default)]
    over_prompt_cap: OverPromptCap,
}

/// What a route does with a chat prompt over its `max_prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OverPromptCap {
    /// Answer 400 `context_length_exceeded`.
    #[default]
    Refuse,
    /// Drop the oldest turns until the prompt fits (a turn is a user message and what follows it
    /// up to the next one), keeping every system and developer message and the last turn; if
    /// those alone are over the cap, answer 400 `context_length_exceeded`. The answer carries
    /// `x-edgegate-truncated-messages`. Embeddings inputs are always refused.
    DropOldestTurns,
}

/// A route's edge cache.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawCache {
    /// How long an answer is served from the cache, seconds (1-86400).
    ttl_seconds: u32,
    /// Which requests are cached: `temperature_zero`, `requested` (`x-edgegate-cache: on`), or
    /// `either` (default). A caller's `x-edgegate-cache: off` or `cache-control: no-cache` always
    /// bypasses it.
    #[serde(default)]
    when: crate::cache::When,
}

/// Shadow traffic of a route.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawShadow {
    /// The target to mirror to. Residency applies to it as to any target: a request whose
    /// constraints it fails is not mirrored.
    target: RawTarget,
    /// Share of the route's chat requests mirrored, percent (1-100).
    percent: u8,
}

/// A route's shadow target and sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// Where to mirror.
    pub target: Rc<Target>,
    /// Share of requests mirrored, percent.
    pub percent: u8,
}

/// Degraded mode of a non-critical route: one of `alias` or `reply`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDegraded {
    /// Another (cheaper) alias to try.
    alias: Option<String>,
    /// A fixed assistant reply, marked `x-edgegate-degraded: reply`.
    reply: Option<String>,
}

/// What a non-critical route does when every target fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Degraded {
    /// Serve the request from this alias instead.
    Alias(String),
    /// Answer with this fixed text.
    Reply(String),
}

/// A model alias after compilation: a route to targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// Targets, as listed.
    pub targets: Vec<Rc<Target>>,
    /// The alias's limits (counters `model:{alias}/...`).
    pub limits: Limits,
    /// How targets are ordered.
    pub strategy: Strategy,
    /// The route's residency.
    pub residency: Option<Residency>,
    /// Whether the route is critical.
    pub critical: bool,
    /// Degraded mode, for non-critical routes.
    pub degraded: Option<Degraded>,
    /// Retry budget, percent of requests.
    pub retry_budget_percent: u8,
    /// How long a request may wait in turn for room under a per-minute or concurrency limit,
    /// milliseconds (0: not at all).
    pub queue_ms: u64,
    /// How long to wait for each attempt.
    pub timeouts: Timeouts,
    /// Shadow traffic.
    pub shadow: Option<Shadow>,
    /// The route's firewall policy.
    pub firewall: Option<FirewallPolicy>,
    /// The route's edge cache.
    pub cache: Option<crate::cache::Rule>,
    /// What to do with a chat prompt over its cap.
    pub over_prompt_cap: OverPromptCap,
    /// The tokenizer encoding of the first target's model, if tiktoken knows it.
    pub encoding: Option<crate::tokenizer::Encoding>,
}

/// One place an alias is served.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawTarget {
    /// A provider id.
    provider: String,
    /// The model name sent to that provider (a deployment name for Azure).
    model: String,
    /// What this target costs, for spend budgets and cost records.
    price: Option<RawPrice>,
    /// Relative share of traffic under the `weighted` strategy (default 1; 0 only as a fallback).
    weight: Option<u32>,
    /// The prompt class this target serves under the `complexity` strategy.
    class: Option<Class>,
}

/// A model's price, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawPrice {
    /// Input (prompt) tokens read fresh, USD per million.
    input_usd_per_mtok: f64,
    /// Output tokens (reasoning included), USD per million.
    output_usd_per_mtok: f64,
    /// Prompt tokens read from the provider's cache (default: the input price).
    cache_read_usd_per_mtok: Option<f64>,
    /// Prompt tokens written into the provider's cache (default: the input price).
    cache_write_usd_per_mtok: Option<f64>,
}

/// A price, in integer micro-dollars per million tokens of each usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Input tokens read fresh.
    pub input_micro_usd_per_mtok: u64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read_micro_usd_per_mtok: u64,
    /// Prompt tokens written into the provider's cache.
    pub cache_write_micro_usd_per_mtok: u64,
    /// Output tokens, reasoning included.
    pub output_micro_usd_per_mtok: u64,
}

impl Price {
    /// A price with cache reads and writes at the input price.
    pub fn flat(input_micro_usd_per_mtok: u64, output_micro_usd_per_mtok: u64) -> Price {
        Price {
            input_micro_usd_per_mtok,
            cache_read_micro_usd_per_mtok: input_micro_usd_per_mtok,
            cache_write_micro_usd_per_mtok: input_micro_usd_per_mtok,
            output_micro_usd_per_mtok,
        }
    }

    /// An estimate for `input` prompt and `output` tokens (all prompt tokens fresh), micro-dollars
    /// rounded up — for routing by cost and for holds before the usage is known.
    pub fn cost(&self, input: u64, output: u64) -> u64 {
        self.charge(&Usage { input, output, ..Usage::default() })
    }

    /// What `usage` costs, each bucket at its price, micro-dollars rounded up.
    pub fn charge(&self, usage: &Usage) -> u64 {
        let total = [
            (usage.input, self.input_micro_usd_per_mtok),
            (usage.cache_read, self.cache_read_micro_usd_per_mtok),
            (usage.cache_write, self.cache_write_micro_usd_per_mtok),
            (usage.output + usage.reasoning, self.output_micro_usd_per_mtok),
        ]
        .iter()
        .map(|(tokens, price)| u128::from(*tokens) * u128::from(*price))
        .sum::<u128>();
        u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// Which wire format and transport a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The built-in deterministic provider: answers inside the gateway, no network.
    Mock,
    /// OpenAI itself; `base_url` defaults to `https://api.openai.com/v1`.
    Openai,
    /// Any server speaking OpenAI Chat Completions under `base_url`.
    OpenaiCompatible,
    /// Anthropic Messages; `base_url` defaults to `https://api.anthropic.com/v1`.
    Anthropic,
    /// Azure OpenAI: `base_url` is the resource endpoint, targets name deployments.
    AzureOpenai,
    /// Google Gemini; `base_url` defaults to `https://generativelanguage.googleapis.com/v1beta`.
    Gemini,
    /// AWS Bedrock Converse; needs `region`; `base_url` defaults to the region's runtime endpoint.
    Bedrock,
    /// Cloudflare Workers AI through a Workers binding; `base_url` is `workers-ai://{binding}`
    /// (default `workers-ai://AI`). Workers runtime only.
    WorkersAi,
}

/// One problem in a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// JSON path of the offending value, e.g. `keys[2].tenant`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// A tenant after compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Tenant id.
    pub id: String,
    /// The tenant's limits (counters `tenant/...`).
    pub limits: Limits,
    /// Aliases the tenant may use; `None` means all.
    pub models: Option<Vec<String>>,
    /// Its plan's limits (counters `plan/...`) and models.
    pub plan: Option<(String, Limits, Option<Vec<String>>)>,
    /// Canary group.
    pub canary_group: Option<String>,
    /// Books the tenant's ledger is split into (see [`crate::ledger::shard_limits`]).
    pub ledger_shards: u16,
    /// Limits per declared feature.
    pub features: BTreeMap<String, Limits>,
    /// Where the tenant's requests may be processed.
    pub residency: Option<Residency>,
    /// The tenant's firewall policy.
    pub firewall: Option<FirewallPolicy>,
}

impl Tenant {
    /// Whether the tenant (and its plan) may use the model alias `alias`.
    pub fn may_use(&self, alias: &str) -> bool {
        allows(self.models.as_deref(), alias) && self.plan.as_ref().is_none_or(|(_, _, models)| allows(models.as_deref(), alias))
    }
}

fn allows(list: Option<&[String]>, alias: &str) -> bool {
    list.is_none_or(|m| m.iter().any(|a| a == alias || a == "*"))
}

/// An API key after compilation (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Key id, safe to log.
    pub id: String,
    /// Owning tenant id.
    pub tenant: String,
    /// Aliases this key may use; `None` means all.
    pub models: Option<Vec<String>>,
    /// What the key may do.
    pub roles: Roles,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// The key's own limits (counters `key:{id}/...`).
    pub limits: Limits,
}

impl ApiKey {
    /// Whether this key may use the model alias `alias`.
    pub fn may_use(&self, alias: &str) -> bool {
        allows(self.models.as_deref(), alias)
    }
}

/// A provider after compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Provider id.
    pub id: String,
    /// Wire format and transport.
    pub kind: ProviderKind,
    /// Base URL without a trailing slash (empty for the built-in mock).
    pub base_url: String,
    /// Name of the secret holding the credential.
    pub api_key_secret: Option<String>,
    /// Name of the secret holding a second live credential, tried when the first is refused.
    pub api_key_secret_secondary: Option<String>,
    /// API version for providers that version their URLs (Azure OpenAI).
    pub api_version: Option<String>,
    /// Cloud region, for providers that sign requests per region (Bedrock).
    pub region: Option<String>,
    /// Server differences, for OpenAI-compatible providers.
    pub quirks: Quirks,
    /// Where the deployment runs.
    pub location: Location,
}

/// One place a model alias can be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Provider id (always present in [`Policy::providers`]).
    pub provider: String,
    /// Model name sent to that provider.
    pub model: String,
    /// Its price, if policy gives one.
    pub price: Option<Price>,
    /// Weight under the `weighted` strategy.
    pub weight: u32,
    /// Prompt class under the `complexity` strategy.
    pub class: Option<Class>,
}

impl Default for Target {
    fn default() -> Self {
        Target { provider: String::new(), model: String::new(), price: None, weight: 1, class: None }
    }
}

/// A compiled, validated policy snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Content hash of the raw document; names the snapshot in every response and record.
    pub version: String,
    tenants: HashMap<String, Rc<Tenant>>,
    keys: HashMap<[u8; 32], Rc<ApiKey>>,
    providers: HashMap<String, Rc<Provider>>,
    models: BTreeMap<String, ModelRoute>,
    overflow: HashMap<String, String>,
    issuers: HashMap<String, JwtIssuer>,
    refresh_ms: u64,
    estimated_output_tokens: u64,
    request_logs: RequestLogs,
    breaker: BreakerSettings,
    firewall: Option<FirewallPolicy>,
    rule_sets: BTreeMap<String, Rc<crate::firewall::custom::RuleSet>>,
    containment: Option<ContainmentPolicy>,
    telemetry: Option<TelemetrySettings>,
    audit_retention_days: Option<u32>,
    quality: QualitySettings,
}

impl Policy {
    /// Parses and validates a policy document, returning every problem found.
    pub fn compile(raw: &[u8]) -> Result<Policy, Vec<PolicyError>> {
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| vec![PolicyError { path: ".".into(), message: e.to_string() }])?;
        Self::compile_value(value)
    }

    /// [`Policy::compile`] for a document already parsed as JSON.
    pub fn compile_value(value: serde_json::Value) -> Result<Policy, Vec<PolicyError>> {
        let version = version_of(&value);
        let doc: RawPolicy = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            vec![PolicyError { path, message: e.into_inner().to_string() }]
        })?;
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(PolicyError { path, message });

        let mut tenants = HashMap::new();
        let mut tenant_aliases = Vec::new();
        let mut limit_errors = Vec::new();
        let percents = doc.settings.budget_alert_percents.clone().unwrap_or_else(|| vec![50, 80, 100]);
        if percents.iter().any(|p| !(1..=100).contains(p)) {
            err("settings.budget_alert_percents".into(), "percentages must be 1-100".into());
        }
        let mut plans = HashMap::new();
        for (i, p) in doc.plans.into_iter().enumerate() {
            let limits = p.limits.compile("plan", &format!("plans[{i}].limits"), &percents, &mut limit_errors);
            tenant_aliases.push((format!("plans[{i}]"), p.models.clone().unwrap_or_default()));
            if plans.insert(p.id.clone(), (p.id.clone(), limits, p.models)).is_some() {
                err(format!("plans[{i}].id"), format!("duplicate plan id {:?}", p.id));
            }
        }
        for (i, t) in doc.tenants.into_iter().enumerate() {
            if t.id.is_empty() || t.id.starts_with('~') {
                err(format!("tenants[{i}].id"), "must not be empty or start with `~`".into());
            }
            let features = t
                .features
                .iter()
                .map(|(name, l)| {
                    (
                        name.clone(),
                        l.compile(&format!("feature:{name}"), &format!("tenants[{i}].features.{name}"), &percents, &mut limit_errors),
                    )
                })
                .collect();
            let plan = match t.plan {
                Some(id) => {
                    let found = plans.get(&id).cloned();
                    if found.is_none() {
                        err(format!("tenants[{i}].plan"), format!("unknown plan {id:?}"));
                    }
                    found
                }
                None => None,
            };
            let tenant = Tenant {
                id: t.id.clone(),
                limits: t.limits.compile("tenant", &format!("tenants[{i}].limits"), &percents, &mut limit_errors),
                models: t.models.clone(),
                canary_group: t.canary_group,
                ledger_shards: t.ledger_shards.unwrap_or(1),
                features,
                plan,
                residency: t.residency,
                firewall: t.firewall,
            };
            if t.ledger_shards.is_some_and(|n| n == 0 || n > crate::ledger::MAX_SHARDS) {
                err(format!("tenants[{i}].ledger_shards"), format!("must be from 1 to {}", crate::ledger::MAX_SHARDS));
            }
            tenant_aliases.push((format!("tenants[{i}]"), t.models.unwrap_or_default()));
            if t.id.is_empty() || t.id.starts_with('~') || t.id.contains('/') {
                // `~…` names the gateway's own books and logs (health boards, the admin audit log).
                err(format!("tenants[{i}].id"), "must be non-empty, not start with `~` and contain no `/`".into());
            }
            if tenants.insert(t.id.clone(), Rc::new(tenant)).is_some() {
                err(format!("tenants[{i}].id"), format!("duplicate tenant id {:?}", t.id));
            }
        }

        let mut providers = HashMap::new();
        for (i, p) in doc.providers.into_iter().enumerate() {
            let base_url = match (p.kind, p.base_url) {
                (ProviderKind::Mock, _) => String::new(),
                (ProviderKind::WorkersAi, Some(url)) if url.starts_with("workers-ai://") => url.trim_end_matches('/').to_owned(),
                (ProviderKind::WorkersAi, None) => "workers-ai://AI".to_owned(),
                (_, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => url.trim_end_matches('/').to_owned(),
                (_, Some(_)) => {
                    err(format!("providers[{i}].base_url"), "must start with http:// or https://".into());
                    String::new()
                }
                (ProviderKind::Anthropic, None) => "https://api.anthropic.com/v1".to_owned(),
                (ProviderKind::Openai, None) => "https://api.openai.com/v1".to_owned(),
                (ProviderKind::Gemini, None) => "https://generativelanguage.googleapis.com/v1beta".to_owned(),
                (ProviderKind::Bedrock, None) => match &p.region {
                    Some(region) => format!("https://bedrock-runtime.{region}.amazonaws.com"),
                    None => {
                        err(format!("providers[{i}].region"), "required for kind bedrock".into());
                        String::new()
                    }
                },
                (ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenai, None) => {
                    err(format!("providers[{i}].base_url"), "required for this kind".into());
                    String::new()
                }
            };
            let provider = Provider {
                id: p.id.clone(),
                kind: p.kind,
                base_url,
                api_key_secret: p.api_key_secret,
                api_key_secret_secondary: p.api_key_secret_secondary,
                api_version: p.api_version,
                region: p.region,
                quirks: p.quirks,
                location: p.location,
            };
            if providers.insert(p.id.clone(), Rc::new(provider)).is_some() {
                err(format!("providers[{i}].id"), format!("duplicate provider id {:?}", p.id));
            }
        }

        let mut prices = BTreeMap::new();
        for (model, raw) in &doc.prices {
            match raw.compile() {
                Some(price) => {
                    prices.insert(model.clone(), price);
                }
                None => err(format!("prices.{model}"), "prices must be non-negative amounts".into()),
            }
        }
        let mut models = BTreeMap::new();
        let mut overflow_checks = Vec::new();
        let mut degraded_checks = Vec::new();
        let default_timeouts = doc.settings.timeouts.unwrap_or_default().over(Timeouts::default());
        for (i, m) in doc.models.into_iter().enumerate() {
            if m.targets.is_empty() {
                err(format!("models[{i}].targets"), "must name at least one target".into());
            }
            for (j, t) in m.targets.iter().enumerate() {
                if !providers.contains_key(&t.provider) {
                    err(format!("models[{i}].targets[{j}].provider"), format!("unknown provider {:?}", t.provider));
                }
            }
            let mut target = |t: RawTarget, at: String| {
                let price = match t.price {
                    Some(raw) => raw.compile().or_else(|| {
                        err(format!("{at}.price"), "prices must be non-negative amounts".into());
                        None
                    }),
                    // Unpriced targets take the document's price for their model, else the list price.
                    None => prices.get(&t.model).copied().or_else(|| crate::prices::list_price(&t.model)),
                };
                Target { provider: t.provider, model: t.model, price, weight: t.weight.unwrap_or(1), class: t.class }
            };
            let targets: Vec<Rc<Target>> =
                m.targets.into_iter().enumerate().map(|(j, t)| Rc::new(target(t, format!("models[{i}].targets[{j}]")))).collect();
            let shadow =
                m.shadow.map(|s| Shadow { target: Rc::new(target(s.target, format!("models[{i}].shadow.target"))), percent: s.percent });
            if let Some(s) = &shadow {
                if !providers.contains_key(&s.target.provider) {
                    err(format!("models[{i}].shadow.target.provider"), format!("unknown provider {:?}", s.target.provider));
                }
                if !(1..=100).contains(&s.percent) {
                    err(format!("models[{i}].shadow.percent"), "must be 1-100".into());
                }
            }
            let limits = m.limits.compile(&format!("model:{}", m.alias), &format!("models[{i}].limits"), &percents, &mut limit_errors);
            if let Some(to) = m.overflow {
                overflow_checks.push((i, m.alias.clone(), to));
            }
            let critical = m.critical.unwrap_or(true);
            let degraded = match m.degraded {
                None => None,
                Some(_) if critical => {
                    err(format!("models[{i}].degraded"), "only non-critical routes (`critical: false`) answer in degraded mode".into());
                    None
                }
                Some(RawDegraded { alias: Some(a), reply: None }) => {
                    degraded_checks.push((i, m.alias.clone(), a.clone()));
                    Some(Degraded::Alias(a))
                }
                Some(RawDegraded { alias: None, reply: Some(r) }) => Some(Degraded::Reply(r)),
                Some(_) => {
                    err(format!("models[{i}].degraded"), "must set exactly one of `alias` and `reply`".into());
                    None
                }
            };
            if m.strategy == Strategy::Weighted && targets.iter().all(|t| t.weight == 0) {
                err(format!("models[{i}].targets"), "the weighted strategy needs a target with a weight above 0".into());
            }
            if m.retry_budget_percent.is_some_and(|p| p > 100) {
                err(format!("models[{i}].retry_budget_percent"), "must be 0-100".into());
            }
            if m.queue_ms.is_some_and(|q| q > 10_000) {
                err(format!("models[{i}].queue_ms"), "must be 0-10000".into());
            }
            if m.cache.as_ref().is_some_and(|c| c.ttl_seconds == 0 || c.ttl_seconds > crate::cache::MAX_TTL_SECONDS) {
                err(format!("models[{i}].cache.ttl_seconds"), format!("must be 1-{}", crate::cache::MAX_TTL_SECONDS));
            }
            let encoding = targets.first().and_then(|t| crate::tokenizer::Encoding::for_model(&t.model));
            let route = ModelRoute {
                targets,
                limits,
                strategy: m.strategy,
                residency: m.residency,
                critical,
                degraded,
                retry_budget_percent: m.retry_budget_percent.unwrap_or(20),
                queue_ms: u64::from(m.queue_ms.unwrap_or(0)),
                timeouts: m.timeouts.unwrap_or_default().over(default_timeouts),
                shadow,
                firewall: m.firewall,
                cache: m.cache.map(|c| crate::cache::Rule { ttl_seconds: c.ttl_seconds, when: c.when }),
                over_prompt_cap: m.over_prompt_cap,
                encoding,
            };
            let t = route.timeouts;
            if t.first_byte_ms == 0 || t.total_ms < t.first_byte_ms || t.connect_ms.is_some_and(|c| c == 0 || c > t.first_byte_ms) {
                err(
                    format!("models[{i}].timeouts"),
                    "need 0 < connect_ms <= first_byte_ms <= total_ms (connect_ms may be left out)".into(),
                );
            }
            if models.insert(m.alias.clone(), route).is_some() {
                err(format!("models[{i}].alias"), format!("duplicate model alias {:?}", m.alias));
            }
        }

        let mut overflow = HashMap::new();
        for (i, from, to) in overflow_checks {
            if to == from || !models.contains_key(&to) {
                err(format!("models[{i}].overflow"), format!("must name another model alias, not {to:?}"));
            }
            overflow.insert(from, to);
        }
        for (i, from, to) in degraded_checks {
            if to == from || !models.contains_key(&to) {
                err(format!("models[{i}].degraded.alias"), format!("must name another model alias, not {to:?}"));
            }
        }

        for (at, aliases) in tenant_aliases {
            for (j, alias) in aliases.iter().enumerate() {
                if alias != "*" && !models.contains_key(alias) {
                    err(format!("{at}.models[{j}]"), format!("unknown model alias {alias:?}"));
                }
            }
        }

        let mut keys = HashMap::new();
        let mut key_ids = std::collections::HashSet::new();
        for (i, k) in doc.keys.into_iter().enumerate() {
            if !tenants.contains_key(&k.tenant) {
                err(format!("keys[{i}].tenant"), format!("unknown tenant {:?}", k.tenant));
            }
            for (j, alias) in k.models.iter().flatten().enumerate() {
                if alias != "*" && !models.contains_key(alias) {
                    err(format!("keys[{i}].models[{j}]"), format!("unknown model alias {alias:?}"));
                }
            }
            let Some(hash) = parse_key_hash(&k.hash) else {
                err(format!("keys[{i}].hash"), "must be \"sha256:\" followed by 64 lowercase hex digits".into());
                continue;
            };
            if !key_ids.insert(k.id.clone()) {
                err(format!("keys[{i}].id"), format!("duplicate key id {:?}", k.id));
            }
            let roles = k.roles.map_or(Roles(Role::Invoke.bit()), |r| r.into_iter().collect());
            let limits = k.limits.compile(&format!("key:{}", k.id), &format!("keys[{i}].limits"), &percents, &mut limit_errors);
            let key = ApiKey { id: k.id, tenant: k.tenant, models: k.models, roles, expires_at: k.expires_at, limits };
            if keys.insert(hash, Rc::new(key)).is_some() {
                err(format!("keys[{i}].hash"), "duplicate key hash".into());
            }
        }

        errors.extend(limit_errors);
        let mut issuers = HashMap::new();
        for (i, raw) in doc.jwt_issuers.into_iter().enumerate() {
            let issuer = raw.compile(&format!("jwt_issuers[{i}]"), &mut errors);
            for (j, t) in issuer.tenants.iter().flatten().enumerate() {
                if !tenants.contains_key(t) {
                    errors.push(PolicyError { path: format!("jwt_issuers[{i}].tenants[{j}]"), message: format!("unknown tenant {t:?}") });
                }
            }
            if issuers.contains_key(&issuer.issuer) {
                errors.push(PolicyError {
                    path: format!("jwt_issuers[{i}].issuer"),
                    message: format!("duplicate issuer {:?}", issuer.issuer),
                });
            }
            issuers.insert(issuer.issuer.clone(), issuer);
        }

        let raw_containment = doc.settings.containment.clone().unwrap_or_default();
        let containment_errors = [
            ("ratio_percent", raw_containment.ratio_percent.is_some_and(|r| !(1..=100).contains(&r)), "1 to 100"),
            ("window_seconds", raw_containment.window_seconds.is_some_and(|w| !(10..=86_400).contains(&w)), "10 to 86400"),
            ("rate_percent", raw_containment.rate_percent.is_some_and(|r| !(1..=100).contains(&r)), "1 to 100"),
        ];
        let raw_quality = doc.settings.quality.clone().unwrap_or_default();
        if raw_quality.slo.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
            errors.push(PolicyError { path: "settings.quality.slo".into(), message: "must be 0 to 1".into() });
        }
        if raw_quality.min_feedback == Some(0) {
            errors.push(PolicyError { path: "settings.quality.min_feedback".into(), message: "must be at least 1".into() });
        }
        if doc.settings.audit.as_ref().and_then(|a| a.retention_days).is_some_and(|d| !(1..=3650).contains(&d)) {
            errors.push(PolicyError { path: "settings.audit.retention_days".into(), message: "must be 1 to 3650".into() });
        }
        if let Some(t) = &doc.settings.telemetry
            && !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://"))
        {
            errors.push(PolicyError {
                path: "settings.telemetry.otlp_endpoint".into(),
                message: "must start with http:// or https://".into(),
            });
        }
        for (field, bad, range) in containment_errors {
            if bad {
                errors.push(PolicyError { path: format!("settings.containment.{field}"), message: format!("must be {range}") });
            }
        }
        let firewalls = std::iter::once(("settings.firewall".to_owned(), doc.settings.firewall.as_ref()))
            .chain(std::iter::once(("settings.containment.firewall".to_owned(), raw_containment.firewall.as_ref())))
            .chain(tenants.values().map(|t| (format!("tenants[{}].firewall", t.id), t.firewall.as_ref())))
            .chain(models.iter().map(|(a, r)| (format!("models[{a}].firewall"), r.firewall.as_ref())));
        let mut rule_sets = BTreeMap::new();
        for (name, raw) in &doc.rule_sets {
            let mut found = Vec::new();
            if let Some(set) = raw.compile(name, &format!("rule_sets.{name}"), &mut found) {
                rule_sets.insert(name.clone(), Rc::new(set));
            }
            errors.extend(found.into_iter().map(|(path, message)| PolicyError { path, message }));
        }
        for (at, f) in firewalls {
            let Some(f) = f else { continue };
            let mut check = |field: &str, action: Option<Action>, allowed: &[Action], hint: &str| {
                if action.is_some_and(|a| !allowed.contains(&a)) {
                    errors.push(PolicyError { path: format!("{at}.{field}"), message: hint.into() });
                }
            };
            use Action::{Block, Flag, Off, Redact, Sanitize};
            check(
                "injection",
                f.injection,
                &[Off, Flag, Sanitize, Block],
                "injection findings are flagged, sanitised or blocked, not redacted",
            );
            check("pii", f.pii, &[Off, Flag, Redact, Block], "personal data is flagged, redacted or blocked, not sanitised");
            for (kind, a) in &f.pii_kinds {
                check(
                    &format!("pii_kinds.{}", kind.rule_id()),
                    Some(*a),
                    &[Off, Flag, Redact, Block],
                    "personal data is flagged, redacted or blocked, not sanitised",
                );
            }
            check("output_pii", f.output_pii, &[Off, Flag, Redact], "answers are redacted or flagged, not blocked; use redact or flag");
            check("output_rules", f.output_rules, &[Off, Flag, Block], "answer rules are off, flagged or blocked");
            for (class, a) in &f.output_classes {
                check(&format!("output_classes.{class}"), Some(*a), &[Off, Flag, Block], "answer rules are off, flagged or blocked");
            }
            check("system_prompt_leak", f.system_prompt_leak, &[Off, Flag, Block], "leaks are off, flagged or blocked");
            for (i, name) in f.rule_sets.iter().flatten().enumerate() {
                if !doc.rule_sets.contains_key(name) {
                    errors.push(PolicyError { path: format!("{at}.rule_sets[{i}]"), message: format!("unknown rule set {name:?}") });
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let refresh_ms = u64::from(doc.settings.policy_refresh_seconds.unwrap_or(10)) * 1000;
        let estimated_output_tokens = doc.settings.estimated_output_tokens.unwrap_or(256);
        let breaker = doc.settings.breaker.unwrap_or_default();
        let firewall = doc.settings.firewall;
        let telemetry = doc.settings.telemetry.map(|t| TelemetrySettings {
            metrics_url: format!("{}/v1/metrics", t.otlp_endpoint.trim_end_matches('/')),
            traces_url: format!("{}/v1/traces", t.otlp_endpoint.trim_end_matches('/')),
            trace_sample_percent: t.trace_sample_percent.unwrap_or(100).min(100),
            interval_ms: u64::from(t.export_interval_seconds.unwrap_or(10)) * 1000,
            service_name: t.service_name.unwrap_or_else(|| "edgegate".into()),
            authorization_secret: t.authorization_secret,
        });
        // The SLO is 0-1 (checked above), so its per-mille value fits.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let quality = QualitySettings {
            slo_permille: (raw_quality.slo.unwrap_or(0.92) * 1000.0).round() as u64,
            min_feedback: u64::from(raw_quality.min_feedback.unwrap_or(50)),
            auto_rollback: raw_quality.auto_rollback != Some(false),
        };
        let audit = doc.settings.audit.unwrap_or_default();
        let audit_retention_days =
            (audit.enabled != Some(false)).then(|| audit.retention_days.unwrap_or(crate::audit::DEFAULT_RETENTION_DAYS));
        let containment = (raw_containment.enabled != Some(false)).then(|| ContainmentPolicy {
            rule: crate::ledger::ContainmentRule {
                ratio_permille: u32::from(raw_containment.ratio_percent.unwrap_or(3)) * 10,
                window_ms: u64::from(raw_containment.window_seconds.unwrap_or(600)) * 1000,
                min_prompts: raw_containment.min_prompts.unwrap_or(20),
                rate_percent: raw_containment.rate_percent.unwrap_or(25),
            },
            firewall: raw_containment.firewall.unwrap_or(FirewallPolicy {
                injection: Some(Action::Block),
                injection_threshold: Some(2),
                ..FirewallPolicy::default()
            }),
        });
        Ok(Policy {
            version,
            tenants,
            keys,
            providers,
            models,
            overflow,
            issuers,
            refresh_ms,
            estimated_output_tokens,
            request_logs: doc.settings.request_logs,
            breaker,
            firewall,
            rule_sets,
            containment,
            telemetry,
            audit_retention_days,
            quality,
        })
    }

    /// The key whose secret is `secret`, looked up by its SHA-256.
    pub fn key_by_secret(&self, secret: &str) -> Option<&Rc<ApiKey>> {
        self.key_by_hash(&hash_key(secret))
    }

    /// The key whose secret has the SHA-256 `hash`.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Rc<ApiKey>> {
        self.keys.get(hash)
    }

    /// The trusted issuer whose `iss` is `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&JwtIssuer> {
        self.issuers.get(iss)
    }

    /// A tenant by id.
    pub fn tenant(&self, id: &str) -> Option<&Rc<Tenant>> {
        self.tenants.get(id)
    }

    /// A provider by id.
    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.get(id).map(|p| &**p)
    }

    /// A provider by id, shared (plans hold it without copying it).
    pub fn provider_rc(&self, id: &str) -> Option<&Rc<Provider>> {
        self.providers.get(id)
    }

    /// The route of a model alias.
    pub fn route(&self, alias: &str) -> Option<&ModelRoute> {
        self.models.get(alias)
    }

    /// The tokenizer encoding of the model that first serves `alias`, if tiktoken knows it
    /// (found when the policy compiles).
    pub fn encoding(&self, alias: &str) -> Option<crate::tokenizer::Encoding> {
        self.route(alias).and_then(|r| r.encoding)
    }

    /// The alias that serves requests a limit refuses on `alias`, if policy names one.
    pub fn overflow(&self, alias: &str) -> Option<&str> {
        self.overflow.get(alias).map(String::as_str)
    }

    /// The limits of a model alias.
    pub fn model_limits(&self, alias: &str) -> Option<&Limits> {
        self.models.get(alias).map(|r| &r.limits)
    }

    /// How long an isolate may serve this snapshot before re-reading the store's pointers.
    pub fn refresh_ms(&self) -> u64 {
        self.refresh_ms
    }

    /// The gateway-wide firewall policy (`settings.firewall`).
    pub fn firewall(&self) -> Option<&FirewallPolicy> {
        self.firewall.as_ref()
    }

    /// The compiled custom rule sets, by name.
    pub fn rule_sets(&self) -> &BTreeMap<String, Rc<crate::firewall::custom::RuleSet>> {
        &self.rule_sets
    }

    /// Metrics export settings, when policy names a collector.
    pub fn telemetry(&self) -> Option<&TelemetrySettings> {
        self.telemetry.as_ref()
    }

    /// The quality SLO canaries are held to.
    pub fn quality(&self) -> &QualitySettings {
        &self.quality
    }

    /// Days audit entries are kept, unless the audit log is turned off.
    pub fn audit_retention_days(&self) -> Option<u32> {
        self.audit_retention_days
    }

    /// Containment settings, unless turned off.
    pub fn containment(&self) -> Option<&ContainmentPolicy> {
        self.containment.as_ref()
    }

    /// Circuit breaker thresholds.
    pub fn breaker(&self) -> &BreakerSettings {
        &self.breaker
    }

    /// Output tokens assumed for a request that sets no `max_tokens`.
    pub fn estimated_output_tokens(&self) -> u64 {
        self.estimated_output_tokens
    }

    /// Which request records become log lines.
    pub fn request_logs(&self) -> RequestLogs {
        self.request_logs
    }

    /// Every model alias, in order.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// The canonical text of a JSON document: object keys sorted at every level, no whitespace,
/// strings and numbers as serde_json writes them. Documents that differ only in formatting or
/// key order have the same canonical text, and so the same version.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(child) = map.get(k) {
                        write(child, out);
                    }
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// A policy document's version id: the first 16 hex digits of the SHA-256 of its canonical JSON.
pub fn version_of(value: &serde_json::Value) -> String {
    hex(&Sha256::digest(canonical_json(value).as_bytes())[..8])
}

/// The JSON Schema of policy documents, for editors (published as `deploy/policy.schema.json`).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawPolicy)).unwrap_or_default()
}

/// SHA-256 of an API key's secret, as policy stores it.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// `sha256:<hex>` form of [`hash_key`], as written in policy documents.
pub fn key_hash_string(secret: &str) -> String {
    format!("sha256:{}", hex(&hash_key(secret)))
}

fn parse_key_hash(s: &str) -> Option<[u8; 32]> {
    let digits = s.strip_prefix("sha256:")?.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../deploy/local/demo-policy.json");

    fn errors(doc: &str) -> Vec<(String, String)> {
        match Policy::compile(doc.as_bytes()) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn demo_policy_compiles_and_finds_the_demo_key() {
        let p = Policy::compile(DEMO.as_bytes()).unwrap_or_else(|e| unreachable!("{e:?}"));
        let key = p.key_by_secret("sk-edgegate-demo").map(|k| k.tenant.as_str());
        assert_eq!(key, Some("demo"));
        assert!(p.key_by_secret("sk-edgegate-demo ").is_none());
        assert_eq!(p.version.len(), 16);
    }

    #[test]
    fn the_version_is_the_hash_of_canonical_json() {
        let a = Policy::compile(br#"{"tenants":[{"id":"t","limits":{"requests_per_minute":5}}],"models":[]}"#).map(|p| p.version);
        let b = Policy::compile(b"{ \"models\": [],\n  \"tenants\": [ { \"limits\": {\"requests_per_minute\": 5}, \"id\": \"t\" } ] }")
            .map(|p| p.version);
        let c = Policy::compile(br#"{"tenants":[{"id":"t","limits":{"requests_per_minute":6}}],"models":[]}"#).map(|p| p.version);
        assert!(a.is_ok());
        assert_eq!(a, b, "formatting and key order do not change the version");
        assert_ne!(a, c, "content does");
        assert_eq!(
            canonical_json(&serde_json::json!({"b": [1, {"d": "x\"y", "c": null}], "a": 1.5})),
            r#"{"a":1.5,"b":[1,{"c":null,"d":"x\"y"}]}"#
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let doc = r#"{
          "tenants": [{"id": "a"}, {"id": "a"}],
          "keys": [{"id": "k", "tenant": "nobody", "hash": "sha256:xyz", "models": ["ghost"]}],
          "providers": [{"id": "p", "kind": "openai_compatible"}, {"id": "q", "kind": "openai_compatible", "base_url": "ftp://x"}],
          "models": [{"alias": "m", "targets": [{"provider": "nope", "model": "x"}]}, {"alias": "e", "targets": []}]
        }"#;
        let paths: Vec<String> = errors(doc).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "tenants[1].id",
                "providers[0].base_url",
                "providers[1].base_url",
                "models[0].targets[0].provider",
                "models[1].targets",
                "keys[0].tenant",
                "keys[0].models[0]",
                "keys[0].hash",
            ]
        );
    }

    #[test]
    fn tenant_ids_may_not_take_the_names_reserved_for_health_boards() {
        assert_eq!(errors(r#"{"tenants":[{"id":"~health/default"}]}"#)[0].0, "tenants[0].id");
        assert_eq!(errors(r#"{"tenants":[{"id":""}]}"#)[0].0, "tenants[0].id");
        assert!(errors(r#"{"tenants":[{"id":"acme~1"}]}"#).is_empty());
    }

    #[test]
    fn route_settings_are_checked() {
        let route = |extra: &str| {
            format!(
                r#"{{"providers":[{{"id":"p","kind":"mock"}}],"models":[{{"alias":"a","targets":[{{"provider":"p","model":"m"}}]{extra}}},{{"alias":"b","targets":[{{"provider":"p","model":"m"}}]}}]}}"#
            )
        };
        assert_eq!(errors(&route(r#","degraded":{"reply":"busy"}"#))[0].0, "models[0].degraded", "only non-critical routes degrade");
        assert!(errors(&route(r#","critical":false,"degraded":{"reply":"busy"}"#)).is_empty());
        assert_eq!(errors(&route(r#","critical":false,"degraded":{"alias":"a"}"#))[0].0, "models[0].degraded.alias");
        assert_eq!(errors(&route(r#","critical":false,"degraded":{"alias":"b","reply":"x"}"#))[0].0, "models[0].degraded");
        assert_eq!(errors(&route(r#","retry_budget_percent":101"#))[0].0, "models[0].retry_budget_percent");
        assert!(errors(&route(r#","over_prompt_cap":"drop_oldest_turns""#)).is_empty());
        assert!(!errors(r#"{"settings":{"request_logs":"some"}}"#).is_empty());
        assert!(errors(r#"{"settings":{"request_logs":"notable"}}"#).is_empty());
        assert!(errors(&route(r#","over_prompt_cap":"truncate""#))[0].0.starts_with("models[0]"));
        assert_eq!(errors(&route(r#","shadow":{"percent":0,"target":{"provider":"p","model":"m"}}"#))[0].0, "models[0].shadow.percent");
        assert_eq!(
            errors(&route(r#","shadow":{"percent":5,"target":{"provider":"q","model":"m"}}"#))[0].0,
            "models[0].shadow.target.provider"
        );
        let weightless = r#"{"providers":[{"id":"p","kind":"mock"}],"models":[{"alias":"a","strategy":"weighted","targets":[{"provider":"p","model":"m","weight":0}]}]}"#;
        assert_eq!(
            errors(weightless),
            [("models[0].targets".to_owned(), "the weighted strategy needs a target with a weight above 0".to_owned())]
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_name_their_path() {
        assert_eq!(errors(r#"{"tenants":[{"id":"a","color":"red"}]}"#)[0].0, "tenants[0].color");
        assert_eq!(
            errors(r#"{"tenants":[{"id":"a","limits":{"requests_per_minute":"many"}}]}"#)[0].0,
            "tenants[0].limits.requests_per_minute"
        );
        assert_eq!(errors(r#"{"providers":[{"id":"a","kind":"carrier_pigeon"}]}"#)[0].0, "providers[0].kind");
        assert_eq!(errors("nope")[0].0, ".");
        let quirky = r#"{"providers":[{"id":"v","kind":"openai_compatible","base_url":"http://v","quirks":{"stream_usage":"no"}}]}"#;
        assert_eq!(errors(quirky)[0].0, "providers[0].quirks.stream_usage");
    }
}
