//! The built-in mock provider: answers inside the gateway, deterministically, with no network.
//!
//! It plays the part of an OpenAI-compatible server: it reads the upstream request the
//! OpenAI-compatible adapter built and answers with the same wire bytes a real server would send
//! (JSON, or an event stream ending in `data: [DONE]`), so the rest of the pipeline runs unchanged.

use bytes::Bytes;
use serde_json::json;

use sha2::{Digest, Sha256};

use crate::chat::{ChatRequest, Role};
use crate::embeddings::EmbeddingsRequest;
use crate::ports::ByteStream;

/// Longest echo of the user's text in a mock answer, in characters.
const ECHO_CHARS: usize = 200;

/// Answers an upstream request built by the OpenAI-compatible adapter.
///
/// `created` is the Unix time to stamp on the answer and `id` its completion id.
pub fn respond(request: &http::Request<Bytes>, created: u64, id: &str) -> http::Response<ByteStream> {
    if request.uri().path().ends_with("/embeddings") {
        return embed(request);
    }
    let Ok(req) = ChatRequest::parse(request.body()) else {
        let body = json!({"error": {"message": "mock provider: unreadable request", "type": "invalid_request_error", "param": null, "code": null}});
        return response(400, "application/json", vec![Bytes::from(body.to_string())]);
    };
    let said: String =
        req.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.text()).unwrap_or_default().chars().take(ECHO_CHARS).collect();
    answer(&req, &format!("Hello from the edgegate mock provider. You said: {said}"), created, id)
}

/// Answers an upstream request built by the OpenAI-compatible adapter with the fixed `reply`
/// (a route's degraded-mode reply), as JSON or as a stream.
pub fn canned(request: &http::Request<Bytes>, reply: &str, created: u64, id: &str) -> http::Response<ByteStream> {
    match ChatRequest::parse(request.body()) {
        Ok(req) => answer(&req, reply, created, id),
        Err(_) => respond(request, created, id),
    }
}

fn answer(req: &ChatRequest, reply: &str, created: u64, id: &str) -> http::Response<ByteStream> {
    let prompt_tokens: u64 = req.messages.iter().map(|m| words(&m.text()) + 3).sum();
    let completion_tokens = words(reply);
    let usage =
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let model = req.model.as_str();

    if !req.is_stream() {
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        });
        return response(200, "application/json", vec![Bytes::from(body.to_string())]);
    }

    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    let pieces: Vec<&str> = reply.split_inclusive(' ').collect();
    frames.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
    frames.push(chunk(json!({}), Some("stop")));
    if req.wants_stream_usage() {
        let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage});
        frames.push(Bytes::from(format!("data: {c}\n\n")));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    response(200, "text/event-stream", frames)
}

/// Dimensions of mock embeddings.
pub const EMBEDDING_DIMS: usize = 8;

/// Deterministic vectors: each text's SHA-256, scaled into [-1, 1].
fn embed(request: &http::Request<Bytes>) -> http::Response<ByteStream> {
    let Ok(req) = EmbeddingsRequest::parse(request.body()) else {
        let body = json!({"error": {"message": "mock provider: unreadable request", "type": "invalid_request_error", "param": null, "code": null}});
        return response(400, "application/json", vec![Bytes::from(body.to_string())]);
    };
    let texts = req.texts();
    let data: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let digest = Sha256::digest(t.as_bytes());
            let v: Vec<f32> = digest.iter().take(EMBEDDING_DIMS).map(|b| (f32::from(*b) - 127.5) / 127.5).collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: u64 = texts.iter().map(|t| words(t)).sum();
    let body = json!({"object": "list", "data": data, "model": req.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    response(200, "application/json", vec![Bytes::from(body.to_string())])
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn response(status: u16, content_type: &'static str, frames: Vec<Bytes>) -> http::Response<ByteStream> {
    let body: ByteStream = Box::pin(futures::stream::iter(frames.into_iter().map(Ok)));
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}
