//! The Anthropic Messages dialect (`POST /v1/messages`), for callers using Anthropic's SDKs.
//!
//! Not translated (and why): `thinking`/`redacted_thinking` blocks in the conversation are
//! dropped (only Anthropic models can read them back); `cache_control` marks are dropped (they are
//! hints, not content); `document` and server-tool blocks are refused with a 400.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Dialect, StreamEncoder};
use crate::chat::{ChatRequest, FunctionCall, Message, Role, ToolCall, Usage};
use crate::error::{Error, ErrorKind};
use crate::providers::Completion;

/// Anthropic's dialect.
#[derive(Debug, Clone, Copy)]
pub struct Anthropic;

#[derive(Deserialize)]
struct WireRequest {
    model: String,
    #[serde(default)]
    max_tokens: Option<u64>,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<WireTool>>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
    #[serde(default)]
    metadata: Option<WireMetadata>,
}

/// A message; `content` is a string or an array of blocks, read with [`Value`] accessors (serde's
/// untagged and tagged enums cost several times the code size in wasm).
#[derive(Deserialize)]
struct WireMessage {
    role: WireRole,
    content: Value,
}

#[derive(Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    User,
    Assistant,
}

#[derive(Deserialize)]
struct WireTool {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

#[derive(Deserialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct WireMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidRequest, msg)
}

/// The text of a string or of an array of blocks' text blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => {
            blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

fn message(role: Role, content: Option<Value>) -> Message {
    Message { role, content, tool_calls: None, tool_call_id: None, extra: Map::new() }
}

/// An image block's source as an image URL (data URL for base64 sources).
fn image_url(source: &Value) -> Option<String> {
    match source["type"].as_str()? {
        "base64" => Some(format!("data:{};base64,{}", source["media_type"].as_str()?, source["data"].as_str()?)),
        "url" => source["url"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// An Anthropic Messages request as the canonical request.
fn to_canonical(w: WireRequest) -> Result<ChatRequest, Error> {
    let mut messages = Vec::new();
    if let Some(system) = &w.system {
        messages.push(message(Role::System, Some(json!(text_of(system)))));
    }
    for (i, m) in w.messages.into_iter().enumerate() {
        let untranslatable = || {
            invalid(format!("messages[{i}] has a content block this gateway cannot translate")).with_param(format!("messages[{i}].content"))
        };
        let blocks = match m.content {
            Value::String(t) => vec![json!({"type": "text", "text": t})],
            Value::Array(b) => b,
            _ => return Err(invalid(format!("messages[{i}].content must be a string or an array of blocks"))),
        };
        let mut parts = Vec::new();
        let mut calls = Vec::new();
        for block in blocks {
            match (block["type"].as_str().unwrap_or(""), m.role) {
                ("text", _) => parts.push(json!({"type": "text", "text": block["text"].as_str().unwrap_or("")})),
                ("image", _) => {
                    let url = image_url(&block["source"]).ok_or_else(untranslatable)?;
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                ("tool_use", WireRole::Assistant) => {
                    let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else { return Err(untranslatable()) };
                    let input = if block["input"].is_null() { json!({}) } else { block["input"].clone() };
                    let function = FunctionCall { name: name.to_owned(), arguments: input.to_string() };
                    calls.push(ToolCall { id: id.to_owned(), kind: "function".into(), function });
                }
                ("tool_result", WireRole::User) => {
                    let id = block["tool_use_id"].as_str().ok_or_else(untranslatable)?;
                    let mut text = text_of(&block["content"]);
                    if block["is_error"] == true {
                        text = format!("Error: {text}");
                    }
                    let mut tool = message(Role::Tool, Some(json!(text)));
                    tool.tool_call_id = Some(id.to_owned());
                    messages.push(tool);
                }
                ("thinking" | "redacted_thinking", _) => {}
                _ => return Err(untranslatable()),
            }
        }
        let role = if m.role == WireRole::User { Role::User } else { Role::Assistant };
        let only_text = parts.iter().all(|p| p["type"] == "text");
        let content = match parts.len() {
            0 => None,
            _ if only_text => Some(json!(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""))),
            _ => Some(Value::Array(parts)),
        };
        if content.is_some() || !calls.is_empty() {
            let mut msg = message(role, content);
            msg.tool_calls = (!calls.is_empty()).then_some(calls);
            messages.push(msg);
        }
    }
    if messages.iter().all(|m| m.role == Role::System) {
        return Err(invalid("`messages` must contain at least one message").with_param("messages"));
    }
    let mut extra = Map::new();
    if let Some(max) = w.max_tokens {
        extra.insert("max_tokens".into(), json!(max));
    }
    if let Some(t) = w.temperature {
        extra.insert("temperature".into(), json!(t));
    }
    if let Some(p) = w.top_p {
        extra.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = w.stop_sequences.filter(|s| !s.is_empty()) {
        extra.insert("stop".into(), json!(stop));
    }
    if let Some(user) = w.metadata.and_then(|m| m.user_id) {
        extra.insert("user".into(), json!(user));
    }
    if let Some(tools) = w.tools {
        let tools: Vec<Value> = tools
            .into_iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.input_schema.unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        extra.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = w.tool_choice {
        let c = match (choice.kind.as_str(), choice.name) {
            ("any", _) => json!("required"),
            ("tool", Some(name)) => json!({"type": "function", "function": {"name": name}}),
            ("none", _) => json!("none"),
            ("auto", _) => json!("auto"),
            (other, _) => return Err(invalid(format!("unknown tool_choice type {other:?}")).with_param("tool_choice")),
        };
        extra.insert("tool_choice".into(), c);
        if choice.disable_parallel_tool_use == Some(true) {
            extra.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    let stream = w.stream == Some(true);
    if stream {
        extra.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(ChatRequest { model: w.model, messages, stream: stream.then_some(true), extra })
}

fn parse_wire(body: &[u8]) -> Result<WireRequest, Error> {
    serde_json::from_slice(body).map_err(|e| {
        let kind = if e.is_data() { ErrorKind::InvalidRequest } else { ErrorKind::InvalidJson };
        Error::new(kind, format!("invalid request body: {e}"))
    })
}

/// A `/v1/messages/count_tokens` body (a Messages request without `max_tokens`) as the canonical
/// request whose prompt is to be counted.
pub fn parse_count_tokens(body: &[u8]) -> Result<ChatRequest, Error> {
    to_canonical(parse_wire(body)?)
}

/// An OpenAI finish reason as Anthropic's stop reason.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's error `type` for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

#[derive(Deserialize)]
struct CanonicalCompletion {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    choices: Vec<CanonicalChoice>,
}

#[derive(Deserialize)]
struct CanonicalChoice {
    message: CanonicalMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CanonicalMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") { id.to_owned() } else { format!("msg_{}", id.trim_start_matches("chatcmpl-")) }
}

fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

impl Dialect for Anthropic {
    fn parse_chat(&self, body: &[u8]) -> Result<ChatRequest, Error> {
        let wire = parse_wire(body)?;
        if wire.max_tokens.is_none() {
            return Err(invalid("max_tokens: field required").with_param("max_tokens"));
        }
        to_canonical(wire)
    }

    fn render_completion(&self, completion: &Completion) -> Result<Bytes, Error> {
        let c: CanonicalCompletion = serde_json::from_slice(&completion.body)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable completion: {e}")))?;
        let choice = c.choices.into_iter().next().ok_or_else(|| Error::new(ErrorKind::UpstreamProtocol, "provider sent no choices"))?;
        let mut content = Vec::new();
        if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in choice.message.tool_calls.into_iter().flatten() {
            content.push(
                json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": tool_input(&call.function.arguments)}),
            );
        }
        let body = json!({
            "id": message_id(&c.id), "type": "message", "role": "assistant", "model": c.model, "content": content,
            "stop_reason": stop_reason(choice.finish_reason.as_deref().unwrap_or("stop")), "stop_sequence": null,
            "usage": completion.usage.unwrap_or_default().to_anthropic(),
        });
        Ok(Bytes::from(body.to_string()))
    }

    fn error_body(&self, error: &Error) -> Value {
        json!({"type": "error", "error": {"type": error_type(error.status()), "message": error.message}})
    }

    fn request_id_header(&self) -> Option<&'static str> {
        Some("request-id")
    }

    fn stream_encoder(&self, _wants_usage: bool) -> Box<dyn StreamEncoder> {
        Box::new(Encoder::default())
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: ChunkDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ChunkToolCall>>,
}

#[derive(Deserialize)]
struct ChunkToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<ChunkFunction>,
}

#[derive(Deserialize)]
struct ChunkFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Default, PartialEq, Eq)]
enum Block {
    #[default]
    None,
    Text,
    Tool,
}

/// Builds Anthropic's event sequence: `message_start`, content blocks (`content_block_start`,
/// deltas, `content_block_stop`), `message_delta` with the stop reason and usage, `message_stop`.
#[derive(Default)]
struct Encoder {
    started: bool,
    block: Block,
    next_index: u32,
    stop_reason: Option<&'static str>,
    usage: Usage,
}

fn frame(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

impl Encoder {
    fn start(&mut self, id: &str, model: &str, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(id), "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.push(frame("message_start", &json!({"type": "message_start", "message": message})));
    }

    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        if self.block != Block::None {
            out.push(frame("content_block_stop", &json!({"type": "content_block_stop", "index": self.next_index - 1})));
            self.block = Block::None;
        }
    }

    fn open_block(&mut self, kind: Block, content_block: Value, out: &mut Vec<Bytes>) -> u32 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.block = kind;
        out.push(frame("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": content_block})));
        index
    }
}

impl StreamEncoder for Encoder {
    fn chunk(&mut self, json: &str, usage: Option<Usage>, _usage_only: bool) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(u) = usage {
            self.usage = u;
        }
        let Ok(chunk) = serde_json::from_str::<Chunk>(json) else {
            return out;
        };
        self.start(&chunk.id, &chunk.model, &mut out);
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                if self.block != Block::Text {
                    self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
                }
                let delta =
                    json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": {"type": "text_delta", "text": text}});
                out.push(frame("content_block_delta", &delta));
            }
            for call in choice.delta.tool_calls.into_iter().flatten() {
                let function = call.function.unwrap_or(ChunkFunction { name: None, arguments: None });
                if let Some(id) = call.id {
                    let block = json!({"type": "tool_use", "id": id, "name": function.name.unwrap_or_default(), "input": {}});
                    self.open_block(Block::Tool, block, &mut out);
                }
                if let Some(args) = function.arguments.filter(|a| !a.is_empty())
                    && self.block == Block::Tool
                {
                    let delta = json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": {"type": "input_json_delta", "partial_json": args}});
                    out.push(frame("content_block_delta", &delta));
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.stop_reason = Some(stop_reason(&reason));
            }
        }
        out
    }

    fn done(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start("", "", &mut out);
        self.close_block(&mut out);
        let usage = self.usage.to_anthropic();
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null}, "usage": usage});
        out.push(frame("message_delta", &delta));
        out.push(frame("message_stop", &json!({"type": "message_stop"})));
        out
    }

    fn error(&mut self, error: &Error) -> Vec<Bytes> {
        vec![frame("error", &Anthropic.error_body(error))]
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn canonical(body: &str) -> Result<String, (u16, String)> {
        Anthropic
            .parse_chat(body.as_bytes())
            .map(|r| serde_json::to_string(&r).unwrap_or_default())
            .map_err(|e| (e.status(), e.metric_label().to_owned()))
    }

    #[test]
    fn requests_become_canonical() {
        let body = r#"{"model":"claude","max_tokens":64,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
            "stop_sequences":["X"],"temperature":0.1,"metadata":{"user_id":"u"},"stream":true,
            "tools":[{"name":"f","description":"d","input_schema":{"type":"object"}}],"tool_choice":{"type":"any","disable_parallel_tool_use":true},
            "messages":[
              {"role":"user","content":"hi"},
              {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"s"},{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"42"}]},{"type":"text","text":"thanks"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]}
            ]}"#;
        expect![[r#"{"model":"claude","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"},{"role":"assistant","content":"Let me check.","tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","content":"42","tool_call_id":"toolu_1"},{"role":"user","content":[{"text":"thanks","type":"text"},{"image_url":{"url":"data:image/png;base64,AAAA"},"type":"image_url"}]}],"stream":true,"max_tokens":64,"parallel_tool_calls":false,"stop":["X"],"stream_options":{"include_usage":true},"temperature":0.1,"tool_choice":"required","tools":[{"function":{"description":"d","name":"f","parameters":{"type":"object"}},"type":"function"}],"user":"u"}"#]]
        .assert_eq(&canonical(body).unwrap_or_else(|e| format!("{e:?}")));
    }

    #[test]
    fn bad_requests_are_400s() {
        assert_eq!(canonical("{"), Err((400, "invalid_json".into())));
        assert_eq!(
            canonical(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#),
            Err((400, "invalid_request".into())),
            "max_tokens is required"
        );
        assert_eq!(canonical(r#"{"model":"m","max_tokens":1,"messages":[]}"#), Err((400, "invalid_request".into())));
        assert_eq!(
            canonical(r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}"#),
            Err((400, "invalid_request".into()))
        );
    }

    #[test]
    fn completions_become_messages() {
        let body = br#"{"id":"chatcmpl-abc","model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"On it.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}]}"#;
        let c =
            Completion { body: Bytes::from_static(body), usage: Some(Usage { input: 5, cache_read: 3, output: 2, ..Usage::default() }) };
        let out = Anthropic.render_completion(&c).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        expect![[r#"{"content":[{"text":"On it.","type":"text"},{"id":"call_1","input":{"a":1},"name":"f","type":"tool_use"}],"id":"msg_abc","model":"gpt-x","role":"assistant","stop_reason":"tool_use","stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":3,"input_tokens":5,"output_tokens":2}}"#]]
            .assert_eq(&out);
    }

    #[test]
    fn chunks_become_the_anthropic_event_sequence() {
        let mut enc = Anthropic.stream_encoder(false);
        let mut frames = Vec::new();
        for c in [
            r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ] {
            frames.extend(enc.chunk(c, None, false));
        }
        frames.extend(enc.chunk(
            r#"{"id":"chatcmpl-1","model":"m","choices":[]}"#,
            Some(Usage { input: 4, output: 6, ..Usage::default() }),
            true,
        ));
        frames.extend(enc.done());
        let text: String = frames.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        expect![[r#"
            event: message_start
            data: {"message":{"content":[],"id":"msg_1","model":"m","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"input_tokens":0,"output_tokens":0}},"type":"message_start"}

            event: content_block_start
            data: {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}

            event: content_block_delta
            data: {"delta":{"text":"Hi","type":"text_delta"},"index":0,"type":"content_block_delta"}

            event: content_block_stop
            data: {"index":0,"type":"content_block_stop"}

            event: content_block_start
            data: {"content_block":{"id":"call_1","input":{},"name":"f","type":"tool_use"},"index":1,"type":"content_block_start"}

            event: content_block_delta
            data: {"delta":{"partial_json":"{}","type":"input_json_delta"},"index":1,"type":"content_block_delta"}

            event: content_block_stop
            data: {"index":1,"type":"content_block_stop"}

            event: message_delta
            data: {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":4,"output_tokens":6}}

            event: message_stop
            data: {"type":"message_stop"}

        "#]]
        .assert_eq(&text);
        let err = String::from_utf8_lossy(&enc.error(&Error::new(ErrorKind::UpstreamProtocol, "cut"))[0]).into_owned();
        assert_eq!(err, "event: error\ndata: {\"error\":{\"message\":\"cut\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n");
    }
}
