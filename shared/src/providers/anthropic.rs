//! Anthropic Messages (`POST {base_url}/messages`, API version 2023-06-01).
//!
//! Converts the canonical (OpenAI-shaped) request into a Messages request, and Messages answers
//! and event streams back into canonical completions and chunks.
//!
//! Not translated (and why): `response_format` (Messages has no JSON mode; ask in the prompt),
//! `seed`, `logprobs`, `presence_penalty`/`frequency_penalty` (no equivalents; dropped), `n` > 1
//! (refused with a 400: one answer per request), thinking blocks in answers (the canonical
//! answer has no place for them yet).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Completion, ProviderAdapter, SseDecoder, SseEvents, StreamDecoder, StreamEvent, content_blocks, data_url, delta_chunk, invalid,
    post_json, push_turn, tool_arguments, usage_chunk,
};
use crate::chat::{ChatRequest, Role, Usage};
use crate::error::{Error, ErrorKind};
use crate::policy::{Provider, Target};
use crate::sse::SseEvent;

/// The adapter for Anthropic.
#[derive(Debug, Clone, Copy)]
pub struct Anthropic;

/// The API version this adapter speaks.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; used when the caller gave none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An image part's source block: data URLs become base64 sources, other URLs url sources.
fn image_source(url: &str) -> Value {
    if let Some((media, data)) = data_url(url) {
        return json!({"type": "base64", "media_type": media, "data": data});
    }
    json!({"type": "url", "url": url})
}

/// Content of a canonical message as Anthropic blocks.
fn blocks(content: Option<&Value>) -> Result<Vec<Value>, Error> {
    content_blocks(
        content,
        "Anthropic",
        |t| json!({"type": "text", "text": t}),
        |url| Ok(json!({"type": "image", "source": image_source(url)})),
    )
}

/// The canonical request as an Anthropic Messages request body.
pub fn messages_request(req: &ChatRequest, model: &str) -> Result<Value, Error> {
    req.require_single_choice("Anthropic")?;
    let mut system = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, content) = match m.role {
            Role::System | Role::Developer => {
                system.push(m.text());
                continue;
            }
            Role::User => ("user", blocks(m.content.as_ref())?),
            Role::Assistant => {
                let mut content = blocks(m.content.as_ref())?;
                for call in m.tool_calls.iter().flatten() {
                    let input = tool_arguments(call)?;
                    content.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": input}));
                }
                ("assistant", content)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| invalid("a tool message needs tool_call_id").with_param("messages"))?;
                ("user", vec![json!({"type": "tool_result", "tool_use_id": id, "content": m.text()})])
            }
        };
        push_turn(&mut messages, role, content);
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        Value::Array(messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()),
    );
    let max = req.extra.get("max_completion_tokens").or_else(|| req.extra.get("max_tokens")).and_then(Value::as_u64);
    body.insert("max_tokens".into(), json!(max.unwrap_or(DEFAULT_MAX_TOKENS)));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.extra.get(key).filter(|v| !v.is_null()) {
            body.insert(key.into(), v.clone());
        }
    }
    match req.extra.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(Value::Array(tools)) = req.extra.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = t.get("function").unwrap_or(t);
                let mut tool = json!({
                    "name": f.get("name").cloned().unwrap_or_default(),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let parallel = req.extra.get("parallel_tool_calls").and_then(Value::as_bool);
    let mut choice = match req.extra.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(_)) => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => o.get("function").and_then(|f| f.get("name")).map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    };
    if parallel == Some(false) {
        choice.get_or_insert_with(|| json!({"type": "auto"}))["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        body.insert("tool_choice".into(), c);
    }
    if let Some(user) = req.extra.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if req.is_stream() {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

/// A content block. Flat rather than a tagged enum: serde's tagged enums buffer every field and
/// cost several times the code size in wasm.
#[derive(Deserialize, Default)]
struct WireBlock {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    /// Anthropic's buckets are already disjoint; thinking tokens are inside `output_tokens`.
    fn from(u: WireUsage) -> Self {
        Usage {
            input: u.input_tokens,
            cache_read: u.cache_read_input_tokens.unwrap_or(0),
            cache_write: u.cache_creation_input_tokens.unwrap_or(0),
            output: u.output_tokens,
            reasoning: 0,
        }
    }
}

/// Anthropic's stop reason as an OpenAI finish reason.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    }
}

#[derive(Deserialize)]
struct WireErrorBody {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    message: String,
}

impl ProviderAdapter for Anthropic {
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let body = messages_request(req, &target.model)?;
        let headers = [("anthropic-version", Some(API_VERSION)), ("x-api-key", credential)];
        post_json(provider, format!("{}/messages", provider.base_url), &headers, body.to_string().into_bytes())
    }

    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error> {
        let m: WireMessage = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable message: {e}")))?;
        let mut text = String::new();
        let mut calls = Vec::new();
        for block in m.content {
            match block.kind.as_str() {
                "text" => text.push_str(block.text.as_deref().unwrap_or_default()),
                "tool_use" => {
                    let input = block.input.unwrap_or_else(|| json!({}));
                    calls.push(
                        json!({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": input.to_string()}}),
                    );
                }
                _ => {} // thinking and future block types carry nothing the canonical answer holds
            }
        }
        let usage = Usage::from(m.usage);
        let mut message =
            json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let completion = json!({
            "id": m.id, "object": "chat.completion", "created": created, "model": m.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(m.stop_reason.as_deref().unwrap_or("end_turn"))}],
            "usage": usage.to_openai(),
        });
        Ok(Completion { body: Bytes::from(completion.to_string()), usage: Some(usage) })
    }

    fn counts_tokens(&self) -> bool {
        true
    }

    fn count_tokens_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let mut body = messages_request(req, &target.model)?;
        if let Value::Object(fields) = &mut body {
            // count_tokens takes the prompt only: model, system, messages, tools, tool_choice.
            fields.retain(|k, _| matches!(k.as_str(), "model" | "system" | "messages" | "tools" | "tool_choice"));
        }
        let headers = [("anthropic-version", Some(API_VERSION)), ("x-api-key", credential)];
        post_json(provider, format!("{}/messages/count_tokens", provider.base_url), &headers, body.to_string().into_bytes())
    }

    fn count_tokens_response(&self, body: &[u8]) -> Result<u64, Error> {
        #[derive(Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        serde_json::from_slice::<Count>(body)
            .map(|c| c.input_tokens)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable token count: {e}")))
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        serde_json::from_slice::<WireErrorBody>(body).ok().map(|b| b.error.message)
    }

    fn stream_decoder(&self, _provider: &Provider, created: u64) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(Events { created, ..Events::default() }))
    }
}

/// Decodes Anthropic's event stream into canonical (OpenAI chunk) events.
#[derive(Default)]
struct Events {
    created: u64,
    id: String,
    model: String,
    usage: WireUsage,
    /// Anthropic block index → OpenAI tool-call index, for tool_use blocks.
    tool_index: Vec<(u64, usize)>,
    done: bool,
}

/// One stream event, flat (see [`WireBlock`]); `kind` says which fields are set.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<WireMessageStart>,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    content_block: Option<WireBlock>,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    usage: Option<WireUsageDelta>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize, Default)]
struct WireMessageStart {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

/// A content-block delta or a message delta.
#[derive(Deserialize, Default)]
struct WireDelta {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireUsageDelta {
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl Events {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> StreamEvent {
        let content = finish.is_some() || delta.get("role").is_none();
        delta_chunk(&self.id, &self.model, self.created, delta, finish, content)
    }
}

impl SseEvents for Events {
    fn done(&self) -> bool {
        self.done
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let event: WireEvent = serde_json::from_str(&ev.data)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent a malformed stream event: {e}")))?;
        let index = event.index;
        match event.kind.as_str() {
            "message_start" => {
                let message = event.message.unwrap_or_default();
                self.id = message.id;
                self.model = message.model;
                self.usage = message.usage;
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => {
                let block = event.content_block.unwrap_or_default();
                match block.kind.as_str() {
                    "tool_use" => {
                        let call = self.tool_index.len();
                        self.tool_index.push((index, call));
                        let function = json!({"name": block.name, "arguments": ""});
                        let delta = json!({"tool_calls": [{"index": call, "id": block.id, "type": "function", "function": function}]});
                        out.push(self.chunk(delta, None));
                    }
                    "text" => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"content": text}), None));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = event.delta.unwrap_or_default();
                match delta.kind.as_str() {
                    "text_delta" => out.push(self.chunk(json!({"content": delta.text.unwrap_or_default()}), None)),
                    "input_json_delta" => {
                        let call = self.tool_index.iter().find(|(i, _)| *i == index).map_or(0, |(_, c)| *c);
                        let args = delta.partial_json.unwrap_or_default();
                        out.push(self.chunk(json!({"tool_calls": [{"index": call, "function": {"arguments": args}}]}), None));
                    }
                    _ => {} // thinking and signature deltas
                }
            }
            "message_delta" => {
                if let Some(u) = event.usage {
                    self.usage.output_tokens = u.output_tokens.unwrap_or(self.usage.output_tokens);
                    self.usage.input_tokens = u.input_tokens.unwrap_or(self.usage.input_tokens);
                    self.usage.cache_creation_input_tokens = u.cache_creation_input_tokens.or(self.usage.cache_creation_input_tokens);
                    self.usage.cache_read_input_tokens = u.cache_read_input_tokens.or(self.usage.cache_read_input_tokens);
                }
                let stop = event.delta.and_then(|d| d.stop_reason);
                out.push(self.chunk(json!({}), Some(finish_reason(stop.as_deref().unwrap_or("end_turn")))));
            }
            "message_stop" => {
                out.push(usage_chunk(&self.id, &self.model, self.created, Usage::from(self.usage)));
                out.push(StreamEvent::Done);
                self.done = true;
            }
            "error" => {
                let msg = super::quote(&event.error.map(|e| e.message).unwrap_or_default());
                return Err(Error::new(ErrorKind::UpstreamProtocol, format!("provider reported an error mid-stream: {msg}")));
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::policy::ProviderKind;

    fn provider() -> Provider {
        Provider {
            id: "a".into(),
            kind: ProviderKind::Anthropic,
            base_url: "https://api.anthropic.com/v1".into(),
            api_key_secret: None,
            api_key_secret_secondary: None,
            api_version: None,
            region: None,
            quirks: Default::default(),
            location: Default::default(),
        }
    }

    fn translate(body: &str, expect: Expect) {
        let req = ChatRequest::parse(body.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        let target = Target { provider: "a".into(), model: "claude-x".into(), ..Target::default() };
        let up = Anthropic.chat_request(&provider(), &target, &req, Some("sk-ant")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(up.uri(), "https://api.anthropic.com/v1/messages");
        assert_eq!(
            (up.headers()["x-api-key"].to_str().ok(), up.headers()["anthropic-version"].to_str().ok()),
            (Some("sk-ant"), Some(API_VERSION))
        );
        let v: Value = serde_json::from_slice(up.body()).unwrap_or_default();
        expect.assert_eq(&serde_json::to_string_pretty(&v).unwrap_or_default());
    }

    #[test]
    fn translates_system_tools_calls_results_images_and_options() {
        translate(
            r#"{"model":"alias","max_tokens":100,"temperature":0.5,"stop":"END","user":"u1","parallel_tool_calls":false,
                "tools":[{"type":"function","function":{"name":"weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
                "tool_choice":"required",
                "messages":[
                  {"role":"system","content":"Be brief."},
                  {"role":"developer","content":"Use tools."},
                  {"role":"user","content":[{"type":"text","text":"Look:"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
                  {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},
                  {"role":"tool","tool_call_id":"call_1","content":"rain"},
                  {"role":"user","content":"And tomorrow?"}
                ]}"#,
            expect![[r#"
                {
                  "max_tokens": 100,
                  "messages": [
                    {
                      "content": [
                        {
                          "text": "Look:",
                          "type": "text"
                        },
                        {
                          "source": {
                            "data": "AAAA",
                            "media_type": "image/png",
                            "type": "base64"
                          },
                          "type": "image"
                        }
                      ],
                      "role": "user"
                    },
                    {
                      "content": [
                        {
                          "id": "call_1",
                          "input": {
                            "city": "Oslo"
                          },
                          "name": "weather",
                          "type": "tool_use"
                        }
                      ],
                      "role": "assistant"
                    },
                    {
                      "content": [
                        {
                          "content": "rain",
                          "tool_use_id": "call_1",
                          "type": "tool_result"
                        },
                        {
                          "text": "And tomorrow?",
                          "type": "text"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "metadata": {
                    "user_id": "u1"
                  },
                  "model": "claude-x",
                  "stop_sequences": [
                    "END"
                  ],
                  "system": "Be brief.\n\nUse tools.",
                  "temperature": 0.5,
                  "tool_choice": {
                    "disable_parallel_tool_use": true,
                    "type": "any"
                  },
                  "tools": [
                    {
                      "description": "Weather",
                      "input_schema": {
                        "properties": {
                          "city": {
                            "type": "string"
                          }
                        },
                        "type": "object"
                      },
                      "name": "weather"
                    }
                  ]
                }"#]],
        );
    }

    #[test]
    fn max_tokens_defaults_and_stream_is_passed() {
        translate(
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            expect![[r#"
                {
                  "max_tokens": 4096,
                  "messages": [
                    {
                      "content": [
                        {
                          "text": "hi",
                          "type": "text"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "model": "claude-x",
                  "stream": true
                }"#]],
        );
    }

    #[test]
    fn several_choices_are_refused_not_silently_reduced() {
        let req = ChatRequest::parse(br#"{"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let target = Target { provider: "a".into(), model: "c".into(), ..Target::default() };
        let err = Anthropic.chat_request(&provider(), &target, &req, None).err().map(|e| (e.status(), e.param));
        assert_eq!(err, Some((400, Some("n".into()))));
        assert!(crate::providers::gemini::generate_request(&req).is_err());
        assert!(crate::providers::bedrock::converse_request(&req).is_err());
    }

    #[test]
    fn untranslatable_input_is_a_400() {
        let req = ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let target = Target { provider: "a".into(), model: "c".into(), ..Target::default() };
        let err = Anthropic.chat_request(&provider(), &target, &req, None).err().map(|e| (e.status(), e.metric_label()));
        assert_eq!(err, Some((400, "invalid_request")));
    }

    #[test]
    fn response_becomes_a_canonical_completion_with_disjoint_usage() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","stop_reason":"tool_use",
            "content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Oslo"}}],
            "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":7}}"#;
        let c = Anthropic.chat_response(body, 1_700_000_000).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(c.usage, Some(Usage { input: 10, cache_read: 100, cache_write: 7, output: 5, reasoning: 0 }));
        let v: Value = serde_json::from_slice(&c.body).unwrap_or_default();
        expect![[r#"{"choices":[{"finish_reason":"tool_calls","index":0,"logprobs":null,"message":{"content":"Checking.","role":"assistant","tool_calls":[{"function":{"arguments":"{\"city\":\"Oslo\"}","name":"weather"},"id":"toolu_1","type":"function"}]}}],"created":1700000000,"id":"msg_1","model":"claude-x","object":"chat.completion","usage":{"completion_tokens":5,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":117,"prompt_tokens_details":{"cached_tokens":100},"total_tokens":122}}"#]]
            .assert_eq(&v.to_string());
    }

    fn decode(stream: &str) -> (Vec<String>, Option<Usage>, Option<String>) {
        let mut d = Anthropic.stream_decoder(&provider(), 1);
        let mut out = Vec::new();
        let mut usage = None;
        let mut events = match d.push(stream.as_bytes()) {
            Ok(e) => e,
            Err(e) => return (out, usage, Some(e.message)),
        };
        match d.finish() {
            Ok(e) => events.extend(e),
            Err(e) => {
                for ev in events {
                    if let StreamEvent::Chunk { json, .. } = ev {
                        out.push(json);
                    }
                }
                return (out, usage, Some(e.message));
            }
        }
        for ev in events {
            match ev {
                StreamEvent::Chunk { json, usage: u, .. } => {
                    usage = u.or(usage);
                    out.push(json);
                }
                StreamEvent::Done => out.push("[DONE]".into()),
            }
        }
        (out, usage, None)
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
        event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
        event: ping\ndata: {\"type\":\"ping\"}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
        event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
        event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n\
        event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n\
        event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn stream_becomes_canonical_chunks_with_tool_calls_and_final_usage() {
        let (chunks, usage, err) = decode(STREAM);
        assert_eq!(err, None);
        assert_eq!(usage, Some(Usage { input: 12, output: 9, ..Usage::default() }));
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"content":"Hi"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"f"},"id":"toolu_1","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"a\":"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk"}
            {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk"}
            {"choices":[],"created":1,"id":"msg_1","model":"claude-x","object":"chat.completion.chunk","usage":{"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":12,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":21}}
            [DONE]"#]]
        .assert_eq(&chunks.join("\n"));
    }

    #[test]
    fn stream_cuts_garbage_and_error_events_are_errors() {
        let cut = &STREAM[..STREAM.find("event: message_delta").unwrap_or(0)];
        assert!(decode(cut).2.is_some_and(|m| m.contains("ended before")));
        assert!(decode("event: message_start\ndata: {nope\n\n").2.is_some_and(|m| m.contains("malformed")));
        let overloaded =
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert!(decode(overloaded).2.is_some_and(|m| m.contains("Overloaded")));
    }

    #[test]
    fn errors_map_like_every_provider() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens too large"}}"#;
        let error_response = |status, body: &[u8]| super::super::upstream_error(&Anthropic, status, &http::HeaderMap::new(), body);
        let e = error_response(400, body);
        assert_eq!((e.kind.clone(), e.message.contains("max_tokens too large")), (ErrorKind::UpstreamRejected(400), true));
        assert_eq!(error_response(529, b"{}").kind, ErrorKind::UpstreamStatus(529));
        assert_eq!(error_response(401, b"{}").retry(), crate::error::Retry::Next);
    }
}
