//! Guarding a model's answer as it streams: a pure step function that takes each piece of text and
//! returns what may be sent on, holding back at most a small window so that what is split across
//! pieces is still found whole.
//!
//! Three checks, each optional:
//! - personal data and secrets (the prompt side's detectors), flagged or redacted;
//! - answer-side rules of custom rule sets (policy-denied content classes), flagged or blocked;
//! - leaks of the request's system prompt: [`LEAK_WORDS`] words in a row of it, flagged or blocked.
//!
//! The guard keeps the text not yet sent. After each piece it scans that text; everything before
//! the last [`WINDOW`] bytes is final unless a finding reaches into the window, in which case it is
//! held back from the finding's start. Findings in the final part are replaced by their
//! placeholders. A blocking hit ends the answer just before it: what was held is dropped and
//! nothing more is sent (the caller marks the choice `content_filter`). The delay added to a
//! stream is at most [`WINDOW`] bytes of text (or one finding).

use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;

use super::Action;
use super::custom::{AnswerHit, RuleSet};
use super::pii::{self, Pii};

/// Bytes of text held back at most (beyond a finding that straddles the boundary): longer than
/// any finding the scanners accept except PEM private keys, which are held whole. Answer rules
/// see at least this much text around every position; a match longer than the window may be
/// partly sent before it is found.
pub const WINDOW: usize = 96;

/// The most an unfinished private key block is held before it is let through.
pub const MAX_HELD: usize = 16 << 10;

/// Words of the system prompt in a row that count as a leak.
pub const LEAK_WORDS: usize = 8;

/// The rule id of a system-prompt leak.
pub const LEAK_RULE: &str = "guard.system_prompt_leak";

/// The system prompt's runs of [`LEAK_WORDS`] words, as hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// Ordered, not hashed: the runs are the request's text (see `providers::gemini`).
    shingles: BTreeSet<u64>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

fn shingle<'a>(words: impl Iterator<Item = &'a u64>) -> u64 {
    words.fold(FNV_OFFSET, |h, w| fnv(h, &w.to_le_bytes()))
}

/// Hash of one word: its letters and digits, lower-cased.
fn word_hash(h: u64, c: char) -> u64 {
    c.to_lowercase().fold(h, |h, l| fnv(h, l.encode_utf8(&mut [0; 4]).as_bytes()))
}

impl Leak {
    /// The runs of the system prompt `text`; `None` if it is shorter than [`LEAK_WORDS`] words.
    pub fn new(text: &str) -> Option<Leak> {
        let words: Vec<u64> =
            text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.chars().fold(FNV_OFFSET, word_hash)).collect();
        let shingles: BTreeSet<u64> = words.windows(LEAK_WORDS).map(|w| shingle(w.iter())).collect();
        (!shingles.is_empty()).then_some(Leak { shingles })
    }
}

/// What the guard looks for in an answer, and what it does with each.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// Personal-data kinds looked for.
    pub pii: Vec<Pii>,
    /// Whether personal data is redacted (else only recorded).
    pub redact: bool,
    /// Rule sets with answer-side rules.
    pub rules: Vec<Rc<RuleSet>>,
    /// What an answer-rule hit of a content class does (`Off`: skipped), by class.
    pub class_action: Vec<(&'static str, Action)>,
    /// What an answer-rule hit of a class not in `class_action` does.
    pub rule_action: Action,
    /// The system prompt to look for, and what a leak does.
    pub leak: Option<(Rc<Leak>, Action)>,
}

impl Checks {
    fn action(&self, hit: &AnswerHit) -> Action {
        self.class_action.iter().find(|(c, _)| *c == hit.class).map_or(self.rule_action, |(_, a)| *a)
    }

    /// Whether there is anything to look for.
    pub fn is_empty(&self) -> bool {
        self.pii.is_empty()
            && (self.rules.is_empty() || self.rule_action == Action::Off && self.class_action.iter().all(|(_, a)| *a == Action::Off))
            && self.leak.is_none()
    }
}

/// Guards one text (one choice of an answer) across piece boundaries.
#[derive(Debug, Clone)]
pub struct StreamGuard {
    pending: String,
    checks: Rc<Checks>,
    /// Rule ids found so far (personal data, answer rules, leaks), in order, once each.
    pub found: Vec<&'static str>,
    /// Whether a blocking hit ended the text.
    pub blocked: bool,
    /// Whether personal data was redacted.
    pub redacted: bool,
    /// Bytes released so far (offsets below are absolute: released + position in `pending`).
    released: usize,
    /// Where in `pending` the word scan goes on.
    scan: usize,
    /// The word being read: its absolute start and hash so far.
    word: Option<(usize, u64)>,
    /// The last words read: absolute start and hash.
    recent: VecDeque<(usize, u64)>,
    /// Absolute start of a leak found and not yet released.
    leak_at: Option<usize>,
}

impl StreamGuard {
    /// A guard running `checks`.
    pub fn new(checks: Rc<Checks>) -> Self {
        StreamGuard {
            pending: String::new(),
            checks,
            found: Vec::new(),
            blocked: false,
            redacted: false,
            released: 0,
            scan: 0,
            word: None,
            recent: VecDeque::new(),
            leak_at: None,
        }
    }

    fn note(&mut self, rule: &'static str) {
        if !self.found.contains(&rule) {
            self.found.push(rule);
        }
    }

    /// Takes the next piece of text; returns the text that may be sent now (possibly empty).
    pub fn push(&mut self, piece: &str) -> String {
        if self.blocked {
            return String::new();
        }
        self.pending.push_str(piece);
        self.read_words(false);
        let findings = self.findings();
        // A blocking hit ends the text where it starts; otherwise all but the window may go.
        let block = self.block_at();
        let mut cut = block.unwrap_or(self.pending.len().saturating_sub(WINDOW));
        // An unfinished private key block is held until it ends (up to MAX_HELD bytes).
        if let Some(open) = self.pending.find("-----BEGIN ") {
            let rest = self.pending.get(open + 11..).unwrap_or("");
            let private = rest.find("-----").is_none_or(|e| rest.get(..e).is_some_and(|label| label.ends_with("PRIVATE KEY")));
            if private && !rest.contains("-----END ") && self.pending.len() - open <= MAX_HELD {
                cut = cut.min(open);
            }
        }
        self.cut_at(cut, &findings, block.is_some())
    }

    /// Ends the text: returns everything still held, redacted (or, after a blocking hit, what
    /// comes before it).
    pub fn finish(&mut self) -> String {
        if self.blocked {
            return String::new();
        }
        self.read_words(true);
        let findings = self.findings();
        let block = self.block_at();
        self.cut_at(block.unwrap_or(self.pending.len()), &findings, block.is_some())
    }

    /// Releases `pending` up to `cut` — moved back to the start of a finding that straddles it and
    /// to a character boundary — and, after a blocking hit, stops.
    fn cut_at(&mut self, mut cut: usize, findings: &[pii::Finding], block: bool) -> String {
        for f in findings {
            if f.span.start < cut && f.span.end > cut {
                cut = f.span.start;
            }
        }
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let out = self.release(cut, findings);
        if block {
            self.stop();
        }
        out
    }

    fn stop(&mut self) {
        self.blocked = true;
        self.pending.clear();
        self.recent.clear();
        self.word = None;
    }

    /// Where in `pending` the first blocking hit starts: an answer rule or a leak. Hits that
    /// are only flagged are recorded.
    fn block_at(&mut self) -> Option<usize> {
        let mut at: Option<usize> = None;
        if !self.checks.rules.is_empty() {
            let mut hits = Vec::new();
            for set in &self.checks.rules {
                set.answer_hits(&self.pending, &mut hits);
            }
            for hit in hits {
                match self.checks.action(&hit) {
                    Action::Off => {}
                    Action::Block => {
                        self.note(hit.rule);
                        at = Some(at.map_or(hit.span.start, |a| a.min(hit.span.start)));
                    }
                    _ => self.note(hit.rule),
                }
            }
        }
        if let Some(start) = self.leak_at.take() {
            self.note(LEAK_RULE);
            if self.checks.leak.as_ref().is_some_and(|(_, a)| *a == Action::Block) {
                let rel = start.saturating_sub(self.released);
                at = Some(at.map_or(rel, |a| a.min(rel)));
            }
        }
        at
    }

    /// Reads the words of `pending` not read yet (the last one only if `all`), looking for runs
    /// of the system prompt.
    fn read_words(&mut self, all: bool) {
        let Some((leak, _)) = self.checks.leak.clone() else { return };
        let text = self.pending.get(self.scan..).unwrap_or("");
        let base = self.released + self.scan;
        let mut ended = Vec::new();
        for (i, c) in text.char_indices() {
            if c.is_alphanumeric() {
                let (start, h) = self.word.take().unwrap_or((base + i, FNV_OFFSET));
                self.word = Some((start, word_hash(h, c)));
            } else if let Some(w) = self.word.take() {
                ended.push(w);
            }
        }
        self.scan = self.pending.len();
        if all && let Some(w) = self.word.take() {
            ended.push(w);
        }
        for w in ended {
            self.recent.push_back(w);
            if self.recent.len() > LEAK_WORDS {
                self.recent.pop_front();
            }
            if self.recent.len() == LEAK_WORDS
                && self.leak_at.is_none()
                && leak.shingles.contains(&shingle(self.recent.iter().map(|(_, h)| h)))
            {
                self.leak_at = self.recent.front().map(|(s, _)| *s);
            }
        }
    }

    fn findings(&self) -> Vec<pii::Finding> {
        if self.checks.pii.is_empty() {
            return Vec::new();
        }
        pii::scan(&self.pending).into_iter().filter(|f| self.checks.pii.contains(&f.kind)).collect()
    }

    /// Sends `pending[..cut]` with the findings inside it redacted, and keeps the rest.
    fn release(&mut self, cut: usize, findings: &[pii::Finding]) -> String {
        let inside: Vec<pii::Finding> = findings.iter().filter(|f| f.span.end <= cut).cloned().collect();
        for f in &inside {
            self.note(f.kind.rule_id());
        }
        let head = self.pending.get(..cut).unwrap_or("");
        let out = if self.checks.redact && !inside.is_empty() {
            self.redacted = true;
            pii::redact(head, &inside)
        } else {
            head.to_owned()
        };
        self.pending = self.pending.get(cut..).unwrap_or("").to_owned();
        self.released += cut;
        self.scan = self.scan.saturating_sub(cut);
        out
    }
}

/// The guard of one answer, over the OpenAI chunk and completion JSON the gateway relays: one
/// [`StreamGuard`] per choice.
#[derive(Debug, Clone)]
pub struct OutputGuard {
    checks: Rc<Checks>,
    choices: std::collections::BTreeMap<u64, StreamGuard>,
    /// The last chunk seen, as the template of a closing chunk.
    template: Option<serde_json::Value>,
}

impl OutputGuard {
    /// A guard running `checks` on every choice.
    pub fn new(checks: Checks) -> Self {
        OutputGuard { checks: Rc::new(checks), choices: std::collections::BTreeMap::new(), template: None }
    }

    /// Whether personal data was redacted in any choice.
    pub fn redacted(&self) -> bool {
        self.choices.values().any(|g| g.redacted)
    }

    /// Whether a blocking hit ended any choice.
    pub fn blocked(&self) -> bool {
        self.choices.values().any(|g| g.blocked)
    }

    /// Every rule id found so far, once each, sorted.
    pub fn found(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = self.choices.values().flat_map(|g| g.found.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn choice(&mut self, index: u64) -> &mut StreamGuard {
        let checks = &self.checks;
        self.choices.entry(index).or_insert_with(|| StreamGuard::new(Rc::clone(checks)))
    }

    /// A whole completion (`chat.completion` JSON): each choice's content checked, redacted if
    /// asked, and cut before a blocking hit (its finish reason then `content_filter`). Returns
    /// the new JSON if anything changed.
    pub fn completion(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut changed = false;
        for (i, choice) in v["choices"].as_array_mut()?.iter_mut().enumerate() {
            let Some(content) = choice["message"]["content"].as_str().map(str::to_owned) else { continue };
            let guard = self.choice(i as u64);
            let mut out = guard.push(&content);
            out.push_str(&guard.finish());
            if guard.blocked {
                choice["finish_reason"] = "content_filter".into();
            }
            if out != content || guard.blocked {
                choice["message"]["content"] = serde_json::Value::String(out);
                changed = true;
            }
        }
        changed.then(|| v.to_string().into_bytes())
    }

    /// One stream chunk (`chat.completion.chunk` JSON): its content goes through its choice's
    /// guard; a chunk that finishes a choice also carries what the guard still held. A choice a
    /// blocking hit ends gets finish reason `content_filter` and no later content. Returns the
    /// chunk to send (unchanged if nothing changed), or `None` when nothing is left of it.
    pub fn chunk(&mut self, json: &str) -> Option<String> {
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(json) else { return Some(json.to_owned()) };
        let mut changed = false;
        let mut dropped_all = false;
        if let Some(choices) = v["choices"].as_array_mut() {
            let had = choices.len();
            let mut kept = Vec::with_capacity(had);
            for mut choice in std::mem::take(choices) {
                let index = choice["index"].as_u64().unwrap_or(0);
                let guard = self.choice(index);
                if guard.blocked {
                    changed = true;
                    continue;
                }
                let text = choice["delta"]["content"].as_str().map(str::to_owned);
                let finished = !choice["finish_reason"].is_null();
                let mut out = text.as_deref().map(|t| guard.push(t)).unwrap_or_default();
                if finished || guard.blocked {
                    out.push_str(&guard.finish());
                }
                if guard.blocked {
                    choice["finish_reason"] = "content_filter".into();
                    if let Some(delta) = choice["delta"].as_object_mut() {
                        delta.remove("tool_calls");
                    }
                    changed = true;
                }
                if text.as_deref() != Some(out.as_str()) && (text.is_some() || !out.is_empty()) {
                    choice["delta"]["content"] = serde_json::Value::String(out);
                    changed = true;
                }
                kept.push(choice);
            }
            dropped_all = had > 0 && kept.is_empty();
            *choices = kept;
        }
        if dropped_all && v.get("usage").is_none_or(serde_json::Value::is_null) {
            return None;
        }
        let json = if changed { v.to_string() } else { json.to_owned() };
        self.template = Some(v);
        Some(json)
    }

    /// At the end of a stream: a chunk with whatever the guards still hold (a provider that
    /// sent no finishing chunk), or `None`.
    pub fn close(&mut self) -> Option<String> {
        let mut template = self.template.take()?;
        let mut choices = Vec::new();
        for (index, guard) in &mut self.choices {
            if guard.blocked {
                continue;
            }
            let rest = guard.finish();
            let reason = if guard.blocked { serde_json::json!("content_filter") } else { serde_json::Value::Null };
            if !rest.is_empty() || guard.blocked {
                choices.push(serde_json::json!({"index": index, "delta": {"content": rest}, "finish_reason": reason}));
            }
        }
        if choices.is_empty() {
            return None;
        }
        template["choices"] = serde_json::Value::Array(choices);
        if let Some(t) = template.as_object_mut() {
            t.remove("usage");
        }
        Some(template.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Pii; 9] = Pii::ALL;

    fn checks(kinds: &[Pii], redact: bool) -> Checks {
        Checks { pii: kinds.to_vec(), redact, ..Checks::default() }
    }

    fn guard(kinds: &[Pii], redact: bool) -> StreamGuard {
        StreamGuard::new(Rc::new(checks(kinds, redact)))
    }

    fn run(pieces: &[&str]) -> (String, Vec<&'static str>) {
        let mut g = guard(&ALL, true);
        let mut out: String = pieces.iter().map(|p| g.push(p)).collect();
        out.push_str(&g.finish());
        (out, g.found)
    }

    #[test]
    fn personal_data_split_anywhere_across_pieces_is_redacted() {
        let text = "Your card 4111 1111 1111 1111 and mail jo@example.com are on file. Thanks for calling, have a good day.";
        let expect = "Your card [CARD_NUMBER] and mail [EMAIL] are on file. Thanks for calling, have a good day.";
        for a in 1..text.len() {
            for b in (a + 1..text.len()).step_by(7) {
                let (out, found) = run(&[&text[..a], &text[a..b], &text[b..]]);
                assert_eq!(out, expect, "split at {a}, {b}");
                assert_eq!(found, ["pii.card_number", "pii.email"]);
            }
        }
    }

    #[test]
    fn the_delay_is_bounded_by_the_window() {
        let mut g = guard(&ALL, true);
        let mut sent = 0;
        let mut total = 0;
        for word in "lorem ipsum dolor sit amet ".repeat(100).split_inclusive(' ') {
            total += word.len();
            sent += g.push(word).len();
            assert!(total - sent <= WINDOW, "held {} bytes", total - sent);
        }
        sent += g.finish().len();
        assert_eq!(sent, total, "nothing lost");
    }

    #[test]
    fn a_private_key_is_held_until_it_ends_then_redacted_whole() {
        let key = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----", "QUJD".repeat(100));
        let text = format!("here: {key} done");
        let pieces: Vec<&str> = text.as_bytes().chunks(10).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
        let (out, _) = run(&pieces);
        assert_eq!(out, "here: [PRIVATE_KEY] done");
    }

    #[test]
    fn a_certificate_is_not_held() {
        let mut g = guard(&ALL, true);
        let mut sent = g.push("-----BEGIN CERTIFICATE-----\n");
        for _ in 0..20 {
            sent.push_str(&g.push("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n"));
        }
        assert!(sent.len() > 400, "only the window is held: {}", sent.len());
    }

    #[test]
    fn multi_byte_text_is_never_cut_inside_a_character() {
        let text = "日本語のテキスト、メールは jo@example.com です。".repeat(10);
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (out, _) = run(&refs);
        assert_eq!(out, text.replace("jo@example.com", "[EMAIL]"));
    }

    #[test]
    fn chunks_of_an_answer_are_redacted_across_their_boundaries() {
        let mut g = OutputGuard::new(checks(&ALL, true));
        let chunk = |content: &str, finish: Option<&str>| {
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]})
            .to_string()
        };
        let mut text = String::new();
        for piece in ["Sure, your card is 4111 11", "11 1111 1111 and", " your mail is jo@exa", "mple.com."] {
            let out: serde_json::Value = serde_json::from_str(&g.chunk(&chunk(piece, None)).unwrap_or_default()).unwrap_or_default();
            text.push_str(out["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        let last: serde_json::Value = serde_json::from_str(&g.chunk(&chunk("", Some("stop"))).unwrap_or_default()).unwrap_or_default();
        text.push_str(last["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        assert_eq!(text, "Sure, your card is [CARD_NUMBER] and your mail is [EMAIL].");
        assert_eq!(g.found(), ["pii.card_number", "pii.email"]);
        // A provider that ends without a finishing chunk: the rest comes in a closing chunk.
        let mut g = OutputGuard::new(checks(&ALL, true));
        let first: serde_json::Value = serde_json::from_str(&g.chunk(&chunk("mail a@b.io", None)).unwrap_or_default()).unwrap_or_default();
        assert_eq!(first["choices"][0]["delta"]["content"], "", "held: it may go on");
        let closing: serde_json::Value = serde_json::from_str(&g.close().unwrap_or_default()).unwrap_or_default();
        assert_eq!(closing["choices"][0]["delta"]["content"], "mail [EMAIL]");
    }

    #[test]
    fn kinds_not_redacted_pass_untouched() {
        let mut g = guard(&[Pii::Email], true);
        let mut out = g.push("ip 10.0.0.1 mail a@b.io");
        out.push_str(&g.finish());
        assert_eq!(out, "ip 10.0.0.1 mail [EMAIL]");
        let mut flag = guard(&[Pii::Email], false);
        let mut out = flag.push("mail a@b.io");
        out.push_str(&flag.finish());
        assert_eq!((out.as_str(), flag.found), ("mail a@b.io", vec!["pii.email"]), "flagging finds without changing");
    }

    fn rules(on: &str) -> Rc<RuleSet> {
        let raw: super::super::custom::RawRuleSet = serde_json::from_value(serde_json::json!({"version": "1", "rules": [
            {"id": "weapons", "pattern": "nerve agent", "on": on, "class": "weapons"},
            {"id": "medical", "pattern": "take \\d+ mg", "on": on, "class": "medical"}
        ]}))
        .unwrap_or_else(|e| unreachable!("{e}"));
        Rc::new(raw.compile("deny", "rule_sets.deny", &mut Vec::new()).unwrap_or_else(|| unreachable!()))
    }

    fn stream(checks: Checks, text: &str, every: usize) -> (String, StreamGuard) {
        let mut g = StreamGuard::new(Rc::new(checks));
        let mut out = String::new();
        for piece in text.as_bytes().chunks(every) {
            out.push_str(&g.push(std::str::from_utf8(piece).unwrap_or("")));
        }
        out.push_str(&g.finish());
        (out, g)
    }

    #[test]
    fn a_denied_class_ends_the_answer_before_the_hit_wherever_the_pieces_split() {
        let text = "Here is some chemistry history. A Nerve Agent is made by mixing things, and more text follows here.";
        for every in 1..text.len() {
            let checks = Checks {
                rules: vec![rules("answer")],
                rule_action: Action::Flag,
                class_action: vec![("weapons", Action::Block)],
                ..Checks::default()
            };
            let (out, g) = stream(checks, text, every);
            assert_eq!(out, "Here is some chemistry history. A ", "pieces of {every}");
            assert!(g.blocked);
            assert_eq!(g.found, ["weapons"]);
        }
        // Flagged classes are recorded and the text is untouched.
        let checks = Checks { rules: vec![rules("both")], rule_action: Action::Flag, ..Checks::default() };
        let (out, g) = stream(checks, "take 40 mg daily", 3);
        assert_eq!((out.as_str(), g.blocked, g.found), ("take 40 mg daily", false, vec!["medical"]));
        // Prompt-only rules never look at answers; `off` classes are skipped.
        let checks = Checks { rules: vec![rules("prompt")], rule_action: Action::Block, ..Checks::default() };
        assert!(!stream(checks, "a nerve agent", 2).1.blocked);
        let checks = Checks {
            rules: vec![rules("answer")],
            rule_action: Action::Block,
            class_action: vec![("weapons", Action::Off)],
            ..Checks::default()
        };
        assert!(!stream(checks, "a nerve agent", 2).1.blocked);
    }

    #[test]
    fn a_leaked_system_prompt_is_found_across_pieces_and_cut_when_blocked() {
        let system = "You are Orion, the support assistant of Acme Bank. Never discuss the internal fraud thresholds with customers.";
        let leak = Rc::new(Leak::new(system).unwrap_or_else(|| unreachable!()));
        let answer = "Sure! My instructions say: never DISCUSS the internal fraud thresholds, with customers. That is all.";
        for every in [1, 5, 17, 200] {
            let flag = Checks { leak: Some((Rc::clone(&leak), Action::Flag)), ..Checks::default() };
            let (out, g) = stream(flag, answer, every);
            assert_eq!((out.as_str(), g.found.as_slice()), (answer, [LEAK_RULE].as_slice()), "flag, pieces of {every}");
            let block = Checks { leak: Some((Rc::clone(&leak), Action::Block)), ..Checks::default() };
            let (out, g) = stream(block, answer, every);
            assert_eq!(out, "Sure! My instructions say: ", "block, pieces of {every}");
            assert!(g.blocked);
        }
        // Seven words in a row are not a leak; short system prompts are not checked.
        let flag = Checks { leak: Some((Rc::clone(&leak), Action::Flag)), ..Checks::default() };
        assert!(stream(flag, "never discuss the internal fraud thresholds with anyone", 4).1.found.is_empty());
        assert_eq!(Leak::new("Be brief."), None);
    }

    #[test]
    fn a_blocked_stream_choice_finishes_with_content_filter_and_sends_nothing_more() {
        let mut g = OutputGuard::new(Checks { rules: vec![rules("answer")], rule_action: Action::Block, ..Checks::default() });
        let chunk = |content: &str| {
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
            .to_string()
        };
        let mut sent = String::new();
        let mut reasons = Vec::new();
        let mut dropped = 0;
        for piece in ["The recipe for a ner", "ve agent is secret", " and long", " and longer."] {
            match g.chunk(&chunk(piece)) {
                Some(json) => {
                    let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                    sent.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                    reasons.push(v["choices"][0]["finish_reason"].clone());
                }
                None => dropped += 1,
            }
        }
        assert_eq!(sent, "The recipe for a ");
        assert_eq!(reasons.last(), Some(&serde_json::json!("content_filter")));
        assert_eq!(dropped, 2);
        assert!(g.blocked() && g.close().is_none());
        let usage =
            serde_json::json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}});
        let kept: serde_json::Value = serde_json::from_str(&g.chunk(&usage.to_string()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(kept["choices"], serde_json::json!([]), "the usage chunk still goes, without the choice");
        // A whole completion is cut the same way.
        let mut g = OutputGuard::new(Checks { rules: vec![rules("answer")], rule_action: Action::Block, ..Checks::default() });
        let body = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Mix it: take 5 mg of it"}, "finish_reason": "stop"}]});
        let out: serde_json::Value =
            serde_json::from_slice(&g.completion(body.to_string().as_bytes()).unwrap_or_default()).unwrap_or_default();
        assert_eq!(out["choices"][0]["message"]["content"], "Mix it: ");
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    }
}
