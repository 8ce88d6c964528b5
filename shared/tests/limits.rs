//! Limits through the whole gateway on the deterministic test host: token holds trued up by the
//! provider's usage, streams and abandoned streams settled, failures released, concurrency slots,
//! budgets, key limits inside tenant limits, and the `x-ratelimit-*` headers.

use bytes::Bytes;
use edgegate_core::Gateway;
use edgegate_core::policy::key_hash_string;
use edgegate_core::testkit::{Scripted, TestHost};
use futures::StreamExt;
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000_000; // on a minute boundary

fn host(limits: Value, key_limits: Value) -> TestHost {
    let doc = json!({
        "tenants": [{"id": "acme", "limits": limits}],
        "keys": [
            {"id": "k1", "tenant": "acme", "hash": key_hash_string("sk-1"), "limits": key_limits},
            {"id": "k2", "tenant": "acme", "hash": key_hash_string("sk-2")}
        ],
        "providers": [{"id": "builtin", "kind": "mock"}, {"id": "up", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}],
        "models": [{"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}, {"alias": "up", "targets": [{"provider": "up", "model": "u"}]}],
        "settings": {"estimated_output_tokens": 100}
    });
    TestHost::new(T0, &doc.to_string())
}

fn chat(key: &str, model: &str, extra: Value) -> http::Request<Bytes> {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    http::Request::post("https://gw/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .body(Bytes::from(body.to_string()))
        .unwrap_or_else(|_| unreachable!())
}

fn usage(h: &TestHost, gw: &Gateway) -> Value {
    let _ = h.records(); // run deferred settlements
    let req = http::Request::get("https://gw/admin/tenants/acme/usage")
        .header("authorization", "Bearer sk-admin")
        .body(Bytes::new())
        .unwrap_or_else(|_| unreachable!());
    let (_, body) = h.call(gw, req);
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

fn used(h: &TestHost, gw: &Gateway, counter: &str) -> u64 {
    usage(h, gw)["ledger"]["counters"][counter]["used"].as_u64().unwrap_or(0)
}

/// Tenant `tenant` (id `acme`) with one key `sk-a`, the built-in mock, these aliases and settings.
fn one_key(tenant: Value, models: Value, settings: Value) -> TestHost {
    let doc = json!({
        "tenants": [tenant],
        "keys": [{"id": "a", "tenant": "acme", "hash": key_hash_string("sk-a")}],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": models,
        "settings": settings
    });
    TestHost::new(T0, &doc.to_string())
}

fn admin_host(limits: Value, key_limits: Value) -> TestHost {
    let h = host(limits, key_limits);
    h.set_secret("EDGEGATE_ADMIN_KEY", "sk-admin");
    h.set_secret("EDGEGATE_ADMIN_API", "on");
    h
}

#[test]
fn tokens_are_held_by_estimate_and_settled_by_usage() {
    let (h, gw) = (admin_host(json!({"tokens_per_minute": 1_000}), json!({})), Gateway::new());
    let (parts, _) = h.call(&gw, chat("sk-1", "mock", json!({"max_tokens": 50})));
    assert_eq!(parts.status, 200);
    // The hold is the prompt estimate + 50, until the mock's usage replaces it.
    assert_eq!(parts.headers["x-ratelimit-limit-tokens"], "1000");
    let remaining: u64 = parts.headers["x-ratelimit-remaining-tokens"].to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(remaining < 1_000 - 50, "the hold counts the output cap: {remaining}");
    let reported = h.records().iter().find_map(|r| r.usage).map(|u| u.prompt_tokens() + u.completion_tokens());
    assert_eq!(Some(used(&h, &gw, "tenant/tokens_per_minute")), reported, "settled to the provider's usage");
    assert_eq!(h.open_holds("acme"), 0);
}

#[test]
fn a_request_that_cannot_fit_is_refused_before_any_provider_is_called() {
    let (h, gw) = (admin_host(json!({"tokens_per_minute": 120}), json!({})), Gateway::new());
    let (parts, body) = h.call(&gw, chat("sk-1", "mock", json!({"max_tokens": 500})));
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!((parts.status.as_u16(), body["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    assert_eq!(parts.headers["retry-after"], "60");
    assert_eq!(parts.headers["x-ratelimit-remaining-tokens"], "120");
    assert!(h.sent().is_empty());
    assert_eq!(h.call(&gw, chat("sk-1", "mock", json!({}))).0.status, 200, "the default output estimate (100) fits");
}

#[test]
fn failed_requests_release_their_tokens_but_still_count_as_requests() {
    let (h, gw) = (admin_host(json!({"tokens_per_minute": 1_000, "requests_per_minute": 10}), json!({})), Gateway::new());
    h.script(Scripted::Unreachable);
    assert_eq!(h.call(&gw, chat("sk-1", "up", json!({}))).0.status, 502);
    assert_eq!(used(&h, &gw, "tenant/tokens_per_minute"), 0);
    assert_eq!(used(&h, &gw, "tenant/requests_per_minute"), 1);
}

#[test]
fn streams_hold_a_concurrency_slot_until_they_end_or_are_abandoned() {
    let (h, gw) = (admin_host(json!({"concurrent_requests": 1, "tokens_per_minute": 10_000}), json!({})), Gateway::new());
    let stream = futures::executor::block_on(gw.handle(&h, chat("sk-1", "mock", json!({"stream": true, "max_tokens": 40}))));
    assert_eq!(stream.status(), 200);
    let second = h.call(&gw, chat("sk-2", "mock", json!({})));
    assert_eq!(second.0.status, 429, "the open stream holds the only slot");
    assert_eq!(second.0.headers["retry-after"], "1");
    let edgegate_core::Body::Stream(mut body) = stream.into_body() else { unreachable!("a stream") };
    assert!(futures::executor::block_on(body.next()).is_some());
    drop(body); // the client goes away mid-stream
    let _ = h.records();
    assert_eq!(h.open_holds("acme"), 0, "an abandoned stream is settled");
    assert!(used(&h, &gw, "tenant/tokens_per_minute") > 0, "and charged its estimate, since the provider answered");
    assert_eq!(h.call(&gw, chat("sk-2", "mock", json!({}))).0.status, 200, "the slot is free again");
}

#[test]
fn budgets_are_a_distinct_429_until_the_period_ends() {
    let (h, gw) = (admin_host(json!({"tokens_per_day": 200}), json!({})), Gateway::new());
    assert_eq!(h.call(&gw, chat("sk-1", "mock", json!({"max_tokens": 50}))).0.status, 200);
    let (parts, body) = h.call(&gw, chat("sk-1", "mock", json!({"max_tokens": 190})));
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        (parts.status.as_u16(), body["error"]["code"].as_str(), body["error"]["type"].as_str()),
        (429, Some("budget_exceeded"), Some("insufficient_quota"))
    );
    assert_eq!(parts.headers["x-should-retry"], "false");
    let wait: u64 = parts.headers["retry-after"].to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert_eq!(wait, 86_400 - (T0 / 1000) % 86_400, "until the UTC day ends");
    h.advance(wait * 1000);
    assert_eq!(h.call(&gw, chat("sk-1", "mock", json!({"max_tokens": 190}))).0.status, 200, "a new day, a new budget");
}

#[test]
fn key_limits_apply_inside_tenant_limits() {
    let (h, gw) = (admin_host(json!({"requests_per_minute": 5}), json!({"requests_per_minute": 2})), Gateway::new());
    let status = |key: &str| h.call(&gw, chat(key, "mock", json!({}))).0.status.as_u16();
    assert_eq!([status("sk-1"), status("sk-1"), status("sk-1")], [200, 200, 429], "the key's own limit");
    assert_eq!(
        [status("sk-2"), status("sk-2"), status("sk-2"), status("sk-2")],
        [200, 200, 200, 429],
        "the tenant's limit counts both keys"
    );
    let (parts, _) = h.call(&gw, chat("sk-2", "mock", json!({})));
    assert_eq!(parts.headers["x-ratelimit-limit-requests"], "5");
}

#[test]
fn token_caps_refuse_long_prompts_and_clamp_output_to_the_smallest_cap() {
    let h = admin_host(
        json!({"max_prompt_tokens": 50, "max_output_tokens": 300, "tokens_per_minute": 10_000}),
        json!({"max_output_tokens": 200}),
    );
    let gw = Gateway::new();
    let long = "word ".repeat(100);
    let (parts, body) = h.call(
        &gw,
        http::Request::post("https://gw/v1/chat/completions")
            .header("authorization", "Bearer sk-1")
            .body(Bytes::from(json!({"model": "up", "messages": [{"role": "user", "content": long}]}).to_string()))
            .unwrap_or_else(|_| unreachable!()),
    );
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!(
        (parts.status.as_u16(), body["error"]["code"].as_str(), body["error"]["param"].as_str()),
        (400, Some("context_length_exceeded"), Some("messages"))
    );
    assert!(h.sent().is_empty() && h.open_holds("acme") == 0, "nothing sent, nothing held");
    // Embedding inputs count against the same cap, all of them together.
    let (parts, body) = h.call(
        &gw,
        http::Request::post("https://gw/v1/embeddings")
            .header("authorization", "Bearer sk-1")
            .body(Bytes::from(json!({"model": "up", "input": ["word ".repeat(30), "word ".repeat(30)]}).to_string()))
            .unwrap_or_else(|_| unreachable!()),
    );
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!((parts.status.as_u16(), body["error"]["param"].as_str()), (400, Some("input")), "{body}");
    assert!(h.sent().is_empty() && h.open_holds("acme") == 0, "nothing sent, nothing held");

    let sent_cap = |extra: Value| {
        h.script(Scripted::json(200, r#"{"id":"c","object":"chat.completion","created":1,"model":"u","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#));
        assert_eq!(h.call(&gw, chat("sk-1", "up", extra)).0.status, 200);
        let sent: Value = h.sent().last().map(|r| serde_json::from_slice(r.body()).unwrap_or_default()).unwrap_or_default();
        (sent["max_tokens"].as_u64(), sent["max_completion_tokens"].as_u64())
    };
    assert_eq!(sent_cap(json!({})), (Some(200), None), "no cap asked: the key's (smaller) cap is set");
    assert_eq!(sent_cap(json!({"max_tokens": 5_000})), (Some(200), None), "clamped");
    assert_eq!(sent_cap(json!({"max_tokens": 20})), (Some(20), None), "a smaller ask is kept");
    assert_eq!(sent_cap(json!({"max_completion_tokens": 900})), (None, Some(200)), "the caller's field is kept");
    h.script(Scripted::json(200, r#"{"id":"c","object":"chat.completion","created":1,"model":"u","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#));
    assert_eq!(h.call(&gw, chat("sk-2", "up", json!({"max_tokens": 5_000}))).0.status, 200);
    let sent: Value = h.sent().last().map(|r| serde_json::from_slice(r.body()).unwrap_or_default()).unwrap_or_default();
    assert_eq!(sent["max_tokens"], 300, "a key without caps gets its tenant's");
}

#[test]
fn model_limits_count_per_tenant_per_alias() {
    let doc = json!({
        "tenants": [{"id": "acme"}, {"id": "globex"}],
        "keys": [{"id": "a", "tenant": "acme", "hash": key_hash_string("sk-a")}, {"id": "g", "tenant": "globex", "hash": key_hash_string("sk-g")}],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": [
            {"alias": "premium", "targets": [{"provider": "builtin", "model": "p"}], "limits": {"requests_per_minute": 1}},
            {"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}
        ]
    });
    let h = TestHost::new(T0, &doc.to_string());
    let gw = Gateway::new();
    let status = |key: &str, model: &str| h.call(&gw, chat(key, model, json!({}))).0.status.as_u16();
    assert_eq!([status("sk-a", "premium"), status("sk-a", "premium"), status("sk-a", "mock")], [200, 429, 200]);
    assert_eq!(status("sk-g", "premium"), 200, "each tenant has its own count for the alias");
}

#[test]
fn spend_budgets_hold_the_dearest_candidate_and_settle_at_the_served_price() {
    let h = one_key(
        json!({"id": "acme", "limits": {"usd_per_day": 0.04}}),
        json!([{"alias": "mock", "targets": [{"provider": "builtin", "model": "m", "price": {"input_usd_per_mtok": 1000, "output_usd_per_mtok": 2000}}]}]),
        json!({}),
    );
    let gw = Gateway::new();
    assert_eq!(h.call(&gw, chat("sk-a", "mock", json!({"max_tokens": 10}))).0.status, 200);
    let record = h.drain_records().pop().unwrap_or_else(|| unreachable!());
    let usage = record.usage.unwrap_or_default();
    let expected = usage.prompt_tokens() * 1_000 + usage.completion_tokens() * 2_000;
    assert_eq!(record.cost_micro_usd, Some(expected), "cost is usage at the target's price, in micro-dollars");
    let (parts, body) = h.call(&gw, chat("sk-a", "mock", json!({"max_tokens": 10})));
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    assert_eq!((parts.status.as_u16(), body["error"]["code"].as_str()), (429, Some("budget_exceeded")));
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("usd_per_day of $0.040000"), "{body}");
}

#[test]
fn negative_money_is_refused_with_its_path() {
    let doc = json!({
        "tenants": [{"id": "acme", "limits": {"usd_per_month": -1}}],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": [{"alias": "mock", "targets": [{"provider": "builtin", "model": "m", "price": {"input_usd_per_mtok": -1, "output_usd_per_mtok": 1}}]}]
    });
    let errors = edgegate_core::Policy::compile(doc.to_string().as_bytes()).err().unwrap_or_default();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["models[0].targets[0].price", "tenants[0].limits.usd_per_month"]);
}

#[test]
fn crossing_a_budget_threshold_is_recorded_once() {
    let h = one_key(
        json!({"id": "acme", "limits": {"tokens_per_day": 40}}),
        json!([{"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}]),
        json!({"budget_alert_percents": [25, 50, 100]}),
    );
    let gw = Gateway::new();
    let alerts = |h: &TestHost| {
        assert_eq!(h.call(&gw, chat("sk-a", "mock", json!({"max_tokens": 5}))).0.status, 200);
        h.drain_records()
            .pop()
            .map(|r| r.budget_alerts.iter().map(|a| (a.counter.clone(), a.percent)).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    // The mock answers "hello there" with about 15 tokens: 37 % of 40, then 75 %.
    assert_eq!(alerts(&h), [("tenant/tokens_per_day".to_owned(), 25)]);
    assert_eq!(alerts(&h), [("tenant/tokens_per_day".to_owned(), 50)]);
    // The next request does not fit: the budget is exhausted, and says so once, at 100 %.
    let (parts, _) = h.call(&gw, chat("sk-a", "mock", json!({"max_tokens": 5})));
    assert_eq!(parts.status, 429);
    let refused = h.drain_records().pop().map(|r| r.budget_alerts.iter().map(|a| a.percent).collect::<Vec<_>>());
    assert_eq!(refused, Some(vec![100]));
    assert_eq!(h.call(&gw, chat("sk-a", "mock", json!({"max_tokens": 5}))).0.status, 429);
    assert_eq!(h.drain_records().pop().map(|r| r.budget_alerts.len()), Some(0), "once per period");
    let bad = json!({"tenants": [], "settings": {"budget_alert_percents": [0, 101]}});
    let errors = edgegate_core::Policy::compile(bad.to_string().as_bytes()).err().unwrap_or_default();
    assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["settings.budget_alert_percents"]);
}

#[test]
fn declared_features_have_their_own_budgets() {
    let h = one_key(
        json!({"id": "acme", "features": {"summarize": {"requests_per_minute": 1}}}),
        json!([{"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}]),
        json!({}),
    );
    let gw = Gateway::new();
    let with_header = |feature: &str| {
        let mut req = chat("sk-a", "mock", json!({}));
        req.headers_mut().insert("x-edgegate-feature", feature.parse().unwrap_or_else(|_| unreachable!()));
        h.call(&gw, req).0.status.as_u16()
    };
    assert_eq!(with_header("summarize"), 200);
    assert_eq!(with_header("summarize"), 429, "the feature's own limit");
    assert_eq!(h.call(&gw, chat("sk-a", "mock", json!({"metadata": {"feature": "summarize"}}))).0.status, 429, "named in metadata too");
    assert_eq!(with_header("translate"), 200, "an undeclared feature has no limits");
    assert_eq!(h.call(&gw, chat("sk-a", "mock", json!({}))).0.status, 200, "nor does a request naming none");
    let features: Vec<Option<String>> = h.drain_records().into_iter().map(|r| r.feature).collect();
    assert_eq!(
        features,
        [Some("summarize".into()), Some("summarize".into()), Some("summarize".into()), None, None],
        "only declared features are recorded"
    );
}

#[test]
fn a_refused_alias_overflows_to_its_overflow_route() {
    let h = one_key(
        json!({"id": "acme", "limits": {"requests_per_minute": 3}}),
        json!([
            {"alias": "premium", "targets": [{"provider": "builtin", "model": "big"}], "limits": {"requests_per_minute": 1}, "overflow": "standard"},
            {"alias": "standard", "targets": [{"provider": "builtin", "model": "small"}]}
        ]),
        json!({}),
    );
    let gw = Gateway::new();
    let served = |h: &TestHost| {
        let (parts, body) = h.call(&gw, chat("sk-a", "premium", json!({})));
        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
        let overflow = h.drain_records().pop().and_then(|r| r.overflow);
        (parts.status.as_u16(), body["model"].as_str().unwrap_or("").to_owned(), overflow)
    };
    assert_eq!(served(&h), (200, "big".into(), None));
    assert_eq!(served(&h), (200, "small".into(), Some("standard".into())), "premium's limit is spent: standard serves");
    assert_eq!(served(&h), (200, "small".into(), Some("standard".into())));
    assert_eq!(served(&h).0, 429, "the tenant's own limit still holds");
    let bad = json!({"models": [{"alias": "a", "targets": [{"provider": "p", "model": "m"}], "overflow": "a"}], "providers": [{"id": "p", "kind": "mock"}]});
    let errors = edgegate_core::Policy::compile(bad.to_string().as_bytes()).err().unwrap_or_default();
    assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["models[0].overflow"]);
}

#[test]
fn plans_give_their_tenants_limits_and_models() {
    let doc = json!({
        "plans": [{"id": "free", "limits": {"requests_per_minute": 2}, "models": ["mock"]}],
        "tenants": [{"id": "acme", "plan": "free"}, {"id": "globex", "plan": "free", "limits": {"requests_per_minute": 1}}],
        "keys": [{"id": "a", "tenant": "acme", "hash": key_hash_string("sk-a")}, {"id": "g", "tenant": "globex", "hash": key_hash_string("sk-g")}],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": [{"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}, {"alias": "premium", "targets": [{"provider": "builtin", "model": "p"}]}]
    });
    let h = TestHost::new(T0, &doc.to_string());
    let gw = Gateway::new();
    let status = |key: &str, model: &str| h.call(&gw, chat(key, model, json!({}))).0.status.as_u16();
    assert_eq!(status("sk-a", "premium"), 404, "the plan's models bound its tenants");
    assert_eq!([status("sk-a", "mock"), status("sk-a", "mock"), status("sk-a", "mock")], [200, 200, 429], "the plan's limit, per tenant");
    assert_eq!([status("sk-g", "mock"), status("sk-g", "mock")], [200, 429], "a tenant's own limit applies inside its plan's");
    let bad = json!({"tenants": [{"id": "t", "plan": "gold"}], "plans": [{"id": "p", "models": ["ghost"]}]});
    let errors = edgegate_core::Policy::compile(bad.to_string().as_bytes()).err().unwrap_or_default();
    assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["tenants[0].plan", "plans[0].models[0]"]);
}

#[test]
fn a_route_with_a_queue_waits_for_the_window_to_reset_when_it_resets_in_time() {
    let doc = json!({
        "tenants": [{"id": "acme", "limits": {"requests_per_minute": 1}}],
        "keys": [{"id": "k1", "tenant": "acme", "hash": key_hash_string("sk-1")}],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": [
            {"alias": "queued", "queue_ms": 500, "targets": [{"provider": "builtin", "model": "m"}]},
            {"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}
        ],
        "settings": {"policy_refresh_seconds": 0}
    });
    // 200 ms before the minute ends.
    let h = TestHost::new(T0 + 59_800, &doc.to_string());
    let gw = Gateway::new();
    let status = |model: &str| h.call(&gw, chat("sk-1", model, json!({}))).0.status.as_u16();
    assert_eq!(status("queued"), 200);
    assert_eq!(status("mock"), 429, "a route without a queue answers at once");
    assert_eq!(status("queued"), 200, "the queued request waited for the new minute");
    assert_eq!(status("queued"), 429, "the next minute is a minute away: more than the queue allows");
    let queued: Vec<Option<u64>> = h.records().iter().map(|r| r.queued_ms).collect();
    assert_eq!(queued, [None, None, Some(200), None], "the wait is recorded");
}

#[test]
fn a_split_ledger_admits_exactly_its_limits_across_its_books() {
    // 10 requests and 2,000 tokens a minute, split four ways (3, 3, 2, 2 requests; 500 tokens each).
    let tenant = json!({"id": "acme", "ledger_shards": 4, "limits": {"requests_per_minute": 10, "tokens_per_minute": 2_000,
        "usd_per_day": 1}});
    let h = one_key(
        tenant,
        json!([{"alias": "mock", "targets": [{"provider": "builtin", "model": "m", "price": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}}]}]),
        json!({}),
    );
    h.set_secret("EDGEGATE_ADMIN_KEY", "sk-admin");
    h.set_secret("EDGEGATE_ADMIN_API", "on");
    let gw = Gateway::new();
    let mut statuses = Vec::new();
    for i in 0..16 {
        let (parts, body) = h.call(&gw, chat("sk-a", "mock", json!({"max_tokens": 20})));
        statuses.push(parts.status.as_u16());
        // The headers speak of the whole limit, not of one book's share.
        assert_eq!(
            parts.headers.get("x-ratelimit-limit-requests").map(|v| v.as_bytes()),
            Some(&b"10"[..]),
            "request {i}: {} {}",
            parts.status,
            String::from_utf8_lossy(&body)
        );
        let _ = h.records();
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 6, "{statuses:?}");
    let req = http::Request::get("https://gw/admin/tenants/acme/usage")
        .header("authorization", "Bearer sk-admin")
        .body(Bytes::new())
        .unwrap_or_else(|_| unreachable!());
    let (_, body) = h.call(&gw, req);
    let usage: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(usage["shards"], 4);
    assert_eq!(usage["ledger"]["counters"]["tenant/requests_per_minute"]["used"], 10, "{usage}");
    assert_eq!(usage["ledger"]["holds"], json!({}), "every hold settled in the book that made it");
}

#[test]
fn a_split_ledger_refuses_only_when_every_book_is_full() {
    // Three requests a minute over four books: one book has no share at all, and requests that
    // start there still find room in the others.
    let tenant = json!({"id": "acme", "ledger_shards": 4, "limits": {"requests_per_minute": 3}});
    let h = one_key(tenant, json!([{"alias": "mock", "targets": [{"provider": "builtin", "model": "m"}]}]), json!({}));
    let gw = Gateway::new();
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            let (parts, _) = h.call(&gw, chat("sk-a", "mock", json!({})));
            let _ = h.records();
            parts.status.as_u16()
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
}

#[test]
fn ledger_shards_must_be_from_one_to_sixty_four() {
    for n in [0, 65] {
        let doc = json!({"tenants": [{"id": "acme", "ledger_shards": n}], "keys": [], "providers": [], "models": []});
        let errors = edgegate_core::policy::Policy::compile_value(doc).err().unwrap_or_default();
        assert!(errors.iter().any(|e| format!("{e:?}").contains("tenants[0].ledger_shards")), "{n}: {errors:?}");
    }
}

#[test]
fn a_route_that_says_so_drops_the_oldest_turns_of_a_prompt_over_its_cap() {
    let cap = json!({"max_prompt_tokens": 60});
    let doc = json!({
        "tenants": [{"id": "acme", "limits": {"tokens_per_minute": 100_000}}],
        "keys": [{"id": "a", "tenant": "acme", "hash": key_hash_string("sk-a")}],
        "providers": [{"id": "up", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}],
        "models": [
            {"alias": "trim", "targets": [{"provider": "up", "model": "gpt-4o"}], "limits": cap, "over_prompt_cap": "drop_oldest_turns"},
            {"alias": "strict", "targets": [{"provider": "up", "model": "gpt-4o"}], "limits": cap}
        ]
    });
    let (h, gw) = (TestHost::new(T0, &doc.to_string()), Gateway::new());
    let ok = r#"{"id":"c","object":"chat.completion","created":1,"model":"u","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":1,"total_tokens":21}}"#;
    let call = |model: &str, last: &str| {
        let messages = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "an old question ".repeat(20)},
            {"role": "assistant", "content": "an old answer ".repeat(20)},
            {"role": "user", "content": last}
        ]);
        let body = json!({"model": model, "messages": messages, "max_tokens": 10});
        let req = http::Request::post("https://gw/v1/chat/completions")
            .header("authorization", "Bearer sk-a")
            .body(Bytes::from(body.to_string()))
            .unwrap_or_else(|_| unreachable!());
        let (parts, body) = h.call(&gw, req);
        (parts, serde_json::from_slice::<Value>(&body).unwrap_or_default())
    };

    h.script(Scripted::json(200, ok));
    let (parts, _) = call("trim", "and now?");
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-edgegate-truncated-messages"], "2");
    let sent: Value = h.sent().last().map(|r| serde_json::from_slice(r.body()).unwrap_or_default()).unwrap_or_default();
    assert_eq!(sent["messages"], json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "and now?"}]));
    let record = h.drain_records().pop();
    assert_eq!(record.as_ref().and_then(|r| r.truncated_messages), Some(2));
    let decisions = record.as_ref().and_then(edgegate_core::audit::request_entry).map(|(_, d)| d.decisions).unwrap_or_default();
    assert!(decisions.contains(&json!({"type": "truncation", "result": "dropped_oldest_turns", "messages": 2})), "{decisions:?}");
    let mut meter = edgegate_core::metrics::Meter::new(T0);
    record.iter().for_each(|r| meter.observe(r));
    let export = meter.take(T0 + 60_000, "edgegate", "i").unwrap_or_default();
    let export: Value = serde_json::from_str(&export).unwrap_or_default();
    let metrics = export["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].as_array().cloned().unwrap_or_default();
    let truncated = metrics.iter().find(|m| m["name"] == "gateway.prompts.truncated").map(|m| m["sum"]["dataPoints"][0]["asInt"].clone());
    assert_eq!(truncated, Some(json!("2")), "{export}");
    assert_eq!(h.open_holds("acme"), 0);

    // A route that does not say so refuses, as does one whose last turn alone is over the cap.
    let sent_before = h.sent().len();
    let (parts, body) = call("strict", "and now?");
    assert_eq!((parts.status.as_u16(), body["error"]["code"].as_str()), (400, Some("context_length_exceeded")));
    assert!(!parts.headers.contains_key("x-edgegate-truncated-messages"));
    let (parts, body) = call("trim", &"a very long last question ".repeat(20));
    assert_eq!(
        (parts.status.as_u16(), body["error"]["code"].as_str(), body["error"]["param"].as_str()),
        (400, Some("context_length_exceeded"), Some("messages"))
    );
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("last turn")), "{body}");
    assert_eq!(h.sent().len(), sent_before, "nothing sent");
    assert_eq!(h.open_holds("acme"), 0, "nothing held");
    assert!(h.drain_records().iter().all(|r| r.truncated_messages.is_none()));
}
