//! The request phases, in order: authenticate → validate → admit → route → call upstream →
//! guard → record. Each phase here is a pure function over data; [`crate::gateway`] is the one
//! orchestrator that runs them and talks to ports between them.
//!
//! The guard phase has no rules yet (the response-guarding work adds them); its place in the
//! order is kept by the orchestrator.

use std::rc::Rc;

use http::HeaderMap;

use crate::chat::ChatRequest;
use crate::dialect::Dialect;
use crate::error::{Error, ErrorKind};
use crate::jwt::JwtIssuer;
use crate::ledger::{Amounts, LedgerAnswer, Limit, LimitState, Meter, Window};
use crate::policy::{ApiKey, Limits, OverPromptCap, Policy, Provider, Role, Target, Tenant, hash_key};

use crate::snapshot::Snapshot;

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The presented key (never its secret), shared with the policy.
    pub key: Rc<ApiKey>,
    /// The key's tenant (shared with the policy: a request does not copy it).
    pub tenant: Rc<Tenant>,
}

/// The secret presented in `Authorization: Bearer <key>` (or `x-api-key`); `missing_api_key`
/// (401) if there is none.
pub fn credential(headers: &HeaderMap) -> Result<&str, Error> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::MissingApiKey, "missing API key: send `Authorization: Bearer <key>`"))
}

/// Phase 1, **authenticate**: runs first on every `/v1` and `/admin` request. Looks the secret's
/// hash up in the snapshot, picks the policy that decides the request (the canary's for canary
/// tenants, the active one otherwise), and checks the key's expiry and that it has `needs`.
/// Unknown and expired keys are `invalid_api_key` (401); a key without the role is
/// `permission_denied` (403).
///
/// Keys are found by the SHA-256 of the presented secret, so lookup time says nothing useful
/// about the secret.
pub fn authenticate(snapshot: &Snapshot, secret: &str, now_ms: u64, needs: Role) -> Result<(Rc<Policy>, Principal), Error> {
    let hash = hash_key(secret);
    let tenant = snapshot
        .active
        .key_by_hash(&hash)
        .or_else(|| snapshot.canary.as_ref().and_then(|(_, p)| p.key_by_hash(&hash)))
        .map(|k| k.tenant.clone());
    let policy = match &tenant {
        Some(t) => snapshot.for_tenant(t),
        None => &snapshot.active,
    };
    let invalid = || Error::new(ErrorKind::InvalidApiKey, "invalid API key");
    let key = policy.key_by_hash(&hash).ok_or_else(invalid)?;
    if key.expires_at.is_some_and(|at| now_ms / 1000 >= at) {
        return Err(Error::new(ErrorKind::InvalidApiKey, "this API key has expired"));
    }
    let tenant = policy.tenant(&key.tenant).ok_or_else(|| Error::new(ErrorKind::Internal, "key refers to a missing tenant"))?;
    if !key.roles.has(needs) {
        return Err(Error::new(ErrorKind::PermissionDenied, format!("this key does not have the `{}` role", needs.name())));
    }
    Ok((Rc::clone(policy), Principal { key: Rc::clone(key), tenant: Rc::clone(tenant) }))
}

/// The principal of a verified token: its tenant must exist in `policy`, and its roles (from
/// the issuer's mapping of its claims) must include `needs`.
pub fn token_principal(
    policy: &Policy,
    issuer: &JwtIssuer,
    claims: &serde_json::Map<String, serde_json::Value>,
    needs: Role,
) -> Result<Principal, Error> {
    let (tenant, roles) = issuer.grant(claims)?;
    let tenant = policy
        .tenant(&tenant)
        .ok_or_else(|| Error::new(ErrorKind::InvalidToken, format!("the token's tenant {tenant:?} does not exist")))?;
    if !roles.has(needs) {
        return Err(Error::new(ErrorKind::PermissionDenied, format!("this token does not grant the `{}` role", needs.name())));
    }
    let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("-");
    let key = ApiKey {
        id: format!("jwt:{}:{subject}", issuer.id),
        tenant: tenant.id.clone(),
        models: None,
        roles,
        expires_at: claims.get("exp").and_then(serde_json::Value::as_u64),
        // Token subjects have no limits of their own; their tenant's apply.
        limits: Limits::default(),
    };
    Ok(Principal { key: Rc::new(key), tenant: Rc::clone(tenant) })
}

/// What a request asks for, as far as limits go: the model alias, and the product feature it
/// names (only features the tenant declares count).
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The model alias.
    pub alias: &'a str,
    /// A feature the tenant declares.
    pub feature: Option<&'a str>,
}

/// The feature a request names: the `x-edgegate-feature` header, else `metadata.feature` in the
/// body — if `tenant` declares it.
pub fn feature<'a>(tenant: &'a Tenant, headers: &HeaderMap, metadata: Option<&serde_json::Value>) -> Option<&'a str> {
    let named = headers.get("x-edgegate-feature").and_then(|v| v.to_str().ok()).or_else(|| metadata.and_then(|m| m["feature"].as_str()))?;
    tenant.features.get_key_value(named).map(|(k, _)| k.as_str())
}

/// Every [`Limits`] that applies to `principal` asking within `scope`: its tenant's plan's, its
/// tenant's, its key's, the alias's and the feature's.
fn scopes<'a>(policy: &'a Policy, principal: &'a Principal, scope: Scope<'_>) -> impl Iterator<Item = &'a Limits> {
    let feature = scope.feature.and_then(|f| principal.tenant.features.get(f));
    let plan = principal.tenant.plan.as_ref().map(|(_, limits, _)| limits);
    [plan, Some(&principal.tenant.limits), Some(&principal.key.limits), policy.model_limits(scope.alias), feature].into_iter().flatten()
}

/// The ledger counters that apply to `principal` asking within `scope`.
pub fn limits(policy: &Policy, principal: &Principal, scope: Scope<'_>) -> Vec<Limit> {
    scopes(policy, principal, scope).flat_map(|l| l.counters.iter().cloned()).collect()
}

/// The smallest `max_prompt_tokens` of every scope that applies.
fn prompt_cap(policy: &Policy, principal: &Principal, scope: Scope<'_>) -> Option<u64> {
    scopes(policy, principal, scope).filter_map(|l| l.max_prompt_tokens).min()
}

fn too_long(prompt_tokens: u64, max: u64) -> Error {
    Error::new(ErrorKind::PromptTooLong, format!("the prompt is about {prompt_tokens} tokens; at most {max} are allowed here"))
}

/// Refuses a prompt over the smallest `max_prompt_tokens` of every scope that applies (400
/// `context_length_exceeded`, naming `param`): chat messages and embedding inputs alike.
pub fn cap_prompt(policy: &Policy, principal: &Principal, scope: Scope<'_>, prompt_tokens: u64, param: &str) -> Result<(), Error> {
    match prompt_cap(policy, principal, scope) {
        Some(max) if prompt_tokens > max => Err(too_long(prompt_tokens, max).with_param(param)),
        _ => Ok(()),
    }
}

/// What [`cap`] settled for a chat request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// The prompt's tokens, as it will be sent.
    pub prompt_tokens: u64,
    /// The output tokens to reserve.
    pub output_tokens: u64,
    /// Messages dropped to fit the prompt cap (routes that drop the oldest turns).
    pub dropped_messages: usize,
}

/// Applies the token caps of every scope (the smallest wins). A prompt over `max_prompt_tokens`
/// loses its oldest turns if its route says so ([`ChatRequest::drop_oldest_turns`]), and is
/// refused if it is still over (see [`cap_prompt`]); an output cap over `max_output_tokens`, or
/// none, is set to it.
pub fn cap(
    policy: &Policy,
    principal: &Principal,
    feature: Option<&str>,
    chat: &mut ChatRequest,
    prompt_tokens: u64,
) -> Result<Caps, Error> {
    let alias = chat.model.clone();
    let scope = Scope { alias: &alias, feature };
    let mut caps = Caps { prompt_tokens, output_tokens: 0, dropped_messages: 0 };
    if let Some(max) = prompt_cap(policy, principal, scope)
        && prompt_tokens > max
    {
        if policy.route(&alias).is_none_or(|r| r.over_prompt_cap == OverPromptCap::Refuse) {
            return Err(too_long(prompt_tokens, max).with_param("messages"));
        }
        let (dropped, after) = chat.drop_oldest_turns(policy.encoding(&alias), max);
        if after > max {
            let message = format!(
                "the prompt is about {prompt_tokens} tokens and its system messages and last turn alone about {after}; at most {max} are allowed here"
            );
            return Err(Error::new(ErrorKind::PromptTooLong, message).with_param("messages"));
        }
        caps.prompt_tokens = after;
        caps.dropped_messages = dropped;
    }
    let asked = chat.max_output_tokens();
    caps.output_tokens = match scopes(policy, principal, scope).filter_map(|l| l.max_output_tokens).min() {
        Some(cap) if asked.is_none_or(|a| a > cap) => {
            let field = if chat.extra.contains_key("max_completion_tokens") { "max_completion_tokens" } else { "max_tokens" };
            chat.extra.insert(field.into(), cap.into());
            cap
        }
        _ => asked.unwrap_or_else(|| policy.estimated_output_tokens()),
    };
    Ok(caps)
}

/// One `x-ratelimit-*` family: the tightest per-minute limit of its meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeader {
    /// The limit.
    pub limit: u64,
    /// What is left in the window.
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_in_ms: u64,
}

/// Rate-limit state for the `x-ratelimit-*-requests` and `-tokens` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateState {
    /// Requests per minute.
    pub requests: Option<RateHeader>,
    /// Tokens per minute.
    pub tokens: Option<RateHeader>,
}

impl RateState {
    fn from_states(states: &[LimitState], now_ms: u64) -> Self {
        let tightest = |meter: Meter| {
            states
                .iter()
                .filter(|s| s.limit.meter == meter && s.limit.window == Window::Minute)
                .min_by_key(|s| s.remaining)
                .map(|s| RateHeader { limit: s.limit.max, remaining: s.remaining, reset_in_ms: s.reset_ms.saturating_sub(now_ms) })
        };
        RateState { requests: tightest(Meter::Requests), tokens: tightest(Meter::Tokens) }
    }
}

/// Phase 3, **admit**: runs after the body is parsed, with the ledger's answer to a reservation.
/// Admitted requests continue with their rate state. A refusal by a per-minute limit is
/// `rate_limit_exceeded` (429, with the wait until the window resets); by the concurrency limit,
/// the same with a one-second wait; by a daily or monthly budget, `budget_exceeded` (429, with the
/// wait until the period ends).
pub fn admit(answer: LedgerAnswer, now_ms: u64) -> (RateState, Result<(), Error>) {
    let state = match answer {
        LedgerAnswer::Admitted { states, .. } => return (RateState::from_states(&states, now_ms), Ok(())),
        LedgerAnswer::Settled { .. }
        | LedgerAnswer::Book { .. }
        | LedgerAnswer::Health { .. }
        | LedgerAnswer::Screened { .. }
        | LedgerAnswer::Cleared { .. }
        | LedgerAnswer::Quality { .. } => {
            return (RateState::default(), Err(Error::new(ErrorKind::Internal, "the ledger did not answer a reservation")));
        }
        LedgerAnswer::Refused { state, .. } => state,
        LedgerAnswer::Queued { ahead, .. } => {
            let e = Error::new(
                ErrorKind::RateLimited { retry_after_ms: 1000 },
                format!("{ahead} earlier requests are still waiting for room; retry"),
            );
            return (RateState::default(), Err(e));
        }
    };
    let rate = RateState::from_states(std::slice::from_ref(&state), now_ms);
    let wait = state.reset_ms.saturating_sub(now_ms);
    let secs = wait.div_ceil(1000).max(1);
    let (scope, name) = state.limit.id.split_once('/').unwrap_or(("tenant", &state.limit.id));
    let who = if scope == "tenant" { "this tenant".to_owned() } else { format!("this {}", scope.replace(':', " ")) };
    let max = state.limit.max;
    let err = match (state.limit.meter, state.limit.window) {
        (Meter::Concurrent, _) => Error::new(
            ErrorKind::RateLimited { retry_after_ms: 1000 },
            format!("{max} concurrent requests are in flight for {who}; retry when one finishes"),
        ),
        (_, Window::Minute | Window::Open) => Error::new(
            ErrorKind::RateLimited { retry_after_ms: wait },
            format!("rate limit {name} of {max} reached for {who}; retry after {secs}s"),
        ),
        (Meter::Spend, _) => Error::new(
            ErrorKind::BudgetExceeded { retry_after_ms: wait },
            format!("budget {name} of ${}.{:06} is spent for {who}; it renews in {secs}s", max / 1_000_000, max % 1_000_000),
        ),
        (_, Window::Day | Window::Month) => Error::new(
            ErrorKind::BudgetExceeded { retry_after_ms: wait },
            format!("budget {name} of {max} is spent for {who}; it renews in {secs}s"),
        ),
    };
    (rate, Err(err))
}

/// Phase 2, **validate**: parses the body in the caller's dialect into the canonical request and
/// checks it (prompt rules join here later).
pub fn validate(dialect: &dyn Dialect, body: &[u8]) -> Result<ChatRequest, Error> {
    let chat = dialect.parse_chat(body)?;
    chat.check_limits()?;
    Ok(chat)
}

/// What to reserve for a request of `prompt` tokens and up to `output` more, served by one of
/// `plan`: the tokens, and the cost on the dearest priced candidate (unpriced ones cost nothing),
/// so failover can never spend beyond the hold.
pub fn ask(plan: &[Candidate], prompt: u64, output: u64) -> Amounts {
    let micro_usd = plan.iter().filter_map(|c| c.target.price).map(|p| p.cost(prompt, output)).max().unwrap_or(0);
    Amounts { tokens: prompt.saturating_add(output), micro_usd }
}

/// One step of a routing plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The provider to call.
    pub provider: Rc<Provider>,
    /// The model to ask it for.
    pub target: Rc<Target>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::key_hash_string;

    fn policy() -> Policy {
        let doc = serde_json::json!({
            "tenants": [{"id": "t1", "limits": {"requests_per_minute": 5}}, {"id": "t2"}],
            "keys": [
                {"id": "k1", "tenant": "t1", "hash": key_hash_string("sk-one")},
                {"id": "k2", "tenant": "t2", "hash": key_hash_string("sk-two"), "models": ["small"]}
            ],
            "providers": [{"id": "m", "kind": "mock"}, {"id": "o", "kind": "openai_compatible", "base_url": "http://127.0.0.1:1/v1"}],
            "models": [
                {"alias": "small", "targets": [{"provider": "m", "model": "s"}]},
                {"alias": "big", "targets": [{"provider": "o", "model": "b1"}, {"provider": "m", "model": "b2"}]}
            ]
        });
        Policy::compile(doc.to_string().as_bytes()).unwrap_or_else(|e| unreachable!("{e:?}"))
    }

    fn snapshot(doc: serde_json::Value) -> Snapshot {
        let p = Policy::compile(doc.to_string().as_bytes()).unwrap_or_else(|e| unreachable!("{e:?}"));
        Snapshot { active: Rc::new(p), canary: None }
    }

    fn auth(headers: &[(&'static str, &str)]) -> Result<String, &'static str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap_or_else(|_| unreachable!()));
        }
        let secret = credential(&map).map_err(|e| e.metric_label())?;
        authenticate(&Snapshot { active: Rc::new(policy()), canary: None }, secret, 0, Role::Invoke)
            .map(|(_, p)| p.key.id.clone())
            .map_err(|e| e.metric_label())
    }

    #[test]
    fn authenticate_cases() {
        assert_eq!(auth(&[("authorization", "Bearer sk-one")]), Ok("k1".into()));
        assert_eq!(auth(&[("authorization", "bearer sk-two")]), Ok("k2".into()));
        assert_eq!(auth(&[("x-api-key", "sk-two")]), Ok("k2".into()));
        assert_eq!(auth(&[]), Err("missing_api_key"));
        assert_eq!(auth(&[("authorization", "Bearer ")]), Err("missing_api_key"));
        assert_eq!(auth(&[("authorization", "Basic c2stb25l")]), Err("missing_api_key"));
        assert_eq!(auth(&[("authorization", "Bearer sk-three")]), Err("invalid_api_key"));
    }

    #[test]
    fn roles_and_expiry() {
        let s = snapshot(serde_json::json!({
            "tenants": [{"id": "t"}],
            "keys": [
                {"id": "user", "tenant": "t", "hash": key_hash_string("sk-user")},
                {"id": "admin", "tenant": "t", "hash": key_hash_string("sk-admin"), "roles": ["policy:read", "policy:write"]},
                {"id": "both", "tenant": "t", "hash": key_hash_string("sk-both"), "roles": ["invoke", "keys:admin"]},
                {"id": "old", "tenant": "t", "hash": key_hash_string("sk-old"), "expires_at": 1_000}
            ]
        }));
        let check =
            |secret, role, now_ms| authenticate(&s, secret, now_ms, role).map(|(_, p)| p.key.id.clone()).map_err(|e| e.metric_label());
        assert_eq!(check("sk-user", Role::Invoke, 0), Ok("user".into()));
        assert_eq!(check("sk-user", Role::PolicyRead, 0), Err("permission_denied"));
        assert_eq!(check("sk-admin", Role::PolicyWrite, 0), Ok("admin".into()));
        assert_eq!(check("sk-admin", Role::Invoke, 0), Err("permission_denied"), "admin roles never imply invoke");
        assert_eq!(check("sk-admin", Role::KeysAdmin, 0), Err("permission_denied"));
        assert_eq!(check("sk-both", Role::KeysAdmin, 0), Ok("both".into()));
        assert_eq!(check("sk-old", Role::Invoke, 999_999), Ok("old".into()));
        assert_eq!(check("sk-old", Role::Invoke, 1_000_000), Err("invalid_api_key"));
    }

    #[test]
    fn canary_tenants_are_decided_by_the_canary_policy() {
        let doc = |limit: u64, extra_key: bool| {
            let mut keys = vec![
                serde_json::json!({"id": "a", "tenant": "a", "hash": key_hash_string("sk-a")}),
                serde_json::json!({"id": "b", "tenant": "b", "hash": key_hash_string("sk-b")}),
            ];
            if extra_key {
                keys.push(serde_json::json!({"id": "a2", "tenant": "a", "hash": key_hash_string("sk-a2")}));
            }
            serde_json::json!({"tenants": [{"id": "a", "limits": {"requests_per_minute": limit}}, {"id": "b"}], "keys": keys})
        };
        let stable = snapshot(doc(1, false)).active;
        let canary = snapshot(doc(2, true)).active;
        let pointer = crate::snapshot::CanaryPointer {
            version: canary.version.clone(),
            tenants: vec!["a".into()],
            groups: vec![],
            percent: 0,
            stamp: crate::snapshot::Stamp::default(),
        };
        let s = Snapshot { active: Rc::clone(&stable), canary: Some((pointer, Rc::clone(&canary))) };
        let version = |secret| authenticate(&s, secret, 0, Role::Invoke).map(|(p, _)| p.version.clone()).map_err(|e| e.metric_label());
        assert_eq!(version("sk-a"), Ok(canary.version.clone()));
        assert_eq!(version("sk-a2"), Ok(canary.version.clone()), "a key only the canary knows works for canary tenants");
        assert_eq!(version("sk-b"), Ok(stable.version.clone()));
    }

    #[test]
    fn limits_gather_every_scope() {
        let s = Snapshot { active: Rc::new(policy()), canary: None };
        let p = &s.active;
        let one = authenticate(&s, "sk-one", 0, Role::Invoke).map(|(_, p)| p).unwrap_or_else(|e| unreachable!("{e}"));
        let two = authenticate(&s, "sk-two", 0, Role::Invoke).map(|(_, p)| p).unwrap_or_else(|e| unreachable!("{e}"));
        let scope = |alias| Scope { alias, feature: None };
        assert_eq!(
            limits(p, &one, scope("big")).iter().map(|l| (l.id.as_str(), l.max)).collect::<Vec<_>>(),
            [("tenant/requests_per_minute", 5)]
        );
        assert!(limits(p, &two, scope("small")).is_empty());
    }

    #[test]
    fn the_ask_holds_the_dearest_priced_candidate() {
        let p = policy();
        let candidate = |model: &str, price: Option<(u64, u64)>| Candidate {
            provider: p.provider_rc("m").cloned().unwrap_or_else(|| unreachable!()),
            target: Rc::new(Target {
                provider: "m".into(),
                model: model.into(),
                price: price.map(|(i, o)| crate::policy::Price::flat(i, o)),
                ..Target::default()
            }),
        };
        let plan =
            [candidate("cheap", Some((150_000, 600_000))), candidate("free", None), candidate("dear", Some((2_500_000, 10_000_000)))];
        // 1,000 prompt tokens and 500 output: $0.0025 + $0.005 on the dear one.
        assert_eq!(ask(&plan, 1_000, 500), Amounts { tokens: 1_500, micro_usd: 7_500 });
        assert_eq!(ask(&plan[..2], 1, 1), Amounts { tokens: 2, micro_usd: 1 }, "a fraction of a micro-dollar rounds up");
        assert_eq!(ask(&plan[1..2], 1_000, 500).micro_usd, 0);
    }

    #[test]
    fn refusals_become_429s_that_say_which_limit_and_when() {
        let refused = |id: &str, meter, window, reset_ms| {
            let state = LimitState { limit: Limit { id: id.into(), meter, window, max: 5, alerts: vec![] }, remaining: 0, reset_ms };
            let err = admit(LedgerAnswer::Refused { state, alerts: vec![], containment: Default::default() }, 9_000)
                .1
                .err()
                .unwrap_or_else(|| unreachable!());
            (err.status(), err.metric_label(), err.retry_after_secs(), err.message)
        };
        assert_eq!(
            refused("tenant/requests_per_minute", Meter::Requests, Window::Minute, 10_500),
            (429, "rate_limit_exceeded", Some(2), "rate limit requests_per_minute of 5 reached for this tenant; retry after 2s".into())
        );
        assert_eq!(
            refused("key:ci/tokens_per_day", Meter::Tokens, Window::Day, 86_400_000),
            (429, "budget_exceeded", Some(86_391), "budget tokens_per_day of 5 is spent for this key ci; it renews in 86391s".into())
        );
        assert_eq!(refused("tenant/concurrent_requests", Meter::Concurrent, Window::Open, u64::MAX).2, Some(1));

        let states = vec![
            LimitState {
                limit: Limit {
                    id: "tenant/requests_per_minute".into(),
                    meter: Meter::Requests,
                    window: Window::Minute,
                    max: 50,
                    alerts: vec![],
                },
                remaining: 40,
                reset_ms: 60_000,
            },
            LimitState {
                limit: Limit {
                    id: "key:k/requests_per_minute".into(),
                    meter: Meter::Requests,
                    window: Window::Minute,
                    max: 10,
                    alerts: vec![],
                },
                remaining: 3,
                reset_ms: 60_000,
            },
            LimitState {
                limit: Limit { id: "tenant/tokens_per_day".into(), meter: Meter::Tokens, window: Window::Day, max: 10, alerts: vec![] },
                remaining: 1,
                reset_ms: 86_400_000,
            },
        ];
        let (rate, ok) = admit(LedgerAnswer::Admitted { states, containment: Default::default() }, 1_000);
        assert!(ok.is_ok());
        assert_eq!(rate.requests, Some(RateHeader { limit: 10, remaining: 3, reset_in_ms: 59_000 }), "the tightest per-minute limit");
        assert_eq!(rate.tokens, None, "budgets are not per-minute rate headers");
    }
}
