//! Translation overhead per request: how long the core spends converting between dialects and
//! provider formats, running a whole request through the gateway on the in-memory host, and the
//! decision path alone (authenticate, validate, count, route, admit).
//!
//! Native:  cargo run --release -p edgegate-core --features testkit --example bench_translate
//! wasm:    `bash tests/bench/native-vs-wasm.sh bench_translate` runs it both ways, the wasm build as a WASIp2 component
//!          under wasmtime (the Spin test host's `--run`), and prints a side-by-side table.
//!
//! Prints one line per case: the median of 15 batches, in microseconds per operation.
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/bench.rs"]
mod support;

use std::hint::black_box;

use support::bench;

use bytes::Bytes;
use edgegate_core::chat::{ChatRequest, Usage};
use edgegate_core::dialect::Dialect;
use edgegate_core::dialect::anthropic::Anthropic as AnthropicDialect;
use edgegate_core::dialect::openai::OpenAi;
use edgegate_core::firewall;
use edgegate_core::health::Board;
use edgegate_core::ledger::{Book, LedgerOp};
use edgegate_core::phases;
use edgegate_core::policy::Role;
use edgegate_core::policy::{Provider, ProviderKind, Target, key_hash_string};
use edgegate_core::providers::ProviderAdapter;
use edgegate_core::providers::anthropic::Anthropic;
use edgegate_core::providers::openai_compatible::OpenAiCompatible;
use edgegate_core::routing::{self, Origin};
use edgegate_core::snapshot::Snapshot;
use edgegate_core::testkit::TestHost;
use edgegate_core::{Body, Gateway};
use futures::StreamExt;

const OPENAI_REQUEST: &str = r#"{"model":"m","temperature":0.2,"max_tokens":512,
  "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
  "messages":[{"role":"system","content":"You are a concise assistant for a travel company."},
    {"role":"user","content":"What is the weather in Oslo and should I pack an umbrella for a three day trip next week?"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Oslo\"}"}}]},
    {"role":"tool","tool_call_id":"call_1","content":"Rain, 9 C, wind 12 km/h"},
    {"role":"user","content":"Thanks. Summarise in two sentences."}]}"#;

const ANTHROPIC_REQUEST: &str = r#"{"model":"m","max_tokens":512,"system":"You are a concise assistant for a travel company.",
  "tools":[{"name":"get_weather","description":"Weather for a city","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
  "messages":[{"role":"user","content":"What is the weather in Oslo and should I pack an umbrella for a three day trip next week?"},
    {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Oslo"}}]},
    {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"Rain, 9 C, wind 12 km/h"},{"type":"text","text":"Thanks. Summarise in two sentences."}]}]}"#;

const ANTHROPIC_RESPONSE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Expect rain around 9 C with some wind all week. Pack an umbrella and a light waterproof jacket."}],"stop_reason":"end_turn","usage":{"input_tokens":120,"output_tokens":24,"cache_read_input_tokens":0}}"#;

fn anthropic_stream() -> String {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":120,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for word in "Expect rain around 9 C with some wind all week. Pack an umbrella and a light waterproof jacket.".split_inclusive(' ') {
        let delta = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}});
        s.push_str(&format!("event: content_block_delta\ndata: {delta}\n\n"));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":24}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s
}

fn main() {
    let provider = Provider {
        id: "p".into(),
        kind: ProviderKind::Anthropic,
        base_url: "https://api.anthropic.com/v1".into(),
        api_key_secret: None,
        api_key_secret_secondary: None,
        api_version: None,
        region: None,
        quirks: Default::default(),
        location: Default::default(),
    };
    let target = Target { provider: "p".into(), model: "claude".into(), ..Target::default() };
    let openai_req = ChatRequest::parse(OPENAI_REQUEST.as_bytes()).unwrap();
    let stream = anthropic_stream();

    bench("parse OpenAI request (canonical)", || {
        black_box(ChatRequest::parse(black_box(OPENAI_REQUEST.as_bytes())).unwrap());
    });
    bench("parse Anthropic request → canonical", || {
        black_box(AnthropicDialect.parse_chat(black_box(ANTHROPIC_REQUEST.as_bytes())).unwrap());
    });
    bench("canonical → OpenAI-compatible upstream request", || {
        black_box(OpenAiCompatible.chat_request(&provider, &target, black_box(&openai_req), Some("k")).unwrap());
    });
    bench("canonical → Anthropic upstream request", || {
        black_box(Anthropic.chat_request(&provider, &target, black_box(&openai_req), Some("k")).unwrap());
    });
    bench("Anthropic response → canonical completion", || {
        black_box(Anthropic.chat_response(black_box(ANTHROPIC_RESPONSE.as_bytes()), 1).unwrap());
    });
    let completion = Anthropic.chat_response(ANTHROPIC_RESPONSE.as_bytes(), 1).unwrap();
    bench("canonical completion → Anthropic message", || {
        black_box(AnthropicDialect.render_completion(black_box(&completion)).unwrap());
    });
    bench("Anthropic stream (20 deltas) → canonical chunks", || {
        let mut d = Anthropic.stream_decoder(&provider, 1);
        black_box(d.push(black_box(stream.as_bytes())).unwrap());
        black_box(d.finish().unwrap());
    });
    let mut d = Anthropic.stream_decoder(&provider, 1);
    let mut chunks: Vec<(String, Option<Usage>, bool)> = Vec::new();
    for ev in d.push(stream.as_bytes()).unwrap().into_iter().chain(d.finish().unwrap()) {
        if let edgegate_core::providers::StreamEvent::Chunk { json, usage, usage_only, .. } = ev {
            chunks.push((json, usage, usage_only));
        }
    }
    bench("canonical chunks (20 deltas) → Anthropic events", || {
        let mut enc = AnthropicDialect.stream_encoder(false);
        for (json, usage, only) in &chunks {
            black_box(enc.chunk(json, *usage, *only));
        }
        black_box(enc.done());
    });
    bench("Anthropic stream → canonical → OpenAI SSE (passthrough encode)", || {
        let mut d = Anthropic.stream_decoder(&provider, 1);
        let mut enc = edgegate_core::dialect::openai::OpenAi.stream_encoder(false);
        for ev in d.push(stream.as_bytes()).unwrap() {
            if let edgegate_core::providers::StreamEvent::Chunk { json, usage, usage_only, .. } = ev {
                black_box(enc.chunk(&json, usage, usage_only));
            }
        }
    });

    // A whole request through the gateway on the in-memory host: authenticate, admit, validate,
    // route, the built-in mock provider, record.
    let policy = serde_json::json!({
        "tenants": [{"id": "t", "limits": {"requests_per_minute": 1_000_000_000u64}}],
        "keys": [{"id": "k", "tenant": "t", "hash": key_hash_string("sk")}],
        "providers": [{"id": "mock", "kind": "mock"}],
        "models": [{"alias": "m", "targets": [{"provider": "mock", "model": "mock-1"}]}]
    });
    let host = TestHost::new(1_800_000_000_000, &policy.to_string());
    let gw = Gateway::new();
    let body = Bytes::from_static(OPENAI_REQUEST.as_bytes());
    let request = || http::Request::post("https://gw/v1/chat/completions").header("authorization", "Bearer sk").body(body.clone()).unwrap();
    bench("whole request, OpenAI in, built-in mock, non-stream", || {
        let resp = futures::executor::block_on(gw.handle(&host, request()));
        black_box(resp);
        host.drain_records(); // runs the deferred record phase
    });
    bench("whole request, OpenAI in, built-in mock, stream", || {
        futures::executor::block_on(async {
            if let Body::Stream(mut s) = gw
                .handle(&host, request().map(|_| Bytes::from(OPENAI_REQUEST.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""))))
                .await
                .into_body()
            {
                while let Some(frame) = s.next().await {
                    black_box(frame);
                }
            }
        });
        host.drain_records();
    });

    // The same with prompts of 1 KB and 16 KB, on an alias whose model tiktoken knows (the
    // prompt counted exactly, o200k_base) and on one it does not (estimated from its length).
    let policy = serde_json::json!({
        "tenants": [{"id": "t", "limits": {"requests_per_minute": 1_000_000_000u64, "tokens_per_minute": 1_000_000_000_000u64}}],
        "keys": [{"id": "k", "tenant": "t", "hash": key_hash_string("sk")}],
        "providers": [{"id": "mock", "kind": "mock"}],
        "models": [
            {"alias": "exact", "targets": [{"provider": "mock", "model": "gpt-4o-mini"}]},
            {"alias": "estimated", "targets": [{"provider": "mock", "model": "mock-1"}]}
        ]
    });
    let host = TestHost::new(1_800_000_000_000, &policy.to_string());
    let prose = "The gateway admits a request only when the tenant's ledger has room for it; \
                 prompts are counted before routing, and answers are guarded on the way back. ";
    for kb in [1usize, 16] {
        let prompt: String = prose.chars().cycle().take(kb * 1024).collect();
        for alias in ["exact", "estimated"] {
            let body = serde_json::json!({"model": alias, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]});
            let body = Bytes::from(body.to_string());
            bench(&format!("whole request, {kb} KB prompt, {alias} count, built-in mock"), || {
                let req =
                    http::Request::post("https://gw/v1/chat/completions").header("authorization", "Bearer sk").body(body.clone()).unwrap();
                black_box(futures::executor::block_on(gw.handle(&host, req)));
                host.drain_records();
            });
        }
    }

    // The decision path alone, as the performance target names it: authenticate, validate (parse
    // and the firewall), count or estimate the prompt, route, and admit in an in-memory ledger
    // book (the hold released after). No provider, response or record.
    let snapshot =
        Snapshot { active: std::rc::Rc::new(edgegate_core::Policy::compile(policy.to_string().as_bytes()).unwrap()), canary: None };
    let (origin, board) = (Origin::default(), Board::default());
    let mut book = Book::default();
    let now = 1_800_000_000_000;
    for kb in [1usize, 16] {
        let prompt: String = prose.chars().cycle().take(kb * 1024).collect();
        for alias in ["exact", "estimated"] {
            let body = Bytes::from(
                serde_json::json!({"model": alias, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}).to_string(),
            );
            bench(&format!("decision path, {kb} KB prompt, {alias} count"), || {
                let (policy, principal) = phases::authenticate(&snapshot, "sk", now, Role::Invoke).unwrap();
                let mut chat = phases::validate(&OpenAi, &body).unwrap();
                let levels = [policy.route(alias).and_then(|r| r.firewall.as_ref()), principal.tenant.firewall.as_ref(), policy.firewall()];
                let rules = firewall::Effective::resolve(&levels, policy.rule_sets());
                let (verdict, allowed) = firewall::enforce(&mut chat, &rules, &body);
                allowed.unwrap();
                let prompt = chat.prompt_tokens(policy.encoding(&chat.model));
                let ask = routing::Ask { alias, origin: &origin, chat: Some(&chat), prompt_tokens: prompt, output_tokens: 16 };
                let plan = routing::plan(&policy, &principal, ask, &board, now, 7).unwrap();
                let limits = phases::limits(&policy, &principal, phases::Scope { alias, feature: None });
                let ask = phases::ask(&plan.candidates, prompt, 16);
                let id = String::from("req");
                let answer = book.apply(now, LedgerOp::Reserve { id: id.clone(), limits, ask, screen: None, queue_until_ms: None });
                book.apply(now, LedgerOp::Release { id });
                black_box((verdict, plan, answer));
            });
        }
    }
}
