//! Feedback on answers (`POST /v1/feedback`) and the quality SLO a canary policy is held to.
//!
//! A score is taken only for a request the caller's tenant made and the gateway answered, found
//! in the tenant's audit log (which also says the model alias and the policy version that decided
//! it), and only once per request. Scores are tallied per policy version and route in the counter
//! store (see [`crate::ledger::quality_book`]); when the version is the running canary and its
//! mean over at least `min_feedback` scores is below the SLO, the gateway ends the canary.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::ledger::Quality;
use crate::policy::QualitySettings;

/// Longest label.
const MAX_LABEL: usize = 64;

/// A feedback body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The `x-request-id` of the answer.
    pub request_id: String,
    /// How good it was, 0 (useless) to 1 (right).
    pub score: f64,
    /// A short tag of the caller's (`thumbs_down`, `wrong_language`, …).
    #[serde(default)]
    pub label: Option<String>,
    /// Whether the user escalated (asked for a human, reported the answer).
    #[serde(default)]
    pub escalated: bool,
}

impl Feedback {
    /// Parses and checks a body; each problem is a 400 naming its field.
    pub fn parse(body: &[u8]) -> Result<Feedback, Error> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let f: Feedback = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let kind = if inner.is_syntax() || inner.is_eof() { ErrorKind::InvalidJson } else { ErrorKind::InvalidRequest };
            Error::new(kind, format!("feedback: {path}: {inner}")).with_param(path)
        })?;
        if !(0.0..=1.0).contains(&f.score) {
            return Err(Error::new(ErrorKind::InvalidRequest, "`score` must be between 0 and 1").with_param("score"));
        }
        if f.request_id.is_empty() || f.request_id.len() > 64 {
            return Err(Error::new(ErrorKind::InvalidRequest, "`request_id` must be a request id").with_param("request_id"));
        }
        let label_ok = |l: &String| l.len() <= MAX_LABEL && l.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !f.label.as_ref().is_none_or(label_ok) {
            return Err(Error::new(ErrorKind::InvalidRequest, format!("`label` must be at most {MAX_LABEL} of a-z, 0-9, _ - ."))
                .with_param("label"));
        }
        Ok(f)
    }

    /// The score, per mille.
    pub fn score_permille(&self) -> u16 {
        // 0-1 checked by `parse`.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let permille = (self.score * 1000.0).round() as u16;
        permille.min(1000)
    }
}

/// The answer a score is for, as the audit log has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The model alias.
    pub route: String,
    /// The policy version that decided it.
    pub version: String,
}

/// The answer `request_id` names, from the entries its tenant's audit log holds for that id:
/// 404 when there is none, 409 when it was not answered or was scored already.
pub fn judged(request_id: &str, entries: &[serde_json::Value]) -> Result<Judged, Error> {
    let kind = |e: &&serde_json::Value| e.get("type").and_then(serde_json::Value::as_str).map(str::to_owned);
    if entries.iter().any(|e| kind(&e).as_deref() == Some("feedback")) {
        return Err(Error::new(ErrorKind::Conflict, format!("request {request_id} has feedback already")).with_param("request_id"));
    }
    let request = entries
        .iter()
        .find(|e| kind(e).as_deref() == Some("request"))
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no request {request_id} of this tenant")).with_param("request_id"))?;
    let text = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).map(str::to_owned);
    let route = request
        .get("decisions")
        .and_then(serde_json::Value::as_array)
        .and_then(|d| d.iter().find(|d| d.get("type").and_then(serde_json::Value::as_str) == Some("route")))
        .and_then(|d| text(d.get("alias")));
    match (text(request.get("outcome")).as_deref(), route, text(request.get("policy_version"))) {
        (Some("served"), Some(route), Some(version)) => Ok(Judged { route, version }),
        _ => Err(Error::new(ErrorKind::Conflict, format!("request {request_id} was not answered by a model; only answers take feedback"))
            .with_param("request_id")),
    }
}

/// Whether a canary whose feedback totals `total` is below the SLO over enough scores.
pub fn below_slo(total: &Quality, settings: &QualitySettings) -> bool {
    total.count >= settings.min_feedback && total.mean_permille().is_some_and(|m| m < settings.slo_permille)
}

/// What a feedback did, for the request's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedbackRecord {
    /// The request scored.
    pub request_id: String,
    /// Its model alias.
    pub route: String,
    /// The policy version that decided it.
    pub policy_version: String,
    /// The score, per mille.
    pub score_permille: u16,
    /// Whether the user escalated.
    pub escalated: bool,
    /// The version's feedback so far, all routes.
    pub total: Quality,
    /// The canary this feedback ended, if it did (an alert event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_rolled_back: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = Feedback::parse(br#"{"request_id": "req_1", "score": 0.25, "label": "thumbs_down", "escalated": true}"#);
        assert_eq!(ok.map(|f| (f.score_permille(), f.escalated)).ok(), Some((250, true)));
        for (body, param) in [
            (r#"{"request_id": "req_1", "score": 1.5}"#, "score"),
            (r#"{"request_id": "", "score": 1}"#, "request_id"),
            (r#"{"request_id": "req_1", "score": 1, "label": "no spaces"}"#, "label"),
            (r#"{"request_id": "req_1", "score": 1, "extra": 1}"#, "extra"),
            (r#"{"score": 1}"#, "."),
        ] {
            let e = Feedback::parse(body.as_bytes()).err();
            assert_eq!(e.as_ref().map(|e| e.kind.clone()), Some(ErrorKind::InvalidRequest), "{body}");
            assert_eq!(e.and_then(|e| e.param), Some(param.to_owned()), "{body}");
        }
    }

    #[test]
    fn only_an_answered_unscored_request_of_the_tenant_takes_feedback() {
        let served = serde_json::json!({"type": "request", "outcome": "served", "policy_version": "v1",
            "decisions": [{"type": "route", "alias": "chat"}]});
        assert_eq!(judged("r", std::slice::from_ref(&served)).ok(), Some(Judged { route: "chat".into(), version: "v1".into() }));
        let code = |entries: &[serde_json::Value]| judged("r", entries).err().map(|e| e.metric_label());
        assert_eq!(code(&[]), Some("not_found"));
        assert_eq!(code(&[serde_json::json!({"type": "request", "outcome": "blocked", "policy_version": "v1"})]), Some("conflict"));
        assert_eq!(code(&[served, serde_json::json!({"type": "feedback"})]), Some("conflict"));
    }

    #[test]
    fn the_slo_counts_only_over_enough_scores() {
        let s = QualitySettings { slo_permille: 920, min_feedback: 3, auto_rollback: true };
        let q = |count, sum| Quality { count, score_sum_permille: sum, escalations: 0 };
        assert!(!below_slo(&q(2, 0), &s), "too few");
        assert!(below_slo(&q(3, 2700), &s));
        assert!(!below_slo(&q(3, 2760), &s), "exactly at the SLO");
    }
}
