//! Phase 4, **route**: from a model alias to an ordered plan of candidates.
//!
//! The plan is built in three steps, always in this order:
//! 1. **residency** removes every candidate whose provider deployment is outside the tenant's and
//!    the route's constraint (for the request's origin) — before any strategy sees it, and with the
//!    constraint that removed it kept for the record;
//! 2. the route's **strategy** orders what is left (priority, weighted, latency, cost, complexity);
//! 3. **health** moves deployments whose circuit breaker is open behind the healthy ones and marks
//!    them skipped, so the orchestrator only tries them when a critical route has nothing else.
//!
//! Everything is a pure function of the policy, the request, the health view and a random number
//! drawn by the caller from the entropy port.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::chat::{ChatRequest, Role};
use crate::error::{Error, ErrorKind};
use crate::health::{Board, Gate};
use crate::phases::{Candidate, Principal};
use crate::policy::{Policy, Roles};

/// Where a provider deployment runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// A region name of your choosing that residency constraints list, e.g. `eu` or `us`.
    pub region: Option<String>,
    /// ISO 3166-1 alpha-2 country code of the data centre, e.g. `DE`.
    pub country: Option<String>,
    /// Jurisdiction and compliance tags the deployment satisfies, e.g. `gdpr`, `hipaa`.
    #[serde(default)]
    pub jurisdictions: Vec<String>,
}

/// Where a request's data may be processed. Every field that is present must hold; a deployment
/// without the label a field checks fails it (fail closed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// Deployments whose `location.region` is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Deployments whose `location.country` is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<String>>,
    /// Deployments tagged with every one of these jurisdictions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jurisdictions: Vec<String>,
}

impl Constraint {
    /// Why `at` does not satisfy the constraint, or `None` if it does.
    fn refuses(&self, at: &Location) -> Option<String> {
        let outside = |allowed: &Option<Vec<String>>, value: &Option<String>, what: &str| {
            let allowed = allowed.as_ref()?;
            match value {
                Some(v) if allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) => None,
                Some(v) => Some(format!("{what} {v} is not one of [{}]", allowed.join(", "))),
                None => Some(format!("no {what} is declared; [{}] required", allowed.join(", "))),
            }
        };
        outside(&self.regions, &at.region, "region").or_else(|| outside(&self.countries, &at.country, "country")).or_else(|| {
            let missing: Vec<&str> = self.jurisdictions.iter().filter(|j| !at.jurisdictions.contains(j)).map(String::as_str).collect();
            (!missing.is_empty()).then(|| format!("missing jurisdiction {}", missing.join(", ")))
        })
    }

    fn is_empty(&self) -> bool {
        self.regions.is_none() && self.countries.is_none() && self.jurisdictions.is_empty()
    }
}

/// A tenant's or route's residency: a constraint, optionally chosen by where the request was
/// received (`country:DE`, then `continent:EU`, then the plain constraint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Residency {
    /// For requests no `by_origin` entry matches: deployments whose `location.region` is one of these.
    pub regions: Option<Vec<String>>,
    /// For requests no `by_origin` entry matches: deployments whose `location.country` is one of these.
    pub countries: Option<Vec<String>>,
    /// For requests no `by_origin` entry matches: deployments tagged with every one of these.
    #[serde(default)]
    pub jurisdictions: Vec<String>,
    /// Constraints by origin: keys `country:XX` (ISO 3166-1 alpha-2) or `continent:XX` (`AF`,
    /// `AN`, `AS`, `EU`, `NA`, `OC`, `SA`).
    #[serde(default)]
    pub by_origin: BTreeMap<String, Constraint>,
}

impl Residency {
    /// The constraint for a request from `origin`: its country's entry, else its continent's,
    /// else the plain one.
    pub fn for_origin(&self, origin: &Origin) -> Constraint {
        let by = |prefix: &str, code: &Option<String>| code.as_ref().and_then(|c| self.by_origin.get(&format!("{prefix}:{c}")));
        by("country", &origin.country).or_else(|| by("continent", &origin.continent)).cloned().unwrap_or_else(|| Constraint {
            regions: self.regions.clone(),
            countries: self.countries.clone(),
            jurisdictions: self.jurisdictions.clone(),
        })
    }
}

/// Where the gateway received a request: from the Workers `cf` object, the Spin deployment's
/// configuration, or (for callers with the `origin:assert` role) the caller's own headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// ISO 3166-1 alpha-2 country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Continent code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
    /// The edge location (Cloudflare colo, or the Spin deployment's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colo: Option<String>,
    /// Whether the caller asserted it with `x-edgegate-origin-*` headers.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub asserted: bool,
}

/// Headers a caller with the `origin:assert` role may send to say where its end user is.
pub const ORIGIN_HEADERS: [&str; 2] = ["x-edgegate-origin-country", "x-edgegate-origin-continent"];

/// The origin of a request: where the host received it (`served`), unless the caller asserts
/// another with [`ORIGIN_HEADERS`] — which only callers with the `origin:assert` role may do
/// (`permission_denied` otherwise). Codes are two letters, upper-cased.
pub fn origin(served: Option<&Origin>, headers: &http::HeaderMap, roles: Roles) -> Result<Origin, Error> {
    let mut origin = served.cloned().unwrap_or_default();
    let asserted: Vec<(usize, &http::HeaderValue)> =
        ORIGIN_HEADERS.iter().enumerate().filter_map(|(i, h)| headers.get(*h).map(|v| (i, v))).collect();
    if asserted.is_empty() {
        return Ok(origin);
    }
    if !roles.has(crate::policy::Role::OriginAssert) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "only callers with the `origin:assert` role may send x-edgegate-origin-* headers",
        ));
    }
    origin.country = None;
    origin.continent = None;
    for (i, value) in asserted {
        let code = value.to_str().ok().map(str::trim).filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()));
        let Some(code) = code else {
            return Err(Error::new(ErrorKind::InvalidRequest, format!("{} must be a two-letter code", ORIGIN_HEADERS[i])));
        };
        let slot = if i == 0 { &mut origin.country } else { &mut origin.continent };
        *slot = Some(code.to_ascii_uppercase());
    }
    origin.asserted = true;
    Ok(origin)
}

/// How a route orders its candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In the order the targets are listed (fallback order).
    #[default]
    Priority,
    /// A weighted random order: the first by `weight`, then the rest by weight.
    Weighted,
    /// Lowest observed upstream latency first (moving average per deployment at this location);
    /// deployments not yet observed go first, so they get measured.
    Latency,
    /// Cheapest first for this request's estimated tokens; unpriced targets last.
    Cost,
    /// Targets of the prompt's complexity class first (see [`classify`]), unclassed next, the
    /// other class last.
    Complexity,
}

/// A prompt's complexity class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Short, plain questions: a low-cost model will do.
    Simple,
    /// Long, code-bearing, multi-step or tool-using prompts: a premium model.
    Complex,
}

/// Phrases that suggest multi-step reasoning.
const REASONING_CUES: &[&str] = &[
    "step by step",
    "step-by-step",
    "prove",
    "derive",
    "analyze",
    "analyse",
    "explain why",
    "compare",
    "trade-off",
    "tradeoff",
    "design a",
    "optimize",
    "optimise",
    "debug",
    "refactor",
    "plan ",
];

/// The complexity class of a prompt: a cheap, deterministic score over its length (estimated
/// tokens), code (fences or common syntax), reasoning cues, tools and turns. A score of 3 or more
/// is complex: 1 point per 500 prompt tokens (up to 3), 2 for code, 1 per reasoning cue (up to 2),
/// 2 for tools, 1 for more than 6 messages.
pub fn classify(chat: &ChatRequest, prompt_tokens: u64) -> (Class, u32) {
    let lower = chat.messages.iter().filter(|m| m.role != Role::Assistant).map(|m| m.text().to_lowercase()).collect::<Vec<_>>().join("\n");
    let length = u32::try_from((prompt_tokens / 500).min(3)).unwrap_or(3);
    let code = ["```", "fn ", "def ", "function ", "class ", "#include", "select ", "=> {", "};"].iter().any(|c| lower.contains(c));
    let cues = u32::try_from(REASONING_CUES.iter().filter(|c| lower.contains(*c)).count().min(2)).unwrap_or(2);
    let tools = chat.extra.get("tools").and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty());
    let score = length + if code { 2 } else { 0 } + cues + if tools { 2 } else { 0 } + u32::from(chat.messages.len() > 6);
    (if score >= 3 { Class::Complex } else { Class::Simple }, score)
}

/// A candidate residency removed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Provider id.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Which constraint removed it (`tenant` or `route`) and what failed.
    pub reason: String,
}

/// The routing decision for one request, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The strategy that ordered the plan.
    pub strategy: Strategy,
    /// The prompt's class, when the strategy is `complexity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    /// Where the request was received.
    pub origin: Origin,
    /// The residency constraint applied (tenant's and route's), when there is one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<(String, Constraint)>,
    /// Candidates residency removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removed>,
    /// Deployments put last because their breaker is open.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<String>,
    /// `{deployment}/{model}`s left out because the provider asked for quiet with `Retry-After`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quiet: Vec<String>,
}

/// An ordered plan: candidates to try in order, and how it was decided. Candidates at and after
/// `healthy` have open breakers; none of them asked for quiet (those are left out).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Candidates in the order to try them.
    pub candidates: Vec<Candidate>,
    /// How many leading candidates are healthy (or half-open and chosen to probe).
    pub healthy: usize,
    /// The record of the decision.
    pub decision: Decision,
}

/// What the route step needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The model alias.
    pub alias: &'a str,
    /// Where the request was received.
    pub origin: &'a Origin,
    /// The parsed chat request, when it is one (for the complexity strategy).
    pub chat: Option<&'a ChatRequest>,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Output tokens the request may use.
    pub output_tokens: u64,
}

/// Builds the plan for `ask` (see the module docs). An alias that does not exist, or that this key
/// or its tenant may not use, is `model_not_found` (404) — the two are not distinguished, so keys
/// cannot probe for aliases. When residency removes every candidate the plan is empty and its
/// decision says why; the caller answers with [`residency_error`]. A plan can also be empty
/// because every allowed deployment asked for quiet (`decision.quiet`).
pub fn plan(policy: &Policy, principal: &Principal, ask: Ask<'_>, board: &Board, now_ms: u64, random: u64) -> Result<Plan, Error> {
    let alias = ask.alias;
    let not_found = || {
        Error::new(ErrorKind::ModelNotFound, format!("the model `{alias}` does not exist or you do not have access to it"))
            .with_param("model")
    };
    if !principal.key.may_use(alias) || !principal.tenant.may_use(alias) {
        return Err(not_found());
    }
    let route = policy.route(alias).ok_or_else(not_found)?;
    let mut decision = Decision { strategy: route.strategy, origin: ask.origin.clone(), ..Decision::default() };
    let constraints: Vec<(&str, Constraint)> = [("tenant", principal.tenant.residency.as_ref()), ("route", route.residency.as_ref())]
        .into_iter()
        .filter_map(|(who, r)| r.map(|r| (who, r.for_origin(ask.origin))))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    decision.constraints = constraints.iter().map(|(who, c)| ((*who).to_owned(), c.clone())).collect();

    let mut candidates = Vec::with_capacity(route.targets.len());
    for t in &route.targets {
        let provider = policy.provider_rc(&t.provider).ok_or_else(|| Error::new(ErrorKind::Internal, "route names a missing provider"))?;
        let refusal = constraints.iter().find_map(|(who, c)| c.refuses(&provider.location).map(|why| format!("{who} residency: {why}")));
        match refusal {
            Some(reason) => decision.removed.push(Removed { provider: t.provider.clone(), model: t.model.clone(), reason }),
            None => candidates.push(Candidate { provider: Rc::clone(provider), target: Rc::clone(t) }),
        }
    }
    match route.strategy {
        Strategy::Priority => {}
        Strategy::Weighted => weighted_order(&mut candidates, random),
        Strategy::Latency => candidates.sort_by_key(|c| board.latency_ms(&c.provider.id).unwrap_or(0)),
        Strategy::Cost => {
            candidates.sort_by_key(|c| c.target.price.map_or(u64::MAX, |p| p.cost(ask.prompt_tokens, ask.output_tokens)));
        }
        Strategy::Complexity => {
            let class = ask.chat.map_or(Class::Simple, |chat| classify(chat, ask.prompt_tokens).0);
            decision.class = Some(class);
            candidates.sort_by_key(|c| match c.target.class {
                Some(k) if k == class => 0,
                None => 1,
                Some(_) => 2,
            });
        }
    }

    // Healthy first (stable), open breakers last. A half-open deployment takes a share of traffic
    // as probes; the rest of the time it waits with the open ones.
    let probe = random >> 32;
    let gates: Vec<Gate> = candidates
        .iter()
        .map(|c| match board.quiet_ms(&c.provider.id, &c.target.model, now_ms) {
            Some(_) => Gate::Quiet,
            None => board.gate(&c.provider.id, now_ms, probe, policy.breaker()),
        })
        .collect();
    let mut order: Vec<(Gate, Candidate)> = gates.into_iter().zip(candidates).collect();
    order.sort_by_key(|(g, _)| *g == Gate::Skip);
    decision.unhealthy = order.iter().filter(|(g, _)| *g == Gate::Skip).map(|(_, c)| c.provider.id.clone()).collect();
    decision.quiet =
        order.iter().filter(|(g, _)| *g == Gate::Quiet).map(|(_, c)| format!("{}/{}", c.provider.id, c.target.model)).collect();
    order.retain(|(g, _)| *g != Gate::Quiet);
    let healthy = order.iter().filter(|(g, _)| *g == Gate::Pass).count();
    Ok(Plan { candidates: order.into_iter().map(|(_, c)| c).collect(), healthy, decision })
}

/// The shadow target of `ask`'s route if this request is in its sample (`random` % 100 below
/// its percent) and residency allows the shadow deployment — data sent to a shadow leaves like any
/// other, so it obeys the same constraints.
pub fn shadow(policy: &Policy, principal: &Principal, ask: Ask<'_>, random: u64) -> Option<Candidate> {
    let route = policy.route(ask.alias)?;
    let s = route.shadow.as_ref()?;
    if random % 100 >= u64::from(s.percent) {
        return None;
    }
    let provider = policy.provider_rc(&s.target.provider)?;
    let allowed = [principal.tenant.residency.as_ref(), route.residency.as_ref()]
        .into_iter()
        .flatten()
        .all(|r| r.for_origin(ask.origin).refuses(&provider.location).is_none());
    allowed.then(|| Candidate { provider: Rc::clone(provider), target: Rc::clone(&s.target) })
}

/// Orders `candidates` by weighted sampling without replacement, driven by `random`.
fn weighted_order(candidates: &mut [Candidate], mut random: u64) {
    for i in 0..candidates.len() {
        let total: u64 = candidates[i..].iter().map(|c| u64::from(c.target.weight)).sum();
        if total == 0 {
            return;
        }
        let mut pick = random % total;
        // Fresh bits for the next draw (splitmix64 step): deterministic for a given seed.
        random = random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = random;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        random = z ^ (z >> 31);
        let mut chosen = i;
        for (j, c) in candidates.iter().enumerate().skip(i) {
            let w = u64::from(c.target.weight);
            if pick < w {
                chosen = j;
                break;
            }
            pick -= w;
        }
        candidates[i..=chosen].rotate_right(1);
    }
}

/// The residency error: every compliant candidate failed (`attempts`), or there was none.
pub fn residency_error(decision: &Decision, attempts: &[String]) -> Error {
    let rules: Vec<String> = decision.constraints.iter().map(|(who, c)| format!("{who} {}", describe(c))).collect();
    let removed: Vec<String> = decision.removed.iter().map(|r| format!("{} ({})", r.provider, r.reason)).collect();
    let tried = if attempts.is_empty() {
        "no deployment satisfies it".to_owned()
    } else {
        format!("every deployment that satisfies it failed: {}", attempts.join("; "))
    };
    Error::new(
        ErrorKind::ResidencyUnavailable { retryable: !attempts.is_empty() },
        format!(
            "no provider allowed by the residency constraint ({}) can serve this request: {tried}; not allowed: {}",
            rules.join("; "),
            if removed.is_empty() { "none".to_owned() } else { removed.join(", ") }
        ),
    )
}

fn describe(c: &Constraint) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &c.regions {
        parts.push(format!("regions {}", r.join("/")));
    }
    if let Some(r) = &c.countries {
        parts.push(format!("countries {}", r.join("/")));
    }
    if !c.jurisdictions.is_empty() {
        parts.push(format!("jurisdictions {}", c.jurisdictions.join("+")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{BreakerSettings, Observation, Outcome};
    use crate::policy::{Role, key_hash_string};
    use crate::snapshot::Snapshot;
    use std::rc::Rc;

    fn policy(models: serde_json::Value, tenant: serde_json::Value) -> Policy {
        let doc = serde_json::json!({
            "tenants": [tenant],
            "keys": [{"id": "k", "tenant": "t", "hash": key_hash_string("sk"), "roles": ["invoke"]}],
            "providers": [
                {"id": "eu-1", "kind": "mock", "location": {"region": "eu", "country": "DE", "jurisdictions": ["gdpr"]}},
                {"id": "eu-2", "kind": "mock", "location": {"region": "eu", "country": "FR", "jurisdictions": ["gdpr", "hds"]}},
                {"id": "us-1", "kind": "mock", "location": {"region": "us", "country": "US", "jurisdictions": ["hipaa"]}},
                {"id": "bare", "kind": "mock"}
            ],
            "models": models
        });
        Policy::compile(doc.to_string().as_bytes()).unwrap_or_else(|e| unreachable!("{e:?}"))
    }

    fn route(targets: &[(&str, serde_json::Value)], strategy: &str) -> serde_json::Value {
        let targets: Vec<_> = targets
            .iter()
            .map(|(p, extra)| {
                let mut t = serde_json::json!({"provider": p, "model": format!("{p}-model")});
                if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
                    t.extend(extra.clone());
                }
                t
            })
            .collect();
        serde_json::json!([{"alias": "m", "strategy": strategy, "targets": targets}])
    }

    fn all(strategy: &str) -> serde_json::Value {
        let none = serde_json::Value::Null;
        route(&[("eu-1", none.clone()), ("eu-2", none.clone()), ("us-1", none.clone()), ("bare", none)], strategy)
    }

    fn order(p: &Policy, origin: &Origin, board: &Board, random: u64, chat: Option<&ChatRequest>) -> (Vec<String>, Decision) {
        let s = Snapshot { active: Rc::new(p.clone()), canary: None };
        let (_, principal) = crate::phases::authenticate(&s, "sk", 0, Role::Invoke).unwrap_or_else(|e| unreachable!("{e}"));
        let prompt_tokens = chat.map_or(1_000, ChatRequest::estimate_prompt_tokens);
        let ask = Ask { alias: "m", origin, chat, prompt_tokens, output_tokens: 100 };
        let plan = super::plan(p, &principal, ask, board, 0, random).unwrap_or_else(|e| unreachable!("{e}"));
        (plan.candidates.iter().map(|c| c.provider.id.clone()).collect(), plan.decision)
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn residency_removes_before_any_strategy_and_says_why() {
        let here = Origin::default();
        let check = |residency: serde_json::Value, expect: &[&str]| {
            let p = policy(all("priority"), serde_json::json!({"id": "t", "residency": residency}));
            let (got, decision) = order(&p, &here, &Board::default(), 0, None);
            assert_eq!(got, ids(expect), "{residency}");
            assert_eq!(decision.removed.len(), 4 - expect.len());
            decision
        };
        check(serde_json::json!({}), &["eu-1", "eu-2", "us-1", "bare"]);
        let d = check(serde_json::json!({"regions": ["eu"]}), &["eu-1", "eu-2"]);
        assert_eq!(d.removed[0].reason, "tenant residency: region us is not one of [eu]");
        assert_eq!(d.removed[1].reason, "tenant residency: no region is declared; [eu] required", "unlabelled fails closed");
        check(serde_json::json!({"countries": ["FR", "US"]}), &["eu-2", "us-1"]);
        check(serde_json::json!({"jurisdictions": ["gdpr", "hds"]}), &["eu-2"]);
        check(serde_json::json!({"regions": ["eu"], "jurisdictions": ["hipaa"]}), &[]);
    }

    #[test]
    fn residency_can_follow_the_origin_and_routes_add_their_own() {
        let tenant = serde_json::json!({"id": "t", "residency": {
            "regions": ["eu", "us"],
            "by_origin": {"continent:EU": {"regions": ["eu"]}, "country:US": {"regions": ["us"]}}
        }});
        let p = policy(all("priority"), tenant.clone());
        let from = |country: &str, continent: &str| Origin {
            country: Some(country.into()),
            continent: Some(continent.into()),
            ..Origin::default()
        };
        let b = Board::default();
        assert_eq!(order(&p, &from("DE", "EU"), &b, 0, None).0, ids(&["eu-1", "eu-2"]));
        assert_eq!(order(&p, &from("US", "NA"), &b, 0, None).0, ids(&["us-1"]));
        assert_eq!(order(&p, &from("CA", "NA"), &b, 0, None).0, ids(&["eu-1", "eu-2", "us-1"]), "no entry: the plain constraint");
        // The route's constraint applies as well as the tenant's.
        let mut models = all("priority");
        models[0]["residency"] = serde_json::json!({"countries": ["DE", "US"]});
        let p = policy(models, tenant);
        let (got, d) = order(&p, &from("DE", "EU"), &b, 0, None);
        assert_eq!(got, ids(&["eu-1"]));
        assert_eq!(
            d.removed.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>()[0],
            "route residency: country FR is not one of [DE, US]"
        );
        assert_eq!(d.constraints.len(), 2);
    }

    #[test]
    fn weighted_order_follows_the_weights_and_the_seed() {
        let w = |n: u64| serde_json::json!({"weight": n});
        let p = policy(route(&[("eu-1", w(3)), ("eu-2", w(1)), ("us-1", w(0))], "weighted"), serde_json::json!({"id": "t"}));
        let (b, here) = (Board::default(), Origin::default());
        let mut first = std::collections::BTreeMap::<String, u32>::new();
        for seed in 0..4_000u64 {
            let (got, _) = order(&p, &here, &b, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), None);
            assert_eq!(got.len(), 3);
            assert_eq!(got[2], "us-1", "weight 0 is only ever a fallback");
            *first.entry(got[0].clone()).or_default() += 1;
        }
        let eu1 = first.get("eu-1").copied().unwrap_or(0);
        assert!((2_800..=3_200).contains(&eu1), "about 3 in 4 first picks: {first:?}");
        assert_eq!(order(&p, &here, &b, 7, None).0, order(&p, &here, &b, 7, None).0, "deterministic for a seed");
    }

    #[test]
    fn latency_order_uses_the_moving_average_and_measures_the_unknown_first() {
        let p = policy(all("latency"), serde_json::json!({"id": "t"}));
        let mut board = Board::default();
        let s = BreakerSettings::default();
        for (d, ms) in [("eu-1", 300), ("eu-2", 80), ("us-1", 150)] {
            board.observe(&Observation { at_ms: 1, route: "m".into(), attempts: vec![(d.into(), Outcome::Ok(ms))] }, &s);
        }
        assert_eq!(order(&p, &Origin::default(), &board, 0, None).0, ids(&["bare", "eu-2", "us-1", "eu-1"]));
    }

    #[test]
    fn cost_order_prices_the_requests_tokens_and_puts_unpriced_last() {
        let price = |i: f64, o: f64| serde_json::json!({"price": {"input_usd_per_mtok": i, "output_usd_per_mtok": o}});
        let p = policy(
            route(
                &[("eu-1", price(2.5, 10.0)), ("bare", serde_json::Value::Null), ("eu-2", price(0.15, 0.6)), ("us-1", price(1.0, 1.0))],
                "cost",
            ),
            serde_json::json!({"id": "t"}),
        );
        assert_eq!(order(&p, &Origin::default(), &Board::default(), 0, None).0, ids(&["eu-2", "us-1", "eu-1", "bare"]));
    }

    #[test]
    fn complexity_sends_simple_prompts_to_cheap_models_and_hard_ones_to_premium() {
        let class = |c: &str| serde_json::json!({"class": c});
        let p = policy(
            route(&[("eu-1", class("complex")), ("bare", serde_json::Value::Null), ("eu-2", class("simple"))], "complexity"),
            serde_json::json!({"id": "t"}),
        );
        let ask = |text: &str, tools: bool| {
            let mut body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]});
            if tools {
                body["tools"] = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
            }
            ChatRequest::parse(body.to_string().as_bytes()).unwrap_or_else(|e| unreachable!("{e}"))
        };
        let route_of = |chat: &ChatRequest| {
            let (got, d) = order(&p, &Origin::default(), &Board::default(), 0, Some(chat));
            (got[0].clone(), d.class)
        };
        assert_eq!(route_of(&ask("What is the capital of France?", false)), ("eu-2".into(), Some(Class::Simple)));
        assert_eq!(route_of(&ask("hi", true)), ("eu-2".into(), Some(Class::Simple)), "tools alone score 2");
        let hard = "Explain why this fails and refactor it step by step:\n```rust\nfn main() { let x = vec![1]; }\n```";
        assert_eq!(route_of(&ask(hard, false)), ("eu-1".into(), Some(Class::Complex)));
        assert_eq!(route_of(&ask(&"word ".repeat(2_000), true)), ("eu-1".into(), Some(Class::Complex)), "long with tools");
        let cases = [("hello", 0), ("compare a and b", 1), ("prove it step by step", 2), ("```x```", 2)];
        for (text, score) in cases {
            let chat = ask(text, false);
            assert_eq!(classify(&chat, chat.estimate_prompt_tokens()).1, score, "{text}");
        }
    }

    #[test]
    fn open_breakers_go_last_and_half_open_ones_take_probes() {
        let p = policy(all("priority"), serde_json::json!({"id": "t"}));
        let s = BreakerSettings::default();
        let mut board = Board::default();
        for i in 0..10 {
            board.observe(&Observation { at_ms: i, route: "m".into(), attempts: vec![("eu-1".into(), Outcome::Failed)] }, &s);
        }
        let plan_at = |now: u64, random: u64| {
            let s = Snapshot { active: Rc::new(p.clone()), canary: None };
            let (_, principal) = crate::phases::authenticate(&s, "sk", 0, Role::Invoke).unwrap_or_else(|e| unreachable!("{e}"));
            let ask = Ask { alias: "m", origin: &Origin::default(), chat: None, prompt_tokens: 1, output_tokens: 1 };
            super::plan(&p, &principal, ask, &board, now, random).unwrap_or_else(|e| unreachable!("{e}"))
        };
        let open = plan_at(1_000, 0);
        assert_eq!(open.candidates.iter().map(|c| c.provider.id.as_str()).collect::<Vec<_>>(), ["eu-2", "us-1", "bare", "eu-1"]);
        assert_eq!((open.healthy, open.decision.unhealthy.clone()), (3, ids(&["eu-1"])));
        // Half-open after 15 s: a probe (random high bits % 100 < 10) keeps its place.
        assert_eq!(plan_at(16_000, 5 << 32).healthy, 4);
        assert_eq!(plan_at(16_000, 50 << 32).healthy, 3);
    }

    #[test]
    fn asserted_origins_need_the_role_and_two_letter_codes() {
        let served = Origin { country: Some("US".into()), continent: Some("NA".into()), colo: Some("EWR".into()), asserted: false };
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, http::HeaderValue::from_str(v).unwrap_or_else(|_| unreachable!()));
            }
            h
        };
        let trusted: Roles = [Role::Invoke, Role::OriginAssert].into_iter().collect();
        let plain: Roles = [Role::Invoke].into_iter().collect();
        assert_eq!(origin(Some(&served), &headers(&[]), plain), Ok(served.clone()));
        let de = origin(Some(&served), &headers(&[("x-edgegate-origin-country", "de")]), trusted).unwrap_or_default();
        assert_eq!((de.country.as_deref(), de.continent, de.colo.as_deref(), de.asserted), (Some("DE"), None, Some("EWR"), true));
        let code = |h: &[(&'static str, &str)], r| origin(Some(&served), &headers(h), r).map_err(|e| e.metric_label());
        assert_eq!(code(&[("x-edgegate-origin-country", "DE")], plain), Err("permission_denied"));
        assert_eq!(code(&[("x-edgegate-origin-continent", "Europe")], trusted), Err("invalid_request"));
    }
}
