//! The request phases, in order: authenticate → admit → validate → route → call upstream →
//! guard → record. Each phase here is a pure function over data; [`crate::gateway`] is the one
//! orchestrator that runs them and talks to ports between them.
//!
//! The guard phase has no rules yet (the response-guarding work adds them); its place in the
//! order is kept by the orchestrator.

use http::HeaderMap;

use crate::chat::ChatRequest;
use crate::dialect::Dialect;
use crate::error::{Error, ErrorKind};
use crate::ledger::{Admission, RateLimit};
use crate::policy::{ApiKey, Policy, Provider, Target, Tenant};

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The presented key (never its secret).
    pub key: ApiKey,
    /// The key's tenant.
    pub tenant: Tenant,
}

/// Phase 1, **authenticate**: runs first on every `/v1` request. Reads the key from
/// `Authorization: Bearer <key>` (or `x-api-key`), looks its hash up in the policy snapshot, and
/// returns the principal; `missing_api_key` / `invalid_api_key` (401) otherwise.
pub fn authenticate(policy: &Policy, headers: &HeaderMap) -> Result<Principal, Error> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let secret = bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::MissingApiKey, "missing API key: send `Authorization: Bearer <key>`"))?;
    let key = policy.key_by_secret(secret).ok_or_else(|| Error::new(ErrorKind::InvalidApiKey, "invalid API key"))?;
    let tenant = policy.tenant(&key.tenant).ok_or_else(|| Error::new(ErrorKind::Internal, "key refers to a missing tenant"))?;
    Ok(Principal { key: key.clone(), tenant: tenant.clone() })
}

/// What the admit phase must ask the tenant's ledger, if anything: a counter name and its limit.
pub fn admission_query(principal: &Principal) -> Option<(&'static str, RateLimit)> {
    let limit = principal.tenant.requests_per_minute?;
    Some(("requests_per_minute", limit))
}

/// Rate-limit state for the `x-ratelimit-*-requests` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// The limit.
    pub limit: u64,
    /// Requests left in the window.
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_in_ms: u64,
}

/// Phase 2, **admit**: runs after authentication with the ledger's answer. Admitted requests
/// continue with their rate state; refused ones become `rate_limit_exceeded` (429) carrying the
/// wait until the window resets.
pub fn admit(answer: Admission, now_ms: u64) -> (RateState, Result<(), Error>) {
    match answer {
        Admission::Admitted { limit, remaining, reset_ms } => {
            (RateState { limit, remaining, reset_in_ms: reset_ms.saturating_sub(now_ms) }, Ok(()))
        }
        Admission::Refused { limit, reset_ms } => {
            let wait = reset_ms.saturating_sub(now_ms);
            let state = RateState { limit, remaining: 0, reset_in_ms: wait };
            let err = Error::new(
                ErrorKind::RateLimited { retry_after_ms: wait },
                format!("rate limit of {limit} requests per minute reached for this tenant; retry after {}s", wait.div_ceil(1000).max(1)),
            );
            (state, Err(err))
        }
    }
}

/// Phase 3, **validate**: parses the body in the caller's dialect into the canonical request and
/// checks it (prompt rules join here later).
pub fn validate(dialect: &dyn Dialect, body: &[u8]) -> Result<ChatRequest, Error> {
    let chat = dialect.parse_chat(body)?;
    chat.check_limits()?;
    Ok(chat)
}

/// One step of a routing plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The provider to call.
    pub provider: Provider,
    /// The model to ask it for.
    pub target: Target,
}

/// Phase 4, **route**: turns the requested alias into an ordered plan of candidates. An alias
/// that does not exist, or that this key may not use, is `model_not_found` (404) — the two are
/// not distinguished, so keys cannot probe for aliases.
pub fn route(policy: &Policy, principal: &Principal, alias: &str) -> Result<Vec<Candidate>, Error> {
    let not_found = || {
        Error::new(ErrorKind::ModelNotFound, format!("the model `{alias}` does not exist or you do not have access to it"))
            .with_param("model")
    };
    if !principal.key.may_use(alias) {
        return Err(not_found());
    }
    let targets = policy.targets(alias).ok_or_else(not_found)?;
    targets
        .iter()
        .map(|t| {
            let provider = policy.provider(&t.provider).ok_or_else(|| Error::new(ErrorKind::Internal, "route names a missing provider"))?;
            Ok(Candidate { provider: provider.clone(), target: t.clone() })
        })
        .collect()
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

    fn auth(headers: &[(&'static str, &str)]) -> Result<String, &'static str> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap_or_else(|_| unreachable!()));
        }
        authenticate(&policy(), &map).map(|p| p.key.id).map_err(|e| e.metric_label())
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
    fn route_respects_key_scopes_and_keeps_target_order() {
        let p = policy();
        let one = authenticate(
            &p,
            &[(http::header::AUTHORIZATION, "Bearer sk-one".parse().unwrap_or_else(|_| unreachable!()))].into_iter().collect(),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let two = authenticate(
            &p,
            &[(http::header::AUTHORIZATION, "Bearer sk-two".parse().unwrap_or_else(|_| unreachable!()))].into_iter().collect(),
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let plan: Vec<String> = route(&p, &one, "big").unwrap_or_default().into_iter().map(|c| c.target.model).collect();
        assert_eq!(plan, ["b1", "b2"]);
        assert_eq!(route(&p, &two, "big").map_err(|e| e.metric_label()), Err("model_not_found"));
        assert_eq!(route(&p, &one, "nope").map_err(|e| e.metric_label()), Err("model_not_found"));
        assert_eq!(admission_query(&one).map(|(s, l)| (s, l.limit)), Some(("requests_per_minute", 5)));
        assert_eq!(admission_query(&two), None);
    }

    #[test]
    fn refused_admission_becomes_a_429_with_the_wait() {
        let (state, res) = admit(Admission::Refused { limit: 5, reset_ms: 10_500 }, 9_000);
        assert_eq!(state, RateState { limit: 5, remaining: 0, reset_in_ms: 1_500 });
        let err = res.err().unwrap_or_else(|| unreachable!());
        assert_eq!((err.status(), err.retry_after_secs()), (429, Some(2)));
        let (state, res) = admit(Admission::Admitted { limit: 5, remaining: 4, reset_ms: 60_000 }, 1_000);
        assert_eq!((state.remaining, state.reset_in_ms, res.is_ok()), (4, 59_000, true));
    }
}
