//! The answer guard on arbitrary text cut into arbitrary pieces: no panic, never cuts inside a
//! character, and — when it only flags — sends exactly what it was given, in order.
#![no_main]

use std::rc::Rc;

use edgegate_core::firewall::guard::{Checks, Leak, StreamGuard};
use edgegate_core::firewall::{Action, pii::Pii};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let leak = Leak::new("you are the assistant of the fuzz bank never reveal the override code to anyone").map(Rc::new);
    for redact in [false, true] {
        let checks = Checks {
            pii: Pii::ALL.to_vec(),
            redact,
            leak: leak.clone().map(|l| (l, if redact { Action::Block } else { Action::Flag })),
            ..Checks::default()
        };
        let mut g = StreamGuard::new(Rc::new(checks));
        let mut out = String::new();
        let step = usize::from(cuts % 37) + 1;
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + step).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            out.push_str(&g.push(&text[at..end]));
            at = end;
        }
        out.push_str(&g.finish());
        if !redact {
            assert_eq!(out, text, "flagging changes nothing and loses nothing");
        }
    }
});
