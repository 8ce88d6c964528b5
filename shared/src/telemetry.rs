//! Telemetry records: what the record phase writes for every request, success or failure.
//!
//! Records carry ids, decisions, timings and usage — never prompt text, keys or secrets.

use serde::Serialize;

use crate::chat::Usage;
use crate::health::BreakerEvent;
use crate::ledger::BudgetAlert;
use crate::routing::Decision;

/// Version of the record schema; bumped on any incompatible change.
pub const RECORD_SCHEMA: u32 = 1;

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// Provider id from policy.
    pub provider: String,
    /// Model name sent upstream.
    pub model: String,
    /// Upstream HTTP status, if one was received.
    pub status: Option<u16>,
    /// Error label if the attempt failed.
    pub error: Option<&'static str>,
    /// Milliseconds from sending to the response head.
    pub duration_ms: u64,
    /// Whether the deployment's breaker was open and it was tried only because a critical route
    /// had nothing else.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// When it was sent, epoch milliseconds.
    pub start_ms: u64,
    /// Its span (`provider.inference`), also sent upstream in `traceparent`.
    pub span_id: String,
}

/// How long one phase of a request took (spans of the request's trace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseTiming {
    /// The span name, e.g. `policy.firewall`.
    pub name: &'static str,
    /// Start, epoch milliseconds.
    pub start_ms: u64,
    /// Milliseconds. (On Workers the clock advances only across I/O, so pure computation
    /// shows as 0.)
    pub duration_ms: u64,
}

/// A shadow request: the same chat sent to a route's shadow target after the answer, side by side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowRecord {
    /// Provider id of the shadow target.
    pub provider: String,
    /// Model sent upstream.
    pub model: String,
    /// Upstream status, if one was received.
    pub status: Option<u16>,
    /// Error label if it failed.
    pub error: Option<&'static str>,
    /// Milliseconds to the shadow's whole answer.
    pub duration_ms: u64,
    /// Milliseconds to the caller's whole answer, for comparison.
    pub primary_duration_ms: u64,
    /// The shadow's token usage.
    pub usage: Option<Usage>,
    /// What the shadow cost, micro-dollars — shadow spend, never charged to the caller.
    pub cost_micro_usd: Option<u64>,
    /// How alike the two answers' texts are, 0-1000 (Jaccard similarity of their word sets).
    pub similarity_permille: Option<u16>,
}

impl RequestRecord {
    /// The GenAI operation of the request's route: `chat`, `embeddings`, or empty for others.
    pub fn operation(&self) -> &'static str {
        match self.route {
            "POST /v1/embeddings" => "embeddings",
            "POST /v1/chat/completions" | "POST /v1/messages" => "chat",
            _ => "",
        }
    }

    /// The attempt that answered (the last that did not fail).
    pub fn served(&self) -> Option<&AttemptRecord> {
        self.attempts.iter().rev().find(|a| a.error.is_none())
    }

    /// Whether the request failed or carries something to act on (see
    /// [`crate::policy::RequestLogs::Notable`]).
    pub fn is_notable(&self) -> bool {
        let faults = [self.policy_fault, self.health_fault, self.audit_fault, self.cache.as_ref().and_then(|c| c.fault)];
        self.status >= 400
            || self.error.is_some()
            || self.attempts.iter().any(|a| a.error.is_some())
            || self.firewall.is_some()
            || self.guard.is_some()
            || !self.budget_alerts.is_empty()
            || self.containment.as_ref().is_some_and(|c| !c.engaged.is_empty())
            || !self.breaker_events.is_empty()
            || !self.credential_fallbacks.is_empty()
            || self.degraded.is_some()
            || self.retry_budget_exhausted
            || faults.iter().any(Option::is_some)
    }

    /// Whether a candidate after the first answered.
    pub fn failed_over(&self) -> bool {
        self.served().zip(self.attempts.first()).is_some_and(|(s, first)| !std::ptr::eq(s, first))
    }
}

/// How alike two texts are, 0-1000: the Jaccard similarity of their sets of lower-cased words.
/// Two empty texts are alike.
pub fn similarity(a: &str, b: &str) -> u16 {
    use std::collections::BTreeSet;
    let words = |s: &str| -> BTreeSet<String> {
        s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
    };
    let (a, b) = (words(a), words(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 1000;
    }
    let shared = a.intersection(&b).count();
    u16::try_from(shared * 1000 / union).unwrap_or(1000)
}

/// Everything the gateway decided and observed for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// Always [`RECORD_SCHEMA`].
    pub schema: u32,
    /// The `x-request-id` sent to the client.
    pub request_id: String,
    /// W3C trace id (32 hex): the caller's from `traceparent`, or a new one.
    pub trace_id: String,
    /// This request's root span (`gateway.ingress`), 16 hex.
    pub span_id: String,
    /// The caller's span, when `traceparent` named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Whether the trace is sampled (the caller's flag, else the policy's percentage).
    #[serde(skip)]
    pub sampled: Option<bool>,
    /// Start of the request, epoch milliseconds.
    pub start_ms: u64,
    /// HTTP method and path (the route template, not the raw URL).
    pub route: &'static str,
    /// Version of the policy snapshot that decided the request.
    pub policy_version: Option<String>,
    /// Why the policy could not be refreshed, when the last good snapshot was served instead.
    pub policy_fault: Option<&'static str>,
    /// Tenant, once authenticated.
    pub tenant: Option<String>,
    /// API key id (never the key), once authenticated.
    pub key_id: Option<String>,
    /// Model alias the caller asked for.
    pub model: Option<String>,
    /// The product feature the request named, if the tenant declares it.
    pub feature: Option<String>,
    /// Messages dropped from the prompt (its oldest turns) to fit its cap, on routes whose
    /// `over_prompt_cap` is `drop_oldest_turns`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_messages: Option<usize>,
    /// The overflow alias that served the request after a limit (or every provider's quota)
    /// refused the one asked for.
    pub overflow: Option<String>,
    /// How the route phase decided: strategy, class, origin, residency constraints and what
    /// they removed, deployments with open breakers.
    pub routing: Option<Decision>,
    /// `alias` or `reply` when a non-critical route answered in degraded mode.
    pub degraded: Option<&'static str>,
    /// Whether the route's retry budget stopped failover.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry_budget_exhausted: bool,
    /// Whether the caller asked for a stream.
    pub stream: bool,
    /// Status sent to the client.
    pub status: u16,
    /// Error label when the request failed, including failures after a stream had started.
    pub error: Option<&'static str>,
    /// Every upstream attempt in order.
    pub attempts: Vec<AttemptRecord>,
    /// Token usage reported by the provider.
    pub usage: Option<Usage>,
    /// What the answer cost, in micro-dollars: usage at the price policy gives the target that
    /// answered (absent when either is unknown).
    pub cost_micro_usd: Option<u64>,
    /// Budget thresholds this request's settlement crossed (each is raised once per period).
    pub budget_alerts: Vec<BudgetAlert>,
    /// Circuit breaker transitions at this location that the health sync made with this
    /// request's observations (each transition is reported once, by the location's board).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breaker_events: Vec<BreakerEvent>,
    /// Whether the prompt's injection score reached the threshold, when it was screened (the
    /// firewall looks for injection on its route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspicious: Option<bool>,
    /// What the prompt firewall found and did (rule ids, never text), when it found anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<crate::firewall::Verdict>,
    /// Personal data the guard phase found in the answer (rule ids), and what it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::firewall::OutputVerdict>,
    /// Containment: the request's contained scopes (it was screened by the containment firewall
    /// and held to lower limits), and the containment its screening engaged — the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containment: Option<crate::ledger::Containment>,
    /// The shadow request of a sampled request, sent after the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord>,
    /// Why the location's health board could not be read or written, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_fault: Option<&'static str>,
    /// Providers that refused their first credential for this request, so the second was used
    /// (credential rotation in progress, or a revoked key: an event worth an alert).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credential_fallbacks: Vec<String>,
    /// What the edge cache did, on routes with a cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheRecord>,
    /// Milliseconds the request waited in turn for room under a limit (routes with `queue_ms`),
    /// when it waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    /// What a `POST /v1/feedback` scored, and the canary it ended, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<crate::feedback::FeedbackRecord>,
    /// The audit log's head after this request's entry was appended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::Head>,
    /// Why the audit entry could not be appended, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_fault: Option<&'static str>,
    /// Milliseconds from start to the first content sent, for streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<u64>,
    /// The phases the request went through, timed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseTiming>,
    /// Milliseconds from start to the end of the response (end of stream for streams).
    pub duration_ms: u64,
}
