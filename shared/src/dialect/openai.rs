//! The OpenAI Chat Completions dialect. Canonical answers are already in its shape.

use bytes::Bytes;
use serde_json::Value;

use super::{Dialect, StreamEncoder};
use crate::chat::{ChatRequest, Usage};
use crate::error::Error;
use crate::providers::Completion;

/// OpenAI's dialect.
#[derive(Debug, Clone, Copy)]
pub struct OpenAi;

impl Dialect for OpenAi {
    fn parse_chat(&self, body: &[u8]) -> Result<ChatRequest, Error> {
        ChatRequest::parse(body)
    }

    fn render_completion(&self, completion: &Completion) -> Result<Bytes, Error> {
        Ok(completion.body.clone())
    }

    fn error_body(&self, error: &Error) -> Value {
        error.to_openai_json()
    }

    fn request_id_header(&self) -> Option<&'static str> {
        None
    }

    fn stream_encoder(&self, wants_usage: bool) -> Box<dyn StreamEncoder> {
        Box::new(Encoder { wants_usage })
    }
}

/// Forwards chunks as `data:` lines; hides the usage chunk unless the caller asked for it.
struct Encoder {
    wants_usage: bool,
}

impl StreamEncoder for Encoder {
    fn chunk(&mut self, json: &str, _usage: Option<Usage>, usage_only: bool) -> Vec<Bytes> {
        if usage_only && !self.wants_usage {
            return vec![];
        }
        vec![Bytes::from(format!("data: {json}\n\n"))]
    }

    fn done(&mut self) -> Vec<Bytes> {
        vec![Bytes::from_static(b"data: [DONE]\n\n")]
    }

    fn error(&mut self, error: &Error) -> Vec<Bytes> {
        vec![Bytes::from(format!("data: {}\n\n", error.to_openai_json()))]
    }
}
