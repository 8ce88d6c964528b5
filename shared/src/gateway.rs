//! The orchestrator: the only code that calls ports. It runs the phases of [`crate::phases`] in
//! order for each request, turns every outcome into an OpenAI-shaped response with an
//! `x-request-id`, and always runs the record phase — on success, on error, at the end of a
//! stream, and when a client abandons a stream.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, Method, StatusCode};

use std::rc::Rc;

use crate::admin;
use crate::chat::ChatRequest;
use crate::dialect::{self, Dialect, StreamEncoder};
use crate::embeddings::EmbeddingsRequest;
use crate::error::{Error, ErrorKind, Side};
use crate::health::{self, Board, BreakerSettings, Observation, Outcome};
use crate::jwt;
use crate::ledger::{Amounts, Containment, LedgerAnswer, LedgerOp, Screen};
use crate::metrics::Meter;
use crate::phases::{self, Candidate, RateState};
use crate::policy::TelemetrySettings;
use crate::policy::{Degraded, Policy, Price, ProviderKind, Role, Roles, Timeouts, hash_key, hex};
use crate::ports::{ByteStream, Host, Task};
use crate::providers::{self, StreamDecoder, StreamEvent, mock};
use crate::routing::{self, Origin, Plan};
use crate::snapshot::{Snapshot, SnapshotCache};
use crate::telemetry::{AttemptRecord, RECORD_SCHEMA, RequestRecord, ShadowRecord};

/// Largest request body accepted; hosts should stop reading beyond it.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Most header bytes (names, values and 4 bytes of framing each) a request may carry.
pub const MAX_HEADER_BYTES: usize = 32 << 10;
/// Most header fields a request may carry.
pub const MAX_HEADERS: usize = 100;

/// Largest non-stream upstream body read.
const MAX_UPSTREAM_BYTES: usize = 32 << 20;
/// Largest upstream error body read (for its message).
const MAX_UPSTREAM_ERROR_BYTES: usize = 64 << 10;

/// Marks a request its host could not read whole: a header value the `http` crate refuses (a
/// control byte, which some runtimes pass through), or a body the client broke off. The host
/// hands the core what it could read, through [`Unreadable::request`], and the core answers 400
/// in the caller's dialect, with an `x-request-id` and a record, like any other refusal.
#[derive(Clone, Debug)]
pub struct Unreadable(pub String);

impl Unreadable {
    /// A request of `method` to `uri` (each replaced by `POST` and `/` if unusable), without its
    /// headers or body, marked unreadable because of `why`.
    pub fn request(method: &str, uri: &str, why: impl Into<String>) -> http::Request<Bytes> {
        let mut req = http::Request::new(Bytes::new());
        *req.method_mut() = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        req.extensions_mut().insert(Unreadable(why.into()));
        req
    }

    /// A header field as the `http` crate takes it, or why it cannot be (the reason
    /// [`Unreadable::request`] then carries).
    pub fn field(name: &[u8], value: &[u8]) -> Result<(http::HeaderName, HeaderValue), String> {
        let name = http::HeaderName::from_bytes(name).map_err(|_| "a header name has a character HTTP does not allow".to_owned())?;
        let value =
            HeaderValue::from_bytes(value).map_err(|_| format!("the value of header `{name}` has a character HTTP does not allow"))?;
        Ok((name, value))
    }
}

/// A response body: complete, or a stream that never fails (failures are written into it).
pub enum Body {
    /// The whole body.
    Full(Bytes),
    /// Server-sent events, produced as the upstream answers.
    Stream(Pin<Box<dyn Stream<Item = Bytes>>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Full(b) => f.debug_tuple("Full").field(b).finish(),
            Body::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// The gateway for one isolate: holds what outlives a request (the compiled policy and the
/// location's provider health).
#[derive(Debug)]
pub struct Gateway {
    snapshots: SnapshotCache,
    health: Rc<RefCell<HealthView>>,
    health_refresh_ms: u64,
    /// The contained scopes of each tenant, as the ledger last said (see [`Contained`]).
    contained: Contained,
    /// Metrics aggregated since the last export.
    meter: Rc<RefCell<MeterState>>,
}

/// An isolate's metrics between exports.
#[derive(Debug, Default)]
struct MeterState {
    meter: Option<Meter>,
    /// Spans of sampled requests not yet exported (at most [`MAX_PENDING_SPANS`]).
    spans: Vec<serde_json::Value>,
    /// When the last export started.
    exported_ms: u64,
    /// Names this isolate in exports (`service.instance.id`), drawn on first use.
    instance: String,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            snapshots: SnapshotCache::default(),
            health: Rc::default(),
            health_refresh_ms: HEALTH_REFRESH_MS,
            contained: Contained(Rc::default(), Unsent(Some(Rc::default()))),
            meter: Rc::default(),
        }
    }
}

/// An isolate's memory of which tenants' scopes are contained, refreshed from every ledger answer
/// that carries it (each reservation and screen). A request whose scope is known contained is
/// screened by the containment firewall from the start; one that learns it at admission is
/// screened again.
#[derive(Debug, Clone, Default)]
struct Contained(Rc<RefCell<HashMap<String, BTreeSet<String>>>>, Unsent);

/// How long an isolate may hold clean screenings before sending them to the tenant's ledger.
const SCREEN_BATCH_MS: u64 = 1_000;

/// Clean screenings an isolate has not sent yet, per tenant and route: how many, and since when.
/// A clean prompt can only lower a scope's suspicious share, so it can wait and go in a batch —
/// on the next screening sent (every suspicious one is sent at once, and every reservation
/// carries one), or after [`SCREEN_BATCH_MS`]. This spares the ledger a call per clean request.
/// `None` for a gateway that lives for one request (nothing can wait: every screening is sent).
#[derive(Debug, Clone, Default)]
struct Unsent(Option<Rc<RefCell<HeldScreens>>>);

/// Per tenant and route: clean screenings held, and since when (epoch ms). Ordered, not hashed:
/// the route is the request's (see `providers::gemini`).
type HeldScreens = BTreeMap<(String, String), (u32, u64)>;

impl Unsent {
    /// Whether `screen` (of `tenant`) must be sent now; if so it takes the clean ones held for
    /// its route. A clean one that may wait is counted instead.
    fn send_now(&self, tenant: &str, screen: &mut Screen, now_ms: u64) -> bool {
        let Some(map) = &self.0 else { return true };
        let mut map = map.borrow_mut();
        let key = (tenant.to_owned(), screen.route.clone());
        let held = map.get(&key).copied();
        match held {
            Some((n, since)) if !screen.suspicious && now_ms < since.saturating_add(SCREEN_BATCH_MS) => {
                map.insert(key, (n.saturating_add(1), since));
                false
            }
            None if !screen.suspicious => {
                map.insert(key, (1, now_ms));
                false
            }
            _ => {
                map.remove(&key);
                screen.clean_before = screen.clean_before.saturating_add(held.map_or(0, |(n, _)| n));
                true
            }
        }
    }

    /// Adds the clean screenings held for `screen`'s route to it (it is being sent anyway).
    fn take(&self, tenant: &str, screen: &mut Screen) {
        if let Some((n, _)) = self.0.as_ref().and_then(|m| m.borrow_mut().remove(&(tenant.to_owned(), screen.route.clone()))) {
            screen.clean_before = screen.clean_before.saturating_add(n);
        }
    }
}

impl Contained {
    /// What the ledger said of a request on `alias`: its contained scopes (of `tenant` and
    /// `route:<alias>`; other routes' are unchanged).
    fn remember(&self, tenant: &str, alias: &str, scopes: &[String]) {
        let mut map = self.0.borrow_mut();
        let known = map.entry(tenant.to_owned()).or_default();
        known.remove("tenant");
        known.remove(&format!("route:{alias}"));
        known.extend(scopes.iter().cloned());
        if known.is_empty() {
            map.remove(tenant);
        }
    }

    /// The contained scopes of `tenant` that a request on `alias` falls in.
    fn scopes(&self, tenant: &str, alias: &str) -> Vec<String> {
        let route = format!("route:{alias}");
        let mut scopes: Vec<String> =
            self.0.borrow().get(tenant).into_iter().flatten().filter(|s| *s == "tenant" || **s == route).cloned().collect();
        // The ledger's order: the tenant, then the route.
        scopes.sort_by_key(|s| s != "tenant");
        scopes
    }
}

/// What the route step is asked for a request.
fn ask<'a>(origin: &'a Origin, alias: &'a str, chat: Option<&'a ChatRequest>, prompt_tokens: u64, output_tokens: u64) -> routing::Ask<'a> {
    routing::Ask { alias, origin, chat, prompt_tokens, output_tokens }
}

/// Takes in what the ledger said of containment after a request's screen: the isolate's memory
/// and the record (the contained scopes, and what the screen engaged — the containment event).
fn note_containment(ctx: &mut Ctx, contained: &Contained, tenant: &str, alias: &str, answer: Containment) {
    contained.remember(tenant, alias, &answer.scopes);
    if answer.is_empty() {
        return;
    }
    let record = ctx.record.containment.get_or_insert_with(Containment::default);
    record.scopes = answer.scopes;
    record.engaged.extend(answer.engaged);
}

/// A prompt screening not yet sent to the tenant's ledger.
struct PendingScreen {
    tenant: String,
    screen: Screen,
    contained: Contained,
}

/// Spans an isolate keeps between exports; older ones are dropped first.
const MAX_PENDING_SPANS: usize = 2_000;

/// How often an isolate sends its health observations to the location's board and reads it back.
pub const HEALTH_REFRESH_MS: u64 = 1_000;
/// Observations an isolate keeps while the board cannot be reached.
const MAX_PENDING_OBSERVATIONS: usize = 1_000;

/// An isolate's copy of its location's health board (see [`crate::health`]).
#[derive(Debug, Default)]
struct HealthView {
    board: Board,
    /// When the board was last read from the store.
    synced_ms: Option<u64>,
    /// Observations not yet sent to the store (already applied to `board`).
    pending: Vec<Observation>,
    syncing: bool,
    /// Why the isolate's first read of the board failed, for the record of the request that began
    /// it (taken when that request's dispatch ends).
    first_fault: Option<&'static str>,
    /// Requests whose plan waits for the first read.
    waiting: Vec<Waker>,
}

/// The isolate's first read of its location's health board, begun when a request that will be
/// routed arrives: it runs beside the policy read, authentication, the firewall and counting, and
/// that request's plan waits for it (see [`Gateway::plan`]). Dropped unfinished, it gives the read
/// back, so that a later request begins it again.
struct FirstRead<'a> {
    view: &'a RefCell<HealthView>,
    done: bool,
}

impl FirstRead<'_> {
    fn end(&mut self, outcome: Result<Board, &'static str>, now_ms: u64) {
        let mut view = self.view.borrow_mut();
        view.syncing = false;
        view.synced_ms = Some(now_ms);
        match outcome {
            Ok(board) => view.board = board,
            Err(fault) => view.first_fault = Some(fault),
        }
        view.waiting.drain(..).for_each(Waker::wake);
        self.done = true;
    }
}

impl Drop for FirstRead<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut view = self.view.borrow_mut();
            view.syncing = false;
            view.waiting.drain(..).for_each(Waker::wake);
        }
    }
}

/// Ready once the isolate's first read of the health board has ended (or was given back).
struct BoardRead<'a>(&'a RefCell<HealthView>);

impl Future for BoardRead<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut view = self.0.borrow_mut();
        if view.syncing && view.synced_ms.is_none() {
            view.waiting.push(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(())
    }
}

/// What a request reports about provider health when it is recorded.
struct HealthReport {
    view: Rc<RefCell<HealthView>>,
    board_id: String,
    breaker: BreakerSettings,
    refresh_ms: u64,
    route: String,
    attempts: Vec<(String, Outcome)>,
}

/// How often a queued reservation asks again, milliseconds.
const QUEUE_POLL_MS: u64 = 25;

/// The feedback endpoint's route template.
const FEEDBACK_ROUTE: &str = "POST /v1/feedback";

/// The endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Models,
    ChatCompletions,
    Messages,
    CountTokens,
    Embeddings,
    Feedback,
    Admin(&'static str),
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Health => "GET /healthz",
            Route::Models => "GET /v1/models",
            Route::ChatCompletions => "POST /v1/chat/completions",
            Route::Messages => "POST /v1/messages",
            Route::Embeddings => "POST /v1/embeddings",
            Route::CountTokens => "POST /v1/messages/count_tokens",
            Route::Feedback => FEEDBACK_ROUTE,
            Route::Admin(name) => name,
        }
    }

    /// Whether requests on this route are routed to a provider (and so read the health board).
    fn plans(self) -> bool {
        matches!(self, Route::ChatCompletions | Route::Messages | Route::CountTokens | Route::Embeddings)
    }

    /// The dialect the caller speaks on this route.
    fn dialect(self) -> &'static dyn Dialect {
        match self {
            Route::Messages | Route::CountTokens => &dialect::anthropic::Anthropic,
            Route::Health | Route::Models | Route::ChatCompletions | Route::Embeddings | Route::Feedback | Route::Admin(_) => {
                &dialect::openai::OpenAi
            }
        }
    }
}

/// Refuses a request whose headers exceed [`MAX_HEADERS`] fields or [`MAX_HEADER_BYTES`] bytes
/// (runtimes allow far more than any client of an LLM API needs).
fn headers_within_limits(headers: &http::HeaderMap) -> Result<(), Error> {
    if headers.len() > MAX_HEADERS {
        return Err(Error::new(
            ErrorKind::HeadersTooLarge,
            format!("the request has {} header fields; at most {MAX_HEADERS} are accepted", headers.len()),
        ));
    }
    let bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Error::new(
            ErrorKind::HeadersTooLarge,
            format!("the request's headers take {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        ));
    }
    Ok(())
}

fn route_of(method: &Method, path: &str) -> Result<Route, Error> {
    if path == "/admin" || path.starts_with("/admin/") {
        return admin::Endpoint::parse(method, path).map(|(e, _)| Route::Admin(e.name()));
    }
    let (route, allowed) = match path.trim_end_matches('/') {
        "/healthz" => (Route::Health, Method::GET),
        "/v1/models" => (Route::Models, Method::GET),
        "/v1/chat/completions" => (Route::ChatCompletions, Method::POST),
        "/v1/messages" => (Route::Messages, Method::POST),
        "/v1/embeddings" => (Route::Embeddings, Method::POST),
        "/v1/feedback" => (Route::Feedback, Method::POST),
        "/v1/messages/count_tokens" => (Route::CountTokens, Method::POST),
        _ => return Err(Error::new(ErrorKind::RouteNotFound, format!("no such endpoint: {path}"))),
    };
    if *method != allowed {
        return Err(Error::new(ErrorKind::MethodNotAllowed, format!("{path} accepts {allowed} only")));
    }
    Ok(route)
}

/// What is asked of the providers.
#[derive(Clone, Copy)]
enum Op<'a> {
    Chat(&'a ChatRequest),
    Embed(&'a EmbeddingsRequest),
    Count(&'a ChatRequest),
}

/// Per-request context, owned by the request and passed `&mut` to each step.
struct Ctx {
    record: RequestRecord,
    rate: Option<RateState>,
    account: Account,
    dialect: &'static dyn Dialect,
    health: Option<HealthReport>,
    shadow: Option<ShadowJob>,
    /// Phase 6, guard: personal data in the answer, when policy looks for it.
    guard: Option<crate::firewall::guard::OutputGuard>,
    /// The prompt's screening for containment, until a reservation or the record phase sends it.
    screen: Option<PendingScreen>,
    /// Where the record phase sends metrics, once a policy that names a collector is known.
    metrics: Option<MetricsJob>,
    /// What the record phase appends to the audit log, once a policy that keeps one is known.
    audit: Option<AuditJob>,
    /// A cache miss's answer, kept as it is sent for the record phase to store.
    cache: Option<crate::cache::Pending>,
    /// Whether the record phase logs the record (`settings.request_logs`).
    logs: crate::policy::RequestLogs,
    /// This request began the isolate's first read of the health board; its plan waits for it.
    first_read: bool,
}

/// The record phase's audit step: the request's entry (for model routes) or the admin action's.
struct AuditJob {
    retention_days: u32,
    /// An admin action's entry and the log it goes to; requests to `/admin` append nothing else.
    admin: Option<(String, crate::audit::Draft)>,
}

/// The record phase's metrics step: fold the record into the isolate's meter, and export when due.
struct MetricsJob {
    state: Rc<RefCell<MeterState>>,
    settings: TelemetrySettings,
    /// Export after every request (hosts without isolate memory).
    every_request: bool,
}

impl Ctx {
    /// Notes that phase `name` ran from `start_ms` to `end_ms` (a span of the request's trace).
    fn phase(&mut self, name: &'static str, start_ms: u64, end_ms: u64) {
        self.record.phases.push(crate::telemetry::PhaseTiming { name, start_ms, duration_ms: end_ms.saturating_sub(start_ms) });
    }
}

/// A sampled request's shadow: sent to `candidate` after the answer, compared with it.
struct ShadowJob {
    candidate: Candidate,
    /// The caller's request, as a non-stream request.
    chat: ChatRequest,
    timeouts: Timeouts,
    /// The text of the caller's answer, as it was relayed.
    primary_text: String,
}

/// What a successful dispatch produced.
enum Reply {
    Json(StatusCode, Bytes),
    /// An answer from the edge cache.
    Cached(crate::cache::Entry),
    Stream {
        upstream: ByteStream,
        decoder: Box<dyn StreamDecoder>,
        encoder: Box<dyn StreamEncoder>,
        held: Vec<StreamEvent>,
    },
}

impl Gateway {
    /// A gateway with an empty policy cache, for a host whose isolates serve many requests
    /// (Workers): health is synchronised with the location's board once a second.
    pub fn new() -> Self {
        Self::default()
    }

    /// A gateway for a host that starts a fresh instance per request (Spin): health is read from
    /// the location's board when the request is routed and written back when it is recorded.
    pub fn per_request() -> Self {
        Gateway { health_refresh_ms: 0, contained: Contained::default(), ..Self::default() }
    }

    /// Handles one request. Never fails: every error becomes a response in the caller's dialect.
    pub async fn handle<H: Host>(&self, host: &H, req: http::Request<Bytes>) -> http::Response<Body> {
        let start_ms = host.now_ms();
        let mut id = [0u8; 12];
        host.fill(&mut id);
        let path = req.uri().path();
        let route = if (path == "/admin" || path.starts_with("/admin/")) && !admin_api_on(host).await {
            Err(Error::new(
                ErrorKind::RouteNotFound,
                format!("the admin API is off on this deployment (set {ADMIN_API_SWITCH}=on to turn it on)"),
            ))
        } else {
            route_of(req.method(), path)
        };
        let dialect = route.as_ref().map_or(&dialect::openai::OpenAi as &dyn Dialect, |r| r.dialect());
        let route_name = route.as_ref().map_or("unmatched", |r| r.name());
        let route = route.and_then(|r| match req.extensions().get::<Unreadable>() {
            Some(Unreadable(why)) => Err(Error::new(ErrorKind::InvalidRequest, format!("the request could not be read: {why}"))),
            None => headers_within_limits(req.headers()).map(|()| r),
        });
        let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(crate::traces::parse_traceparent);
        let mut ids = [0u8; 24];
        host.fill(&mut ids);
        let (trace_bytes, span_bytes) = ids.split_at(16);
        let mut ctx = Ctx {
            record: RequestRecord {
                schema: RECORD_SCHEMA,
                request_id: format!("req_{}", hex(&id)),
                trace_id: parent.as_ref().map_or_else(|| hex(trace_bytes), |p| p.trace_id.clone()),
                span_id: hex(span_bytes),
                parent_span_id: parent.as_ref().map(|p| p.span_id.clone()),
                sampled: parent.as_ref().map(|p| p.sampled),
                phases: Vec::new(),
                start_ms,
                route: route_name,
                policy_version: None,
                policy_fault: None,
                tenant: None,
                key_id: None,
                model: None,
                feature: None,
                truncated_messages: None,
                overflow: None,
                routing: None,
                degraded: None,
                retry_budget_exhausted: false,
                stream: false,
                status: 0,
                error: None,
                attempts: Vec::new(),
                usage: None,
                cost_micro_usd: None,
                budget_alerts: Vec::new(),
                breaker_events: Vec::new(),
                health_fault: None,
                shadow: None,
                firewall: None,
                guard: None,
                containment: None,
                suspicious: None,
                first_chunk_ms: None,
                feedback: None,
                queued_ms: None,
                cache: None,
                credential_fallbacks: Vec::new(),
                audit: None,
                audit_fault: None,
                duration_ms: 0,
            },
            rate: None,
            account: Account::default(),
            health: None,
            shadow: None,
            guard: None,
            screen: None,
            metrics: None,
            audit: None,
            cache: None,
            logs: crate::policy::RequestLogs::All,
            dialect,
            first_read: false,
        };
        let outcome = match route {
            Ok(route) => match route.plans().then(|| self.first_read(host, &req)).flatten() {
                Some(read) => {
                    ctx.first_read = true;
                    let outcome = futures::future::join(read, self.dispatch(host, &mut ctx, route, req)).await.1;
                    // Recorded even when the request ended before its route phase.
                    ctx.record.health_fault = self.health.borrow_mut().first_fault.take();
                    outcome
                }
                None => self.dispatch(host, &mut ctx, route, req).await,
            },
            Err(e) => Err(e),
        };
        let (mut resp, stream) = match outcome {
            Ok(Reply::Json(status, body)) => {
                if let Some(pending) = ctx.cache.as_mut().filter(|_| status == StatusCode::OK) {
                    pending.push(&body);
                }
                (json_response(status, body), None)
            }
            Ok(Reply::Cached(entry)) => {
                let age = host.now_ms().saturating_sub(entry.stored_ms) / 1000;
                let mut resp = if entry.stream {
                    ctx.record.first_chunk_ms = Some(host.now_ms().saturating_sub(start_ms));
                    let mut resp = http::Response::new(Body::Stream(Box::pin(futures::stream::iter(entry.frames()))));
                    let h = resp.headers_mut();
                    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                    resp
                } else {
                    json_response(StatusCode::OK, entry.body)
                };
                resp.headers_mut().insert(http::header::AGE, HeaderValue::from(age));
                (resp, None)
            }
            Ok(Reply::Stream { upstream, decoder, encoder, held }) => {
                // The first content is in `held`: it goes out with the response head.
                ctx.record.first_chunk_ms = Some(host.now_ms().saturating_sub(start_ms));
                let mut resp = http::Response::new(Body::Full(Bytes::new()));
                let h = resp.headers_mut();
                h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                (resp, Some((upstream, decoder, encoder, held)))
            }
            Err(e) => {
                ctx.record.error = Some(e.metric_label());
                (error_response(&e, ctx.dialect), None)
            }
        };
        set_headers(&mut resp, &ctx);
        ctx.record.status = resp.status().as_u16();
        match stream {
            None => Finish::from(ctx).run(host),
            Some((upstream, decoder, encoder, held)) => {
                let mut relay = Relay {
                    upstream,
                    decoder,
                    encoder,
                    out: VecDeque::new(),
                    ended: false,
                    finisher: Some((host.clone(), Finish::from(ctx))),
                };
                relay.emit(held);
                *resp.body_mut() = Body::Stream(Box::pin(relay));
            }
        }
        resp
    }

    async fn dispatch<H: Host>(&self, host: &H, ctx: &mut Ctx, route: Route, req: http::Request<Bytes>) -> Result<Reply, Error> {
        if route == Route::Health {
            return Ok(Reply::Json(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)));
        }
        if let Route::Admin(_) = route {
            return self.admin(host, ctx, req).await;
        }
        let now_ms = host.now_ms();
        let (snapshot, fault) = self.snapshots.current(host, now_ms).await?;
        ctx.record.policy_fault = fault.map(|e| e.metric_label());
        ctx.record.policy_version = Some(snapshot.active.version.clone());

        let secret = phases::credential(req.headers())?;
        let (policy, principal) = match self.identify(host, &snapshot, secret, now_ms, Role::Invoke).await {
            Ok(found) => found,
            Err(e) => {
                // A known key that may not be used (expired, or without the role) is its tenant's
                // to audit; an unknown one is no one's.
                let known =
                    snapshot.active.key_by_secret(secret).or_else(|| snapshot.canary.as_ref().and_then(|(_, p)| p.key_by_secret(secret)));
                if let Some(key) = known {
                    ctx.record.tenant = Some(key.tenant.clone());
                    ctx.record.key_id = Some(key.id.clone());
                    ctx.audit = snapshot
                        .for_tenant(&key.tenant)
                        .audit_retention_days()
                        .map(|retention_days| AuditJob { retention_days, admin: None });
                }
                return Err(e);
            }
        };
        ctx.record.policy_version = Some(policy.version.clone());
        ctx.audit = policy.audit_retention_days().map(|retention_days| AuditJob { retention_days, admin: None });
        ctx.logs = policy.request_logs();
        ctx.metrics = policy.telemetry().map(|settings| MetricsJob {
            state: Rc::clone(&self.meter),
            settings: settings.clone(),
            every_request: self.health_refresh_ms == 0,
        });
        ctx.record.tenant = Some(principal.tenant.id.clone());
        ctx.record.key_id = Some(principal.key.id.clone());

        if route == Route::Feedback {
            return self.feedback(host, ctx, &snapshot, &policy, &principal, req.body()).await;
        }

        if route == Route::Models {
            let data: Vec<_> = policy
                .aliases()
                .filter(|a| principal.key.may_use(a) && principal.tenant.may_use(a))
                .map(|a| serde_json::json!({"id": a, "object": "model", "created": 0, "owned_by": "edgegate"}))
                .collect();
            return Ok(Reply::Json(StatusCode::OK, Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())));
        }

        if req.body().len() > MAX_REQUEST_BYTES {
            return Err(Error::new(ErrorKind::PayloadTooLarge, format!("request body exceeds {MAX_REQUEST_BYTES} bytes")));
        }

        let origin = routing::origin(req.extensions().get::<Origin>(), req.headers(), principal.key.roles)?;

        // The firewall policy for a model alias: the route's, then the tenant's, then the
        // gateway's — under the containment firewall while the tenant or route is contained.
        let firewall = |alias: &str, contained: bool| {
            let containment = policy.containment().filter(|_| contained).map(|c| &c.firewall);
            crate::firewall::Effective::resolve(
                &[
                    containment,
                    policy.route(alias).and_then(|r| r.firewall.as_ref()),
                    principal.tenant.firewall.as_ref(),
                    policy.firewall(),
                ],
                policy.rule_sets(),
            )
        };
        // The validate phase's firewall step for a request on `alias`: under the containment
        // firewall if the scope is known contained; the screening is kept for the ledger.
        let tenant = principal.tenant.id.as_str();
        let screen = |ctx: &mut Ctx, alias: &str, verdict: &crate::firewall::Verdict, normal: &crate::firewall::Effective| {
            ctx.record.firewall = verdict.action.is_some().then(|| verdict.clone());
            if normal.injection == crate::firewall::Action::Off {
                return;
            }
            let suspicious = verdict.score >= normal.threshold;
            ctx.record.suspicious = Some(suspicious);
            if let Some(c) = policy.containment() {
                let screen = Screen { route: alias.to_owned(), suspicious, rule: c.rule, clean_before: 0 };
                ctx.screen = Some(PendingScreen { tenant: tenant.to_owned(), screen, contained: self.contained.clone() });
            }
        };
        // The containment firewall when the scope is known contained, and the normal one.
        let rules_for = |ctx: &mut Ctx, alias: &str| {
            let scopes = self.contained.scopes(tenant, alias);
            if scopes.is_empty() {
                return (None, firewall(alias, false));
            }
            ctx.record.containment = Some(Containment { scopes, engaged: Vec::new() });
            (Some(firewall(alias, true)), firewall(alias, false))
        };

        if route == Route::Embeddings {
            let mut embed = EmbeddingsRequest::parse(req.body())?;
            ctx.record.model = Some(embed.model.clone());
            let (strict, normal) = rules_for(ctx, &embed.model);
            let rules = strict.as_ref().unwrap_or(&normal);
            let (verdict, allowed) = crate::firewall::enforce_embeddings(&mut embed, rules, req.body());
            screen(ctx, &embed.model, &verdict, &normal);
            allowed?;
            let embed = embed;
            let tokens = embed.input_tokens(policy.encoding(&embed.model));
            let feature = phases::feature(&principal.tenant, req.headers(), embed.extra.get("metadata"));
            ctx.record.feature = feature.map(str::to_owned);
            let scope = phases::Scope { alias: &embed.model, feature };
            phases::cap_prompt(&policy, &principal, scope, tokens, "input")?;
            let plan = self.plan(host, ctx, &policy, &principal, ask(&origin, &embed.model, None, tokens, 0)).await?;
            self.admit(host, ctx, &policy, &principal, scope, &plan.candidates, phases::ask(&plan.candidates, tokens, 0)).await?;
            return self.call_upstream(host, ctx, Op::Embed(&embed), &policy, &plan).await;
        }

        if route == Route::CountTokens {
            let mut chat = dialect::anthropic::parse_count_tokens(req.body())?;
            ctx.record.model = Some(chat.model.clone());
            // Counting sends the prompt to a provider too: the same firewall applies.
            let (strict, normal) = rules_for(ctx, &chat.model);
            let rules = strict.as_ref().unwrap_or(&normal);
            let (verdict, allowed) = crate::firewall::enforce(&mut chat, rules, req.body());
            screen(ctx, &chat.model, &verdict, &normal);
            allowed?;
            let chat = chat;
            let scope = phases::Scope { alias: &chat.model, feature: phases::feature(&principal.tenant, req.headers(), None) };
            self.admit(host, ctx, &policy, &principal, scope, &[], Amounts::default()).await?;
            let mut plan = self.plan(host, ctx, &policy, &principal, ask(&origin, &chat.model, Some(&chat), 0, 0)).await;
            if let Ok(plan) = &mut plan {
                let healthy =
                    plan.candidates[..plan.healthy].iter().filter(|c| providers::adapter(c.provider.kind).counts_tokens()).count();
                plan.candidates.retain(|c| providers::adapter(c.provider.kind).counts_tokens());
                plan.healthy = healthy;
            }
            // Exactly, by the first allowed provider that can count; otherwise (or if they all
            // fail) an estimate, so the endpoint answers for every model.
            if let Ok(plan) = plan
                && !plan.candidates.is_empty()
                && let Ok(reply) = self.call_upstream(host, ctx, Op::Count(&chat), &policy, &plan).await
            {
                return Ok(reply);
            }
            let estimate = serde_json::json!({"input_tokens": chat.prompt_tokens(policy.encoding(&chat.model))});
            return Ok(Reply::Json(StatusCode::OK, Bytes::from(estimate.to_string())));
        }

        let t = host.now_ms();
        let parsed = phases::validate(ctx.dialect, req.body());
        ctx.phase("gateway.normalize_prompt", t, host.now_ms());
        let mut chat = parsed?;
        ctx.record.model = Some(chat.model.clone());
        ctx.record.stream = chat.is_stream();
        // The firewall (phase 2, validate): every text the model will read.
        let t = host.now_ms();
        let (strict, normal) = rules_for(ctx, &chat.model);
        let rules = strict.as_ref().unwrap_or(&normal);
        let known_contained = ctx.record.containment.is_some();
        let (verdict, allowed) = crate::firewall::enforce(&mut chat, rules, req.body());
        screen(ctx, &chat.model, &verdict, &normal);
        ctx.phase("policy.firewall", t, host.now_ms());
        allowed?;
        ctx.guard = rules.output_guard(&chat);
        let prompt = chat.prompt_tokens(policy.encoding(&chat.model));
        let feature = phases::feature(&principal.tenant, req.headers(), chat.extra.get("metadata"));
        ctx.record.feature = feature.map(str::to_owned);
        let caps = phases::cap(&policy, &principal, feature, &mut chat, prompt)?;
        let (prompt, output) = (caps.prompt_tokens, caps.output_tokens);
        ctx.record.truncated_messages = (caps.dropped_messages > 0).then_some(caps.dropped_messages);
        // The edge cache: a fresh answer to the same request, of this tenant under this policy
        // version, skips the ledger, routing and the provider.
        if let Some(rule) = policy.route(&chat.model).and_then(|r| r.cache)
            && let Some(hit) = self.cached(host, ctx, &rule, tenant, &policy.version, &chat, req.headers()).await
        {
            return Ok(Reply::Cached(hit));
        }
        let t = host.now_ms();
        let plan = self.plan(host, ctx, &policy, &principal, ask(&origin, &chat.model, Some(&chat), prompt, output)).await;
        ctx.phase("router.route_decision", t, host.now_ms());
        let plan = plan?;
        let scope = phases::Scope { alias: &chat.model, feature };
        let ask_for = |plan: &Plan| phases::ask(&plan.candidates, prompt, output);
        let t = host.now_ms();
        let admitted = self.admit(host, ctx, &policy, &principal, scope, &plan.candidates, ask_for(&plan)).await;
        ctx.phase("router.policy_eval", t, host.now_ms());
        let (alias, plan) = match admitted {
            // A refused request goes to the alias's overflow route, if it has one the caller may use.
            Err(refused) if matches!(refused.kind, ErrorKind::RateLimited { .. } | ErrorKind::BudgetExceeded { .. }) => {
                match policy.overflow(&chat.model) {
                    Some(over) => {
                        let plan = self
                            .plan(host, ctx, &policy, &principal, ask(&origin, over, Some(&chat), prompt, output))
                            .await
                            .map_err(|_| refused)?;
                        let scope = phases::Scope { alias: over, feature };
                        self.admit(host, ctx, &policy, &principal, scope, &plan.candidates, ask_for(&plan)).await?;
                        ctx.record.overflow = Some(over.to_owned());
                        (over.to_owned(), plan)
                    }
                    None => return Err(refused),
                }
            }
            admitted => {
                admitted?;
                (chat.model.clone(), plan)
            }
        };
        // Admission found the scope contained (this request may have tripped it): the
        // containment firewall screens the prompt now.
        if !known_contained && ctx.record.containment.as_ref().is_some_and(|c| !c.scopes.is_empty()) {
            let strict = firewall(&chat.model, true);
            // Judged on the prompt as sent (the first pass may have cut out what blocks it now),
            // then applied to the prompt as it goes on.
            let mut original = phases::validate(ctx.dialect, req.body())?;
            let (verdict, allowed) = crate::firewall::enforce(&mut original, &strict, req.body());
            if allowed.is_ok() {
                let (verdict, allowed) = crate::firewall::enforce(&mut chat, &strict, req.body());
                if verdict.action.is_some() {
                    ctx.record.firewall = Some(verdict);
                }
                allowed?;
            } else {
                ctx.record.firewall = Some(verdict);
                allowed?;
            }
        }
        let chat = chat;
        let alias = alias.as_str();

        let mut random = [0u8; 8];
        host.fill(&mut random);
        if let Some(candidate) =
            routing::shadow(&policy, &principal, ask(&origin, alias, Some(&chat), prompt, output), u64::from_le_bytes(random))
        {
            let mut mirrored = chat.clone();
            mirrored.stream = None;
            mirrored.extra.remove("stream_options");
            let timeouts = policy.route(alias).map(|r| r.timeouts).unwrap_or_default();
            ctx.shadow = Some(ShadowJob { candidate, chat: mirrored, timeouts, primary_text: String::new() });
        }
        let failed = match self.call_upstream(host, ctx, Op::Chat(&chat), &policy, &plan).await {
            // Guard (phase 6) has no response rules yet; they will wrap the reply returned here.
            Ok(reply) => return Ok(reply),
            Err(e) if e.side() == Side::Downstream => return Err(e),
            Err(e) => e,
        };
        // Every candidate failed. Providers that refused for quota send the request to the
        // alias's overflow route; a non-critical route answers in degraded mode.
        let quota = matches!(failed.kind, ErrorKind::UpstreamRateLimited { .. })
            || ctx.record.attempts.iter().any(|a| a.error == Some("upstream_rate_limited"));
        if quota
            && ctx.record.overflow.is_none()
            && let Some(over) = policy.overflow(alias)
            && let Ok(plan) = self.plan(host, ctx, &policy, &principal, ask(&origin, over, Some(&chat), prompt, output)).await
        {
            ctx.record.overflow = Some(over.to_owned());
            self.account_for(ctx, &plan);
            return self.call_upstream(host, ctx, Op::Chat(&chat), &policy, &plan).await;
        }
        match policy.route(alias).and_then(|r| r.degraded.as_ref()) {
            Some(Degraded::Alias(cheaper)) => {
                let Ok(plan) = self.plan(host, ctx, &policy, &principal, ask(&origin, cheaper, Some(&chat), prompt, output)).await else {
                    return Err(failed);
                };
                ctx.record.degraded = Some("alias");
                self.account_for(ctx, &plan);
                self.call_upstream(host, ctx, Op::Chat(&chat), &policy, &plan).await.map_err(|_| failed)
            }
            Some(Degraded::Reply(text)) => {
                ctx.record.degraded = Some("reply");
                self.canned(host, ctx, &chat, text).await
            }
            None => Err(failed),
        }
    }

    /// Phase 4, **route**: the plan for `ask` (see [`routing::plan`]) over this location's health
    /// board. An isolate's first read of it began when the request arrived ([`Gateway::first_read`]),
    /// and the request that began it waits for it here. The decision goes into the record;
    /// an empty plan (residency removed every candidate) is `residency_unavailable`.
    async fn plan<H: Host>(
        &self,
        host: &H,
        ctx: &mut Ctx,
        policy: &Policy,
        principal: &phases::Principal,
        ask: routing::Ask<'_>,
    ) -> Result<Plan, Error> {
        let board_id = health::board_id(ask.origin.colo.as_deref());
        if ctx.first_read {
            BoardRead(&self.health).await;
        }
        let mut random = [0u8; 8];
        host.fill(&mut random);
        let plan = {
            let view = self.health.borrow();
            routing::plan(policy, principal, ask, &view.board, host.now_ms(), u64::from_le_bytes(random))?
        };
        ctx.record.routing = Some(plan.decision.clone());
        if plan.candidates.is_empty() && plan.decision.quiet.is_empty() {
            return Err(routing::residency_error(&plan.decision, &[]));
        }
        let report = ctx.health.get_or_insert_with(|| HealthReport {
            view: Rc::clone(&self.health),
            board_id,
            breaker: *policy.breaker(),
            refresh_ms: self.health_refresh_ms,
            route: String::new(),
            attempts: Vec::new(),
        });
        report.route = ask.alias.to_owned();
        Ok(plan)
    }

    /// The isolate's first read of its location's health board, if no request has begun it (see
    /// [`FirstRead`]). The location is the one the runtime served the request from; an asserted
    /// origin changes country and continent, never the location.
    fn first_read<'a, H: Host>(&'a self, host: &'a H, req: &http::Request<Bytes>) -> Option<impl Future<Output = ()> + 'a> {
        {
            let mut view = self.health.borrow_mut();
            if view.synced_ms.is_some() || view.syncing {
                return None;
            }
            view.syncing = true;
        }
        let board_id = health::board_id(req.extensions().get::<Origin>().and_then(|o| o.colo.as_deref()));
        let mut claim = FirstRead { view: &self.health, done: false };
        Some(async move {
            // A read applies no observations, so no breaker thresholds are needed.
            let read = host.apply(&board_id, LedgerOp::Health { observations: Vec::new(), breaker: BreakerSettings::default() }).await;
            let outcome = match read {
                Ok(LedgerAnswer::Health { board, .. }) => Ok(board),
                Ok(_) => Err("internal_error"),
                Err(e) => Err(e.metric_label()),
            };
            claim.end(outcome, host.now_ms());
        })
    }

    /// Adds the prices of a later plan (overflow, degraded) to the request's account, so its cost
    /// is known whichever candidate answers.
    fn account_for(&self, ctx: &mut Ctx, plan: &Plan) {
        let priced = plan.candidates.iter().filter_map(|c| c.target.price.map(|p| (c.provider.id.clone(), c.target.model.clone(), p)));
        ctx.account.prices.extend(priced);
    }

    /// A non-critical route's degraded reply: the fixed text, rendered like a provider's answer
    /// (JSON or a stream) through the built-in provider.
    async fn canned<H: Host>(&self, host: &H, ctx: &mut Ctx, chat: &ChatRequest, text: &str) -> Result<Reply, Error> {
        let provider = crate::policy::Provider {
            id: "degraded".into(),
            kind: ProviderKind::Mock,
            base_url: String::new(),
            api_key_secret: None,
            api_key_secret_secondary: None,
            api_version: None,
            region: None,
            quirks: crate::policy::Quirks::default(),
            location: routing::Location::default(),
        };
        let target = crate::policy::Target { provider: "degraded".into(), model: chat.model.clone(), ..Default::default() };
        let adapter = providers::adapter(ProviderKind::Mock);
        let request = adapter.chat_request(&provider, &target, chat, None)?;
        let response = providers::mock::canned(&request, text, host.now_ms() / 1000, &format!("chatcmpl-{}", ctx.record.request_id));
        self.answer(host, ctx, Op::Chat(chat), &provider, response).await.map(|(_, reply)| reply).map_err(|(_, e)| e)
    }

    /// Phase 3, **admit**: reserves one request and `ask` against every limit that applies to the
    /// principal in `scope`, in its tenant's ledger, all or nothing. The hold is settled when the
    /// request is recorded, at the price of the `plan` candidate that served it.
    #[allow(clippy::too_many_arguments)]
    async fn admit<H: Host>(
        &self,
        host: &H,
        ctx: &mut Ctx,
        policy: &Policy,
        principal: &phases::Principal,
        scope: phases::Scope<'_>,
        plan: &[Candidate],
        ask: Amounts,
    ) -> Result<(), Error> {
        ctx.account.prices =
            plan.iter().filter_map(|c| c.target.price.map(|p| (c.provider.id.clone(), c.target.model.clone(), p))).collect();
        let mut limits = phases::limits(policy, principal, scope);
        if limits.is_empty() {
            // No reservation to carry the screening: a host with no isolate memory (Spin) sends
            // it now, so containment applies to this request; others send it when recording.
            if self.health_refresh_ms == 0
                && let Some(pending) = ctx.screen.take()
            {
                let route = pending.screen.route.clone();
                let answer = host.apply(&pending.tenant, LedgerOp::Screen { screen: pending.screen }).await;
                if let Ok(LedgerAnswer::Screened { containment }) = answer {
                    note_containment(ctx, &pending.contained, &pending.tenant, &route, containment);
                }
            }
            return Ok(());
        }
        let tenant = principal.tenant.id.clone();
        let pending = ctx.screen.take();
        let mut screen = pending.as_ref().map(|p| {
            // The reservation carries the screening, and with it the clean ones held back.
            let mut screen = p.screen.clone();
            p.contained.1.take(&p.tenant, &mut screen);
            screen
        });
        // A route with a queue waits in turn for room under per-minute and concurrency limits.
        let started = host.now_ms();
        let queue_ms = policy.route(scope.alias).map_or(0, |r| r.queue_ms);
        let queue_until_ms = (queue_ms > 0).then_some(started + queue_ms);
        // A split ledger: start in a random book and, when it has no room, try the others in turn.
        let shards = principal.tenant.ledger_shards.max(1);
        let home = if shards > 1 {
            let mut b = [0u8; 2];
            host.fill(&mut b);
            u16::from_le_bytes(b) % shards
        } else {
            0
        };
        let mut polls = 0u32;
        let (book, answer) = loop {
            let mut swept: Option<(String, LedgerAnswer)> = None;
            for i in 0..shards {
                let k = (home + i) % shards;
                // The screening is observed once, with the first attempt. Only a reservation that
                // may be sent again (queued, or split) needs the limits kept.
                let share = if shards > 1 {
                    crate::ledger::shard_limits(&limits, shards, k)
                } else if queue_until_ms.is_some() {
                    limits.clone()
                } else {
                    std::mem::take(&mut limits)
                };
                let op = LedgerOp::Reserve { id: ctx.record.request_id.clone(), limits: share, ask, screen: screen.take(), queue_until_ms };
                let book = crate::ledger::shard_book(&tenant, k);
                let mut answer = host.apply(&book, op).await?;
                if shards > 1 {
                    crate::ledger::unshard(&mut answer, &limits, shards);
                }
                if let LedgerAnswer::Admitted { containment, .. }
                | LedgerAnswer::Refused { containment, .. }
                | LedgerAnswer::Queued { containment, .. } = &answer
                    && let Some(p) = &pending
                    && polls == 0
                    && i == 0
                {
                    note_containment(ctx, &p.contained, &tenant, &p.screen.route, containment.clone());
                }
                let refused = matches!(answer, LedgerAnswer::Refused { .. });
                if let LedgerAnswer::Refused { alerts, .. } = &answer {
                    ctx.record.budget_alerts.extend(alerts.iter().cloned());
                }
                // The first refusal speaks for the sweep if every book refuses.
                if !refused || swept.is_none() {
                    swept = Some((book, answer));
                }
                if !refused {
                    break;
                }
            }
            let Some((book, answer)) = swept else { return Err(Error::new(ErrorKind::Internal, "no ledger book was asked")) };
            let now = host.now_ms();
            let wait = match (&answer, queue_until_ms) {
                (LedgerAnswer::Queued { .. }, Some(until)) => QUEUE_POLL_MS.min(until.saturating_sub(now)),
                (LedgerAnswer::Refused { state, .. }, Some(until))
                    if state.limit.meter == crate::ledger::Meter::Concurrent || state.limit.window == crate::ledger::Window::Minute =>
                {
                    // A minute window frees room when it resets; a concurrency slot when a request ends.
                    let room_at = if state.limit.meter == crate::ledger::Meter::Concurrent { now + QUEUE_POLL_MS } else { state.reset_ms };
                    if room_at >= until { 0 } else { room_at.saturating_sub(now).clamp(1, QUEUE_POLL_MS) }
                }
                _ => 0,
            };
            if wait == 0 || now >= queue_until_ms.unwrap_or(0) {
                break (book, answer);
            }
            host.sleep(wait).await;
            polls += 1;
        };
        if queue_until_ms.is_some() && polls > 0 {
            ctx.record.queued_ms = Some(host.now_ms().saturating_sub(started));
        }
        let (state, admitted) = phases::admit(answer, host.now_ms());
        ctx.rate = Some(state);
        admitted?;
        ctx.account.hold = Some((book, ask));
        Ok(())
    }

    /// The cache step of a request on a route with a cache `rule`: the entry to answer with, or
    /// `None` — a bypass, or a miss whose answer the record phase will store. A cache that cannot
    /// be read is a miss.
    #[allow(clippy::too_many_arguments)]
    async fn cached<H: Host>(
        &self,
        host: &H,
        ctx: &mut Ctx,
        rule: &crate::cache::Rule,
        tenant: &str,
        version: &str,
        chat: &ChatRequest,
        headers: &http::HeaderMap,
    ) -> Option<crate::cache::Entry> {
        use crate::cache::{CacheRecord, Entry, Pending};
        if !crate::cache::wanted(rule, chat, headers) {
            ctx.record.cache = Some(CacheRecord { status: "bypass", ..CacheRecord::default() });
            return None;
        }
        let key = crate::cache::key(tenant, version, ctx.record.route, chat);
        let t = host.now_ms();
        let found = host.cache_get(&key).await;
        ctx.phase("cache.lookup", t, host.now_ms());
        let mut record = CacheRecord { status: "miss", ..CacheRecord::default() };
        match found {
            Ok(Some(bytes)) => {
                if let Some(entry) = Entry::decode(&bytes, host.now_ms()) {
                    record.status = "hit";
                    record.saved_micro_usd = entry.cost_micro_usd;
                    record.saved_tokens = entry.usage.map(|u| u.prompt_tokens() + u.completion_tokens());
                    record.age_s = Some(host.now_ms().saturating_sub(entry.stored_ms) / 1000);
                    ctx.record.usage = None;
                    ctx.record.cache = Some(record);
                    return Some(entry);
                }
            }
            Ok(None) => {}
            Err(e) => record.fault = Some(e.metric_label()),
        }
        ctx.record.cache = Some(record);
        ctx.cache = Some(Pending { key, ttl_seconds: rule.ttl_seconds, stream: chat.is_stream(), parts: Vec::new(), size: 0 });
        None
    }

    /// Phase 1, **authenticate**, for both kinds of credential: API keys (see
    /// [`phases::authenticate`]) and JSON Web Tokens of a trusted issuer, verified by the host's
    /// [`crate::ports::TokenVerifier`]. A token is verified against the active policy's issuer
    /// entry; if its tenant is in a canary, again against the canary's, which decides.
    async fn identify<H: Host>(
        &self,
        host: &H,
        snapshot: &Snapshot,
        credential: &str,
        now_ms: u64,
        needs: Role,
    ) -> Result<(Rc<Policy>, phases::Principal), Error> {
        if !jwt::looks_like_jwt(credential) {
            return phases::authenticate(snapshot, credential, now_ms, needs);
        }
        let iss = jwt::claimed_issuer(credential)?;
        let verify = async |policy: &Rc<Policy>| -> Result<(Rc<Policy>, phases::Principal), Error> {
            let issuer = policy
                .issuer(&iss)
                .ok_or_else(|| Error::new(ErrorKind::InvalidToken, format!("tokens of issuer {iss:?} are not accepted")))?;
            let hmac_key = match &issuer.hmac_secret {
                None => None,
                Some(name) => Some(host.secret(name).await?.ok_or_else(|| {
                    Error::new(ErrorKind::SecretMissing, format!("the HS256 key `{name}` of issuer {iss:?} is not configured"))
                })?),
            };
            let claims = host
                .verify_jwt(credential, issuer, hmac_key.as_deref().map(str::as_bytes), now_ms / 1000)
                .map_err(|why| Error::new(ErrorKind::InvalidToken, format!("invalid token: {why}")))?;
            Ok((Rc::clone(policy), phases::token_principal(policy, issuer, &claims, needs)?))
        };
        let found = match (verify(&snapshot.active).await, snapshot.canary.as_ref()) {
            (Ok(found), _) => found,
            (Err(e), None) => return Err(e),
            // A token only the canary's issuer entry accepts counts for the canary's tenants.
            (Err(e), Some((_, canary))) => match verify(canary).await {
                Ok(found) if Rc::ptr_eq(snapshot.for_tenant(&found.1.tenant.id), canary) => return Ok(found),
                _ => return Err(e),
            },
        };
        let chosen = snapshot.for_tenant(&found.1.tenant.id);
        if Rc::ptr_eq(chosen, &found.0) {
            return Ok(found);
        }
        verify(chosen).await
    }

    /// `POST /v1/feedback`: scores an answer of the caller's tenant (found in its audit log, once
    /// per request), tallies it for the policy version and route that produced it, and ends that
    /// version's canary when its mean falls below the quality SLO over enough scores.
    async fn feedback<H: Host>(
        &self,
        host: &H,
        ctx: &mut Ctx,
        snapshot: &crate::snapshot::Snapshot,
        policy: &Policy,
        principal: &phases::Principal,
        body: &[u8],
    ) -> Result<Reply, Error> {
        use crate::audit::{AuditAnswer, AuditOp, Draft, Query};
        let started = host.now_ms();
        let feedback = crate::feedback::Feedback::parse(body)?;
        let retention_days = policy.audit_retention_days().ok_or_else(|| {
            Error::new(ErrorKind::Conflict, "feedback needs the audit log, which this policy turns off (`settings.audit`)")
        })?;
        let tenant = principal.tenant.id.as_str();
        let query = Query { request_id: Some(feedback.request_id.clone()), ..Query::default() };
        let entries = match host.audit(tenant, AuditOp::Search { query }).await? {
            AuditAnswer::Page { entries, .. } => entries,
            _ => return Err(Error::new(ErrorKind::Internal, "the audit log did not answer a search")),
        };
        let judged = crate::feedback::judged(&feedback.request_id, &entries)?;
        ctx.record.model = Some(judged.route.clone());
        let op =
            LedgerOp::Feedback { route: judged.route.clone(), score_permille: feedback.score_permille(), escalated: feedback.escalated };
        let (route_quality, total) = match host.apply(&crate::ledger::quality_book(&judged.version), op).await? {
            LedgerAnswer::Quality { route, total } => (route, total),
            _ => return Err(Error::new(ErrorKind::Internal, "the counter store did not answer a feedback")),
        };
        let now_ms = host.now_ms();
        let draft = Draft {
            at_ms: now_ms,
            kind: "feedback".into(),
            outcome: "recorded".into(),
            request_id: Some(feedback.request_id.clone()),
            policy_version: Some(judged.version.clone()),
            actor: Some(principal.key.id.clone()),
            decisions: Vec::new(),
            rules: Vec::new(),
            detail: serde_json::json!({"route": judged.route, "score": feedback.score, "label": feedback.label,
                "escalated": feedback.escalated, "feedback_request_id": ctx.record.request_id}),
            spend: None,
        };
        host.audit(tenant, AuditOp::Append { drafts: vec![draft], retention_days }).await?;
        // The gateway's SLO is the active policy's: a canary does not set the bar it is held to.
        let settings = *snapshot.active.quality();
        let canary = snapshot.canary.as_ref().map(|(pointer, _)| pointer.version.clone());
        let mut rolled_back = None;
        if settings.auto_rollback && canary.as_deref() == Some(judged.version.as_str()) && crate::feedback::below_slo(&total, &settings) {
            let mean = total.mean_permille().unwrap_or(0);
            let note = format!(
                "quality {}.{:03} below the SLO {}.{:03} over {} scores",
                mean / 1000,
                mean % 1000,
                settings.slo_permille / 1000,
                settings.slo_permille % 1000,
                total.count
            );
            let actor = admin::Actor { name: "edgegate:quality".into(), now_ms };
            if let Some(aborted) = admin::abort_canary(host, Some(&judged.version), &actor, &note).await? {
                let draft = Draft {
                    at_ms: now_ms,
                    kind: "canary".into(),
                    outcome: "rollback".into(),
                    request_id: Some(ctx.record.request_id.clone()),
                    policy_version: Some(aborted.version.clone()),
                    actor: Some(actor.name.clone()),
                    decisions: Vec::new(),
                    rules: Vec::new(),
                    detail: serde_json::json!({"note": note, "mean_permille": mean, "scores": total.count,
                        "slo_permille": settings.slo_permille, "min_feedback": settings.min_feedback}),
                    spend: None,
                };
                host.audit(crate::audit::ADMIN_LOG, AuditOp::Append { drafts: vec![draft], retention_days }).await?;
                rolled_back = Some(aborted.version);
            }
        }
        ctx.phase("response.feedback", started, host.now_ms());
        ctx.record.feedback = Some(crate::feedback::FeedbackRecord {
            request_id: feedback.request_id.clone(),
            route: judged.route.clone(),
            policy_version: judged.version.clone(),
            score_permille: feedback.score_permille(),
            escalated: feedback.escalated,
            total,
            canary_rolled_back: rolled_back.clone(),
        });
        let mean = |q: &crate::ledger::Quality| q.mean_permille().map(|m| m as f64 / 1000.0);
        let body = serde_json::json!({
            "object": "feedback",
            "request_id": feedback.request_id,
            "score": feedback.score,
            "quality": {"policy_version": judged.version, "route": judged.route, "route_mean": mean(&route_quality),
                "route_scores": route_quality.count, "version_mean": mean(&total), "version_scores": total.count},
            "canary_rolled_back": rolled_back,
        });
        Ok(Reply::Json(StatusCode::OK, Bytes::from(body.to_string())))
    }

    /// The `/admin` API: authenticates an admin key (or the host's bootstrap key) for the role the
    /// endpoint needs, then runs the operation against the policy store.
    async fn admin<H: Host>(&self, host: &H, ctx: &mut Ctx, req: http::Request<Bytes>) -> Result<Reply, Error> {
        let (endpoint, needs) = admin::Endpoint::parse(req.method(), req.uri().path())?;
        let now_ms = host.now_ms();
        let secret = phases::credential(req.headers())?;
        let snapshot = self.snapshots.current(host, now_ms).await;
        let mut breaker = BreakerSettings::default();
        // Admin actions are audited unless the active policy turns the log off (and, before
        // the first policy, with the default retention).
        let mut retention = Some(crate::audit::DEFAULT_RETENTION_DAYS);
        if let Ok((s, fault)) = &snapshot {
            ctx.record.policy_version = Some(s.active.version.clone());
            ctx.record.policy_fault = fault.as_ref().map(Error::metric_label);
            breaker = *s.active.breaker();
            retention = s.active.audit_retention_days();
        }
        ctx.audit = retention.map(|retention_days| AuditJob { retention_days, admin: None });
        // A tenant's ledger is read and changed in every book it is split into.
        let shards = snapshot
            .as_ref()
            .ok()
            .and_then(|(s, _)| match &endpoint {
                admin::Endpoint::Usage(t) | admin::Endpoint::ClearContainment(t) => s.active.tenant(t).map(|t| t.ledger_shards),
                _ => None,
            })
            .unwrap_or(1)
            .max(1);
        let actor = match bootstrap_admin(host, secret).await? {
            Some(roles) if roles.has(needs) => "bootstrap".to_owned(),
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("the bootstrap key does not have the `{}` role", needs.name()),
                ));
            }
            None => {
                // With no usable policy, only the bootstrap key can act (to publish the first one).
                let (snapshot, _) = snapshot?;
                let (_, principal) = self.identify(host, &snapshot, secret, now_ms, needs).await?;
                ctx.record.tenant = Some(principal.tenant.id.clone());
                principal.key.id.clone()
            }
        };
        ctx.record.key_id = Some(actor.clone());
        let mut random = [0u8; 32];
        host.fill(&mut random);
        let actor = admin::Actor { name: actor, now_ms };
        if let admin::Endpoint::Usage(tenant) = &endpoint {
            let mut whole = crate::ledger::Book::default();
            for k in 0..shards {
                match host.apply(&crate::ledger::shard_book(tenant, k), LedgerOp::Inspect).await? {
                    LedgerAnswer::Book { book } if k == 0 => whole = book,
                    LedgerAnswer::Book { book } => whole.absorb(book),
                    _ => return Err(Error::new(ErrorKind::Internal, "the ledger did not answer an inspection")),
                }
            }
            let body = serde_json::json!({"tenant": tenant, "ledger": whole, "shards": shards, "at_ms": now_ms});
            return Ok(Reply::Json(StatusCode::OK, Bytes::from(body.to_string())));
        }
        if let admin::Endpoint::ClearContainment(tenant) = &endpoint {
            #[derive(serde::Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct Clear {
                route: Option<String>,
                #[serde(default)]
                note: String,
            }
            let clear: Clear = if req.body().is_empty() {
                Clear::default()
            } else {
                serde_json::from_slice(req.body())
                    .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("invalid body: {e}")).with_param("route"))?
            };
            let scope = clear.route.map(|r| format!("route:{r}"));
            let mut cleared = Vec::new();
            for k in 0..shards {
                let op = LedgerOp::Clear { scope: scope.clone(), by: actor.name.clone(), note: clear.note.clone() };
                match host.apply(&crate::ledger::shard_book(tenant, k), op).await? {
                    LedgerAnswer::Cleared { scopes } => cleared.extend(scopes),
                    _ => return Err(Error::new(ErrorKind::Internal, "the ledger did not answer a containment change")),
                }
            }
            cleared.sort_unstable();
            cleared.dedup();
            self.contained.0.borrow_mut().remove(tenant.as_str());
            if let Some(unsent) = &self.contained.1.0 {
                unsent.borrow_mut().retain(|(t, _), _| t != tenant);
            }
            let body = serde_json::json!({"tenant": tenant, "cleared": cleared, "by": actor.name, "at_ms": now_ms});
            note_admin_action(ctx, &endpoint, req.body(), &body, &actor);
            return Ok(Reply::Json(StatusCode::OK, Bytes::from(body.to_string())));
        }
        if let admin::Endpoint::Health(location) = &endpoint {
            let id = health::board_id(Some(location).filter(|l| *l != "default").map(String::as_str));
            return match host.apply(&id, LedgerOp::Health { observations: Vec::new(), breaker }).await? {
                LedgerAnswer::Health { board, .. } => {
                    let body = serde_json::json!({"location": location, "board": board, "at_ms": now_ms});
                    Ok(Reply::Json(StatusCode::OK, Bytes::from(body.to_string())))
                }
                _ => Err(Error::new(ErrorKind::Internal, "the counter store did not answer a health read")),
            };
        }
        if let admin::Endpoint::Audit(log) | admin::Endpoint::AuditVerify(log) | admin::Endpoint::Spend(log) = &endpoint {
            let query = crate::audit::Query::from_query_string(req.uri().query().unwrap_or(""))?;
            // The spend window: the last 30 days unless asked.
            let to_ms = query.to_ms.unwrap_or(now_ms + 1);
            let window = (query.from_ms.unwrap_or(to_ms.saturating_sub(30 * 86_400_000)), to_ms);
            let op = match &endpoint {
                admin::Endpoint::Audit(_) => crate::audit::AuditOp::Search { query },
                admin::Endpoint::Spend(_) => {
                    if (crate::audit::Query { from_ms: None, to_ms: None, ..query }) != crate::audit::Query::default() {
                        return Err(Error::new(ErrorKind::InvalidRequest, "spend takes `from` and `to` only").with_param("from"));
                    }
                    crate::audit::AuditOp::Spend { from_ms: window.0, to_ms: window.1 }
                }
                _ => crate::audit::AuditOp::Verify,
            };
            let body = match host.audit(log, op).await? {
                crate::audit::AuditAnswer::Page { entries, next_cursor } => {
                    serde_json::json!({"tenant": log, "entries": entries, "next_cursor": next_cursor})
                }
                crate::audit::AuditAnswer::Verified { report } => serde_json::json!({"tenant": log, "report": report}),
                crate::audit::AuditAnswer::Spent { rows } => {
                    let mut report = crate::audit::spend_report(&rows);
                    report["tenant"] = serde_json::json!(log);
                    report["from_ms"] = serde_json::json!(window.0);
                    report["to_ms"] = serde_json::json!(window.1);
                    report
                }
                crate::audit::AuditAnswer::Appended { .. } => {
                    return Err(Error::new(ErrorKind::Internal, "the audit log answered a read with an append"));
                }
            };
            return Ok(Reply::Json(StatusCode::OK, Bytes::from(body.to_string())));
        }
        let (endpoint_copy, request_body) = (endpoint.clone(), req.body().clone());
        let (status, body) = admin::serve(host, endpoint, req.body(), &actor, &random).await?;
        if (200..300).contains(&status) {
            note_admin_action(ctx, &endpoint_copy, &request_body, &body, &actor);
        }
        Ok(Reply::Json(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Bytes::from(body.to_string())))
    }

    /// Phase 5, **call upstream**: walks the plan in order until a candidate answers; keeps every
    /// failed attempt. A streamed answer is returned as soon as its status is known to be good.
    ///
    /// Deployments with open breakers (after `plan.healthy`) are tried only by critical routes,
    /// and only after every healthy one failed. Each attempt after the first is a retry, allowed
    /// while the route's retry budget at this location has room. When residency removed
    /// candidates and every allowed one failed, the answer is `residency_unavailable`.
    async fn call_upstream<H: Host>(&self, host: &H, ctx: &mut Ctx, op: Op<'_>, policy: &Policy, plan: &Plan) -> Result<Reply, Error> {
        let t = host.now_ms();
        let result = self.walk_plan(host, ctx, op, policy, plan).await;
        ctx.phase("router.select_provider", t, host.now_ms());
        result
    }

    /// [`Gateway::call_upstream`]'s loop.
    async fn walk_plan<H: Host>(&self, host: &H, ctx: &mut Ctx, op: Op<'_>, policy: &Policy, plan: &Plan) -> Result<Reply, Error> {
        let alias = ctx.health.as_ref().map(|h| h.route.clone()).unwrap_or_default();
        let (critical, budget, timeouts) =
            policy.route(&alias).map_or((true, 20, Timeouts::default()), |r| (r.critical, r.retry_budget_percent, r.timeouts));
        let mut failures: Vec<String> = Vec::new();
        let mut last: Option<Error> = None;
        let mut tried = 0;
        for (i, candidate) in plan.candidates.iter().enumerate() {
            let forced = i >= plan.healthy;
            if forced && !critical {
                break;
            }
            if !failures.is_empty() && !self.health.borrow().board.may_retry(&alias, host.now_ms(), budget) {
                ctx.record.retry_budget_exhausted = true;
                break;
            }
            let sent_ms = host.now_ms();
            tried += 1;
            let mut span = [0u8; 8];
            host.fill(&mut span);
            let span_id = hex(&span);
            let traceparent =
                format!("00-{}-{span_id}-{}", ctx.record.trace_id, if ctx.record.sampled == Some(false) { "00" } else { "01" });
            let result = self.attempt(host, ctx, op, candidate, timeouts, &traceparent).await;
            let elapsed = host.now_ms().saturating_sub(sent_ms);
            let (status, error) = match &result {
                Ok((status, _)) => (Some(*status), None),
                Err((status, e)) => (*status, Some(e.metric_label())),
            };
            ctx.record.attempts.push(AttemptRecord {
                provider: candidate.provider.id.clone(),
                model: candidate.target.model.clone(),
                status,
                error,
                duration_ms: elapsed,
                forced,
                start_ms: sent_ms,
                span_id,
            });
            if let Some(h) = ctx.health.as_mut() {
                let outcome = match &result {
                    Ok(_) => Outcome::Ok(elapsed),
                    Err((_, e)) => outcome_of(e, &candidate.target.model),
                };
                h.attempts.push((candidate.provider.id.clone(), outcome));
            }
            match result {
                Ok((_, reply)) => return Ok(reply),
                Err((_, e)) if e.retry() == crate::error::Retry::No => return Err(e),
                Err((_, e)) => {
                    failures.push(format!("{}: {}", candidate.provider.id, e.message));
                    last = Some(e);
                }
            }
        }
        let skipped: Vec<&str> = plan.candidates.iter().skip(tried).map(|c| c.provider.id.as_str()).collect();
        if !plan.decision.removed.is_empty() {
            let mut tried = failures.clone();
            tried.extend(skipped.iter().map(|p| format!("{p}: not tried (breaker open or retry budget spent)")));
            tried.extend(plan.decision.quiet.iter().map(|p| format!("{p}: asked for quiet (Retry-After)")));
            return Err(routing::residency_error(&plan.decision, &tried));
        }
        let mut err = match last {
            Some(e) => e,
            None if !plan.decision.quiet.is_empty() => {
                let board = &self.health.borrow().board;
                let now = host.now_ms();
                let wait = plan.decision.quiet.iter().filter_map(|q| {
                    let (provider, model) = q.split_once('/').unwrap_or((q, ""));
                    board.quiet_ms(provider, model, now)
                });
                Error::new(
                    ErrorKind::UpstreamRateLimited { retry_after_ms: wait.min() },
                    format!("every provider of this model asked to be left alone for now: {}", plan.decision.quiet.join(", ")),
                )
            }
            None => {
                Error::new(ErrorKind::UpstreamUnavailable, format!("every provider of this model is unhealthy: {}", skipped.join(", ")))
            }
        };
        if failures.len() > 1 || !skipped.is_empty() {
            let mut why = failures.clone();
            if ctx.record.retry_budget_exhausted {
                why.push("the route's retry budget is spent".into());
            } else if !skipped.is_empty() {
                why.push(format!("not tried (breaker open): {}", skipped.join(", ")));
            }
            err.message = format!("all {} providers failed: {}", failures.len(), why.join("; "));
        }
        Err(err)
    }

    async fn attempt<H: Host>(
        &self,
        host: &H,
        ctx: &mut Ctx,
        op: Op<'_>,
        c: &Candidate,
        timeouts: Timeouts,
        traceparent: &str,
    ) -> Result<(u16, Reply), (Option<u16>, Error)> {
        let mut response =
            exchange(host, op, c, timeouts, &ctx.record.request_id, Some(traceparent), Credential::Primary).await.map_err(|e| (None, e))?;
        // Rotation: the provider refused the first credential and a second is live — send once more
        // with it, and note the event.
        if matches!(response.status().as_u16(), 401 | 403) && c.provider.api_key_secret_secondary.is_some() {
            ctx.record.credential_fallbacks.push(c.provider.id.clone());
            response = exchange(host, op, c, timeouts, &ctx.record.request_id, Some(traceparent), Credential::Secondary)
                .await
                .map_err(|e| (None, e))?;
        }
        self.answer(host, ctx, op, &c.provider, response).await
    }

    /// Reads a provider's response to `op`: an error status becomes this attempt's error; a
    /// good one is parsed (or, for streams, held until it commits to content) and rendered in
    /// the caller's dialect.
    async fn answer<H: Host>(
        &self,
        host: &H,
        ctx: &mut Ctx,
        op: Op<'_>,
        provider: &crate::policy::Provider,
        response: http::Response<ByteStream>,
    ) -> Result<(u16, Reply), (Option<u16>, Error)> {
        let adapter = providers::adapter(provider.kind);
        let status = response.status().as_u16();
        let (head, body) = response.into_parts();
        if !(200..300).contains(&status) {
            let bytes = collect(body, MAX_UPSTREAM_ERROR_BYTES).await.unwrap_or_default();
            return Err((Some(status), providers::upstream_error(adapter, status, &head.headers, &bytes)));
        }
        let chat = match op {
            Op::Chat(chat) => chat,
            Op::Embed(embed) => {
                let bytes = collect(body, MAX_UPSTREAM_BYTES).await.map_err(|e| (Some(status), e))?;
                let embeddings = adapter.embeddings_response(&bytes).map_err(|e| (Some(status), e))?;
                ctx.record.usage = Some(embeddings.usage);
                let rendered = embeddings.to_openai(embed.encoding_format.as_deref()).to_string();
                return Ok((status, Reply::Json(StatusCode::OK, Bytes::from(rendered))));
            }
            Op::Count(_) => {
                let bytes = collect(body, MAX_UPSTREAM_ERROR_BYTES).await.map_err(|e| (Some(status), e))?;
                let tokens = adapter.count_tokens_response(&bytes).map_err(|e| (Some(status), e))?;
                return Ok((status, Reply::Json(StatusCode::OK, Bytes::from(serde_json::json!({"input_tokens": tokens}).to_string()))));
            }
        };
        if chat.is_stream() {
            let mut decoder = adapter.stream_decoder(provider, host.now_ms() / 1000);
            let (body, held) = hold_until_content(body, decoder.as_mut()).await.map_err(|e| (Some(status), e))?;
            let encoder = ctx.dialect.stream_encoder(chat.wants_stream_usage());
            return Ok((status, Reply::Stream { upstream: body, decoder, encoder, held }));
        }
        let bytes = collect(body, MAX_UPSTREAM_BYTES).await.map_err(|e| (Some(status), e))?;
        let mut completion = adapter.chat_response(&bytes, host.now_ms() / 1000).map_err(|e| (Some(status), e))?;
        ctx.record.usage = completion.usage;
        // Phase 6, guard, for a whole answer.
        let t = host.now_ms();
        if let Some(guard) = ctx.guard.as_mut()
            && let Some(body) = guard.completion(&completion.body)
        {
            completion.body = Bytes::from(body);
        }
        if ctx.guard.is_some() {
            ctx.phase("response.guardrail", t, host.now_ms());
        }
        if let Some(job) = ctx.shadow.as_mut() {
            job.primary_text = first_text(&completion.body, "message");
        }
        let body = ctx.dialect.render_completion(&completion).map_err(|e| (Some(status), e))?;
        Ok((status, Reply::Json(StatusCode::OK, body)))
    }
}

/// Name of the host secret holding the bootstrap admin key (Spin variable `edgegate_admin_key`).
pub const BOOTSTRAP_ADMIN_SECRET: &str = "EDGEGATE_ADMIN_KEY";

/// The variable that turns the `/admin` API on (`on`); unset or anything else leaves it off, and
/// every `/admin` path answers 404 as if it did not exist.
pub const ADMIN_API_SWITCH: &str = "EDGEGATE_ADMIN_API";

/// The roles of the host's bootstrap admin key if `secret` is it: every admin role, never
/// `invoke`. The comparison is of SHA-256 digests in constant time.
async fn bootstrap_admin<H: Host>(host: &H, secret: &str) -> Result<Option<Roles>, Error> {
    let Some(configured) = host.secret(BOOTSTRAP_ADMIN_SECRET).await? else { return Ok(None) };
    if configured.is_empty() {
        return Ok(None);
    }
    let (a, b) = (hash_key(&configured), hash_key(secret));
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    Ok((diff == 0).then_some(Roles::ADMIN))
}

/// Whether the `/admin` API is turned on here ([`ADMIN_API_SWITCH`]); a store that cannot say
/// leaves it off.
async fn admin_api_on<H: Host>(host: &H) -> bool {
    host.secret(ADMIN_API_SWITCH).await.ok().flatten().is_some_and(|v| v.eq_ignore_ascii_case("on"))
}

/// Reads a stream until it commits to an answer (the first content, tool call or finish) and
/// returns what was decoded so far. A failure before that point is this attempt's failure, so the
/// plan can move on while the caller has seen nothing.
async fn hold_until_content(mut body: ByteStream, decoder: &mut dyn StreamDecoder) -> Result<(ByteStream, Vec<StreamEvent>), Error> {
    let mut held = Vec::new();
    loop {
        let events = match body.next().await {
            Some(Ok(bytes)) => decoder.push(&bytes)?,
            Some(Err(e)) if e.kind == ErrorKind::UpstreamTimeout => return Err(e),
            Some(Err(e)) => {
                return Err(Error::new(ErrorKind::UpstreamUnavailable, format!("provider stream broke before any content: {}", e.message)));
            }
            None => decoder.finish()?,
        };
        let committed = events.iter().any(|e| matches!(e, StreamEvent::Done | StreamEvent::Chunk { content: true, .. }));
        held.extend(events);
        if committed {
            return Ok((body, held));
        }
    }
}

/// Which of a provider's credentials a request is sent with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Credential {
    Primary,
    Secondary,
}

/// Sends `op` to candidate `c` and returns the response as soon as its head arrives (within the
/// first-byte timeout); its body ends with an error if it runs past the total timeout. The
/// built-in provider answers in place.
async fn exchange<H: Host>(
    host: &H,
    op: Op<'_>,
    c: &Candidate,
    timeouts: Timeouts,
    request_id: &str,
    traceparent: Option<&str>,
    which: Credential,
) -> Result<http::Response<ByteStream>, Error> {
    let adapter = providers::adapter(c.provider.kind);
    let name = match which {
        Credential::Primary => &c.provider.api_key_secret,
        Credential::Secondary => &c.provider.api_key_secret_secondary,
    };
    let credential = match name {
        None => None,
        Some(name) => Some(
            host.secret(name)
                .await?
                .ok_or_else(|| Error::new(ErrorKind::SecretMissing, format!("provider credential `{name}` is not configured")))?,
        ),
    };
    let mut request = match op {
        Op::Chat(chat) => adapter.chat_request(&c.provider, &c.target, chat, credential.as_deref()),
        Op::Embed(embed) => adapter.embeddings_request(&c.provider, &c.target, embed, credential.as_deref()),
        Op::Count(chat) => adapter.count_tokens_request(&c.provider, &c.target, chat, credential.as_deref()),
    }?;
    adapter.authorize(&c.provider, &mut request, credential.as_deref(), host.now_ms())?;
    // W3C trace context: the provider sees this attempt's span as its parent. Added after
    // signing, so a signature (AWS SigV4) covers only what the adapter built.
    if let Some(v) = traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
        request.headers_mut().insert("traceparent", v);
    }
    if let Some(ms) = timeouts.connect_ms {
        request.extensions_mut().insert(crate::ports::ConnectTimeout(ms));
    }
    if c.provider.kind == ProviderKind::Mock {
        return Ok(mock::respond(&request, host.now_ms() / 1000, &format!("chatcmpl-{request_id}")));
    }
    let sent_ms = host.now_ms();
    // One timer bounds both waits: armed for the first byte and, if it fires while the body is
    // still coming, armed again for what is left of the total (`Deadline`). With the defaults
    // (2 and 10 minutes) an answer never needs the second.
    let mut timer: Task = Box::pin(host.sleep(timeouts.first_byte_ms));
    let response = match futures::future::select(std::pin::pin!(host.send(request)), timer.as_mut()).await {
        futures::future::Either::Left((response, _)) => response?,
        futures::future::Either::Right(_) => {
            let why = format!("the provider sent no response within {} ms", timeouts.first_byte_ms);
            return Err(Error::new(ErrorKind::UpstreamTimeout, why));
        }
    };
    let (due_ms, total_ms) = (sent_ms.saturating_add(timeouts.total_ms), timeouts.total_ms);
    Ok(response.map(|body| -> ByteStream { Box::pin(Deadline { body, timer: Some(timer), host: host.clone(), due_ms, total_ms }) }))
}

/// A provider's body that ends with an `upstream_timeout` error when it runs past `due_ms`.
struct Deadline<H> {
    body: ByteStream,
    /// The exchange's timer (it may fire before `due_ms`, and is then armed again); `None` once
    /// the deadline has passed.
    timer: Option<Task>,
    host: H,
    due_ms: u64,
    total_ms: u64,
}

// No field is structurally pinned: the body and the timer are boxed.
impl<H> Unpin for Deadline<H> {}

impl<H: Host> Stream for Deadline<H> {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.timer.is_some()
            && let Poll::Ready(item) = self.body.as_mut().poll_next(cx)
        {
            return Poll::Ready(item);
        }
        loop {
            let Some(timer) = self.timer.as_mut() else { return Poll::Ready(None) };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = self.host.now_ms();
            if now < self.due_ms {
                self.timer = Some(Box::pin(self.host.sleep(self.due_ms - now)));
                continue;
            }
            self.timer = None;
            let why = format!("the provider's answer did not finish within {} ms", self.total_ms);
            return Poll::Ready(Some(Err(Error::new(ErrorKind::UpstreamTimeout, why))));
        }
    }
}

/// Reads a whole body, up to `limit` bytes.
async fn collect(mut body: ByteStream, limit: usize) -> Result<Bytes, Error> {
    let (mut chunks, mut size) = (Vec::<Bytes>::new(), 0);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len();
        if size > limit {
            return Err(Error::new(ErrorKind::UpstreamProtocol, format!("provider response exceeds {limit} bytes")));
        }
        chunks.push(chunk);
    }
    // An answer in one piece (as the Worker reads a JSON answer of declared length) is not copied.
    Ok(if chunks.len() == 1 { chunks.swap_remove(0) } else { Bytes::from(chunks.concat()) })
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::Full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The response for an error: the one place an [`Error`] becomes HTTP, in the caller's dialect.
fn error_response(e: &Error, dialect: &dyn Dialect) -> http::Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, Bytes::from(dialect.error_body(e).to_string()));
    if let Some(secs) = e.retry_after_secs() {
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    let should_retry = HeaderValue::from_static(if e.should_retry() { "true" } else { "false" });
    resp.headers_mut().insert("x-should-retry", should_retry);
    resp
}

fn set_headers(resp: &mut http::Response<Body>, ctx: &Ctx) {
    let resp_status = resp.status();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.record.request_id) {
        if let Some(name) = ctx.dialect.request_id_header() {
            h.insert(name, v.clone());
        }
        h.insert("x-request-id", v);
    }
    if let Some(v) = ctx.record.policy_version.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        h.insert("x-edgegate-policy-version", v);
    }
    if let Some(mode) = ctx.record.degraded {
        h.insert("x-edgegate-degraded", HeaderValue::from_static(mode));
    }
    if let Some(c) = &ctx.record.cache {
        h.insert("x-edgegate-cache", HeaderValue::from_static(c.status));
    }
    if let Some(n) = ctx.record.truncated_messages {
        h.insert("x-edgegate-truncated-messages", HeaderValue::from(n));
    }
    // Single retry ownership: once the gateway has retried (or may not, its budget spent), the
    // caller must not retry on top of it — except after a 429, whose `Retry-After` the gateway
    // cannot wait out itself.
    let throttled = resp_status == StatusCode::TOO_MANY_REQUESTS;
    if h.contains_key("x-should-retry") && !throttled && (ctx.record.attempts.len() > 1 || ctx.record.retry_budget_exhausted) {
        h.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    // OpenAI's header names, for the tightest per-minute request and token limits.
    let families = ctx.rate.map(|r| {
        [
            (r.requests, ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]),
            (r.tokens, ["x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]),
        ]
    });
    for (rate, [limit, remaining, reset]) in families.into_iter().flatten() {
        let Some(rate) = rate else { continue };
        h.insert(limit, HeaderValue::from(rate.limit));
        h.insert(remaining, HeaderValue::from(rate.remaining));
        if let Ok(v) = HeaderValue::from_str(&format!("{}s", rate.reset_in_ms.div_ceil(1000))) {
            h.insert(reset, v);
        }
    }
}

/// How an attempt's failure bears on its deployment's health.
fn outcome_of(e: &Error, model: &str) -> Outcome {
    match e.kind {
        ErrorKind::UpstreamUnavailable | ErrorKind::UpstreamStatus(_) | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol => {
            Outcome::Failed
        }
        ErrorKind::UpstreamRateLimited { retry_after_ms } => Outcome::Throttled { model: model.to_owned(), wait_ms: retry_after_ms },
        _ => Outcome::Neutral,
    }
}

/// What the record phase needs of a request's context.
struct Finish {
    record: RequestRecord,
    account: Account,
    health: Option<HealthReport>,
    shadow: Option<ShadowJob>,
    guard: Option<crate::firewall::guard::OutputGuard>,
    screen: Option<PendingScreen>,
    metrics: Option<MetricsJob>,
    audit: Option<AuditJob>,
    cache: Option<crate::cache::Pending>,
    logs: crate::policy::RequestLogs,
}

impl From<Ctx> for Finish {
    fn from(ctx: Ctx) -> Self {
        Finish {
            record: ctx.record,
            account: ctx.account,
            health: ctx.health,
            shadow: ctx.shadow,
            guard: ctx.guard,
            screen: ctx.screen,
            metrics: ctx.metrics,
            audit: ctx.audit,
            cache: ctx.cache,
            logs: ctx.logs,
        }
    }
}

impl Finish {
    /// Phase 7, **record**: stamps the duration, applies the request's health observations to the
    /// isolate's board, and — as deferred work — settles the ledger hold, sends observations to the
    /// location's board when a sync is due, and exports the record.
    /// A sampled request's shadow is sent last, after the caller has its answer.
    fn run<H: Host>(mut self, host: &H) {
        self.record.guard = self.guard.as_ref().and_then(crate::firewall::OutputVerdict::of);
        // A streamed answer is guarded from its first chunk to its end.
        if let (Some(_), Some(first)) = (&self.guard, self.record.first_chunk_ms) {
            let start = self.record.start_ms + first;
            let end = host.now_ms().max(start);
            self.record.phases.push(crate::telemetry::PhaseTiming {
                name: "response.guardrail",
                start_ms: start,
                duration_ms: end - start,
            });
        }
        finish(host, self);
    }
}

fn finish<H: Host>(host: &H, job: Finish) {
    let Finish { mut record, account, health, shadow, guard: _, screen, metrics, audit, cache, logs } = job;
    let now = host.now_ms();
    record.duration_ms = now.saturating_sub(record.start_ms);
    let settle = account.settle(&mut record);
    // Only a whole answer of the route asked for is stored: not a failed or cut one, nor one an
    // overflow route or degraded mode gave.
    let store = cache
        .filter(|_| record.status == 200 && record.error.is_none() && record.overflow.is_none() && record.degraded.is_none())
        .and_then(|p| p.entry(now, record.usage, record.cost_micro_usd));
    let sync = health.and_then(|h| observe(h, now));
    let worker = host.clone();
    host.defer(Box::pin(async move {
        // Settlement, health and export failures never reach a client: an unsettled hold expires
        // on its own, observations wait for the next sync, and the exporter reports its own health.
        let mut record = record;
        if let Some((key, ttl, entry)) = store {
            let stored = worker.cache_put(&key, entry.encode(), ttl).await;
            if let Some(c) = record.cache.as_mut() {
                c.stored = Some(stored.is_ok());
                c.fault = stored.err().map(|e| e.metric_label());
            }
        }
        if let Some((tenant, op)) = settle
            && let Ok(LedgerAnswer::Settled { alerts }) = worker.apply(&tenant, op).await
        {
            record.budget_alerts = alerts;
        }
        // A screening no reservation carried (the prompt was blocked, or nothing limits it):
        // sent now if suspicious or if clean ones have waited long enough, else held.
        if let Some(mut p) = screen
            && p.contained.1.send_now(&p.tenant, &mut p.screen, now)
        {
            let route = p.screen.route.clone();
            if let Ok(LedgerAnswer::Screened { containment }) = worker.apply(&p.tenant, LedgerOp::Screen { screen: p.screen }).await {
                p.contained.remember(&p.tenant, &route, &containment.scopes);
                if !containment.engaged.is_empty() {
                    let r = record.containment.get_or_insert_with(Containment::default);
                    r.scopes = containment.scopes;
                    r.engaged.extend(containment.engaged);
                }
            }
        }
        if let Some((view, board_id, breaker, observations)) = sync {
            let answer = worker.apply(&board_id, LedgerOp::Health { observations: observations.clone(), breaker }).await;
            let mut v = view.borrow_mut();
            v.syncing = false;
            match answer {
                Ok(LedgerAnswer::Health { board, events }) => {
                    // The store's board has every isolate's observations up to now; ours that
                    // arrived meanwhile are applied again on top of it.
                    v.board = board;
                    let later = v.pending.clone();
                    for o in &later {
                        v.board.observe(o, &breaker);
                    }
                    v.synced_ms = Some(worker.now_ms());
                    record.breaker_events = events;
                }
                other => {
                    record.health_fault = Some(other.err().map_or("internal_error", |e| e.metric_label()));
                    let mut all = observations;
                    all.append(&mut v.pending);
                    let excess = all.len().saturating_sub(MAX_PENDING_OBSERVATIONS);
                    all.drain(..excess);
                    v.pending = all;
                    v.synced_ms = Some(worker.now_ms());
                }
            }
        }
        if let Some(job) = audit {
            append_audit(&worker, job, &mut record).await;
        }
        // The shadow goes last: the caller is long answered, and only answered requests have one.
        if let Some(job) = shadow.filter(|_| record.status == 200) {
            record.shadow = Some(run_shadow(&worker, job, &record.request_id, record.duration_ms).await);
        }
        if let Some(job) = metrics {
            export_metrics(&worker, job, &record).await;
        }
        if logs == crate::policy::RequestLogs::All || record.is_notable() {
            let _ = worker.export(vec![record]).await;
        }
    }));
}

/// Keeps an admin action's audit entry for the record phase (when the log is on).
fn note_admin_action(ctx: &mut Ctx, endpoint: &admin::Endpoint, body: &[u8], answer: &serde_json::Value, actor: &admin::Actor) {
    if let Some(job) = ctx.audit.as_mut() {
        job.admin = admin::audit_entry(endpoint, body, answer, actor).map(|(log, mut draft)| {
            draft.request_id = Some(ctx.record.request_id.clone());
            (log, draft)
        });
    }
}

/// Appends the request's entry (or, for `/admin`, the action's) to its tenant's audit log; the
/// head it makes, or why it failed, goes into the record.
async fn append_audit<H: Host>(host: &H, job: AuditJob, record: &mut RequestRecord) {
    // Admin actions and feedback write their own entries; other routes, the request's.
    let entry =
        if record.route.contains(" /admin/") || record.route == FEEDBACK_ROUTE { job.admin } else { crate::audit::request_entry(record) };
    let Some((log, draft)) = entry else { return };
    let op = crate::audit::AuditOp::Append { drafts: vec![draft], retention_days: job.retention_days };
    match host.audit(&log, op).await {
        Ok(crate::audit::AuditAnswer::Appended { head }) => record.audit = Some(head),
        Ok(_) => record.audit_fault = Some("internal_error"),
        Err(e) => record.audit_fault = Some(e.metric_label()),
    }
}

/// Folds `record` into the isolate's meter (and, if its trace is sampled, its spans into the
/// pending ones) and, when an export is due, posts everything since the last one to the collector
/// (OTLP/HTTP JSON: metrics, then traces), waiting at most five seconds each. What fails to export
/// is dropped: telemetry never holds a request up or grows without bound.
async fn export_metrics<H: Host>(host: &H, job: MetricsJob, record: &RequestRecord) {
    let now = host.now_ms();
    let body = {
        let mut state = job.state.borrow_mut();
        if state.instance.is_empty() {
            let mut id = [0u8; 8];
            host.fill(&mut id);
            state.instance = hex(&id);
            state.exported_ms = now;
        }
        let state = &mut *state;
        let meter = state.meter.get_or_insert_with(|| Meter::new(now));
        meter.observe(record);
        if crate::traces::sampled(record, job.settings.trace_sample_percent) {
            state.spans.extend(crate::traces::spans(record));
            let over = state.spans.len().saturating_sub(MAX_PENDING_SPANS);
            state.spans.drain(..over);
        }
        if !job.every_request && now.saturating_sub(state.exported_ms) < job.settings.interval_ms {
            return;
        }
        state.exported_ms = now;
        let metrics = meter.take(now, &job.settings.service_name, &state.instance);
        let spans = std::mem::take(&mut state.spans);
        let traces = (!spans.is_empty()).then(|| crate::traces::export_body(spans, &job.settings.service_name, &state.instance));
        [(job.settings.metrics_url.clone(), metrics), (job.settings.traces_url.clone(), traces)]
    };
    let authorization = match &job.settings.authorization_secret {
        Some(name) => host.secret(name).await.ok().flatten(),
        None => None,
    };
    for (url, body) in body {
        let Some(body) = body else { continue };
        let mut request = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
        if let Some(value) = &authorization {
            request = request.header(http::header::AUTHORIZATION, value.as_str());
        }
        let Ok(request) = request.body(Bytes::from(body)) else { continue };
        let timer = std::pin::pin!(host.sleep(5_000));
        let _ = futures::future::select(std::pin::pin!(host.send(request)), timer).await;
    }
}

/// Sends a shadow request and compares its answer with the caller's.
async fn run_shadow<H: Host>(host: &H, job: ShadowJob, request_id: &str, primary_duration_ms: u64) -> ShadowRecord {
    let c = &job.candidate;
    let mut record = ShadowRecord {
        provider: c.provider.id.clone(),
        model: c.target.model.clone(),
        status: None,
        error: None,
        duration_ms: 0,
        primary_duration_ms,
        usage: None,
        cost_micro_usd: None,
        similarity_permille: None,
    };
    let start = host.now_ms();
    let answer = async {
        let response =
            exchange(host, Op::Chat(&job.chat), c, job.timeouts, &format!("{request_id}-shadow"), None, Credential::Primary).await?;
        let status = response.status().as_u16();
        record.status = Some(status);
        let adapter = providers::adapter(c.provider.kind);
        let (head, body) = response.into_parts();
        if !(200..300).contains(&status) {
            let bytes = collect(body, MAX_UPSTREAM_ERROR_BYTES).await.unwrap_or_default();
            return Err(providers::upstream_error(adapter, status, &head.headers, &bytes));
        }
        let bytes = collect(body, MAX_UPSTREAM_BYTES).await?;
        adapter.chat_response(&bytes, host.now_ms() / 1000)
    };
    match answer.await {
        Ok(completion) => {
            let text = first_text(&completion.body, "message");
            record.similarity_permille = Some(crate::telemetry::similarity(&job.primary_text, &text));
            record.usage = completion.usage;
            record.cost_micro_usd = completion.usage.zip(c.target.price).map(|(u, p)| p.charge(&u));
        }
        Err(e) => record.error = Some(e.metric_label()),
    }
    record.duration_ms = host.now_ms().saturating_sub(start);
    record
}

/// The first choice's text in OpenAI JSON: `part` is `message` for a completion, `delta` for a
/// stream chunk.
fn first_text(json: &[u8], part: &str) -> String {
    let v = serde_json::from_slice::<serde_json::Value>(json).unwrap_or_default();
    v["choices"][0][part]["content"].as_str().unwrap_or_default().to_owned()
}

/// Applies a request's observations to the isolate's board at once; returns what to send to the
/// location's board when a sync is due (the batch of pending observations).
#[allow(clippy::type_complexity)]
fn observe(h: HealthReport, now: u64) -> Option<(Rc<RefCell<HealthView>>, String, BreakerSettings, Vec<Observation>)> {
    if h.attempts.is_empty() {
        return None;
    }
    let observation = Observation { at_ms: now, route: h.route, attempts: h.attempts };
    let batch = {
        let mut v = h.view.borrow_mut();
        // Local transitions are not reported: the location's board reports each one once.
        v.board.observe(&observation, &h.breaker);
        v.pending.push(observation);
        let due = !v.syncing && v.synced_ms.is_none_or(|at| now >= at.saturating_add(h.refresh_ms));
        if !due {
            return None;
        }
        v.syncing = true;
        std::mem::take(&mut v.pending)
    };
    Some((h.view, h.board_id, h.breaker, batch))
}

/// What a request costs and holds, settled when it is recorded.
#[derive(Default)]
struct Account {
    /// The plan's priced candidates: provider id, model, price.
    prices: Vec<(String, String, Price)>,
    /// The ledger book (the tenant's, or one of its shards) and what was reserved there, if anything.
    hold: Option<(String, Amounts)>,
}

impl Account {
    /// Stamps the record's cost (usage at the price of the candidate that answered) and returns
    /// the settlement: commit the usage; without usage but with a provider's answer (a stream cut
    /// or abandoned), commit the reservation, since the provider may have billed it; with no
    /// answer at all, release.
    fn settle(self, record: &mut RequestRecord) -> Option<(String, LedgerOp)> {
        let served = record.attempts.iter().rev().find(|a| a.status.is_some_and(|s| (200..300).contains(&s)));
        let price = served.and_then(|a| self.prices.iter().find(|(p, m, _)| *p == a.provider && *m == a.model)).map(|(_, _, p)| *p);
        record.cost_micro_usd = record.usage.zip(price).map(|(u, p)| p.charge(&u));
        let (tenant, held) = self.hold?;
        let id = record.request_id.clone();
        let op = match (&record.usage, served.is_some()) {
            (Some(u), _) => LedgerOp::Commit {
                id,
                used: Amounts { tokens: u.prompt_tokens() + u.completion_tokens(), micro_usd: record.cost_micro_usd.unwrap_or(0) },
            },
            (None, true) => LedgerOp::Commit { id, used: held },
            (None, false) => LedgerOp::Release { id },
        };
        Some((tenant, op))
    }
}

/// Relays a provider's stream to the caller as OpenAI server-sent events.
///
/// It never ends silently: a stream that the provider cuts, garbles or fails ends with an
/// OpenAI-shaped `error` event instead of `data: [DONE]`. The record phase runs when the stream
/// ends, or when the caller goes away (`client_disconnected`).
struct Relay<H: Host> {
    upstream: ByteStream,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    out: VecDeque<Bytes>,
    ended: bool,
    finisher: Option<(H, Finish)>,
}

// No field is structurally pinned: the upstream stream is already boxed.
impl<H: Host> Unpin for Relay<H> {}

impl<H: Host> Relay<H> {
    fn record(&mut self) -> Option<&mut RequestRecord> {
        self.finisher.as_mut().map(|(_, f)| &mut f.record)
    }

    fn emit(&mut self, events: Vec<StreamEvent>) {
        for event in events {
            match event {
                StreamEvent::Chunk { json, usage, usage_only, .. } => {
                    if let (Some(u), Some(r)) = (usage, self.record()) {
                        r.usage = Some(u);
                    }
                    // Phase 6, guard, chunk by chunk.
                    let json = match self.finisher.as_mut() {
                        Some((_, Finish { guard: Some(g), .. })) => match g.chunk(&json) {
                            Some(json) => json,
                            // Nothing left of it: a choice the guard ended, and no usage.
                            None => continue,
                        },
                        _ => json,
                    };
                    if let Some((_, Finish { shadow: Some(job), .. })) = self.finisher.as_mut() {
                        job.primary_text.push_str(&first_text(json.as_bytes(), "delta"));
                    }
                    let frames = self.encoder.chunk(&json, usage, usage_only);
                    self.out.extend(frames);
                }
                StreamEvent::Done => {
                    let rest = match self.finisher.as_mut() {
                        Some((_, Finish { guard: Some(g), .. })) => g.close(),
                        _ => None,
                    };
                    if let Some(json) = rest {
                        let frames = self.encoder.chunk(&json, None, false);
                        self.out.extend(frames);
                    }
                    let frames = self.encoder.done();
                    self.out.extend(frames);
                    self.ended = true;
                }
            }
        }
    }

    fn fail(&mut self, e: &Error) {
        if let Some(r) = self.record() {
            r.error = Some(e.metric_label());
        }
        // A stream the provider broke counts against the deployment that served it.
        if let Some((_, Finish { health: Some(h), .. })) = self.finisher.as_mut()
            && let Some((_, outcome)) = h.attempts.last_mut()
        {
            // The stream's failure is never a quota refusal, so the model does not matter here.
            *outcome = outcome_of(e, "");
        }
        let frames = self.encoder.error(e);
        self.out.extend(frames);
        self.ended = true;
    }

    fn complete(&mut self, error: Option<&'static str>) {
        if let Some((host, mut finish)) = self.finisher.take() {
            if finish.record.error.is_none() {
                finish.record.error = error;
            }
            finish.run(&host);
        }
    }
}

impl<H: Host> Stream for Relay<H> {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.out.pop_front() {
                if let Some((_, Finish { cache: Some(pending), .. })) = this.finisher.as_mut() {
                    pending.push(&frame);
                }
                return Poll::Ready(Some(frame));
            }
            if this.ended {
                this.complete(None);
                return Poll::Ready(None);
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => match this.decoder.push(&bytes) {
                    Ok(events) => this.emit(events),
                    Err(e) => this.fail(&e),
                },
                Poll::Ready(Some(Err(e))) if e.kind == ErrorKind::UpstreamTimeout => this.fail(&e),
                Poll::Ready(Some(Err(e))) => {
                    this.fail(&Error::new(ErrorKind::UpstreamUnavailable, format!("provider stream broke: {}", e.message)))
                }
                Poll::Ready(None) => match this.decoder.finish() {
                    Ok(events) => {
                        this.emit(events);
                        this.ended = true;
                    }
                    Err(e) => this.fail(&e),
                },
            }
        }
    }
}

impl<H: Host> Drop for Relay<H> {
    fn drop(&mut self) {
        let error = if self.ended { None } else { Some("client_disconnected") };
        self.complete(error);
    }
}
