//! Providers: one file each, sans-IO. A provider builds the upstream request, reads the upstream
//! response, and decodes the upstream stream into [`StreamEvent`]s with a pure step function.
//!
//! [`adapter`] is the only `match` over [`ProviderKind`].

use bytes::Bytes;

use crate::chat::{ChatRequest, Usage};
use crate::embeddings::{Embeddings, EmbeddingsRequest};
use crate::error::{Error, ErrorKind};
use crate::policy::{Provider, ProviderKind, Target};

pub mod anthropic;
pub mod azure_openai;
pub mod mock;
pub mod openai_compatible;

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
    /// Reads a successful (2xx) non-stream answer; `created` stamps answers that carry no time.
    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error>;
    /// Turns an error status and its body into the gateway's error.
    fn error_response(&self, status: u16, body: &[u8]) -> Error;
    /// A fresh stream decoder; `created` stamps chunks that carry no time.
    fn stream_decoder(&self, created: u64) -> Box<dyn StreamDecoder>;

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

    /// Reads a successful (2xx) embeddings answer.
    fn embeddings_response(&self, body: &[u8]) -> Result<Embeddings, Error> {
        let _ = body;
        Err(Error::new(ErrorKind::Internal, "this provider does not offer embeddings"))
    }
}

/// The gateway's error for a provider's error answer: the adapter reads the body; a 429 becomes
/// [`ErrorKind::UpstreamRateLimited`] carrying the provider's `retry-after-ms` or `retry-after`
/// (seconds) for every provider alike.
pub fn upstream_error(adapter: &dyn ProviderAdapter, status: u16, headers: &http::HeaderMap, body: &[u8]) -> Error {
    let mut e = adapter.error_response(status, body);
    if status == 429 {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        let wait = header("retry-after-ms").or_else(|| header("retry-after").map(|s| s * 1000.0));
        let retry_after_ms = wait.filter(|w| w.is_finite() && *w >= 0.0).map(|w| w.ceil() as u64);
        e.kind = ErrorKind::UpstreamRateLimited { retry_after_ms };
    }
    e
}

/// The adapter for a provider kind. The built-in mock speaks the OpenAI wire format.
pub fn adapter(kind: ProviderKind) -> &'static dyn ProviderAdapter {
    match kind {
        ProviderKind::Mock | ProviderKind::OpenaiCompatible => &openai_compatible::OpenAiCompatible,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::AzureOpenai => &azure_openai::AzureOpenAi,
    }
}
