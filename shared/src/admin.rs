//! Admin operations on the policy store: validate, publish (to everyone or a canary), promote,
//! roll back, read history, create and revoke keys.
//!
//! The same functions serve the gateway's `/admin` API and the native admin CLI (which runs them
//! against Cloudflare KV or local `wrangler dev` state), so both follow one set of rules. Each
//! operation writes the immutable version first and moves pointers last; the store has no
//! transactions, so two admins publishing at the same instant may lose one history entry, never
//! a version.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::policy::{Policy, PolicyError, Role, canonical_json, hex, key_hash_string, version_of};
use crate::ports::PolicyStore;
use crate::snapshot::{self, ACTIVE, ActivePointer, CANARY, CanaryPointer, HISTORY, Stamp, read_json, version_key};

/// Longest history kept.
pub const HISTORY_LEN: usize = 200;
/// Longest rollback chain kept in the active pointer.
const ROLLBACK_DEPTH: usize = 20;
/// Prefix of generated API keys, so leaked keys are recognisable to secret scanners.
pub const KEY_PREFIX: &str = "sk-eg-";

/// Who performs an operation, and when.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Key id or user name recorded in pointers and history.
    pub name: String,
    /// Epoch milliseconds.
    pub now_ms: u64,
}

/// One admin operation, as kept in `policy/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// `publish`, `canary`, `promote`, `rollback`, `key_create` or `key_revoke`.
    pub action: String,
    /// The version the operation made active (or canary).
    pub version: String,
    /// The version active before it, if any.
    #[serde(default)]
    pub replaced: Option<String>,
    /// Epoch milliseconds.
    pub at_ms: u64,
    /// Who.
    pub by: String,
    /// The change note.
    #[serde(default)]
    pub note: String,
}

/// Where a publish goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryTarget {
    /// Tenants that get the canary.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Canary groups that get it.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Share (0–100) of other tenants that get it.
    #[serde(default)]
    pub percent: u8,
}

/// A document that compiled: its canonical text and version.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The version id.
    pub version: String,
    /// Canonical JSON, as stored.
    pub canonical: String,
    /// The compiled policy.
    pub policy: Policy,
}

/// Compiles a document, returning every problem with its path.
pub fn validate(value: serde_json::Value) -> Result<Validated, Vec<PolicyError>> {
    let version = version_of(&value);
    let canonical = canonical_json(&value);
    let policy = Policy::compile_value(value)?;
    Ok(Validated { version, canonical, policy })
}

/// The error for a document that does not compile; its message lists every problem.
pub fn invalid_policy(errors: &[PolicyError]) -> Error {
    let list: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
    Error::new(ErrorKind::InvalidPolicy, format!("the policy has {} error(s): {}", errors.len(), list.join("; ")))
}

/// The store entries that make `value` the active policy of an empty store (to seed local
/// state and tests). Fails with every problem if the document does not compile.
pub fn seed_entries(value: serde_json::Value, actor: &Actor) -> Result<Vec<(String, String)>, Vec<PolicyError>> {
    let v = validate(value)?;
    let stamp = Stamp { published_at_ms: actor.now_ms, published_by: actor.name.clone(), note: "seed".into() };
    let pointer = ActivePointer { version: v.version.clone(), previous: vec![], stamp };
    let history = [entry("publish", &v.version, None, actor, "seed")];
    Ok(vec![(version_key(&v.version), v.canonical), (ACTIVE.into(), json(&pointer)), (HISTORY.into(), json(&history))])
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn entry(action: &str, version: &str, replaced: Option<&str>, actor: &Actor, note: &str) -> HistoryEntry {
    HistoryEntry {
        action: action.into(),
        version: version.into(),
        replaced: replaced.map(str::to_owned),
        at_ms: actor.now_ms,
        by: actor.name.clone(),
        note: note.into(),
    }
}

async fn put_json<S: PolicyStore, T: Serialize>(store: &S, key: &str, value: &T) -> Result<(), Error> {
    store.put(key, Bytes::from(json(value))).await
}

async fn append_history<S: PolicyStore>(store: &S, e: HistoryEntry) -> Result<(), Error> {
    let mut history = history(store).await.unwrap_or_default();
    history.insert(0, e);
    history.truncate(HISTORY_LEN);
    put_json(store, HISTORY, &history).await
}

/// The admin history, newest first.
pub async fn history<S: PolicyStore>(store: &S) -> Result<Vec<HistoryEntry>, Error> {
    Ok(read_json(store, HISTORY).await?.unwrap_or_default())
}

/// The current pointers.
pub async fn pointers<S: PolicyStore>(store: &S) -> Result<(Option<ActivePointer>, Option<CanaryPointer>), Error> {
    Ok((read_json(store, ACTIVE).await?, read_json(store, CANARY).await?))
}

/// The stored document of `version`.
pub async fn document<S: PolicyStore>(store: &S, version: &str) -> Result<serde_json::Value, Error> {
    let raw =
        store.get(&version_key(version)).await?.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no policy version {version}")))?;
    serde_json::from_slice(&raw).map_err(|e| Error::new(ErrorKind::PolicyUnavailable, format!("policy version {version} is not JSON: {e}")))
}

/// Moves the active pointer to `version`, remembering the old one for rollback, and ends any canary.
async fn activate<S: PolicyStore>(
    store: &S,
    version: &str,
    old: Option<ActivePointer>,
    action: &str,
    actor: &Actor,
    note: &str,
) -> Result<ActivePointer, Error> {
    let replaced = old.as_ref().map(|o| o.version.clone());
    let previous = match old {
        Some(o) if o.version != version => std::iter::once(o.version).chain(o.previous).collect(),
        Some(o) => o.previous,
        None => vec![],
    };
    point_active(store, version, previous, replaced.as_deref(), action, actor, note).await
}

/// Writes the active pointer, ends any canary, and records the operation.
async fn point_active<S: PolicyStore>(
    store: &S,
    version: &str,
    mut previous: Vec<String>,
    replaced: Option<&str>,
    action: &str,
    actor: &Actor,
    note: &str,
) -> Result<ActivePointer, Error> {
    previous.truncate(ROLLBACK_DEPTH);
    let pointer = ActivePointer {
        version: version.into(),
        previous,
        stamp: Stamp { published_at_ms: actor.now_ms, published_by: actor.name.clone(), note: note.into() },
    };
    put_json(store, ACTIVE, &pointer).await?;
    store.delete(CANARY).await?;
    append_history(store, entry(action, version, replaced, actor, note)).await?;
    Ok(pointer)
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The new version.
    pub version: String,
    /// `active` or `canary`.
    pub target: &'static str,
    /// The version active before (unchanged by a canary publish).
    pub active_before: Option<String>,
}

/// Publishes a document [`validate`] has compiled: stores it under its version, then points
/// `active` (or, with `canary`, `canary`) at it. (A document that does not compile never gets
/// here: `validate` returns every error and nothing changes.)
pub async fn publish<S: PolicyStore>(
    store: &S,
    v: Validated,
    canary: Option<CanaryTarget>,
    actor: &Actor,
    note: &str,
) -> Result<Published, Error> {
    store.put(&version_key(&v.version), Bytes::from(v.canonical)).await?;
    // An unreadable active pointer (corrupt, or a document from before pointers) must not stop
    // an admin from publishing over it.
    let active = match read_json::<S, ActivePointer>(store, ACTIVE).await {
        Ok(active) => active,
        Err(e) if e.kind == ErrorKind::PolicyUnavailable => None,
        Err(e) => return Err(e),
    };
    let active_before = active.as_ref().map(|a| a.version.clone());
    match canary {
        Some(target) => {
            if active.is_none() {
                return Err(Error::new(ErrorKind::Conflict, "nothing is active yet: publish to everyone first"));
            }
            if target.percent > 100 {
                return Err(Error::new(ErrorKind::InvalidRequest, "canary percent must be 0-100").with_param("canary.percent"));
            }
            let pointer = CanaryPointer {
                version: v.version.clone(),
                tenants: target.tenants,
                groups: target.groups,
                percent: target.percent,
                stamp: Stamp { published_at_ms: actor.now_ms, published_by: actor.name.clone(), note: note.into() },
            };
            put_json(store, CANARY, &pointer).await?;
            append_history(store, entry("canary", &v.version, active_before.as_deref(), actor, note)).await?;
            Ok(Published { version: v.version, target: "canary", active_before })
        }
        None => {
            activate(store, &v.version, active, "publish", actor, note).await?;
            Ok(Published { version: v.version, target: "active", active_before })
        }
    }
}

/// Makes the running canary active for everyone.
pub async fn promote<S: PolicyStore>(store: &S, actor: &Actor, note: &str) -> Result<ActivePointer, Error> {
    let (active, canary) = pointers(store).await?;
    let canary = canary.ok_or_else(|| Error::new(ErrorKind::Conflict, "no canary is running"))?;
    activate(store, &canary.version, active, "promote", actor, note).await
}

/// Ends the running canary without promoting it (everyone is served the active version again).
/// With `only`, ends it only if it is that version (`Ok(None)` otherwise).
pub async fn abort_canary<S: PolicyStore>(
    store: &S,
    only: Option<&str>,
    actor: &Actor,
    note: &str,
) -> Result<Option<CanaryPointer>, Error> {
    let (active, canary) = pointers(store).await?;
    let Some(canary) = canary else {
        return match only {
            Some(_) => Ok(None),
            None => Err(Error::new(ErrorKind::Conflict, "no canary is running")),
        };
    };
    if only.is_some_and(|v| v != canary.version) {
        return Ok(None);
    }
    store.delete(CANARY).await?;
    append_history(store, entry("canary_abort", &canary.version, active.as_ref().map(|a| a.version.as_str()), actor, note)).await?;
    Ok(Some(canary))
}

/// Moves the active pointer back: to `to` if given (any stored version), else to the version
/// active before the current one. Ends any canary.
pub async fn rollback<S: PolicyStore>(store: &S, to: Option<&str>, actor: &Actor, note: &str) -> Result<ActivePointer, Error> {
    let (active, _) = pointers(store).await?;
    let active = active.ok_or_else(|| Error::new(ErrorKind::Conflict, "nothing is active"))?;
    let target = match to {
        Some(v) => v.to_owned(),
        None => active
            .previous
            .first()
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Conflict, "there is no earlier version to roll back to"))?,
    };
    snapshot::fetch_version(store, &target, None).await.map_err(|e| match e.kind == ErrorKind::PolicyUnavailable {
        true => Error::new(ErrorKind::NotFound, format!("no usable policy version {target}: {}", e.message)),
        false => e,
    })?;
    // Rolling back to a version in the chain drops it and everything newer from the chain, so
    // rolling back again goes further back; any other target is stacked like a publish.
    let previous: Vec<String> = match active.previous.iter().position(|v| *v == target) {
        Some(i) => active.previous[i + 1..].to_vec(),
        None => std::iter::once(active.version.clone()).chain(active.previous).collect(),
    };
    point_active(store, &target, previous, Some(&active.version), "rollback", actor, note).await
}

/// A key to create.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Key id, unique in the policy.
    pub id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Roles (default `invoke`).
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
    /// Model aliases the key may use (default all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// A created key: the secret is shown this once and never stored.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    /// Key id.
    pub id: String,
    /// The secret.
    pub key: String,
    /// The policy version that holds its hash.
    pub version: String,
}

/// A new random key secret from 32 bytes of entropy.
pub fn new_secret(random: &[u8; 32]) -> String {
    format!("{KEY_PREFIX}{}", hex(random))
}

/// The active document, refusing while a canary runs (a key edit would not reach canary tenants).
async fn editable<S: PolicyStore>(store: &S) -> Result<(ActivePointer, serde_json::Map<String, serde_json::Value>), Error> {
    let (active, canary) = pointers(store).await?;
    let active = active.ok_or_else(|| Error::new(ErrorKind::Conflict, "nothing is active yet: publish a policy first"))?;
    if canary.is_some() {
        return Err(Error::new(ErrorKind::Conflict, "a canary is running: promote or roll back before changing keys"));
    }
    match document(store, &active.version).await? {
        serde_json::Value::Object(doc) => Ok((active, doc)),
        _ => Err(Error::new(ErrorKind::PolicyUnavailable, "the active policy is not a JSON object")),
    }
}

fn keys_of(doc: &mut serde_json::Map<String, serde_json::Value>) -> Result<&mut Vec<serde_json::Value>, Error> {
    match doc.entry("keys").or_insert_with(|| serde_json::Value::Array(vec![])) {
        serde_json::Value::Array(list) => Ok(list),
        _ => Err(Error::new(ErrorKind::PolicyUnavailable, "the active policy's `keys` is not a list")),
    }
}

/// Adds a key (its hash only) to the active policy and publishes the result. `random` must come
/// from the host's entropy.
pub async fn create_key<S: PolicyStore>(store: &S, spec: KeySpec, random: &[u8; 32], actor: &Actor) -> Result<CreatedKey, Error> {
    let (active, mut doc) = editable(store).await?;
    let keys = keys_of(&mut doc)?;
    if keys.iter().any(|k| k.get("id").and_then(|v| v.as_str()) == Some(spec.id.as_str())) {
        return Err(Error::new(ErrorKind::Conflict, format!("a key with id {:?} exists", spec.id)));
    }
    let secret = new_secret(random);
    let mut key = serde_json::json!({"id": spec.id, "tenant": spec.tenant, "hash": key_hash_string(&secret)});
    if let Some(roles) = &spec.roles {
        key["roles"] = serde_json::json!(roles);
    }
    if let Some(models) = &spec.models {
        key["models"] = serde_json::json!(models);
    }
    if let Some(at) = spec.expires_at {
        key["expires_at"] = serde_json::json!(at);
    }
    keys.push(key);
    let v = validate(serde_json::Value::Object(doc)).map_err(|errors| invalid_policy(&errors))?;
    store.put(&version_key(&v.version), Bytes::from(v.canonical)).await?;
    activate(store, &v.version, Some(active), "key_create", actor, &format!("create key {}", spec.id)).await?;
    Ok(CreatedKey { id: spec.id, key: secret, version: v.version })
}

/// Removes a key from the active policy and publishes the result; returns the new version and
/// the key's tenant.
pub async fn revoke_key<S: PolicyStore>(store: &S, id: &str, actor: &Actor) -> Result<(String, Option<String>), Error> {
    let (active, mut doc) = editable(store).await?;
    let keys = keys_of(&mut doc)?;
    let tenant =
        keys.iter().find(|k| k.get("id").and_then(|v| v.as_str()) == Some(id)).and_then(|k| k.get("tenant")?.as_str().map(str::to_owned));
    let before = keys.len();
    keys.retain(|k| k.get("id").and_then(|v| v.as_str()) != Some(id));
    if keys.len() == before {
        return Err(Error::new(ErrorKind::NotFound, format!("no key with id {id:?}")));
    }
    let v = validate(serde_json::Value::Object(doc)).map_err(|errors| invalid_policy(&errors))?;
    store.put(&version_key(&v.version), Bytes::from(v.canonical)).await?;
    activate(store, &v.version, Some(active), "key_revoke", actor, &format!("revoke key {id}")).await?;
    Ok((v.version, tenant))
}

/// An `/admin` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /admin/policy`: pointers and the active document.
    Read,
    /// `GET /admin/policy/versions/{version}`: a stored document.
    Version(String),
    /// `GET /admin/policy/history`.
    History,
    /// `POST /admin/policy/validate` with `{"policy": …}`.
    Validate,
    /// `POST /admin/policy/publish` with `{"policy": …, "note"?, "canary"?: {"tenants", "groups", "percent"}}`.
    Publish,
    /// `POST /admin/policy/promote` with `{"note"?}`.
    Promote,
    /// `POST /admin/policy/rollback` with `{"to"?, "note"?}`.
    Rollback,
    /// `DELETE /admin/policy/canary` with `{"note"?}`: ends the canary without promoting it.
    AbortCanary,
    /// `POST /admin/keys` with a [`KeySpec`].
    CreateKey,
    /// `DELETE /admin/keys/{id}`.
    RevokeKey(String),
    /// `GET /admin/tenants/{id}/usage`: the tenant's ledger (counters and open holds).
    Usage(String),
    /// `DELETE /admin/tenants/{id}/containment` with `{"route"?, "note"?}`: lifts containment of
    /// the tenant (all its scopes), or of one of its routes.
    ClearContainment(String),
    /// `GET /admin/tenants/{id}/audit?from&to&type&rule&request_id&policy_version&cursor&limit`:
    /// one page of the tenant's audit log, newest first (`~admin` is the log of policy actions).
    Audit(String),
    /// `GET /admin/tenants/{id}/audit/verify`: checks the tenant's audit chain.
    AuditVerify(String),
    /// `GET /admin/tenants/{id}/spend?from&to`: what the tenant's answered requests cost, by
    /// route, feature and model (from its audit log).
    Spend(String),
    /// `GET /admin/health/{location}`: a location's provider health board (breakers, latency,
    /// retry use); `default` where the host names no location.
    Health(String),
}

impl Endpoint {
    /// The endpoint for `method` and `path` (under `/admin`), and the role it needs.
    pub fn parse(method: &http::Method, path: &str) -> Result<(Endpoint, Role), Error> {
        use http::Method as M;
        let path = path.trim_end_matches('/');
        let rest = path.strip_prefix("/admin").unwrap_or(path);
        let found = match (rest, method) {
            ("/policy", &M::GET) => Some((Endpoint::Read, Role::PolicyRead)),
            ("/policy/history", &M::GET) => Some((Endpoint::History, Role::PolicyRead)),
            ("/policy/validate", &M::POST) => Some((Endpoint::Validate, Role::PolicyRead)),
            ("/policy/publish", &M::POST) => Some((Endpoint::Publish, Role::PolicyWrite)),
            ("/policy/promote", &M::POST) => Some((Endpoint::Promote, Role::PolicyWrite)),
            ("/policy/rollback", &M::POST) => Some((Endpoint::Rollback, Role::PolicyWrite)),
            ("/policy/canary", &M::DELETE) => Some((Endpoint::AbortCanary, Role::PolicyWrite)),
            ("/keys", &M::POST) => Some((Endpoint::CreateKey, Role::KeysAdmin)),
            (p, &M::GET) if p.starts_with("/policy/versions/") => {
                Some((Endpoint::Version(p["/policy/versions/".len()..].to_owned()), Role::PolicyRead))
            }
            (p, &M::GET) if p.starts_with("/tenants/") && p.ends_with("/usage") => {
                let tenant = &p["/tenants/".len()..p.len() - "/usage".len()];
                (!tenant.is_empty() && !tenant.contains('/')).then(|| (Endpoint::Usage(tenant.to_owned()), Role::AuditRead))
            }
            (p, &M::DELETE) if p.starts_with("/tenants/") && p.ends_with("/containment") => {
                let tenant = &p["/tenants/".len()..p.len() - "/containment".len()];
                (!tenant.is_empty() && !tenant.contains('/')).then(|| (Endpoint::ClearContainment(tenant.to_owned()), Role::PolicyWrite))
            }
            (p, &M::GET) if p.starts_with("/tenants/") && (p.ends_with("/audit") || p.ends_with("/audit/verify")) => {
                let verify = p.ends_with("/verify");
                let tenant = &p["/tenants/".len()..p.len() - if verify { "/audit/verify".len() } else { "/audit".len() }];
                let endpoint = if verify { Endpoint::AuditVerify(tenant.to_owned()) } else { Endpoint::Audit(tenant.to_owned()) };
                (!tenant.is_empty() && !tenant.contains('/')).then_some((endpoint, Role::AuditRead))
            }
            (p, &M::GET) if p.starts_with("/tenants/") && p.ends_with("/spend") => {
                let tenant = &p["/tenants/".len()..p.len() - "/spend".len()];
                (!tenant.is_empty() && !tenant.contains('/')).then(|| (Endpoint::Spend(tenant.to_owned()), Role::AuditRead))
            }
            (p, &M::GET) if p.starts_with("/health/") => {
                let location = &p["/health/".len()..];
                (!location.is_empty() && !location.contains('/')).then(|| (Endpoint::Health(location.to_owned()), Role::AuditRead))
            }
            (p, &M::DELETE) if p.starts_with("/keys/") => Some((Endpoint::RevokeKey(p["/keys/".len()..].to_owned()), Role::KeysAdmin)),
            _ => None,
        };
        found.ok_or_else(|| Error::new(ErrorKind::RouteNotFound, format!("no such admin endpoint: {method} {path}")))
    }

    /// The method and path that reach this endpoint (for clients of the API).
    pub fn request_line(&self) -> (http::Method, String) {
        let (method, template) = self.name().split_once(' ').unwrap_or(("GET", "/admin/policy"));
        let path = match self {
            Endpoint::Version(v) => format!("/admin/policy/versions/{v}"),
            Endpoint::RevokeKey(id) => format!("/admin/keys/{id}"),
            Endpoint::Usage(tenant) => format!("/admin/tenants/{tenant}/usage"),
            Endpoint::ClearContainment(tenant) => format!("/admin/tenants/{tenant}/containment"),
            Endpoint::Health(location) => format!("/admin/health/{location}"),
            Endpoint::Audit(tenant) => format!("/admin/tenants/{tenant}/audit"),
            Endpoint::AuditVerify(tenant) => format!("/admin/tenants/{tenant}/audit/verify"),
            Endpoint::Spend(tenant) => format!("/admin/tenants/{tenant}/spend"),
            _ => template.to_owned(),
        };
        (method.parse().unwrap_or(http::Method::GET), path)
    }

    /// The route template, for records.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Read => "GET /admin/policy",
            Endpoint::Version(_) => "GET /admin/policy/versions/{version}",
            Endpoint::History => "GET /admin/policy/history",
            Endpoint::Validate => "POST /admin/policy/validate",
            Endpoint::Publish => "POST /admin/policy/publish",
            Endpoint::Promote => "POST /admin/policy/promote",
            Endpoint::Rollback => "POST /admin/policy/rollback",
            Endpoint::AbortCanary => "DELETE /admin/policy/canary",
            Endpoint::CreateKey => "POST /admin/keys",
            Endpoint::RevokeKey(_) => "DELETE /admin/keys/{id}",
            Endpoint::Usage(_) => "GET /admin/tenants/{id}/usage",
            Endpoint::ClearContainment(_) => "DELETE /admin/tenants/{id}/containment",
            Endpoint::Health(_) => "GET /admin/health/{location}",
            Endpoint::Audit(_) => "GET /admin/tenants/{id}/audit",
            Endpoint::AuditVerify(_) => "GET /admin/tenants/{id}/audit/verify",
            Endpoint::Spend(_) => "GET /admin/tenants/{id}/spend",
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Request {
    policy: Option<serde_json::Value>,
    #[serde(default)]
    note: String,
    canary: Option<CanaryTarget>,
    to: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        Error::new(ErrorKind::InvalidRequest, format!("{path}: {}", e.into_inner())).with_param(path)
    })
}

/// The answer to a policy that does not compile: an OpenAI-shaped error plus every problem.
fn invalid_answer(errors: &[PolicyError]) -> (u16, serde_json::Value) {
    let mut body = invalid_policy(errors).to_openai_json();
    body["errors"] = errors.iter().map(|e| serde_json::json!({"path": e.path, "message": e.message})).collect();
    (422, body)
}

/// Serves one admin endpoint against `store`. `random` is fresh entropy (used by key creation).
/// Returns the status and JSON body; errors are the caller's to render.
pub async fn serve<S: PolicyStore>(
    store: &S,
    endpoint: Endpoint,
    body: &[u8],
    actor: &Actor,
    random: &[u8; 32],
) -> Result<(u16, serde_json::Value), Error> {
    let ok = |v: serde_json::Value| Ok((200, v));
    match endpoint {
        Endpoint::Read => {
            let (active, canary) = pointers(store).await?;
            let policy = match &active {
                Some(a) => Some(document(store, &a.version).await?),
                None => None,
            };
            ok(serde_json::json!({"active": active, "canary": canary, "policy": policy}))
        }
        Endpoint::Version(v) => ok(document(store, &v).await?),
        Endpoint::History => ok(serde_json::json!({"history": history(store).await?})),
        Endpoint::Validate | Endpoint::Publish => {
            let req: Request = parse_body(body)?;
            let policy = req.policy.ok_or_else(|| Error::new(ErrorKind::InvalidRequest, "`policy` is required").with_param("policy"))?;
            let v = match validate(policy) {
                Ok(v) => v,
                Err(errors) => return Ok(invalid_answer(&errors)),
            };
            if endpoint == Endpoint::Validate {
                return ok(serde_json::json!({"valid": true, "version": v.version}));
            }
            ok(serde_json::json!(publish(store, v, req.canary, actor, &req.note).await?))
        }
        Endpoint::Promote => {
            let req: Request = parse_body(body)?;
            ok(serde_json::json!({"active": promote(store, actor, &req.note).await?}))
        }
        Endpoint::Rollback => {
            let req: Request = parse_body(body)?;
            ok(serde_json::json!({"active": rollback(store, req.to.as_deref(), actor, &req.note).await?}))
        }
        Endpoint::AbortCanary => {
            let req: Request = parse_body(body)?;
            ok(serde_json::json!({"aborted": abort_canary(store, None, actor, &req.note).await?}))
        }
        Endpoint::CreateKey => {
            let spec: KeySpec = serde_json::from_slice(body).map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("key: {e}")))?;
            Ok((201, serde_json::json!(create_key(store, spec, random, actor).await?)))
        }
        Endpoint::RevokeKey(id) => {
            let (version, tenant) = revoke_key(store, &id, actor).await?;
            ok(serde_json::json!({"revoked": id, "tenant": tenant, "version": version}))
        }
        Endpoint::Usage(_)
        | Endpoint::Health(_)
        | Endpoint::ClearContainment(_)
        | Endpoint::Audit(_)
        | Endpoint::AuditVerify(_)
        | Endpoint::Spend(_) => {
            Err(Error::new(ErrorKind::Internal, "usage, health, containment and audit live in the counter store, not the policy store"))
        }
    }
}

/// The audit entry of an admin action that changed something, and the log it goes to: policy
/// publish, promote and rollback go to [`crate::audit::ADMIN_LOG`]; key changes and containment
/// lifts to their tenant's log. `body` is the request's, `answer` what the action returned; key
/// secrets are never copied (only ids, roles and models).
pub fn audit_entry(endpoint: &Endpoint, body: &[u8], answer: &serde_json::Value, actor: &Actor) -> Option<(String, crate::audit::Draft)> {
    use serde_json::json;
    let asked: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
    let admin_log = || crate::audit::ADMIN_LOG.to_owned();
    let (log, outcome, version, detail) = match endpoint {
        Endpoint::Publish => (
            admin_log(),
            "publish",
            text(answer, "version"),
            json!({"target": answer.get("target"), "active_before": answer.get("active_before"), "canary": asked.get("canary"), "note": asked.get("note")}),
        ),
        Endpoint::Promote => {
            (admin_log(), "promote", answer.get("active").and_then(|a| text(a, "version")), json!({"note": asked.get("note")}))
        }
        Endpoint::Rollback => (
            admin_log(),
            "rollback",
            answer.get("active").and_then(|a| text(a, "version")),
            json!({"to": asked.get("to"), "note": asked.get("note")}),
        ),
        Endpoint::CreateKey => (
            text(&asked, "tenant")?,
            "key_create",
            text(answer, "version"),
            json!({"key_id": answer.get("id"), "roles": asked.get("roles"), "models": asked.get("models"), "expires_at": asked.get("expires_at")}),
        ),
        Endpoint::RevokeKey(id) => {
            (text(answer, "tenant").unwrap_or_else(admin_log), "key_revoke", text(answer, "version"), json!({"key_id": id}))
        }
        Endpoint::ClearContainment(tenant) => (
            tenant.clone(),
            "containment_clear",
            None,
            json!({"cleared": answer.get("cleared"), "route": asked.get("route"), "note": asked.get("note")}),
        ),
        _ => return None,
    };
    let draft = crate::audit::Draft {
        at_ms: actor.now_ms,
        kind: "admin".into(),
        outcome: outcome.into(),
        request_id: None,
        policy_version: version,
        actor: Some(actor.name.clone()),
        decisions: Vec::new(),
        rules: Vec::new(),
        detail,
        spend: None,
    };
    Some((log, draft))
}
