//! OpenAI Chat Completions over HTTP: OpenAI itself and every server that copies its API.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{Completion, ProviderAdapter, SseDecoder, SseEvents, StreamDecoder, StreamEvent, post_json};
use crate::chat::{ChatRequest, Usage};
use crate::embeddings::{Embeddings, EmbeddingsRequest};
use crate::error::{Error, ErrorKind};
use crate::policy::{MaxTokensField, Provider, Target};
use crate::sse::SseEvent;

/// The adapter for OpenAI-compatible providers.
#[derive(Debug, Clone, Copy)]
pub struct OpenAiCompatible;

#[derive(Deserialize)]
struct WireCompletion {
    #[allow(dead_code)]
    choices: Vec<IgnoredAny>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Option<Vec<WireChunkChoice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    delta: Option<WireChunkDelta>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<IgnoredAny>>,
}

impl WireChunkChoice {
    /// Text, a refusal, a tool call or a finish reason: anything but the role preamble.
    fn commits(&self) -> bool {
        let delta = self.delta.as_ref();
        self.finish_reason.is_some()
            || delta.is_some_and(|d| {
                d.content.as_deref().is_some_and(|c| !c.is_empty())
                    || d.refusal.as_deref().is_some_and(|c| !c.is_empty())
                    || d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
            })
    }
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    /// OpenAI counts cached tokens inside `prompt_tokens` and reasoning inside `completion_tokens`.
    fn from(u: WireUsage) -> Self {
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0).min(u.prompt_tokens);
        let reasoning = u.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0).min(u.completion_tokens);
        Usage { input: u.prompt_tokens - cached, cache_read: cached, cache_write: 0, output: u.completion_tokens - reasoning, reasoning }
    }
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

impl ProviderAdapter for OpenAiCompatible {
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let mut upstream = req.clone();
        upstream.model.clone_from(&target.model);
        let quirks = &provider.quirks;
        if let Some(field) = quirks.max_tokens_field {
            let (to, from) = match field {
                MaxTokensField::MaxTokens => ("max_tokens", "max_completion_tokens"),
                MaxTokensField::MaxCompletionTokens => ("max_completion_tokens", "max_tokens"),
            };
            if let Some(v) = upstream.extra.remove(from) {
                upstream.extra.entry(to).or_insert(v);
            }
        }
        for field in &quirks.drop_fields {
            upstream.extra.remove(field);
        }
        if req.is_stream() && quirks.stream_usage {
            // Ask for the final usage chunk so a stream's cost is always known.
            let options = upstream.extra.entry("stream_options").or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        let body = serde_json::to_vec(&upstream).map_err(|e| Error::new(ErrorKind::Internal, format!("encoding upstream request: {e}")))?;
        let accept = if req.is_stream() { "text/event-stream" } else { "application/json" };
        let bearer = credential.map(|key| format!("Bearer {key}"));
        let headers = [("accept", Some(accept)), ("authorization", bearer.as_deref())];
        post_json(provider, format!("{}/chat/completions", provider.base_url), &headers, body)
    }

    fn chat_response(&self, body: &[u8], _created: u64) -> Result<Completion, Error> {
        let wire: WireCompletion = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unreadable completion: {e}")))?;
        Ok(Completion { body: Bytes::copy_from_slice(body), usage: wire.usage.map(Usage::from) })
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        serde_json::from_slice::<WireErrorBody>(body).ok().and_then(|b| b.error.message)
    }

    fn stream_decoder(&self, provider: &Provider, _created: u64) -> Box<dyn StreamDecoder> {
        Box::new(SseDecoder::new(Events { done_marker: provider.quirks.done_marker, ..Events::default() }))
    }

    fn embeddings_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &EmbeddingsRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let mut upstream = req.clone();
        upstream.model.clone_from(&target.model);
        upstream.encoding_format = Some("float".into());
        let body = serde_json::to_vec(&upstream).map_err(|e| Error::new(ErrorKind::Internal, format!("encoding upstream request: {e}")))?;
        let bearer = credential.map(|key| format!("Bearer {key}"));
        post_json(provider, format!("{}/embeddings", provider.base_url), &[("authorization", bearer.as_deref())], body)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<Embeddings, Error> {
        let wire: WireEmbeddings = serde_json::from_slice(body)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent unreadable embeddings: {e}")))?;
        let mut data = wire.data;
        data.sort_by_key(|d| d.index);
        let usage = Usage { input: wire.usage.map_or(0, |u| u.prompt_tokens), ..Usage::default() };
        Ok(Embeddings { model: wire.model, vectors: data.into_iter().map(|d| d.embedding).collect(), usage })
    }
}

#[derive(Deserialize)]
struct WireEmbeddings {
    #[serde(default)]
    model: String,
    data: Vec<WireEmbedding>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

/// The events of an OpenAI `chat.completion.chunk` stream.
#[derive(Debug, Default)]
struct Events {
    done: bool,
    /// The server ends streams with `[DONE]` (see [`crate::policy::Quirks::done_marker`]).
    done_marker: bool,
    /// Every choice seen so far has finished.
    finished: bool,
}

impl SseEvents for Events {
    fn done(&self) -> bool {
        self.done
    }

    fn at_end(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.done_marker && self.finished {
            out.push(StreamEvent::Done);
            self.done = true;
        }
    }

    fn event(&mut self, ev: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), Error> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            out.push(StreamEvent::Done);
            return Ok(());
        }
        let chunk: WireChunk = serde_json::from_str(data)
            .map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent a malformed stream chunk: {e}")))?;
        if let Some(err) = chunk.error {
            let msg = super::quote(&err.message.unwrap_or_default());
            return Err(Error::new(ErrorKind::UpstreamProtocol, format!("provider reported an error mid-stream: {msg}")));
        }
        let usage_only = chunk.choices.as_ref().is_none_or(Vec::is_empty) && chunk.usage.is_some();
        let content = chunk.choices.iter().flatten().any(WireChunkChoice::commits);
        let choices = chunk.choices.iter().flatten();
        if choices.clone().next().is_some() {
            self.finished = choices.clone().all(|c| c.finish_reason.is_some());
        }
        out.push(StreamEvent::Chunk { json: data.to_owned(), usage: chunk.usage.map(Usage::from), usage_only, content });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ProviderKind;

    fn provider() -> Provider {
        Provider {
            id: "p".into(),
            kind: ProviderKind::OpenaiCompatible,
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key_secret: None,
            api_key_secret_secondary: None,
            api_version: None,
            region: None,
            quirks: Default::default(),
            location: Default::default(),
        }
    }

    fn request(body: &str) -> ChatRequest {
        ChatRequest::parse(body.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn request_targets_the_provider_model_and_asks_for_stream_usage() {
        let target = Target { provider: "p".into(), model: "real-model".into(), ..Target::default() };
        let req =
            request(r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"x":1},"seed":3}"#);
        let up = OpenAiCompatible.chat_request(&provider(), &target, &req, Some("sk-up")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(up.uri(), "http://127.0.0.1:9/v1/chat/completions");
        assert_eq!(up.headers()["authorization"], "Bearer sk-up");
        let body: Value = serde_json::from_slice(up.body()).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"model":"real-model","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"x":1,"include_usage":true},"seed":3})
        );
    }

    fn error_response(status: u16, body: &[u8]) -> Error {
        super::super::upstream_error(&OpenAiCompatible, status, &http::HeaderMap::new(), body)
    }

    #[test]
    fn quirks_rename_the_cap_drop_fields_and_skip_stream_usage() {
        let quirks = crate::policy::Quirks {
            stream_usage: false,
            max_tokens_field: Some(MaxTokensField::MaxTokens),
            drop_fields: vec!["parallel_tool_calls".into()],
            done_marker: true,
        };
        let provider = Provider { quirks, ..provider() };
        let target = Target { provider: "p".into(), model: "llama".into(), ..Target::default() };
        let req = request(
            r#"{"model":"a","stream":true,"max_completion_tokens":9,"parallel_tool_calls":false,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let up = OpenAiCompatible.chat_request(&provider, &target, &req, None).unwrap_or_else(|e| unreachable!("{e}"));
        let body: Value = serde_json::from_slice(up.body()).unwrap_or_default();
        assert_eq!(body, serde_json::json!({"model":"llama","stream":true,"max_tokens":9,"messages":[{"role":"user","content":"hi"}]}));
    }

    #[test]
    fn without_a_done_marker_a_finished_stream_is_complete_and_an_unfinished_one_is_cut() {
        let quirks = crate::policy::Quirks { done_marker: false, ..Default::default() };
        let provider = Provider { quirks, ..provider() };
        let finished = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        let mut d = OpenAiCompatible.stream_decoder(&provider, 0);
        assert!(d.push(finished.as_bytes()).is_ok());
        assert_eq!(d.finish().map(|e| e.last().cloned()), Ok(Some(StreamEvent::Done)));
        let mut d = OpenAiCompatible.stream_decoder(&provider, 0);
        assert!(d.push(&finished.as_bytes()[..finished.find("data: {\"choices\":[{\"index\":0,\"delta\":{},").unwrap_or(0)]).is_ok());
        assert!(d.finish().is_err(), "no finish reason yet: a cut");
        let mut d = OpenAiCompatible.stream_decoder(&self::provider(), 0);
        assert!(d.push(finished.as_bytes()).is_ok());
        assert!(d.finish().is_err(), "servers that send [DONE] must send it");
    }

    #[test]
    fn error_statuses_map_to_kinds_and_never_quote_credential_errors() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-abc"}}"#;
        let e = error_response(401, body);
        assert_eq!(e.kind, ErrorKind::UpstreamStatus(401));
        assert!(!e.message.contains("sk-abc"));
        assert_eq!(error_response(400, br#"{"error":{"message":"bad temp"}}"#).kind, ErrorKind::UpstreamRejected(400));
        assert!(error_response(400, br#"{"error":{"message":"bad temp"}}"#).message.contains("bad temp"));
        assert_eq!(error_response(429, b"").kind, ErrorKind::UpstreamRateLimited { retry_after_ms: None });
        assert_eq!(error_response(503, b"<html>").kind, ErrorKind::UpstreamStatus(503));
    }

    fn decode(chunks: &[&str]) -> (Vec<StreamEvent>, Option<String>) {
        let mut d = OpenAiCompatible.stream_decoder(&provider(), 0);
        let mut events = Vec::new();
        for c in chunks {
            match d.push(c.as_bytes()) {
                Ok(ev) => events.extend(ev),
                Err(e) => return (events, Some(e.message)),
            }
        }
        match d.finish() {
            Ok(ev) => {
                events.extend(ev);
                (events, None)
            }
            Err(e) => (events, Some(e.message)),
        }
    }

    #[test]
    fn decoder_passes_chunks_and_reports_usage_done_cuts_and_garbage() {
        let c1 = r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
        let u = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let (ev, err) = decode(&[&format!("data: {c1}\n\ndata: {u}\n\n"), "data: [DONE]\n\n"]);
        assert_eq!(err, None);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0], StreamEvent::Chunk { json: c1.into(), usage: None, usage_only: false, content: true });
        assert_eq!(
            ev[1],
            StreamEvent::Chunk {
                json: u.into(),
                usage: Some(Usage { input: 3, output: 1, ..Usage::default() }),
                usage_only: true,
                content: false
            }
        );
        assert_eq!(ev[2], StreamEvent::Done);

        let (ev, err) = decode(&[&format!("data: {c1}\n\n")]);
        assert_eq!(ev.len(), 1);
        assert!(err.is_some_and(|m| m.contains("ended before")), "a cut stream is an error");

        let (_, err) = decode(&["data: {not json\n\n"]);
        assert!(err.is_some_and(|m| m.contains("malformed")));

        let (_, err) = decode(&["data: {\"error\":{\"message\":\"overloaded\"}}\n\n"]);
        assert!(err.is_some_and(|m| m.contains("overloaded")));
    }
}
