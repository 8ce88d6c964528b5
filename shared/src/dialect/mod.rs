//! Downstream dialects: the APIs callers speak to the gateway (OpenAI Chat Completions,
//! Anthropic Messages). Each converts the caller's request into the canonical one, and canonical
//! answers, streams and errors back into what the caller's SDK expects.
//!
//! The canonical answer is the OpenAI shape, so the OpenAI dialect forwards it unchanged.

use bytes::Bytes;
use serde_json::Value;

use crate::chat::{ChatRequest, Usage};
use crate::error::Error;
use crate::providers::Completion;

pub mod anthropic;
pub mod openai;

/// One downstream API. Implementations are stateless.
pub trait Dialect {
    /// Parses the caller's request body into the canonical request.
    fn parse_chat(&self, body: &[u8]) -> Result<ChatRequest, Error>;
    /// The caller's answer for a canonical completion.
    fn render_completion(&self, completion: &Completion) -> Result<Bytes, Error>;
    /// The caller's error body.
    fn error_body(&self, error: &Error) -> Value;
    /// Extra response header carrying the request id, besides `x-request-id`.
    fn request_id_header(&self) -> Option<&'static str>;
    /// A fresh stream encoder. `wants_usage`: the caller asked for the usage report.
    fn stream_encoder(&self, wants_usage: bool) -> Box<dyn StreamEncoder>;
}

/// Turns canonical stream events into the caller's server-sent events. A pure step function.
pub trait StreamEncoder {
    /// One canonical chunk (OpenAI `chat.completion.chunk` JSON).
    fn chunk(&mut self, json: &str, usage: Option<Usage>, usage_only: bool) -> Vec<Bytes>;
    /// The provider finished the answer.
    fn done(&mut self) -> Vec<Bytes>;
    /// The answer failed after the stream started; the stream ends after these frames.
    fn error(&mut self, error: &Error) -> Vec<Bytes>;
}
