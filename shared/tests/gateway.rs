//! The whole pipeline on the deterministic test host: every endpoint, every error class, limits,
//! failover, streams that end well, end badly, or are abandoned.

use bytes::Bytes;
use edgegate_core::testkit::{Scripted, TestHost};
use edgegate_core::{Error, ErrorKind, Gateway};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000_000;

fn policy() -> String {
    json!({
        "tenants": [
            {"id": "acme", "limits": {"requests_per_minute": 3}},
            {"id": "free"}
        ],
        "keys": [
            {"id": "acme-1", "tenant": "acme", "hash": edgegate_core::policy::key_hash_string("sk-acme")},
            {"id": "free-1", "tenant": "free", "hash": edgegate_core::policy::key_hash_string("sk-free"), "models": ["mock"]}
        ],
        "providers": [
            {"id": "builtin", "kind": "mock"},
            {"id": "primary", "kind": "openai_compatible", "base_url": "http://127.0.0.1:7001/v1", "api_key_secret": "PRIMARY_KEY"},
            {"id": "backup", "kind": "openai_compatible", "base_url": "http://127.0.0.1:7002/v1/"}
        ],
        "models": [
            {"alias": "mock", "targets": [{"provider": "builtin", "model": "mock-1"}]},
            {"alias": "real", "targets": [{"provider": "primary", "model": "gpt-x"}, {"provider": "backup", "model": "gpt-y"}]}
        ]
    })
    .to_string()
}

fn host() -> TestHost {
    let h = TestHost::new(T0, &policy());
    h.set_secret("PRIMARY_KEY", "sk-upstream-secret");
    h
}

fn post(key: Option<&str>, body: &str) -> http::Request<Bytes> {
    let mut b = http::Request::post("https://gw.example/v1/chat/completions");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Bytes::copy_from_slice(body.as_bytes())).unwrap_or_else(|_| unreachable!())
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "ping"}], "stream": stream}).to_string()
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_owned()
    }
}

fn call(h: &TestHost, gw: &Gateway, req: http::Request<Bytes>) -> Answer {
    let (parts, body) = h.call(gw, req);
    Answer { status: parts.status.as_u16(), headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

#[test]
fn mock_chat_answers_in_openai_shape_with_request_id_and_record() {
    let (h, gw) = (host(), Gateway::new());
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("mock", false)));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-1");
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| c.ends_with("You said: ping")));
    let rid = a.headers["x-request-id"].to_str().unwrap_or_default().to_owned();
    assert!(rid.starts_with("req_") && rid.len() == 28, "{rid}");
    assert_eq!(a.headers["x-ratelimit-remaining-requests"], "2");
    assert!(a.headers.contains_key("x-edgegate-policy-version"));

    let recs = h.records();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(
        (r.request_id.as_str(), r.status, r.tenant.as_deref(), r.key_id.as_deref()),
        (rid.as_str(), 200, Some("acme"), Some("acme-1"))
    );
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.usage.map(|u| u.completion_tokens()), v["usage"]["completion_tokens"].as_u64());
    assert!(h.sent().is_empty(), "the mock never touches the network");
}

#[test]
fn mock_stream_is_sse_ending_in_done_with_usage_only_when_asked() {
    let (h, gw) = (host(), Gateway::new());
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("mock", true)));
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["content-type"], "text/event-stream");
    assert!(a.body.ends_with("data: [DONE]\n\n"), "{}", a.body);
    let text: String = a
        .body
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert!(text.ends_with("You said: ping"), "{text}");
    assert!(!a.body.contains("\"usage\""), "usage chunk is stripped unless asked for");
    assert!(h.records()[0].usage.is_some(), "but the gateway still knows it");

    let body =
        json!({"model": "mock", "messages": [{"role": "user", "content": "x"}], "stream": true, "stream_options": {"include_usage": true}});
    let a = call(&h, &gw, post(Some("sk-acme"), &body.to_string()));
    assert!(a.body.contains("\"usage\""));
}

#[test]
fn every_error_class_is_openai_shaped_with_a_request_id() {
    let (h, gw) = (host(), Gateway::new());
    let cases: Vec<(http::Request<Bytes>, u16, &str)> = vec![
        (post(None, &chat("mock", false)), 401, "missing_api_key"),
        (post(Some("sk-wrong"), &chat("mock", false)), 401, "invalid_api_key"),
        (post(Some("sk-free"), &chat("nope", false)), 404, "model_not_found"),
        (post(Some("sk-free"), &chat("real", false)), 404, "model_not_found"),
        (post(Some("sk-free"), "{\"model\":"), 400, "invalid_json"),
        (post(Some("sk-free"), r#"{"model":"mock","messages":[]}"#), 400, "invalid_request"),
        (post(Some("sk-free"), r#"{"model":"mock"}"#), 400, "invalid_request"),
        (
            http::Request::get("https://gw/v1/chat/completions").body(Bytes::new()).unwrap_or_else(|_| unreachable!()),
            405,
            "method_not_allowed",
        ),
        (http::Request::get("https://gw/v2/everything").body(Bytes::new()).unwrap_or_else(|_| unreachable!()), 404, "route_not_found"),
        (post(Some("sk-free"), &"x".repeat(edgegate_core::MAX_REQUEST_BYTES + 1)), 413, "payload_too_large"),
    ];
    for (req, status, code) in cases {
        let a = call(&h, &gw, req);
        assert_eq!((a.status, a.code().as_str()), (status, code), "{}", a.body);
        let e = &a.json()["error"];
        assert!(e["message"].is_string() && e["type"].is_string() && e.get("param").is_some(), "{}", a.body);
        assert!(a.headers.contains_key("x-request-id"));
        assert_eq!(a.headers["content-type"], "application/json");
    }
    let recs = h.records();
    assert_eq!(recs.len(), 10, "every request is recorded, failures too");
    assert!(recs.iter().all(|r| r.error.is_some() && r.status >= 400));
}

#[test]
fn oversized_headers_get_431_and_a_request_at_the_limit_is_served() {
    let (h, gw) = (host(), Gateway::new());
    let with = |name: &str, value: String| {
        let mut req = post(Some("sk-free"), &chat("mock", false));
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| unreachable!()),
            value.parse().unwrap_or_else(|_| unreachable!()),
        );
        req
    };
    // One header of 40 KiB, in both dialects.
    let a = call(&h, &gw, with("x-big", "v".repeat(40 << 10)));
    assert_eq!((a.status, a.code().as_str()), (431, "headers_too_large"), "{}", a.body);
    assert!(a.headers.contains_key("x-request-id"));
    let mut anthropic = with("x-big", "v".repeat(40 << 10));
    *anthropic.uri_mut() = "https://gw/v1/messages".parse().unwrap_or_else(|_| unreachable!());
    let a = call(&h, &gw, anthropic);
    assert_eq!(a.status, 431);
    assert_eq!(
        (a.json()["type"].as_str(), a.json()["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error")),
        "{}",
        a.body
    );
    // Too many small headers.
    let mut req = post(Some("sk-free"), &chat("mock", false));
    for i in 0..edgegate_core::MAX_HEADERS {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap_or_else(|_| unreachable!()),
            http::HeaderValue::from_static("1"),
        );
    }
    assert_eq!(call(&h, &gw, req).status, 431);
    // A large but acceptable header (a long JWT, say) is served.
    assert_eq!(call(&h, &gw, with("x-big", "v".repeat(16 << 10))).status, 200);
}

#[test]
fn a_request_its_host_could_not_read_gets_400_in_the_callers_dialect_and_is_recorded() {
    use edgegate_core::Unreadable;
    let (h, gw) = (host(), Gateway::new());
    let why = "header `x-note` has a control byte";
    let a = call(&h, &gw, Unreadable::request("POST", "https://gw.example/v1/chat/completions", why));
    assert_eq!((a.status, a.code().as_str()), (400, "invalid_request"), "{}", a.body);
    assert!(a.json()["error"]["message"].as_str().is_some_and(|m| m.contains(why)), "{}", a.body);
    assert!(a.headers.contains_key("x-request-id"));
    let a = call(&h, &gw, Unreadable::request("POST", "https://gw.example/v1/messages", why));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["type"].as_str(), Some("error"), "in the Anthropic dialect: {}", a.body);
    // What the host could not read is refused even where the route alone would have answered.
    assert_eq!(call(&h, &gw, Unreadable::request("GET", "/healthz", why)).status, 400);
    // An unknown path stays unknown; an unusable method or URI does not break the answer.
    assert_eq!(call(&h, &gw, Unreadable::request("POST", "/nowhere", why)).status, 404);
    assert_eq!(call(&h, &gw, Unreadable::request("BAD METHOD", "not a uri", why)).status, 404);
    let recs = h.records();
    assert_eq!(recs.len(), 5, "every refusal is recorded");
    assert_eq!(recs[0].error, Some("invalid_request"));
    assert_eq!((recs[0].route, recs[0].status), ("POST /v1/chat/completions", 400));
}

#[test]
fn the_admin_api_is_off_unless_turned_on_and_cors_is_never_granted() {
    let (h, gw) = (host(), Gateway::new());
    h.set_secret("EDGEGATE_ADMIN_KEY", "sk-boot");
    let get = |path: &str| {
        http::Request::get(format!("https://gw{path}"))
            .header("authorization", "Bearer sk-boot")
            .body(Bytes::new())
            .unwrap_or_else(|_| unreachable!())
    };
    // Off by default, even with a bootstrap key: every path is unknown, whatever the credential.
    for path in ["/admin/policy", "/admin/keys", "/admin/nothing"] {
        let a = call(&h, &gw, get(path));
        assert_eq!((a.status, a.code().as_str()), (404, "route_not_found"), "{path}: {}", a.body);
        assert!(a.json()["error"]["message"].as_str().is_some_and(|m| m.contains("EDGEGATE_ADMIN_API")));
    }
    h.set_secret("EDGEGATE_ADMIN_API", "yes please");
    assert_eq!(call(&h, &gw, get("/admin/policy")).status, 404, "only `on` turns it on");
    h.set_secret("EDGEGATE_ADMIN_API", "on");
    assert_eq!(call(&h, &gw, get("/admin/policy")).status, 200);

    // CORS: a preflight is refused and no response grants a cross-origin read.
    let preflight = http::Request::options("https://gw/v1/chat/completions")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .body(Bytes::new())
        .unwrap_or_else(|_| unreachable!());
    let a = call(&h, &gw, preflight);
    assert_eq!(a.status, 405);
    let mut req = post(Some("sk-free"), &chat("mock", false));
    req.headers_mut().insert("origin", http::HeaderValue::from_static("https://evil.example"));
    let b = call(&h, &gw, req);
    assert_eq!(b.status, 200);
    for answer in [&a, &b] {
        assert!(answer.headers.keys().all(|k| !k.as_str().starts_with("access-control-")), "{:?}", answer.headers);
    }
}

#[test]
fn tenant_limit_refuses_with_retry_after_then_recovers_next_window() {
    let (h, gw) = (host(), Gateway::new());
    for _ in 0..3 {
        assert_eq!(call(&h, &gw, post(Some("sk-acme"), &chat("mock", false))).status, 200);
    }
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("mock", false)));
    assert_eq!((a.status, a.code().as_str()), (429, "rate_limit_exceeded"));
    assert_eq!(a.headers["retry-after"], "60"); // T0 is aligned to a minute
    assert_eq!(a.headers["x-ratelimit-remaining-requests"], "0");
    // Another tenant is unaffected.
    assert_eq!(call(&h, &gw, post(Some("sk-free"), &chat("mock", false))).status, 200);
    h.advance(60_000);
    assert_eq!(call(&h, &gw, post(Some("sk-acme"), &chat("mock", false))).status, 200);
}

#[test]
fn openai_compatible_upstream_gets_the_target_model_and_credential() {
    let (h, gw) = (host(), Gateway::new());
    let upstream = r#"{"id":"x","object":"chat.completion","created":1,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"hey"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6},"system_fingerprint":"fp"}"#;
    h.script(Scripted::json(200, upstream));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!(a.status, 200);
    assert_eq!(a.body, upstream, "a compatible answer passes through unchanged");
    let sent = h.sent();
    assert_eq!(sent[0].uri(), "http://127.0.0.1:7001/v1/chat/completions");
    assert_eq!(sent[0].headers()["authorization"], "Bearer sk-upstream-secret");
    let body: Value = serde_json::from_slice(sent[0].body()).unwrap_or_default();
    assert_eq!(body["model"], "gpt-x");
    assert!(!a.body.contains("sk-upstream-secret"));
}

#[test]
fn failover_walks_the_plan_and_reports_every_attempt() {
    let (h, gw) = (host(), Gateway::new());
    let ok = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"b"}}]}"#;
    h.script(Scripted::json(503, r#"{"error":{"message":"overloaded"}}"#));
    h.script(Scripted::json(200, ok));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!((a.status, a.body.as_str()), (200, ok));
    assert_eq!(h.sent()[1].uri(), "http://127.0.0.1:7002/v1/chat/completions");
    assert!(!h.sent()[1].headers().contains_key("authorization"));

    h.script(Scripted::Unreachable);
    h.script(Scripted::json(500, "oops"));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!((a.status, a.code().as_str()), (502, "upstream_error"));
    assert!(a.json()["error"]["message"].as_str().is_some_and(|m| m.contains("all 2 providers failed")), "{}", a.body);

    let recs = h.records();
    let attempts: Vec<(Option<u16>, Option<&str>)> = recs[1].attempts.iter().map(|t| (t.status, t.error)).collect();
    assert_eq!(attempts, [(None, Some("upstream_unavailable")), (Some(500), Some("upstream_error"))]);
}

#[test]
fn a_provider_rejection_is_the_callers_400_and_stops_the_walk() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(400, r#"{"error":{"message":"temperature must be <= 2"}}"#));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!((a.status, a.code().as_str()), (400, "upstream_rejected"));
    assert!(a.body.contains("temperature must be <= 2"));
    assert_eq!(h.sent().len(), 1);
}

#[test]
fn an_answer_in_pieces_is_joined_and_one_over_the_limit_is_refused() {
    let (h, gw) = (host(), Gateway::new());
    let upstream = r#"{"id":"x","object":"chat.completion","created":1,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"hey"},"finish_reason":"stop"}]}"#;
    let pieces = |text: &str, n: usize| -> Vec<Result<Bytes, Error>> {
        let size = text.len().div_ceil(n);
        text.as_bytes().chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect()
    };
    h.script(Scripted::Respond { status: 200, headers: vec![], chunks: pieces(upstream, 3) });
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!((a.status, a.body.as_str()), (200, upstream));
    // An answer is read up to 32 MiB: a larger one, in pieces, fails this provider, and the next
    // one answers.
    let big = format!(r#"{{"choices":[{{"message":{{"content":"{}"}}}}]}}"#, "x".repeat(33 << 20));
    h.script(Scripted::Respond { status: 200, headers: vec![], chunks: pieces(&big, 40) });
    h.script(Scripted::json(200, upstream));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!((a.status, a.body.as_str()), (200, upstream));
    assert_eq!(h.records()[1].attempts[0].error, Some("upstream_protocol_error"));
}

#[test]
fn a_missing_credential_moves_on_to_the_next_candidate() {
    let h = TestHost::new(T0, &policy());
    let gw = Gateway::new();
    h.script(Scripted::json(200, r#"{"choices":[]}"#));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!(a.status, 200);
    assert_eq!(h.records()[0].attempts[0].error, Some("provider_credential_missing"));
}

#[test]
fn a_stream_cut_or_garbled_mid_answer_ends_with_an_error_event_not_done() {
    let (h, gw) = (host(), Gateway::new());
    let c = r#"data: {"choices":[{"index":0,"delta":{"content":"par"}}]}"#;
    for (pieces, label) in [
        (vec![format!("{c}\n\n")], "upstream_protocol_error"),
        (vec![format!("{c}\n\n"), "data: {oops\n\n".to_owned()], "upstream_protocol_error"),
    ] {
        h.script(Scripted::sse(&pieces.iter().map(String::as_str).collect::<Vec<_>>()));
        let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", true)));
        assert_eq!(a.status, 200);
        assert!(a.body.contains("\"par\""), "content before the cut is delivered");
        assert!(!a.body.contains("[DONE]"), "{}", a.body);
        let last = a.body.trim_end().rsplit("\n\n").next().unwrap_or_default();
        let v: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or_default();
        assert_eq!(v["error"]["code"], label, "{}", a.body);
    }
    h.script(Scripted::Respond {
        status: 200,
        headers: vec![],
        chunks: vec![Ok(Bytes::from(format!("{c}\n\n"))), Err(Error::new(ErrorKind::UpstreamUnavailable, "reset"))],
    });
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", true)));
    assert!(a.body.contains("upstream_unavailable") && !a.body.contains("[DONE]"));
    let errors: Vec<_> = h.records().iter().map(|r| r.error).collect();
    assert_eq!(errors, [Some("upstream_protocol_error"), Some("upstream_protocol_error"), Some("upstream_unavailable")]);
}

#[test]
fn a_stream_abandoned_by_the_client_is_still_recorded() {
    use futures::StreamExt;
    let (h, gw) = (host(), Gateway::new());
    let resp = futures::executor::block_on(gw.handle(&h, post(Some("sk-acme"), &chat("mock", true))));
    let edgegate_core::Body::Stream(mut s) = resp.into_body() else { unreachable!("expected a stream") };
    assert!(futures::executor::block_on(s.next()).is_some());
    assert!(h.records().is_empty(), "not recorded while streaming");
    drop(s);
    let recs = h.records();
    assert_eq!((recs.len(), recs[0].error), (1, Some("client_disconnected")));
}

#[test]
fn policy_store_failures_degrade_to_the_last_good_snapshot() {
    let (h, gw) = (host(), Gateway::new());
    h.fail_store(Some(Error::new(ErrorKind::StoreUnavailable, "kv down")));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("mock", false)));
    assert_eq!((a.status, a.code().as_str()), (503, "store_unavailable"));
    h.fail_store(None);
    assert_eq!(call(&h, &gw, post(Some("sk-acme"), &chat("mock", false))).status, 200);
    h.fail_store(Some(Error::new(ErrorKind::StoreUnavailable, "kv down")));
    h.advance(10_000);
    assert_eq!(call(&h, &gw, post(Some("sk-acme"), &chat("mock", false))).status, 200);
    let faults: Vec<_> = h.drain_records().into_iter().map(|r| r.policy_fault).collect();
    assert_eq!(faults, [None, None, Some("store_unavailable")], "a hidden store failure is visible in telemetry");
}

#[test]
fn models_lists_what_the_key_may_use_and_health_needs_no_key() {
    let (h, gw) = (host(), Gateway::new());
    let get = |path: &str, key: &str| {
        http::Request::get(format!("https://gw{path}"))
            .header("authorization", format!("Bearer {key}"))
            .body(Bytes::new())
            .unwrap_or_else(|_| unreachable!())
    };
    let ids = |a: Answer| {
        a.json()["data"]
            .as_array()
            .map(|d| d.iter().map(|m| m["id"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(ids(call(&h, &gw, get("/v1/models", "sk-acme"))), ["mock", "real"]);
    assert_eq!(ids(call(&h, &gw, get("/v1/models", "sk-free"))), ["mock"]);
    assert_eq!(call(&h, &gw, get("/v1/models", "bad")).status, 401);
    let health = call(&h, &gw, http::Request::get("https://gw/healthz").body(Bytes::new()).unwrap_or_else(|_| unreachable!()));
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[test]
fn a_stream_that_fails_before_any_content_fails_over_invisibly() {
    let (h, gw) = (host(), Gateway::new());
    let role = r#"data: {"id":"a","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
    let good = [
        r#"data: {"id":"b","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#.to_owned() + "\n\n",
        r#"data: {"id":"b","choices":[{"index":0,"delta":{"content":"from backup"}}]}"#.to_owned() + "\n\n",
        r#"data: {"id":"b","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#.to_owned() + "\n\n",
        "data: [DONE]\n\n".to_owned(),
    ];
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    for first in [
        Scripted::sse(&[&format!("{role}\n\n")]),                      // cut after the role chunk
        Scripted::sse(&[&format!("{role}\n\n"), "data: {broken\n\n"]), // garbled before content
        Scripted::Respond { status: 200, headers: vec![], chunks: vec![Err(Error::new(ErrorKind::UpstreamUnavailable, "reset"))] }, // reset at once
    ] {
        h.script(first);
        h.script(Scripted::sse(&good));
        let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", true)));
        assert_eq!(a.status, 200);
        assert!(a.body.contains("from backup") && a.body.ends_with("data: [DONE]\n\n"), "{}", a.body);
        assert!(!a.body.contains("\"id\":\"a\"") && !a.body.contains("error"), "nothing of the failed attempt is seen: {}", a.body);
        h.advance(60_000);
    }
    let recs = h.records();
    assert!(recs.iter().all(|r| r.error.is_none() && r.attempts.len() == 2 && r.attempts[0].error.is_some()), "{recs:?}");
}

#[test]
fn a_provider_rate_limit_is_passed_on_with_a_clamped_retry_after() {
    let (h, gw) = (host(), Gateway::new());
    let limited = |retry: &'static str| Scripted::Respond {
        status: 429,
        headers: vec![("retry-after", retry)],
        chunks: vec![Ok(Bytes::from_static(br#"{"error":{"message":"slow down"}}"#))],
    };
    for (retry, expect) in [("7", "7"), ("86400", "60"), ("soon", "1")] {
        h.script(limited(retry));
        h.script(limited(retry));
        let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
        assert_eq!((a.status, a.code().as_str()), (429, "upstream_rate_limited"), "{}", a.body);
        assert_eq!((a.headers["retry-after"].to_str().ok(), a.headers["x-should-retry"].to_str().ok()), (Some(expect), Some("true")));
        h.advance(60_000);
    }
    let a = call(&h, &gw, post(Some("sk-acme"), "{"));
    assert_eq!((a.status, a.headers["x-should-retry"].to_str().ok()), (400, Some("false")), "a bad request will not get better");
}

fn embed(key: &str, body: Value) -> http::Request<Bytes> {
    http::Request::post("https://gw/v1/embeddings")
        .header("authorization", format!("Bearer {key}"))
        .body(Bytes::from(body.to_string()))
        .unwrap_or_else(|_| unreachable!())
}

#[test]
fn embeddings_in_float_and_base64_from_the_mock_and_a_provider() {
    let (h, gw) = (host(), Gateway::new());
    let float = call(&h, &gw, embed("sk-acme", json!({"model": "mock", "input": ["a", "b"]})));
    assert_eq!(float.status, 200, "{}", float.body);
    let v = float.json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    let first: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap_or_default();
    assert_eq!(first.len(), edgegate_core::providers::mock::EMBEDDING_DIMS);

    let b64 = call(&h, &gw, embed("sk-acme", json!({"model": "mock", "input": ["a", "b"], "encoding_format": "base64"})));
    let text = b64.json()["data"][0]["embedding"].as_str().unwrap_or_default().to_owned();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, first, "base64 carries the same little-endian f32 vector");

    h.script(Scripted::json(200, r#"{"object":"list","model":"emb-x","data":[{"index":1,"embedding":[0.5]},{"index":0,"embedding":[0.25]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#));
    let a = call(&h, &gw, embed("sk-acme", json!({"model": "real", "input": ["x", "y"], "encoding_format": "base64", "dimensions": 1})));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"][0]["embedding"], "AACAPg==", "vectors are put back in input order"); // 0.25f32
    let sent: Value = serde_json::from_slice(h.sent()[0].body()).unwrap_or_default();
    assert_eq!(h.sent()[0].uri(), "http://127.0.0.1:7001/v1/embeddings");
    assert_eq!(
        (sent["model"].as_str(), sent["encoding_format"].as_str(), sent["dimensions"].as_u64()),
        (Some("gpt-x"), Some("float"), Some(1))
    );

    h.advance(60_000); // acme may send 3 requests a minute
    let bad = call(&h, &gw, embed("sk-acme", json!({"model": "mock", "input": 3})));
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_request"));
}

#[test]
fn a_tenant_model_list_bounds_every_key_of_the_tenant() {
    let mut doc: Value = serde_json::from_str(&policy()).unwrap_or_default();
    doc["tenants"][1]["models"] = json!(["mock"]);
    doc["keys"][1]["models"] = Value::Null; // the key itself names no limit
    let h = TestHost::new(T0, &doc.to_string());
    let gw = Gateway::new();
    let free_real = call(&h, &gw, post(Some("sk-free"), &chat("real", false)));
    assert_eq!((free_real.status, free_real.code().as_str()), (404, "model_not_found"), "another tenant's model stays out of reach");
    assert_eq!(call(&h, &gw, post(Some("sk-free"), &chat("mock", false))).status, 200);
    let models = h.call(
        &gw,
        http::Request::get("https://gw/v1/models")
            .header("authorization", "Bearer sk-free")
            .body(Bytes::new())
            .unwrap_or_else(|_| unreachable!()),
    );
    let listed: Value = serde_json::from_slice(&models.1).unwrap_or_default();
    let ids: Vec<&str> = listed["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["mock"]);
    doc["tenants"][1]["models"] = json!(["ghost"]);
    let errors = edgegate_core::Policy::compile(doc.to_string().as_bytes()).err().unwrap_or_default();
    assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["tenants[1].models[0]"]);
}

#[test]
fn a_refused_first_credential_is_retried_once_with_the_second_and_noted() {
    let mut doc: Value = serde_json::from_str(&policy()).unwrap_or_default();
    doc["providers"][1]["api_key_secret_secondary"] = json!("PRIMARY_KEY_NEXT");
    let h = TestHost::new(T0, &doc.to_string());
    h.set_secret("PRIMARY_KEY", "sk-old-revoked");
    h.set_secret("PRIMARY_KEY_NEXT", "sk-new-live");
    let gw = Gateway::new();
    let ok = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"b"}}]}"#;
    h.script(Scripted::json(401, r#"{"error":{"message":"invalid api key"}}"#));
    h.script(Scripted::json(200, ok));
    let a = call(&h, &gw, post(Some("sk-acme"), &chat("real", false)));
    assert_eq!((a.status, a.body.as_str()), (200, ok));
    let sent: Vec<(String, String)> =
        h.sent().iter().map(|r| (r.uri().to_string(), r.headers()["authorization"].to_str().unwrap_or_default().to_owned())).collect();
    let url = "http://127.0.0.1:7001/v1/chat/completions".to_owned();
    assert_eq!(
        sent,
        [(url.clone(), "Bearer sk-old-revoked".to_owned()), (url, "Bearer sk-new-live".to_owned())],
        "same target, second key"
    );
    let rec = &h.records()[0];
    assert_eq!(rec.credential_fallbacks, ["primary"]);
    assert_eq!(rec.attempts.len(), 1, "one attempt at the target");
    let line = serde_json::to_string(rec).unwrap_or_default();
    assert!(!line.contains("sk-old-revoked") && !line.contains("sk-new-live"), "secrets never reach records");

    // Without a second credential a 401 is the attempt's error, and failover moves on.
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(401, r#"{"error":{"message":"invalid api key"}}"#));
    h.script(Scripted::json(200, ok));
    assert_eq!(call(&h, &gw, post(Some("sk-acme"), &chat("real", false))).status, 200);
    assert_eq!(h.sent()[1].uri(), "http://127.0.0.1:7002/v1/chat/completions");
    assert!(h.records()[0].credential_fallbacks.is_empty());
}
