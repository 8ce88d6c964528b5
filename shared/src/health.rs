//! Provider health at one location: a circuit breaker and a latency average per provider
//! deployment, and a retry budget per route.
//!
//! A [`Board`] is plain data. The authority for a location is kept by the host's counter store —
//! the same atomic store that holds tenant ledgers (a Durable Object on Workers, a SQLite row on
//! Spin), under [`board_id`] — and changed only by [`Board::observe`] inside [`crate::ledger::Book::apply`].
//! Each isolate routes with a cached copy that it updates with its own observations at once and
//! re-synchronises with the authority at most once per refresh interval, in deferred work.
//!
//! Breaker: **closed** until `consecutive_failures` attempts in a row failed (5xx, connection
//! failure, timeout, unreadable answer), or, within the rolling window, at least `min_requests`
//! attempts were made and `error_percent` of them failed; then
//! **open** for `open_seconds`: the router puts the deployment last and tries it only when a critical
//! route has nothing else. After that it is **half-open**: `probe_percent` of requests probe it;
//! `close_after` successes close it, a failure opens it again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The counter-store id of the health board for the location `colo`.
pub fn board_id(colo: Option<&str>) -> String {
    format!("~health/{}", colo.unwrap_or("default"))
}

/// Breaker thresholds, from policy `settings.breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Failed attempts in a row that open the breaker at once (default 5; 0: only the share counts).
    pub consecutive_failures: u32,
    /// Share of failed attempts in the window that opens the breaker, percent (default 50).
    pub error_percent: u8,
    /// Attempts the window must hold before the share counts (default 10).
    pub min_requests: u32,
    /// Length of the rolling window, seconds (default 30).
    pub window_seconds: u32,
    /// How long an open breaker keeps the deployment out, seconds (default 15).
    pub open_seconds: u32,
    /// Share of requests that probe a half-open deployment, percent (default 10).
    pub probe_percent: u8,
    /// Successful probes that close the breaker (default 2).
    pub close_after: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            error_percent: 50,
            min_requests: 10,
            window_seconds: 30,
            open_seconds: 15,
            probe_percent: 10,
            close_after: 2,
        }
    }
}

/// Retries a route may always make within the retry window, whatever its traffic: ten a second,
/// so a fault that starts on a quiet route (whose window holds few requests yet) can still fail
/// over while the breaker learns.
pub const MIN_RETRIES: u64 = 100;
/// The retry budget's window.
pub const RETRY_WINDOW_MS: u64 = 10_000;
/// Buckets per rolling window.
const BUCKETS: u64 = 6;

/// How one attempt at a deployment ended, as far as its health goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It answered; milliseconds to the response head.
    Ok(u64),
    /// It failed in a way that says the deployment is unhealthy.
    Failed,
    /// It refused for a reason that says nothing about its health (a bad request, a missing
    /// credential).
    Neutral,
    /// It refused `model` for rate or quota (429), asking for `wait_ms` of quiet if it said: the
    /// router leaves that model of the deployment alone that long (at most a minute). Provider
    /// quotas are per model, so other models of the deployment are not affected.
    Throttled {
        /// The model sent upstream.
        model: String,
        /// The provider's `Retry-After`.
        wait_ms: Option<u64>,
    },
}

/// What one request taught about health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// When the request ended.
    pub at_ms: u64,
    /// The route (model alias).
    pub route: String,
    /// Each attempt in order: deployment (provider id) and outcome.
    pub attempts: Vec<(String, Outcome)>,
}

/// A breaker moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerEvent {
    /// The deployment (provider id).
    pub deployment: String,
    /// `opened` or `closed`.
    pub change: Change,
    /// When.
    pub at_ms: u64,
    /// Failed and total attempts in the window when it opened (zeros when it closed).
    pub failed: u64,
    /// Attempts in the window.
    pub total: u64,
}

/// A breaker transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Closed (or half-open) to open.
    Opened,
    /// Half-open to closed.
    Closed,
}

/// Whether the router may send a request to a deployment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed, or half-open and this request is a probe.
    Pass,
    /// Open, or half-open and not a probe.
    Skip,
    /// It asked (with `Retry-After`) not to be called yet.
    Quiet,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    start_ms: u64,
    a: u64,
    b: u64,
}

/// Counts in a rolling window of [`BUCKETS`] buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Window(Vec<Bucket>);

impl Window {
    fn add(&mut self, now_ms: u64, window_ms: u64, a: u64, b: u64) {
        let width = (window_ms / BUCKETS).max(1);
        let start = now_ms - now_ms % width;
        self.0.retain(|x| x.start_ms + window_ms > now_ms);
        match self.0.iter_mut().find(|x| x.start_ms == start) {
            Some(x) => {
                x.a += a;
                x.b += b;
            }
            None => self.0.push(Bucket { start_ms: start, a, b }),
        }
    }

    fn sums(&self, now_ms: u64, window_ms: u64) -> (u64, u64) {
        self.0.iter().filter(|x| x.start_ms + window_ms > now_ms).fold((0, 0), |(a, b), x| (a + x.a, b + x.b))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum State {
    #[default]
    Closed,
    /// Open until `until_ms`, half-open after it; `successes` probes have succeeded since.
    Open { until_ms: u64, successes: u32 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Deployment {
    #[serde(default)]
    state: State,
    /// Attempts: failed (`a`) and total (`b`).
    #[serde(default)]
    window: Window,
    /// Failed attempts since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    consecutive: u32,
    /// Moving average of the time to a response head, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Health of every deployment and the retry use of every route, at one location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deployments: BTreeMap<String, Deployment>,
    /// Requests (`b`) and retries (`a`) per route.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    routes: BTreeMap<String, Window>,
    /// `{deployment}/{model}` → until when the provider asked (with `Retry-After`) not to be
    /// called for that model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    quiet: BTreeMap<String, u64>,
}

impl Board {
    /// Whether nothing has been observed.
    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty() && self.routes.is_empty() && self.quiet.is_empty()
    }

    /// Whether a request may go to `deployment` now; `probe` is a random number that decides
    /// whether this request probes a half-open deployment.
    pub fn gate(&self, deployment: &str, now_ms: u64, probe: u64, s: &BreakerSettings) -> Gate {
        match self.deployments.get(deployment).map(|d| d.state) {
            None | Some(State::Closed) => Gate::Pass,
            Some(State::Open { until_ms, .. }) if now_ms < until_ms => Gate::Skip,
            Some(State::Open { .. }) if probe % 100 < u64::from(s.probe_percent) => Gate::Pass,
            Some(State::Open { .. }) => Gate::Skip,
        }
    }

    /// Milliseconds until `model` of `deployment` may be called again, if it asked for quiet.
    pub fn quiet_ms(&self, deployment: &str, model: &str, now_ms: u64) -> Option<u64> {
        self.quiet.get(&format!("{deployment}/{model}")).filter(|until| now_ms < **until).map(|until| until - now_ms)
    }

    /// Whether the breaker of `deployment` is open (or half-open).
    pub fn is_open(&self, deployment: &str) -> bool {
        self.deployments.get(deployment).is_some_and(|d| d.state != State::Closed)
    }

    /// The moving average of `deployment`'s time to a response head, once observed.
    pub fn latency_ms(&self, deployment: &str) -> Option<u64> {
        self.deployments.get(deployment).and_then(|d| d.latency_ms)
    }

    /// Whether `route`, allowed `percent` of its requests as retries, may retry once more now.
    /// Every route may make [`MIN_RETRIES`] retries per window regardless of traffic.
    pub fn may_retry(&self, route: &str, now_ms: u64, percent: u8) -> bool {
        let (retries, requests) = self.routes.get(route).map_or((0, 0), |w| w.sums(now_ms, RETRY_WINDOW_MS));
        retries < MIN_RETRIES.max(requests * u64::from(percent) / 100)
    }

    /// Retries and requests of `route` in the current retry window.
    pub fn retry_use(&self, route: &str, now_ms: u64) -> (u64, u64) {
        self.routes.get(route).map_or((0, 0), |w| w.sums(now_ms, RETRY_WINDOW_MS))
    }

    /// Applies what one request observed; returns the breaker transitions it caused.
    pub fn observe(&mut self, o: &Observation, s: &BreakerSettings) -> Vec<BreakerEvent> {
        let now = o.at_ms;
        let retries = o.attempts.len().saturating_sub(1) as u64;
        self.routes.entry(o.route.clone()).or_default().add(now, RETRY_WINDOW_MS, retries, 1);
        let window_ms = u64::from(s.window_seconds.max(1)) * 1000;
        let mut events = Vec::new();
        self.quiet.retain(|_, until| *until > now);
        for (name, outcome) in &o.attempts {
            if let Outcome::Throttled { model, wait_ms: Some(ms) } = outcome {
                self.quiet.insert(format!("{name}/{model}"), now + (*ms).min(60_000));
            }
            let d = self.deployments.entry(name.clone()).or_default();
            let failed = match outcome {
                Outcome::Neutral | Outcome::Throttled { .. } => continue,
                Outcome::Ok(ms) => {
                    d.latency_ms = Some(d.latency_ms.map_or(*ms, |avg| (avg * 4 + ms) / 5));
                    d.consecutive = 0;
                    false
                }
                Outcome::Failed => {
                    d.consecutive = d.consecutive.saturating_add(1);
                    true
                }
            };
            d.window.add(now, window_ms, u64::from(failed), 1);
            let reopen = State::Open { until_ms: now + u64::from(s.open_seconds) * 1000, successes: 0 };
            match (d.state, failed) {
                (State::Closed, false) => {}
                (State::Closed, true) => {
                    let (bad, total) = d.window.sums(now, window_ms);
                    let in_a_row = s.consecutive_failures > 0 && d.consecutive >= s.consecutive_failures;
                    if in_a_row || (total >= u64::from(s.min_requests) && bad * 100 >= total * u64::from(s.error_percent)) {
                        d.state = reopen;
                        events.push(BreakerEvent { deployment: name.clone(), change: Change::Opened, at_ms: now, failed: bad, total });
                    }
                }
                // A failure while open (from an isolate that had not heard yet, or a forced try)
                // or while half-open keeps it open for another period.
                (State::Open { until_ms, .. }, true) => {
                    let probing = now >= until_ms;
                    d.state = reopen;
                    if probing {
                        let (bad, total) = d.window.sums(now, window_ms);
                        events.push(BreakerEvent { deployment: name.clone(), change: Change::Opened, at_ms: now, failed: bad, total });
                    }
                }
                (State::Open { until_ms, successes }, false) => {
                    if successes + 1 >= s.close_after {
                        d.state = State::Closed;
                        d.window = Window::default();
                        events.push(BreakerEvent { deployment: name.clone(), change: Change::Closed, at_ms: now, failed: 0, total: 0 });
                    } else {
                        d.state = State::Open { until_ms, successes: successes + 1 };
                    }
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_ms: u64, attempts: &[(&str, Outcome)]) -> Observation {
        Observation { at_ms, route: "r".into(), attempts: attempts.iter().map(|(d, o)| ((*d).to_owned(), o.clone())).collect() }
    }

    #[test]
    fn the_breaker_opens_on_the_error_share_then_probes_and_closes() {
        let s = BreakerSettings::default();
        let mut b = Board::default();
        // 5 good, then failures: at 10 attempts with 5 failed (50 %) it opens.
        for i in 0..5 {
            assert!(b.observe(&obs(1_000 + i, &[("a", Outcome::Ok(20))]), &s).is_empty());
        }
        for i in 0..4 {
            assert!(b.observe(&obs(2_000 + i, &[("a", Outcome::Failed)]), &s).is_empty());
        }
        assert_eq!(b.gate("a", 2_100, 0, &s), Gate::Pass);
        let events = b.observe(&obs(2_100, &[("a", Outcome::Failed)]), &s);
        assert_eq!(events, [BreakerEvent { deployment: "a".into(), change: Change::Opened, at_ms: 2_100, failed: 5, total: 10 }]);
        assert_eq!(b.gate("a", 2_200, 0, &s), Gate::Skip, "open");
        assert_eq!(b.gate("a", 17_099, 0, &s), Gate::Skip, "open for 15 s");
        assert_eq!(b.gate("a", 17_100, 9, &s), Gate::Pass, "half-open: 10 % probe");
        assert_eq!(b.gate("a", 17_100, 10, &s), Gate::Skip, "half-open: the rest wait");
        // A failed probe reopens it (an event: it was half-open).
        assert_eq!(b.observe(&obs(17_200, &[("a", Outcome::Failed)]), &s).len(), 1);
        assert_eq!(b.gate("a", 17_300, 0, &s), Gate::Skip);
        // Two good probes after the next period close it.
        assert!(b.observe(&obs(32_200, &[("a", Outcome::Ok(10))]), &s).is_empty());
        assert!(b.is_open("a"));
        let closed = b.observe(&obs(32_300, &[("a", Outcome::Ok(10))]), &s);
        assert_eq!(closed[0].change, Change::Closed);
        assert_eq!(b.gate("a", 32_400, 99, &s), Gate::Pass);
        assert!(!b.is_open("a"));
    }

    #[test]
    fn few_attempts_never_open_and_old_ones_age_out() {
        let s = BreakerSettings { consecutive_failures: 0, ..BreakerSettings::default() };
        let mut b = Board::default();
        for i in 0..9 {
            assert!(b.observe(&obs(i, &[("a", Outcome::Failed)]), &s).is_empty(), "below min_requests");
        }
        // 30 s later the nine failures have left the window.
        assert!(b.observe(&obs(40_000, &[("a", Outcome::Failed)]), &s).is_empty());
        // Neutral outcomes (429, 400) count for nothing.
        for i in 0..20 {
            b.observe(&obs(41_000 + i, &[("a", Outcome::Neutral)]), &s);
        }
        assert!(!b.is_open("a"));
    }

    #[test]
    fn failures_in_a_row_open_the_breaker_even_after_much_good_traffic() {
        let s = BreakerSettings::default();
        let mut b = Board::default();
        for i in 0..500 {
            b.observe(&obs(i, &[("a", Outcome::Ok(5))]), &s);
        }
        for i in 0..4 {
            assert!(b.observe(&obs(600 + i, &[("a", Outcome::Failed)]), &s).is_empty());
        }
        b.observe(&obs(700, &[("a", Outcome::Ok(5))]), &s);
        for i in 0..4 {
            assert!(b.observe(&obs(800 + i, &[("a", Outcome::Failed)]), &s).is_empty(), "a success restarts the count");
        }
        let opened = b.observe(&obs(900, &[("a", Outcome::Failed)]), &s);
        assert_eq!(opened.iter().map(|e| (e.change, e.failed, e.total)).collect::<Vec<_>>(), [(Change::Opened, 9, 510)]);
    }

    #[test]
    fn a_retry_after_keeps_the_router_away_without_touching_the_breaker() {
        let s = BreakerSettings::default();
        let mut b = Board::default();
        let throttled = |model: &str, wait_ms| Outcome::Throttled { model: model.into(), wait_ms };
        b.observe(&obs(1_000, &[("a", throttled("m", Some(5_000)))]), &s);
        b.observe(&obs(1_000, &[("b", throttled("m", None))]), &s);
        assert_eq!(b.quiet_ms("a", "m", 5_999), Some(1));
        assert_eq!(b.quiet_ms("a", "other", 5_999), None, "quotas are per model");
        assert_eq!(b.quiet_ms("a", "m", 6_000), None);
        assert_eq!(b.quiet_ms("b", "m", 1_001), None, "no Retry-After, no quiet period");
        b.observe(&obs(2_000, &[("c", throttled("m", Some(3_600_000)))]), &s);
        assert_eq!(b.quiet_ms("c", "m", 62_000), None, "at most a minute");
        assert!(!b.is_open("a"));
        assert_eq!(b.gate("a", 2_000, 0, &s), Gate::Pass, "quiet is not a breaker");
    }

    #[test]
    fn latency_is_a_moving_average_of_successes() {
        let s = BreakerSettings::default();
        let mut b = Board::default();
        assert_eq!(b.latency_ms("a"), None);
        b.observe(&obs(0, &[("a", Outcome::Ok(100))]), &s);
        b.observe(&obs(1, &[("a", Outcome::Ok(200))]), &s);
        b.observe(&obs(2, &[("a", Outcome::Failed)]), &s);
        assert_eq!(b.latency_ms("a"), Some(120));
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_with_a_floor() {
        let s = BreakerSettings::default();
        let mut b = Board::default();
        // 100 retries (ten a second) are always allowed.
        for i in 0..100 {
            assert!(b.may_retry("r", i, 20));
            b.observe(&obs(i, &[("a", Outcome::Failed), ("b", Outcome::Ok(5))]), &s);
        }
        assert!(!b.may_retry("r", 100, 20));
        // With 1,000 requests in the window, 20 % is 200 retries.
        for i in 0..900 {
            b.observe(&obs(200 + i, &[("b", Outcome::Ok(5))]), &s);
        }
        assert_eq!(b.retry_use("r", 2_000), (100, 1_000));
        assert!(b.may_retry("r", 2_000, 20));
        assert!(!b.may_retry("r", 2_000, 10));
        // The window moves on.
        assert_eq!(b.retry_use("r", 20_000), (0, 0));
        assert!(b.may_retry("r", 20_000, 0));
    }

    #[test]
    fn boards_survive_a_round_trip_through_json() {
        let s = BreakerSettings::default();
        let mut b = Board::default();
        for i in 0..12 {
            b.observe(&obs(i, &[("a", Outcome::Failed), ("b", Outcome::Ok(7))]), &s);
        }
        let json = serde_json::to_string(&b).unwrap_or_default();
        let back: Board = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, b);
        assert!(back.is_open("a"));
    }
}
