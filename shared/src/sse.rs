//! A server-sent events parser: a pure step function from bytes to events.
//!
//! Follows the WHATWG event-stream rules: lines end in LF, CRLF or CR (also when split across
//! chunks); lines starting with `:` are comments; `data` lines of one event are joined with LF; a
//! blank line dispatches the event. UTF-8 split across chunks is reassembled because lines are
//! decoded only once complete. Invalid UTF-8 is replaced, never a panic.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The joined `data:` lines.
    pub data: String,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
}

/// Longest line the parser buffers (16 MiB); longer input is cut to bound memory.
const MAX_LINE: usize = 16 << 20;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue; // the LF of a CRLF pair
                }
            }
            match b {
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.end_line(&mut out);
                    self.after_cr = true;
                }
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => {}
            }
        }
        out
    }

    /// Ends the stream. An event whose blank line never came is still returned, so that a caller
    /// can decide whether a stream that stopped mid-event was complete.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut out);
        }
        self.end_line(&mut out);
        out.pop()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseEvent { event: self.event.take(), data });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.find(':') {
            Some(i) => (&text[..i], text[i + 1..].strip_prefix(' ').unwrap_or(&text[i + 1..])),
            None => (&text[..], ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields do not matter to a relay
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: event.map(str::to_owned), data: data.to_owned() }
    }

    /// Feeds `input` split at every possible point and checks each split gives the same events.
    fn check(input: &str, expect: &[SseEvent]) {
        let bytes = input.as_bytes();
        for cut in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            got.extend(p.finish());
            assert_eq!(got, expect, "input {input:?} cut at {cut}");
        }
        let mut p = SseParser::new();
        let mut got: Vec<SseEvent> = bytes.iter().flat_map(|b| p.push(std::slice::from_ref(b))).collect();
        got.extend(p.finish());
        assert_eq!(got, expect, "input {input:?} byte by byte");
    }

    #[test]
    fn line_endings_comments_and_fields() {
        check("data: a\n\n", &[ev(None, "a")]);
        check("data: a\r\n\r\n", &[ev(None, "a")]);
        check("data: a\r\rdata: b\r\r", &[ev(None, "a"), ev(None, "b")]);
        check(": keep-alive\n\ndata: x\n\n", &[ev(None, "x")]);
        check("event: message_start\ndata: {}\n\n", &[ev(Some("message_start"), "{}")]);
        check("data: one\ndata: two\n\n", &[ev(None, "one\ntwo")]);
        check("data:nospace\n\n", &[ev(None, "nospace")]);
        check("data\n\n", &[ev(None, "")]);
        check("id: 7\nretry: 10\ndata: z\n\n", &[ev(None, "z")]);
        check("event: ping\n\n", &[]);
        check("\n\n\n", &[]);
    }

    #[test]
    fn a_stream_cut_before_the_blank_line_still_yields_its_event() {
        check("data: [DONE]", &[ev(None, "[DONE]")]);
        check("data: a\n\ndata: partial", &[ev(None, "a"), ev(None, "partial")]);
    }

    #[test]
    fn utf8_split_across_chunks_is_reassembled() {
        check("data: héllo 😀 wörld\n\n", &[ev(None, "héllo 😀 wörld")]);
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: \xff\n\n"), vec![ev(None, "\u{fffd}")]);
    }
}
