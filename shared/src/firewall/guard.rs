//! Redaction of a model's answer as it streams: a pure step function that takes each piece of
//! text and returns what may be sent on, holding back at most a small window so that personal
//! data split across pieces is still found whole.
//!
//! The guard keeps the text not yet sent. After each piece it scans that text; everything before
//! the last [`WINDOW`] bytes is final unless a finding reaches into the window, in which case it is
//! held back from the finding's start. Findings in the final part are replaced by their
//! placeholders. The delay added to a stream is at most [`WINDOW`] bytes of text (or one finding).

use super::pii::{self, Pii};

/// Bytes of text held back at most (beyond a finding that straddles the boundary): longer than
/// any finding the scanners accept except PEM private keys, which are held whole.
pub const WINDOW: usize = 96;

/// The most an unfinished private key block is held before it is let through.
pub const MAX_HELD: usize = 16 << 10;

/// Finds personal data of the given kinds across piece boundaries, and redacts it if asked to.
#[derive(Debug, Clone)]
pub struct StreamGuard {
    pending: String,
    kinds: Vec<Pii>,
    redact: bool,
    /// Findings so far, by kind.
    pub found: Vec<Pii>,
}

impl StreamGuard {
    /// A guard for `kinds`; it only records what it finds unless `redact`.
    pub fn new(kinds: Vec<Pii>, redact: bool) -> Self {
        StreamGuard { pending: String::new(), kinds, redact, found: Vec::new() }
    }

    /// Takes the next piece of text; returns the text that may be sent now (possibly empty).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let findings = self.findings();
        let mut cut = self.pending.len().saturating_sub(WINDOW);
        // An unfinished private key block is held until it ends (up to MAX_HELD bytes).
        if let Some(open) = self.pending.find("-----BEGIN ") {
            let rest = self.pending.get(open + 11..).unwrap_or("");
            let private = rest.find("-----").is_none_or(|e| rest.get(..e).is_some_and(|label| label.ends_with("PRIVATE KEY")));
            if private && !rest.contains("-----END ") && self.pending.len() - open <= MAX_HELD {
                cut = cut.min(open);
            }
        }
        for f in &findings {
            if f.span.start < cut && f.span.end > cut {
                cut = f.span.start;
            }
        }
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        self.release(cut, &findings)
    }

    /// Ends the text: returns everything still held, redacted.
    pub fn finish(&mut self) -> String {
        let findings = self.findings();
        self.release(self.pending.len(), &findings)
    }

    fn findings(&self) -> Vec<pii::Finding> {
        pii::scan(&self.pending).into_iter().filter(|f| self.kinds.contains(&f.kind)).collect()
    }

    /// Sends `pending[..cut]` with the findings inside it redacted, and keeps the rest.
    fn release(&mut self, cut: usize, findings: &[pii::Finding]) -> String {
        let inside: Vec<pii::Finding> = findings.iter().filter(|f| f.span.end <= cut).cloned().collect();
        self.found.extend(inside.iter().map(|f| f.kind));
        let head = self.pending.get(..cut).unwrap_or("");
        let out = if self.redact { pii::redact(head, &inside) } else { head.to_owned() };
        self.pending = self.pending.get(cut..).unwrap_or("").to_owned();
        out
    }
}

/// The guard of one answer, over the OpenAI chunk and completion JSON the gateway relays: one
/// [`StreamGuard`] per choice.
#[derive(Debug, Clone)]
pub struct OutputGuard {
    kinds: Vec<Pii>,
    redact: bool,
    choices: std::collections::BTreeMap<u64, StreamGuard>,
    /// The last chunk seen, as the template of a closing chunk.
    template: Option<serde_json::Value>,
}

impl OutputGuard {
    /// A guard for `kinds`, redacting if `redact` (else it only records).
    pub fn new(kinds: Vec<Pii>, redact: bool) -> Self {
        OutputGuard { kinds, redact, choices: std::collections::BTreeMap::new(), template: None }
    }

    /// Whether it redacts (or only records).
    pub fn redacts(&self) -> bool {
        self.redact
    }

    /// Every kind found so far, once each.
    pub fn found(&self) -> Vec<Pii> {
        let mut all: Vec<Pii> = self.choices.values().flat_map(|g| g.found.iter().copied()).collect();
        all.sort();
        all.dedup();
        all
    }

    fn choice(&mut self, index: u64) -> &mut StreamGuard {
        let (kinds, redact) = (&self.kinds, self.redact);
        self.choices.entry(index).or_insert_with(|| StreamGuard::new(kinds.clone(), redact))
    }

    /// A whole completion (`chat.completion` JSON): each choice's content checked, and redacted
    /// if asked. Returns the new JSON if anything changed.
    pub fn completion(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let mut changed = false;
        for (i, choice) in v["choices"].as_array_mut()?.iter_mut().enumerate() {
            let Some(content) = choice["message"]["content"].as_str().map(str::to_owned) else { continue };
            let guard = self.choice(i as u64);
            let mut out = guard.push(&content);
            out.push_str(&guard.finish());
            if out != content {
                choice["message"]["content"] = serde_json::Value::String(out);
                changed = true;
            }
        }
        changed.then(|| v.to_string().into_bytes())
    }

    /// One stream chunk (`chat.completion.chunk` JSON): its content goes through its choice's
    /// guard; a chunk that finishes a choice also carries what the guard still held. Returns the
    /// chunk to send (unchanged if nothing changed).
    pub fn chunk(&mut self, json: &str) -> String {
        let Ok(mut v) = serde_json::from_str::<serde_json::Value>(json) else { return json.to_owned() };
        let mut changed = false;
        if let Some(choices) = v["choices"].as_array_mut() {
            for choice in choices {
                let index = choice["index"].as_u64().unwrap_or(0);
                let text = choice["delta"]["content"].as_str().map(str::to_owned);
                let finished = !choice["finish_reason"].is_null();
                let guard = self.choice(index);
                let mut out = text.as_deref().map(|t| guard.push(t)).unwrap_or_default();
                if finished {
                    out.push_str(&guard.finish());
                }
                if text.as_deref() != Some(out.as_str()) && (text.is_some() || !out.is_empty()) {
                    choice["delta"]["content"] = serde_json::Value::String(out);
                    changed = true;
                }
            }
        }
        let json = if changed { v.to_string() } else { json.to_owned() };
        self.template = Some(v);
        json
    }

    /// At the end of a stream: a chunk with whatever the guards still hold (a provider that
    /// sent no finishing chunk), or `None`.
    pub fn close(&mut self) -> Option<String> {
        let mut template = self.template.take()?;
        let mut choices = Vec::new();
        for (index, guard) in &mut self.choices {
            let rest = guard.finish();
            if !rest.is_empty() {
                choices.push(serde_json::json!({"index": index, "delta": {"content": rest}, "finish_reason": null}));
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

    fn run(pieces: &[&str]) -> (String, Vec<Pii>) {
        let mut g = StreamGuard::new(ALL.to_vec(), true);
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
                assert_eq!(found, [Pii::CardNumber, Pii::Email]);
            }
        }
    }

    #[test]
    fn the_delay_is_bounded_by_the_window() {
        let mut g = StreamGuard::new(ALL.to_vec(), true);
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
        let mut g = StreamGuard::new(ALL.to_vec(), true);
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
        let mut g = OutputGuard::new(ALL.to_vec(), true);
        let chunk = |content: &str, finish: Option<&str>| {
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]})
            .to_string()
        };
        let mut text = String::new();
        for piece in ["Sure, your card is 4111 11", "11 1111 1111 and", " your mail is jo@exa", "mple.com."] {
            let out: serde_json::Value = serde_json::from_str(&g.chunk(&chunk(piece, None))).unwrap_or_default();
            text.push_str(out["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        let last: serde_json::Value = serde_json::from_str(&g.chunk(&chunk("", Some("stop")))).unwrap_or_default();
        text.push_str(last["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        assert_eq!(text, "Sure, your card is [CARD_NUMBER] and your mail is [EMAIL].");
        assert_eq!(g.found(), [Pii::CardNumber, Pii::Email]);
        // A provider that ends without a finishing chunk: the rest comes in a closing chunk.
        let mut g = OutputGuard::new(ALL.to_vec(), true);
        let first: serde_json::Value = serde_json::from_str(&g.chunk(&chunk("mail a@b.io", None))).unwrap_or_default();
        assert_eq!(first["choices"][0]["delta"]["content"], "", "held: it may go on");
        let closing: serde_json::Value = serde_json::from_str(&g.close().unwrap_or_default()).unwrap_or_default();
        assert_eq!(closing["choices"][0]["delta"]["content"], "mail [EMAIL]");
    }

    #[test]
    fn kinds_not_redacted_pass_untouched() {
        let mut g = StreamGuard::new(vec![Pii::Email], true);
        let mut out = g.push("ip 10.0.0.1 mail a@b.io");
        out.push_str(&g.finish());
        assert_eq!(out, "ip 10.0.0.1 mail [EMAIL]");
        let mut flag = StreamGuard::new(vec![Pii::Email], false);
        let mut out = flag.push("mail a@b.io");
        out.push_str(&flag.finish());
        assert_eq!((out.as_str(), flag.found), ("mail a@b.io", vec![Pii::Email]), "flagging finds without changing");
    }
}
