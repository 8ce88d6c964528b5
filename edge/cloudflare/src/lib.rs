//! edgegate on Cloudflare Workers: the fetch entry point, the core's ports over Workers bindings,
//! and the per-tenant ledger Durable Object. No policy, routing or format code lives here.
//!
//! Bindings (see `wrangler.toml`): `POLICY` (KV: policy snapshots, see `edgegate_core::snapshot`), `LEDGER` (Durable Object
//! class `Ledger`), provider credentials as secrets named by policy. The edge cache is the
//! location's Cache API (`caches.default`).

use std::rc::Rc;

use bytes::Bytes;
use edgegate_core::audit::{AuditAnswer, AuditOp, Sql, SqlValue};
use edgegate_core::ledger::{Book, LedgerAnswer, LedgerOp};
use edgegate_core::ports::{
    AnswerCache, AuditLog, Clock, Deferred, Entropy, Ledger as LedgerPort, PolicyStore, Secrets, Task, Telemetry, Timer, TokenVerifier,
    Upstream,
};
use edgegate_core::routing::Origin;
use edgegate_core::telemetry::RequestRecord;
use edgegate_core::{ByteStream, Error, ErrorKind, Gateway, MAX_REQUEST_BYTES, Unreadable};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use worker::SqlStorageValue;
use worker::{Context, Env, Headers, Request, Response, console_log, durable_object, event};

thread_local! {
    /// One gateway per isolate: the compiled policy outlives requests.
    static GATEWAY: Rc<Gateway> = Rc::new(Gateway::new());
}

/// When the isolate loads the module: the firewall's automata are built here, once, rather than
/// inside the first request (see `edgegate_core::firewall::prepare`).
#[event(start)]
fn start() {
    edgegate_core::firewall::prepare();
    for s in INTERNED {
        wasm_bindgen::intern(s);
    }
}

/// Strings the Worker sends to JavaScript on most requests (header names, and values that do not
/// vary), kept on the JavaScript side once: each crossing of one then creates no string and no
/// view of wasm memory (wasm-bindgen's `enable-interning`).
const INTERNED: &[&str] = &[
    "POST",
    "accept",
    "application/json",
    "authorization",
    "cache-control",
    "content-type",
    "no-cache",
    "retry-after",
    "text/event-stream",
    "traceparent",
    "x-edgegate-cache",
    "x-edgegate-policy-version",
    "x-request-id",
    "x-should-retry",
];

#[event(fetch)]
async fn fetch(req: worker::web_sys::Request, env: Env, ctx: Context) -> worker::Result<worker::web_sys::Response> {
    use wasm_bindgen::JsCast;
    let host = CfHost(Rc::new(Inner { env, ctx, stubs: std::cell::RefCell::default() }));
    let gateway = GATEWAY.with(Rc::clone);
    let request = incoming(&req).await.unwrap_or_else(|why| Unreadable::request(&req.method(), &req.url(), why));
    let resp = gateway.handle(&host, request).await;
    let (parts, body) = resp.into_parts();
    let init = worker::web_sys::ResponseInit::new();
    init.set_status(parts.status.as_u16());
    init.set_headers(&headers_of(&parts.headers));
    let resp = match body {
        edgegate_core::Body::Full(bytes) => {
            worker::web_sys::Response::new_with_opt_buffer_source_and_init(Some(&worker::js_sys::Uint8Array::from(&bytes[..])), &init)
        }
        edgegate_core::Body::Stream(s) => {
            let chunks = s.map(|chunk| Ok(worker::js_sys::Uint8Array::from(&chunk[..]).into()));
            let stream: worker::web_sys::ReadableStream = wasm_streams::ReadableStream::from_stream(chunks).into_raw().unchecked_into();
            worker::web_sys::Response::new_with_opt_readable_stream_and_init(Some(&stream), &init)
        }
    };
    resp.map_err(worker::Error::from)
}

/// `headers` as a list of `[name, value]` pairs, which `fetch` and `Response` take in place of a
/// `Headers` object (one runtime object fewer). A value that is not visible ASCII (which
/// JavaScript would read as Latin-1, not UTF-8) is left out.
fn headers_of(headers: &http::HeaderMap) -> worker::js_sys::Array {
    let out = worker::js_sys::Array::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.push(&worker::js_sys::Array::of2(&name.as_str().into(), &v.into()));
        }
    }
    out
}

/// Largest provider answer read in one piece (see `CfHost::send`); larger ones arrive in chunks.
const WHOLE_ANSWER_BYTES: usize = 4 << 20;

/// The client's request as the core takes it, read with few JavaScript objects: every request
/// allocates some, and in workerd each adds to the young-generation collections that make up the
/// tail latency (docs/benchmarks.md). A body of declared length is read in one `arrayBuffer()`;
/// one of unknown length, chunk by chunk up to the core's limit. What cannot be read (workerd
/// passes header values with control bytes, which the `http` crate refuses; a client may break
/// off its body) is said in the error, which the core answers with a 400.
async fn incoming(req: &worker::web_sys::Request) -> Result<http::Request<Bytes>, String> {
    use worker::worker_sys::ext::RequestExt;
    let mut head = http::HeaderMap::new();
    let mut length = None;
    for (name, value) in Headers(req.headers()).entries() {
        let (name, value) = Unreadable::field(name.as_bytes(), value.as_bytes())?;
        if name == http::header::CONTENT_LENGTH {
            length = value.to_str().ok().and_then(|v| v.parse::<usize>().ok());
        }
        head.append(name, value);
    }
    let unread = |e: worker::Error| format!("its body could not be read: {e}");
    // Declared length: one `arrayBuffer()`, without the stream object `body` would make.
    let body = if length.is_some_and(|n| n <= MAX_REQUEST_BYTES) {
        let buf = worker::wasm_bindgen_futures::JsFuture::from(req.array_buffer().map_err(|e| unread(e.into()))?)
            .await
            .map_err(|e| unread(e.into()))?;
        Bytes::from(worker::js_sys::Uint8Array::new(&buf).to_vec())
    } else if let Some(stream) = req.body() {
        let mut chunks = worker::ByteStream::from(stream);
        let mut buf = Vec::new();
        while let Some(chunk) = chunks.next().await {
            buf.extend_from_slice(&chunk.map_err(unread)?);
            if buf.len() > MAX_REQUEST_BYTES {
                break; // the core answers 413; no need to read the rest
            }
        }
        Bytes::from(buf)
    } else {
        Bytes::new()
    };
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::from_bytes(req.method().as_bytes()).map_err(|_| "its method is not a valid token".to_owned())?;
    *request.uri_mut() = req.url().parse().map_err(|_| "its URL has a character HTTP does not allow".to_owned())?;
    *request.headers_mut() = head;
    // The location: the colo that suffixes `cf-ray`, and the country and continent the runtime
    // resolved (absent locally unless the runtime is told them).
    let colo = request.headers().get("cf-ray").and_then(|v| v.to_str().ok()).and_then(|r| r.rsplit_once('-')).map(|(_, c)| c.to_owned());
    let cf = req.cf();
    let field = |read: fn(&worker::worker_sys::IncomingRequestCfProperties) -> Result<Option<String>, wasm_bindgen::JsValue>| {
        cf.as_ref().and_then(|c| read(c).ok().flatten())
    };
    let origin = Origin { country: field(|c| c.country()), continent: field(|c| c.continent()), colo, asserted: false };
    request.extensions_mut().insert(origin);
    Ok(request)
}

struct Inner {
    env: Env,
    ctx: Context,
    /// The `Ledger` objects this request has called, by name: a stub serves only the request
    /// that made it, and a request calls its tenant's object at least twice (reserve, settle).
    stubs: std::cell::RefCell<Vec<(String, LedgerStub)>>,
}

/// The core's ports over Workers bindings. Cheap to clone.
#[derive(Clone)]
struct CfHost(Rc<Inner>);

fn store_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::StoreUnavailable, format!("{what}: {e}"))
}

impl Clock for CfHost {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// `Date.now()`: the time without a `Date` object (the core asks several times a request).
fn now_ms() -> u64 {
    worker::js_sys::Date::now() as u64
}

impl Timer for CfHost {
    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> + 'static {
        worker::Delay::from(std::time::Duration::from_millis(ms))
    }
}

impl Entropy for CfHost {
    fn fill(&self, buf: &mut [u8]) {
        // crypto.getRandomValues cannot fail for the small buffers the core asks for; if it ever
        // did, ids would be zeros, which is harmless.
        let _ = getrandom::getrandom(buf);
    }
}

impl CfHost {
    fn kv(&self) -> Result<worker::kv::KvStore, Error> {
        self.0.env.kv("POLICY").map_err(|e| store_error("policy KV binding", e))
    }
}

impl PolicyStore for CfHost {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let raw = self.kv()?.get(key).bytes().await.map_err(|e| store_error("policy KV read", e))?;
        Ok(raw.map(Bytes::from))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), Error> {
        let put = self.kv()?.put_bytes(key, &value).map_err(|e| store_error("policy KV write", e))?;
        put.execute().await.map_err(|e| store_error("policy KV write", e))
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.kv()?.delete(key).await.map_err(|e| store_error("policy KV delete", e))
    }
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// A `Ledger` object's stub, for the object's one RPC method (`Ledger.call`, entry.mjs).
    type LedgerStub;
    #[wasm_bindgen(method, catch)]
    fn call(this: &LedgerStub, what: &str, body: &str) -> Result<worker::js_sys::Promise, wasm_bindgen::JsValue>;
}

impl CfHost {
    /// Calls the `Ledger` object named `name` over the runtime's RPC: `what` and `body` (as JSON)
    /// as [`Ledger::call`] takes them, its answer as it gives it. A method call, not a `fetch`: no
    /// request, response, headers or body streams on either side.
    async fn ledger_call(&self, name: &str, what: &str, body: &impl Serialize) -> Result<String, worker::Error> {
        let body = serde_json::to_string(body)?;
        let promise = {
            let mut stubs = self.0.stubs.borrow_mut();
            let i = match stubs.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                None => {
                    let stub = self.0.env.durable_object("LEDGER")?.id_from_name(name)?.get_stub()?.into_rpc::<LedgerStub>();
                    stubs.push((name.to_owned(), stub));
                    stubs.len() - 1
                }
            };
            stubs[i].1.call(what, &body)?
        };
        let answer = worker::wasm_bindgen_futures::JsFuture::from(promise).await?;
        answer.as_string().ok_or_else(|| worker::Error::RustError("the ledger object answered no text".into()))
    }
}

impl LedgerPort for CfHost {
    /// One call to the tenant's Durable Object, which applies `op` to its book.
    async fn apply(&self, tenant: &str, op: LedgerOp) -> Result<LedgerAnswer, Error> {
        let answer = self.ledger_call(tenant, "apply", &op).await.map_err(|e| store_error("tenant ledger", e))?;
        serde_json::from_str(&answer).map_err(|e| store_error("tenant ledger", e))
    }
}

/// An audit operation as it crosses to the log's Durable Object.
#[derive(Serialize, Deserialize)]
struct AuditCall {
    log: String,
    op: AuditOp,
}

/// The URL an edge cache entry is kept under in the location's Cache API.
fn cache_url(key: &str) -> String {
    format!("https://edgegate-cache.internal/v1/{key}")
}

impl AnswerCache for CfHost {
    async fn cache_get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let cache = worker::Cache::default();
        let Some(mut resp) = cache.get(cache_url(key), false).await.map_err(|e| store_error("edge cache read", e))? else {
            return Ok(None);
        };
        let bytes = resp.bytes().await.map_err(|e| store_error("edge cache read", e))?;
        Ok(Some(Bytes::from(bytes)))
    }

    async fn cache_put(&self, key: &str, entry: Bytes, ttl_seconds: u32) -> Result<(), Error> {
        let headers = Headers::new();
        headers.set("cache-control", &format!("public, max-age={ttl_seconds}")).map_err(|e| store_error("edge cache write", e))?;
        let resp = Response::from_bytes(entry.to_vec()).map_err(|e| store_error("edge cache write", e))?.with_headers(headers);
        worker::Cache::default().put(cache_url(key), resp).await.map_err(|e| store_error("edge cache write", e))
    }
}

impl AuditLog for CfHost {
    /// One call to the log's Durable Object (the tenant's, shared with its ledger), which runs
    /// the operation on its SQLite storage.
    async fn audit(&self, log: &str, op: AuditOp) -> Result<AuditAnswer, Error> {
        let call = AuditCall { log: log.to_owned(), op };
        let answer = self.ledger_call(log, "audit", &call).await.map_err(|e| store_error("audit log", e))?;
        serde_json::from_str(&answer).map_err(|e| store_error("audit log", e))
    }
}

impl Secrets for CfHost {
    async fn secret(&self, name: &str) -> Result<Option<String>, Error> {
        if let Ok(s) = self.0.env.secret(name) {
            return Ok(Some(s.to_string()));
        }
        Ok(self.0.env.var(name).ok().map(|v| v.to_string()))
    }
}

impl Upstream for CfHost {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, Error> {
        if request.uri().scheme_str() == Some(edgegate_core::providers::workers_ai::SCHEME) {
            return self.run_ai(&request).await;
        }
        use wasm_bindgen::JsCast;
        use worker::wasm_bindgen_futures::JsFuture;
        let unavailable = |e: wasm_bindgen::JsValue| {
            Error::new(ErrorKind::UpstreamUnavailable, format!("provider unreachable: {}", worker::Error::from(e)))
        };
        let (parts, body) = request.into_parts();
        // The runtime's `fetch` with a plain init: no `Request` object, no `Headers` object.
        let init = worker::web_sys::RequestInit::new();
        init.set_method(parts.method.as_str());
        init.set_headers(&headers_of(&parts.headers));
        init.set_body(&js_sys_bytes(&body));
        let global: worker::web_sys::WorkerGlobalScope = worker::js_sys::global().unchecked_into();
        let resp: worker::web_sys::Response = JsFuture::from(global.fetch_with_str_and_init(&parts.uri.to_string(), &init))
            .await
            .and_then(|r| r.dyn_into())
            .map_err(unavailable)?;
        let mut out = http::Response::builder().status(resp.status());
        let (mut length, mut json, mut encoded) = (None, false, false);
        for (name, value) in Headers(resp.headers()).entries() {
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "content-type" => json = value.starts_with("application/json"),
                "content-encoding" => encoded = value != "identity",
                _ => {}
            }
            out = out.header(name, value);
        }
        let broke = |e: worker::Error| Error::new(ErrorKind::UpstreamUnavailable, format!("provider stream broke: {e}"));
        // A successful JSON answer of declared length up to `WHOLE_ANSWER_BYTES` (a non-stream
        // answer) is read in one `arrayBuffer()` when the core first polls it, so its waits still
        // apply; anything else chunk by chunk, so its size limit does and a body it drops is
        // cancelled. Not an encoded one: the runtime decodes it, and the declared length would not
        // bound what it decodes to.
        let whole = resp.ok() && json && !encoded && length.is_some_and(|n| n <= WHOLE_ANSWER_BYTES);
        let stream: ByteStream = if whole {
            // Cancels the body if the core drops it unread (its deadline passed first). The body's
            // stream object is made only then.
            struct Unread {
                resp: worker::web_sys::Response,
                read: bool,
            }
            impl Drop for Unread {
                fn drop(&mut self) {
                    if let Some(body) = (!self.read).then(|| self.resp.body()).flatten() {
                        let _ = body.cancel();
                    }
                }
            }
            let mut unread = Unread { resp, read: false };
            Box::pin(futures::stream::once(async move {
                unread.read = true;
                let buf = JsFuture::from(unread.resp.array_buffer().map_err(|e| broke(e.into()))?).await.map_err(|e| broke(e.into()))?;
                Ok(Bytes::from(worker::js_sys::Uint8Array::new(&buf).to_vec()))
            }))
        } else {
            match resp.body() {
                Some(s) => Box::pin(worker::ByteStream::from(s).map(move |chunk| chunk.map(Bytes::from).map_err(broke))),
                None => Box::pin(futures::stream::empty()),
            }
        };
        out.body(stream).map_err(|e| Error::new(ErrorKind::UpstreamProtocol, format!("provider sent an unusable response head: {e}")))
    }
}

impl CfHost {
    /// A Workers AI request (`workers-ai://{binding}/run/{model}`, the input as its body) as a
    /// binding call: `env[binding].run(model, input)`. The input crosses as plain JSON objects
    /// (`JSON.parse`), which the binding expects; a streamed answer is the binding's byte stream.
    async fn run_ai(&self, request: &http::Request<Bytes>) -> Result<http::Response<ByteStream>, Error> {
        use wasm_bindgen::JsCast;
        let failed = |e: wasm_bindgen::JsValue| {
            let msg = e.dyn_ref::<worker::js_sys::Error>().map_or_else(|| format!("{e:?}"), |e| String::from(e.message()));
            Error::new(ErrorKind::UpstreamUnavailable, format!("Workers AI: {msg}"))
        };
        let binding_name = request.uri().host().unwrap_or("AI");
        let model = request.uri().path().trim_start_matches("/run/");
        let binding = worker::js_sys::Reflect::get(&self.0.env, &binding_name.into()).map_err(failed)?;
        if binding.is_undefined() {
            return Err(Error::new(
                ErrorKind::UpstreamUnavailable,
                format!("Workers AI: no binding named `{binding_name}` (add `[ai] binding` to wrangler.toml)"),
            ));
        }
        let run: worker::js_sys::Function =
            worker::js_sys::Reflect::get(&binding, &"run".into()).map_err(failed)?.dyn_into().map_err(failed)?;
        let input = worker::js_sys::JSON::parse(&String::from_utf8_lossy(request.body())).map_err(failed)?;
        let promise = run.call2(&binding, &model.into(), &input).map_err(failed)?;
        let output = worker::wasm_bindgen_futures::JsFuture::from(worker::js_sys::Promise::resolve(&promise)).await.map_err(failed)?;
        let body: ByteStream = match output.dyn_into::<worker::web_sys::ReadableStream>() {
            Ok(stream) => Box::pin(worker::ByteStream::from(stream).map(|chunk| {
                chunk.map(Bytes::from).map_err(|e| Error::new(ErrorKind::UpstreamUnavailable, format!("Workers AI stream broke: {e}")))
            })),
            Err(value) => {
                let json = worker::js_sys::JSON::stringify(&value).map_err(failed)?;
                Box::pin(futures::stream::once(futures::future::ready(Ok(Bytes::from(String::from(json))))))
            }
        };
        Ok(http::Response::new(body))
    }
}

fn js_sys_bytes(bytes: &[u8]) -> wasm_bindgen::JsValue {
    worker::js_sys::Uint8Array::from(bytes).into()
}

impl Telemetry for CfHost {
    async fn export(&self, records: Vec<RequestRecord>) -> Result<(), Error> {
        // Workers Logs / `wrangler tail` collect console output; OTLP export joins later.
        for r in records {
            if let Ok(line) = serde_json::to_string(&r) {
                console_log!("{line}");
            }
        }
        Ok(())
    }
}

impl TokenVerifier for CfHost {
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

impl Deferred for CfHost {
    /// Runs `task` past the response, under `waitUntil`. A stream whose client hung up can be
    /// freed after its request has ended, and its recording deferred then: outside a request,
    /// `waitUntil` is refused (the `worker` crate's wrapper would panic), so the task just runs as
    /// far as the runtime lets it — I/O it is refused fails like any store fault, and a hold it
    /// could not settle expires on its own.
    ///
    /// Under `waitUntil`, the task first waits for a timer of 0 ms. A promise's continuation runs
    /// in the microtask queue, which the runtime drains before it takes the response the handler
    /// has just returned. Without the timer, the record's serialisation, its log line and the
    /// first steps of settlement ran ahead of every response: 15 to 20 ms in an isolate's first
    /// request, measured in local workerd.
    fn defer(&self, task: Task) {
        let later = Rc::new(std::cell::Cell::new(true));
        let wait = Rc::clone(&later);
        // The spawned future is first polled after this function returns, so `later` is settled.
        let promise = worker::js_sys::futures::future_to_promise(async move {
            if wait.get() {
                worker::Delay::from(std::time::Duration::ZERO).await;
            }
            task.await;
            Ok(worker::wasm_bindgen::JsValue::UNDEFINED)
        });
        if self.0.ctx.as_ref().wait_until(&promise).is_err() {
            later.set(false);
            console_log!("deferred work outside a request: running without waitUntil");
        }
    }
}

/// One per tenant: the tenant's ledger book, in the object's SQLite storage.
///
/// A Durable Object runs one event at a time, and every operation below is synchronous, with no
/// `await` in between, so each operation is atomic and the counts are exact. The object
/// is its book's only writer, so it keeps the book it last stored in memory and reads storage
/// only when it starts (or after a write failed).
#[durable_object]
pub struct Ledger {
    sql: worker::SqlStorage,
    /// The book and its JSON as last stored (empty if never).
    kept: std::cell::RefCell<Option<(Book, String)>>,
}

#[derive(Deserialize)]
struct BookRow {
    json: String,
}

impl worker::DurableObject for Ledger {
    fn new(state: worker::State, _env: Env) -> Self {
        let sql = state.storage().sql();
        let created = sql.exec("CREATE TABLE IF NOT EXISTS book (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL)", None);
        if let Err(e) = created {
            console_log!("ledger: creating table failed: {e}");
        }
        Self { sql, kept: std::cell::RefCell::default() }
    }

    /// The same operations over HTTP (`POST /apply`, `POST /audit`), for a Worker of an earlier
    /// version still running during a deploy; this version calls [`Ledger::call`].
    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let what = if req.path() == "/audit" { "audit" } else { "apply" };
        match self.run(what, &req.text().await?) {
            Ok(answer) => Response::ok(answer),
            Err(e) => Response::error(e.to_string(), 500),
        }
    }
}

#[wasm_bindgen::prelude::wasm_bindgen]
impl Ledger {
    /// The object's RPC method (entry.mjs gives it to callers): `what` is `apply` (the body a
    /// `LedgerOp`, the answer a `LedgerAnswer`) or `audit` (an `AuditCall`, an `AuditAnswer`),
    /// all JSON. Synchronous: it reads and writes only the object's SQLite storage.
    pub fn call(&self, what: &str, body: &str) -> Result<String, wasm_bindgen::JsValue> {
        self.run(what, body).map_err(|e| worker::js_sys::Error::new(&e.to_string()).into())
    }
}

impl Ledger {
    fn run(&self, what: &str, body: &str) -> worker::Result<String> {
        let now = now_ms();
        if what == "audit" {
            let call: AuditCall = serde_json::from_str(body)?;
            let answer =
                edgegate_core::audit::apply(&DoSql(&self.sql), &call.log, now, call.op).map_err(|e| worker::Error::RustError(e.message))?;
            return Ok(serde_json::to_string(&answer)?);
        }
        let op: LedgerOp = serde_json::from_str(body)?;
        let mut kept = self.kept.borrow_mut();
        let (mut book, mut stored) = match kept.take() {
            Some(k) => k,
            None => {
                let rows: Vec<BookRow> = self.sql.exec("SELECT json FROM book WHERE id = 1", None)?.to_array()?;
                let stored = rows.into_iter().next().map(|r| r.json);
                (Book::load(stored.as_deref()), stored.unwrap_or_default())
            }
        };
        let (answer, changed) = book.apply_kept(&stored, now, op)?;
        if let Some(json) = changed {
            // On failure nothing is kept: the next operation reads the book as stored.
            self.sql.exec(
                "INSERT INTO book (id, json) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json",
                vec![json.clone().into()],
            )?;
            stored = json;
        }
        *kept = Some((book, stored));
        Ok(serde_json::to_string(&answer)?)
    }
}

/// The audit log's SQL over a Durable Object's storage.
struct DoSql<'a>(&'a worker::SqlStorage);

impl Sql for DoSql<'_> {
    fn run(&self, statement: &str, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>, Error> {
        let bindings = params
            .into_iter()
            .map(|p| match p {
                SqlValue::Null => SqlStorageValue::Null,
                SqlValue::Int(i) => SqlStorageValue::Integer(i),
                SqlValue::Text(t) => SqlStorageValue::String(t),
            })
            .collect::<Vec<_>>();
        let cursor = self.0.exec(statement, bindings).map_err(|e| store_error("audit SQL", e))?;
        cursor
            .raw()
            .map(|row| {
                let row = row.map_err(|e| store_error("audit SQL", e))?;
                Ok(row
                    .into_iter()
                    .map(|v| match v {
                        SqlStorageValue::Integer(i) => SqlValue::Int(i),
                        // Numbers cross from JavaScript as doubles; ours are integers.
                        #[allow(clippy::cast_possible_truncation)]
                        SqlStorageValue::Float(f) => SqlValue::Int(f as i64),
                        SqlStorageValue::String(s) => SqlValue::Text(s),
                        SqlStorageValue::Boolean(b) => SqlValue::Int(i64::from(b)),
                        SqlStorageValue::Null | SqlStorageValue::Blob(_) => SqlValue::Null,
                    })
                    .collect())
            })
            .collect()
    }
}
