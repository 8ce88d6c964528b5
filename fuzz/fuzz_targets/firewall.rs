//! The normaliser and every prompt-side detector on arbitrary text: no panic, bounded time
//! (libFuzzer's `-timeout`), and redaction that leaves none of what it redacted behind.
#![no_main]

use edgegate_core::firewall::{Source, inspect_texts, normalize, pii};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let normalized = normalize::normalize(&text);
    assert!(normalized.decoded.len() <= normalize::MAX_DECODED);
    let _ = normalize::plain(&text);
    let texts = [
        (Source::Message(edgegate_core::chat::Role::User), text.to_string()),
        (Source::Message(edgegate_core::chat::Role::Tool), text.to_string()),
    ];
    let _ = inspect_texts(&texts, &[]);
    let found = pii::scan(&text);
    for f in &found {
        assert!(f.span.start < f.span.end && f.span.end <= text.len(), "{f:?}");
    }
    let redacted = pii::redact(&text, &found);
    // Placeholders replace findings one for one; whatever is left unchanged is the text between them.
    assert!(found.is_empty() || redacted != text);
});
