//! Any dialect reaches any provider: Anthropic-in → OpenAI-shaped providers, OpenAI-in → Anthropic,
//! non-stream and stream, with errors in the caller's dialect.

use bytes::Bytes;
use edgegate_core::Gateway;
use edgegate_core::policy::key_hash_string;
use edgegate_core::testkit::{Scripted, TestHost};
use serde_json::{Value, json};

fn host() -> TestHost {
    let policy = json!({
        "tenants": [{"id": "t", "limits": {"requests_per_minute": 5}}],
        "keys": [{"id": "k", "tenant": "t", "hash": key_hash_string("sk-t")}],
        "providers": [
            {"id": "builtin", "kind": "mock"},
            {"id": "claude", "kind": "anthropic", "base_url": "http://127.0.0.1:7100/v1", "api_key_secret": "ANTHROPIC_KEY"}
        ],
        "models": [
            {"alias": "mock", "targets": [{"provider": "builtin", "model": "mock-1"}]},
            {"alias": "claude", "targets": [{"provider": "claude", "model": "claude-real"}]}
        ]
    });
    let h = TestHost::new(1_800_000_000_000, &policy.to_string());
    h.set_secret("ANTHROPIC_KEY", "sk-ant-secret");
    h
}

fn call(h: &TestHost, gw: &Gateway, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, http::HeaderMap, String) {
    let mut b = http::Request::post(format!("https://gw{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Bytes::from(body.to_string())).unwrap_or_else(|_| unreachable!());
    let (parts, body) = h.call(gw, req);
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn messages(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "ping"}]})
}

/// The `event:` names of an Anthropic stream, in order.
fn event_names(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("event: ")).map(str::to_owned).collect()
}

#[test]
fn anthropic_callers_reach_an_openai_shaped_provider() {
    let (h, gw) = (host(), Gateway::new());
    let (status, headers, body) =
        call(&h, &gw, "/v1/messages", &[("x-api-key", "sk-t"), ("anthropic-version", "2023-06-01")], messages("mock", false));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!((v["type"].as_str(), v["role"].as_str(), v["stop_reason"].as_str()), (Some("message"), Some("assistant"), Some("end_turn")));
    assert!(v["content"][0]["text"].as_str().is_some_and(|t| t.ends_with("You said: ping")));
    assert!(v["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(headers["request-id"], headers["x-request-id"]);

    let (status, _, body) = call(&h, &gw, "/v1/messages", &[("authorization", "Bearer sk-t")], messages("mock", true));
    assert_eq!(status, 200);
    let names = event_names(&body);
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(&names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    assert!(body.contains("\"output_tokens\":"), "usage reaches message_delta");
}

#[test]
fn anthropic_callers_get_errors_in_their_dialect() {
    let (h, gw) = (host(), Gateway::new());
    let cases = [
        (vec![], messages("mock", false), 401, "authentication_error"),
        (vec![("x-api-key", "sk-t")], messages("nope", false), 404, "not_found_error"),
        (vec![("x-api-key", "sk-t")], json!({"model": "mock", "messages": []}), 400, "invalid_request_error"),
    ];
    for (headers, body, status, kind) in cases {
        let (got, hdrs, text) = call(&h, &gw, "/v1/messages", &headers, body);
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!((got, v["type"].as_str(), v["error"]["type"].as_str()), (status, Some("error"), Some(kind)), "{text}");
        assert!(hdrs.contains_key("request-id"));
    }
    for _ in 0..5 {
        call(&h, &gw, "/v1/messages", &[("x-api-key", "sk-t")], messages("mock", false));
    }
    let (status, hdrs, text) = call(&h, &gw, "/v1/messages", &[("x-api-key", "sk-t")], messages("mock", false));
    assert_eq!((status, hdrs.contains_key("retry-after")), (429, true));
    assert!(text.contains("rate_limit_error"));
}

const CLAUDE_REPLY: &str = r#"{"id":"msg_9","type":"message","role":"assistant","model":"claude-real","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":2}}"#;

#[test]
fn openai_callers_reach_anthropic() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(200, CLAUDE_REPLY));
    let body = json!({"model": "claude", "messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}]});
    let (status, _, text) = call(&h, &gw, "/v1/chat/completions", &[("authorization", "Bearer sk-t")], body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(v["usage"]["total_tokens"], 5);
    let sent = h.sent();
    assert_eq!(sent[0].uri(), "http://127.0.0.1:7100/v1/messages");
    assert_eq!(sent[0].headers()["x-api-key"], "sk-ant-secret");
    let up: Value = serde_json::from_slice(sent[0].body()).unwrap_or_default();
    assert_eq!((up["model"].as_str(), up["system"].as_str()), (Some("claude-real"), Some("Be nice.")));
    assert_eq!(h.records()[0].usage.map(|u| (u.input, u.output)), Some((3, 2)));
}

#[test]
fn openai_stream_callers_reach_an_anthropic_stream_and_a_cut_is_an_error() {
    let (h, gw) = (host(), Gateway::new());
    let stream = [
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-real\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    h.script(Scripted::sse(&stream));
    let body = json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = call(&h, &gw, "/v1/chat/completions", &[("authorization", "Bearer sk-t")], body.clone());
    assert_eq!(status, 200);
    let datas: Vec<&str> = text.split("\n\n").filter_map(|f| f.strip_prefix("data: ")).collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let content: String = datas
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content, "Hello");
    assert!(!text.contains("\"usage\""), "usage only when asked");

    h.script(Scripted::sse(&stream[..3]));
    let (_, _, text) = call(&h, &gw, "/v1/chat/completions", &[("authorization", "Bearer sk-t")], body);
    assert!(!text.contains("[DONE]") && text.contains("upstream_protocol_error"), "{text}");
    let recs = h.records();
    assert_eq!(recs[0].usage.map(|u| (u.input, u.output)), Some((4, 2)));
    assert_eq!(recs[1].error, Some("upstream_protocol_error"));
}

#[test]
fn anthropic_callers_reach_anthropic_through_the_hub() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(200, CLAUDE_REPLY));
    let (status, _, text) = call(&h, &gw, "/v1/messages", &[("x-api-key", "sk-t")], messages("claude", false));
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(
        (v["content"][0]["text"].as_str(), v["model"].as_str(), v["id"].as_str()),
        (Some("Hello!"), Some("claude-real"), Some("msg_9"))
    );
    assert_eq!(v["usage"], json!({"input_tokens": 3, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}));
}

#[test]
fn count_tokens_asks_anthropic_and_estimates_for_others() {
    let (h, gw) = (host(), Gateway::new());
    h.script(Scripted::json(200, r#"{"input_tokens":42}"#));
    let body = json!({"model": "claude", "system": "Be brief.", "messages": [{"role": "user", "content": "How many tokens is this?"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}]});
    let (status, _, text) = call(&h, &gw, "/v1/messages/count_tokens", &[("x-api-key", "sk-t")], body.clone());
    assert_eq!((status, text.as_str()), (200, r#"{"input_tokens":42}"#));
    let sent = &h.sent()[0];
    assert_eq!(sent.uri(), "http://127.0.0.1:7100/v1/messages/count_tokens");
    let up: Value = serde_json::from_slice(sent.body()).unwrap_or_default();
    let mut keys: Vec<&str> = up.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(keys, ["messages", "model", "system", "tools"], "no max_tokens or sampling fields");

    let mut body = body;
    body["model"] = json!("mock");
    let (status, _, text) = call(&h, &gw, "/v1/messages/count_tokens", &[("x-api-key", "sk-t")], body);
    let n = serde_json::from_str::<Value>(&text).unwrap_or_default()["input_tokens"].as_u64().unwrap_or(0);
    assert_eq!(status, 200);
    assert!((10..60).contains(&n), "an estimate in the right range: {n}");
    assert_eq!(h.sent().len(), 1, "the mock is not asked");
}

#[test]
fn a_truncated_anthropic_conversation_still_opens_with_the_user_and_keeps_tool_results_with_their_calls() {
    let policy = json!({
        "tenants": [{"id": "t"}],
        "keys": [{"id": "k", "tenant": "t", "hash": key_hash_string("sk-t")}],
        "providers": [{"id": "claude", "kind": "anthropic", "base_url": "http://127.0.0.1:7100/v1", "api_key_secret": "ANTHROPIC_KEY"}],
        "models": [{"alias": "claude", "targets": [{"provider": "claude", "model": "claude-real"}],
                    "limits": {"max_prompt_tokens": 60}, "over_prompt_cap": "drop_oldest_turns"}]
    });
    let (h, gw) = (TestHost::new(1_800_000_000_000, &policy.to_string()), Gateway::new());
    h.set_secret("ANTHROPIC_KEY", "sk-ant-secret");
    h.script(Scripted::json(
        200,
        r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-real","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":9,"output_tokens":1}}"#,
    ));
    let body = json!({"model": "claude", "max_tokens": 20, "system": "Be brief.", "messages": [
        {"role": "user", "content": "an old question about the weather in Oslo ".repeat(5)},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}, {"type": "text", "text": "thanks"}]},
        {"role": "assistant", "content": "Rain."},
        {"role": "user", "content": "and tomorrow?"}
    ]});
    let (status, headers, answer) = call(&h, &gw, "/v1/messages", &[("x-api-key", "sk-t")], body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["x-edgegate-truncated-messages"], "3", "the question, the call and its result");
    let sent: Value = h.sent().last().map(|r| serde_json::from_slice(r.body()).unwrap_or_default()).unwrap_or_default();
    let roles: Vec<&str> = sent["messages"].as_array().into_iter().flatten().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user"], "{sent}");
    assert!(!sent.to_string().contains("toolu_1"), "no tool result without its call: {sent}");
    assert_eq!(sent["system"], "Be brief.", "{sent}");
}
