//! A simulated LLM provider for tests and benchmarks, on 127.0.0.1 only.
//!
//! Speaks OpenAI `POST /v1/chat/completions` (JSON and SSE ending in `data: [DONE]`, with the usage
//! chunk when `stream_options.include_usage` is set), `GET /v1/models`, and Anthropic
//! `POST /v1/messages` (JSON and the `message_start` … `message_stop` event stream; the key may come
//! as `x-api-key`), and the Azure OpenAI deployment routes (`/openai/deployments/{name}/…` with
//! `api-version`, key as `api-key`), and Gemini `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` (key as `x-goog-api-key`), and Bedrock
//! `POST /model/{id}/converse` and `/converse-stream` (AWS event-stream framing; a SigV4
//! `Authorization` is checked for form, not recomputed). A tool list in the request makes the answer a call of the first tool. Faults are chosen per
//! request, by `x-sim-*` headers or — since a gateway does not forward client headers — by
//! directives in the model name or message text, e.g. `sim:status=503`:
//!
//! - `status=N`        answer with status N and an OpenAI-shaped error body
//! - `retry-after=S`   add `Retry-After: S`
//! - `latency=MS`      wait before the response head
//! - `chunk-delay=MS`  wait between stream chunks
//! - `cut=N`           stream N content chunks, then drop the connection
//! - `malformed=N`     make stream chunk N unparseable
//!
//! Several simulated deployments can share one simulator: a path `/dep/{name}/…` is served as
//! `/…` by deployment `name`, whose faults a test switches on and off while traffic flows with
//! `PUT /_sim/faults/{name}` (a JSON object of directives, e.g. `{"status": 503}`) and
//! `DELETE /_sim/faults/{name}`. Received requests name their deployment.
//!
//! It also serves the Cloudflare API's Workers KV values endpoints
//! (`/client/v4/accounts/{account}/storage/kv/namespaces/{ns}/values/{key}`: GET, PUT, DELETE,
//! Cloudflare's `{"success","errors"}` envelope on failure) from memory, for the admin CLI.
//!
//! It accepts `POST /v1/metrics` as an OTLP/HTTP collector would (JSON encoding), answering `{}`.
//!
//! `GET /_sim/requests` returns what was received (newest last); `DELETE` clears it.
//! Usage: `upstream-sim [--listen 127.0.0.1:0] [--latency-ms N] [--require-key KEY]`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Default)]
struct Config {
    latency_ms: u64,
    require_key: Option<String>,
}

struct Sim {
    config: Config,
    received: Mutex<Vec<Value>>,
    /// Cloudflare Workers KV over the REST API: (namespace, key) → value.
    cf_kv: Mutex<HashMap<(String, String), Bytes>>,
    /// Fault directives per simulated deployment.
    faults: Mutex<HashMap<String, HashMap<String, u64>>>,
}

/// Keeps at most this many received requests.
const KEEP: usize = 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value.parse()?,
            "--latency-ms" => config.latency_ms = value.parse()?,
            "--require-key" => config.require_key = Some(value),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !listen.ip().is_loopback() {
        return Err("the simulator only listens on loopback addresses".into());
    }
    let sim =
        Arc::new(Sim { config, received: Mutex::new(Vec::new()), cf_kv: Mutex::new(HashMap::new()), faults: Mutex::new(HashMap::new()) });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        loop {
            let (sock, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            sock.set_nodelay(true)?;
            let sim = Arc::clone(&sim);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let sim = Arc::clone(&sim);
                    async move { Ok::<_, Infallible>(sim.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(sock), service).await;
            });
        }
    })
}

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("content-type", content_type.parse().unwrap_or(hyper::header::HeaderValue::from_static("text/plain")));
    resp
}

fn error(status: u16, message: &str) -> hyper::Response<Body> {
    let kind = if status == 429 {
        "rate_limit_error"
    } else if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    full(status, "application/json", json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string())
}

/// Decodes `%XX` escapes of a URL path segment.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fault directives: `x-sim-NAME` headers, then `sim:NAME=VALUE` words in the model and messages.
fn directives(headers: &hyper::HeaderMap, body: &Value) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let mut scan = |text: &str| {
        for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
            if let Some((k, v)) = word.strip_prefix("sim:").and_then(|d| d.split_once('='))
                && let Ok(v) = v.parse()
            {
                out.insert(k.to_owned(), v);
            }
        }
    };
    scan(body["model"].as_str().unwrap_or(""));
    for m in body["messages"].as_array().into_iter().flatten() {
        scan(&content_text(&m["content"]));
    }
    for c in body["contents"].as_array().into_iter().flatten() {
        scan(&content_text(&c["parts"]));
    }
    for (name, value) in headers {
        if let (Some(k), Ok(v)) = (name.as_str().strip_prefix("x-sim-"), value.to_str())
            && let Ok(v) = v.parse()
        {
            out.insert(k.to_owned(), v);
        }
    }
    out
}

impl Sim {
    /// The Cloudflare API's Workers KV values endpoints:
    /// `/client/v4/accounts/{account}/storage/kv/namespaces/{namespace}/values/{key}`.
    fn cloudflare_kv(&self, parts: &hyper::http::request::Parts, rest: &str, body: Bytes) -> hyper::Response<Body> {
        let cf_error = |status: u16, code: u32, message: &str| {
            let body = json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null});
            full(status, "application/json", body.to_string())
        };
        if let Some(key) = &self.config.require_key {
            let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
            if auth != format!("Bearer {key}") {
                return cf_error(403, 10000, "Authentication error");
            }
        }
        let Some((_account, rest)) = rest.split_once("/storage/kv/namespaces/") else { return cf_error(404, 7003, "No route") };
        let Some((namespace, key)) = rest.split_once("/values/") else { return cf_error(404, 7003, "No route") };
        let key = percent_decode(key);
        let slot = (namespace.to_owned(), key.clone());
        let mut kv = self.cf_kv.lock().unwrap_or_else(|p| p.into_inner());
        let ok = || full(200, "application/json", json!({"success": true, "errors": [], "messages": [], "result": null}).to_string());
        match parts.method.as_str() {
            "GET" => match kv.get(&slot) {
                Some(v) => full(200, "application/octet-stream", v.clone()),
                None => cf_error(404, 10009, "get: 'key not found'"),
            },
            "PUT" => {
                kv.insert(slot, body);
                ok()
            }
            "DELETE" => {
                kv.remove(&slot);
                ok()
            }
            _ => cf_error(405, 10000, "method not allowed"),
        }
    }

    async fn handle(&self, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(400, "unreadable body"),
        };
        let mut path = parts.uri.path().to_owned();
        if let Some(name) = path.strip_prefix("/_sim/faults/") {
            let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            if parts.method == hyper::Method::DELETE {
                faults.remove(name);
                return full(200, "application/json", "{}");
            }
            let set: Result<HashMap<String, u64>, _> = serde_json::from_slice(&bytes);
            return match set {
                Ok(d) => {
                    faults.insert(name.to_owned(), d);
                    full(200, "application/json", "{}")
                }
                Err(e) => error(400, &format!("faults must be an object of numbers: {e}")),
            };
        }
        let mut dep = None;
        if let Some(rest) = path.strip_prefix("/dep/")
            && let Some((name, tail)) = rest.split_once('/')
        {
            dep = Some(name.to_owned());
            path = format!("/{tail}");
        }
        // Azure OpenAI: /openai/deployments/{deployment}/{operation}?api-version=… (required).
        let mut deployment = None;
        if let Some(rest) = path.strip_prefix("/openai/deployments/")
            && let Some((name, operation)) = rest.split_once('/')
        {
            if !parts.uri.query().is_some_and(|q| q.contains("api-version=")) {
                return error(400, "api-version query parameter is required");
            }
            deployment = Some(name.to_owned());
            path = format!("/v1/{operation}");
        }
        if let Some(rest) = path.strip_prefix("/client/v4/accounts/") {
            return self.cloudflare_kv(&parts, rest, bytes);
        }
        if path == "/_sim/requests" {
            let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            if parts.method == hyper::Method::DELETE {
                received.clear();
            }
            return full(200, "application/json", Value::Array(received.clone()).to_string());
        }
        let mut parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let (Some(d), Some(body)) = (&deployment, parsed.as_object_mut()) {
            body.insert("model".into(), json!(d)); // Azure answers with the deployment's model
        }
        {
            let headers: serde_json::Map<String, Value> =
                parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), Value::String(v.to_str().unwrap_or("").to_owned()))).collect();
            let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            if received.len() >= KEEP {
                received.remove(0);
            }
            received.push(json!({
                "method": parts.method.as_str(), "path": path, "uri": parts.uri.to_string(), "deployment": dep,
                "headers": headers, "body": parsed,
            }));
        }
        // Bedrock requests are signed, and checked by their own route.
        if let Some(key) = self.config.require_key.as_ref().filter(|_| !path.starts_with("/model/")) {
            let bearer = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            let x_api_key =
                ["x-api-key", "api-key", "x-goog-api-key"].iter().find_map(|h| parts.headers.get(*h)).and_then(|v| v.to_str().ok());
            if bearer != Some(key.as_str()) && x_api_key != Some(key.as_str()) {
                return error(401, "Incorrect API key provided");
            }
        }
        let mut d = directives(&parts.headers, &parsed);
        if let Some(faults) = dep.as_ref().and_then(|n| self.faults.lock().unwrap_or_else(|p| p.into_inner()).get(n).cloned()) {
            d.extend(faults);
        }
        let latency = d.get("latency").copied().unwrap_or(self.config.latency_ms);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        match (parts.method.as_str(), path.as_str()) {
            ("GET", "/v1/models") => full(
                200,
                "application/json",
                json!({"object": "list", "data": [{"id": "sim-1", "object": "model", "created": 0, "owned_by": "sim"}]}).to_string(),
            ),
            ("POST", p) if p.starts_with("/v1beta/models/") => {
                let Some((model, method)) = p["/v1beta/models/".len()..].split_once(':') else {
                    return gemini_error(404, "unknown endpoint");
                };
                if parts.headers.get("x-goog-api-key").is_none() && self.config.require_key.is_some() {
                    return gemini_error(403, "Method doesn't allow unregistered callers");
                }
                if let Some(&status) = d.get("status").filter(|s| **s >= 400) {
                    return gemini_error(status as u16, &format!("simulated failure {status}"));
                }
                let stream = method == "streamGenerateContent" && parts.uri.query().is_some_and(|q| q.contains("alt=sse"));
                gemini(model, &parsed, stream, &d)
            }
            ("POST", p) if p.starts_with("/model/") && (p.ends_with("/converse") || p.ends_with("/converse-stream")) => {
                if let Some(key) = &self.config.require_key {
                    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                    let signed = auth.starts_with("AWS4-HMAC-SHA256 Credential=")
                        && auth.contains("/bedrock/aws4_request")
                        && parts.headers.contains_key("x-amz-date");
                    if !signed && auth != format!("Bearer {key}") {
                        return full(
                            403,
                            "application/json",
                            json!({"message": "The security token included in the request is invalid."}).to_string(),
                        );
                    }
                }
                if let Some(&status) = d.get("status").filter(|s| **s >= 400) {
                    return full(status as u16, "application/json", json!({"message": format!("simulated failure {status}")}).to_string());
                }
                let model = p["/model/".len()..].rsplit_once('/').map_or("", |(m, _)| m);
                bedrock(model, &parsed, p.ends_with("/converse-stream"), &d)
            }
            // An OTLP/HTTP collector's metrics endpoint: what was posted is in `/_sim/requests`.
            ("POST", "/v1/metrics") => full(200, "application/json", "{}".to_owned()),
            ("POST", "/v1/embeddings") => embeddings(&parsed),
            ("POST", "/v1/messages/count_tokens") => {
                let (_, input_tokens, _) = answer(&parsed);
                full(200, "application/json", json!({"input_tokens": input_tokens}).to_string())
            }
            ("POST", "/v1/chat/completions" | "/v1/messages") => {
                if let Some(&status) = d.get("status").filter(|s| **s >= 400) {
                    let message = format!("simulated failure {status}");
                    let mut resp =
                        if path == "/v1/messages" { anthropic_error(status as u16, &message) } else { error(status as u16, &message) };
                    if let Some(ra) = d.get("retry-after") {
                        resp.headers_mut().insert("retry-after", (*ra).into());
                    }
                    return resp;
                }
                if parsed.is_null() || !parsed["messages"].is_array() {
                    return error(400, "'messages' is a required property");
                }
                if path == "/v1/messages" {
                    if parts.headers.get("anthropic-version").is_none() {
                        return error(400, "anthropic-version header is required");
                    }
                    return messages(&parsed, &d);
                }
                chat(&parsed, &d)
            }
            _ => error(404, "unknown endpoint"),
        }
    }
}

fn gemini_error(status: u16, message: &str) -> hyper::Response<Body> {
    let kind = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    full(status, "application/json", json!({"error": {"code": status, "message": message, "status": kind}}).to_string())
}

/// Gemini `generateContent` / `streamGenerateContent?alt=sse`.
fn gemini(model: &str, req: &Value, stream: bool, d: &HashMap<String, u64>) -> hyper::Response<Body> {
    let contents = req["contents"].as_array().cloned().unwrap_or_default();
    let last_user = contents.iter().rev().find(|c| c["role"] == "user").map(|c| content_text(&c["parts"])).unwrap_or_default();
    let reply = format!("Simulated answer to: {last_user}");
    let prompt_tokens: u64 = contents.iter().map(|c| content_text(&c["parts"]).split_whitespace().count() as u64 + 3).sum();
    let output_tokens = reply.split_whitespace().count() as u64;
    let answered =
        contents.last().and_then(|c| c["parts"].as_array()).is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()));
    let tool = req["tools"][0]["functionDeclarations"][0]["name"]
        .as_str()
        .filter(|_| !answered && req["toolConfig"]["functionCallingConfig"]["mode"] != "NONE");
    let usage =
        json!({"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens, "totalTokenCount": prompt_tokens + output_tokens});
    let fragment = |parts: Value, finish: Option<&str>, usage: Option<&Value>| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        let mut r = json!({"candidates": [c], "modelVersion": model, "responseId": "sim-gemini"});
        if let Some(u) = usage {
            r["usageMetadata"] = u.clone();
        }
        r
    };
    let answer_parts = match tool {
        Some(name) => json!([{"functionCall": {"name": name, "args": {"query": reply}}}]),
        None => json!([{"text": reply}]),
    };
    if !stream {
        return full(200, "application/json", fragment(answer_parts, Some("STOP"), Some(&usage)).to_string());
    }
    let mut frames: Vec<String> = match tool {
        Some(_) => vec![format!("data: {}\r\n\r\n", fragment(answer_parts, None, None))],
        None => reply.split_inclusive(' ').map(|w| format!("data: {}\r\n\r\n", fragment(json!([{"text": w}]), None, None))).collect(),
    };
    frames.push(format!("data: {}\r\n\r\n", fragment(json!([{"text": ""}]), Some("STOP"), Some(&usage))));
    stream_response(frames, d, 0)
}

/// One AWS event-stream message: prelude (lengths, CRC32), string headers, JSON payload, CRC32.
fn event_frame(event_type: &str, payload: &Value) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        headers.push(7); // string
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let payload = payload.to_string().into_bytes();
    let total = 16 + headers.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    Bytes::from(out)
}

/// Bedrock Converse and ConverseStream.
fn bedrock(model: &str, req: &Value, stream: bool, d: &HashMap<String, u64>) -> hyper::Response<Body> {
    let (reply, input_tokens, output_tokens) = answer(req);
    let tool = tool_to_call(req);
    let usage = json!({"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": input_tokens + output_tokens});
    let stop = if tool.is_some() { "tool_use" } else { "end_turn" };
    if !stream {
        let content = match &tool {
            Some(name) => json!([{"toolUse": {"toolUseId": "tooluse_sim_1", "name": name, "input": {"query": reply}}}]),
            None => json!([{"text": reply}]),
        };
        let body = json!({"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 1}, "sim_model": model});
        return full(200, "application/json", body.to_string());
    }
    let mut frames = vec![event_frame("messageStart", &json!({"role": "assistant"}))];
    match &tool {
        Some(name) => {
            frames.push(event_frame(
                "contentBlockStart",
                &json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_sim_1", "name": name}}}),
            ));
            let args = json!({"query": reply}).to_string();
            let mid = (args.len() / 2..args.len()).find(|i| args.is_char_boundary(*i)).unwrap_or(args.len());
            for piece in [&args[..mid], &args[mid..]] {
                frames.push(event_frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}})));
            }
        }
        None => frames.extend(
            reply.split_inclusive(' ').map(|w| event_frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": w}}))),
        ),
    }
    frames.push(event_frame("contentBlockStop", &json!({"contentBlockIndex": 0})));
    frames.push(event_frame("messageStop", &json!({"stopReason": stop})));
    frames.push(event_frame("metadata", &json!({"usage": usage, "metrics": {"latencyMs": 1}})));
    stream_bytes(frames, d, 1, "application/vnd.amazon.eventstream")
}

/// Dimensions of simulated embeddings.
const EMBEDDING_DIMS: usize = 4;

/// OpenAI embeddings: vector `i` of text `t` is `[len(t), len(t)+1, …] / 100`, as floats or as
/// base64 little-endian f32 when `encoding_format` is `base64`.
fn embeddings(req: &Value) -> hyper::Response<Body> {
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect(),
        _ => return error(400, "'input' is a required property"),
    };
    let base64 = req["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v: Vec<f32> = (0..EMBEDDING_DIMS).map(|d| (t.len() + d) as f32 / 100.0).collect();
            let embedding = if base64 { json!(b64(&v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>())) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    full(
        200,
        "application/json",
        json!({"object": "list", "data": data, "model": req["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
            .to_string(),
    )
}

/// Standard base64 with padding.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn anthropic_error(status: u16, message: &str) -> hyper::Response<Body> {
    let kind = match status {
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        401 => "authentication_error",
        _ => "invalid_request_error",
    };
    full(status, "application/json", json!({"type": "error", "error": {"type": kind, "message": message}}).to_string())
}

/// Text of a message's content, whether a string or an array of text parts/blocks.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

/// The tool the answer should call: the first tool offered, unless the caller answered a tool
/// already (OpenAI `tool` message, Anthropic `tool_result` block) or said `none`.
fn tool_to_call(req: &Value) -> Option<String> {
    let first = req["tools"].as_array().or(req["toolConfig"]["tools"].as_array())?.first()?;
    let name = first["function"]["name"].as_str().or(first["name"].as_str()).or(first["toolSpec"]["name"].as_str())?;
    let none = req["tool_choice"] == "none" || req["tool_choice"]["type"] == "none";
    let last = req["messages"].as_array()?.last()?;
    let answered = last["role"] == "tool"
        || last["content"].as_array().is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result" || b.get("toolResult").is_some()));
    (!none && !answered).then(|| name.to_owned())
}

/// What the simulated model says, and its token counts.
fn answer(req: &Value) -> (String, u64, u64) {
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(|m| content_text(&m["content"])).unwrap_or_default();
    let reply = format!("Simulated answer to: {last_user}");
    let prompt_tokens: u64 = messages.iter().map(|m| content_text(&m["content"]).split_whitespace().count() as u64 + 3).sum();
    let completion_tokens = reply.split_whitespace().count() as u64;
    (reply, prompt_tokens, completion_tokens)
}

fn sse_frame(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// Frames as a streamed response, with the `cut`, `malformed` and `chunk-delay` faults applied.
fn stream_response(frames: Vec<String>, d: &HashMap<String, u64>, first_content: usize) -> hyper::Response<Body> {
    stream_bytes(frames.into_iter().map(Bytes::from).collect(), d, first_content, "text/event-stream")
}

/// [`stream_response`] for any framing; a `malformed` frame becomes bytes no decoder accepts.
fn stream_bytes(
    mut frames: Vec<Bytes>,
    d: &HashMap<String, u64>,
    first_content: usize,
    content_type: &'static str,
) -> hyper::Response<Body> {
    if let Some(&n) = d.get("malformed")
        && let Some(f) = frames.get_mut(n as usize)
    {
        *f = Bytes::from_static(
            b"data: {\"choices\": [{\"delta\": {\"content\": \"brok\n\n\x00\x00\x00\x10\x00\x00\x00\x00\xde\xad\xbe\xef",
        );
    }
    let cut = d.get("cut").map(|&n| n as usize + first_content); // lifecycle frames plus N content frames
    let delay = Duration::from_millis(d.get("chunk-delay").copied().unwrap_or(0));
    let mut resp = hyper::Response::new(BodyExt::boxed(stream_body(frames, cut, delay)));
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(content_type));
    resp
}

/// Anthropic Messages.
fn messages(req: &Value, d: &HashMap<String, u64>) -> hyper::Response<Body> {
    let model = req["model"].as_str().unwrap_or("sim-claude");
    let (reply, input_tokens, output_tokens) = answer(req);
    let tool = tool_to_call(req);
    let id = "msg_sim";
    let (block, stop_reason) = match &tool {
        Some(name) => (json!({"type": "tool_use", "id": "toolu_sim_1", "name": name, "input": {"query": reply}}), "tool_use"),
        None => (json!({"type": "text", "text": reply}), "end_turn"),
    };
    let usage = json!({"input_tokens": input_tokens, "output_tokens": output_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    if req["stream"] != true {
        let body = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": [block], "stop_reason": stop_reason, "stop_sequence": null, "usage": usage});
        return full(200, "application/json", body.to_string());
    }
    let start = json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}});
    let mut frames = vec![sse_frame(Some("message_start"), &start)];
    let (empty_block, pieces): (Value, Vec<Value>) = match &tool {
        Some(_) => {
            let args = json!({"query": reply}).to_string();
            let mid = args.len() / 2;
            let mid = (mid..args.len()).find(|i| args.is_char_boundary(*i)).unwrap_or(args.len());
            let mut b = block.clone();
            b["input"] = json!({});
            (
                b,
                vec![
                    json!({"type": "input_json_delta", "partial_json": &args[..mid]}),
                    json!({"type": "input_json_delta", "partial_json": &args[mid..]}),
                ],
            )
        }
        None => {
            (json!({"type": "text", "text": ""}), reply.split_inclusive(' ').map(|w| json!({"type": "text_delta", "text": w})).collect())
        }
    };
    frames.push(sse_frame(Some("content_block_start"), &json!({"type": "content_block_start", "index": 0, "content_block": empty_block})));
    frames.push(sse_frame(Some("ping"), &json!({"type": "ping"})));
    frames.extend(
        pieces
            .into_iter()
            .map(|delta| sse_frame(Some("content_block_delta"), &json!({"type": "content_block_delta", "index": 0, "delta": delta}))),
    );
    frames.push(sse_frame(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})));
    frames.push(sse_frame(Some("message_delta"), &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    frames.push(sse_frame(Some("message_stop"), &json!({"type": "message_stop"})));
    stream_response(frames, d, 3)
}

fn chat(req: &Value, d: &HashMap<String, u64>) -> hyper::Response<Body> {
    let model = req["model"].as_str().unwrap_or("sim-1");
    let (reply, prompt_tokens, completion_tokens) = answer(req);
    let tool = tool_to_call(req);
    let usage =
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = "chatcmpl-sim";
    let arguments = json!({"query": reply}).to_string();
    let finish = if tool.is_some() { "tool_calls" } else { "stop" };
    if req["stream"] != true {
        let message = match &tool {
            Some(name) => {
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_sim_1", "type": "function", "function": {"name": name, "arguments": arguments}}]})
            }
            None => json!({"role": "assistant", "content": reply, "refusal": null}),
        };
        let body = json!({
            "id": id, "object": "chat.completion", "created": 1_700_000_000, "model": model, "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        });
        return full(200, "application/json", body.to_string());
    }
    let include_usage = req["stream_options"]["include_usage"] == true;
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse_frame(None, &c)
    };
    let mut frames: Vec<String> = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    match &tool {
        Some(name) => {
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_sim_1", "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            let mid = (arguments.len() / 2..arguments.len()).find(|i| arguments.is_char_boundary(*i)).unwrap_or(arguments.len());
            for piece in [&arguments[..mid], &arguments[mid..]] {
                frames.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), Value::Null));
            }
        }
        None => frames.extend(reply.split_inclusive(' ').map(|w| chunk(json!({"content": w}), Value::Null))),
    }
    frames.push(chunk(json!({}), json!(finish)));
    if include_usage {
        frames.push(sse_frame(
            None,
            &json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage}),
        ));
    }
    frames.push("data: [DONE]\n\n".to_owned());
    stream_response(frames, d, 1)
}

/// The frames as a body stream; after `cut` frames the stream fails, so hyper drops the connection
/// without ending the chunked body.
fn stream_body(
    frames: Vec<Bytes>,
    cut: Option<usize>,
    delay: Duration,
) -> impl hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        for (i, frame) in frames.into_iter().enumerate() {
            if cut.is_some_and(|c| i >= c) {
                // Let hyper flush what was sent, then fail the body so the connection drops.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(std::io::Error::other("simulated cut"))).await;
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(frame))).await.is_err() {
                return;
            }
        }
    });
    StreamBody::new(ReceiverStream(rx))
}

/// A `Stream` over a tokio receiver (tokio-stream's wrapper, without the extra crate).
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
