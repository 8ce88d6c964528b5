//! Google Gemini (`{base_url}/models/{model}:generateContent`, and `:streamGenerateContent?alt=sse`
//! for streams), key in `x-goog-api-key`.
//!
//! Not translated (and why): `n` > 1 (refused with a 400), `logprobs` and penalties (dropped),
//! thought parts in answers (not shown); image URLs other than `data:` URLs are refused with a 400 (Gemini
//! reads only inline data or its own uploaded files); tool JSON schemas are passed as given
//! (Gemini accepts an OpenAPI subset and rejects some JSON Schema keywords itself).

use std::collections::BTreeMap;

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

/// The adapter for Gemini.
#[derive(Debug, Clone, Copy)]
pub struct Gemini;

/// Canonical content as Gemini parts.
fn parts(content: Option<&Value>) -> Result<Vec<Value>, Error> {
    content_blocks(
        content,
        "Gemini",
        |t| json!({"text": t}),
        |url| {
            let (mime, data) = data_url(url).ok_or_else(|| invalid("Gemini models take images as data: URLs only"))?;
            Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
        },
    )
}

/// The canonical request as a `generateContent` body.
pub fn generate_request(req: &ChatRequest) -> Result<Value, Error> {
    req.require_single_choice("Gemini")?;
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Ordered, not hashed: its keys are the request's, and no key of a request should depend on
    // hash keys an instance may share with others (a pre-initialised component fixes them).
    let mut call_names: BTreeMap<&str, &str> = BTreeMap::new();
    for m in &req.messages {
        let (role, content) = match m.role {
            Role::System | Role::Developer => {
                system.push(json!({"text": m.text()}));
                continue;
            }
            Role::User => ("user", parts(m.content.as_ref())?),
            Role::Assistant => {
                let mut content = parts(m.content.as_ref())?;
                for call in m.tool_calls.iter().flatten() {
                    call_names.insert(call.id.as_str(), call.function.name.as_str());
                    let args = tool_arguments(call)?;
                    content.push(json!({"functionCall": {"name": call.function.name, "args": args}}));
                }
                ("model", content)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let name = call_names
                    .get(id)
                    .copied()
                    .ok_or_else(|| invalid(format!("tool result {id:?} answers no earlier tool call")).with_param("messages"))?;
                let text = m.text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"content": text}),
                };
                ("user", vec![json!({"functionResponse": {"name": name, "response": response}})])
            }
        };
        push_turn(&mut contents, role, content);
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect()));
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    let x = &req.extra;
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")] {
        if let Some(v) = x.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(max) = x.get("max_completion_tokens").or_else(|| x.get("max_tokens")).filter(|v| !v.is_null()) {
        config.insert("maxOutputTokens".into(), max.clone());
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
    match x.get("response_format").and_then(|f| f["type"].as_str()) {
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = x["response_format"].pointer("/json_schema/schema") {
                config.insert("responseSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if let Some(Value::Array(tools)) = x.get("tools") {
        let declarations: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = t.get("function").unwrap_or(t);
                let mut d = json!({"name": f.get("name").cloned().unwrap_or_default()});
                if let Some(desc) = f.get("description") {
                    d["description"] = desc.clone();
                }
                if let Some(params) = f.get("parameters") {
                    d["parameters"] = params.clone();
                }
                d
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    let mode = match x.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::String(_)) => Some(json!({"mode": "AUTO"})),
        Some(Value::Object(o)) => {
            o.get("function").and_then(|f| f.get("name")).map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]}))
        }
        _ => None,
    };
    if let Some(m) = mode {
        body.insert("toolConfig".into(), json!({"functionCallingConfig": m}));
    }
    Ok(Value::Object(body))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireContent {
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Value,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<WireUsage> for Usage {
    /// Gemini counts cached tokens inside `promptTokenCount`, and thinking apart from output.
    fn from(u: WireUsage) -> Self {
        let cached = u.cached_content_token_count.min(u.prompt_token_count);
        Usage {
            input: u.prompt_token_count - cached,
            cache_read: cached,
            cache_write: 0,
            output: u.candidates_token_count,
            reasoning: u.thoughts_token_count,
        }
    }
}

/// Gemini's finish reason as an OpenAI finish reason.
fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => "content_filter",
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

fn call_json(index: usize, call: &WireFunctionCall) -> Value {
    let id = call.id.clone().unwrap_or_else(|| format!("call_{index}"));
    json!({"id": id, "type": "function", "function": {"name": call.name, "arguments": call.args.to_string()}})
}

#[derive(Deserialize)]
struct WireErrorBody {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    message: Option<String>,
}

fn unreadable(e: serde_json::Error) -> Error {
    Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable answer: {e}"))
}

impl ProviderAdapter for Gemini {
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let body = generate_request(req)?;
        let url = if req.is_stream() {
            format!("{}/models/{}:streamGenerateContent?alt=sse", provider.base_url, target.model)
        } else {
            format!("{}/models/{}:generateContent", provider.base_url, target.model)
        };
        post_json(provider, url, &[("x-goog-api-key", credential)], body.to_string().into_bytes())
    }

    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error> {
        let r: WireResponse = serde_json::from_slice(body).map_err(unreadable)?;
        let candidate =
            r.candidates.into_iter().next().ok_or_else(|| Error::new(ErrorKind::UpstreamProtocol, "provider sent no candidates"))?;
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in candidate.content.unwrap_or_default().parts {
            if let Some(call) = &part.function_call {
                calls.push(call_json(calls.len(), call));
            } else if let Some(t) = part.text.filter(|_| part.thought != Some(true)) {
                text.push_str(&t);
            }
        }
        let usage = r.usage_metadata.map(Usage::from);
        let finish = finish_reason(candidate.finish_reason.as_deref().unwrap_or("STOP"), !calls.is_empty());
        let mut message =
            json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let completion = json!({
            "id": r.response_id.unwrap_or_default(), "object": "chat.completion", "created": created, "model": r.model_version.unwrap_or_default(),
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage.unwrap_or_default().to_openai(),
        });
        Ok(Completion { body: Bytes::from(completion.to_string()), usage })
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        serde_json::from_slice::<WireErrorBody>(body).ok().and_then(|b| b.error.message)
    }

    fn stream_decoder(&self, _provider: &Provider, created: u64) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(Events { created, ..Events::default() }))
    }
}

/// The events of a `streamGenerateContent?alt=sse` stream: every event is a whole response
/// fragment; the one with a finish reason ends the answer (there is no `[DONE]`).
#[derive(Default)]
struct Events {
    created: u64,
    started: bool,
    calls: usize,
    usage: Option<WireUsage>,
    done: bool,
}

impl Events {
    fn chunk(&self, id: &str, model: &str, delta: Value, finish: Option<&str>, content: bool) -> StreamEvent {
        delta_chunk(id, model, self.created, delta, finish, content)
    }
}

impl SseEvents for Events {
    fn done(&self) -> bool {
        self.done
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let r: WireResponse = serde_json::from_str(&ev.data)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent a malformed stream chunk: {e}")))?;
        let id = r.response_id.unwrap_or_default();
        let model = r.model_version.unwrap_or_default();
        if r.usage_metadata.is_some() {
            self.usage = r.usage_metadata;
        }
        if !self.started {
            self.started = true;
            out.push(self.chunk(&id, &model, json!({"role": "assistant", "content": ""}), None, false));
        }
        let Some(candidate) = r.candidates.into_iter().next() else { return Ok(()) };
        for part in candidate.content.unwrap_or_default().parts {
            if let Some(call) = &part.function_call {
                let mut delta = call_json(self.calls, call);
                delta["index"] = json!(self.calls);
                self.calls += 1;
                out.push(self.chunk(&id, &model, json!({"tool_calls": [delta]}), None, true));
            } else if let Some(t) = part.text.filter(|t| !t.is_empty() && part.thought != Some(true)) {
                out.push(self.chunk(&id, &model, json!({"content": t}), None, true));
            }
        }
        if let Some(reason) = candidate.finish_reason {
            out.push(self.chunk(&id, &model, json!({}), Some(finish_reason(&reason, self.calls > 0)), true));
            out.push(usage_chunk(&id, &model, self.created, self.usage.map(Usage::from).unwrap_or_default()));
            out.push(StreamEvent::Done);
            self.done = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn translates_system_tools_calls_results_and_config() {
        let req = ChatRequest::parse(
            br#"{"model":"alias","max_tokens":64,"temperature":0.3,"stop":["END"],"response_format":{"type":"json_object"},
                "tools":[{"type":"function","function":{"name":"weather","description":"Weather","parameters":{"type":"object"}}}],"tool_choice":"required",
                "messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Oslo?"},
                  {"role":"assistant","content":null,"tool_calls":[{"id":"call_0","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},
                  {"role":"tool","tool_call_id":"call_0","content":"rain"},
                  {"role":"user","content":[{"type":"text","text":"And this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        expect![[r#"{"contents":[{"parts":[{"text":"Oslo?"}],"role":"user"},{"parts":[{"functionCall":{"args":{"city":"Oslo"},"name":"weather"}}],"role":"model"},{"parts":[{"functionResponse":{"name":"weather","response":{"content":"rain"}}},{"text":"And this?"},{"inlineData":{"data":"AAAA","mimeType":"image/png"}}],"role":"user"}],"generationConfig":{"maxOutputTokens":64,"responseMimeType":"application/json","stopSequences":["END"],"temperature":0.3},"systemInstruction":{"parts":[{"text":"Be brief."}]},"toolConfig":{"functionCallingConfig":{"mode":"ANY"}},"tools":[{"functionDeclarations":[{"description":"Weather","name":"weather","parameters":{"type":"object"}}]}]}"#]]
        .assert_eq(&generate_request(&req).map(|v| v.to_string()).unwrap_or_else(|e| e.message));
    }

    #[test]
    fn refuses_what_gemini_cannot_read() {
        let url_image = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
        );
        let orphan = ChatRequest::parse(br#"{"model":"m","messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#);
        for req in [url_image, orphan] {
            let req = req.unwrap_or_else(|e| unreachable!("{e}"));
            assert_eq!(generate_request(&req).map_err(|e| e.status()).err(), Some(400));
        }
    }
}
