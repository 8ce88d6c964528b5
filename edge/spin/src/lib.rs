//! edgegate on Fermyon Spin 3.x (spin-sdk 5, a WASIp2 component): the HTTP entry point and the
//! core's ports over Spin key-value, SQLite and variables. No policy, routing or format code
//! lives here.
//!
//! Stores (see `spin.toml`): key-value store `default` (policy snapshots, see `edgegate_core::snapshot`), SQLite database
//! `default` (tenant counters, unless `edgegate_ledger_redis` names a Redis server for them; the
//! audit log), provider credentials as Spin variables named by policy
//! (lowercased: policy's `PROVIDER_API_KEY` is the variable `provider_api_key`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgegate_core::audit::{AuditAnswer, AuditOp, Sql, SqlValue};
use edgegate_core::ledger::{Book, LedgerAnswer, LedgerOp};
use edgegate_core::ports::ConnectTimeout;
use edgegate_core::ports::{
    AnswerCache, AuditLog, Clock, Deferred, Entropy, Ledger, PolicyStore, Secrets, Task, Telemetry, Timer, TokenVerifier, Upstream,
};
use edgegate_core::routing::Origin;
use edgegate_core::telemetry::RequestRecord;
use edgegate_core::{ByteStream, Error, ErrorKind, Gateway, MAX_REQUEST_BYTES, Unreadable};
use futures::{SinkExt, StreamExt};
use spin_sdk::http::conversions::TryIntoOutgoingRequest;
use spin_sdk::http::{ErrorCode, Fields, IncomingRequest, IncomingResponse, OutgoingRequest, OutgoingResponse, ResponseOutparam};
use spin_sdk::sqlite::{Connection, Value};

/// The component's export. The SDK's macro expands to `unsafe` ABI glue, allowed in this module only.
#[allow(unsafe_code)]
mod entry {
    #[spin_sdk::http_component]
    async fn handle(req: spin_sdk::http::IncomingRequest, out: spin_sdk::http::ResponseOutparam) {
        super::handle(req, out).await
    }
}

/// `wizer-initialize`: run once by `edgegate-preinit` at build time, which snapshots the memory it
/// leaves. Every instance of the pre-initialised component then starts with the firewall's
/// automata and the tokenizer's tables built, instead of building them in each request (Spin
/// instantiates the component per request). It reads no clock, variable or store; the standard
/// library's hash-map keys are the one thing drawn (see `edgegate-preinit`). Calling it again
/// finds everything built.
#[allow(unsafe_code)]
mod preinit {
    spin_sdk::wit_bindgen::generate!({
        inline: "package edgegate:preinit; world preinit { export wizer-initialize: func(); }",
        runtime_path: "spin_sdk::wit_bindgen::rt",
    });

    struct Preinit;

    impl Guest for Preinit {
        fn wizer_initialize() {
            edgegate_core::firewall::prepare_for_snapshot();
            edgegate_core::tokenizer::Encoding::prepare();
        }
    }

    export!(Preinit);
}

async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let host = SpinHost::default();
    let mut request = read_request(req).await;
    request.extensions_mut().insert(deployment_origin());
    // A Spin instance serves one request, so health is read from and written to the counter
    // store on each (see `Gateway::per_request`).
    let resp = Gateway::per_request().handle(&host, request).await;
    let (parts, body) = resp.into_parts();
    let headers: Vec<(String, Vec<u8>)> = parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let outgoing = OutgoingResponse::new(Fields::from_list(&headers).unwrap_or_else(|_| Fields::new()));
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let mut sink = outgoing.take_body();
    out.set(outgoing);
    match body {
        edgegate_core::Body::Full(bytes) => {
            let _ = sink.send(bytes.to_vec()).await;
        }
        edgegate_core::Body::Stream(mut stream) => {
            while let Some(frame) = stream.next().await {
                if sink.send(frame.to_vec()).await.is_err() {
                    break; // the client went away; dropping the stream records it
                }
            }
        }
    }
    drop(sink); // finishes the body before deferred work runs
    host.run_deferred().await;
}

/// Where this deployment serves requests, from the variables `edgegate_origin_country`,
/// `edgegate_origin_continent` and `edgegate_location` (empty: unknown).
fn deployment_origin() -> Origin {
    let var = |name: &str| spin_sdk::variables::get(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    Origin {
        country: var("edgegate_origin_country").map(|c| c.to_ascii_uppercase()),
        continent: var("edgegate_origin_continent").map(|c| c.to_ascii_uppercase()),
        colo: var("edgegate_location"),
        asserted: false,
    }
}

/// The client's request as the core takes it. What cannot be read (a method or header the `http`
/// crate refuses, a body the client broke off) is said in an [`Unreadable`] request, which the
/// core answers with a 400.
async fn read_request(req: IncomingRequest) -> http::Request<Bytes> {
    let method = req.method().to_string();
    let uri = req.path_with_query().unwrap_or_else(|| "/".into());
    let refuse = |why: String| Unreadable::request(&method, &uri, why);
    let mut head = http::HeaderMap::new();
    for (name, value) in req.headers().entries() {
        match Unreadable::field(name.as_bytes(), &value) {
            Ok((name, value)) => head.append(name, value),
            Err(why) => return refuse(why),
        };
    }
    let (Ok(m), Ok(u)) = (http::Method::from_bytes(method.as_bytes()), uri.parse::<http::Uri>()) else {
        return refuse("its method or URL has a character HTTP does not allow".into());
    };
    let mut body = Vec::new();
    let mut chunks = req.into_body_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(e) => return refuse(format!("its body could not be read: {e}")),
        }
        if body.len() > MAX_REQUEST_BYTES {
            break; // the core answers 413
        }
    }
    let mut request = http::Request::new(Bytes::from(body));
    *request.method_mut() = m;
    *request.uri_mut() = u;
    *request.headers_mut() = head;
    request
}

/// The core's ports over Spin's interfaces. One per request (Spin instantiates per request).
#[derive(Clone, Default)]
struct SpinHost {
    deferred: Rc<RefCell<Vec<Task>>>,
    /// The Redis server of the ledger, if the deployment names one (read once per instance).
    ledger_redis: std::cell::OnceCell<Option<String>>,
}

impl SpinHost {
    async fn run_deferred(&self) {
        let tasks: Vec<Task> = self.deferred.borrow_mut().drain(..).collect();
        for task in tasks {
            task.await;
        }
    }
}

fn store_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::new(ErrorKind::StoreUnavailable, format!("{what}: {e:?}"))
}

impl Clock for SpinHost {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

impl Timer for SpinHost {
    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> + 'static {
        let deadline = wasi::clocks::monotonic_clock::now().saturating_add(ms.saturating_mul(1_000_000));
        Sleep { deadline, registered: None }
    }
}

/// A wait on the WASI monotonic clock, driven by the Spin executor's pollable loop.
struct Sleep {
    deadline: u64,
    /// The registered wake-up, cancelled when the sleep is dropped.
    registered: Option<spin_executor::CancelOnDropToken>,
}

impl std::future::Future for Sleep {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if wasi::clocks::monotonic_clock::now() >= self.deadline {
            self.registered = None;
            return std::task::Poll::Ready(());
        }
        let pollable = wasi::clocks::monotonic_clock::subscribe_instant(self.deadline);
        self.registered = Some(spin_executor::push_waker_and_get_token(pollable, cx.waker().clone()).into());
        std::task::Poll::Pending
    }
}

impl Entropy for SpinHost {
    fn fill(&self, buf: &mut [u8]) {
        let bytes = wasi::random::random::get_random_bytes(buf.len() as u64);
        for (b, r) in buf.iter_mut().zip(bytes) {
            *b = r;
        }
    }
}

fn kv() -> Result<spin_sdk::key_value::Store, Error> {
    spin_sdk::key_value::Store::open_default().map_err(|e| store_error("key-value store `default`", e))
}

impl PolicyStore for SpinHost {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        Ok(kv()?.get(key).map_err(|e| store_error("key-value read", e))?.map(Bytes::from))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), Error> {
        kv()?.set(key, &value).map_err(|e| store_error("key-value write", e))
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        kv()?.delete(key).map_err(|e| store_error("key-value delete", e))
    }
}

/// Edge cache entries in the key-value store under `cache/{key}`, each behind its expiry (8 bytes,
/// big-endian epoch milliseconds): Spin key-value has no TTL, so an expired entry is deleted when
/// it is next read.
impl AnswerCache for SpinHost {
    async fn cache_get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let name = format!("cache/{key}");
        let store = kv()?;
        let Some(value) = store.get(&name).map_err(|e| store_error("edge cache read", e))? else { return Ok(None) };
        let fresh = value.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).is_some_and(|b| u64::from_be_bytes(b) > self.now_ms());
        if !fresh {
            let _ = store.delete(&name);
            return Ok(None);
        }
        Ok(Some(Bytes::from(value).slice(8..)))
    }

    async fn cache_put(&self, key: &str, entry: Bytes, ttl_seconds: u32) -> Result<(), Error> {
        let expires = self.now_ms() + u64::from(ttl_seconds) * 1000;
        let mut value = Vec::with_capacity(8 + entry.len());
        value.extend_from_slice(&expires.to_be_bytes());
        value.extend_from_slice(&entry);
        kv()?.set(&format!("cache/{key}"), &value).map_err(|e| store_error("edge cache write", e))
    }
}

/// Swaps a book's JSON in if its version is still the one read (`KEYS[1]` a hash of `v` and
/// `book`; `ARGV`: version read, next version, new book): 1 if swapped, 0 if another instance
/// wrote first.
const REDIS_SWAP: &[u8] = b"if (redis.call('HGET', KEYS[1], 'v') or '0') == ARGV[1] then \
    redis.call('HSET', KEYS[1], 'v', ARGV[2], 'book', ARGV[3]) return 1 end return 0";

/// How many times an operation is re-run on a fresher book before the Redis ledger gives up.
/// Every lost race is another instance's won one, so each retry follows progress.
const REDIS_ATTEMPTS: u32 = 256;

/// The Redis ledger: each book a hash (`edgegate:book:{name}`: version and JSON), updated by
/// optimistic compare-and-swap. Read the book, apply the operation, and write it back only if
/// no other instance wrote since; otherwise read again. Every operation thus applies to the
/// latest book exactly once, and concurrent replicas stay exact. An operation that leaves the
/// book as it was (a read) writes nothing.
fn redis_apply(address: &str, name: &str, op: LedgerOp, now: u64) -> Result<LedgerAnswer, Error> {
    use spin_sdk::redis::{Connection as Redis, RedisParameter as P, RedisResult as R};
    let conn = Redis::open(address).map_err(|e| store_error("Redis ledger", e))?;
    let key = format!("edgegate:book:{name}").into_bytes();
    for _ in 0..REDIS_ATTEMPTS {
        let read = conn
            .execute("HMGET", &[P::Binary(key.clone()), P::Binary(b"v".to_vec()), P::Binary(b"book".to_vec())])
            .map_err(|e| store_error("Redis ledger read", e))?;
        let version = match read.first() {
            Some(R::Binary(v)) => String::from_utf8_lossy(v).into_owned(),
            _ => "0".to_owned(),
        };
        let stored = match read.get(1) {
            Some(R::Binary(json)) => std::str::from_utf8(json).ok(),
            _ => None,
        };
        let (answer, changed) = Book::apply_stored(stored, now, op.clone()).map_err(|e| store_error("Redis ledger", e))?;
        let Some(json) = changed else { return Ok(answer) };
        let next = version.parse::<u64>().unwrap_or(0) + 1;
        let swapped = conn
            .execute(
                "EVAL",
                &[
                    P::Binary(REDIS_SWAP.to_vec()),
                    P::Int64(1),
                    P::Binary(key.clone()),
                    P::Binary(version.into_bytes()),
                    P::Binary(next.to_string().into_bytes()),
                    P::Binary(json.into_bytes()),
                ],
            )
            .map_err(|e| store_error("Redis ledger write", e))?;
        if matches!(swapped.first(), Some(R::Int64(1))) {
            return Ok(answer);
        }
    }
    Err(Error::new(ErrorKind::StoreUnavailable, format!("Redis ledger: book {name} changed under {REDIS_ATTEMPTS} attempts in a row")))
}

impl Ledger for SpinHost {
    /// On Redis when the variable `edgegate_ledger_redis` names a server (see [`redis_apply`]);
    /// otherwise one `BEGIN IMMEDIATE` transaction per operation: SQLite takes the write lock
    /// first, so concurrent instances sharing the database serialise and the counts are exact.
    async fn apply(&self, tenant: &str, op: LedgerOp) -> Result<LedgerAnswer, Error> {
        let now = self.now_ms();
        let redis = self
            .ledger_redis
            .get_or_init(|| spin_sdk::variables::get("edgegate_ledger_redis").ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()));
        if let Some(address) = redis {
            return redis_apply(address, tenant, op, now);
        }
        let db = Connection::open_default().map_err(|e| store_error("sqlite database `default`", e))?;
        let sql = |e: spin_sdk::sqlite::Error| store_error("tenant ledger", e);
        let run = || -> Result<LedgerAnswer, Error> {
            db.execute("CREATE TABLE IF NOT EXISTS edgegate_books (tenant TEXT PRIMARY KEY, json TEXT NOT NULL)", &[]).map_err(sql)?;
            db.execute("BEGIN IMMEDIATE", &[]).map_err(sql)?;
            let rows = db.execute("SELECT json FROM edgegate_books WHERE tenant = ?", &[Value::Text(tenant.to_owned())]).map_err(sql)?;
            let stored = rows.rows.first().and_then(|r| r.get::<&str>(0));
            let (answer, changed) = Book::apply_stored(stored, now, op).map_err(|e| store_error("tenant ledger", e))?;
            if let Some(json) = changed {
                db.execute(
                    "INSERT INTO edgegate_books (tenant, json) VALUES (?, ?) ON CONFLICT(tenant) DO UPDATE SET json = excluded.json",
                    &[Value::Text(tenant.to_owned()), Value::Text(json)],
                )
                .map_err(sql)?;
            }
            db.execute("COMMIT", &[]).map_err(sql)?;
            Ok(answer)
        };
        run().inspect_err(|_| {
            let _ = db.execute("ROLLBACK", &[]);
        })
    }
}

impl AuditLog for SpinHost {
    /// One `BEGIN IMMEDIATE` transaction per operation on the component's database, so appends
    /// from concurrent instances serialise and the chain stays whole.
    async fn audit(&self, log: &str, op: AuditOp) -> Result<AuditAnswer, Error> {
        let db = Connection::open_default().map_err(|e| store_error("sqlite database `default`", e))?;
        db.execute("BEGIN IMMEDIATE", &[]).map_err(|e| store_error("audit log", e))?;
        match edgegate_core::audit::apply(&SpinSql(&db), log, self.now_ms(), op) {
            Ok(answer) => {
                db.execute("COMMIT", &[]).map_err(|e| store_error("audit log", e))?;
                Ok(answer)
            }
            Err(e) => {
                let _ = db.execute("ROLLBACK", &[]);
                Err(e)
            }
        }
    }
}

/// The audit log's SQL over a Spin SQLite connection.
struct SpinSql<'a>(&'a Connection);

impl Sql for SpinSql<'_> {
    fn run(&self, statement: &str, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>, Error> {
        let params: Vec<Value> = params
            .into_iter()
            .map(|p| match p {
                SqlValue::Null => Value::Null,
                SqlValue::Int(i) => Value::Integer(i),
                SqlValue::Text(t) => Value::Text(t),
            })
            .collect();
        let result = self.0.execute(statement, &params).map_err(|e| store_error("audit SQL", e))?;
        Ok(result
            .rows
            .into_iter()
            .map(|row| {
                row.values
                    .into_iter()
                    .map(|v| match v {
                        Value::Integer(i) => SqlValue::Int(i),
                        Value::Text(t) => SqlValue::Text(t),
                        _ => SqlValue::Null,
                    })
                    .collect()
            })
            .collect())
    }
}

impl Secrets for SpinHost {
    async fn secret(&self, name: &str) -> Result<Option<String>, Error> {
        match spin_sdk::variables::get(&name.to_ascii_lowercase()) {
            Ok(v) if v.is_empty() => Ok(None), // an unset variable with an empty default
            Ok(v) => Ok(Some(v)),
            Err(spin_sdk::variables::Error::Undefined(_) | spin_sdk::variables::Error::InvalidName(_)) => Ok(None),
            Err(e) => Err(store_error("variables", e)),
        }
    }
}

impl Upstream for SpinHost {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, Error> {
        if request.uri().scheme_str() == Some(edgegate_core::providers::workers_ai::SCHEME) {
            return Err(Error::new(ErrorKind::UpstreamUnavailable, "Workers AI bindings exist only on Cloudflare Workers"));
        }
        let (parts, body) = request.into_parts();
        let mut req = spin_sdk::http::Request::builder();
        req.method(match parts.method {
            http::Method::GET => spin_sdk::http::Method::Get,
            http::Method::POST => spin_sdk::http::Method::Post,
            ref other => spin_sdk::http::Method::Other(other.to_string()),
        })
        .uri(parts.uri.to_string());
        for (name, value) in &parts.headers {
            if let Ok(v) = value.to_str() {
                req.header(name.as_str(), v);
            }
        }
        req.body(body.to_vec());
        let unreachable = |e: &dyn std::fmt::Display| Error::new(ErrorKind::UpstreamUnavailable, format!("provider unreachable: {e}"));
        let (outgoing, buffer) = req.build().try_into_outgoing_request().map_err(|e| unreachable(&e))?;
        let mut sink = outgoing.take_body();
        let response = send_with_options(outgoing, parts.extensions.get::<ConnectTimeout>().map(|c| c.0));
        if let Some(buffer) = buffer {
            sink.send(buffer).await.map_err(|e| unreachable(&e))?;
        }
        drop(sink);
        let resp: IncomingResponse = response.await.map_err(|e| match e {
            ErrorCode::ConnectionTimeout => Error::new(ErrorKind::UpstreamTimeout, "could not connect to the provider in time"),
            other => unreachable(&other),
        })?;
        let mut out = http::Response::builder().status(resp.status());
        for (name, value) in resp.headers().entries() {
            out = out.header(name, value);
        }
        // The response must outlive its body stream: dropping it cancels the request.
        let stream: ByteStream = Box::pin(futures::stream::unfold((resp, None), |(resp, body)| async move {
            let mut body = match body {
                Some(b) => b,
                None => resp.take_body_stream(),
            };
            let next = body.next().await?;
            let item =
                next.map(Bytes::from).map_err(|e| Error::new(ErrorKind::UpstreamUnavailable, format!("provider stream broke: {e:?}")));
            Some((item, (resp, Some(body))))
        }));
        out.body(stream).map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unusable response head: {e}")))
    }
}

/// `wasi:http` outgoing-handler with request options (the SDK's `send` passes none): the
/// connection timeout, when the core set one.
fn send_with_options(
    request: OutgoingRequest,
    connect_ms: Option<u64>,
) -> impl std::future::Future<Output = Result<IncomingResponse, ErrorCode>> {
    use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types::RequestOptions};
    let options = connect_ms.map(|ms| {
        let options = RequestOptions::new();
        let _ = options.set_connect_timeout(Some(ms.saturating_mul(1_000_000)));
        options
    });
    PendingResponse { registered: None, pending: Some(outgoing_handler::handle(request, options)) }
}

/// A response on its way. The wake-up registration holds a pollable that is a child of the
/// future resource, so it must be dropped first (dropping a parent before its child traps).
struct PendingResponse {
    registered: Option<spin_executor::CancelOnDropToken>,
    pending: Option<Result<spin_sdk::wit::wasi::http0_2_0::types::FutureIncomingResponse, ErrorCode>>,
}

impl Drop for PendingResponse {
    fn drop(&mut self) {
        drop(self.registered.take());
        drop(self.pending.take());
    }
}

impl std::future::Future for PendingResponse {
    type Output = Result<IncomingResponse, ErrorCode>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let future = match &this.pending {
            None => return std::task::Poll::Ready(Err(ErrorCode::InternalError(Some("response polled after it was ready".into())))),
            Some(Err(e)) => return std::task::Poll::Ready(Err(e.clone())),
            Some(Ok(future)) => future,
        };
        match future.get() {
            Some(Ok(result)) => std::task::Poll::Ready(result),
            Some(Err(())) => std::task::Poll::Ready(Err(ErrorCode::InternalError(Some("response taken twice".into())))),
            None => {
                let token = spin_executor::push_waker_and_get_token(future.subscribe(), cx.waker().clone()).into();
                // The previous registration (if any) goes before the new one is kept.
                drop(this.registered.replace(token));
                std::task::Poll::Pending
            }
        }
    }
}

impl Telemetry for SpinHost {
    async fn export(&self, records: Vec<RequestRecord>) -> Result<(), Error> {
        // Spin collects component stdout into its logs; OTLP export joins later.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for r in records {
            if let Ok(line) = serde_json::to_string(&r) {
                let _ = writeln!(out, "{line}");
            }
        }
        Ok(())
    }
}

impl TokenVerifier for SpinHost {
    fn verify_jwt(
        &self,
        token: &str,
        issuer: &edgegate_core::jwt::JwtIssuer,
        hmac_key: Option<&[u8]>,
        now_s: u64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        edgegate_jwt::verify(token, issuer, hmac_key, now_s)
    }
}

impl Deferred for SpinHost {
    fn defer(&self, task: Task) {
        self.deferred.borrow_mut().push(task);
    }
}
