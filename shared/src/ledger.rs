//! The tenant ledger: limits, reservations and settlement. Hosts keep one [`Book`] per tenant and
//! run [`Book::apply`] inside one atomic section (a Durable Object's single thread; a SQLite
//! transaction), so the arithmetic — and its exactness — is the same everywhere.
//!
//! A request **reserves** what it may use (one request, its estimated tokens, one concurrency
//! slot) against every limit that applies, all or nothing. When it ends it **commits** what it
//! actually used (the difference is returned) or is **released** (tokens and the slot come back;
//! the request still counts). Holds that are never settled expire after [`HOLD_TTL_MS`], so a
//! lost settlement cannot leak quota forever.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::health::{Board, BreakerEvent, BreakerSettings, Observation};

/// How long an unsettled hold lives before it is released on its own.
pub const HOLD_TTL_MS: u64 = 30 * 60_000;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// Requests.
    Requests,
    /// Tokens, input plus output.
    Tokens,
    /// Requests in flight at once.
    Concurrent,
    /// Money, in micro-dollars (integers only, never floats).
    Spend,
}

/// When a limit's count starts again. Windows are aligned (UTC), so every host agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// Each minute.
    Minute,
    /// Each UTC day.
    Day,
    /// Each UTC calendar month.
    Month,
    /// Never: a gauge of what is held now (concurrency).
    Open,
}

impl Window {
    /// The start of the window containing `now_ms`, and the start of the next one.
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        const DAY: u64 = 86_400_000;
        match self {
            Window::Minute => {
                let start = now_ms - now_ms % 60_000;
                (start, start + 60_000)
            }
            Window::Day => {
                let start = now_ms - now_ms % DAY;
                (start, start + DAY)
            }
            Window::Month => {
                let (y, m) = year_month(now_ms / DAY);
                let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m) * DAY, days_from_civil(next.0, next.1) * DAY)
            }
            Window::Open => (0, u64::MAX),
        }
    }
}

/// The (year, month) of a day count since 1970-01-01 (Howard Hinnant's civil-from-days).
fn year_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m)
}

/// Days since 1970-01-01 of the first day of month `m` of year `y`.
fn days_from_civil(y: u64, m: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One limit: at most `max` of `meter` per `window`, under a stable `id` (its counter's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// Counter name, e.g. `tenant/tokens_per_minute` or `key:ci/requests_per_minute`.
    pub id: String,
    /// What is counted.
    pub meter: Meter,
    /// When the count starts again.
    pub window: Window,
    /// The most allowed per window.
    pub max: u64,
    /// Usage percentages at which to raise a [`BudgetAlert`], once each per window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<u8>,
}

/// A budget crossed one of its alert thresholds (raised once per threshold per window).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetAlert {
    /// The counter, e.g. `tenant/usd_per_month`.
    pub counter: String,
    /// The threshold crossed, percent.
    pub percent: u8,
    /// Usage now (settled plus held).
    pub used: u64,
    /// The budget.
    pub max: u64,
    /// When the window ends, epoch milliseconds.
    pub window_end_ms: u64,
    /// At this window's rate so far, when the budget runs out — if before the window ends.
    pub projected_exhaustion_ms: Option<u64>,
}

/// Amounts a request asks for or used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    /// Tokens, input plus output.
    pub tokens: u64,
    /// Money, micro-dollars.
    #[serde(default)]
    pub micro_usd: u64,
}

impl Amounts {
    fn of(self, meter: Meter) -> u64 {
        match meter {
            Meter::Requests | Meter::Concurrent => 1,
            Meter::Tokens => self.tokens,
            Meter::Spend => self.micro_usd,
        }
    }
}

/// What the ledger is asked to do.
// Externally tagged (serde's default), as its answer is: an internally tagged enum is buffered
// whole before its variant is read, which doubles the code derived for every type inside it, code
// that a Worker and its Durable Object compile on their first call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerOp {
    /// Hold `ask` against every limit, all or nothing.
    Reserve {
        /// The hold's id (the request id).
        id: String,
        /// The limits that apply.
        limits: Vec<Limit>,
        /// What to hold.
        ask: Amounts,
        /// The request's prompt screening, for the containment watch: observed first, so a
        /// request that trips containment is already held to its lower rate limits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        screen: Option<Screen>,
        /// Wait in the book's queue until then (epoch ms) when a per-minute or concurrency limit
        /// has no room: first come, first served (see [`Book::apply`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_until_ms: Option<u64>,
    },
    /// Observe one screened prompt (a request that made no reservation: blocked, or unlimited).
    Screen {
        /// What was screened.
        screen: Screen,
    },
    /// Lift containment (an admin's decision): of one scope (`tenant`, `route:<alias>`), or all.
    Clear {
        /// The scope, or `None` for all.
        scope: Option<String>,
        /// Who, for the log.
        by: String,
        /// Why, for the log.
        #[serde(default)]
        note: String,
    },
    /// Settle a hold with what was actually used.
    Commit {
        /// The hold's id.
        id: String,
        /// What was used.
        used: Amounts,
    },
    /// Settle a hold that used nothing but its request.
    Release {
        /// The hold's id.
        id: String,
    },
    /// Read the book (for the admin usage endpoint).
    Inspect,
    /// Count one feedback score against a route, in a policy version's quality book (named by
    /// [`quality_book`]).
    Feedback {
        /// The model alias the request used.
        route: String,
        /// The score, per mille (0–1000).
        score_permille: u16,
        /// Whether the user escalated (asked for a human, reported the answer).
        escalated: bool,
    },
    /// Apply a batch of health observations to a location's board (see [`crate::health`]) and
    /// return it; with no observations, just read it.
    Health {
        /// What requests observed, oldest first.
        observations: Vec<Observation>,
        /// The breaker thresholds of the policy the observations were made under.
        breaker: BreakerSettings,
    },
}

/// Where one limit stands after an admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitState {
    /// The limit.
    pub limit: Limit,
    /// What is left in this window after the hold.
    pub remaining: u64,
    /// When the window ends, epoch milliseconds (`u64::MAX` for gauges).
    pub reset_ms: u64,
}

/// The ledger's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerAnswer {
    /// Held; where every limit stands.
    Admitted {
        /// One state per limit, in the order given.
        states: Vec<LimitState>,
        /// Containment after the screen: the scopes held to the containment rules.
        #[serde(default, skip_serializing_if = "Containment::is_empty")]
        containment: Containment,
    },
    /// Nothing held yet: requests that queued earlier come first; retry (see [`Book::apply`]).
    Queued {
        /// How many wait ahead.
        ahead: u32,
        /// Containment after the screen.
        #[serde(default, skip_serializing_if = "Containment::is_empty")]
        containment: Containment,
    },
    /// Nothing held: this limit has no room.
    Refused {
        /// The limit that refused (the one whose window ends last, if several would).
        state: LimitState,
        /// Budgets that refused for the first time in their period raise their remaining
        /// thresholds (up to 100 %): exhausted is exhausted, even if settled usage stopped short.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        alerts: Vec<BudgetAlert>,
        /// Containment after the screen.
        #[serde(default, skip_serializing_if = "Containment::is_empty")]
        containment: Containment,
    },
    /// A screen was observed.
    Screened {
        /// Containment after it.
        containment: Containment,
    },
    /// Containment was lifted from these scopes.
    Cleared {
        /// The scopes that were contained and are no longer.
        scopes: Vec<String>,
    },
    /// A commit or release was applied (or its hold was already gone); with the alerts it raised.
    Settled {
        /// Thresholds crossed by this settlement.
        #[serde(default)]
        alerts: Vec<BudgetAlert>,
    },
    /// The book, as asked by [`LedgerOp::Inspect`].
    Book {
        /// Counters and open holds.
        book: Book,
    },
    /// The quality tallies after [`LedgerOp::Feedback`].
    Quality {
        /// The route's.
        route: Quality,
        /// All routes' together.
        total: Quality,
    },
    /// The health board after [`LedgerOp::Health`].
    Health {
        /// The board.
        board: Board,
        /// Breaker transitions the observations caused.
        #[serde(default)]
        events: Vec<BreakerEvent>,
    },
}

/// `limits` with their per-minute maxima cut to `percent` (at least 1): a contained scope's.
fn contain(mut limits: Vec<Limit>, percent: u8) -> Vec<Limit> {
    for l in limits.iter_mut().filter(|l| l.window == Window::Minute) {
        l.max = (l.max.saturating_mul(u64::from(percent)) / 100).max(1);
    }
    limits
}

/// A counter: `used` (settled plus held) in the window `start_ms..end_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    start_ms: u64,
    end_ms: u64,
    used: u64,
}

/// One limit's share of a hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    id: String,
    meter: Meter,
    amount: u64,
    start_ms: u64,
    #[serde(default)]
    end_ms: u64,
    #[serde(default)]
    max: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    alerts: Vec<u8>,
}

/// An unsettled reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hold {
    at_ms: u64,
    parts: Vec<Part>,
}

/// One tenant's counters and open holds. Serialised whole by hosts (it stays small: one counter
/// per limit, one hold per request in flight).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    counters: BTreeMap<String, Counter>,
    holds: BTreeMap<String, Hold>,
    /// Per counter: the window start and the highest alert threshold already raised in it.
    #[serde(default)]
    alerted: BTreeMap<String, (u64, u8)>,
    /// A location's provider health, in the book named by [`crate::health::board_id`].
    #[serde(default, skip_serializing_if = "Board::is_empty")]
    health: Board,
    /// Prompt screening per scope (`tenant`, `route:<alias>`), for containment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    watch: BTreeMap<String, Watch>,
    /// Containment engaged and lifted, newest last (at most [`LOG_ENTRIES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    containment_log: Vec<ContainmentEvent>,
    /// Feedback per route, in a policy version's quality book.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    quality: BTreeMap<String, Quality>,
    /// Requests waiting for room, in order of arrival: id and until when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    queue: Vec<(String, u64)>,
}

/// Most requests a book keeps waiting.
pub const MAX_QUEUE: usize = 256;

/// The most books a tenant's ledger may be split into (`tenants[].ledger_shards`).
pub const MAX_SHARDS: u16 = 64;

/// The book of shard `k` of `tenant`'s ledger. Shard 0 is the tenant's own book, so splitting a
/// ledger keeps its history; shard `k > 0` is `tenant/k` (a tenant id never contains `/`).
pub fn shard_book(tenant: &str, k: u16) -> String {
    if k == 0 { tenant.to_owned() } else { format!("{tenant}/{k}") }
}

/// Shard `k`'s share of `limits` when a ledger is split `n` ways: each maximum divided evenly,
/// the remainder one each to the first shards, so the shares add up to the limit exactly and no
/// shard can admit past its share. Budget alert thresholds stay with shard 0, so each is raised
/// once per period (from shard 0's share, a uniform sample of the tenant's traffic).
pub fn shard_limits(limits: &[Limit], n: u16, k: u16) -> Vec<Limit> {
    let (n, k) = (u64::from(n.max(1)), u64::from(k));
    limits
        .iter()
        .map(|l| Limit {
            max: l.max / n + u64::from(k < l.max % n),
            alerts: if k == 0 { l.alerts.clone() } else { Vec::new() },
            ..l.clone()
        })
        .collect()
}

/// States a shard's answer for the whole ledger: each limit's own maximum, and what remains
/// estimated as `n` times the shard's remainder (at most the maximum). Only the `x-ratelimit-*`
/// headers and error messages read these; admission itself was the shard's exact decision.
pub fn unshard(answer: &mut LedgerAnswer, limits: &[Limit], n: u16) {
    let fix = |state: &mut LimitState| {
        if let Some(whole) = limits.iter().find(|l| l.id == state.limit.id) {
            state.remaining = state.remaining.saturating_mul(u64::from(n)).min(whole.max);
            state.limit.max = whole.max;
            state.limit.alerts.clone_from(&whole.alerts);
        }
    };
    match answer {
        LedgerAnswer::Admitted { states, .. } => states.iter_mut().for_each(fix),
        LedgerAnswer::Refused { state, .. } => fix(state),
        _ => {}
    }
}

/// The book that tallies feedback on requests policy `version` decided.
pub fn quality_book(version: &str) -> String {
    format!("~quality/{version}")
}

/// Feedback scores counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    /// Scores given.
    pub count: u64,
    /// Their sum, per mille.
    pub score_sum_permille: u64,
    /// How many escalated.
    pub escalations: u64,
}

impl Quality {
    fn add(&mut self, score_permille: u16, escalated: bool) {
        self.count += 1;
        self.score_sum_permille += u64::from(score_permille.min(1000));
        self.escalations += u64::from(escalated);
    }

    /// The mean score, per mille (`None` before any).
    pub fn mean_permille(&self) -> Option<u64> {
        self.score_sum_permille.checked_div(self.count)
    }
}

/// Containment entries a book keeps.
pub const LOG_ENTRIES: usize = 50;

/// When a scope's suspicious prompts contain it (from `settings.containment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainmentRule {
    /// Suspicious share that trips it, per mille (30 = 3 %).
    pub ratio_permille: u32,
    /// The window the share is measured over, milliseconds (ten buckets).
    pub window_ms: u64,
    /// Fewest prompts in the window before the share counts.
    pub min_prompts: u32,
    /// Per-minute limits of a contained scope, percent of their policy value.
    pub rate_percent: u8,
}

/// One screened prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screen {
    /// The model alias (the route scope is `route:<alias>`).
    pub route: String,
    /// Whether its injection score reached the threshold.
    pub suspicious: bool,
    /// The containment rule of the policy it was screened under.
    pub rule: ContainmentRule,
    /// Clean prompts on the same route that an isolate screened before this one and has not sent
    /// yet (it sends clean prompts in batches, and every suspicious one at once).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clean_before: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A scope's screening: per bucket of a tenth of the window, its start and the prompts and
/// suspicious prompts seen; and whether it is contained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Watch {
    buckets: Vec<(u64, u32, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contained: Option<ContainmentEvent>,
}

/// Containment engaged (by the gateway) or lifted (by an admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainmentEvent {
    /// `tenant` or `route:<alias>`.
    pub scope: String,
    /// `engaged` or `cleared`.
    pub action: String,
    /// When, epoch milliseconds.
    pub at_ms: u64,
    /// `gateway`, or the admin who lifted it.
    pub by: String,
    /// Prompts and suspicious prompts in the window when it engaged.
    #[serde(default)]
    pub prompts: u32,
    /// Suspicious prompts in the window.
    #[serde(default)]
    pub suspicious: u32,
    /// Why it was lifted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Where containment stands for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Containment {
    /// Contained scopes of the request (`tenant`, `route:<alias>`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Containment this request's screen engaged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engaged: Vec<ContainmentEvent>,
}

impl Containment {
    /// Nothing contained, nothing engaged.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.engaged.is_empty()
    }
}

impl Book {
    /// Applies `op` at `now_ms` to the book a host stored as `stored` (JSON; none, or a document
    /// that does not parse, is an empty book): the answer, and the book to store in its place if
    /// the operation changed it. A read (a health board's, every isolate's every second) then
    /// writes nothing.
    pub fn apply_stored(stored: Option<&str>, now_ms: u64, op: LedgerOp) -> Result<(LedgerAnswer, Option<String>), serde_json::Error> {
        Book::load(stored).apply_kept(stored.unwrap_or_default(), now_ms, op)
    }

    /// The book a host stored as `stored` (JSON); none, or a document that does not parse, is an
    /// empty book.
    pub fn load(stored: Option<&str>) -> Book {
        stored.and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default()
    }

    /// [`Book::apply_stored`] for a book a host keeps in memory with `stored`, its JSON as last
    /// stored (empty if never): the answer, and the JSON to store if the operation changed it.
    pub fn apply_kept(&mut self, stored: &str, now_ms: u64, op: LedgerOp) -> Result<(LedgerAnswer, Option<String>), serde_json::Error> {
        let answer = self.apply(now_ms, op);
        let json = serde_json::to_string(self)?;
        Ok((answer, (stored != json).then_some(json)))
    }

    /// Applies `op` at `now_ms`. Expired holds are released first.
    pub fn apply(&mut self, now_ms: u64, op: LedgerOp) -> LedgerAnswer {
        self.expire(now_ms);
        match op {
            LedgerOp::Reserve { id, limits, ask, screen, queue_until_ms } => {
                let containment = screen.as_ref().map(|s| self.screen(now_ms, s)).unwrap_or_default();
                let rate = screen.as_ref().map_or(100, |s| s.rule.rate_percent);
                let limits = if containment.scopes.is_empty() { limits } else { contain(limits, rate) };
                let answer = match queue_until_ms {
                    Some(until_ms) => self.reserve_in_turn(now_ms, id, &limits, ask, until_ms),
                    None => self.reserve(now_ms, id, &limits, ask),
                };
                match answer {
                    LedgerAnswer::Admitted { states, .. } => LedgerAnswer::Admitted { states, containment },
                    LedgerAnswer::Refused { state, alerts, .. } => LedgerAnswer::Refused { state, alerts, containment },
                    LedgerAnswer::Queued { ahead, .. } => LedgerAnswer::Queued { ahead, containment },
                    other => other,
                }
            }
            LedgerOp::Screen { screen } => LedgerAnswer::Screened { containment: self.screen(now_ms, &screen) },
            LedgerOp::Clear { scope, by, note } => LedgerAnswer::Cleared { scopes: self.clear(now_ms, scope.as_deref(), by, note) },
            LedgerOp::Commit { id, used } => self.settle(now_ms, &id, Some(used)),
            LedgerOp::Release { id } => self.settle(now_ms, &id, None),
            LedgerOp::Inspect => LedgerAnswer::Book { book: self.clone() },
            LedgerOp::Feedback { route, score_permille, escalated } => {
                let tally = self.quality.entry(route).or_default();
                tally.add(score_permille, escalated);
                let route = *tally;
                let mut total = Quality::default();
                for q in self.quality.values() {
                    total.count += q.count;
                    total.score_sum_permille += q.score_sum_permille;
                    total.escalations += q.escalations;
                }
                LedgerAnswer::Quality { route, total }
            }
            LedgerOp::Health { observations, breaker } => {
                let events = observations.iter().flat_map(|o| self.health.observe(o, &breaker)).collect();
                LedgerAnswer::Health { board: self.health.clone(), events }
            }
        }
    }

    /// Takes in another shard's book, for a view of the whole ledger: counters of the same window
    /// added up (a later window wins), screening buckets added up, and holds, waiting requests
    /// and the containment log joined.
    pub fn absorb(&mut self, other: Book) {
        for (id, c) in other.counters {
            let mine = self.counters.entry(id).or_insert(Counter { used: 0, ..c });
            if mine.start_ms == c.start_ms {
                mine.used += c.used;
            } else if c.start_ms > mine.start_ms {
                *mine = c;
            }
        }
        for (scope, w) in other.watch {
            let mine = self.watch.entry(scope).or_default();
            for (start, prompts, suspicious) in w.buckets {
                match mine.buckets.iter_mut().find(|b| b.0 == start) {
                    Some(b) => (b.1, b.2) = (b.1 + prompts, b.2 + suspicious),
                    None => mine.buckets.push((start, prompts, suspicious)),
                }
            }
            mine.buckets.sort_unstable();
            if mine.contained.is_none() {
                mine.contained = w.contained;
            }
        }
        self.holds.extend(other.holds);
        self.queue.extend(other.queue);
        self.containment_log.extend(other.containment_log);
        self.containment_log.sort_by_key(|e| e.at_ms);
    }

    /// Holds currently open (for tests and leak checks).
    pub fn open_holds(&self) -> usize {
        self.holds.len()
    }

    /// What the counter `id` holds now (0 if it has rolled over or does not exist).
    pub fn used(&self, id: &str, window: Window, now_ms: u64) -> u64 {
        let start = window.bounds(now_ms).0;
        self.counters.get(id).filter(|c| c.start_ms == start).map_or(0, |c| c.used)
    }

    /// A reservation that may wait: requests that queued before this one and still wait come
    /// first (this one joins the queue and is answered `Queued`); at the head, it is tried, and
    /// if a per-minute or concurrency limit has no room it keeps its place until `until_ms`. A
    /// budget (day or month) refuses at once: waiting a few seconds cannot help.
    fn reserve_in_turn(&mut self, now_ms: u64, id: String, limits: &[Limit], ask: Amounts, until_ms: u64) -> LedgerAnswer {
        self.queue.retain(|(_, until)| *until > now_ms);
        let place = self.queue.iter().position(|(waiting, _)| *waiting == id);
        let ahead = place.unwrap_or(self.queue.len());
        let join = |q: &mut Vec<(String, u64)>| {
            if place.is_none() && q.len() < MAX_QUEUE && until_ms > now_ms {
                q.push((id.clone(), until_ms));
            }
        };
        if ahead > 0 {
            join(&mut self.queue);
            return LedgerAnswer::Queued { ahead: u32::try_from(ahead).unwrap_or(u32::MAX), containment: Containment::default() };
        }
        let answer = self.reserve(now_ms, id.clone(), limits, ask);
        match &answer {
            LedgerAnswer::Refused { state, .. }
                if matches!(state.limit.window, Window::Minute) || state.limit.meter == Meter::Concurrent =>
            {
                join(&mut self.queue);
            }
            _ => self.queue.retain(|(waiting, _)| *waiting != id),
        }
        answer
    }

    fn reserve(&mut self, now_ms: u64, id: String, limits: &[Limit], ask: Amounts) -> LedgerAnswer {
        let mut states = Vec::with_capacity(limits.len());
        let mut refused: Option<LimitState> = None;
        let mut alerts = Vec::new();
        for limit in limits {
            let (start, reset_ms) = limit.window.bounds(now_ms);
            let used = self.counters.get(&limit.id).filter(|c| c.start_ms == start).map_or(0, |c| c.used);
            let amount = ask.of(limit.meter);
            let state = LimitState { limit: limit.clone(), remaining: limit.max.saturating_sub(used + amount), reset_ms };
            if used + amount > limit.max {
                alerts.extend(self.raise(now_ms, &limit.id, (start, reset_ms), limit.max, used, 100, &limit.alerts));
                let later = refused.as_ref().is_none_or(|r| reset_ms > r.reset_ms);
                if later {
                    refused = Some(LimitState { remaining: limit.max.saturating_sub(used), ..state });
                }
            } else {
                states.push(state);
            }
        }
        if let Some(state) = refused {
            return LedgerAnswer::Refused { state, alerts, containment: Containment::default() };
        }
        let mut parts = Vec::with_capacity(limits.len());
        for limit in limits {
            let (start, end) = limit.window.bounds(now_ms);
            let amount = ask.of(limit.meter);
            let counter = self.counters.entry(limit.id.clone()).or_default();
            if counter.start_ms != start || counter.end_ms != end {
                *counter = Counter { start_ms: start, end_ms: end, used: 0 };
            }
            counter.used += amount;
            parts.push(Part {
                id: limit.id.clone(),
                meter: limit.meter,
                amount,
                start_ms: start,
                end_ms: end,
                max: limit.max,
                alerts: limit.alerts.clone(),
            });
        }
        // A second reservation under the same id replaces nothing: settle the first one first.
        if let Some(old) = self.holds.insert(id, Hold { at_ms: now_ms, parts }) {
            self.undo(&old, None);
        }
        LedgerAnswer::Admitted { states, containment: Containment::default() }
    }

    /// Observes a screened prompt in its tenant and route scopes; engages containment of a
    /// scope whose suspicious share over the window reaches the rule's. Returns the request's
    /// contained scopes and what this screen engaged.
    fn screen(&mut self, now_ms: u64, screen: &Screen) -> Containment {
        let rule = screen.rule;
        let bucket_ms = (rule.window_ms / 10).max(1);
        let bucket = now_ms - now_ms % bucket_ms;
        let mut out = Containment::default();
        for scope in ["tenant".to_owned(), format!("route:{}", screen.route)] {
            let watch = self.watch.entry(scope.clone()).or_default();
            watch.buckets.retain(|(start, _, _)| start + rule.window_ms > now_ms);
            let seen = screen.clean_before.saturating_add(1);
            match watch.buckets.last_mut() {
                Some(last) if last.0 == bucket => {
                    last.1 = last.1.saturating_add(seen);
                    last.2 += u32::from(screen.suspicious);
                }
                _ => watch.buckets.push((bucket, seen, u32::from(screen.suspicious))),
            }
            let prompts: u32 = watch.buckets.iter().map(|b| b.1).sum();
            let suspicious: u32 = watch.buckets.iter().map(|b| b.2).sum();
            let trips =
                prompts >= rule.min_prompts.max(1) && u64::from(suspicious) * 1000 >= u64::from(rule.ratio_permille) * u64::from(prompts);
            if watch.contained.is_none() && trips && rule.ratio_permille > 0 {
                let event = ContainmentEvent {
                    scope: scope.clone(),
                    action: "engaged".into(),
                    at_ms: now_ms,
                    by: "gateway".into(),
                    prompts,
                    suspicious,
                    note: String::new(),
                };
                watch.contained = Some(event.clone());
                out.engaged.push(event);
            }
            if watch.contained.is_some() {
                out.scopes.push(scope);
            }
        }
        for event in &out.engaged {
            self.log(event.clone());
        }
        out
    }

    /// Lifts containment of `scope` (or every scope); the screening counts start again.
    fn clear(&mut self, now_ms: u64, scope: Option<&str>, by: String, note: String) -> Vec<String> {
        let mut cleared = Vec::new();
        for (name, watch) in &mut self.watch {
            if scope.is_none_or(|s| s == name) && watch.contained.take().is_some() {
                watch.buckets.clear();
                cleared.push(name.clone());
            }
        }
        for name in &cleared {
            let event = ContainmentEvent {
                scope: name.clone(),
                action: "cleared".into(),
                at_ms: now_ms,
                by: by.clone(),
                prompts: 0,
                suspicious: 0,
                note: note.clone(),
            };
            self.log(event);
        }
        cleared
    }

    fn log(&mut self, event: ContainmentEvent) {
        self.containment_log.push(event);
        let over = self.containment_log.len().saturating_sub(LOG_ENTRIES);
        self.containment_log.drain(..over);
    }

    fn settle(&mut self, now_ms: u64, id: &str, used: Option<Amounts>) -> LedgerAnswer {
        let mut alerts = Vec::new();
        if let Some(hold) = self.holds.remove(id) {
            self.undo(&hold, used);
            for part in hold.parts.iter().filter(|p| !p.alerts.is_empty()) {
                alerts.extend(self.crossed(now_ms, part));
            }
        }
        LedgerAnswer::Settled { alerts }
    }

    /// The thresholds of `part`'s budget crossed since the last alert in this window.
    fn crossed(&mut self, now_ms: u64, part: &Part) -> Vec<BudgetAlert> {
        let Some(counter) = self.counters.get(&part.id).filter(|c| c.start_ms == part.start_ms) else { return vec![] };
        let used = counter.used;
        let percent_used = u128::from(used) * 100 / u128::from(part.max.max(1));
        self.raise(now_ms, &part.id, (part.start_ms, part.end_ms), part.max, used, percent_used, &part.alerts)
    }

    /// The thresholds of counter `id` (window `start_ms..end_ms`) at or below `percent_used` not
    /// yet raised in this window, as alerts; remembers the highest.
    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        now_ms: u64,
        id: &str,
        (start_ms, end_ms): (u64, u64),
        max: u64,
        used: u64,
        percent_used: u128,
        thresholds: &[u8],
    ) -> Vec<BudgetAlert> {
        let last = self.alerted.get(id).filter(|(start, _)| *start == start_ms).map_or(0, |(_, p)| *p);
        let crossed: Vec<u8> = thresholds.iter().copied().filter(|p| *p > last && u128::from(*p) <= percent_used).collect();
        let Some(&top) = crossed.iter().max() else { return vec![] };
        self.alerted.insert(id.to_owned(), (start_ms, top));
        let elapsed = u128::from(now_ms.saturating_sub(start_ms).max(1));
        let exhaustion = (used > 0).then(|| u128::from(start_ms) + elapsed * u128::from(max) / u128::from(used));
        let projected_exhaustion_ms = exhaustion.and_then(|t| u64::try_from(t).ok()).filter(|t| *t < end_ms);
        crossed
            .into_iter()
            .map(|percent| BudgetAlert { counter: id.to_owned(), percent, used, max, window_end_ms: end_ms, projected_exhaustion_ms })
            .collect()
    }

    /// Replaces a hold's amounts by what was used (`None`: released — only the request counts).
    fn undo(&mut self, hold: &Hold, used: Option<Amounts>) {
        for part in &hold.parts {
            let keep = match (part.meter, used) {
                (Meter::Concurrent, _) => 0,
                (Meter::Requests, _) => part.amount,
                (meter, Some(u)) => u.of(meter),
                (_, None) => 0,
            };
            if let Some(counter) = self.counters.get_mut(&part.id)
                && counter.start_ms == part.start_ms
            {
                counter.used = counter.used.saturating_sub(part.amount).saturating_add(keep);
            }
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let stale: Vec<String> =
            self.holds.iter().filter(|(_, h)| now_ms.saturating_sub(h.at_ms) > HOLD_TTL_MS).map(|(k, _)| k.clone()).collect();
        for id in stale {
            if let Some(hold) = self.holds.remove(&id) {
                // Charge what was held: the request may well have used it.
                let held = |meter| hold.parts.iter().find(|p| p.meter == meter).map_or(0, |p| p.amount);
                let used = Amounts { tokens: held(Meter::Tokens), micro_usd: held(Meter::Spend) };
                self.undo(&hold, Some(used));
            }
        }
        // Windows that have ended need no counter (a late settlement of theirs changes nothing).
        self.counters.retain(|_, c| c.end_ms > now_ms);
        let counters = &self.counters;
        self.alerted.retain(|id, _| counters.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_040_000; // 40 s into a minute

    fn limit(id: &str, meter: Meter, window: Window, max: u64) -> Limit {
        Limit { id: id.into(), meter, window, max, alerts: vec![] }
    }

    fn reserve(book: &mut Book, now: u64, id: &str, limits: &[Limit], tokens: u64) -> Result<Vec<u64>, (String, u64)> {
        match book.apply(
            now,
            LedgerOp::Reserve {
                id: id.into(),
                limits: limits.to_vec(),
                ask: Amounts { tokens, micro_usd: 0 },
                screen: None,
                queue_until_ms: None,
            },
        ) {
            LedgerAnswer::Admitted { states, .. } => Ok(states.iter().map(|s| s.remaining).collect()),
            LedgerAnswer::Refused { state, .. } => Err((state.limit.id, state.reset_ms)),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_stored_book_is_written_back_only_when_an_operation_changed_it() {
        let apply = |stored: Option<&str>, now: u64, op: LedgerOp| {
            let Ok(applied) = Book::apply_stored(stored, now, op) else { unreachable!("a book always serialises") };
            applied
        };
        let limits = [limit("tenant/x", Meter::Requests, Window::Minute, 5)];
        let hold =
            LedgerOp::Reserve { id: "r1".into(), limits: limits.to_vec(), ask: Amounts::default(), screen: None, queue_until_ms: None };
        let (answer, written) = apply(None, T0, hold);
        assert!(matches!(answer, LedgerAnswer::Admitted { .. }));
        let Some(stored) = written else { unreachable!("a hold changes an empty book") };
        let read = || LedgerOp::Health { observations: Vec::new(), breaker: BreakerSettings::default() };
        let (answer, written) = apply(Some(&stored), T0 + 1, read());
        assert!(matches!(answer, LedgerAnswer::Health { .. }));
        assert_eq!(written, None, "a read writes nothing");
        assert_eq!(apply(Some(&stored), T0 + 2, LedgerOp::Inspect).1, None);
        // Settling the hold changes the book; a stored document that does not parse is an empty book.
        assert!(apply(Some(&stored), T0 + 3, LedgerOp::Release { id: "r1".into() }).1.is_some());
        assert_eq!(apply(Some("not json"), T0, read()).1, serde_json::to_string(&Book::default()).ok());
    }

    #[test]
    fn shards_split_every_maximum_exactly_and_keep_alerts_on_shard_zero() {
        for (max, n) in [(10, 4), (3, 4), (0, 3), (1_000_001, 7), (64, 64), (5, 1)] {
            let l = Limit { alerts: vec![50, 80], ..limit("tenant/x", Meter::Tokens, Window::Day, max) };
            let shares: Vec<Limit> = (0..n).flat_map(|k| shard_limits(std::slice::from_ref(&l), n, k)).collect();
            assert_eq!(shares.iter().map(|s| s.max).sum::<u64>(), max, "{max} over {n}");
            assert!(shares.iter().all(|s| s.max.abs_diff(max / u64::from(n)) <= 1));
            assert_eq!(shares.iter().filter(|s| !s.alerts.is_empty()).count(), 1);
            assert_eq!(shares[0].alerts, [50, 80]);
        }
        assert_eq!(shard_book("acme", 0), "acme");
        assert_eq!(shard_book("acme", 3), "acme/3");
    }

    /// A sweep over split books, as the gateway makes one: from `home`, each book in turn until one admits.
    fn sweep(books: &mut [Book], home: usize, now: u64, id: &str, limits: &[Limit], tokens: u64) -> Option<usize> {
        let n = books.len();
        (0..n).map(|i| (home + i) % n).find(|&k| {
            let share = shard_limits(limits, n as u16, k as u16);
            reserve(&mut books[k], now, id, &share, tokens).is_ok()
        })
    }

    #[test]
    fn split_books_never_admit_past_a_limit_and_refuse_unit_asks_only_when_all_are_full() {
        // A deterministic pseudo-random walk of reservations, commits and releases over 5 books.
        let limits =
            [limit("tenant/requests", Meter::Requests, Window::Minute, 37), limit("tenant/tokens", Meter::Tokens, Window::Minute, 5_000)];
        let mut books = vec![Book::default(); 5];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut admitted, mut open) = (0u64, Vec::new());
        let used = |books: &[Book], c: &str| books.iter().map(|b| b.used(c, Window::Minute, T0)).sum::<u64>();
        for i in 0..200 {
            let tokens = next() % 400;
            let home = (next() % 5) as usize;
            let id = format!("r{i}");
            // Per book: whether it had room for this request (its share of both limits).
            let room: Vec<bool> = (0..5)
                .map(|k| {
                    let share = shard_limits(&limits, 5, k as u16);
                    books[k].used("tenant/requests", Window::Minute, T0) < share[0].max
                        && books[k].used("tenant/tokens", Window::Minute, T0) + tokens <= share[1].max
                })
                .collect();
            match sweep(&mut books, home, T0, &id, &limits, tokens) {
                Some(k) => {
                    admitted += 1;
                    open.push((k, id, tokens));
                }
                // Refused: a request (ask 1) finds no book with room for it, or the tokens do not fit in any.
                None => assert!(room.iter().all(|r| !r), "refused though a book had room: {room:?}"),
            }
            assert!(used(&books, "tenant/requests") <= 37 && used(&books, "tenant/tokens") <= 5_000);
            if next() % 3 == 0 && !open.is_empty() {
                let (k, id, tokens) = open.remove((next() as usize) % open.len());
                let op = if tokens % 2 == 0 {
                    LedgerOp::Release { id }
                } else {
                    LedgerOp::Commit { id, used: Amounts { tokens: tokens / 2, micro_usd: 0 } }
                };
                books[k].apply(T0, op);
            }
        }
        assert_eq!(admitted, 37, "every request the minute allows was admitted");
        assert_eq!(used(&books, "tenant/requests"), 37);
        let mut whole = books[0].clone();
        books.iter().skip(1).for_each(|b| whole.absorb(b.clone()));
        assert_eq!(whole.used("tenant/requests", Window::Minute, T0), 37);
        assert_eq!(whole.open_holds(), open.len());
    }

    const RULE: ContainmentRule = ContainmentRule { ratio_permille: 30, window_ms: 600_000, min_prompts: 20, rate_percent: 25 };

    fn screen(b: &mut Book, at: u64, route: &str, suspicious: bool) -> Containment {
        match b.apply(at, LedgerOp::Screen { screen: Screen { route: route.into(), suspicious, rule: RULE, clean_before: 0 } }) {
            LedgerAnswer::Screened { containment } => containment,
            _ => unreachable!(),
        }
    }

    #[test]
    fn containment_engages_once_at_the_ratio_and_holds_until_cleared() {
        let mut b = Book::default();
        // 19 clean prompts and 1 suspicious: 5 % of 20, at the minimum count: it trips.
        for i in 0..19 {
            assert!(screen(&mut b, T0 + i, "chat", false).is_empty());
        }
        let tripped = screen(&mut b, T0 + 19, "chat", true);
        assert_eq!(tripped.scopes, ["tenant", "route:chat"]);
        assert_eq!(
            tripped.engaged.iter().map(|e| (e.scope.as_str(), e.prompts, e.suspicious)).collect::<Vec<_>>(),
            [("tenant", 20, 1), ("route:chat", 20, 1)]
        );
        // Engaged once; it stays when the window has long passed with clean prompts.
        let later = screen(&mut b, T0 + 3_600_000, "chat", false);
        assert_eq!((later.scopes.len(), later.engaged.len()), (2, 0));
        // Other routes are contained through the tenant scope only.
        assert_eq!(screen(&mut b, T0 + 3_600_001, "embed", false).scopes, ["tenant"]);
        // Lifting one route leaves the tenant; lifting all leaves nothing, and the log has both.
        let cleared = b.apply(T0 + 3_700_000, LedgerOp::Clear { scope: Some("route:chat".into()), by: "ops".into(), note: "fp".into() });
        assert_eq!(cleared, LedgerAnswer::Cleared { scopes: vec!["route:chat".into()] });
        let cleared = b.apply(T0 + 3_700_001, LedgerOp::Clear { scope: None, by: "ops".into(), note: String::new() });
        assert_eq!(cleared, LedgerAnswer::Cleared { scopes: vec!["tenant".into()] });
        assert!(screen(&mut b, T0 + 3_700_002, "chat", false).is_empty());
        let actions: Vec<(&str, &str, &str)> =
            b.containment_log.iter().map(|e| (e.scope.as_str(), e.action.as_str(), e.by.as_str())).collect();
        assert_eq!(
            actions,
            [
                ("tenant", "engaged", "gateway"),
                ("route:chat", "engaged", "gateway"),
                ("route:chat", "cleared", "ops"),
                ("tenant", "cleared", "ops")
            ]
        );
    }

    #[test]
    fn containment_needs_the_minimum_count_and_forgets_old_buckets() {
        let mut b = Book::default();
        // 10 suspicious of 10: under the minimum of 20, nothing trips.
        for i in 0..10 {
            assert!(screen(&mut b, T0 + i, "chat", true).is_empty());
        }
        // Eleven minutes on, those have left the window: 19 clean ones then 0 % — no trip.
        for i in 0..20 {
            assert!(screen(&mut b, T0 + 660_000 + i, "chat", false).is_empty());
        }
    }

    #[test]
    fn a_contained_reservation_gets_a_quarter_of_the_per_minute_limits() {
        let mut b = Book::default();
        for i in 0..19 {
            screen(&mut b, T0 + i, "chat", true);
        }
        let rpm = limit("rpm", Meter::Requests, Window::Minute, 8);
        let day = limit("day", Meter::Tokens, Window::Day, 1_000);
        let ask = |b: &mut Book, id: &str| {
            let screen = Some(Screen { route: "chat".into(), suspicious: false, rule: RULE, clean_before: 0 });
            b.apply(
                T0 + 100,
                LedgerOp::Reserve {
                    id: id.into(),
                    limits: vec![rpm.clone(), day.clone()],
                    ask: Amounts { tokens: 10, micro_usd: 0 },
                    screen,
                    queue_until_ms: None,
                },
            )
        };
        match ask(&mut b, "a") {
            LedgerAnswer::Admitted { states, containment } => {
                assert_eq!(containment.engaged.len(), 2, "this reservation's screen tripped it");
                assert_eq!((states[0].limit.max, states[1].limit.max), (2, 1_000), "per-minute cut to 25 %, budgets kept");
            }
            other => unreachable!("{other:?}"),
        }
        assert!(matches!(ask(&mut b, "b"), LedgerAnswer::Admitted { .. }));
        assert!(matches!(ask(&mut b, "c"), LedgerAnswer::Refused { .. }), "2 of 8 per minute while contained");
    }

    #[test]
    fn requests_per_minute_admit_up_to_the_limit_then_refuse_until_the_window_ends() {
        let rpm = [limit("rpm", Meter::Requests, Window::Minute, 2)];
        let mut b = Book::default();
        assert_eq!(reserve(&mut b, T0, "a", &rpm, 0), Ok(vec![1]));
        assert_eq!(reserve(&mut b, T0 + 1, "b", &rpm, 0), Ok(vec![0]));
        assert_eq!(reserve(&mut b, T0 + 19_999, "c", &rpm, 0), Err(("rpm".into(), 1_800_000_060_000)));
        b.apply(T0, LedgerOp::Release { id: "a".into() });
        assert_eq!(reserve(&mut b, T0 + 19_999, "c", &rpm, 0), Err(("rpm".into(), 1_800_000_060_000)), "a released request still counted");
        assert_eq!(reserve(&mut b, T0 + 20_000, "d", &rpm, 0), Ok(vec![1]), "the next minute starts fresh");
    }

    #[test]
    fn tokens_are_held_then_trued_up_on_commit_and_returned_on_release() {
        let tpm = [limit("tpm", Meter::Tokens, Window::Minute, 1_000)];
        let mut b = Book::default();
        assert_eq!(reserve(&mut b, T0, "a", &tpm, 600), Ok(vec![400]));
        assert_eq!(reserve(&mut b, T0, "b", &tpm, 600), Err(("tpm".into(), 1_800_000_060_000)), "all or nothing");
        b.apply(T0, LedgerOp::Commit { id: "a".into(), used: Amounts { tokens: 150, micro_usd: 0 } });
        assert_eq!(b.used("tpm", Window::Minute, T0), 150);
        assert_eq!(reserve(&mut b, T0, "b", &tpm, 600), Ok(vec![250]));
        b.apply(T0, LedgerOp::Release { id: "b".into() });
        assert_eq!(b.used("tpm", Window::Minute, T0), 150);
        b.apply(T0, LedgerOp::Commit { id: "b".into(), used: Amounts { tokens: 999, micro_usd: 0 } });
        assert_eq!(b.used("tpm", Window::Minute, T0), 150, "settling twice changes nothing");
        assert_eq!(b.open_holds(), 0);
    }

    #[test]
    fn a_queue_serves_waiting_requests_in_order_of_arrival_and_forgets_the_expired() {
        let one = [limit("inflight", Meter::Concurrent, Window::Open, 1)];
        let mut b = Book::default();
        let ask = |b: &mut Book, now: u64, id: &str, until: Option<u64>| {
            let op =
                LedgerOp::Reserve { id: id.into(), limits: one.to_vec(), ask: Amounts::default(), screen: None, queue_until_ms: until };
            match b.apply(now, op) {
                LedgerAnswer::Admitted { .. } => "admitted".to_owned(),
                LedgerAnswer::Refused { .. } => "refused".to_owned(),
                LedgerAnswer::Queued { ahead, .. } => format!("queued behind {ahead}"),
                other => format!("{other:?}"),
            }
        };
        assert_eq!(ask(&mut b, T0, "a", None), "admitted");
        assert_eq!(ask(&mut b, T0, "b", Some(T0 + 1_000)), "refused", "b heads the queue: it is tried, finds no room and keeps its place");
        assert_eq!(ask(&mut b, T0 + 1, "c", Some(T0 + 2_000)), "queued behind 1");
        b.apply(T0 + 2, LedgerOp::Release { id: "a".into() });
        assert_eq!(ask(&mut b, T0 + 3, "c", Some(T0 + 2_000)), "queued behind 1", "the free slot is b's");
        assert_eq!(ask(&mut b, T0 + 3, "d", None), "admitted", "a request that does not queue is not held back by those that do");
        b.apply(T0 + 4, LedgerOp::Release { id: "d".into() });
        assert_eq!(ask(&mut b, T0 + 5, "b", Some(T0 + 1_000)), "admitted");
        assert_eq!(ask(&mut b, T0 + 6, "c", Some(T0 + 2_000)), "refused", "now c heads the queue");
        b.apply(T0 + 7, LedgerOp::Release { id: "b".into() });
        assert_eq!(ask(&mut b, T0 + 8, "c", Some(T0 + 2_000)), "admitted");
        assert!(b.queue.is_empty());

        // A waiter that gives up (its time passes) no longer holds anyone back.
        assert_eq!(ask(&mut b, T0 + 10, "e", Some(T0 + 100)), "refused");
        assert_eq!(ask(&mut b, T0 + 11, "f", Some(T0 + 5_000)), "queued behind 1");
        b.apply(T0 + 200, LedgerOp::Release { id: "c".into() });
        assert_eq!(ask(&mut b, T0 + 201, "f", Some(T0 + 5_000)), "admitted");
        // A budget refuses at once and keeps no place.
        let budget = [limit("tpd", Meter::Requests, Window::Day, 0)];
        let op = LedgerOp::Reserve {
            id: "g".into(),
            limits: budget.to_vec(),
            ask: Amounts::default(),
            screen: None,
            queue_until_ms: Some(T0 + 9_000),
        };
        assert!(matches!(b.apply(T0 + 300, op), LedgerAnswer::Refused { .. }));
        assert!(b.queue.is_empty(), "{:?}", b.queue);
    }

    #[test]
    fn concurrency_is_a_gauge_and_a_refusal_holds_nothing() {
        let limits = [limit("inflight", Meter::Concurrent, Window::Open, 2), limit("tpm", Meter::Tokens, Window::Minute, 100)];
        let mut b = Book::default();
        assert!(reserve(&mut b, T0, "a", &limits, 10).is_ok());
        assert!(reserve(&mut b, T0, "b", &limits, 10).is_ok());
        assert_eq!(reserve(&mut b, T0, "c", &limits, 10).map_err(|e| e.0), Err("inflight".into()));
        assert_eq!(b.used("tpm", Window::Minute, T0), 20, "the refused request held no tokens");
        b.apply(T0, LedgerOp::Commit { id: "a".into(), used: Amounts { tokens: 10, micro_usd: 0 } });
        assert!(reserve(&mut b, T0, "c", &limits, 10).is_ok(), "a settled request frees its slot");
    }

    #[test]
    fn a_hold_from_an_ended_window_does_not_touch_the_new_one_and_lost_holds_expire() {
        let limits = [limit("tpm", Meter::Tokens, Window::Minute, 100), limit("inflight", Meter::Concurrent, Window::Open, 1)];
        let mut b = Book::default();
        assert!(reserve(&mut b, T0, "a", &limits, 90).is_ok());
        assert!(reserve(&mut b, T0 + 30_000, "b", &limits, 90).is_err(), "the slot is still held");
        b.apply(T0 + 30_000, LedgerOp::Commit { id: "a".into(), used: Amounts { tokens: 5, micro_usd: 0 } });
        assert_eq!(b.used("tpm", Window::Minute, T0 + 30_000), 0, "the old minute's commit is not charged to the new one");
        assert!(reserve(&mut b, T0 + 30_000, "b", &limits, 90).is_ok());
        assert!(reserve(&mut b, T0 + 31_000, "c", &limits, 1).is_err());
        assert!(reserve(&mut b, T0 + 30_000 + HOLD_TTL_MS + 1, "c", &limits, 1).is_ok(), "a hold nobody settled expires");
        assert_eq!(b.open_holds(), 1);
    }

    #[test]
    fn the_refusal_names_the_limit_that_frees_last() {
        let limits = [limit("rpm", Meter::Requests, Window::Minute, 0), limit("daily", Meter::Tokens, Window::Day, 0)];
        let mut b = Book::default();
        let (id, reset) = reserve(&mut b, T0, "a", &limits, 1).err().unwrap_or_default();
        assert_eq!((id.as_str(), reset), ("daily", 1_800_000_040_000 - 1_800_000_040_000 % 86_400_000 + 86_400_000));
    }

    #[test]
    fn spend_is_held_in_micro_dollars_and_trued_up() {
        let budget = [limit("usd", Meter::Spend, Window::Month, 1_000_000)]; // $1
        let mut b = Book::default();
        let ask = |b: &mut Book, id: &str, micro_usd| {
            b.apply(
                T0,
                LedgerOp::Reserve {
                    id: id.into(),
                    limits: budget.to_vec(),
                    ask: Amounts { tokens: 0, micro_usd },
                    screen: None,
                    queue_until_ms: None,
                },
            )
        };
        assert!(matches!(ask(&mut b, "a", 700_000), LedgerAnswer::Admitted { .. }));
        assert!(matches!(ask(&mut b, "b", 400_000), LedgerAnswer::Refused { .. }), "would pass $1");
        b.apply(T0, LedgerOp::Commit { id: "a".into(), used: Amounts { tokens: 0, micro_usd: 123_456 } });
        assert!(matches!(ask(&mut b, "b", 400_000), LedgerAnswer::Admitted { .. }));
        assert_eq!(b.used("usd", Window::Month, T0), 523_456);
    }

    /// Reserves `tokens` under `limit` alone.
    fn reserve_tokens(b: &mut Book, at: u64, id: &str, limit: &Limit, tokens: u64) -> LedgerAnswer {
        let op = LedgerOp::Reserve {
            id: id.into(),
            limits: vec![limit.clone()],
            ask: Amounts { tokens, micro_usd: 0 },
            screen: None,
            queue_until_ms: None,
        };
        b.apply(at, op)
    }

    #[test]
    fn a_budget_that_refuses_raises_its_remaining_thresholds_once() {
        let budget = Limit { alerts: vec![50, 80, 100], ..limit("daily", Meter::Tokens, Window::Day, 1_000) };
        let mut b = Book::default();
        let reserve = |b: &mut Book, id: &str, tokens: u64| reserve_tokens(b, T0, id, &budget, tokens);
        assert!(matches!(reserve(&mut b, "a", 600), LedgerAnswer::Admitted { .. }));
        let settled = b.apply(T0, LedgerOp::Commit { id: "a".into(), used: Amounts { tokens: 600, micro_usd: 0 } });
        assert!(matches!(&settled, LedgerAnswer::Settled { alerts } if alerts.iter().map(|a| a.percent).eq([50]) ));
        // 600 settled; 500 more does not fit: exhausted for this request, so 80 % and 100 % fire.
        match reserve(&mut b, "b", 500) {
            LedgerAnswer::Refused { alerts, .. } => {
                assert_eq!(alerts.iter().map(|a| (a.percent, a.used)).collect::<Vec<_>>(), [(80, 600), (100, 600)]);
            }
            other => unreachable!("{other:?}"),
        }
        assert!(matches!(reserve(&mut b, "c", 500), LedgerAnswer::Refused { alerts, .. } if alerts.is_empty()), "once per window");
        // A request that still fits raises nothing more.
        assert!(matches!(reserve(&mut b, "d", 300), LedgerAnswer::Admitted { .. }));
    }

    #[test]
    fn budget_alerts_fire_once_per_threshold_per_window_with_a_projection() {
        let day_start = T0 - T0 % 86_400_000;
        let budget = Limit { alerts: vec![50, 80, 100], ..limit("daily", Meter::Tokens, Window::Day, 1_000) };
        let mut b = Book::default();
        let spend = |b: &mut Book, at: u64, id: &str, tokens: u64| {
            reserve_tokens(b, at, id, &budget, tokens);
            match b.apply(at, LedgerOp::Commit { id: id.into(), used: Amounts { tokens, micro_usd: 0 } }) {
                LedgerAnswer::Settled { alerts } => {
                    alerts.into_iter().map(|a| (a.percent, a.used, a.projected_exhaustion_ms)).collect::<Vec<_>>()
                }
                other => unreachable!("{other:?}"),
            }
        };
        let six_hours = 6 * 3_600_000;
        assert_eq!(spend(&mut b, day_start + six_hours, "a", 400), vec![]);
        // 850 of 1000 after 6 h: 50 % and 80 % at once; at this rate the budget ends after ~7.06 h.
        let fired = spend(&mut b, day_start + six_hours, "b", 450);
        assert_eq!(fired.iter().map(|f| f.0).collect::<Vec<_>>(), [50, 80]);
        assert_eq!(fired[0].2, Some(day_start + six_hours * 1_000 / 850));
        assert_eq!(spend(&mut b, day_start + six_hours + 1, "c", 10), vec![], "no threshold twice");
        assert_eq!(spend(&mut b, day_start + six_hours + 2, "d", 140).iter().map(|f| f.0).collect::<Vec<_>>(), [100]);
        let next_day = day_start + 86_400_000 + 3 * six_hours;
        let fired = spend(&mut b, next_day, "e", 600);
        assert_eq!(
            fired.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>(),
            [(50, None)],
            "a new window alerts again; 600 in 18 h will not run out today"
        );
    }

    #[test]
    fn calendar_windows_follow_utc_months_and_days() {
        // 2026-11-28T23:30:00Z and 2024-02-29T12:00:00Z
        let (start, end) = Window::Month.bounds(1_795_908_600_000);
        assert_eq!((start, end), (1_793_491_200_000, 1_796_083_200_000)); // 2026-11-01 .. 2026-12-01
        let (start, end) = Window::Month.bounds(1_709_208_000_000);
        assert_eq!((start, end), (1_706_745_600_000, 1_709_251_200_000)); // 2024-02-01 .. 2024-03-01
        let (start, end) = Window::Month.bounds(1_796_083_200_000 + 31 * 86_400_000 - 1);
        assert_eq!(end, 1_798_761_600_000); // 2026-12 ends 2027-01-01
        assert_eq!(start, 1_796_083_200_000);
        assert_eq!(Window::Day.bounds(1_795_908_600_000), (1_795_824_000_000, 1_795_910_400_000));
    }

    #[test]
    fn never_more_than_the_limit_in_any_window_under_any_settlement() {
        // A deterministic sweep standing in for a property test: arrival patterns × settlements.
        for max in [0u64, 1, 3, 50] {
            for step in [1u64, 7, 333, 1_000, 59_999] {
                for settle in 0..3 {
                    let limits = [limit("tpm", Meter::Tokens, Window::Minute, max), limit("rpm", Meter::Requests, Window::Minute, max)];
                    let mut b = Book::default();
                    let mut admitted = BTreeMap::<u64, u64>::new();
                    for i in 0..300u64 {
                        let now = 1_000_000 + i * step;
                        if reserve(&mut b, now, &format!("r{i}"), &limits, 1).is_ok() {
                            *admitted.entry(now / 60_000).or_default() += 1;
                            let op = match settle {
                                0 => LedgerOp::Commit { id: format!("r{i}"), used: Amounts { tokens: 1, micro_usd: 0 } },
                                1 => LedgerOp::Release { id: format!("r{i}") },
                                _ => continue,
                            };
                            b.apply(now, op);
                        }
                        assert!(b.used("tpm", Window::Minute, now) <= max);
                    }
                    assert!(admitted.values().all(|&n| n <= max), "max {max} step {step} settle {settle}: {admitted:?}");
                }
            }
        }
    }
}
