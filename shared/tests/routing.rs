//! Routing through the whole pipeline on the deterministic test host: residency that fails
//! closed, breakers that open and close, the retry budget, provider-quota overflow, and degraded
//! mode.

use bytes::Bytes;
use edgegate_core::Gateway;
use edgegate_core::policy::key_hash_string;
use edgegate_core::routing::Origin;
use edgegate_core::telemetry::RequestRecord;
use edgegate_core::testkit::{Scripted, TestHost};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000_000;

const OK: &str = r#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hey"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

fn policy(models: Value) -> String {
    json!({
        "tenants": [
            {"id": "eu-co", "residency": {"regions": ["eu"]}},
            {"id": "global", "residency": {"by_origin": {"continent:EU": {"regions": ["eu"]}}}}
        ],
        "keys": [
            {"id": "eu", "tenant": "eu-co", "hash": key_hash_string("sk-eu")},
            {"id": "g", "tenant": "global", "hash": key_hash_string("sk-g")},
            {"id": "relay", "tenant": "global", "hash": key_hash_string("sk-relay"), "roles": ["invoke", "origin:assert"]}
        ],
        "providers": [
            {"id": "eu-a", "kind": "openai_compatible", "base_url": "http://eu-a.test/v1", "location": {"region": "eu"}},
            {"id": "eu-b", "kind": "openai_compatible", "base_url": "http://eu-b.test/v1", "location": {"region": "eu"}},
            {"id": "us-a", "kind": "openai_compatible", "base_url": "http://us-a.test/v1", "location": {"region": "us"}}
        ],
        "models": models
    })
    .to_string()
}

fn chat_models() -> Value {
    json!([
        {"alias": "chat", "targets": [{"provider": "us-a", "model": "u"}, {"provider": "eu-a", "model": "a"}, {"provider": "eu-b", "model": "b"}]},
        {"alias": "us-only", "targets": [{"provider": "us-a", "model": "u"}]}
    ])
}

fn request(key: &str, model: &str, origin: Option<Origin>, headers: &[(&str, &str)]) -> http::Request<Bytes> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "ping"}]}).to_string();
    let mut b = http::Request::post("https://gw.example/v1/chat/completions").header("authorization", format!("Bearer {key}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Bytes::from(body)).unwrap_or_else(|_| unreachable!());
    if let Some(o) = origin {
        req.extensions_mut().insert(o);
    }
    req
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
    hosts: Vec<String>,
    record: RequestRecord,
}

fn call(h: &TestHost, gw: &Gateway, req: http::Request<Bytes>) -> Answer {
    let before = h.sent().len();
    let (parts, body) = h.call(gw, req);
    // Deferred work (settlement, health, shadow) runs here, as after a real response.
    let record = h.drain_records().pop().unwrap_or_else(|| unreachable!("every request is recorded"));
    let hosts = h.sent()[before..].iter().map(|r| r.uri().host().unwrap_or("").to_owned()).collect();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        hosts,
        record,
    }
}

fn eu() -> Option<Origin> {
    Some(Origin { country: Some("DE".into()), continent: Some("EU".into()), colo: Some("FRA".into()), asserted: false })
}

#[test]
fn an_eu_tenant_never_reaches_a_us_deployment_even_when_every_eu_one_is_down() {
    let h = TestHost::new(T0, &policy(chat_models()));
    let gw = Gateway::new();
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-eu", "chat", None, &[]));
    assert_eq!((a.status, a.hosts.clone()), (200, vec!["eu-a.test".to_owned()]), "us-a is listed first but removed");
    let routing = a.record.routing.unwrap_or_default();
    assert_eq!(routing.removed.len(), 1);
    assert_eq!(routing.removed[0].provider, "us-a");
    assert_eq!(routing.removed[0].reason, "tenant residency: region us is not one of [eu]");

    h.script(Scripted::json(503, r#"{"error":{"message":"down"}}"#));
    h.script(Scripted::Unreachable);
    let a = call(&h, &gw, request("sk-eu", "chat", None, &[]));
    assert_eq!(a.hosts, ["eu-a.test", "eu-b.test"], "never us-a");
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (503, Some("residency_unavailable")));
    let message = a.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("tenant regions eu") && message.contains("us-a (tenant residency: region us"), "{message}");
    assert_eq!(a.headers["x-should-retry"], "false", "the gateway already retried");

    // A route with no allowed deployment at all: refused before anything is sent or reserved.
    let a = call(&h, &gw, request("sk-eu", "us-only", None, &[]));
    assert_eq!((a.status, a.hosts.len()), (503, 0));
    assert_eq!(a.headers["x-should-retry"], "false");
}

#[test]
fn residency_follows_where_the_request_was_received_or_a_trusted_assertion() {
    let h = TestHost::new(T0, &policy(chat_models()));
    let gw = Gateway::new();
    h.script(Scripted::json(200, OK));
    assert_eq!(call(&h, &gw, request("sk-g", "chat", None, &[])).hosts, ["us-a.test"], "no origin: no constraint");
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", eu(), &[]));
    assert_eq!(a.hosts, ["eu-a.test"]);
    assert_eq!(a.record.routing.map(|r| r.origin.colo), Some(Some("FRA".to_owned())));

    let a = call(&h, &gw, request("sk-g", "chat", None, &[("x-edgegate-origin-continent", "EU")]));
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (403, Some("permission_denied")));
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-relay", "chat", None, &[("x-edgegate-origin-continent", "eu")]));
    assert_eq!(a.hosts, ["eu-a.test"], "a relay may say its user is in the EU");
}

fn failing_primary() -> Value {
    json!([
        {"alias": "chat", "targets": [{"provider": "eu-a", "model": "a"}, {"provider": "eu-b", "model": "b"}]},
        {"alias": "lite", "critical": false, "degraded": {"reply": "We are busy; try again shortly."},
         "targets": [{"provider": "eu-a", "model": "a"}]},
        {"alias": "fallback", "critical": false, "degraded": {"alias": "chat"}, "targets": [{"provider": "us-a", "model": "u"}]}
    ])
}

/// Five requests fail over from eu-a to eu-b: five failures in a row open eu-a's breaker.
fn open_eu_a(h: &TestHost, gw: &Gateway) {
    for _ in 0..5 {
        h.script(Scripted::json(503, "{}"));
        h.script(Scripted::json(200, OK));
        let a = call(h, gw, request("sk-g", "chat", None, &[]));
        assert_eq!((a.status, a.hosts.len()), (200, 2));
    }
}

#[test]
fn the_breaker_opens_after_failures_sends_traffic_to_the_healthy_deployment_then_probes_and_closes() {
    let h = TestHost::new(T0, &policy(failing_primary()));
    let gw = Gateway::new();
    open_eu_a(&h, &gw);
    // Open: eu-a is skipped; no retry needed.
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!(a.hosts, ["eu-b.test"]);
    assert_eq!(a.record.routing.map(|r| r.unhealthy), Some(vec!["eu-a".to_owned()]));

    // The location's board reports the transition once, when this isolate next syncs.
    h.advance(1_000);
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    let events: Vec<_> = a.record.breaker_events.iter().map(|e| (e.deployment.as_str(), e.failed, e.total)).collect();
    assert_eq!(events, [("eu-a", 5, 5)]);

    // After the open period, about one request in ten probes eu-a; two good probes close it.
    h.advance(15_000);
    let mut probes = 0;
    for _ in 0..200 {
        h.script(Scripted::json(200, OK));
        let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
        assert_eq!(a.status, 200);
        if a.hosts == ["eu-a.test"] {
            probes += 1;
        }
        if probes == 2 {
            break;
        }
    }
    assert_eq!(probes, 2);
    h.advance(1_000);
    for _ in 0..3 {
        h.script(Scripted::json(200, OK));
        assert_eq!(call(&h, &gw, request("sk-g", "chat", None, &[])).hosts, ["eu-a.test"], "closed again");
    }
}

#[test]
fn a_new_isolate_routes_its_first_request_by_the_location_board_read_beside_that_request() {
    let h = TestHost::new(T0, &policy(failing_primary()));
    let gw = Gateway::new();
    // One isolate opens eu-a's breaker and reports it to the location's board.
    open_eu_a(&h, &gw);
    h.advance(1_000);
    h.script(Scripted::json(200, OK));
    call(&h, &gw, request("sk-g", "chat", None, &[]));

    // A new isolate begins reading the board when its first request arrives, and the read is
    // still under way when the request has been validated: routing waits for it, and skips eu-a.
    h.slow_ledger(true);
    let fresh = Gateway::new();
    h.script(Scripted::json(200, OK));
    let a = call(&h, &fresh, request("sk-g", "chat", None, &[]));
    assert_eq!(a.hosts, ["eu-b.test"]);
    assert_eq!(a.record.routing.map(|r| r.unhealthy), Some(vec!["eu-a".to_owned()]));
    assert_eq!(a.record.health_fault, None);
}

#[test]
fn a_critical_route_still_tries_an_open_deployment_when_nothing_else_is_left() {
    let h = TestHost::new(T0, &policy(failing_primary()));
    let gw = Gateway::new();
    for _ in 0..10 {
        h.script(Scripted::json(503, "{}"));
        h.script(Scripted::json(503, "{}"));
        call(&h, &gw, request("sk-g", "chat", None, &[]));
    }
    // Both breakers are open: the critical route tries them anyway, as a last resort.
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!(a.status, 200);
    assert_eq!(a.record.attempts.iter().map(|t| t.forced).collect::<Vec<_>>(), [true]);
    // The non-critical route does not: it answers in degraded mode without calling anyone.
    let a = call(&h, &gw, request("sk-g", "lite", None, &[]));
    assert_eq!((a.status, a.hosts.len()), (200, 0));
    assert_eq!(a.body["choices"][0]["message"]["content"], "We are busy; try again shortly.");
    assert_eq!(a.headers["x-edgegate-degraded"], "reply");
    assert_eq!(a.record.degraded, Some("reply"));
}

#[test]
fn a_non_critical_route_degrades_to_a_cheaper_alias_when_every_target_fails() {
    let h = TestHost::new(T0, &policy(failing_primary()));
    let gw = Gateway::new();
    h.script(Scripted::json(500, "{}"));
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "fallback", None, &[]));
    assert_eq!((a.status, a.hosts.clone()), (200, vec!["us-a.test".to_owned(), "eu-a.test".to_owned()]));
    assert_eq!(a.headers["x-edgegate-degraded"], "alias");
    // The degraded alias obeys residency like any other: from the EU, us-a is never called.
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "fallback", eu(), &[]));
    assert_eq!((a.status, a.body["error"]["code"].as_str(), a.hosts.len()), (503, Some("residency_unavailable"), 0));
}

#[test]
fn the_retry_budget_caps_failover_and_then_the_caller_is_told_not_to_retry_either() {
    let models = json!([
        {"alias": "chat", "retry_budget_percent": 0, "targets": [{"provider": "eu-a", "model": "a"}, {"provider": "eu-b", "model": "b"}]}
    ]);
    let mut doc: Value = serde_json::from_str(&policy(models)).unwrap_or_default();
    // The breaker stays out of it: only the budget decides.
    doc["settings"] = json!({"breaker": {"min_requests": 100_000, "consecutive_failures": 0}});
    let h = TestHost::new(T0, &doc.to_string());
    let gw = Gateway::new();
    // Ten retries a second (100 per window) are always allowed.
    for _ in 0..100 {
        h.script(Scripted::json(502, "{}"));
        h.script(Scripted::json(200, OK));
        let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
        assert_eq!((a.status, a.hosts.clone()), (200, vec!["eu-a.test".to_owned(), "eu-b.test".to_owned()]));
    }
    h.script(Scripted::json(502, "{}"));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!((a.status, a.hosts.len()), (502, 1));
    assert!(a.record.retry_budget_exhausted);
    assert_eq!(a.headers["x-should-retry"], "false");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("retry budget"));
    // The window moves on and failover resumes.
    h.advance(10_000);
    h.script(Scripted::json(502, "{}"));
    h.script(Scripted::json(200, OK));
    assert_eq!(call(&h, &gw, request("sk-g", "chat", None, &[])).status, 200);
}

#[test]
fn provider_quota_sends_the_request_to_the_overflow_route_and_retry_after_is_honoured() {
    let models = json!([
        {"alias": "chat", "overflow": "spare", "targets": [{"provider": "eu-a", "model": "a"}]},
        {"alias": "spare", "targets": [{"provider": "eu-b", "model": "b"}]}
    ]);
    let h = TestHost::new(T0, &policy(models));
    let gw = Gateway::new();
    h.script(Scripted::Respond {
        status: 429,
        headers: vec![("retry-after", "20")],
        chunks: vec![Ok(Bytes::from_static(br#"{"error":{"message":"quota"}}"#))],
    });
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!((a.status, a.hosts.clone()), (200, vec!["eu-a.test".to_owned(), "eu-b.test".to_owned()]));
    assert_eq!(a.record.overflow.as_deref(), Some("spare"));
    // For the next 20 s eu-a is left alone: straight to the overflow route.
    h.advance(5_000);
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!(a.hosts, ["eu-b.test"]);
    h.advance(16_000);
    h.script(Scripted::json(200, OK));
    assert_eq!(call(&h, &gw, request("sk-g", "chat", None, &[])).hosts, ["eu-a.test"]);
}

#[test]
fn a_provider_that_hangs_times_out_and_the_plan_moves_on() {
    let models = json!([
        {"alias": "chat", "timeouts": {"connect_ms": 500, "first_byte_ms": 2_000, "total_ms": 5_000},
         "targets": [{"provider": "eu-a", "model": "a"}, {"provider": "eu-b", "model": "b"}]}
    ]);
    let h = TestHost::new(T0, &policy(models));
    let gw = Gateway::new();
    // No response head in 2 s.
    h.script(Scripted::Hang);
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!((a.status, a.hosts.len()), (200, 2));
    let connect = h.sent().last().and_then(|r| r.extensions().get::<edgegate_core::ports::ConnectTimeout>().copied());
    assert_eq!(connect, Some(edgegate_core::ports::ConnectTimeout(500)), "the host is told the connect bound");
    assert_eq!(a.record.attempts[0].error, Some("upstream_timeout"));
    assert_eq!(a.record.attempts[0].duration_ms, 2_000, "the first-byte timeout, on the fake clock");
    // A head, then a body that never ends: the total timeout.
    h.script(Scripted::Stall { status: 200, chunks: vec![Bytes::from_static(b"{\"id\":")] });
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!((a.status, a.record.attempts[0].error), (200, Some("upstream_timeout")));
    // Every target hangs: a 504 that says so.
    h.script(Scripted::Hang);
    h.script(Scripted::Hang);
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (504, Some("upstream_timeout")));
    // Timeouts count against the deployment: after a fourth in a row eu-a is one short of open.
    h.script(Scripted::Hang);
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!(a.status, 200);
    assert!(a.record.attempts.len() == 2 && a.record.attempts[0].error == Some("upstream_timeout"));
    h.script(Scripted::Hang);
    h.script(Scripted::json(200, OK));
    call(&h, &gw, request("sk-g", "chat", None, &[]));
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!(a.hosts, ["eu-b.test"], "five timeouts in a row opened eu-a's breaker");
}

#[test]
fn a_stream_that_stalls_after_content_ends_with_a_timeout_event() {
    let models = json!([{"alias": "chat", "timeouts": {"first_byte_ms": 1_000, "total_ms": 3_000}, "targets": [{"provider": "eu-a", "model": "a"}]}]);
    let h = TestHost::new(T0, &policy(models));
    let gw = Gateway::new();
    let chunk = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"a","choices":[{"index":0,"delta":{"content":"hel"},"finish_reason":null}]}"#;
    h.script(Scripted::Stall { status: 200, chunks: vec![Bytes::from(format!("{chunk}\n\n"))] });
    let body = json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "ping"}]}).to_string();
    let req = http::Request::post("https://gw.example/v1/chat/completions")
        .header("authorization", "Bearer sk-g")
        .body(Bytes::from(body))
        .unwrap_or_else(|_| unreachable!());
    let (parts, bytes) = h.call(&gw, req);
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(parts.status, 200);
    assert!(text.contains("hel") && text.contains("upstream_timeout") && !text.contains("[DONE]"), "{text}");
    assert!(text.contains("did not finish within 3000 ms"), "{text}");
    let record = h.drain_records().pop().unwrap_or_else(|| unreachable!());
    assert_eq!(record.error, Some("upstream_timeout"));
    // One timer serves both waits: armed for the first byte (1 s), it fired while the body was
    // still coming and was armed again for the rest of the total, so the stream ran 3 s.
    assert!(record.duration_ms >= 3_000, "the stream was cut at {} ms", record.duration_ms);
}

#[test]
fn shadow_traffic_is_sent_after_the_answer_compared_and_never_charged_to_the_caller() {
    let price = json!({"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0});
    let models = json!([
        {"alias": "chat", "targets": [{"provider": "eu-a", "model": "a"}],
         "shadow": {"percent": 100, "target": {"provider": "eu-b", "model": "b-next", "price": price}}},
        {"alias": "abroad", "targets": [{"provider": "eu-a", "model": "a"}],
         "shadow": {"percent": 100, "target": {"provider": "us-a", "model": "u"}}}
    ]);
    let mut doc: Value = serde_json::from_str(&policy(models)).unwrap_or_default();
    doc["tenants"][1]["limits"] = json!({"tokens_per_day": 1_000_000});
    let h = TestHost::new(T0, &doc.to_string());
    let gw = Gateway::new();
    h.script(Scripted::json(200, OK));
    let shadow_answer = r#"{"id":"s","object":"chat.completion","created":1,"model":"b-next","choices":[{"index":0,"message":{"role":"assistant","content":"hey there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#;
    h.script(Scripted::json(200, shadow_answer));
    let a = call(&h, &gw, request("sk-g", "chat", None, &[]));
    assert_eq!(a.status, 200);
    assert_eq!(a.body["choices"][0]["message"]["content"], "hey", "the caller gets the primary's answer");
    assert_eq!(a.hosts, ["eu-a.test", "eu-b.test"], "the shadow is sent after the answer");
    let sent = h.sent();
    let mirrored: Value = serde_json::from_slice(sent[1].body()).unwrap_or_default();
    assert_eq!((mirrored["model"].as_str(), mirrored.get("stream")), (Some("b-next"), None));
    let shadow = a.record.shadow.unwrap_or_else(|| unreachable!("the record has the shadow"));
    assert_eq!((shadow.provider.as_str(), shadow.status, shadow.error), ("eu-b", Some(200), None));
    assert_eq!(shadow.similarity_permille, Some(500), "{{hey}} vs {{hey, there}}");
    assert_eq!(shadow.cost_micro_usd, Some(2_000), "1,000 × $1/M + 500 × $2/M");
    assert_eq!(a.record.usage.map(|u| u.prompt_tokens()), Some(5), "the caller's usage is the primary's");
    let book = h.book("global").unwrap_or_default();
    assert_eq!(book.used("tenant/tokens_per_day", edgegate_core::ledger::Window::Day, T0), 6, "only the primary's 6 tokens count");

    // Residency applies to shadows: from the EU, the US shadow is not sent.
    h.script(Scripted::json(200, OK));
    let a = call(&h, &gw, request("sk-g", "abroad", eu(), &[]));
    assert_eq!((a.hosts, a.record.shadow), (vec!["eu-a.test".to_owned()], None));
}

#[test]
fn timeouts_must_nest() {
    let bad = |t: Value| {
        let models = json!([{"alias": "chat", "timeouts": t, "targets": [{"provider": "eu-a", "model": "a"}]}]);
        edgegate_core::policy::Policy::compile(policy(models).as_bytes()).err().map(|e| e[0].path.clone())
    };
    assert_eq!(bad(json!({"connect_ms": 300, "first_byte_ms": 200})), Some("models[0].timeouts".into()));
    assert_eq!(bad(json!({"first_byte_ms": 0})), Some("models[0].timeouts".into()));
    assert_eq!(bad(json!({"first_byte_ms": 5_000, "total_ms": 4_000})), Some("models[0].timeouts".into()));
    assert_eq!(bad(json!({"connect_ms": 100, "first_byte_ms": 200, "total_ms": 300})), None);
}
