//! AWS Bedrock Converse (`{base_url}/model/{modelId}/converse`, and `/converse-stream`, whose
//! answer is framed as AWS event-stream binary messages, not SSE).
//!
//! Credentials: the secret holds `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]` (requests are
//! signed with SigV4 for the provider's `region`), or a Bedrock API key (sent as a bearer token).
//!
//! Not translated (and why): image URLs other than `data:` URLs are refused with a 400 (Converse
//! reads image bytes only); `tool_choice: "none"` sends no tools (Converse has no "none");
//! `response_format`, `seed`, `logprobs` and penalties have no Converse equivalents and are
//! dropped; `n` > 1 is refused with a 400. Stream chunks carry no id or model (Converse sends none).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::sigv4::{self, Credentials};
use super::{
    Completion, ProviderAdapter, StreamDecoder, StreamEvent, content_blocks, data_url, delta_chunk, invalid, post_json, push_turn,
    tool_arguments, usage_chunk,
};
use crate::chat::{ChatRequest, Role, Usage};
use crate::error::{Error, ErrorKind};
use crate::policy::{Provider, Target};

/// The adapter for Bedrock.
#[derive(Debug, Clone, Copy)]
pub struct Bedrock;

/// Canonical content as Converse content blocks.
fn blocks(content: Option<&Value>) -> Result<Vec<Value>, Error> {
    content_blocks(
        content,
        "Bedrock",
        |t| json!({"text": t}),
        |url| {
            let (mime, data) = data_url(url).ok_or_else(|| invalid("Bedrock models take images as data: URLs only"))?;
            let format = mime.strip_prefix("image/").unwrap_or(mime);
            Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
        },
    )
}

/// The canonical request as a Converse request body.
pub fn converse_request(req: &ChatRequest) -> Result<Value, Error> {
    req.require_single_choice("Bedrock")?;
    let mut system = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, content) = match m.role {
            Role::System | Role::Developer => {
                system.push(json!({"text": m.text()}));
                continue;
            }
            Role::User => ("user", blocks(m.content.as_ref())?),
            Role::Assistant => {
                let mut content = blocks(m.content.as_ref())?;
                for call in m.tool_calls.iter().flatten() {
                    let input = tool_arguments(call)?;
                    content.push(json!({"toolUse": {"toolUseId": call.id, "name": call.function.name, "input": input}}));
                }
                ("assistant", content)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| invalid("a tool message needs tool_call_id").with_param("messages"))?;
                ("user", vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": m.text()}]}})])
            }
        };
        push_turn(&mut messages, role, content);
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        Value::Array(messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()),
    );
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let x = &req.extra;
    let mut config = Map::new();
    if let Some(max) = x.get("max_completion_tokens").or_else(|| x.get("max_tokens")).filter(|v| !v.is_null()) {
        config.insert("maxTokens".into(), max.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = x.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    match x.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !config.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(config));
    }
    let choice = x.get("tool_choice");
    if let Some(Value::Array(tools)) = x.get("tools")
        && choice.and_then(Value::as_str) != Some("none")
    {
        let specs: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = t.get("function").unwrap_or(t);
                let schema = f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                let mut spec = json!({"name": f.get("name").cloned().unwrap_or_default(), "inputSchema": {"json": schema}});
                if let Some(d) = f.get("description") {
                    spec["description"] = d.clone();
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut tool_config = json!({"tools": specs});
        match choice {
            Some(Value::String(s)) if s == "required" => tool_config["toolChoice"] = json!({"any": {}}),
            Some(Value::Object(o)) => {
                if let Some(name) = o.get("function").and_then(|f| f.get("name")) {
                    tool_config["toolChoice"] = json!({"tool": {"name": name}});
                }
            }
            Some(_) => tool_config["toolChoice"] = json!({"auto": {}}),
            None => {}
        }
        body.insert("toolConfig".into(), tool_config);
    }
    Ok(Value::Object(body))
}

/// The region requests are signed for: the provider's, or the one in a standard endpoint.
fn region(provider: &Provider) -> Option<String> {
    provider.region.clone().or_else(|| {
        let host = provider.base_url.split("://").nth(1)?.split(['/', ':']).next()?;
        host.strip_prefix("bedrock-runtime.")?.strip_suffix(".amazonaws.com").map(str::to_owned)
    })
}

#[derive(Deserialize)]
struct WireResponse {
    output: WireOutput,
    #[serde(default, rename = "stopReason")]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireOutput {
    message: WireMessage,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Vec<WireBlock>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<WireToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<WireUsage> for Usage {
    /// Converse reports disjoint buckets, as Anthropic does.
    fn from(u: WireUsage) -> Self {
        Usage {
            input: u.input_tokens,
            cache_read: u.cache_read_input_tokens,
            cache_write: u.cache_write_input_tokens,
            output: u.output_tokens,
            reasoning: 0,
        }
    }
}

/// Bedrock's stop reason as an OpenAI finish reason.
fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "tool_use" => "tool_calls",
        "max_tokens" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

impl ProviderAdapter for Bedrock {
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let body = converse_request(req)?;
        let operation = if req.is_stream() { "converse-stream" } else { "converse" };
        // The model id goes into the path percent-encoded (ids contain `:`).
        let model: String = target
            .model
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        // A Bedrock API key is a bearer token; a key pair signs in `authorize` instead.
        let bearer = credential.filter(|c| Credentials::parse(c).is_none()).map(|key| format!("Bearer {key}"));
        let url = format!("{}/model/{model}/{operation}", provider.base_url);
        post_json(provider, url, &[("authorization", bearer.as_deref())], body.to_string().into_bytes())
    }

    fn authorize(&self, provider: &Provider, req: &mut http::Request<Bytes>, credential: Option<&str>, now_ms: u64) -> Result<(), Error> {
        let Some(creds) = credential.and_then(Credentials::parse) else { return Ok(()) };
        let region = region(provider)
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("provider `{}` needs a region to sign requests", provider.id)))?;
        sigv4::sign(req, &creds, &region, "bedrock", now_ms)
    }

    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error> {
        let r: WireResponse = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable answer: {e}")))?;
        let mut text = String::new();
        let mut calls = Vec::new();
        for block in r.output.message.content {
            if let Some(t) = block.text {
                text.push_str(&t);
            } else if let Some(u) = block.tool_use {
                calls
                    .push(json!({"id": u.tool_use_id, "type": "function", "function": {"name": u.name, "arguments": u.input.to_string()}}));
            }
        }
        let usage = r.usage.map(Usage::from);
        let mut message =
            json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let completion = json!({
            "id": "", "object": "chat.completion", "created": created, "model": "",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(r.stop_reason.as_deref().unwrap_or("end_turn"))}],
            "usage": usage.unwrap_or_default().to_openai(),
        });
        Ok(Completion { body: Bytes::from(completion.to_string()), usage })
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.get("message").or_else(|| v.get("Message")).and_then(Value::as_str).map(str::to_owned)
    }

    fn stream_decoder(&self, _provider: &Provider, created: u64) -> Box<dyn StreamDecoder> {
        Box::new(EventStream { created, ..EventStream::default() })
    }
}

/// Longest event-stream message accepted (16 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// Decodes AWS event-stream framing (prelude with lengths and CRC32, headers, payload, CRC32) and
/// Converse stream events into canonical chunks.
#[derive(Default)]
struct EventStream {
    buf: Vec<u8>,
    created: u64,
    tool_calls: Vec<u64>,
    usage: Option<WireUsage>,
    done: bool,
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::UpstreamProtocol, msg)
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// The string-valued headers of one message (other header types are skipped).
fn headers(mut b: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let short = || protocol("provider sent a truncated event-stream header");
    while !b.is_empty() {
        let name_len = usize::from(*b.first().ok_or_else(short)?);
        let name = String::from_utf8_lossy(b.get(1..1 + name_len).ok_or_else(short)?).into_owned();
        let kind = *b.get(1 + name_len).ok_or_else(short)?;
        b = &b[2 + name_len..];
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(protocol(format!("provider sent an unknown event-stream header type {kind}"))),
        };
        match fixed {
            Some(n) => b = b.get(n..).ok_or_else(short)?,
            None => {
                let len = usize::from(u16::from_be_bytes([*b.first().ok_or_else(short)?, *b.get(1).ok_or_else(short)?]));
                let value = b.get(2..2 + len).ok_or_else(short)?;
                if kind == 7 {
                    out.push((name, String::from_utf8_lossy(value).into_owned()));
                }
                b = &b[2 + len..];
            }
        }
    }
    Ok(out)
}

impl EventStream {
    fn chunk(&self, delta: Value, finish: Option<&str>, content: bool) -> StreamEvent {
        delta_chunk("", "", self.created, delta, finish, content)
    }

    fn message(&mut self, headers: &[(String, String)], payload: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let body: Value = serde_json::from_slice(payload).map_err(|e| protocol(format!("provider sent a malformed stream event: {e}")))?;
        match header(":message-type") {
            Some("event") => {}
            Some("exception") | Some("error") => {
                let kind = header(":exception-type").or(header(":error-code")).unwrap_or("error");
                let msg =
                    body.get("message").or_else(|| body.get("Message")).and_then(Value::as_str).or(header(":error-message")).unwrap_or("");
                return Err(protocol(format!("provider reported {kind} mid-stream: {}", super::quote(msg))));
            }
            other => return Err(protocol(format!("provider sent an event-stream message of type {other:?}"))),
        }
        match header(":event-type").unwrap_or("") {
            "messageStart" => out.push(self.chunk(json!({"role": "assistant", "content": ""}), None, false)),
            "contentBlockStart" => {
                if let Some(tool) = body.pointer("/start/toolUse") {
                    let index = self.tool_calls.len();
                    self.tool_calls.push(body["contentBlockIndex"].as_u64().unwrap_or(0));
                    let call = json!({"index": index, "id": tool["toolUseId"], "type": "function", "function": {"name": tool["name"], "arguments": ""}});
                    out.push(self.chunk(json!({"tool_calls": [call]}), None, true));
                }
            }
            "contentBlockDelta" => {
                let delta = &body["delta"];
                if let Some(text) = delta["text"].as_str() {
                    out.push(self.chunk(json!({"content": text}), None, true));
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    let block = body["contentBlockIndex"].as_u64().unwrap_or(0);
                    let index = self.tool_calls.iter().position(|b| *b == block).unwrap_or(0);
                    out.push(self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]}), None, true));
                }
            }
            "messageStop" => {
                let reason = finish_reason(body["stopReason"].as_str().unwrap_or("end_turn"));
                out.push(self.chunk(json!({}), Some(reason), true));
            }
            "metadata" => {
                let usage: WireUsage = serde_json::from_value(body["usage"].clone()).unwrap_or_default();
                self.usage = Some(usage);
                out.push(usage_chunk("", "", self.created, Usage::from(usage)));
                out.push(StreamEvent::Done);
                self.done = true;
            }
            _ => {} // contentBlockStop and event types added later
        }
        Ok(())
    }
}

impl StreamDecoder for EventStream {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, Error> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while self.buf.len() >= 12 && !self.done {
            let total = be32(&self.buf[0..4]);
            let header_len = be32(&self.buf[4..8]);
            if crc32fast::hash(&self.buf[0..8]) as usize != be32(&self.buf[8..12]) {
                return Err(protocol("provider sent an event-stream prelude with a bad checksum"));
            }
            if !(16..=MAX_MESSAGE).contains(&total) || header_len > total - 16 {
                return Err(protocol("provider sent an event-stream message with impossible lengths"));
            }
            if self.buf.len() < total {
                break;
            }
            if crc32fast::hash(&self.buf[..total - 4]) as usize != be32(&self.buf[total - 4..total]) {
                return Err(protocol("provider sent an event-stream message with a bad checksum"));
            }
            let message: Vec<u8> = self.buf.drain(..total).collect();
            let hdrs = headers(&message[12..12 + header_len])?;
            self.message(&hdrs, &message[12 + header_len..total - 4], &mut out)?;
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<StreamEvent>, Error> {
        if !self.done {
            return Err(protocol("provider stream ended before the answer was complete"));
        }
        Ok(vec![])
    }
}

/// Frames one event-stream message (used by tests and the simulator's fixtures).
pub fn frame(event_type: &str, payload: &Value) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let payload = payload.to_string().into_bytes();
    let total = 12 + headers.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out[0..8]).to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::policy::ProviderKind;

    fn provider() -> Provider {
        Provider {
            id: "b".into(),
            kind: ProviderKind::Bedrock,
            base_url: "https://bedrock-runtime.eu-central-1.amazonaws.com".into(),
            api_key_secret: None,
            api_key_secret_secondary: None,
            api_version: None,
            region: None,
            quirks: Default::default(),
            location: Default::default(),
        }
    }

    #[test]
    fn translates_and_signs_for_the_endpoint_region() {
        let req = ChatRequest::parse(
            br#"{"model":"a","max_tokens":50,"stop":"X","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"auto",
                "messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"},
                  {"role":"assistant","tool_calls":[{"id":"t1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                  {"role":"tool","tool_call_id":"t1","content":"ok"}]}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let target = Target { provider: "b".into(), model: "anthropic.claude-3-haiku-20240307-v1:0".into(), ..Target::default() };
        let mut up = Bedrock.chat_request(&provider(), &target, &req, Some("AKID:SECRET")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(up.uri(), "https://bedrock-runtime.eu-central-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse");
        assert!(!up.headers().contains_key("authorization"), "key pairs sign; they are never sent");
        Bedrock.authorize(&provider(), &mut up, Some("AKID:SECRET"), 1_800_000_000_000).unwrap_or_else(|e| unreachable!("{e}"));
        let auth = up.headers()["authorization"].to_str().unwrap_or_default().to_owned();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20270115/eu-central-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="), "{auth}");
        expect![[r#"{"inferenceConfig":{"maxTokens":50,"stopSequences":["X"]},"messages":[{"content":[{"text":"hi"}],"role":"user"},{"content":[{"toolUse":{"input":{},"name":"f","toolUseId":"t1"}}],"role":"assistant"},{"content":[{"toolResult":{"content":[{"text":"ok"}],"toolUseId":"t1"}}],"role":"user"}],"system":[{"text":"Be brief."}],"toolConfig":{"toolChoice":{"auto":{}},"tools":[{"toolSpec":{"inputSchema":{"json":{"type":"object"}},"name":"f"}}]}}"#]]
        .assert_eq(&String::from_utf8_lossy(up.body()));
        let bearer = Bedrock.chat_request(&provider(), &target, &req, Some("bedrock-api-key")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(bearer.headers()["authorization"], "Bearer bedrock-api-key");
    }

    #[test]
    fn event_stream_frames_split_anywhere_decode_and_bad_checksums_are_errors() {
        let mut bytes = frame("messageStart", &json!({"role": "assistant"}));
        bytes.extend(frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}})));
        bytes.extend(frame("messageStop", &json!({"stopReason": "end_turn"})));
        bytes.extend(frame("metadata", &json!({"usage": {"inputTokens": 3, "outputTokens": 1}})));
        for cut in [0, 1, 11, 12, 40, bytes.len() / 2, bytes.len() - 1] {
            let mut d = Bedrock.stream_decoder(&provider(), 1);
            let mut events = d.push(&bytes[..cut]).unwrap_or_else(|e| unreachable!("{e}"));
            events.extend(d.push(&bytes[cut..]).unwrap_or_else(|e| unreachable!("{e}")));
            events.extend(d.finish().unwrap_or_else(|e| unreachable!("{e}")));
            assert_eq!(events.len(), 5, "cut at {cut}");
            assert_eq!(events.last(), Some(&StreamEvent::Done));
        }
        let mut corrupt = bytes.clone();
        corrupt[20] ^= 1;
        assert!(Bedrock.stream_decoder(&provider(), 1).push(&corrupt).is_err());
        let mut d = Bedrock.stream_decoder(&provider(), 1);
        assert!(d.push(&bytes[..bytes.len() - 10]).is_ok());
        assert!(d.finish().is_err(), "a cut stream is an error");
    }
}
