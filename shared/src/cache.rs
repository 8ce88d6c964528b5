//! The edge cache: exact-match answers for chat requests a route marks safe to repeat.
//!
//! A route's `cache` rule (policy `models[].cache`) says how long answers live and which requests
//! qualify: those with `temperature: 0`, those whose caller asks (`x-edgegate-cache: on`), or
//! either. A caller can always refuse (`x-edgegate-cache: off`, `cache-control: no-cache` or
//! `no-store`). The key hashes the tenant, the policy version, the endpoint (so the dialect and
//! the stream flag) and the request after validation, keys sorted — tenants never share an
//! entry, and a new policy version starts cold. An entry is the exact bytes the caller got
//! (after the guard phase), with the usage and cost they stood for: a stream is stored as its
//! events and replayed as a stream.
//!
//! Only whole, successful answers are stored: status 200, no error (a cut or failed stream is
//! not), not served by an overflow route or in degraded mode, at most [`MAX_ENTRY_BYTES`]. A hit
//! skips the ledger (no tokens or spend are held or charged), routing and the provider.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chat::{ChatRequest, Usage};

/// The largest answer stored.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// The longest an entry may live, seconds (a day).
pub const MAX_TTL_SECONDS: u32 = 86_400;

/// Which requests a route's cache serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Requests with `temperature: 0`.
    TemperatureZero,
    /// Requests whose caller sends `x-edgegate-cache: on`.
    Requested,
    /// Either (the default).
    #[default]
    Either,
}

/// A route's cache rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// How long an answer is served from the cache, seconds (1 to [`MAX_TTL_SECONDS`]).
    pub ttl_seconds: u32,
    /// Which requests qualify.
    pub when: When,
}

/// Whether a request on a route with `rule` may be answered from (and stored in) the cache.
pub fn wanted(rule: &Rule, chat: &ChatRequest, headers: &http::HeaderMap) -> bool {
    let header = headers.get("x-edgegate-cache").and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    let refused = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "no-cache" | "no-store"));
    if refused || header.as_deref() == Some("off") {
        return false;
    }
    let requested = header.as_deref() == Some("on");
    let zero = chat.extra.get("temperature").and_then(Value::as_f64) == Some(0.0);
    match rule.when {
        When::TemperatureZero => zero,
        When::Requested => requested,
        When::Either => zero || requested,
    }
}

/// The key of a request: hex SHA-256 over the tenant, the policy version, the endpoint and the
/// validated request with its keys sorted (fields that never change an answer — `user`,
/// `metadata` — left out).
pub fn key(tenant: &str, policy_version: &str, endpoint: &str, chat: &ChatRequest) -> String {
    let mut request = serde_json::to_value(chat).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut request {
        map.remove("user");
        map.remove("metadata");
    }
    let mut h = Sha256::new();
    for part in [tenant, policy_version, endpoint] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    canonical(&request, &mut h);
    crate::policy::hex(&h.finalize())
}

/// Feeds `v` to the hash as JSON with object keys sorted, whatever order the caller sent.
fn canonical(v: &Value, h: &mut Sha256) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            h.update(b"{");
            for k in keys {
                let _ = serde_json::to_writer(&mut *h, k);
                h.update(b":");
                canonical(&map[k], h);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for item in items {
                canonical(item, h);
                h.update(b",");
            }
            h.update(b"]");
        }
        other => {
            let _ = serde_json::to_writer(h, other);
        }
    }
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Whether `body` is a stream of server-sent events.
    pub stream: bool,
    /// When it was stored, epoch milliseconds.
    pub stored_ms: u64,
    /// When it stops being served, epoch milliseconds.
    pub expires_ms: u64,
    /// The usage the answer stood for.
    pub usage: Option<Usage>,
    /// What the answer cost when it was made.
    pub cost_micro_usd: Option<u64>,
    /// The bytes the caller got.
    pub body: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Header {
    v: u8,
    stream: bool,
    stored_ms: u64,
    expires_ms: u64,
    usage: Option<Usage>,
    cost_micro_usd: Option<u64>,
}

impl Entry {
    /// One line of JSON about the answer, then the answer's bytes.
    pub fn encode(&self) -> Bytes {
        let header = Header {
            v: 1,
            stream: self.stream,
            stored_ms: self.stored_ms,
            expires_ms: self.expires_ms,
            usage: self.usage,
            cost_micro_usd: self.cost_micro_usd,
        };
        let mut out = serde_json::to_vec(&header).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }

    /// The entry in `bytes` if it is well formed and still fresh at `now_ms`.
    pub fn decode(bytes: &Bytes, now_ms: u64) -> Option<Entry> {
        let split = bytes.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&bytes[..split]).ok()?;
        (header.v == 1 && header.expires_ms > now_ms).then(|| Entry {
            stream: header.stream,
            stored_ms: header.stored_ms,
            expires_ms: header.expires_ms,
            usage: header.usage,
            cost_micro_usd: header.cost_micro_usd,
            body: bytes.slice(split + 1..),
        })
    }

    /// A stored stream's events, one frame each, to replay as they were sent.
    pub fn frames(&self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        let mut start = 0;
        let body = &self.body;
        while let Some(end) = body[start..].windows(2).position(|w| w == b"\n\n").map(|i| start + i + 2) {
            frames.push(body.slice(start..end));
            start = end;
        }
        if start < body.len() {
            frames.push(body.slice(start..));
        }
        frames
    }
}

/// What the cache did for a request (the record's `cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheRecord {
    /// `hit`, `miss` or `bypass`.
    pub status: &'static str,
    /// A hit: what the answer cost when it was made — what this request did not spend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_micro_usd: Option<u64>,
    /// A hit: the tokens the answer stood for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_tokens: Option<u64>,
    /// A hit: the entry's age, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_s: Option<u64>,
    /// A miss: whether the answer was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<bool>,
    /// Why the cache could not be read or written, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<&'static str>,
}

/// A miss whose answer is kept for the record phase to store.
#[derive(Debug)]
pub struct Pending {
    /// The entry's key.
    pub key: String,
    /// Its lifetime, seconds.
    pub ttl_seconds: u32,
    /// Whether the answer is a stream.
    pub stream: bool,
    /// The answer so far, as sent.
    pub parts: Vec<Bytes>,
    /// Its size so far.
    pub size: usize,
}

impl Pending {
    /// Keeps `bytes` as sent; an answer past [`MAX_ENTRY_BYTES`] is not stored.
    pub fn push(&mut self, bytes: &Bytes) {
        self.size += bytes.len();
        if self.size <= MAX_ENTRY_BYTES {
            self.parts.push(bytes.clone());
        } else {
            self.parts.clear();
        }
    }

    /// The entry to store, made at `now_ms`, if the answer fitted.
    pub fn entry(self, now_ms: u64, usage: Option<Usage>, cost_micro_usd: Option<u64>) -> Option<(String, u32, Entry)> {
        if self.size > MAX_ENTRY_BYTES || self.parts.is_empty() {
            return None;
        }
        let body = if self.parts.len() == 1 { self.parts[0].clone() } else { Bytes::from(self.parts.concat()) };
        let entry = Entry {
            stream: self.stream,
            stored_ms: now_ms,
            expires_ms: now_ms + u64::from(self.ttl_seconds) * 1000,
            usage,
            cost_micro_usd,
            body,
        };
        Some((self.key, self.ttl_seconds, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn keys_ignore_field_order_and_user_but_not_content_tenant_version_or_endpoint() {
        let a = chat(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"user":"u1"}"#);
        let b = chat(r#"{"messages":[{"content":"hi","role":"user"}],"user":"u2","temperature":0,"model":"m"}"#);
        let c = chat(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#);
        let k = |t: &str, v: &str, e: &str, r: &ChatRequest| key(t, v, e, r);
        assert_eq!(k("t", "v1", "chat", &a), k("t", "v1", "chat", &b));
        assert_eq!(k("t", "v1", "chat", &a).len(), 64);
        for other in [k("t", "v1", "chat", &c), k("u", "v1", "chat", &a), k("t", "v2", "chat", &a), k("t", "v1", "messages", &a)] {
            assert_ne!(other, k("t", "v1", "chat", &a));
        }
    }

    #[test]
    fn who_may_use_the_cache() {
        let zero = chat(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let warm = chat(r#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":"hi"}]}"#);
        let mut on = http::HeaderMap::new();
        on.insert("x-edgegate-cache", http::HeaderValue::from_static("on"));
        let mut off = http::HeaderMap::new();
        off.insert("x-edgegate-cache", http::HeaderValue::from_static("off"));
        let mut no_store = http::HeaderMap::new();
        no_store.insert("cache-control", http::HeaderValue::from_static("max-age=0, no-store"));
        let none = http::HeaderMap::new();
        let rule = |when| Rule { ttl_seconds: 60, when };
        assert!(wanted(&rule(When::Either), &zero, &none));
        assert!(wanted(&rule(When::Either), &warm, &on));
        assert!(!wanted(&rule(When::Either), &warm, &none));
        assert!(!wanted(&rule(When::Either), &zero, &off));
        assert!(!wanted(&rule(When::Either), &zero, &no_store));
        assert!(!wanted(&rule(When::Requested), &zero, &none));
        assert!(!wanted(&rule(When::TemperatureZero), &warm, &on));
    }

    #[test]
    fn entries_round_trip_expire_and_replay_frame_by_frame() {
        let body = Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n");
        let entry = Entry { stream: true, stored_ms: 1_000, expires_ms: 61_000, usage: None, cost_micro_usd: Some(42), body };
        let bytes = entry.encode();
        assert_eq!(Entry::decode(&bytes, 60_999), Some(entry.clone()));
        assert_eq!(Entry::decode(&bytes, 61_000), None, "expired");
        assert_eq!(Entry::decode(&Bytes::from_static(b"garbage"), 0), None);
        let frames = entry.frames();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2], Bytes::from_static(b"data: [DONE]\n\n"));
        let mut p = Pending { key: "k".into(), ttl_seconds: 1, stream: false, parts: vec![], size: 0 };
        p.push(&Bytes::from(vec![b'x'; MAX_ENTRY_BYTES + 1]));
        assert!(p.entry(0, None, None).is_none(), "too large to keep");
    }
}
