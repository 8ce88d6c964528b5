//! Providers: one file each, sans-IO. A provider builds the upstream request, reads the upstream
//! response, and decodes the upstream stream into [`StreamEvent`]s with a pure step function.
//!
//! [`adapter`] is the only `match` over [`ProviderKind`].

use bytes::Bytes;

use crate::chat::{ChatRequest, Usage};
use crate::embeddings::{Embeddings, EmbeddingsRequest};
use crate::error::{Error, ErrorKind};
use crate::policy::{Provider, ProviderKind, Target};
use crate::sse::{SseEvent, SseParser};

pub mod anthropic;
pub mod azure_openai;
pub mod bedrock;
pub mod gemini;
pub mod mock;
pub mod openai_compatible;
pub mod sigv4;
pub mod workers_ai;

/// What a stream decoder saw in the upstream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// One chunk in OpenAI `chat.completion.chunk` form, as JSON text.
    Chunk {
        /// The chunk, ready to forward.
        json: String,
        /// Usage carried by this chunk, if any.
        usage: Option<Usage>,
        /// Whether this chunk is only the usage report (`choices` empty).
        usage_only: bool,
        /// Whether this chunk commits the answer: it carries text, a tool call or a finish
        /// reason. Chunks before the first such one (the role chunk) are held back, so a
        /// provider that fails before committing can still be failed over invisibly.
        content: bool,
    },
    /// The provider said the answer is complete.
    Done,
}

/// A pure decoder from upstream stream bytes to events.
pub trait StreamDecoder {
    /// Feeds bytes; returns the events they complete, or the first protocol error.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, Error>;
    /// Ends the stream; an error if the provider stopped before saying it was done.
    fn finish(&mut self) -> Result<Vec<StreamEvent>, Error>;
}

/// A complete, non-streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The answer in OpenAI `chat.completion` form.
    pub body: Bytes,
    /// Usage reported by the provider.
    pub usage: Option<Usage>,
}

/// The per-provider conversions. Implementations are stateless.
pub trait ProviderAdapter {
    /// The upstream HTTP request for `req`, sent to `target.model` at `provider`.
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error>;
    /// Adds credentials that depend on the finished request and the time (request signing).
    /// Runs after every build method; most providers put their key in a header while building
    /// and keep this default, which does nothing.
    fn authorize(&self, provider: &Provider, req: &mut http::Request<Bytes>, credential: Option<&str>, now_ms: u64) -> Result<(), Error> {
        let _ = (provider, req, credential, now_ms);
        Ok(())
    }

    /// Reads a successful (2xx) non-stream answer; `created` stamps answers that carry no time.
    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error>;
    /// The provider's own message in an error body, if it has one.
    fn error_message(&self, body: &[u8]) -> Option<String>;
    /// A fresh stream decoder for `provider`; `created` stamps chunks that carry no time.
    fn stream_decoder(&self, provider: &Provider, created: u64) -> Box<dyn StreamDecoder>;

    /// The upstream HTTP request for an embeddings request. Providers without embeddings keep
    /// this default, which refuses.
    fn embeddings_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &EmbeddingsRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let _ = (target, req, credential);
        Err(Error::new(ErrorKind::InvalidRequest, format!("provider `{}` does not offer embeddings", provider.id)).with_param("model"))
    }

    /// Whether the provider counts prompt tokens itself (see [`Self::count_tokens_request`]).
    fn counts_tokens(&self) -> bool {
        false
    }

    /// The upstream request that counts a prompt's tokens exactly.
    fn count_tokens_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let _ = (target, req, credential);
        Err(Error::new(ErrorKind::Internal, format!("provider `{}` cannot count tokens", provider.id)))
    }

    /// Reads a successful count answer: the prompt's input tokens.
    fn count_tokens_response(&self, body: &[u8]) -> Result<u64, Error> {
        let _ = body;
        Err(Error::new(ErrorKind::Internal, "this provider cannot count tokens"))
    }

    /// Reads a successful (2xx) embeddings answer.
    fn embeddings_response(&self, body: &[u8]) -> Result<Embeddings, Error> {
        let _ = body;
        Err(Error::new(ErrorKind::Internal, "this provider does not offer embeddings"))
    }
}

/// A canonical stream chunk (OpenAI `chat.completion.chunk`) with one choice carrying `delta`.
fn delta_chunk(id: &str, model: &str, created: u64, delta: serde_json::Value, finish: Option<&str>, content: bool) -> StreamEvent {
    let c = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    StreamEvent::Chunk { json: c.to_string(), usage: None, usage_only: false, content }
}

/// The canonical usage-only chunk that closes a stream's answer.
fn usage_chunk(id: &str, model: &str, created: u64, usage: Usage) -> StreamEvent {
    let c = serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage.to_openai(),
    });
    StreamEvent::Chunk { json: c.to_string(), usage: Some(usage), usage_only: true, content: false }
}

/// A JSON `POST` to `url` with `headers` (a credential header is skipped when its value is
/// `None`). The one place adapters build upstream requests.
fn post_json(provider: &Provider, url: String, headers: &[(&str, Option<&str>)], body: Vec<u8>) -> Result<http::Request<Bytes>, Error> {
    let mut builder = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        if let Some(value) = value {
            builder = builder.header(*name, *value);
        }
    }
    builder
        .body(Bytes::from(body))
        .map_err(|e| Error::new(ErrorKind::Internal, format!("building upstream request for provider {:?}: {e}", provider.id)))
}

/// A 400 for input a provider cannot take.
fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidRequest, msg)
}

/// The media type and base64 data of a `data:…;base64,…` URL.
fn data_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("data:")?.split_once(";base64,")
}

/// Canonical message content (a string or OpenAI content parts) as a provider's blocks: `text`
/// makes a text block, `image` makes an image block from an image URL; any other part type is
/// refused with a 400 naming `provider`.
fn content_blocks(
    content: Option<&serde_json::Value>,
    provider: &str,
    text: fn(&str) -> serde_json::Value,
    image: fn(&str) -> Result<serde_json::Value, Error>,
) -> Result<Vec<serde_json::Value>, Error> {
    use serde_json::Value;
    match content {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) if s.is_empty() => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![text(s)]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p["type"].as_str() {
                Some("text") => Ok(text(p["text"].as_str().unwrap_or(""))),
                Some("image_url") => image(p["image_url"]["url"].as_str().ok_or_else(|| invalid("image_url part without a url"))?),
                other => Err(invalid(format!("content part type {} is not supported by {provider} models", other.unwrap_or("(none)")))),
            })
            .collect(),
        Some(_) => Err(invalid("message content must be a string or an array of parts")),
    }
}

/// A tool call's arguments as JSON (an empty string is an empty object).
fn tool_arguments(call: &crate::chat::ToolCall) -> Result<serde_json::Value, Error> {
    if call.function.arguments.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(&call.function.arguments)
        .map_err(|e| invalid(format!("tool call {} has arguments that are not JSON: {e}", call.id)))
}

/// Appends a turn, merging it into the previous one when the role repeats (providers that
/// want alternating user/assistant turns).
fn push_turn(turns: &mut Vec<(&'static str, Vec<serde_json::Value>)>, role: &'static str, content: Vec<serde_json::Value>) {
    match turns.last_mut() {
        Some((last, blocks)) if *last == role => blocks.extend(content),
        _ => turns.push((role, content)),
    }
}

/// Longest provider message quoted back to a caller.
const MAX_QUOTED: usize = 300;

/// A provider's message, cut to [`MAX_QUOTED`] characters for quoting to a caller.
fn quote(message: &str) -> String {
    message.chars().take(MAX_QUOTED).collect()
}

/// The gateway's error for a provider's error answer, the same for every provider: the adapter
/// only reads its message out of the body.
///
/// - 401/403: the gateway's own credential was refused. The caller cannot fix that, and the
///   provider's message may quote part of the key, so it is not passed on.
/// - 429: [`ErrorKind::UpstreamRateLimited`] with the provider's `retry-after-ms` or
///   `retry-after` (seconds).
/// - other 4xx except 408: the request itself was refused; the caller's 400, not retried.
/// - everything else: [`ErrorKind::UpstreamStatus`], and the plan moves on.
pub fn upstream_error(adapter: &dyn ProviderAdapter, status: u16, headers: &http::HeaderMap, body: &[u8]) -> Error {
    let quoted = quote(&adapter.error_message(body).unwrap_or_else(|| "no message".into()));
    match status {
        401 | 403 => Error::new(ErrorKind::UpstreamStatus(status), format!("provider refused the gateway's credential ({status})")),
        429 => {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
            let wait = header("retry-after-ms").or_else(|| header("retry-after").map(|s| s * 1000.0));
            let retry_after_ms = wait.filter(|w| w.is_finite() && *w >= 0.0).map(|w| w.ceil() as u64);
            Error::new(ErrorKind::UpstreamRateLimited { retry_after_ms }, format!("provider rate limit: {quoted}"))
        }
        400..=499 if status != 408 => {
            Error::new(ErrorKind::UpstreamRejected(status), format!("provider rejected the request ({status}): {quoted}"))
        }
        _ => Error::new(ErrorKind::UpstreamStatus(status), format!("provider returned {status}: {quoted}")),
    }
}

/// The per-event half of an SSE-framed provider stream; [`SseDecoder`] does the rest.
pub trait SseEvents {
    /// Handles one event, appending what it means.
    fn event(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), Error>;
    /// Whether the provider has said the answer is complete.
    fn done(&self) -> bool;
    /// Called once when the bytes end, before [`Self::done`] decides whether that was a cut.
    fn at_end(&mut self, out: &mut Vec<StreamEvent>) {
        let _ = out;
    }
}

/// A [`StreamDecoder`] for providers that frame their streams as server-sent events: parses the
/// bytes, hands each event to `E`, and refuses a stream that stops before `E` saw its end.
#[derive(Debug, Default)]
pub struct SseDecoder<E> {
    sse: SseParser,
    events: E,
}

impl<E> SseDecoder<E> {
    /// A decoder feeding `events`.
    pub fn new(events: E) -> Self {
        SseDecoder { sse: SseParser::new(), events }
    }
}

impl<E: SseEvents> StreamDecoder for SseDecoder<E> {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, Error> {
        let mut out = Vec::new();
        for ev in self.sse.push(bytes) {
            if !self.events.done() {
                self.events.event(ev, &mut out)?;
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<StreamEvent>, Error> {
        let mut out = Vec::new();
        if let Some(ev) = self.sse.finish()
            && !self.events.done()
        {
            self.events.event(ev, &mut out)?;
        }
        if !self.events.done() {
            self.events.at_end(&mut out);
        }
        if !self.events.done() {
            return Err(Error::new(ErrorKind::UpstreamProtocol, "provider stream ended before the answer was complete"));
        }
        Ok(out)
    }
}

/// The adapter for a provider kind. The built-in mock speaks the OpenAI wire format.
pub fn adapter(kind: ProviderKind) -> &'static dyn ProviderAdapter {
    match kind {
        ProviderKind::Mock | ProviderKind::Openai | ProviderKind::OpenaiCompatible => &openai_compatible::OpenAiCompatible,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::AzureOpenai => &azure_openai::AzureOpenAi,
        ProviderKind::Gemini => &gemini::Gemini,
        ProviderKind::Bedrock => &bedrock::Bedrock,
        ProviderKind::WorkersAi => &workers_ai::WorkersAi,
    }
}
