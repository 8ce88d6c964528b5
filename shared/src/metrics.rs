//! Metrics from request records, aggregated per isolate and exported as OTLP/HTTP JSON.
//!
//! [`Meter::observe`] folds one [`RequestRecord`] into counters and histograms; [`Meter::take`]
//! returns everything since the last take as an OTLP `ExportMetricsServiceRequest` (JSON
//! encoding) and starts a new interval. Temporality is **delta**: each isolate reports what it
//! saw since its last export, so isolates that come and go never reset a series; a collector's
//! `deltatocumulative` processor turns them into Prometheus counters (see `deploy/telemetry/`).
//!
//! Labels are bounded: tenant ids, model aliases, provider ids, rule ids and route templates come
//! from policy; statuses and error types are fixed sets. Prompts, keys and request ids never
//! become labels.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::telemetry::RequestRecord;

/// Upper bounds of the duration histogram, seconds (the GenAI semantic conventions' advice).
pub const DURATION_BOUNDS: [f64; 14] = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
/// Upper bounds of the token histogram (the GenAI semantic conventions' advice).
pub const TOKEN_BOUNDS: [f64; 14] =
    [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];

type Labels = Vec<(&'static str, String)>;

/// One histogram series.
#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    count: u64,
    sum: f64,
    buckets: Vec<u64>,
}

/// What an instrument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Instrument {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
}

const REQUESTS: Instrument = Instrument {
    name: "gateway.requests",
    unit: "{request}",
    description: "Requests answered, by tenant, model alias, route template, status class and error type.",
};
const ATTEMPTS: Instrument = Instrument {
    name: "gateway.provider.attempts",
    unit: "{attempt}",
    description: "Upstream attempts by provider, model and outcome (ok or the error type).",
};
const RETRIES: Instrument =
    Instrument { name: "gateway.retries", unit: "{attempt}", description: "Attempts after a request's first, by tenant and model alias." };
const FALLBACKS: Instrument = Instrument {
    name: "gateway.fallbacks",
    unit: "{request}",
    description: "Requests answered by a later candidate, an overflow route or degraded mode.",
};
const COST: Instrument = Instrument {
    name: "gateway.cost",
    unit: "{micro_usd}",
    description: "Spend in micro-dollars, by tenant, model alias, provider and feature.",
};
const DURATION: Instrument = Instrument {
    name: "gen_ai.client.operation.duration",
    unit: "s",
    description: "Request duration as the caller saw it (to the end of the stream).",
};
const OVERHEAD: Instrument = Instrument {
    name: "gateway.overhead.duration",
    unit: "s",
    description: "Time the gateway added: the request's duration minus its upstream attempts' time to response head.",
};
const FIRST_CHUNK: Instrument =
    Instrument { name: "gateway.time_to_first_chunk", unit: "s", description: "Streams: time from the request to the first content sent." };
const GUARDRAIL: Instrument = Instrument {
    name: "gateway.guardrail.duration",
    unit: "s",
    description: "The guard phase over an answer: a whole one, or a stream from its first chunk to its end.",
};
const TOKENS: Instrument =
    Instrument { name: "gen_ai.client.token.usage", unit: "{token}", description: "Tokens per request, by type (input, output)." };
const SCREENED: Instrument = Instrument {
    name: "gateway.prompts.screened",
    unit: "{prompt}",
    description: "Prompts the firewall screened, by whether their injection score reached the threshold.",
};
const TRUNCATED: Instrument = Instrument {
    name: "gateway.prompts.truncated",
    unit: "{message}",
    description: "Messages dropped from prompts (their oldest turns) to fit a route's prompt cap, by tenant and model alias.",
};
const DENIED: Instrument = Instrument { name: "gateway.prompts.denied", unit: "{prompt}", description: "Prompts the firewall blocked." };
const SANITIZED: Instrument =
    Instrument { name: "gateway.sanitizer.invocations", unit: "{prompt}", description: "Prompts the firewall sanitised." };
const RULE_HITS: Instrument = Instrument {
    name: "security.rule.hits",
    unit: "{hit}",
    description: "Firewall and guard rule hits acted on, by rule, rule set and stage (prompt, answer).",
};
const GUARD: Instrument =
    Instrument { name: "gateway.guard.actions", unit: "{answer}", description: "Answers the guard phase flagged, redacted or cut." };
const CONTAINMENT: Instrument = Instrument {
    name: "gateway.containment.engaged",
    unit: "{event}",
    description: "Times containment engaged, by tenant and scope kind.",
};

const FEEDBACK: Instrument = Instrument {
    name: "gateway.feedback.score",
    unit: "{score}",
    description: "Feedback scores (0-1) on answers, by model alias, the policy version that decided them, and escalation.",
};
const CANARY_ROLLBACKS: Instrument = Instrument {
    name: "gateway.canary.rollbacks",
    unit: "{rollback}",
    description: "Canary policies ended for falling below the quality SLO.",
};
const QUEUE: Instrument = Instrument {
    name: "gateway.queue.duration",
    unit: "s",
    description: "Time requests on routes with a queue waited in turn for room under a limit, by whether they were then admitted.",
};
const CREDENTIAL_FALLBACKS: Instrument = Instrument {
    name: "gateway.credential.fallbacks",
    unit: "{request}",
    description: "Requests a provider refused with its first credential, sent again with the second (rotation).",
};
const CACHE: Instrument = Instrument {
    name: "gateway.cache.requests",
    unit: "{request}",
    description: "Requests on routes with an edge cache, by tenant, model alias and status (hit, miss, bypass).",
};
const CACHE_SAVED: Instrument = Instrument {
    name: "gateway.cache.saved_cost",
    unit: "{micro_usd}",
    description: "What cache hits would have cost at the price of the answer they replayed, micro-dollars.",
};
/// Feedback score buckets.
pub const SCORE_BOUNDS: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Counters and histograms of one interval.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    start_ms: u64,
    sums: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
    instruments: BTreeMap<&'static str, Instrument>,
}

impl Meter {
    /// A meter whose first interval starts at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Meter { start_ms: now_ms, ..Meter::default() }
    }

    /// Whether nothing was observed since the last take.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty() && self.histograms.is_empty()
    }

    fn add(&mut self, i: Instrument, labels: Labels, n: u64) {
        self.instruments.insert(i.name, i);
        *self.sums.entry((i.name, labels)).or_default() += n;
    }

    fn record(&mut self, i: Instrument, bounds: &[f64], labels: Labels, value: f64) {
        self.instruments.insert(i.name, i);
        let h = self.histograms.entry((i.name, labels)).or_default();
        if h.buckets.is_empty() {
            h.buckets = vec![0; bounds.len() + 1];
        }
        h.count += 1;
        h.sum += value;
        let at = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
        if let Some(b) = h.buckets.get_mut(at) {
            *b += 1;
        }
    }

    /// Folds one request's record in.
    pub fn observe(&mut self, r: &RequestRecord) {
        let tenant = r.tenant.clone().unwrap_or_else(|| "-".into());
        let alias = r.model.clone().unwrap_or_else(|| "-".into());
        let error = r.error.unwrap_or("");
        let status = format!("{}xx", r.status / 100);
        let who = || vec![("tenant", tenant.clone()), ("gen_ai.request.model", alias.clone())];
        let mut labels = who();
        labels.extend([
            ("http.route", r.route.to_owned()),
            ("http.response.status_class", status),
            ("error.type", error.to_owned()),
            ("policy_version", r.policy_version.clone().unwrap_or_default()),
        ]);
        self.add(REQUESTS, labels, 1);

        let provider = r.served().or(r.attempts.last()).map_or_else(|| "-".to_owned(), |a| a.provider.clone());
        for a in &r.attempts {
            let outcome = a.error.unwrap_or("ok").to_owned();
            self.add(
                ATTEMPTS,
                vec![
                    ("gen_ai.request.model", alias.clone()),
                    ("gen_ai.provider.name", a.provider.clone()),
                    ("gen_ai.response.model", a.model.clone()),
                    ("outcome", outcome),
                ],
                1,
            );
        }
        if r.attempts.len() > 1 {
            self.add(RETRIES, who(), (r.attempts.len() - 1) as u64);
        }
        if r.status == 200 && (r.failed_over() || r.overflow.is_some() || r.degraded.is_some()) {
            self.add(FALLBACKS, who(), 1);
        }
        if let Some(cost) = r.cost_micro_usd.filter(|c| *c > 0) {
            let mut labels = who();
            labels.push(("gen_ai.provider.name", provider.clone()));
            labels.push(("feature", r.feature.clone().unwrap_or_default()));
            self.add(COST, labels, cost);
        }
        let operation = r.operation();
        if !operation.is_empty() {
            let labels = vec![
                ("gen_ai.operation.name", operation.to_owned()),
                ("gen_ai.request.model", alias.clone()),
                ("gen_ai.provider.name", provider.clone()),
                ("error.type", error.to_owned()),
                ("tenant", tenant.clone()),
            ];
            self.record(DURATION, &DURATION_BOUNDS, labels, r.duration_ms as f64 / 1000.0);
            // Streams are timed to their end, attempts to their head: only whole answers say
            // what the gateway itself added.
            if !r.attempts.is_empty() && !r.stream {
                let upstream: u64 = r.attempts.iter().map(|a| a.duration_ms).sum();
                let overhead = r.duration_ms.saturating_sub(upstream);
                self.record(OVERHEAD, &DURATION_BOUNDS, vec![("gen_ai.operation.name", operation.to_owned())], overhead as f64 / 1000.0);
            }
            for p in r.phases.iter().filter(|p| p.name == "response.guardrail") {
                let labels = vec![("gen_ai.request.model", alias.clone()), ("stream", r.stream.to_string())];
                self.record(GUARDRAIL, &DURATION_BOUNDS, labels, p.duration_ms as f64 / 1000.0);
            }
            if let Some(first) = r.first_chunk_ms {
                let labels = vec![("gen_ai.request.model", alias.clone()), ("gen_ai.provider.name", provider.clone())];
                self.record(FIRST_CHUNK, &DURATION_BOUNDS, labels, first as f64 / 1000.0);
            }
            if let Some(u) = &r.usage {
                for (kind, n) in [("input", u.prompt_tokens()), ("output", u.completion_tokens())] {
                    let labels = vec![
                        ("gen_ai.operation.name", operation.to_owned()),
                        ("gen_ai.provider.name", provider.clone()),
                        ("gen_ai.request.model", alias.clone()),
                        ("gen_ai.token.type", kind.to_owned()),
                    ];
                    self.record(TOKENS, &TOKEN_BOUNDS, labels, n as f64);
                }
            }
        }

        if let Some(n) = r.truncated_messages {
            self.add(TRUNCATED, who(), n as u64);
        }
        // The prompt firewall and the guard phase.
        if let Some(suspicious) = r.suspicious {
            let mut labels = who();
            labels.push(("suspicious", suspicious.to_string()));
            self.add(SCREENED, labels, 1);
        }
        if let Some(v) = &r.firewall {
            match v.action {
                Some("blocked") => self.add(DENIED, who(), 1),
                Some("sanitized") => self.add(SANITIZED, who(), 1),
                _ => {}
            }
            let mut hits: Vec<(&str, &str)> = v.findings.iter().map(|f| (f.rule, f.rule_set)).collect();
            hits.sort_unstable();
            hits.dedup();
            for (rule, set) in hits {
                let mut labels = who();
                labels.extend([("rule", rule.to_owned()), ("rule_set", set.to_owned()), ("stage", "prompt".to_owned())]);
                self.add(RULE_HITS, labels, 1);
            }
        }
        if let Some(g) = &r.guard {
            let mut labels = who();
            labels.push(("action", g.action.to_owned()));
            self.add(GUARD, labels, 1);
            for rule in &g.rules {
                let mut labels = who();
                labels.extend([("rule", (*rule).to_owned()), ("rule_set", String::new()), ("stage", "answer".to_owned())]);
                self.add(RULE_HITS, labels, 1);
            }
        }
        for e in r.containment.iter().flat_map(|c| &c.engaged) {
            let kind = if e.scope == "tenant" { "tenant" } else { "route" };
            self.add(CONTAINMENT, vec![("tenant", tenant.clone()), ("scope", kind.to_owned())], 1);
        }
        if let Some(c) = &r.cache {
            let mut labels = who();
            labels.push(("status", c.status.to_owned()));
            self.add(CACHE, labels, 1);
            if let Some(saved) = c.saved_micro_usd.filter(|s| *s > 0) {
                self.add(CACHE_SAVED, who(), saved);
            }
        }
        for p in &r.credential_fallbacks {
            self.add(CREDENTIAL_FALLBACKS, vec![("gen_ai.provider.name", p.clone())], 1);
        }
        if let Some(q) = r.queued_ms {
            let admitted = r.error != Some("rate_limit_exceeded");
            let labels = vec![("tenant", tenant.clone()), ("gen_ai.request.model", alias.clone()), ("admitted", admitted.to_string())];
            self.record(QUEUE, &DURATION_BOUNDS, labels, q as f64 / 1000.0);
        }
        if let Some(f) = &r.feedback {
            let labels = vec![
                ("tenant", tenant.clone()),
                ("gen_ai.request.model", f.route.clone()),
                ("policy_version", f.policy_version.clone()),
                ("escalated", f.escalated.to_string()),
            ];
            self.record(FEEDBACK, &SCORE_BOUNDS, labels, f64::from(f.score_permille) / 1000.0);
            if let Some(version) = &f.canary_rolled_back {
                self.add(CANARY_ROLLBACKS, vec![("policy_version", version.clone())], 1);
            }
        }
    }

    /// Everything since the last take, as an OTLP/HTTP JSON `ExportMetricsServiceRequest` from
    /// `service` (`service.name`) and `instance` (`service.instance.id`); `None` when nothing was
    /// observed. The next interval starts at `now_ms`.
    pub fn take(&mut self, now_ms: u64, service: &str, instance: &str) -> Option<String> {
        if self.is_empty() {
            self.start_ms = now_ms;
            return None;
        }
        let (start, end) = (nanos(self.start_ms), nanos(now_ms.max(self.start_ms)));
        let attrs =
            |labels: &Labels| -> Vec<Value> { labels.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect() };
        let mut metrics: BTreeMap<&'static str, Value> = BTreeMap::new();
        for ((name, labels), value) in std::mem::take(&mut self.sums) {
            let point = json!({"attributes": attrs(&labels), "startTimeUnixNano": start, "timeUnixNano": end, "asInt": value.to_string()});
            let m =
                metrics.entry(name).or_insert_with(|| json!({"sum": {"dataPoints": [], "aggregationTemporality": 1, "isMonotonic": true}}));
            if let Some(points) = m["sum"]["dataPoints"].as_array_mut() {
                points.push(point);
            }
        }
        for ((name, labels), h) in std::mem::take(&mut self.histograms) {
            let bounds: &[f64] = if name == TOKENS.name { &TOKEN_BOUNDS } else { &DURATION_BOUNDS };
            let point = json!({
                "attributes": attrs(&labels), "startTimeUnixNano": start, "timeUnixNano": end,
                "count": h.count.to_string(), "sum": h.sum,
                "bucketCounts": h.buckets.iter().map(u64::to_string).collect::<Vec<_>>(), "explicitBounds": bounds,
            });
            let m = metrics.entry(name).or_insert_with(|| json!({"histogram": {"dataPoints": [], "aggregationTemporality": 1}}));
            if let Some(points) = m["histogram"]["dataPoints"].as_array_mut() {
                points.push(point);
            }
        }
        let metrics: Vec<Value> = metrics
            .into_iter()
            .map(|(name, mut body)| {
                let i = self.instruments.get(name).copied().unwrap_or(Instrument { name, unit: "", description: "" });
                if let Some(o) = body.as_object_mut() {
                    o.insert("name".into(), name.into());
                    o.insert("unit".into(), i.unit.into());
                    o.insert("description".into(), i.description.into());
                }
                body
            })
            .collect();
        self.start_ms = now_ms;
        let resource = json!({"attributes": [
            {"key": "service.name", "value": {"stringValue": service}},
            {"key": "service.instance.id", "value": {"stringValue": instance}}
        ]});
        let scope = json!({"name": "edgegate", "version": env!("CARGO_PKG_VERSION")});
        Some(json!({"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"scope": scope, "metrics": metrics}]}]}).to_string())
    }
}

/// Epoch milliseconds as OTLP's nanosecond string.
fn nanos(ms: u64) -> String {
    (u128::from(ms) * 1_000_000).to_string()
}
