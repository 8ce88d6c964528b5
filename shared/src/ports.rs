//! Ports: the small traits through which a host lends the core what it must not do itself —
//! read a clock, draw randomness, read stores, call the network, and run work after the response.
//!
//! Every method is a native `async fn` (or plain `fn`) without `Send` bounds: both edge runtimes
//! run one request per single-threaded isolate or instance.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

use crate::audit::{AuditAnswer, AuditOp};
use crate::error::Error;
use crate::jwt::JwtIssuer;
use crate::ledger::{LedgerAnswer, LedgerOp};
use crate::telemetry::RequestRecord;

/// A body that arrives in pieces. Errors end it.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>>>>;

/// Work that runs after the response has been handed to the client.
pub type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Wall-clock time.
pub trait Clock {
    /// Milliseconds since the Unix epoch. On Workers this only advances across I/O.
    fn now_ms(&self) -> u64;
}

/// Timers: how the core waits without reading a clock or blocking.
pub trait Timer {
    /// Resolves after `ms` milliseconds. Used to bound waits on providers (first byte, total
    /// time); dropping it cancels it. Workers: `setTimeout`; Spin: a WASI monotonic-clock pollable.
    fn sleep(&self, ms: u64) -> impl Future<Output = ()> + 'static;
}

/// Randomness for ids, weighted routing and breaker probes.
pub trait Entropy {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// The key-value store policy snapshots live in (see [`crate::snapshot`] for the keys).
///
/// Consistency: Workers KV is eventually consistent (a write may take up to ~60 s to reach every
/// location, and a location may cache a read that long); Spin key-value is as consistent as its
/// backend (local SQLite file: immediate; Redis: per the server). Neither offers transactions, so
/// the core writes immutable versions first and moves small pointers last.
pub trait PolicyStore {
    /// The value under `key`, or `None` when there is none.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, Error>>;
    /// Stores `value` under `key` (admin operations only).
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<(), Error>>;
    /// Removes `key`; removing a missing key is not an error (admin operations only).
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Error>>;
}

/// Per-tenant ledgers that hold, settle and refuse work atomically.
///
/// Consistency: Workers uses one Durable Object per tenant, whose single-threaded execution makes
/// each `apply` atomic and exact. Spin uses one SQLite transaction per `apply`, exact for all
/// instances sharing the database. Implementations load the tenant's [`crate::ledger::Book`], run
/// [`crate::ledger::Book::apply`] and store it inside that atomic section, so the arithmetic is
/// the same everywhere.
pub trait Ledger {
    /// Applies `op` to the book of `tenant`.
    fn apply(&self, tenant: &str, op: LedgerOp) -> impl Future<Output = Result<LedgerAnswer, Error>>;
}

/// The edge cache of answers (see [`crate::cache`]): opaque entries under hashed keys, each
/// kept at most `ttl_seconds`.
///
/// Workers: the Cache API of the location (entries live in the data centre that stored them,
/// and are evicted when the cache needs room). Spin: the key-value store, with the expiry kept
/// beside the entry. A lost or failed entry is a miss, never an error for the caller.
pub trait AnswerCache {
    /// The entry under `key`, if one is there and has not expired.
    fn cache_get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>, Error>>;
    /// Stores `entry` under `key` for at most `ttl_seconds`.
    fn cache_put(&self, key: &str, entry: Bytes, ttl_seconds: u32) -> impl Future<Output = Result<(), Error>>;
}

/// Per-tenant audit logs: SQLite tables the host runs [`crate::audit::apply`] on.
///
/// Workers: the tenant's Durable Object (the same one as its ledger) runs each operation in its
/// single-threaded event, synchronously, so an append is atomic. Spin: one `BEGIN IMMEDIATE`
/// transaction on the component's database per operation.
pub trait AuditLog {
    /// Runs `op` on the log named `log` (a tenant id, or [`crate::audit::ADMIN_LOG`]).
    fn audit(&self, log: &str, op: AuditOp) -> impl Future<Output = Result<AuditAnswer, Error>>;
}

/// Provider credentials, looked up by the name policy gives them (never stored in policy).
pub trait Secrets {
    /// The secret called `name`, or `None` if this host has none by that name.
    fn secret(&self, name: &str) -> impl Future<Output = Result<Option<String>, Error>>;
}

/// A bound on connection setup for one upstream request, in milliseconds, carried in the
/// request's extensions. Hosts that can bound it do (Spin: `wasi:http` connect-timeout); Workers'
/// `fetch` cannot, and there the first-byte timeout bounds connection and response head together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectTimeout(pub u64);

/// HTTP to providers.
pub trait Upstream {
    /// Sends `request` and returns as soon as the status and headers are known; the body streams.
    /// Connection failures are [`crate::ErrorKind::UpstreamUnavailable`]; statuses are not errors.
    fn send(&self, request: http::Request<Bytes>) -> impl Future<Output = Result<http::Response<ByteStream>, Error>>;
}

/// Where request records go.
pub trait Telemetry {
    /// Exports a batch of records. Called from deferred work; a failure never reaches a client.
    fn export(&self, records: Vec<RequestRecord>) -> impl Future<Output = Result<(), Error>>;
}

/// Work after the response (Workers: `ctx.wait_until`; Spin: after the body is finished).
pub trait Deferred {
    /// Runs `task` once the response no longer needs the isolate.
    fn defer(&self, task: Task);
}

/// Verifies JSON Web Tokens. A port only to keep the JWT library (which reads the system clock and,
/// on `wasm32-unknown-unknown`, depends on `wasm-bindgen`) out of the core; it does no I/O.
pub trait TokenVerifier {
    /// Verifies `token` against `issuer`: one of its keys (by `kid`, else every key) of an
    /// algorithm the issuer accepts and that the token's `alg` names; `iss`, `aud`, and `exp`/`nbf`
    /// at `now_s` within the issuer's leeway. `hmac_key` is the HS256 shared key, when the issuer
    /// has one. Returns every claim of a valid token, or why it is not valid.
    fn verify_jwt(
        &self,
        token: &str,
        issuer: &JwtIssuer,
        hmac_key: Option<&[u8]>,
        now_s: u64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String>;
}

/// Everything the gateway needs from a runtime. Cheap to clone: streams keep a copy until they end.
pub trait Host:
    Clock
    + Timer
    + Entropy
    + PolicyStore
    + Ledger
    + AuditLog
    + AnswerCache
    + Secrets
    + Upstream
    + Telemetry
    + Deferred
    + TokenVerifier
    + Clone
    + 'static
{
}

impl<T> Host for T where
    T: Clock
        + Timer
        + Entropy
        + PolicyStore
        + Ledger
        + AuditLog
        + AnswerCache
        + Secrets
        + Upstream
        + Telemetry
        + Deferred
        + TokenVerifier
        + Clone
        + 'static
{
}
