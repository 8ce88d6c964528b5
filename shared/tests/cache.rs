//! The edge cache on the whole pipeline: hits skip the provider and the ledger, tenants never
//! share entries, entries expire, streams are replayed as streams, and unsafe requests or
//! unfinished answers are never cached.

use bytes::Bytes;
use edgegate_core::testkit::{Scripted, TestHost};
use edgegate_core::{Error, ErrorKind, Gateway};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000_000;
const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"cached words"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;

fn host() -> TestHost {
    let doc = json!({
        "tenants": [{"id": "a", "limits": {"requests_per_minute": 1}}, {"id": "b"}],
        "keys": [
            {"id": "ka", "tenant": "a", "hash": edgegate_core::policy::key_hash_string("sk-a")},
            {"id": "kb", "tenant": "b", "hash": edgegate_core::policy::key_hash_string("sk-b")}
        ],
        "providers": [{"id": "p", "kind": "openai_compatible", "base_url": "http://p.test/v1"}],
        "models": [
            {"alias": "cached", "cache": {"ttl_seconds": 60}, "targets": [{"provider": "p", "model": "m", "price": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}]},
            {"alias": "asked", "cache": {"ttl_seconds": 60, "when": "requested"}, "targets": [{"provider": "p", "model": "m"}]},
            {"alias": "plain", "targets": [{"provider": "p", "model": "m"}]}
        ]
    });
    TestHost::new(T0, &doc.to_string())
}

struct Answer {
    status: u16,
    cache: Option<String>,
    content_type: String,
    body: String,
}

fn ask(h: &TestHost, gw: &Gateway, key: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut b = http::Request::post("https://gw/v1/chat/completions").header("authorization", format!("Bearer {key}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, body) = h.call(gw, b.body(Bytes::from(body.to_string())).unwrap_or_else(|_| unreachable!()));
    // The answer is stored by the record phase, after the response: let it run.
    h.records();
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Answer {
        status: parts.status.as_u16(),
        cache: header("x-edgegate-cache"),
        content_type: header("content-type").unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn zero(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

#[test]
fn a_repeated_request_is_answered_from_the_cache_without_provider_or_ledger() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(200, ANSWER));
    let first = ask(&h, &gw, "sk-a", zero("cached", "hi"), &[]);
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("miss")), "{}", first.body);
    // Tenant a may send one request a minute: the hit is not counted.
    let second = ask(&h, &gw, "sk-a", json!({"messages": [{"content": "hi", "role": "user"}], "temperature": 0, "model": "cached"}), &[]);
    assert_eq!((second.status, second.cache.as_deref()), (200, Some("hit")), "{}", second.body);
    assert_eq!(second.body, first.body, "the same bytes");
    assert_eq!(h.sent().len(), 1, "the provider was called once");
    let records = h.drain_records();
    let cache = |i: usize| serde_json::to_value(&records[i].cache).unwrap_or_default();
    assert_eq!(cache(0), json!({"status": "miss", "stored": true}));
    assert_eq!(cache(1)["status"], "hit");
    assert_eq!(cache(1)["saved_tokens"], 15);
    assert_eq!(cache(1)["saved_micro_usd"], 20, "10 in at $1/Mtok + 5 out at $2/Mtok");
    assert!(records[1].attempts.is_empty() && records[1].usage.is_none() && records[1].cost_micro_usd.is_none());
    assert_eq!(h.open_holds("a"), 0);
    // Another prompt is a miss, and the ledger refuses it: the hit did not take the minute's request.
    let third = ask(&h, &gw, "sk-a", zero("cached", "something else"), &[]);
    assert_eq!(third.status, 429);
}

#[test]
fn tenants_never_share_entries_and_a_new_policy_version_starts_cold() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(200, ANSWER));
    h.script(Scripted::json(200, ANSWER));
    h.script(Scripted::json(200, ANSWER));
    assert_eq!(ask(&h, &gw, "sk-a", zero("cached", "hi"), &[]).cache.as_deref(), Some("miss"));
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "hi"), &[]).cache.as_deref(), Some("miss"), "tenant b has its own");
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "hi"), &[]).cache.as_deref(), Some("hit"));
    assert_eq!(h.sent().len(), 2);
    // Any change to policy is a new version: its answers may differ, so it starts cold.
    let changed = json!({
        "tenants": [{"id": "b"}],
        "keys": [{"id": "kb", "tenant": "b", "hash": edgegate_core::policy::key_hash_string("sk-b")}],
        "providers": [{"id": "p", "kind": "openai_compatible", "base_url": "http://p.test/v1"}],
        "models": [{"alias": "cached", "cache": {"ttl_seconds": 60}, "targets": [{"provider": "p", "model": "m2"}]}],
        "settings": {"policy_refresh_seconds": 0}
    });
    h.set_policy(changed.to_string().as_bytes());
    h.advance(1_000);
    let fresh = Gateway::new();
    assert_eq!(ask(&h, &fresh, "sk-b", zero("cached", "hi"), &[]).cache.as_deref(), Some("miss"));
    assert_eq!(h.sent().len(), 3);
}

#[test]
fn entries_expire_after_their_ttl() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(200, ANSWER));
    h.script(Scripted::json(200, ANSWER));
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "hi"), &[]).cache.as_deref(), Some("miss"));
    h.advance(59_000);
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "hi"), &[]).cache.as_deref(), Some("hit"));
    h.advance(1_500);
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "hi"), &[]).cache.as_deref(), Some("miss"), "60 s later");
    assert_eq!(h.sent().len(), 2);
}

#[test]
fn a_streamed_answer_is_stored_whole_and_replayed_as_the_same_stream() {
    let (h, gw) = (host(), Gateway::new());
    let chunk = |text: &str| {
        format!(
            r#"data: {{"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":null}}]}}"#
        )
    };
    let end = r#"data: {"id":"s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
    h.script(Scripted::sse(&[&format!("{}\n\n", chunk("one ")), &format!("{}\n\n{end}\n\ndata: [DONE]\n\n", chunk("two"))]));
    let mut body = zero("cached", "stream please");
    body["stream"] = json!(true);
    let first = ask(&h, &gw, "sk-b", body.clone(), &[]);
    assert_eq!((first.status, first.cache.as_deref()), (200, Some("miss")));
    assert!(first.body.ends_with("data: [DONE]\n\n"), "{}", first.body);
    let second = ask(&h, &gw, "sk-b", body.clone(), &[]);
    assert_eq!(second.cache.as_deref(), Some("hit"));
    assert_eq!(second.content_type, "text/event-stream");
    assert_eq!(second.body, first.body, "replayed event for event");
    // The same request without `stream` is another entry.
    h.script(Scripted::json(200, ANSWER));
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "stream please"), &[]).cache.as_deref(), Some("miss"));
    assert!(h.records()[1].first_chunk_ms.is_some());
}

#[test]
fn unsafe_requests_and_unfinished_answers_are_never_cached() {
    let (h, gw) = (host(), Gateway::new());
    // Not deterministic, and not asked for: bypass, both times.
    for _ in 0..2 {
        h.script(Scripted::json(200, ANSWER));
        let warm = json!({"model": "cached", "temperature": 0.7, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(ask(&h, &gw, "sk-b", warm, &[]).cache.as_deref(), Some("bypass"));
    }
    // The caller refuses the cache.
    for headers in [[("x-edgegate-cache", "off")], [("cache-control", "no-cache")]] {
        h.script(Scripted::json(200, ANSWER));
        assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "hi"), &headers).cache.as_deref(), Some("bypass"));
    }
    // A route caching only on request, and one without a cache (no header at all).
    h.script(Scripted::json(200, ANSWER));
    assert_eq!(ask(&h, &gw, "sk-b", zero("asked", "hi"), &[]).cache.as_deref(), Some("bypass"));
    h.script(Scripted::json(200, ANSWER));
    let warm = json!({"model": "asked", "temperature": 1, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(ask(&h, &gw, "sk-b", warm.clone(), &[("x-edgegate-cache", "on")]).cache.as_deref(), Some("miss"));
    assert_eq!(ask(&h, &gw, "sk-b", warm, &[("x-edgegate-cache", "on")]).cache.as_deref(), Some("hit"));
    h.script(Scripted::json(200, ANSWER));
    assert_eq!(ask(&h, &gw, "sk-b", zero("plain", "hi"), &[]).cache, None);
    assert_eq!(h.sent().len(), 7);
    assert_eq!(h.cache_entries(), 1, "only the asked-for answer was stored");

    // A failed answer, then a stream cut mid-way: neither is stored, so each retry goes upstream.
    h.script(Scripted::json(500, r#"{"error":{"message":"boom"}}"#));
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "fail"), &[]).status, 502);
    h.script(Scripted::json(200, ANSWER));
    assert_eq!(ask(&h, &gw, "sk-b", zero("cached", "fail"), &[]).cache.as_deref(), Some("miss"));
    let c = r#"data: {"choices":[{"index":0,"delta":{"content":"par"}}]}"#;
    h.script(Scripted::Respond {
        status: 200,
        headers: vec![],
        chunks: vec![Ok(Bytes::from(format!("{c}\n\n"))), Err(Error::new(ErrorKind::UpstreamUnavailable, "reset"))],
    });
    let mut cut = zero("cached", "cut");
    cut["stream"] = json!(true);
    let a = ask(&h, &gw, "sk-b", cut.clone(), &[]);
    assert!(a.body.contains("upstream_unavailable"));
    h.script(Scripted::sse(&["data: [DONE]\n\n"]));
    assert_eq!(ask(&h, &gw, "sk-b", cut, &[]).cache.as_deref(), Some("miss"), "the cut stream was not kept");
}

#[test]
fn a_cache_that_fails_is_a_miss_and_the_request_is_served() {
    let (h, gw) = (host(), Gateway::new());
    h.fail_cache(Some(Error::new(ErrorKind::StoreUnavailable, "cache down")));
    h.script(Scripted::json(200, ANSWER));
    let a = ask(&h, &gw, "sk-b", zero("cached", "hi"), &[]);
    assert_eq!((a.status, a.cache.as_deref()), (200, Some("miss")));
    let record = h.drain_records().pop().and_then(|r| r.cache).map(|c| serde_json::to_value(c).unwrap_or_default());
    assert_eq!(record, Some(json!({"status": "miss", "stored": false, "fault": "store_unavailable"})));
}

#[test]
fn cache_rules_are_checked_when_policy_compiles() {
    let paths = |models: Value| {
        let doc = json!({"providers": [{"id": "p", "kind": "mock"}], "models": models});
        let errors = edgegate_core::Policy::compile(doc.to_string().as_bytes()).err().unwrap_or_default();
        errors.into_iter().map(|e| e.path).collect::<Vec<_>>()
    };
    let target = json!([{"provider": "p", "model": "m"}]);
    assert_eq!(
        paths(json!([
            {"alias": "a", "cache": {"ttl_seconds": 0}, "targets": target},
            {"alias": "b", "cache": {"ttl_seconds": 86_401}, "targets": target},
            {"alias": "c", "cache": {"ttl_seconds": 86_400, "when": "temperature_zero"}, "targets": target}
        ])),
        ["models[0].cache.ttl_seconds", "models[1].cache.ttl_seconds"]
    );
    assert_eq!(
        paths(json!([{"alias": "c", "cache": {"ttl_seconds": 5, "when": "sometimes"}, "targets": target}])),
        ["models[0].cache.when"]
    );
}
