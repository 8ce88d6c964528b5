//! Personal data and secrets in text, found by hand-written linear scanners and confirmed by
//! their checksums where one exists (card numbers by Luhn, IBANs by ISO 7064 mod 97-10), so a
//! random run of digits is not a card. Spans are byte ranges of the text as given, so a finding
//! can be redacted in place.

use std::ops::Range;

use serde::Serialize;

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Pii {
    /// A payment card number that passes Luhn.
    CardNumber,
    /// An IBAN whose check digits hold.
    Iban,
    /// An e-mail address.
    Email,
    /// A phone number in international form (`+` and 8–15 digits).
    Phone,
    /// A US social security number in its issued ranges.
    UsSsn,
    /// An IPv4 or IPv6 address.
    IpAddress,
    /// An API key or access token of a well-known provider.
    ApiKey,
    /// A PEM private key block.
    PrivateKey,
    /// A JSON Web Token.
    Jwt,
}

impl Pii {
    /// Every kind.
    pub const ALL: [Pii; 9] =
        [Pii::CardNumber, Pii::Iban, Pii::Email, Pii::Phone, Pii::UsSsn, Pii::IpAddress, Pii::ApiKey, Pii::PrivateKey, Pii::Jwt];

    /// The rule id findings carry.
    pub fn rule_id(self) -> &'static str {
        match self {
            Pii::CardNumber => "pii.card_number",
            Pii::Iban => "pii.iban",
            Pii::Email => "pii.email",
            Pii::Phone => "pii.phone",
            Pii::UsSsn => "pii.us_ssn",
            Pii::IpAddress => "pii.ip_address",
            Pii::ApiKey => "secret.api_key",
            Pii::PrivateKey => "secret.private_key",
            Pii::Jwt => "secret.jwt",
        }
    }

    /// The placeholder a redaction puts in its place.
    pub fn placeholder(self) -> &'static str {
        match self {
            Pii::CardNumber => "[CARD_NUMBER]",
            Pii::Iban => "[IBAN]",
            Pii::Email => "[EMAIL]",
            Pii::Phone => "[PHONE]",
            Pii::UsSsn => "[US_SSN]",
            Pii::IpAddress => "[IP_ADDRESS]",
            Pii::ApiKey => "[API_KEY]",
            Pii::PrivateKey => "[PRIVATE_KEY]",
            Pii::Jwt => "[JWT]",
        }
    }
}

/// One finding: what, and where (a byte range of the scanned text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was found.
    pub kind: Pii,
    /// Where, in bytes.
    pub span: Range<usize>,
}

/// Every finding in `text`, in order of position; overlapping findings keep the earlier (or, at
/// the same start, the longer) one.
pub fn scan(text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    private_keys(text, &mut found);
    // Card, phone and SSN numbers and IBANs all hold a digit: they are looked for from the first.
    if tokens(text, &mut found) & DIGIT != 0 {
        let first = text.bytes().position(|b| b.is_ascii_digit()).unwrap_or(0);
        digit_runs(text, first.saturating_sub(1), &mut found);
        ibans(text, first.saturating_sub(2), &mut found);
    }
    found.sort_by(|a, b| a.span.start.cmp(&b.span.start).then(b.span.end.cmp(&a.span.end)));
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        if kept.last().is_none_or(|k| f.span.start >= k.span.end) {
            kept.push(f);
        }
    }
    kept
}

/// `text` with every finding replaced by its placeholder.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        if let (Some(before), true) = (text.get(at..f.span.start), f.span.start >= at) {
            out.push_str(before);
            out.push_str(f.kind.placeholder());
            at = f.span.end;
        }
    }
    out.push_str(text.get(at..).unwrap_or(""));
    out
}

fn private_keys(text: &str, found: &mut Vec<Finding>) {
    let mut from = 0;
    while let Some(start) = text.get(from..).and_then(|t| t.find("-----BEGIN ")).map(|i| i + from) {
        let header_end = text.get(start + 11..).and_then(|t| t.find("-----")).map(|i| start + 11 + i);
        let Some(header_end) = header_end else { return };
        let label = text.get(start + 11..header_end).unwrap_or("");
        from = header_end + 5;
        if !label.ends_with("PRIVATE KEY") || label.len() > 40 {
            continue;
        }
        let footer = format!("-----END {label}-----");
        let end = text.get(from..).and_then(|t| t.find(&footer)).map_or(text.len(), |i| from + i + footer.len());
        found.push(Finding { kind: Pii::PrivateKey, span: start..end });
        from = end;
    }
}

/// Well-known key prefixes and the characters and length that follow them.
const KEY_PREFIXES: &[(&str, usize)] = &[
    ("sk-ant-", 32),
    ("sk-proj-", 32),
    ("sk-", 32),
    ("sk_live_", 20),
    ("rk_live_", 20),
    ("ghp_", 36),
    ("gho_", 36),
    ("ghs_", 36),
    ("github_pat_", 40),
    ("xoxb-", 20),
    ("xoxp-", 20),
    ("AKIA", 16),
    ("ASIA", 16),
    ("AIza", 35),
    ("hf_", 30),
    ("glpat-", 20),
];

/// A byte of a token: an ASCII letter or digit, or one of `-_.@+:%`.
const TOKEN: u8 = 1;
/// A byte of a token that marks e-mails, addresses and JWTs: `@`, `.` or `:`.
const MARK: u8 = 2;
/// A byte of a character that is not ASCII (a token's if the character is a letter or digit).
const WIDE: u8 = 4;
/// An ASCII digit (a token byte too).
const DIGIT: u8 = 8;

/// Each byte's class for [`tokens`]: 0 for ASCII that separates tokens.
const TOKEN_CLASS: [u8; 256] = {
    let mut table = [WIDE; 256];
    let mut b = 0u8;
    while b < 128 {
        table[b as usize] = if matches!(b, b'@' | b'.' | b':') {
            TOKEN | MARK
        } else if b.is_ascii_digit() {
            TOKEN | DIGIT
        } else if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'%') {
            TOKEN
        } else {
            0
        };
        b += 1;
    }
    table
};

/// Tokens split on white space and punctuation that keys, tokens, e-mails and addresses never
/// contain: keys, JWTs, e-mails and IP addresses. Returns the classes of every token byte seen.
fn tokens(text: &str, found: &mut Vec<Finding>) -> u8 {
    let bytes = text.as_bytes();
    // The width of the character at `i` if it is a letter or digit of any script.
    let wide_letter = |i: usize| text.get(i..).and_then(|t| t.chars().next()).filter(|c| c.is_alphanumeric()).map(char::len_utf8);
    let (mut i, mut seen) = (0, 0);
    while i < bytes.len() {
        if TOKEN_CLASS[usize::from(bytes[i])] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut classes = 0;
        while let Some(&b) = bytes.get(i) {
            let class = TOKEN_CLASS[usize::from(b)];
            if class & TOKEN != 0 {
                classes |= class;
                i += 1;
            } else if class == WIDE
                && let Some(width) = wide_letter(i)
            {
                i += width;
            } else {
                break;
            }
        }
        if i == start {
            // A character that is neither ASCII nor a letter or digit.
            i += text.get(i..).and_then(|t| t.chars().next()).map_or(1, char::len_utf8);
            continue;
        }
        seen |= classes;
        // Most tokens are words: no `@`, `.` or `:`, and too short for a key (see `classify`).
        if classes & MARK == 0 && i - start < SHORTEST_KEY {
            continue;
        }
        let token = text.get(start..i).unwrap_or("").trim_end_matches(['.', ':', '-']);
        if let Some(kind) = classify(token) {
            found.push(Finding { kind, span: start..start + token.len() });
        }
    }
    seen
}

/// The shortest token a key prefix and its characters make.
const SHORTEST_KEY: usize = 20;

fn classify(token: &str) -> Option<Pii> {
    // Most tokens are words: no `@`, `.` or `:`, and too short for a key. They end here.
    let first = token.bytes().next()?;
    let marks = token.bytes().any(|b| matches!(b, b'@' | b'.' | b':'));
    if !marks && token.len() < SHORTEST_KEY {
        return None;
    }
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    for (prefix, min) in KEY_PREFIXES {
        if let Some(rest) = token.strip_prefix(prefix)
            && rest.len() >= *min
            && rest.chars().all(key_char)
            && (!prefix.starts_with("AKIA") && !prefix.starts_with("ASIA")
                || rest.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        {
            return Some(Pii::ApiKey);
        }
    }
    if !marks {
        return None;
    }
    if is_jwt(token) {
        return Some(Pii::Jwt);
    }
    if is_email(token) {
        return Some(Pii::Email);
    }
    if first.is_ascii_digit() && token.parse::<std::net::Ipv4Addr>().is_ok() && token.split('.').count() == 4 {
        return Some(Pii::IpAddress);
    }
    if (first.is_ascii_hexdigit() || first == b':') && token.matches(':').count() >= 2 && token.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(Pii::IpAddress);
    }
    None
}

fn is_jwt(token: &str) -> bool {
    if !token.starts_with("eyJ") {
        return false;
    }
    let parts: Vec<&str> = token.split('.').collect();
    let b64url = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    parts.len() == 3 && token.starts_with("eyJ") && parts.iter().take(2).all(|p| b64url(p) && p.len() >= 10) && b64url(parts[2])
}

fn is_email(token: &str) -> bool {
    let Some((local, domain)) = token.split_once('@') else { return false };
    let label =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-');
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && local.len() <= 64
        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b))
        && labels.len() >= 2
        && labels.iter().all(|l| label(l))
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// Runs of digits with the separators people write in them (space, `-`, `.`, `(`, `)`), and a
/// leading `+`: card numbers, phone numbers and SSNs. None starts before `from`.
fn digit_runs(text: &str, from: usize, found: &mut Vec<Finding>) {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        // Most bytes are neither a digit nor `+`: skip them before anything else.
        if !bytes[i].is_ascii_digit() && bytes[i] != b'+' {
            i += 1;
            continue;
        }
        let plus = bytes[i] == b'+' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        let starts = (bytes[i].is_ascii_digit() || plus) && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut digits = Vec::new();
        let mut j = if plus { i + 1 } else { i };
        while let Some(&b) = bytes.get(j) {
            if b.is_ascii_digit() {
                digits.push(b - b'0');
                end = j + 1;
            } else if !(matches!(b, b' ' | b'-' | b'.' | b'(' | b')')
                && bytes.get(j + 1..j + 3).is_some_and(|n| n.iter().any(|c| c.is_ascii_digit() || *c == b'(')))
            {
                // A separator (or two, as in ") ") must lead on to more digits.
                break;
            }
            j += 1;
        }
        let alnum_after = bytes.get(end).is_some_and(u8::is_ascii_alphanumeric);
        if !alnum_after {
            let run = text.get(start..end).unwrap_or("");
            if let Some(kind) = digit_kind(run, &digits, plus) {
                found.push(Finding { kind, span: start..end });
            }
        }
        i = end.max(i + 1);
    }
}

fn digit_kind(run: &str, digits: &[u8], plus: bool) -> Option<Pii> {
    if plus {
        return (8..=15).contains(&digits.len()).then_some(Pii::Phone);
    }
    if card_brand_length(digits) && luhn(digits) && !digits.iter().all(|d| *d == digits[0]) {
        return Some(Pii::CardNumber);
    }
    if digits.len() == 9 && ssn(run, digits) {
        return Some(Pii::UsSsn);
    }
    None
}

/// Whether `digits` start like a card of some network and have one of its lengths (Visa,
/// Mastercard, American Express, Discover, JCB, Diners Club, UnionPay, Maestro).
fn card_brand_length(digits: &[u8]) -> bool {
    let prefix = |n: usize| digits.iter().take(n).fold(0u32, |a, &d| a * 10 + u32::from(d));
    let len = digits.len();
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    match () {
        _ if p1 == 4 => matches!(len, 13 | 16 | 19),
        _ if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => len == 16,
        _ if p2 == 34 || p2 == 37 => len == 15,
        _ if p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) => (16..=19).contains(&len),
        _ if (3528..=3589).contains(&p4) => (16..=19).contains(&len),
        _ if p2 == 36 || p2 == 38 || (300..=305).contains(&p3) => (14..=19).contains(&len),
        _ if p2 == 62 => (16..=19).contains(&len),
        _ if p2 == 50 || (56..=58).contains(&p2) => (13..=19).contains(&len),
        _ => false,
    }
}

/// The Luhn checksum of card numbers.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A US SSN written `AAA-GG-SSSS` in the issued ranges (area not 000, 666 or 9xx; group and serial
/// not zero). Bare nine-digit numbers are too common to call SSNs.
fn ssn(run: &str, d: &[u8]) -> bool {
    let shaped = run.len() == 11 && run.as_bytes().get(3) == Some(&b'-') && run.as_bytes().get(6) == Some(&b'-');
    let num = |r: Range<usize>| d.get(r).map_or(0, |s| s.iter().fold(0u32, |a, &x| a * 10 + u32::from(x)));
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    shaped && area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// IBAN lengths by country (the common ones; others are checked by length bounds only).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AT", 20),
    ("BE", 16),
    ("CH", 21),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("IE", 22),
    ("IT", 27),
    ("LU", 20),
    ("NL", 18),
    ("NO", 15),
    ("PL", 28),
    ("PT", 25),
    ("SE", 24),
];

/// IBANs, written compact or in groups of four. None starts before `from`.
fn ibans(text: &str, from: usize, found: &mut Vec<Finding>) {
    let bytes = text.as_bytes();
    let mut i = from;
    while i + 4 <= bytes.len() {
        // An IBAN starts with a capital letter; most bytes are not one.
        if !bytes[i].is_ascii_uppercase() {
            i += 1;
            continue;
        }
        let head = &bytes[i..i + 4];
        let starts = head[0].is_ascii_uppercase()
            && head[1].is_ascii_uppercase()
            && head[2].is_ascii_digit()
            && head[3].is_ascii_digit()
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        let mut chars = Vec::new();
        let mut end = i;
        let mut j = i;
        while let Some(&b) = bytes.get(j) {
            if b.is_ascii_alphanumeric() {
                chars.push(b.to_ascii_uppercase());
                end = j + 1;
            } else if !(b == b' ' && bytes.get(j + 1).is_some_and(u8::is_ascii_alphanumeric) && chars.len() % 4 == 0) {
                break;
            }
            j += 1;
            if chars.len() > 34 {
                break;
            }
        }
        if iban_valid(&chars) {
            found.push(Finding { kind: Pii::Iban, span: i..end });
            i = end;
        } else {
            i += 1;
        }
    }
}

/// ISO 13616: country length, then the number with its first four characters moved to the end,
/// letters as 10–35, is 1 mod 97.
pub fn iban_valid(chars: &[u8]) -> bool {
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    let country = std::str::from_utf8(&chars[..2]).unwrap_or("");
    if IBAN_LENGTHS.iter().any(|(c, len)| *c == country && *len != chars.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`tokens`] as it was written first, character by character: the reference.
    fn tokens_by_char(text: &str) -> Vec<Finding> {
        let mut found = Vec::new();
        let is_token = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+' | ':' | '%');
        let mut start = None;
        for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
            match (start, is_token(c)) {
                (None, true) => start = Some(i),
                (Some(s), false) => {
                    start = None;
                    let token = text.get(s..i).unwrap_or("").trim_end_matches(['.', ':', '-']);
                    if let Some(kind) = classify(token) {
                        found.push(Finding { kind, span: s..s + token.len() });
                    }
                }
                _ => {}
            }
        }
        found
    }

    #[test]
    fn tokens_split_by_bytes_as_by_characters() {
        let pieces = [
            "ann@example.com",
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            "10.0.0.1",
            "fe80::1",
            " ",
            ", ",
            "größe",
            "日本語",
            "é",
            "ü@b.de",
            "x.",
            "AKIAABCDEFGHIJKLMNOP",
            "🙂",
            "\u{a0}",
            "-",
            ":",
            "name@mail.例え.jp",
            "٣٤٥",
            "\n",
        ];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(seed % 12) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                text.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let mut found = Vec::new();
            tokens(&text, &mut found);
            let spans = |f: &[Finding]| f.iter().map(|f| (f.kind, f.span.clone())).collect::<Vec<_>>();
            assert_eq!(spans(&found), spans(&tokens_by_char(&text)), "{text:?}");
        }
    }

    fn kinds(text: &str) -> Vec<(Pii, &str)> {
        scan(text).into_iter().map(|f| (f.kind, text.get(f.span).unwrap_or("?"))).collect()
    }

    #[test]
    fn card_numbers_need_luhn() {
        assert_eq!(kinds("card 4111 1111 1111 1111 exp"), [(Pii::CardNumber, "4111 1111 1111 1111")]);
        assert_eq!(kinds("4012-8888-8888-1881"), [(Pii::CardNumber, "4012-8888-8888-1881")]);
        assert_eq!(kinds("card 4111 1111 1111 1112"), [], "one digit off fails Luhn");
        assert_eq!(kinds("order 0000000000000000"), [], "all one digit");
        assert_eq!(kinds("id4111111111111111x"), [], "inside a word");
    }

    #[test]
    fn ibans_need_their_check_digits() {
        assert_eq!(kinds("pay DE89 3704 0044 0532 0130 00 today"), [(Pii::Iban, "DE89 3704 0044 0532 0130 00")]);
        assert_eq!(kinds("GB82WEST12345698765432"), [(Pii::Iban, "GB82WEST12345698765432")]);
        assert_eq!(kinds("DE89 3704 0044 0532 0130 01"), [], "bad check digits");
        assert_eq!(kinds("DE89370400440532013"), [], "wrong length for DE");
    }

    #[test]
    fn numbers_are_looked_for_from_the_first_digit() {
        for before in ["", " ", "words, then ", "é "] {
            let at = |found: &str| format!("{before}{found} after");
            assert_eq!(kinds(&at("+44 20 7946 0958")), [(Pii::Phone, "+44 20 7946 0958")], "{before:?}");
            assert_eq!(kinds(&at("GB82WEST12345698765432")), [(Pii::Iban, "GB82WEST12345698765432")], "{before:?}");
            assert_eq!(kinds(&at("4111 1111 1111 1111")), [(Pii::CardNumber, "4111 1111 1111 1111")], "{before:?}");
        }
        assert_eq!(kinds("No digits at all, NOT EVEN ONE: DEXX WEST"), []);
    }

    #[test]
    fn contact_details_and_addresses() {
        assert_eq!(kinds("mail jane.doe+x@mail.example.co.uk."), [(Pii::Email, "jane.doe+x@mail.example.co.uk")]);
        assert_eq!(kinds("not@an-address"), []);
        assert_eq!(kinds("call +44 20 7946 0958 now"), [(Pii::Phone, "+44 20 7946 0958")]);
        assert_eq!(kinds("+1 (415) 555-2671"), [(Pii::Phone, "+1 (415) 555-2671")]);
        assert_eq!(kinds("2 + 2"), []);
        assert_eq!(kinds("SSN 123-45-6789"), [(Pii::UsSsn, "123-45-6789")]);
        assert_eq!(kinds("666-45-6789 and 123-00-6789"), [], "never issued");
        assert_eq!(kinds("host 10.0.12.7, v6 2001:db8::1"), [(Pii::IpAddress, "10.0.12.7"), (Pii::IpAddress, "2001:db8::1")]);
        assert_eq!(kinds("version 1.2.3 at 12:30:45"), []);
        assert_eq!(kinds("999.1.1.1"), []);
    }

    #[test]
    fn secrets() {
        let key = format!("sk-proj-{}", "a1B2".repeat(10));
        assert_eq!(kinds(&format!("key={key}")), [(Pii::ApiKey, key.as_str())]);
        assert_eq!(kinds("AKIAIOSFODNN7EXAMPLE"), [(Pii::ApiKey, "AKIAIOSFODNN7EXAMPLE")]);
        assert_eq!(kinds("sk-short"), []);
        assert_eq!(kinds("ghp_0123456789abcdefghijklmnopqrstuvwxyz"), [(Pii::ApiKey, "ghp_0123456789abcdefghijklmnopqrstuvwxyz")]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(kinds(&format!("Bearer {jwt}")), [(Pii::Jwt, jwt)]);
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        assert_eq!(kinds(&format!("x {pem} y")), [(Pii::PrivateKey, pem)]);
        assert_eq!(kinds("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"), []);
    }

    #[test]
    fn shortest_key_is_the_shortest_prefix_and_length() {
        assert_eq!(KEY_PREFIXES.iter().map(|(p, min)| p.len() + min).min(), Some(SHORTEST_KEY));
    }

    #[test]
    fn redaction_uses_stable_placeholders() {
        let text = "mail a@b.io, card 4111111111111111, ok";
        assert_eq!(redact(text, &scan(text)), "mail [EMAIL], card [CARD_NUMBER], ok");
    }

    #[test]
    fn adversarial_input_scans_in_linear_time() {
        for s in ["1 ".repeat(100_000), "-----BEGIN ".repeat(20_000), "DE89".repeat(50_000), "a@".repeat(50_000), "+1".repeat(50_000)] {
            let _ = scan(&s);
        }
    }
}
