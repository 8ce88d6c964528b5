//! Canonical embeddings: the request as OpenAI's `/v1/embeddings` takes it, and vectors as floats.
//!
//! Providers are always asked for floats; the caller gets the `encoding_format` it asked for
//! (both official OpenAI SDKs ask for `base64` by default and decode it themselves).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::chat::Usage;
use crate::error::{Error, ErrorKind};

/// An embeddings request as the caller sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// Model alias (resolved through policy).
    pub model: String,
    /// A string, an array of strings, or token arrays.
    pub input: Value,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Every other field (`dimensions`, `user`, …), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Vectors in input order, with the provider's model name and usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Model that made the vectors.
    pub model: String,
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read.
    pub usage: Usage,
}

impl EmbeddingsRequest {
    /// The input's tokens: token arrays as given; text exactly with `encoding`, else about four
    /// characters a token.
    pub fn input_tokens(&self, encoding: Option<crate::tokenizer::Encoding>) -> u64 {
        fn count(v: &Value, encoding: Option<crate::tokenizer::Encoding>) -> u64 {
            match v {
                Value::String(s) => encoding.map_or_else(|| (s.chars().count() as u64).div_ceil(4), |e| e.count(s) as u64),
                Value::Array(items) if items.iter().all(Value::is_number) => items.len() as u64,
                Value::Array(items) => items.iter().map(|v| count(v, encoding)).sum(),
                _ => 0,
            }
        }
        count(&self.input, encoding)
    }

    /// Parses and checks a request body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let req: EmbeddingsRequest = serde_json::from_slice(body).map_err(|e| {
            let kind = if e.is_data() { ErrorKind::InvalidRequest } else { ErrorKind::InvalidJson };
            Error::new(kind, format!("invalid request body: {e}"))
        })?;
        let valid_input = match &req.input {
            Value::String(_) => true,
            Value::Array(items) => !items.is_empty() && items.iter().all(|i| i.is_string() || i.is_array()),
            _ => false,
        };
        if !valid_input {
            return Err(Error::new(ErrorKind::InvalidRequest, "`input` must be a string or a non-empty array of strings or token arrays")
                .with_param("input"));
        }
        match req.encoding_format.as_deref() {
            None | Some("float" | "base64") => Ok(req),
            Some(other) => {
                Err(Error::new(ErrorKind::InvalidRequest, format!("unknown encoding_format {other:?}")).with_param("encoding_format"))
            }
        }
    }

    /// The inputs as texts (token arrays are shown as their numbers; only the mock reads this).
    pub fn texts(&self) -> Vec<String> {
        match &self.input {
            Value::Array(items) => items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect(),
            other => vec![other.as_str().unwrap_or_default().to_owned()],
        }
    }
}

impl Embeddings {
    /// The OpenAI list response, each vector encoded as `format` asks.
    pub fn to_openai(&self, format: Option<&str>) -> Value {
        let base64 = format == Some("base64");
        let data: Vec<Value> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let tokens = self.usage.prompt_tokens();
        json!({"object": "list", "data": data, "model": self.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32_and_float_is_plain() {
        let e = Embeddings { model: "m".into(), vectors: vec![vec![1.0, -0.5]], usage: Usage { input: 3, ..Usage::default() } };
        let b = e.to_openai(Some("base64"));
        // 1.0f32 = 00 00 80 3f, -0.5f32 = 00 00 00 bf
        assert_eq!(b["data"][0]["embedding"], "AACAPwAAAL8=");
        assert_eq!(e.to_openai(None)["data"][0]["embedding"], json!([1.0, -0.5]));
        assert_eq!(b["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    }

    #[test]
    fn parse_checks_input_and_format() {
        let ok = |b: &str| EmbeddingsRequest::parse(b.as_bytes()).map(|r| r.texts()).map_err(|e| e.metric_label());
        assert_eq!(ok(r#"{"model":"m","input":"hi"}"#), Ok(vec!["hi".to_owned()]));
        assert_eq!(ok(r#"{"model":"m","input":["a","b"],"encoding_format":"base64"}"#), Ok(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(ok(r#"{"model":"m","input":[]}"#), Err("invalid_request"));
        assert_eq!(ok(r#"{"model":"m","input":5}"#), Err("invalid_request"));
        assert_eq!(ok(r#"{"model":"m","input":"x","encoding_format":"int8"}"#), Err("invalid_request"));
        assert_eq!(ok(r#"{"model":"m"}"#), Err("invalid_request"));
        assert_eq!(ok("{"), Err("invalid_json"));
    }
}
