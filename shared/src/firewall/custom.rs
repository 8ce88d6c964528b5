//! Custom rule sets from policy: named, versioned lists of regular expressions an operator adds to
//! the built-in rules, compiled once per policy snapshot.
//!
//! Regular expressions run on the `regex` crate's engines, whose searches take time linear in the
//! text for a given pattern (finite automata, no backtracking); patterns are capped in length and
//! compiled size. All rules of a set for one side are one automaton — a lazy DFA that reports
//! every pattern that matches (a `RegexSet` where a pattern needs Unicode word boundaries) — so a
//! text is scanned once per view however many rules there are (a second time, for which rules,
//! only if one matched); a rule's span is looked for only when it matched. Matching ignores case.
//! On the prompt side a rule matches each text with invisible characters removed, NFKC and single
//! spaces; then the folded text (look-alikes and digits written for letters folded too) and every
//! decoded payload (see [`super::normalize`]). On the answer side it matches the answer as written.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use serde::Deserialize;

use super::normalize::Normalized;
use super::{Finding, Severity};

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN: usize = 512;
/// The most rules in one set.
pub const MAX_RULES: usize = 256;
/// The compiled size limit of one pattern, and of each side's set, in bytes.
const SIZE_LIMIT: usize = 1 << 20;

/// Where a rule looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Every text a model will read (default).
    #[default]
    Prompt,
    /// The model's answer.
    Answer,
    /// Both.
    Both,
}

/// A rule set as policy writes it, under `rule_sets.<name>`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRuleSet {
    /// The set's version; every finding of its rules carries `<name>@<version>`.
    pub version: String,
    /// The rules, at most 256.
    pub rules: Vec<RawRule>,
}

/// One rule as policy writes it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Stable id, unique in the set; findings name it. Lower-case letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// A regular expression (Rust `regex` syntax, at most 512 bytes), matched ignoring case:
    /// prompt-side on the normalised text (single spaces) and its folded views, answer-side on
    /// the answer as written.
    pub pattern: String,
    /// How bad a hit is (default `high`).
    #[serde(default)]
    pub severity: Option<RawSeverity>,
    /// Points a prompt-side hit adds to the injection score (default: the severity's, 1/2/3).
    pub weight: Option<u8>,
    /// Where the rule looks (default `prompt`).
    #[serde(default)]
    pub on: Side,
    /// The content class of an answer-side hit, which `output_classes` can act on (default: the
    /// set's name).
    pub class: Option<String>,
}

/// Severity as policy writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RawSeverity {
    /// Worth a flag.
    Low,
    /// Suspicious.
    Medium,
    /// An attack or a leak.
    High,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's id.
    pub id: &'static str,
    /// Its severity.
    pub severity: Severity,
    /// Points a prompt-side hit adds.
    pub weight: u8,
    /// Content class of an answer-side hit.
    pub class: &'static str,
    /// Where it looks.
    pub on: Side,
    pattern: Box<str>,
    insensitive: bool,
    /// Compiled when first needed (the gateway's own sets), or at load (policy's, to check them).
    regex: OnceLock<Option<regex::Regex>>,
}

impl Rule {
    fn build(pattern: &str, insensitive: bool) -> Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(pattern).case_insensitive(insensitive).size_limit(SIZE_LIMIT).build()
    }

    /// The first match in `text` (the set said there is one).
    fn find(&self, text: &str) -> Option<std::ops::Range<usize>> {
        let re = self.regex.get_or_init(|| Rule::build(&self.pattern, self.insensitive).ok()).as_ref()?;
        re.find(text).map(|m| m.range())
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        (self.id, self.severity, self.weight, self.class, self.on, &self.pattern)
            == (other.id, other.severity, other.weight, other.class, other.on, &other.pattern)
    }
}

impl Eq for Rule {}

/// The rules of one side as one automaton: set index `i` is rule `rules[i]`.
#[derive(Debug, Clone)]
struct SideSet {
    matcher: Matcher,
    rules: Vec<usize>,
}

/// What finds which of a side's patterns match somewhere in a text.
enum Matcher {
    /// A forward lazy DFA that reports every pattern matching (`MatchKind::All`), built from one
    /// NFA without capture states. A `RegexSet` also builds a reverse NFA, capture states and
    /// engines a set never uses: three times the work, which a fresh isolate pays before its
    /// first answer. With no quit bytes and no give-up count, its searches never fail.
    Lazy(Box<(DFA, Mutex<Option<Cache>>)>),
    /// Patterns a DFA cannot run (a Unicode word boundary, in a policy's rule).
    Set(regex::RegexSet),
}

impl Matcher {
    fn build(patterns: &[&str], insensitive: bool) -> Result<Matcher, String> {
        let lazy = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::All))
            .syntax(syntax::Config::new().case_insensitive(insensitive))
            .thompson(thompson::Config::new().which_captures(WhichCaptures::None).nfa_size_limit(Some(SIZE_LIMIT)))
            .build_many(patterns);
        match lazy {
            Ok(dfa) => Ok(Matcher::Lazy(Box::new((dfa, Mutex::new(None))))),
            Err(_) => regex::RegexSetBuilder::new(patterns)
                .case_insensitive(insensitive)
                .size_limit(SIZE_LIMIT)
                .build()
                .map(Matcher::Set)
                .map_err(|e| e.to_string()),
        }
    }

    /// The indexes of the patterns that match somewhere in `text`, in order.
    fn matches(&self, text: &str) -> Vec<usize> {
        match self {
            Matcher::Lazy(lazy) => {
                let (dfa, cache) = &**lazy;
                let mut found = PatternSet::new(dfa.pattern_len());
                // Never contended in a Worker (one thread); elsewhere a busy cache means a fresh one.
                let mut held = cache.try_lock();
                let mut spare = None;
                let cache = match held.as_deref_mut() {
                    Ok(slot) => slot.get_or_insert_with(|| dfa.create_cache()),
                    Err(_) => spare.insert(dfa.create_cache()),
                };
                // Most texts match no rule. One forward search, which stops at the first match,
                // says so through the library's unrolled loop; only a text that matches is
                // searched again for every pattern that does (an overlapping search, several
                // times slower per byte). A set that can match the empty string skips the first
                // search: it steps over empty matches inside a character by starting again, which
                // can lose a match that began before. Neither can fail (see the variant); a
                // failure would report no match, like no rule.
                let any = dfa.get_nfa().has_empty() || matches!(dfa.try_search_fwd(cache, &Input::new(text).earliest(true)), Ok(Some(_)));
                if any {
                    let _ = dfa.try_which_overlapping_matches(cache, &Input::new(text), &mut found);
                }
                found.iter().map(|p| p.as_usize()).collect()
            }
            Matcher::Set(set) => set.matches(text).iter().collect(),
        }
    }
}

impl Clone for Matcher {
    fn clone(&self) -> Matcher {
        match self {
            Matcher::Lazy(lazy) => Matcher::Lazy(Box::new((lazy.0.clone(), Mutex::new(None)))),
            Matcher::Set(set) => Matcher::Set(set.clone()),
        }
    }
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Lazy(lazy) => write!(f, "Lazy({} patterns)", lazy.0.pattern_len()),
            Matcher::Set(set) => write!(f, "Set({} patterns)", set.len()),
        }
    }
}

/// A compiled rule set.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// `<name>@<version>`.
    pub version: &'static str,
    /// The rules.
    pub rules: Vec<Rule>,
    prompt: Option<SideSet>,
    answer: Option<SideSet>,
}

impl PartialEq for RuleSet {
    fn eq(&self, other: &RuleSet) -> bool {
        (self.version, &self.rules) == (other.version, &other.rules)
    }
}

impl Eq for RuleSet {}

/// A hit of an answer-side rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerHit {
    /// The rule's id.
    pub rule: &'static str,
    /// Its content class.
    pub class: &'static str,
    /// Byte range in the answer text.
    pub span: std::ops::Range<usize>,
}

/// Strings that live as long as the process: rule ids and versions, which findings carry as
/// `&'static str`. Each distinct string is kept once, so republishing the same rule set costs
/// nothing; memory grows only with new distinct ids.
fn intern(s: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = seen.get(s) {
        return found;
    }
    let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
    seen.insert(kept);
    kept
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

impl RawRuleSet {
    /// Compiles the set `name`, pushing every error with its path under `at`.
    pub fn compile(&self, name: &str, at: &str, errors: &mut Vec<(String, String)>) -> Option<RuleSet> {
        self.compile_as(name, at, errors, false)
    }

    /// Compiles one of the gateway's own sets, whose ids may use the built-in families and whose
    /// patterns are written for folded (lower-case) text, so they match case-sensitively.
    pub(crate) fn compile_builtin(&self, name: &str) -> Option<RuleSet> {
        self.compile_as(name, name, &mut Vec::new(), true)
    }

    fn compile_as(&self, name: &str, at: &str, errors: &mut Vec<(String, String)>, builtin: bool) -> Option<RuleSet> {
        let before = errors.len();
        if !valid_id(name) {
            errors.push((at.to_owned(), "a rule set name is lower-case letters, digits, '.', '_' or '-' (at most 64)".into()));
        }
        if self.version.is_empty() || self.version.len() > 64 {
            errors.push((format!("{at}.version"), "a version is 1 to 64 characters".into()));
        }
        if self.rules.len() > MAX_RULES {
            errors.push((format!("{at}.rules"), format!("at most {MAX_RULES} rules")));
        }
        let mut ids = BTreeSet::new();
        let mut rules = Vec::new();
        for (i, raw) in self.rules.iter().enumerate() {
            let path = format!("{at}.rules[{i}]");
            if !valid_id(&raw.id) {
                errors.push((format!("{path}.id"), "a rule id is lower-case letters, digits, '.', '_' or '-' (at most 64)".into()));
            }
            if !builtin && ["injection.", "pii.", "secret.", "guard."].iter().any(|p| raw.id.starts_with(p)) {
                errors.push((format!("{path}.id"), "ids starting injection., pii., secret. or guard. are the built-in rules'".into()));
            }
            if !ids.insert(raw.id.as_str()) {
                errors.push((format!("{path}.id"), format!("duplicate rule id {:?}", raw.id)));
            }
            if raw.pattern.len() > MAX_PATTERN {
                errors.push((format!("{path}.pattern"), format!("a pattern is at most {MAX_PATTERN} bytes")));
                continue;
            }
            if raw.weight.is_some_and(|w| !(1..=10).contains(&w)) {
                errors.push((format!("{path}.weight"), "a weight is 1 to 10".into()));
            }
            if raw.class.as_deref().is_some_and(|c| !valid_id(c)) {
                errors.push((format!("{path}.class"), "a class is lower-case letters, digits, '.', '_' or '-'".into()));
            }
            // The gateway's own patterns are known good (tested) and compiled when first needed.
            let regex = if builtin {
                OnceLock::new()
            } else {
                match Rule::build(&raw.pattern, true) {
                    Ok(re) if re.is_match("") => {
                        errors.push((format!("{path}.pattern"), "the pattern matches the empty text, so it would match everything".into()));
                        continue;
                    }
                    Ok(re) => OnceLock::from(Some(re)),
                    Err(e) => {
                        errors.push((format!("{path}.pattern"), e.to_string()));
                        continue;
                    }
                }
            };
            let severity = match raw.severity.unwrap_or(RawSeverity::High) {
                RawSeverity::Low => Severity::Low,
                RawSeverity::Medium => Severity::Medium,
                RawSeverity::High => Severity::High,
            };
            rules.push(Rule {
                id: intern(&raw.id),
                severity,
                weight: raw.weight.unwrap_or(severity.points()),
                class: intern(raw.class.as_deref().unwrap_or(name)),
                on: raw.on,
                pattern: raw.pattern.as_str().into(),
                insensitive: !builtin,
                regex,
            });
        }
        let side = |wanted: fn(Side) -> bool, errors: &mut Vec<(String, String)>| -> Option<SideSet> {
            let picked: Vec<usize> = (0..rules.len()).filter(|&i| rules.get(i).is_some_and(|r| wanted(r.on))).collect();
            if picked.is_empty() {
                return None;
            }
            let patterns: Vec<&str> = picked.iter().filter_map(|&i| rules.get(i)).map(|r| &*r.pattern).collect();
            match Matcher::build(&patterns, !builtin) {
                Ok(matcher) => Some(SideSet { matcher, rules: picked }),
                Err(e) => {
                    errors.push((format!("{at}.rules"), format!("the rules together are too large: {e}")));
                    None
                }
            }
        };
        let prompt = side(|on| on != Side::Answer, errors);
        let answer = side(|on| on != Side::Prompt, errors);
        (errors.len() == before).then(|| RuleSet { version: intern(&format!("{name}@{}", self.version)), rules, prompt, answer })
    }
}

impl RuleSet {
    /// Compiles every rule's own expression now rather than on its first hit (for a snapshot
    /// taken before any request, see [`super::prepare_for_snapshot`]).
    pub fn compile_all(&self) {
        for rule in &self.rules {
            rule.regex.get_or_init(|| Rule::build(&rule.pattern, rule.insensitive).ok());
        }
    }

    /// Prompt-side hits in one text: `plain` if given (see [`super::normalize::plain`]), then the
    /// folded text and decoded payloads of `normalized`; at most one finding per rule.
    pub fn inspect(&self, index: usize, plain: Option<&str>, normalized: &Normalized, out: &mut Vec<Finding>) {
        let Some(side) = &self.prompt else { return };
        let mut found = vec![false; side.rules.len()];
        for (view, text) in plain.map(|p| (None, p)).into_iter().chain(normalized.views()) {
            for i in side.matcher.matches(text) {
                let (Some(seen), Some(rule)) = (found.get_mut(i), side.rules.get(i).and_then(|&r| self.rules.get(r))) else { continue };
                if *seen {
                    continue;
                }
                *seen = true;
                let span = rule.find(text).unwrap_or(0..0);
                out.push(Finding {
                    rule: rule.id,
                    rule_set: self.version,
                    severity: rule.severity,
                    points: rule.weight,
                    message: index,
                    view,
                    span,
                });
            }
        }
    }

    /// Whether any rule looks at prompts.
    pub fn has_prompt_rules(&self) -> bool {
        self.prompt.is_some()
    }

    /// Whether any rule looks at answers.
    pub fn has_answer_rules(&self) -> bool {
        self.answer.is_some()
    }

    /// Answer-side hits in `text`: the first of each rule.
    pub fn answer_hits(&self, text: &str, out: &mut Vec<AnswerHit>) {
        let Some(side) = &self.answer else { return };
        for i in side.matcher.matches(text) {
            let Some(rule) = side.rules.get(i).and_then(|&r| self.rules.get(r)) else { continue };
            if let Some(span) = rule.find(text) {
                out.push(AnswerHit { rule: rule.id, class: rule.class, span });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rules: serde_json::Value) -> Result<RuleSet, Vec<(String, String)>> {
        let raw: RawRuleSet =
            serde_json::from_value(serde_json::json!({"version": "3", "rules": rules})).unwrap_or_else(|e| unreachable!("{e}"));
        let mut errors = Vec::new();
        raw.compile("acme", "rule_sets.acme", &mut errors).ok_or(errors)
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errors = set(serde_json::json!([
            {"id": "ok", "pattern": "falcon"},
            {"id": "Bad Id", "pattern": "("},
            {"id": "ok", "pattern": "a*"},
            {"id": "injection.x", "pattern": "x", "weight": 11},
        ]))
        .err()
        .unwrap_or_default();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rule_sets.acme.rules[1].id",
                "rule_sets.acme.rules[1].pattern",
                "rule_sets.acme.rules[2].id",
                "rule_sets.acme.rules[2].pattern",
                "rule_sets.acme.rules[3].id",
                "rule_sets.acme.rules[3].weight"
            ]
        );
    }

    #[test]
    fn prompt_rules_match_folded_text_and_answer_rules_ignore_case() {
        let rules = set(serde_json::json!([
            {"id": "codename", "pattern": "project fa[l1]con", "on": "both", "class": "secrets", "weight": 5},
            {"id": "answer-only", "pattern": "how to make", "on": "answer"},
        ]))
        .unwrap_or_else(|e| unreachable!("{e:?}"));
        assert_eq!(rules.version, "acme@3");
        let mut found = Vec::new();
        let text = "Tell me about PROJECT   F\u{200b}ALCON";
        rules.inspect(0, Some(&super::super::normalize::plain(text)), &super::super::normalize::normalize(text), &mut found);
        assert_eq!(found.iter().map(|f| (f.rule, f.points)).collect::<Vec<_>>(), [("codename", 5)]);
        let mut hits = Vec::new();
        rules.answer_hits("Project Falcon is… here is How To Make it", &mut hits);
        assert_eq!(hits.iter().map(|h| (h.rule, h.class)).collect::<Vec<_>>(), [("codename", "secrets"), ("answer-only", "acme")]);
        assert_eq!(hits[0].span, 0..14);
    }

    #[test]
    fn the_lazy_dfa_reports_what_a_regex_set_reports() {
        let patterns =
            [r"(?-u:\b)(no|without) (rules|limits)(?-u:\b)", r"(^|[.>]\s*)(assistant|ai)\s*[,:]", r"a[^.]{0,20}b", r"caf\x{e9}", "zzz"];
        let texts = [
            "",
            "assistant: hi",
            "an AI with no rules. ai, go",
            "a long way, then b",
            "a. b",
            "café au lait",
            "norules without limits",
            "ε assistant: ünïcode",
        ];
        for insensitive in [false, true] {
            let lazy = Matcher::build(&patterns, insensitive).unwrap_or_else(|e| unreachable!("{e}"));
            assert!(matches!(lazy, Matcher::Lazy(_)));
            let set = regex::RegexSetBuilder::new(patterns).case_insensitive(insensitive).build().unwrap_or_else(|e| unreachable!("{e}"));
            for text in texts {
                assert_eq!(lazy.matches(text), set.matches(text).iter().collect::<Vec<_>>(), "{text:?}, insensitive {insensitive}");
            }
            // A clone has its own cache and the same answers.
            assert_eq!(lazy.clone().matches("an AI with no rules"), [0]);
        }
        // An empty match inside a character (`\B` between the bytes of `☃`) is stepped over
        // without losing the match around it.
        let lazy = Matcher::build(&[r"(?-u:\B)", "a☃b"], false).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(matches!(lazy, Matcher::Lazy(_)));
        assert_eq!(lazy.matches("a☃b"), [1]);
    }

    #[test]
    fn a_unicode_word_boundary_falls_back_to_a_regex_set() {
        let rules =
            set(serde_json::json!([{"id": "word", "pattern": r"\bcafé\b", "on": "both"}])).unwrap_or_else(|e| unreachable!("{e:?}"));
        let side = rules.answer.as_ref().map(|s| &s.matcher);
        assert!(matches!(side, Some(Matcher::Set(_))), "{side:?}");
        let mut hits = Vec::new();
        rules.answer_hits("un café, s'il vous plaît", &mut hits);
        rules.answer_hits("cafés", &mut hits);
        assert_eq!(hits.iter().map(|h| (h.span.start, h.span.end)).collect::<Vec<_>>(), [(3, 8)]);
    }

    #[test]
    fn the_same_id_is_kept_once() {
        assert!(std::ptr::eq(intern("acme.same"), intern(&String::from("acme.same"))));
    }
}
