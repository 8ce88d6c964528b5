//! Traces from request records: one span per phase, exported as OTLP/HTTP JSON.
//!
//! The gateway times each phase as it runs (`RequestRecord::phases`) and each upstream attempt
//! (`AttemptRecord`); [`spans`] turns a finished record into the request's spans — the root
//! `gateway.ingress` (a server span, child of the caller's `traceparent` when there was one), a
//! child per phase (`gateway.normalize_prompt`, `policy.firewall`, `router.route_decision`,
//! `router.policy_eval`, `router.select_provider`, `response.guardrail`) and a client span
//! `provider.inference` per attempt under `router.select_provider`, whose id is the one sent
//! upstream in `traceparent`. Attributes follow the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.*`), plus `edgegate.*` for the gateway's own decisions.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::telemetry::RequestRecord;

/// A caller's W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The caller's sampled flag.
    pub sampled: bool,
}

/// Parses a `traceparent` header (W3C Trace Context): `version-traceid-spanid-flags`. Invalid
/// values (wrong lengths, upper case, all-zero ids, version `ff`) are ignored, as the standard says.
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && span_id.bytes().any(|b| b != b'0');
    let flags = u8::from_str_radix(flags, 16).ok()?;
    valid.then(|| Parent { trace_id: trace_id.to_owned(), span_id: span_id.to_owned(), sampled: flags & 1 == 1 })
}

/// Whether `record`'s trace is kept: the caller's sampled flag if it sent one, else
/// `percent` of traces, decided by the trace id (so every service sampling by id agrees).
pub fn sampled(record: &RequestRecord, percent: u8) -> bool {
    record.sampled.unwrap_or_else(|| {
        let head = record.trace_id.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok()).unwrap_or(0);
        u64::from(head) * 100 < u64::from(percent) * (1 << 32)
    })
}

/// A phase's span id: derived from the root's, so it needs no randomness.
fn child_id(root: &str, name: &str, index: usize) -> String {
    let digest = Sha256::digest(format!("{root}/{name}/{index}").as_bytes());
    crate::policy::hex(digest.get(..8).unwrap_or_default())
}

fn nanos(ms: u64) -> String {
    (u128::from(ms) * 1_000_000).to_string()
}

fn attr(key: &str, value: Value) -> Value {
    let v = match value {
        Value::String(s) => json!({"stringValue": s}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) => match n.as_i64() {
            Some(i) => json!({"intValue": i.to_string()}),
            None => json!({"doubleValue": n.as_f64()}),
        },
        Value::Array(items) => {
            json!({"arrayValue": {"values": items.into_iter().map(|i| json!({"stringValue": i.as_str().unwrap_or("")})).collect::<Vec<_>>()}})
        }
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": v})
}

#[allow(clippy::too_many_arguments)]
fn span(
    record: &RequestRecord,
    id: &str,
    parent: Option<&str>,
    name: &str,
    kind: u8,
    start_ms: u64,
    end_ms: u64,
    attributes: Vec<Value>,
    error: Option<&str>,
) -> Value {
    let mut s = json!({
        "traceId": record.trace_id, "spanId": id, "name": name, "kind": kind,
        "startTimeUnixNano": nanos(start_ms), "endTimeUnixNano": nanos(end_ms.max(start_ms)),
        "attributes": attributes,
        "status": match error { Some(e) => json!({"code": 2, "message": e}), None => json!({}) },
    });
    if let (Some(p), Some(o)) = (parent, s.as_object_mut()) {
        o.insert("parentSpanId".into(), p.into());
    }
    s
}

/// The spans of one finished request (see the module docs).
pub fn spans(r: &RequestRecord) -> Vec<Value> {
    let end = r.start_ms + r.duration_ms;
    let alias = r.model.clone().unwrap_or_default();
    let served = r.served();
    let operation = r.operation();
    let mut root = vec![
        attr("http.route", r.route.into()),
        attr("http.response.status_code", u64::from(r.status).into()),
        attr("edgegate.request_id", r.request_id.clone().into()),
    ];
    let optional = [
        ("gen_ai.operation.name", (!operation.is_empty()).then(|| operation.into())),
        ("gen_ai.request.model", r.model.clone().map(Value::from)),
        ("gen_ai.provider.name", served.map(|a| a.provider.clone().into())),
        ("gen_ai.response.model", served.map(|a| a.model.clone().into())),
        ("gen_ai.usage.input_tokens", r.usage.map(|u| u.prompt_tokens().into())),
        ("gen_ai.usage.output_tokens", r.usage.map(|u| u.completion_tokens().into())),
        ("gen_ai.usage.cache_read.input_tokens", r.usage.map(|u| u.cache_read.into())),
        ("gen_ai.usage.reasoning.output_tokens", r.usage.map(|u| u.reasoning.into())),
        ("error.type", r.error.map(Value::from)),
        ("edgegate.tenant", r.tenant.clone().map(Value::from)),
        ("edgegate.policy_version", r.policy_version.clone().map(Value::from)),
        ("edgegate.routing.strategy", r.routing.as_ref().and_then(|d| serde_json::to_value(d.strategy).ok())),
        ("edgegate.residency.removed", r.routing.as_ref().map(|d| (d.removed.len() as u64).into())),
        ("edgegate.fallback", Some((r.failed_over() || r.overflow.is_some()).into())),
        ("edgegate.overflow", r.overflow.clone().map(Value::from)),
        ("edgegate.degraded", r.degraded.map(Value::from)),
        ("edgegate.prompt.truncated_messages", r.truncated_messages.map(|n| (n as u64).into())),
        ("edgegate.cost_micro_usd", r.cost_micro_usd.map(Value::from)),
        ("edgegate.stream", Some(r.stream.into())),
    ];
    root.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| attr(k, v))));
    let root_error = (r.status >= 500).then_some(r.error.unwrap_or("server_error"));
    let mut out = vec![span(r, &r.span_id, r.parent_span_id.as_deref(), "gateway.ingress", 2, r.start_ms, end, root, root_error)];

    let mut select: Option<String> = None;
    for (i, p) in r.phases.iter().enumerate() {
        let id = child_id(&r.span_id, p.name, i);
        let mut attributes = Vec::new();
        if p.name == "cache.lookup"
            && let Some(c) = &r.cache
        {
            attributes.push(attr("edgegate.cache.status", c.status.into()));
        }
        if p.name == "policy.firewall" {
            if let Some(v) = &r.firewall {
                attributes.push(attr("edgegate.firewall.action", v.action.unwrap_or("").into()));
                attributes.push(attr("edgegate.firewall.score", u64::from(v.score).into()));
                let mut rules: Vec<&str> = v.findings.iter().map(|f| f.rule).collect();
                rules.dedup();
                attributes.push(attr("edgegate.firewall.rules", rules.into()));
            }
            if let Some(s) = r.suspicious {
                attributes.push(attr("edgegate.firewall.suspicious", s.into()));
            }
        }
        if p.name == "router.route_decision"
            && let Some(d) = &r.routing
        {
            attributes.push(attr("edgegate.routing.strategy", serde_json::to_value(d.strategy).unwrap_or_default()));
            let removed: Vec<String> = d.removed.iter().filter_map(|x| serde_json::to_value(x).ok()).map(|v| v.to_string()).collect();
            attributes.push(attr("edgegate.residency.removed", removed.into()));
        }
        if p.name == "response.guardrail"
            && let Some(g) = &r.guard
        {
            attributes.push(attr("edgegate.guard.action", g.action.into()));
            attributes.push(attr("edgegate.guard.rules", g.rules.clone().into()));
        }
        if p.name == "router.select_provider" {
            select = Some(id.clone());
        }
        out.push(span(r, &id, Some(&r.span_id), p.name, 1, p.start_ms, p.start_ms + p.duration_ms, attributes, None));
    }
    for (n, a) in r.attempts.iter().enumerate() {
        let mut attributes = vec![
            attr("gen_ai.operation.name", operation.into()),
            attr("gen_ai.provider.name", a.provider.clone().into()),
            attr("gen_ai.request.model", alias.clone().into()),
            attr("gen_ai.response.model", a.model.clone().into()),
            attr("edgegate.attempt", (n as u64 + 1).into()),
        ];
        if let Some(s) = a.status {
            attributes.push(attr("http.response.status_code", u64::from(s).into()));
        }
        if let Some(e) = a.error {
            attributes.push(attr("error.type", e.into()));
        }
        if a.forced {
            attributes.push(attr("edgegate.forced", true.into()));
        }
        let parent = select.as_deref().unwrap_or(&r.span_id);
        out.push(span(r, &a.span_id, Some(parent), "provider.inference", 3, a.start_ms, a.start_ms + a.duration_ms, attributes, a.error));
    }
    out
}

/// An OTLP/HTTP JSON `ExportTraceServiceRequest` of `spans` from `service` / `instance`.
pub fn export_body(spans: Vec<Value>, service: &str, instance: &str) -> String {
    let resource = json!({"attributes": [
        {"key": "service.name", "value": {"stringValue": service}},
        {"key": "service.instance.id", "value": {"stringValue": instance}}
    ]});
    let scope = json!({"name": "edgegate", "version": env!("CARGO_PKG_VERSION")});
    json!({"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans}]}]}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let ok = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            ok,
            Some(Parent { trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(), span_id: "00f067aa0ba902b7".into(), sampled: true })
        );
        assert_eq!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").map(|p| p.sampled), Some(false));
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }
}
