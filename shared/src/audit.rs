//! The audit log: what the gateway decided, appended per tenant as hash-chained entries.
//!
//! Each request becomes one entry holding every decision taken for it (authentication,
//! admission, firewall, residency, route, guard), with the policy version that took them; admin
//! actions, containment changes and canary rollbacks are entries of their own. Policy actions that
//! concern no tenant go to the log [`ADMIN_LOG`].
//!
//! An entry's `hash` is SHA-256 of the previous entry's hash, a colon, and the entry's body (its
//! JSON text as stored, which carries its sequence number and tenant). Changing, removing or
//! reordering an entry breaks the chain at that point, which [`AuditOp::Verify`] finds. Retention
//! removes the oldest entries and keeps the last removed one's sequence number and hash as the
//! chain's anchor. (Rewriting the whole chain from a point on is not detectable from the store
//! alone; each request record carries the head the append produced, so the chain's head is also
//! in the telemetry pipeline to compare with.)
//!
//! Storage is SQLite on both runtimes — a Durable Object's storage per tenant on Workers, the
//! component's database on Spin — behind the [`Sql`] port, so the statements, the chain and the
//! search live here once. The host runs [`apply`] inside one transaction.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind};
use crate::policy::hex;
use crate::telemetry::RequestRecord;

/// Version of the entry schema; bumped on any incompatible change.
pub const AUDIT_SCHEMA: u32 = 1;
/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The log of policy actions that concern no one tenant (publish, promote, rollback).
pub const ADMIN_LOG: &str = "~admin";
/// Retention when policy does not say, days.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
/// Most entries one search returns.
pub const MAX_PAGE: u32 = 500;
/// Most entries retention removes in one append (the rest go with the next ones).
const PRUNE_BATCH: i64 = 200;
/// Rows read at a time while verifying.
const VERIFY_BATCH: i64 = 500;

/// A value passed to or read from SQLite.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

impl SqlValue {
    fn int(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            SqlValue::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// SQLite, as a host lends it: runs one statement with positional `?` parameters and returns its
/// rows. Workers: a Durable Object's `sql.exec`; Spin: `spin_sdk::sqlite::Connection::execute`.
pub trait Sql {
    /// Runs `statement` with `params`; the rows it returns, each its columns in order.
    fn run(&self, statement: &str, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>, Error>;
}

/// The tables, created on first use.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS edgegate_audit (tenant TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL, \
     types TEXT NOT NULL, rules TEXT NOT NULL, request_id TEXT, policy_version TEXT, spend_key TEXT, cost INTEGER, tokens INTEGER, \
     body TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (tenant, seq))",
    "CREATE INDEX IF NOT EXISTS edgegate_audit_request ON edgegate_audit (tenant, request_id)",
    "CREATE TABLE IF NOT EXISTS edgegate_audit_anchor (tenant TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL)",
];

/// An entry before it joins a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    /// When it was decided, epoch milliseconds.
    pub at_ms: u64,
    /// `request`, `admin`, `containment` or `canary`.
    #[serde(rename = "type")]
    pub kind: String,
    /// How it ended: for requests `served`, `failed`, `blocked`, `refused` or `denied`; for admin
    /// actions the action (`publish`, `rollback`, …).
    pub outcome: String,
    /// The request it was decided for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The policy version that decided it (for admin actions, the version they made or moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// Who: the API key id or admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Each decision, an object whose `type` names it (`auth`, `admission`, `firewall`,
    /// `residency`, `route`, `guard`, `containment`, `truncation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<serde_json::Value>,
    /// Rule ids the decisions name (firewall and guard findings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// What else an admin action carries (its note, the key id, the route).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    /// What an answered request spent, for the spend report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<Spend>,
}

/// What one answered request spent, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// The model alias.
    pub route: String,
    /// The product feature the request named, if the tenant declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// The provider that answered.
    pub provider: String,
    /// The model it was sent.
    pub model: String,
    /// Its cost, micro-dollars (0 when the model has no price).
    pub micro_usd: u64,
    /// Tokens, prompt and output.
    pub tokens: u64,
}

impl Spend {
    /// The grouping key stored beside the entry: route, feature, provider and model.
    fn key(&self) -> String {
        let clean = |s: &str| s.replace('|', "/");
        format!("{}|{}|{}|{}", clean(&self.route), clean(self.feature.as_deref().unwrap_or("")), clean(&self.provider), clean(&self.model))
    }
}

impl Draft {
    /// The decision types the entry can be found by: its own type and each decision's.
    fn types(&self) -> Vec<&str> {
        let mut types = vec![self.kind.as_str()];
        types.extend(self.decisions.iter().filter_map(|d| d.get("type").and_then(serde_json::Value::as_str)));
        types
    }
}

/// An entry as stored: the draft, where it sits in its chain, and the body that was hashed.
#[derive(Serialize)]
struct Body<'a> {
    schema: u32,
    seq: u64,
    tenant: &'a str,
    #[serde(flatten)]
    draft: &'a Draft,
}

/// A position in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the entry (0 before the first).
    pub seq: u64,
    /// Its hash ([`GENESIS`] before the first).
    pub hash: String,
}

impl Head {
    fn genesis() -> Head {
        Head { seq: 0, hash: GENESIS.to_owned() }
    }
}

/// A search of one tenant's log, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// From this time on, epoch milliseconds (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// Before this time, epoch milliseconds (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// Entries of this type or with a decision of this type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Entries naming this rule id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Entries of this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Entries decided by this policy version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// Entries older than this sequence number (the previous page's `next_cursor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
    /// Page size (default 50, at most [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl Query {
    /// The query a URL's query string asks for (`from`, `to`, `type`, `rule`, `request_id`,
    /// `policy_version`, `cursor`, `limit`); an unknown or malformed parameter is an error.
    pub fn from_query_string(qs: &str) -> Result<Query, Error> {
        let mut q = Query::default();
        for pair in qs.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw).ok_or_else(|| bad(name, "is not valid percent-encoded UTF-8"))?;
            let number = || value.parse::<u64>().map_err(|_| bad(name, "must be a non-negative integer"));
            match name {
                "from" => q.from_ms = Some(number()?),
                "to" => q.to_ms = Some(number()?),
                "cursor" => q.cursor = Some(number()?),
                "limit" => {
                    let n = number()?;
                    if !(1..=u64::from(MAX_PAGE)).contains(&n) {
                        return Err(bad(name, &format!("must be 1-{MAX_PAGE}")));
                    }
                    q.limit = u32::try_from(n).ok();
                }
                "type" => q.kind = Some(value),
                "rule" => q.rule = Some(value),
                "request_id" => q.request_id = Some(value),
                "policy_version" => q.policy_version = Some(value),
                _ => return Err(bad(name, "is not a search parameter (from, to, type, rule, request_id, policy_version, cursor, limit)")),
            }
        }
        Ok(q)
    }
}

fn bad(name: &str, why: &str) -> Error {
    Error::new(ErrorKind::InvalidRequest, format!("`{name}` {why}")).with_param(name.to_owned())
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// The first entry that does not hold.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// The result of checking a chain from its anchor to its head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether every entry holds.
    pub valid: bool,
    /// Entries checked.
    pub checked: u64,
    /// Where the chain starts: genesis, or the last entry retention removed.
    pub anchor: Head,
    /// The last entry that holds.
    pub head: Head,
    /// The first break, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<Break>,
}

/// What a host is asked to do with a tenant's log.
// Externally tagged (serde's default), as its answer is: an internally tagged enum is buffered
// whole before its variant is read, which doubles the code derived for every type inside it, code
// that a Worker and its Durable Object compile on their first call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOp {
    /// Append `drafts` in order, then remove what is older than `retention_days`.
    Append {
        /// The new entries.
        drafts: Vec<Draft>,
        /// Retention, days.
        retention_days: u32,
    },
    /// One page of a search.
    Search {
        /// The search.
        query: Query,
    },
    /// Check the whole chain.
    Verify,
    /// Sum what answered requests spent from `from_ms` (inclusive) to `to_ms` (exclusive).
    Spend {
        /// Start, epoch milliseconds.
        from_ms: u64,
        /// End, epoch milliseconds.
        to_ms: u64,
    },
}

/// The answer to an [`AuditOp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAnswer {
    /// The chain's new head.
    Appended {
        /// The last entry appended.
        head: Head,
    },
    /// Entries, newest first, and the cursor of the next page when there is one.
    Page {
        /// The entries: their bodies with `prev` and `hash`.
        entries: Vec<serde_json::Value>,
        /// Pass as `cursor` for the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_cursor: Option<u64>,
    },
    /// The chain's check.
    Verified {
        /// What the check found.
        report: Report,
    },
    /// Spend per route, feature, provider and model.
    Spent {
        /// One row per combination that spent anything.
        rows: Vec<SpendRow>,
    },
}

/// What one route, feature, provider and model spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    /// The model alias.
    pub route: String,
    /// The feature (empty when none was named).
    pub feature: String,
    /// The provider.
    pub provider: String,
    /// The model sent.
    pub model: String,
    /// Answered requests.
    pub requests: u64,
    /// Their cost, micro-dollars.
    pub micro_usd: u64,
    /// Their tokens.
    pub tokens: u64,
}

/// Runs `op` on the log of `tenant` in `db` (inside one transaction the host holds). `now_ms`
/// dates retention.
pub fn apply(db: &dyn Sql, tenant: &str, now_ms: u64, op: AuditOp) -> Result<AuditAnswer, Error> {
    for statement in SCHEMA {
        db.run(statement, Vec::new())?;
    }
    match op {
        AuditOp::Append { drafts, retention_days } => {
            let head = append(db, tenant, &drafts)?;
            prune(db, tenant, now_ms.saturating_sub(u64::from(retention_days) * 86_400_000))?;
            Ok(AuditAnswer::Appended { head })
        }
        AuditOp::Search { query } => search(db, tenant, &query),
        AuditOp::Verify => Ok(AuditAnswer::Verified { report: verify(db, tenant)? }),
        AuditOp::Spend { from_ms, to_ms } => spent(db, tenant, from_ms, to_ms),
    }
}

fn spent(db: &dyn Sql, tenant: &str, from_ms: u64, to_ms: u64) -> Result<AuditAnswer, Error> {
    let rows = db.run(
        "SELECT spend_key, COUNT(*), SUM(cost), SUM(tokens) FROM edgegate_audit \
         WHERE tenant = ? AND spend_key IS NOT NULL AND at_ms >= ? AND at_ms < ? GROUP BY spend_key ORDER BY spend_key",
        vec![text(tenant), int(from_ms), int(to_ms)],
    )?;
    let number = |v: Option<&SqlValue>| v.and_then(SqlValue::int).and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let rows = rows
        .iter()
        .filter_map(|row| {
            let key = row.first().and_then(SqlValue::text)?;
            let mut parts = key.splitn(4, '|').map(str::to_owned);
            Some(SpendRow {
                route: parts.next()?,
                feature: parts.next()?,
                provider: parts.next()?,
                model: parts.next()?,
                requests: number(row.get(1)),
                micro_usd: number(row.get(2)),
                tokens: number(row.get(3)),
            })
        })
        .collect();
    Ok(AuditAnswer::Spent { rows })
}

/// The spend report of `rows`: totals overall and by route, feature and `provider/model`.
pub fn spend_report(rows: &[SpendRow]) -> serde_json::Value {
    use std::collections::BTreeMap;
    #[derive(Default, Serialize)]
    struct Sum {
        requests: u64,
        micro_usd: u64,
        usd: f64,
        tokens: u64,
    }
    impl Sum {
        fn add(&mut self, r: &SpendRow) {
            self.requests += r.requests;
            self.micro_usd += r.micro_usd;
            self.tokens += r.tokens;
            self.usd = self.micro_usd as f64 / 1e6;
        }
    }
    let mut total = Sum::default();
    let (mut by_route, mut by_feature, mut by_model) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::<String, Sum>::new());
    for r in rows {
        total.add(r);
        by_route.entry(r.route.clone()).or_insert_with(Sum::default).add(r);
        by_feature.entry(r.feature.clone()).or_insert_with(Sum::default).add(r);
        by_model.entry(format!("{}/{}", r.provider, r.model)).or_default().add(r);
    }
    serde_json::json!({"total": total, "by_route": by_route, "by_feature": by_feature, "by_model": by_model, "rows": rows})
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn int(n: u64) -> SqlValue {
    SqlValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn opt(s: Option<&String>) -> SqlValue {
    s.map_or(SqlValue::Null, |s| text(s))
}

fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::StoreUnavailable, format!("audit log: {what}"))
}

/// `|a|b|`: a list a `LIKE`-free `instr` search can match whole items in.
fn tags<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("|");
    for i in items {
        out.push_str(&i.replace('|', "/"));
        out.push('|');
    }
    out
}

/// The hash of an entry whose predecessor's hash is `prev`.
pub fn chain_hash(prev: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b":");
    h.update(body.as_bytes());
    hex(&h.finalize())
}

fn head_of(db: &dyn Sql, tenant: &str) -> Result<Head, Error> {
    let last = db.run("SELECT seq, hash FROM edgegate_audit WHERE tenant = ? ORDER BY seq DESC LIMIT 1", vec![text(tenant)])?;
    if let Some(row) = last.first() {
        return row_head(row);
    }
    anchor_of(db, tenant)
}

fn anchor_of(db: &dyn Sql, tenant: &str) -> Result<Head, Error> {
    let anchor = db.run("SELECT seq, hash FROM edgegate_audit_anchor WHERE tenant = ?", vec![text(tenant)])?;
    anchor.first().map_or_else(|| Ok(Head::genesis()), |row| row_head(row))
}

fn row_head(row: &[SqlValue]) -> Result<Head, Error> {
    let seq = row
        .first()
        .and_then(SqlValue::int)
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| corrupt("a sequence number is not a number"))?;
    let hash = row.get(1).and_then(SqlValue::text).ok_or_else(|| corrupt("a hash is not text"))?;
    Ok(Head { seq, hash: hash.to_owned() })
}

fn append(db: &dyn Sql, tenant: &str, drafts: &[Draft]) -> Result<Head, Error> {
    let mut head = head_of(db, tenant)?;
    for draft in drafts {
        let seq = head.seq + 1;
        let body = serde_json::to_string(&Body { schema: AUDIT_SCHEMA, seq, tenant, draft })
            .map_err(|e| Error::new(ErrorKind::Internal, format!("audit entry: {e}")))?;
        let hash = chain_hash(&head.hash, &body);
        db.run(
            "INSERT INTO edgegate_audit (tenant, seq, at_ms, types, rules, request_id, policy_version, spend_key, cost, tokens, body, prev, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                text(tenant),
                int(seq),
                int(draft.at_ms),
                text(&tags(draft.types())),
                text(&tags(draft.rules.iter().map(String::as_str))),
                opt(draft.request_id.as_ref()),
                opt(draft.policy_version.as_ref()),
                draft.spend.as_ref().map_or(SqlValue::Null, |s| text(&s.key())),
                draft.spend.as_ref().map_or(SqlValue::Null, |s| int(s.micro_usd)),
                draft.spend.as_ref().map_or(SqlValue::Null, |s| int(s.tokens)),
                text(&body),
                text(&head.hash),
                text(&hash),
            ],
        )?;
        head = Head { seq, hash };
    }
    Ok(head)
}

/// Removes the oldest entries dated before `cutoff_ms` (a batch at a time), moving the anchor to
/// the last one removed.
fn prune(db: &dyn Sql, tenant: &str, cutoff_ms: u64) -> Result<(), Error> {
    let oldest = |limit: i64| {
        db.run(
            "SELECT seq, hash, at_ms FROM edgegate_audit WHERE tenant = ? ORDER BY seq LIMIT ?",
            vec![text(tenant), SqlValue::Int(limit)],
        )
    };
    let expired =
        |row: &Vec<SqlValue>| row.get(2).and_then(SqlValue::int).and_then(|a| u64::try_from(a).ok()).is_some_and(|at| at < cutoff_ms);
    // Every append reads one row; a batch only when the oldest entry is due.
    if !oldest(1)?.first().is_some_and(expired) {
        return Ok(());
    }
    let mut last = None;
    for row in oldest(PRUNE_BATCH)?.iter().take_while(|r| expired(r)) {
        last = Some(row_head(row)?);
    }
    if let Some(anchor) = last {
        db.run("DELETE FROM edgegate_audit WHERE tenant = ? AND seq <= ?", vec![text(tenant), int(anchor.seq)])?;
        db.run(
            "INSERT INTO edgegate_audit_anchor (tenant, seq, hash) VALUES (?, ?, ?) \
             ON CONFLICT(tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            vec![text(tenant), int(anchor.seq), text(&anchor.hash)],
        )?;
    }
    Ok(())
}

fn search(db: &dyn Sql, tenant: &str, q: &Query) -> Result<AuditAnswer, Error> {
    let mut sql = String::from("SELECT seq, hash, body, prev FROM edgegate_audit WHERE tenant = ?");
    let mut params = vec![text(tenant)];
    let mut and = |clause: &str, value: SqlValue| {
        sql.push_str(" AND ");
        sql.push_str(clause);
        params.push(value);
    };
    if let Some(from) = q.from_ms {
        and("at_ms >= ?", int(from));
    }
    if let Some(to) = q.to_ms {
        and("at_ms < ?", int(to));
    }
    if let Some(kind) = &q.kind {
        and("instr(types, ?) > 0", text(&tags([kind.as_str()])));
    }
    if let Some(rule) = &q.rule {
        and("instr(rules, ?) > 0", text(&tags([rule.as_str()])));
    }
    if let Some(id) = &q.request_id {
        and("request_id = ?", text(id));
    }
    if let Some(v) = &q.policy_version {
        and("policy_version = ?", text(v));
    }
    if let Some(c) = q.cursor {
        and("seq < ?", int(c));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    params.push(SqlValue::Int(i64::from(limit) + 1));
    let rows = db.run(&sql, params)?;
    let more = rows.len() > limit as usize;
    let mut entries = Vec::with_capacity(rows.len().min(limit as usize));
    let mut last_seq = None;
    for row in rows.iter().take(limit as usize) {
        let head = row_head(row)?;
        let body = row.get(2).and_then(SqlValue::text).ok_or_else(|| corrupt("an entry's body is not text"))?;
        let mut entry: serde_json::Value = serde_json::from_str(body).map_err(|_| corrupt("an entry's body is not JSON"))?;
        entry["prev"] = serde_json::Value::from(row.get(3).and_then(SqlValue::text).unwrap_or_default());
        entry["hash"] = serde_json::Value::from(head.hash);
        entries.push(entry);
        last_seq = Some(head.seq);
    }
    Ok(AuditAnswer::Page { entries, next_cursor: last_seq.filter(|_| more) })
}

/// What an entry's body says of itself, to compare with the columns searches use.
#[derive(Deserialize)]
struct Stated {
    seq: u64,
    tenant: String,
    #[serde(flatten)]
    draft: Draft,
}

fn verify(db: &dyn Sql, tenant: &str) -> Result<Report, Error> {
    let anchor = anchor_of(db, tenant)?;
    let mut head = anchor.clone();
    let mut checked = 0;
    loop {
        let rows = db.run(
            "SELECT seq, at_ms, types, rules, request_id, policy_version, body, prev, hash, spend_key, cost, tokens \
             FROM edgegate_audit WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?",
            vec![text(tenant), int(head.seq), SqlValue::Int(VERIFY_BATCH)],
        )?;
        for row in &rows {
            let seq = row.first().and_then(SqlValue::int).and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
            if let Err(reason) = check_row(tenant, &head, row) {
                return Ok(Report { valid: false, checked, anchor, head, broken: Some(Break { seq, reason }) });
            }
            head = Head { seq, hash: row.get(8).and_then(SqlValue::text).unwrap_or_default().to_owned() };
            checked += 1;
        }
        if rows.len() < VERIFY_BATCH as usize {
            return Ok(Report { valid: true, checked, anchor, head, broken: None });
        }
    }
}

/// Whether one row follows `head`: the next sequence number, the previous hash, its own hash,
/// and columns that say what its body says.
fn check_row(tenant: &str, head: &Head, row: &[SqlValue]) -> Result<(), String> {
    let col = |i: usize| row.get(i).and_then(SqlValue::text);
    let seq = row.first().and_then(SqlValue::int).and_then(|s| u64::try_from(s).ok()).ok_or("sequence number is not a number")?;
    if seq != head.seq + 1 {
        return Err(format!("entries {} to {} are missing", head.seq + 1, seq - 1));
    }
    let (body, prev, hash) = (col(6).ok_or("no body")?, col(7).ok_or("no previous hash")?, col(8).ok_or("no hash")?);
    if prev != head.hash {
        return Err("its previous hash is not the hash of the entry before it".into());
    }
    if chain_hash(prev, body) != hash {
        return Err("its hash does not match its content".into());
    }
    let stated: Stated = serde_json::from_str(body).map_err(|e| format!("its body is not an entry: {e}"))?;
    let d = &stated.draft;
    let columns_hold = stated.seq == seq
        && stated.tenant == tenant
        && row.get(1).and_then(SqlValue::int) == i64::try_from(d.at_ms).ok()
        && col(2) == Some(tags(d.types()).as_str())
        && col(3) == Some(tags(d.rules.iter().map(String::as_str)).as_str())
        && col(4) == d.request_id.as_deref()
        && col(5) == d.policy_version.as_deref()
        && col(9) == d.spend.as_ref().map(Spend::key).as_deref()
        && row.get(10).and_then(SqlValue::int) == d.spend.as_ref().and_then(|s| i64::try_from(s.micro_usd).ok())
        && row.get(11).and_then(SqlValue::int) == d.spend.as_ref().and_then(|s| i64::try_from(s.tokens).ok());
    if !columns_hold {
        return Err("its searchable columns do not match its content".into());
    }
    Ok(())
}

/// The entry of one request: every decision its record holds. `None` for requests no tenant was
/// established for (unknown keys are not any tenant's to log).
pub fn request_entry(record: &RequestRecord) -> Option<(String, Draft)> {
    use serde_json::json;
    let tenant = record.tenant.clone()?;
    let mut decisions = Vec::new();
    let mut rules: Vec<String> = Vec::new();
    let refused = matches!(record.error, Some("rate_limit_exceeded" | "budget_exceeded"));
    let denied = matches!(record.error, Some("permission_denied" | "invalid_api_key"));
    let mut auth = json!({"type": "auth", "result": if denied { "denied" } else { "allowed" }, "key_id": record.key_id});
    if denied {
        auth["reason"] = json!(record.error);
    }
    decisions.push(auth);
    // Admission runs after the firewall and the route decision; it ran if it refused, or if
    // anything was sent or answered after it.
    // A cache hit is answered before admission: it holds and spends nothing.
    let hit = record.cache.as_ref().is_some_and(|c| c.status == "hit");
    if !hit && (refused || !record.attempts.is_empty() || record.status == 200) {
        let mut admission = json!({"type": "admission", "result": if refused { "refused" } else { "admitted" }});
        if refused {
            admission["reason"] = json!(record.error);
        }
        if let Some(o) = &record.overflow {
            admission["overflow"] = json!(o);
        }
        if let Some(c) = &record.containment {
            admission["contained"] = json!(c.scopes);
        }
        decisions.push(admission);
    }
    if let Some(n) = record.truncated_messages {
        decisions.push(json!({"type": "truncation", "result": "dropped_oldest_turns", "messages": n}));
    }
    if let Some(v) = &record.firewall {
        let ids: Vec<&str> = v.findings.iter().map(|f| f.rule).collect();
        rules.extend(ids.iter().map(|r| (*r).to_owned()));
        decisions.push(json!({
            "type": "firewall",
            "result": v.action.unwrap_or("passed"),
            "score": v.score,
            "rules": ids,
            "prompt_sha256": v.prompt_sha256,
        }));
    }
    if let Some(d) = &record.routing {
        if !d.constraints.is_empty() || !d.removed.is_empty() {
            decisions.push(json!({
                "type": "residency",
                "result": if d.removed.is_empty() { "allowed" } else { "filtered" },
                "origin": d.origin,
                "constraints": d.constraints,
                "removed": d.removed,
            }));
        }
        let attempts: Vec<serde_json::Value> = record
            .attempts
            .iter()
            .map(|a| json!({"provider": a.provider, "model": a.model, "status": a.status, "error": a.error}))
            .collect();
        let result = match (record.served(), record.failed_over()) {
            (Some(_), true) => "failed_over",
            (Some(_), false) => "served",
            (None, _) if record.attempts.is_empty() => "not_sent",
            (None, _) => "failed",
        };
        decisions.push(json!({
            "type": "route",
            "result": result,
            "alias": record.model,
            "strategy": d.strategy,
            "served": record.served().map(|a| json!({"provider": a.provider, "model": a.model})),
            "attempts": attempts,
            "unhealthy": d.unhealthy,
            "degraded": record.degraded,
        }));
    }
    if let Some(c) = &record.cache {
        decisions.push(json!({"type": "cache", "result": c.status, "saved_micro_usd": c.saved_micro_usd}));
    }
    if let Some(g) = &record.guard {
        rules.extend(g.rules.iter().map(|r| (*r).to_owned()));
        decisions.push(json!({"type": "guard", "result": g.action, "rules": g.rules}));
    }
    if let Some(c) = record.containment.as_ref().filter(|c| !c.engaged.is_empty()) {
        decisions.push(json!({"type": "containment", "result": "engaged", "engaged": c.engaged}));
    }
    rules.sort();
    rules.dedup();
    let blocked = record.firewall.as_ref().is_some_and(|v| v.action == Some("blocked"));
    let outcome = match record.status {
        _ if blocked => "blocked",
        _ if refused => "refused",
        _ if denied => "denied",
        200..=299 if record.error.is_none() => "served",
        _ => "failed",
    };
    let spend = record.served().filter(|_| outcome == "served").map(|a| Spend {
        route: record.model.clone().unwrap_or_default(),
        feature: record.feature.clone(),
        provider: a.provider.clone(),
        model: a.model.clone(),
        micro_usd: record.cost_micro_usd.unwrap_or(0),
        tokens: record.usage.map_or(0, |u| u.prompt_tokens() + u.completion_tokens()),
    });
    let draft = Draft {
        at_ms: record.start_ms,
        kind: "request".into(),
        outcome: outcome.into(),
        request_id: Some(record.request_id.clone()),
        policy_version: record.policy_version.clone(),
        actor: record.key_id.clone(),
        decisions,
        rules,
        detail: json!({"route": record.route, "status": record.status, "error": record.error}),
        spend,
    };
    Some((tenant, draft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_parse_and_refuse_what_they_do_not_know() {
        let q = Query::from_query_string("from=5&to=9&type=firewall&rule=pii.email&request_id=req_1&policy_version=v%201&limit=3&cursor=7");
        assert_eq!(
            q.ok(),
            Some(Query {
                from_ms: Some(5),
                to_ms: Some(9),
                kind: Some("firewall".into()),
                rule: Some("pii.email".into()),
                request_id: Some("req_1".into()),
                policy_version: Some("v 1".into()),
                cursor: Some(7),
                limit: Some(3),
            })
        );
        assert_eq!(Query::from_query_string("").ok(), Some(Query::default()));
        for bad in ["tenant=x", "limit=0", "limit=501", "from=-1", "rule=%zz"] {
            assert!(Query::from_query_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_match_whole_items_only() {
        let t = tags(["injection.a", "pii.email"]);
        assert_eq!(t, "|injection.a|pii.email|");
        assert!(t.contains(&tags(["pii.email"])));
        assert!(!t.contains(&tags(["email"])));
    }
}
