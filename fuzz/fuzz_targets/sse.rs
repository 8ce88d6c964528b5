//! The SSE parser: no panic, and the events do not depend on how the bytes were cut.
#![no_main]

use edgegate_core::sse::SseParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else { return };
    let mut whole = SseParser::new();
    let mut expected = whole.push(rest);
    expected.extend(whole.finish());
    let mut pieces = SseParser::new();
    let mut got = Vec::new();
    for chunk in rest.chunks(usize::from(cuts % 17) + 1) {
        got.extend(pieces.push(chunk));
    }
    got.extend(pieces.finish());
    assert_eq!(got, expected);
});
