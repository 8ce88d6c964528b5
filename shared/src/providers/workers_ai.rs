//! Cloudflare Workers AI through the Workers `AI` binding (Workers runtime only).
//!
//! The adapter builds an HTTP-shaped request to `workers-ai://{binding}/run/{model}` whose body is
//! the model input; the Workers host turns it into `env.AI.run(model, input)` (a JSON result, or
//! a stream of server-sent events when `stream` is set). Other hosts refuse the scheme. Workers AI
//! is also reachable over HTTP from any runtime through its OpenAI-compatible endpoint, as an
//! `openai_compatible` provider.
//!
//! Not translated (and why): images and other non-text parts are refused with a 400 (the text
//! generation input takes strings); `n` > 1 is refused; `response_format`, `stop` and penalties
//! are dropped (not part of the common text-generation input).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Completion, ProviderAdapter, SseDecoder, SseEvents, StreamDecoder, StreamEvent, delta_chunk, invalid, post_json, usage_chunk};
use crate::chat::{ChatRequest, Role, Usage};
use crate::error::{Error, ErrorKind};
use crate::policy::{Provider, Target};
use crate::sse::SseEvent;

/// The adapter for Workers AI.
#[derive(Debug, Clone, Copy)]
pub struct WorkersAi;

/// The URL scheme the Workers host recognises as a binding call.
pub const SCHEME: &str = "workers-ai";

/// The canonical request as a Workers AI text-generation input.
pub fn run_input(req: &ChatRequest) -> Result<Value, Error> {
    req.require_single_choice("Workers AI")?;
    let mut messages = Vec::new();
    for m in &req.messages {
        if let Some(Value::Array(parts)) = &m.content
            && parts.iter().any(|p| p["type"] != "text")
        {
            return Err(invalid("Workers AI text models take text content only"));
        }
        let role = match m.role {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        };
        let mut msg = json!({"role": role, "content": m.text()});
        if let Some(calls) = &m.tool_calls {
            msg["tool_calls"] = serde_json::to_value(calls).unwrap_or_default();
        }
        if let Some(id) = &m.tool_call_id {
            msg["tool_call_id"] = json!(id);
        }
        messages.push(msg);
    }
    let mut input = Map::new();
    input.insert("messages".into(), Value::Array(messages));
    let x = &req.extra;
    if let Some(max) = x.get("max_completion_tokens").or_else(|| x.get("max_tokens")).filter(|v| !v.is_null()) {
        input.insert("max_tokens".into(), max.clone());
    }
    for key in ["temperature", "top_p", "seed"] {
        if let Some(v) = x.get(key).filter(|v| !v.is_null()) {
            input.insert(key.into(), v.clone());
        }
    }
    if let Some(tools) = x.get("tools").filter(|t| t.is_array()) {
        input.insert("tools".into(), tools.clone());
    }
    if req.is_stream() {
        input.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(input))
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    response: Option<Value>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireToolCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage { input: u.prompt_tokens, output: u.completion_tokens, ..Usage::default() }
    }
}

/// The model's text: a string, or structured output shown as JSON.
fn text_of(response: Option<Value>) -> String {
    match response {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl ProviderAdapter for WorkersAi {
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        _credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let input = run_input(req)?;
        post_json(provider, format!("{}/run/{}", provider.base_url, target.model), &[], input.to_string().into_bytes())
    }

    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error> {
        let r: WireResult = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable result: {e}")))?;
        let calls: Vec<Value> = r
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let arguments =
                    if c.arguments.is_string() { c.arguments.as_str().unwrap_or("").to_owned() } else { c.arguments.to_string() };
                json!({"id": format!("call_{i}"), "type": "function", "function": {"name": c.name, "arguments": arguments}})
            })
            .collect();
        let text = text_of(r.response);
        let usage = r.usage.map(Usage::from);
        let mut message =
            json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let completion = json!({
            "id": "", "object": "chat.completion", "created": created, "model": "",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage.unwrap_or_default().to_openai(),
        });
        Ok(Completion { body: Bytes::from(completion.to_string()), usage })
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v["errors"][0]["message"].as_str().or(v["error"].as_str()).map(str::to_owned)
    }

    fn stream_decoder(&self, _provider: &Provider, created: u64) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(Events { created, ..Events::default() }))
    }
}

/// The events of a Workers AI stream: `data: {"response": "…"}` pieces, the last carrying usage,
/// then `data: [DONE]`.
#[derive(Default)]
struct Events {
    created: u64,
    started: bool,
    calls: usize,
    usage: Option<WireUsage>,
    done: bool,
}

impl Events {
    fn chunk(&self, delta: Value, finish: Option<&str>, content: bool) -> StreamEvent {
        delta_chunk("", "", self.created, delta, finish, content)
    }
}

impl SseEvents for Events {
    fn done(&self) -> bool {
        self.done
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None, false));
        }
        if ev.data.trim() == "[DONE]" {
            out.push(self.chunk(json!({}), Some(if self.calls > 0 { "tool_calls" } else { "stop" }), true));
            out.push(usage_chunk("", "", self.created, self.usage.map(Usage::from).unwrap_or_default()));
            out.push(StreamEvent::Done);
            self.done = true;
            return Ok(());
        }
        let piece: WireResult = serde_json::from_str(&ev.data)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent a malformed stream chunk: {e}")))?;
        if piece.usage.is_some() {
            self.usage = piece.usage;
        }
        let text = text_of(piece.response);
        if !text.is_empty() {
            out.push(self.chunk(json!({"content": text}), None, true));
        }
        for call in &piece.tool_calls {
            let arguments =
                if call.arguments.is_string() { call.arguments.as_str().unwrap_or("").to_owned() } else { call.arguments.to_string() };
            let delta = json!({"index": self.calls, "id": format!("call_{}", self.calls), "type": "function", "function": {"name": call.name, "arguments": arguments}});
            self.calls += 1;
            out.push(self.chunk(json!({"tool_calls": [delta]}), None, true));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ProviderKind;

    #[test]
    fn requests_name_the_binding_and_model_and_carry_the_input() {
        let provider = Provider {
            id: "w".into(),
            kind: ProviderKind::WorkersAi,
            base_url: "workers-ai://AI".into(),
            api_key_secret: None,
            api_key_secret_secondary: None,
            api_version: None,
            region: None,
            quirks: Default::default(),
            location: Default::default(),
        };
        let target = Target { provider: "w".into(), model: "@cf/meta/llama-3.1-8b-instruct".into(), ..Target::default() };
        let req = ChatRequest::parse(br#"{"model":"a","max_tokens":9,"stream":true,"messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":"hi"}]}"#)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let up = WorkersAi.chat_request(&provider, &target, &req, None).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            (up.uri().scheme_str(), up.uri().host(), up.uri().path()),
            (Some(SCHEME), Some("AI"), "/run/@cf/meta/llama-3.1-8b-instruct")
        );
        let input: Value = serde_json::from_slice(up.body()).unwrap_or_default();
        assert_eq!(
            input,
            json!({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":9,"stream":true})
        );
        let image = ChatRequest::parse(br#"{"model":"a","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}"#)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(run_input(&image).map_err(|e| e.status()).err(), Some(400));
    }
}
