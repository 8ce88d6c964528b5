//! The provider conformance suite: every provider must pass the same cases, driven through the
//! whole gateway on the test host with wire fixtures in the provider's own format — plain,
//! streaming, tool call, streaming with several tool calls, 429 with Retry-After, 5xx, malformed
//! chunk, mid-stream cut, and usage in disjoint buckets.

use bytes::Bytes;
use edgegate_core::Gateway;
use edgegate_core::chat::Usage;
use edgegate_core::policy::key_hash_string;
use edgegate_core::testkit::{Scripted, TestHost};
use serde_json::{Value, json};

/// One provider's wire fixtures.
struct Fixture {
    /// Policy `kind`.
    kind: &'static str,
    /// A completion answering "Hello!", with usage.
    plain: &'static str,
    /// The usage `plain` must normalise to.
    plain_usage: Usage,
    /// A stream answering "Hello!" in pieces, ending properly, with usage.
    stream: fn() -> Vec<Bytes>,
    /// A completion calling `get_weather` with `{"city":"Oslo"}`.
    tool_call: &'static str,
    /// A stream calling `get_weather` (Oslo) and then `get_time` (`{"tz":"CET"}`).
    stream_tools: fn() -> Vec<Bytes>,
    /// An error body for a status.
    error: &'static str,
    /// A stream piece that cannot be decoded.
    malformed: fn() -> Bytes,
}

fn host(kind: &str) -> (TestHost, Gateway) {
    let policy = json!({
        "tenants": [{"id": "t"}],
        "keys": [{"id": "k", "tenant": "t", "hash": key_hash_string("sk")}],
        "providers": [{"id": "p", "kind": kind, "base_url": "http://127.0.0.1:7000/v1", "api_key_secret": "KEY"}],
        "models": [{"alias": "m", "targets": [{"provider": "p", "model": "real-model"}]}]
    });
    let h = TestHost::new(1_800_000_000_000, &policy.to_string());
    h.set_secret("KEY", "sk-upstream");
    (h, Gateway::new())
}

fn ask(h: &TestHost, gw: &Gateway, stream: bool, tools: bool) -> (u16, http::HeaderMap, String) {
    let mut body = json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]});
    if tools {
        body["tools"] = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
        ]);
    }
    let req = http::Request::post("https://gw/v1/chat/completions")
        .header("authorization", "Bearer sk")
        .body(Bytes::from(body.to_string()))
        .unwrap_or_else(|_| unreachable!());
    let (parts, body) = h.call(gw, req);
    (parts.status.as_u16(), parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// The data payloads of an OpenAI SSE body.
fn datas(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|f| f.strip_prefix("data: ")).map(str::to_owned).collect()
}

fn streamed_text(body: &str) -> String {
    datas(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

/// Tool calls reassembled from stream deltas, as (name, arguments) in index order.
fn streamed_calls(body: &str) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for chunk in datas(body).iter().filter_map(|d| serde_json::from_str::<Value>(d).ok()) {
        for tc in chunk["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap_or(0) as usize;
            if calls.len() <= i {
                calls.resize(i + 1, (String::new(), String::new()));
            }
            if let Some(name) = tc["function"]["name"].as_str() {
                calls[i].0.push_str(name);
            }
            if let Some(args) = tc["function"]["arguments"].as_str() {
                calls[i].1.push_str(args);
            }
        }
    }
    calls
}

/// Stream pieces from text.
fn pieces(texts: &[&'static str]) -> Vec<Bytes> {
    texts.iter().map(|t| Bytes::from_static(t.as_bytes())).collect()
}

fn stream_of(pieces: Vec<Bytes>) -> Scripted {
    Scripted::Respond { status: 200, headers: vec![], chunks: pieces.into_iter().map(Ok).collect() }
}

fn scripted(status: u16, headers: Vec<(&'static str, &'static str)>, body: &'static str) -> Scripted {
    Scripted::Respond { status, headers, chunks: vec![Ok(Bytes::from_static(body.as_bytes()))] }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

macro_rules! conformance {
    ($name:ident, $fixture:expr) => {
        mod $name {
            use super::*;

            const F: Fixture = $fixture;

            #[test]
            fn plain() {
                let (h, gw) = host(F.kind);
                h.script(Scripted::json(200, F.plain));
                let (status, _, body) = ask(&h, &gw, false, false);
                assert_eq!(status, 200, "{body}");
                let v = json_of(&body);
                assert_eq!((v["object"].as_str(), v["choices"][0]["message"]["content"].as_str()), (Some("chat.completion"), Some("Hello!")));
                assert_eq!(v["choices"][0]["finish_reason"], "stop");
            }

            #[test]
            fn usage_in_disjoint_buckets() {
                let (h, gw) = host(F.kind);
                h.script(Scripted::json(200, F.plain));
                let (_, _, body) = ask(&h, &gw, false, false);
                let u = F.plain_usage;
                assert_eq!(h.records()[0].usage, Some(u));
                let v = json_of(&body);
                assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(u.prompt_tokens()), "prompt_tokens = input + cache read + cache write");
                assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(u.completion_tokens()));
            }

            #[test]
            fn streaming() {
                let (h, gw) = host(F.kind);
                h.script(stream_of((F.stream)()));
                let (status, headers, body) = ask(&h, &gw, true, false);
                assert_eq!((status, headers["content-type"].to_str().ok()), (200, Some("text/event-stream")));
                assert_eq!(streamed_text(&body), "Hello!");
                assert_eq!(datas(&body).last().map(String::as_str), Some("[DONE]"));
                assert!(h.records()[0].usage.is_some_and(|u| u.completion_tokens() > 0), "stream usage is known at the end");
            }

            #[test]
            fn tool_call() {
                let (h, gw) = host(F.kind);
                h.script(Scripted::json(200, F.tool_call));
                let (status, _, body) = ask(&h, &gw, false, true);
                assert_eq!(status, 200, "{body}");
                let v = json_of(&body);
                let call = &v["choices"][0]["message"]["tool_calls"][0];
                assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
                assert_eq!(call["function"]["name"], "get_weather");
                assert_eq!(json_of(call["function"]["arguments"].as_str().unwrap_or("")), json!({"city": "Oslo"}));
                assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
            }

            #[test]
            fn streaming_several_tool_calls() {
                let (h, gw) = host(F.kind);
                h.script(stream_of((F.stream_tools)()));
                let (_, _, body) = ask(&h, &gw, true, true);
                let calls: Vec<(String, Value)> = streamed_calls(&body).into_iter().map(|(n, a)| (n, json_of(&a))).collect();
                assert_eq!(calls, [("get_weather".to_owned(), json!({"city": "Oslo"})), ("get_time".to_owned(), json!({"tz": "CET"}))], "{body}");
                let finish = datas(&body).iter().filter_map(|d| serde_json::from_str::<Value>(d).ok()).find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
                assert_eq!(finish.as_deref(), Some("tool_calls"));
            }

            #[test]
            fn rate_limited_with_retry_after() {
                let (h, gw) = host(F.kind);
                h.script(scripted(429, vec![("retry-after", "12")], F.error));
                let (status, headers, body) = ask(&h, &gw, false, false);
                assert_eq!(status, 429, "{body}");
                assert_eq!(json_of(&body)["error"]["code"], "upstream_rate_limited");
                assert_eq!(headers["retry-after"], "12");
            }

            #[test]
            fn server_error() {
                let (h, gw) = host(F.kind);
                h.script(scripted(503, vec![], F.error));
                let (status, headers, body) = ask(&h, &gw, false, false);
                assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (502, Some("upstream_error")));
                assert_eq!(headers["x-should-retry"], "true");
            }

            #[test]
            fn malformed_chunk_after_content() {
                let (h, gw) = host(F.kind);
                let mut pieces = (F.stream)();
                pieces.truncate(pieces.len() / 2 + 1);
                pieces.push((F.malformed)());
                h.script(stream_of(pieces));
                let (_, _, body) = ask(&h, &gw, true, false);
                let last = datas(&body).last().cloned().unwrap_or_default();
                assert_eq!(json_of(&last)["error"]["code"], "upstream_protocol_error", "{body}");
                assert!(!body.contains("[DONE]"));
            }

            #[test]
            fn cut_mid_stream() {
                let (h, gw) = host(F.kind);
                let mut pieces = (F.stream)();
                pieces.truncate(pieces.len() / 2 + 1);
                h.script(stream_of(pieces));
                let (_, _, body) = ask(&h, &gw, true, false);
                assert!(!streamed_text(&body).is_empty(), "content before the cut is delivered: {body}");
                let last = datas(&body).last().cloned().unwrap_or_default();
                assert!(json_of(&last)["error"].is_object(), "a cut stream ends with an error event: {body}");
                assert!(!body.contains("[DONE]"));
            }
        }
    };
}

/// OpenAI's wire format, spoken by `openai_compatible` and `azure_openai`.
const OPENAI_WIRE: Fixture = Fixture {
    kind: "openai_compatible",
    plain: r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"real-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150,"prompt_tokens_details":{"cached_tokens":100},"completion_tokens_details":{"reasoning_tokens":20}}}"#,
    plain_usage: Usage { input: 20, cache_read: 100, cache_write: 0, output: 10, reasoning: 20 },
    stream: || {
        pieces(&[
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo!\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
        ])
    },
    tool_call: r#"{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"real-model","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},"finish_reason":"tool_calls"}]}"#,
    stream_tools: || {
        pieces(&[
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Oslo\\\"}\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{\\\"tz\\\":\\\"CET\\\"}\"}}]}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"total_tokens\":14}}\n\n",
            "data: [DONE]\n\n",
        ])
    },
    error: r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    malformed: || Bytes::from_static("data: {\"choices\":[{\"delta\":{\"content\":\"oops\n\n".as_bytes()),
};

conformance!(openai_compatible, OPENAI_WIRE);
conformance!(openai, Fixture { kind: "openai", ..OPENAI_WIRE });
conformance!(azure_openai, Fixture { kind: "azure_openai", ..OPENAI_WIRE });

conformance!(
    anthropic,
    Fixture {
        kind: "anthropic",
        plain: r#"{"id":"msg_1","type":"message","role":"assistant","model":"real-model","content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":20,"cache_read_input_tokens":100,"cache_creation_input_tokens":7,"output_tokens":30}}"#,
        plain_usage: Usage { input: 20, cache_read: 100, cache_write: 7, output: 30, reasoning: 0 },
        stream: || pieces(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"real-model\",\"content\":[],\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo!\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ]),
        tool_call: r#"{"id":"msg_2","type":"message","role":"assistant","model":"real-model","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Oslo"}}],"stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":9}}"#,
        stream_tools: || pieces(&[
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_3\",\"model\":\"real-model\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Oslo\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"get_time\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"tz\\\":\\\"CET\\\"}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ]),
        error: r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#,
        malformed: || Bytes::from_static(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_de\n\n".as_bytes()
        ),
    }
);

conformance!(
    gemini,
    Fixture {
        kind: "gemini",
        plain: r#"{"candidates":[{"content":{"parts":[{"text":"Hello!"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":10,"totalTokenCount":150,"cachedContentTokenCount":100,"thoughtsTokenCount":20},"modelVersion":"real-model","responseId":"r1"}"#,
        plain_usage: Usage { input: 20, cache_read: 100, cache_write: 0, output: 10, reasoning: 20 },
        stream: || pieces(&[
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1},\"modelVersion\":\"real-model\",\"responseId\":\"r2\"}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo!\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"real-model\",\"responseId\":\"r2\"}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2,\"totalTokenCount\":7},\"modelVersion\":\"real-model\",\"responseId\":\"r2\"}\r\n\r\n",
        ]),
        tool_call: r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Oslo"}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":9},"modelVersion":"real-model"}"#,
        stream_tools: || pieces(&[
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Oslo\"}}}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_time\",\"args\":{\"tz\":\"CET\"}}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":9}}\r\n\r\n",
        ]),
        error: r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        malformed: || Bytes::from_static("data: {\"candidates\":[{\"content\":\r\n\r\n".as_bytes()),
    }
);

/// Bedrock ConverseStream frames (AWS event-stream binary framing).
fn frames(events: &[(&str, Value)]) -> Vec<Bytes> {
    events.iter().map(|(kind, payload)| Bytes::from(edgegate_core::providers::bedrock::frame(kind, payload))).collect()
}

conformance!(
    bedrock,
    Fixture {
        kind: "bedrock",
        plain: r#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello!"}]}},"stopReason":"end_turn","usage":{"inputTokens":20,"outputTokens":30,"totalTokens":157,"cacheReadInputTokens":100,"cacheWriteInputTokens":7},"metrics":{"latencyMs":120}}"#,
        plain_usage: Usage { input: 20, cache_read: 100, cache_write: 7, output: 30, reasoning: 0 },
        stream: || {
            frames(&[
                ("messageStart", json!({"role": "assistant"})),
                ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
                ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo!"}})),
                ("contentBlockStop", json!({"contentBlockIndex": 0})),
                ("messageStop", json!({"stopReason": "end_turn"})),
                ("metadata", json!({"usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7}, "metrics": {"latencyMs": 80}})),
            ])
        },
        tool_call: r#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"tooluse_1","name":"get_weather","input":{"city":"Oslo"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":5,"outputTokens":9,"totalTokens":14}}"#,
        stream_tools: || {
            frames(&[
                ("messageStart", json!({"role": "assistant"})),
                (
                    "contentBlockStart",
                    json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
                ),
                ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"city\":"}}})),
                ("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "\"Oslo\"}"}}})),
                ("contentBlockStop", json!({"contentBlockIndex": 0})),
                (
                    "contentBlockStart",
                    json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time"}}}),
                ),
                ("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"tz\":\"CET\"}"}}})),
                ("contentBlockStop", json!({"contentBlockIndex": 1})),
                ("messageStop", json!({"stopReason": "tool_use"})),
                ("metadata", json!({"usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}})),
            ])
        },
        error: r#"{"message":"Too many requests, please wait before trying again."}"#,
        malformed: || {
            let mut bad =
                edgegate_core::providers::bedrock::frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "x"}}));
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55; // the checksum no longer matches
            Bytes::from(bad)
        },
    }
);

conformance!(
    workers_ai,
    Fixture {
        kind: "workers_ai",
        plain: r#"{"response":"Hello!","usage":{"prompt_tokens":20,"completion_tokens":30,"total_tokens":50}}"#,
        plain_usage: Usage { input: 20, cache_read: 0, cache_write: 0, output: 30, reasoning: 0 },
        stream: || {
            pieces(&[
                "data: {\"response\":\"Hel\",\"p\":\"abc\"}\n\n",
                "data: {\"response\":\"lo!\",\"p\":\"abcd\"}\n\n",
                "data: {\"response\":\"\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
                "data: [DONE]\n\n",
            ])
        },
        tool_call: r#"{"response":null,"tool_calls":[{"name":"get_weather","arguments":{"city":"Oslo"}}],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#,
        stream_tools: || {
            pieces(&[
                "data: {\"response\":\"\",\"tool_calls\":[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}]}\n\n",
                "data: {\"response\":\"\",\"tool_calls\":[{\"name\":\"get_time\",\"arguments\":{\"tz\":\"CET\"}}]}\n\n",
                "data: {\"response\":\"\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"total_tokens\":14}}\n\n",
                "data: [DONE]\n\n",
            ])
        },
        error: r#"{"errors":[{"message":"Capacity temporarily exceeded","code":3040}],"success":false}"#,
        malformed: || Bytes::from_static(b"data: {\"response\":\n\n"),
    }
);
