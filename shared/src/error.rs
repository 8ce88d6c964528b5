//! The gateway's one error type.
//!
//! An [`Error`] is data: building one never logs. Its [`ErrorKind`] decides, in this file and
//! nowhere else, the HTTP status, the side that caused it, whether another candidate may be tried,
//! and the low-cardinality label used in metrics and the wire `code`.

use std::fmt;

/// Longest provider `Retry-After` passed on to callers, in seconds.
pub const MAX_UPSTREAM_RETRY_AFTER_SECS: u64 = 60;

/// Who caused an error. Downstream is the client, upstream is the provider, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The caller sent something the gateway refuses (4xx).
    Downstream,
    /// A provider failed or misbehaved (502/504).
    Upstream,
    /// The gateway or one of its stores failed (5xx).
    Internal,
}

/// What went wrong. Each variant maps to exactly one status and one stable wire code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON.
    InvalidJson,
    /// The body is JSON but not a valid request for this endpoint.
    InvalidRequest,
    /// The prompt is longer than policy allows.
    PromptTooLong,
    /// The prompt firewall refused the prompt (injection, or personal data policy blocks).
    PromptBlocked,
    /// The body exceeds the gateway's size limit.
    PayloadTooLarge,
    /// The request's headers exceed the gateway's limits (total size or count).
    HeadersTooLarge,
    /// No API key was presented.
    MissingApiKey,
    /// The API key is unknown, revoked, expired or malformed.
    InvalidApiKey,
    /// A bearer token (JWT) failed verification: signature, algorithm, issuer, audience, time or claims.
    InvalidToken,
    /// The caller is authenticated but lacks the role this endpoint needs.
    PermissionDenied,
    /// A policy document sent to the admin API does not compile.
    InvalidPolicy,
    /// The admin operation does not fit the current state (no canary to promote, nothing to roll back to).
    Conflict,
    /// The model alias does not exist or this key may not use it.
    ModelNotFound,
    /// No such endpoint.
    RouteNotFound,
    /// The named admin object (key, policy version) does not exist.
    NotFound,
    /// The endpoint exists but not with this method.
    MethodNotAllowed,
    /// The tenant is over a rate limit; retry after the given number of milliseconds.
    RateLimited {
        /// Milliseconds until the limit resets.
        retry_after_ms: u64,
    },
    /// The tenant or key has spent a daily or monthly token budget; it renews after the given
    /// number of milliseconds.
    BudgetExceeded {
        /// Milliseconds until the budget period ends.
        retry_after_ms: u64,
    },
    /// The provider could not be reached (connection refused, DNS, TLS, outbound host denied).
    UpstreamUnavailable,
    /// The provider answered with an error status.
    UpstreamStatus(u16),
    /// The provider refused for rate or quota (429); its `Retry-After`, if it sent one.
    UpstreamRateLimited {
        /// The provider's requested wait in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// The provider rejected the request as invalid (a 4xx other than 401/403/408/429).
    UpstreamRejected(u16),
    /// The provider's answer could not be understood.
    UpstreamProtocol,
    /// The provider did not answer in time.
    UpstreamTimeout,
    /// No policy snapshot could be loaded, or the stored one does not compile.
    PolicyUnavailable,
    /// A counter store or other host store failed.
    StoreUnavailable,
    /// No provider deployment the residency constraints allow could serve the request: none
    /// exists (`retryable: false`) or every one failed (`retryable: true`). Never relaxed.
    ResidencyUnavailable {
        /// Whether time may heal it (compliant deployments exist but failed).
        retryable: bool,
    },
    /// A provider credential named in policy is not configured on this host.
    SecretMissing,
    /// A bug or an impossible state inside the gateway.
    Internal,
}

/// Whether the orchestrator may try the next candidate of a plan after this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retry {
    /// Trying again elsewhere cannot help.
    No,
    /// Another candidate may succeed.
    Next,
}

/// The gateway's error: a kind, a human message, and the request field at fault, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A message for the caller. Never contains secrets or prompt text.
    pub message: String,
    /// The request field at fault (OpenAI's `param`).
    pub param: Option<String>,
}

impl Error {
    /// An error of `kind` with a message for the caller.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), param: None }
    }

    /// Names the request field at fault.
    #[must_use]
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The HTTP status this error is answered with. The only status mapping in the gateway.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::PromptTooLong
            | ErrorKind::PromptBlocked
            | ErrorKind::UpstreamRejected(_) => 400,
            ErrorKind::MissingApiKey | ErrorKind::InvalidApiKey | ErrorKind::InvalidToken => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::Conflict => 409,
            ErrorKind::InvalidPolicy => 422,
            ErrorKind::ModelNotFound | ErrorKind::RouteNotFound | ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::RateLimited { .. } | ErrorKind::UpstreamRateLimited { .. } | ErrorKind::BudgetExceeded { .. } => 429,
            ErrorKind::UpstreamUnavailable | ErrorKind::UpstreamStatus(_) | ErrorKind::UpstreamProtocol => 502,
            ErrorKind::PolicyUnavailable | ErrorKind::StoreUnavailable | ErrorKind::ResidencyUnavailable { .. } => 503,
            ErrorKind::UpstreamTimeout => 504,
            ErrorKind::SecretMissing | ErrorKind::Internal => 500,
        }
    }

    /// Who caused the error.
    pub fn side(&self) -> Side {
        match self.kind {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidRequest
            | ErrorKind::PromptTooLong
            | ErrorKind::PromptBlocked
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::MissingApiKey
            | ErrorKind::InvalidApiKey
            | ErrorKind::InvalidToken
            | ErrorKind::PermissionDenied
            | ErrorKind::InvalidPolicy
            | ErrorKind::Conflict
            | ErrorKind::ModelNotFound
            | ErrorKind::RouteNotFound
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RateLimited { .. }
            | ErrorKind::BudgetExceeded { .. }
            | ErrorKind::UpstreamRejected(_) => Side::Downstream,
            ErrorKind::UpstreamUnavailable
            | ErrorKind::UpstreamStatus(_)
            | ErrorKind::UpstreamRateLimited { .. }
            | ErrorKind::UpstreamProtocol
            | ErrorKind::UpstreamTimeout => Side::Upstream,
            ErrorKind::PolicyUnavailable
            | ErrorKind::StoreUnavailable
            | ErrorKind::ResidencyUnavailable { .. }
            | ErrorKind::SecretMissing
            | ErrorKind::Internal => Side::Internal,
        }
    }

    /// Whether the next candidate of a routing plan may be tried.
    pub fn retry(&self) -> Retry {
        match self.kind {
            ErrorKind::UpstreamUnavailable | ErrorKind::UpstreamTimeout | ErrorKind::SecretMissing => Retry::Next,
            ErrorKind::UpstreamStatus(_) | ErrorKind::UpstreamRateLimited { .. } | ErrorKind::UpstreamProtocol => Retry::Next,
            _ => Retry::No,
        }
    }

    /// The low-cardinality label for metrics and the wire `code` field.
    pub fn metric_label(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::PromptTooLong => "context_length_exceeded",
            ErrorKind::PromptBlocked => "prompt_blocked",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::MissingApiKey => "missing_api_key",
            ErrorKind::InvalidApiKey => "invalid_api_key",
            ErrorKind::InvalidToken => "invalid_token",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::InvalidPolicy => "invalid_policy",
            ErrorKind::Conflict => "conflict",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::RouteNotFound => "route_not_found",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RateLimited { .. } => "rate_limit_exceeded",
            ErrorKind::BudgetExceeded { .. } => "budget_exceeded",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamStatus(_) => "upstream_error",
            ErrorKind::UpstreamRateLimited { .. } => "upstream_rate_limited",
            ErrorKind::UpstreamRejected(_) => "upstream_rejected",
            ErrorKind::UpstreamProtocol => "upstream_protocol_error",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::PolicyUnavailable => "policy_unavailable",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::ResidencyUnavailable { .. } => "residency_unavailable",
            ErrorKind::SecretMissing => "provider_credential_missing",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// OpenAI's error `type` for this error.
    pub fn openai_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidApiKey | ErrorKind::MissingApiKey | ErrorKind::InvalidToken => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited { .. } | ErrorKind::UpstreamRateLimited { .. } => "rate_limit_error",
            ErrorKind::BudgetExceeded { .. } => "insufficient_quota",
            _ => match self.side() {
                Side::Downstream => "invalid_request_error",
                Side::Upstream => "upstream_error",
                Side::Internal => "server_error",
            },
        }
    }

    /// Seconds for a `Retry-After` header, rounded up, if the caller should wait. A provider's
    /// wait is clamped to [`MAX_UPSTREAM_RETRY_AFTER_SECS`] so a confused provider cannot park
    /// clients for hours.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::RateLimited { retry_after_ms } | ErrorKind::BudgetExceeded { retry_after_ms } => {
                Some(retry_after_ms.div_ceil(1000).max(1))
            }
            ErrorKind::UpstreamRateLimited { retry_after_ms } => {
                Some(retry_after_ms.unwrap_or(1000).div_ceil(1000).clamp(1, MAX_UPSTREAM_RETRY_AFTER_SECS))
            }
            _ => None,
        }
    }

    /// The `x-should-retry` answer: whether the same request, sent again later, may succeed.
    /// The gateway has already walked its plan, so this is about time healing the failure, and
    /// it stops SDKs from retrying requests that can never succeed.
    pub fn should_retry(&self) -> bool {
        match self.side() {
            Side::Downstream => matches!(self.kind, ErrorKind::RateLimited { .. }),
            Side::Upstream => true,
            Side::Internal => matches!(
                self.kind,
                ErrorKind::PolicyUnavailable | ErrorKind::StoreUnavailable | ErrorKind::ResidencyUnavailable { retryable: true }
            ),
        }
    }

    /// The OpenAI-shaped wire body: `{"error":{"message","type","param","code"}}`.
    pub fn to_openai_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.metric_label(),
            }
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.metric_label(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ErrorKind, status: u16, side: Side, code: &str, ty: &str) {
        let e = Error::new(kind, "m");
        assert_eq!((e.status(), e.side(), e.metric_label(), e.openai_type()), (status, side, code, ty));
    }

    #[test]
    fn mapping_is_total_and_stable() {
        use ErrorKind as K;
        use Side::*;
        check(K::InvalidJson, 400, Downstream, "invalid_json", "invalid_request_error");
        check(K::InvalidRequest, 400, Downstream, "invalid_request", "invalid_request_error");
        check(K::PromptTooLong, 400, Downstream, "context_length_exceeded", "invalid_request_error");
        check(K::PromptBlocked, 400, Downstream, "prompt_blocked", "invalid_request_error");
        check(K::PayloadTooLarge, 413, Downstream, "payload_too_large", "invalid_request_error");
        check(K::HeadersTooLarge, 431, Downstream, "headers_too_large", "invalid_request_error");
        check(K::MissingApiKey, 401, Downstream, "missing_api_key", "authentication_error");
        check(K::InvalidApiKey, 401, Downstream, "invalid_api_key", "authentication_error");
        check(K::InvalidToken, 401, Downstream, "invalid_token", "authentication_error");
        check(K::PermissionDenied, 403, Downstream, "permission_denied", "permission_error");
        check(K::InvalidPolicy, 422, Downstream, "invalid_policy", "invalid_request_error");
        check(K::Conflict, 409, Downstream, "conflict", "invalid_request_error");
        check(K::ModelNotFound, 404, Downstream, "model_not_found", "invalid_request_error");
        check(K::RouteNotFound, 404, Downstream, "route_not_found", "invalid_request_error");
        check(K::NotFound, 404, Downstream, "not_found", "invalid_request_error");
        check(K::MethodNotAllowed, 405, Downstream, "method_not_allowed", "invalid_request_error");
        check(K::RateLimited { retry_after_ms: 1 }, 429, Downstream, "rate_limit_exceeded", "rate_limit_error");
        check(K::BudgetExceeded { retry_after_ms: 1 }, 429, Downstream, "budget_exceeded", "insufficient_quota");
        check(K::UpstreamUnavailable, 502, Upstream, "upstream_unavailable", "upstream_error");
        check(K::UpstreamStatus(503), 502, Upstream, "upstream_error", "upstream_error");
        check(K::UpstreamRateLimited { retry_after_ms: None }, 429, Upstream, "upstream_rate_limited", "rate_limit_error");
        check(K::UpstreamRejected(422), 400, Downstream, "upstream_rejected", "invalid_request_error");
        check(K::UpstreamProtocol, 502, Upstream, "upstream_protocol_error", "upstream_error");
        check(K::UpstreamTimeout, 504, Upstream, "upstream_timeout", "upstream_error");
        check(K::PolicyUnavailable, 503, Internal, "policy_unavailable", "server_error");
        check(K::StoreUnavailable, 503, Internal, "store_unavailable", "server_error");
        check(K::ResidencyUnavailable { retryable: false }, 503, Internal, "residency_unavailable", "server_error");
        check(K::SecretMissing, 500, Internal, "provider_credential_missing", "server_error");
        check(K::Internal, 500, Internal, "internal_error", "server_error");
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        let e = |ms| Error::new(ErrorKind::RateLimited { retry_after_ms: ms }, "").retry_after_secs();
        assert_eq!(e(0), Some(1));
        assert_eq!(e(1), Some(1));
        assert_eq!(e(1000), Some(1));
        assert_eq!(e(1001), Some(2));
        assert_eq!(Error::new(ErrorKind::Internal, "").retry_after_secs(), None);
        let up = |ms| Error::new(ErrorKind::UpstreamRateLimited { retry_after_ms: ms }, "").retry_after_secs();
        assert_eq!((up(None), up(Some(0)), up(Some(7_500)), up(Some(3_600_000))), (Some(1), Some(1), Some(8), Some(60)));
    }

    #[test]
    fn should_retry_only_when_time_can_help() {
        let r = |k| Error::new(k, "").should_retry();
        assert!(r(ErrorKind::RateLimited { retry_after_ms: 5 }));
        assert!(r(ErrorKind::UpstreamRateLimited { retry_after_ms: None }));
        assert!(r(ErrorKind::UpstreamStatus(503)));
        assert!(r(ErrorKind::StoreUnavailable));
        assert!(!r(ErrorKind::InvalidRequest));
        assert!(!r(ErrorKind::InvalidApiKey));
        assert!(!r(ErrorKind::UpstreamRejected(400)));
        assert!(!r(ErrorKind::SecretMissing));
        assert!(r(ErrorKind::ResidencyUnavailable { retryable: true }), "allowed deployments exist but failed");
        assert!(!r(ErrorKind::ResidencyUnavailable { retryable: false }), "no deployment is allowed");
        assert!(!r(ErrorKind::BudgetExceeded { retry_after_ms: 5 }), "a spent budget does not come back in seconds");
    }

    #[test]
    fn wire_body_is_openai_shaped() {
        let e = Error::new(ErrorKind::InvalidRequest, "messages must not be empty").with_param("messages");
        assert_eq!(
            e.to_openai_json().to_string(),
            r#"{"error":{"code":"invalid_request","message":"messages must not be empty","param":"messages","type":"invalid_request_error"}}"#
        );
    }

    #[test]
    fn only_upstream_failures_move_to_the_next_candidate() {
        assert_eq!(Error::new(ErrorKind::UpstreamStatus(500), "").retry(), Retry::Next);
        assert_eq!(Error::new(ErrorKind::UpstreamStatus(429), "").retry(), Retry::Next);
        assert_eq!(Error::new(ErrorKind::UpstreamUnavailable, "").retry(), Retry::Next);
        assert_eq!(Error::new(ErrorKind::UpstreamRejected(400), "").retry(), Retry::No);
        assert_eq!(Error::new(ErrorKind::InvalidRequest, "").retry(), Retry::No);
    }
}
