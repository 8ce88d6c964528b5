//! A deterministic host for tests: a fake clock, seeded entropy, in-memory stores, a scripted
//! upstream that replays responses and records what it was sent, and a telemetry sink to read.
//!
//! Nothing here sleeps, binds a port or calls the network.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use futures::StreamExt;

use crate::audit::{AuditAnswer, AuditOp};
use crate::error::{Error, ErrorKind};
use crate::gateway::{Body, Gateway};
use crate::jwt::JwtIssuer;
use crate::ledger::{Book, LedgerAnswer, LedgerOp};
use crate::ports::{
    AuditLog, ByteStream, Clock, Deferred, Entropy, Ledger, PolicyStore, Secrets, Task, Telemetry, Timer, TokenVerifier, Upstream,
};
use crate::telemetry::RequestRecord;

/// One scripted upstream answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Answer with this status, headers and body pieces; `Err` pieces break the stream there.
    Respond {
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<(&'static str, &'static str)>,
        /// Body pieces, in order.
        chunks: Vec<Result<Bytes, Error>>,
    },
    /// Fail to connect.
    Unreachable,
    /// Never answer (a provider that hangs before its response head).
    Hang,
    /// Answer with this status and body pieces, then stall without ending the body.
    Stall {
        /// HTTP status.
        status: u16,
        /// Body pieces sent before the stall.
        chunks: Vec<Bytes>,
    },
}

impl Scripted {
    /// A JSON answer.
    pub fn json(status: u16, body: &str) -> Self {
        Scripted::Respond { status, headers: vec![], chunks: vec![Ok(Bytes::copy_from_slice(body.as_bytes()))] }
    }

    /// An event-stream answer made of these pieces.
    pub fn sse(pieces: &[&str]) -> Self {
        Scripted::Respond {
            status: 200,
            headers: vec![],
            chunks: pieces.iter().map(|p| Ok(Bytes::copy_from_slice(p.as_bytes()))).collect(),
        }
    }
}

#[derive(Default)]
struct Inner {
    now_ms: Cell<u64>,
    seed: Cell<u64>,
    kv: RefCell<BTreeMap<String, Bytes>>,
    store_fault: RefCell<Option<Error>>,
    ledger: RefCell<HashMap<String, Book>>,
    secrets: RefCell<HashMap<String, String>>,
    script: RefCell<VecDeque<Scripted>>,
    sent: RefCell<Vec<http::Request<Bytes>>>,
    records: RefCell<Vec<RequestRecord>>,
    deferred: RefCell<Vec<Task>>,
    verifier: RefCell<Option<Rc<JwtVerifyFn>>>,
    audit_db: RefCell<Option<Rc<dyn crate::audit::Sql>>>,
    audit_ops: RefCell<Vec<(String, AuditOp)>>,
    cache: RefCell<HashMap<String, (u64, Bytes)>>,
    cache_fault: RefCell<Option<Error>>,
    slow_ledger: Cell<bool>,
}

/// A JWT verifier plugged into the test host (the `edgegate-jwt` crate's, in its tests).
pub type JwtVerifyFn = dyn Fn(&str, &JwtIssuer, Option<&[u8]>, u64) -> Result<serde_json::Map<String, serde_json::Value>, String>;

/// The test host. Clones share state.
#[derive(Clone, Default)]
pub struct TestHost(Rc<Inner>);

impl TestHost {
    /// A host at `now_ms` with `policy` published and entropy seeded with 1.
    pub fn new(now_ms: u64, policy: &str) -> Self {
        let host = TestHost::default();
        host.0.now_ms.set(now_ms);
        host.0.seed.set(1);
        host.set_policy(policy.as_bytes());
        host
    }

    /// Makes `doc` the active policy: stores it under its version (or, if it is not JSON, under
    /// a made-up one) and points `policy/active` at it. Clears any store fault.
    pub fn set_policy(&self, doc: &[u8]) {
        *self.0.store_fault.borrow_mut() = None;
        let (version, stored) = match serde_json::from_slice::<serde_json::Value>(doc) {
            Ok(v) => (crate::policy::version_of(&v), Bytes::from(crate::policy::canonical_json(&v))),
            Err(_) => ("0000000000000000".to_owned(), Bytes::copy_from_slice(doc)),
        };
        let mut kv = self.0.kv.borrow_mut();
        kv.insert(crate::snapshot::version_key(&version), stored);
        kv.insert(crate::snapshot::ACTIVE.into(), Bytes::from(serde_json::json!({ "version": version }).to_string()));
    }

    /// Makes every policy store operation fail with `fault` (or work again with `None`).
    pub fn fail_store(&self, fault: Option<Error>) {
        *self.0.store_fault.borrow_mut() = fault;
    }

    /// Open ledger holds of `tenant` (requests not yet settled).
    pub fn open_holds(&self, tenant: &str) -> usize {
        self.0.ledger.borrow().get(tenant).map_or(0, Book::open_holds)
    }

    /// A copy of the counter-store book named `id` (a tenant, or a location's health board).
    pub fn book(&self, id: &str) -> Option<Book> {
        self.0.ledger.borrow().get(id).cloned()
    }

    /// Makes each counter-store call wait one turn of the executor before it answers, as a store
    /// across the network does: what the gateway runs beside the call gets to run first.
    pub fn slow_ledger(&self, on: bool) {
        self.0.slow_ledger.set(on);
    }

    /// Makes every edge cache operation fail with `fault` (or work again with `None`).
    pub fn fail_cache(&self, fault: Option<Error>) {
        *self.0.cache_fault.borrow_mut() = fault;
    }

    /// Entries in the edge cache, expired ones included.
    pub fn cache_entries(&self) -> usize {
        self.0.cache.borrow().len()
    }

    /// The policy store's value under `key`.
    pub fn store_value(&self, key: &str) -> Option<Bytes> {
        self.0.kv.borrow().get(key).cloned()
    }

    /// Uses `verify` for JSON Web Tokens (by default every token is refused).
    pub fn set_jwt_verifier(&self, verify: Rc<JwtVerifyFn>) {
        *self.0.verifier.borrow_mut() = Some(verify);
    }

    /// Runs audit operations on `db` (SQLite, in tests that have it); without one, appends are
    /// kept (see [`TestHost::audit_ops`]) and searches and checks fail as a missing store would.
    pub fn set_audit_db(&self, db: Rc<dyn crate::audit::Sql>) {
        *self.0.audit_db.borrow_mut() = Some(db);
    }

    /// Runs deferred work, then returns every audit operation so far, with the log it was for.
    pub fn audit_ops(&self) -> Vec<(String, AuditOp)> {
        self.records();
        self.0.audit_ops.borrow().clone()
    }

    /// Moves the clock.
    pub fn advance(&self, ms: u64) {
        self.0.now_ms.set(self.0.now_ms.get() + ms);
    }

    /// Adds a secret.
    pub fn set_secret(&self, name: &str, value: &str) {
        self.0.secrets.borrow_mut().insert(name.into(), value.into());
    }

    /// Queues the next upstream answer.
    pub fn script(&self, answer: Scripted) {
        self.0.script.borrow_mut().push_back(answer);
    }

    /// Requests sent upstream so far.
    pub fn sent(&self) -> Vec<http::Request<Bytes>> {
        self.0.sent.borrow().clone()
    }

    /// Runs deferred work, then returns every exported record so far.
    pub fn records(&self) -> Vec<RequestRecord> {
        let tasks: Vec<Task> = self.0.deferred.borrow_mut().drain(..).collect();
        for task in tasks {
            futures::executor::block_on(task);
        }
        self.0.records.borrow().clone()
    }

    /// Runs deferred work, then removes and returns the exported records.
    pub fn drain_records(&self) -> Vec<RequestRecord> {
        self.records();
        std::mem::take(&mut *self.0.records.borrow_mut())
    }

    /// Sends one request through `gateway` and reads the whole response.
    pub fn call(&self, gateway: &Gateway, req: http::Request<Bytes>) -> (http::response::Parts, Bytes) {
        futures::executor::block_on(async {
            let (parts, body) = gateway.handle(self, req).await.into_parts();
            let bytes = match body {
                Body::Full(b) => b,
                Body::Stream(s) => Bytes::from(s.collect::<Vec<Bytes>>().await.concat()),
            };
            (parts, bytes)
        })
    }
}

impl Clock for TestHost {
    fn now_ms(&self) -> u64 {
        self.0.now_ms.get()
    }
}

impl Timer for TestHost {
    /// Time passes only on the fake clock: the sleep moves it on by `ms` when first polled and
    /// is then ready, so a timeout fires as soon as whatever it races is pending.
    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> + 'static {
        let inner = Rc::clone(&self.0);
        async move { inner.now_ms.set(inner.now_ms.get() + ms) }
    }
}

impl Entropy for TestHost {
    fn fill(&self, buf: &mut [u8]) {
        // xorshift64*: deterministic, good enough to make distinct ids.
        for b in buf {
            let mut x = self.0.seed.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0.seed.set(x);
            *b = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }
}

impl PolicyStore for TestHost {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        if let Some(e) = self.0.store_fault.borrow().clone() {
            return Err(e);
        }
        Ok(self.0.kv.borrow().get(key).cloned())
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), Error> {
        if let Some(e) = self.0.store_fault.borrow().clone() {
            return Err(e);
        }
        self.0.kv.borrow_mut().insert(key.into(), value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        if let Some(e) = self.0.store_fault.borrow().clone() {
            return Err(e);
        }
        self.0.kv.borrow_mut().remove(key);
        Ok(())
    }
}

impl Ledger for TestHost {
    async fn apply(&self, tenant: &str, op: LedgerOp) -> Result<LedgerAnswer, Error> {
        if self.0.slow_ledger.get() {
            let mut waited = false;
            futures::future::poll_fn(|cx| {
                if std::mem::replace(&mut waited, true) {
                    return std::task::Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
            .await;
        }
        let now = self.now_ms();
        Ok(self.0.ledger.borrow_mut().entry(tenant.to_owned()).or_default().apply(now, op))
    }
}

/// Like a location's cache: entries vanish after their TTL by the host's clock.
impl crate::ports::AnswerCache for TestHost {
    async fn cache_get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        if let Some(e) = self.0.cache_fault.borrow().clone() {
            return Err(e);
        }
        let now = self.now_ms();
        Ok(self.0.cache.borrow().get(key).filter(|(expires, _)| *expires > now).map(|(_, b)| b.clone()))
    }

    async fn cache_put(&self, key: &str, entry: Bytes, ttl_seconds: u32) -> Result<(), Error> {
        if let Some(e) = self.0.cache_fault.borrow().clone() {
            return Err(e);
        }
        let expires = self.now_ms() + u64::from(ttl_seconds) * 1000;
        self.0.cache.borrow_mut().insert(key.to_owned(), (expires, entry));
        Ok(())
    }
}

impl AuditLog for TestHost {
    async fn audit(&self, log: &str, op: AuditOp) -> Result<AuditAnswer, Error> {
        self.0.audit_ops.borrow_mut().push((log.to_owned(), op.clone()));
        let db = self.0.audit_db.borrow().clone();
        match (db, op) {
            (Some(db), op) => crate::audit::apply(db.as_ref(), log, self.now_ms(), op),
            (None, AuditOp::Append { drafts, .. }) => {
                Ok(AuditAnswer::Appended { head: crate::audit::Head { seq: drafts.len() as u64, hash: String::new() } })
            }
            (None, _) => Err(Error::new(ErrorKind::StoreUnavailable, "this test host has no audit database")),
        }
    }
}

impl Secrets for TestHost {
    async fn secret(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.0.secrets.borrow().get(name).cloned())
    }
}

impl Upstream for TestHost {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, Error> {
        self.0.sent.borrow_mut().push(request);
        let next = self.0.script.borrow_mut().pop_front();
        match next {
            None => Err(Error::new(ErrorKind::Internal, "testkit: no scripted upstream answer left")),
            Some(Scripted::Unreachable) => Err(Error::new(ErrorKind::UpstreamUnavailable, "connection refused")),
            Some(Scripted::Hang) => futures::future::pending().await,
            Some(Scripted::Stall { status, chunks }) => {
                let body: ByteStream = Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)).chain(futures::stream::pending()));
                let mut resp = http::Response::new(body);
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                Ok(resp)
            }
            Some(Scripted::Respond { status, headers, chunks }) => {
                let body: ByteStream = Box::pin(futures::stream::iter(chunks));
                let mut resp = http::Response::new(body);
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                for (name, value) in headers {
                    resp.headers_mut().insert(name, http::HeaderValue::from_static(value));
                }
                Ok(resp)
            }
        }
    }
}

impl Telemetry for TestHost {
    async fn export(&self, records: Vec<RequestRecord>) -> Result<(), Error> {
        self.0.records.borrow_mut().extend(records);
        Ok(())
    }
}

impl Deferred for TestHost {
    fn defer(&self, task: Task) {
        self.0.deferred.borrow_mut().push(task);
    }
}

impl TokenVerifier for TestHost {
    fn verify_jwt(
        &self,
        token: &str,
        issuer: &JwtIssuer,
        hmac_key: Option<&[u8]>,
        now_s: u64,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        match self.0.verifier.borrow().as_ref() {
            Some(verify) => verify(token, issuer, hmac_key, now_s),
            None => Err("this test host verifies no tokens".into()),
        }
    }
}
