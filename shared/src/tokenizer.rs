//! Exact token counts for OpenAI's encodings (`o200k_base`, `cl100k_base`), as tiktoken gives.
//!
//! The rank tables are embedded in a compact form (`shared/data/tokenizer/*.bin`, made and
//! checked by `tests/tokenizer/tables.py`): one length byte per token, then every token's bytes, in
//! rank order. Nothing is decoded at start; an encoding's lookup table is built on its first use
//! (one pass over its tokens), so an isolate that never counts never pays, and one that does pays
//! once per encoding.
//!
//! Encoding follows tiktoken: the text is split into pieces by the encoding's pattern, and each
//! piece that is not itself a token is merged byte pair by byte pair, always merging the adjacent
//! pair of lowest rank (the leftmost of equals) while it is a token. The patterns are tiktoken's,
//! except that the `regex` crate has no look-ahead: `\s+(?!\S)` (whitespace not followed by a
//! non-space) is matched as `\s+` and a run followed by a non-space gives back its last character,
//! as the look-ahead would.
//!
//! The pattern runs as a DFA, except where a piece's end depends on ASCII characters alone (most
//! pieces of most prompts): there a few comparisons per byte decide it as the pattern's
//! alternatives would (`ascii_piece`; a test checks both agree on generated mixed text, and the
//! corpus comparison with tiktoken runs through both). Each pattern's DFA is determinised ahead
//! of time (`shared/data/tokenizer/*.dfa`, made and checked by the `tokenizer_dfa` example, see
//! `Encoding::pattern_dfa`) and read in place, on the first piece the ASCII path leaves to it:
//! compiling the pattern's Unicode classes at first use cost more than building the rank table.

use std::sync::OnceLock;

use regex_automata::dfa::{Automaton, dense};
use regex_automata::{Anchored, Input};

/// An OpenAI encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5, the o-series.
    O200kBase,
    /// GPT-4, GPT-3.5 Turbo, `text-embedding-3-*`, `text-embedding-ada-002`.
    Cl100kBase,
}

const O200K: &[u8] = include_bytes!("../data/tokenizer/o200k_base.bin");
const CL100K: &[u8] = include_bytes!("../data/tokenizer/cl100k_base.bin");

#[cfg(feature = "tokenizer-build")]
const O200K_PATTERN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"|\s*[\r\n]+",
    r"|\s+",
);
// tiktoken's possessive quantifiers change nothing here (no alternative can backtrack into them).
#[cfg(feature = "tokenizer-build")]
const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+";

/// Pieces longer than this (bytes) are merged through a heap.
const LONG_PIECE: usize = 128;

/// An encoding's tables, built on first use.
struct Vocab {
    /// Every token's bytes, in rank order.
    blob: &'static [u8],
    /// Where token `r` starts in `blob`; one more entry marks the end.
    starts: Vec<u32>,
    /// Open addressing over the tokens' bytes: `rank + 1` per slot, 0 when empty.
    slots: Vec<u32>,
    /// The pattern's serialised DFA, and the DFA read from it on the first piece the ASCII path
    /// leaves to it: reading one validates every transition, which a prompt of ASCII pieces (most
    /// prompts) never needs.
    serialised: &'static [u8],
    pattern: OnceLock<dense::DFA<&'static [u32]>>,
}

/// Bytes kept at an address a `u32` may be read from, as [`dense::DFA::from_bytes`] requires.
#[repr(C)]
struct Aligned<B: ?Sized> {
    _align: [u32; 0],
    bytes: B,
}

static O200K_DFA: &Aligned<[u8]> = &Aligned { _align: [], bytes: *include_bytes!("../data/tokenizer/o200k_base.dfa") };
static CL100K_DFA: &Aligned<[u8]> = &Aligned { _align: [], bytes: *include_bytes!("../data/tokenizer/cl100k_base.dfa") };

impl Encoding {
    /// The encoding of an OpenAI model name, if it is one tiktoken knows (by family, so dated
    /// snapshots and fine-tunes match too).
    pub fn for_model(model: &str) -> Option<Encoding> {
        let m = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
        let m = m.strip_prefix("ft:").unwrap_or(&m);
        let o200k = ["gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss", "codex-"];
        let cl100k = ["gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002"];
        if o200k.iter().any(|p| m.starts_with(p)) {
            Some(Encoding::O200kBase)
        } else if cl100k.iter().any(|p| m.starts_with(p)) {
            Some(Encoding::Cl100kBase)
        } else {
            None
        }
    }

    /// Its name, as tiktoken names it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    fn vocab(self) -> &'static Vocab {
        static O: OnceLock<Vocab> = OnceLock::new();
        static C: OnceLock<Vocab> = OnceLock::new();
        match self {
            Encoding::O200kBase => O.get_or_init(|| Vocab::load(O200K, &O200K_DFA.bytes)),
            Encoding::Cl100kBase => C.get_or_init(|| Vocab::load(CL100K, &CL100K_DFA.bytes)),
        }
    }

    /// Builds both encodings' tables, reads their pattern DFAs, and counts a short text of
    /// several scripts with each. A host whose instances start from a snapshot taken after this
    /// (the pre-initialised Spin component, `edgegate-preinit`) no longer builds them per instance.
    pub fn prepare() {
        for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
            encoding.count("Summarise this paragraph in one line, s'il vous plaît: 東京, Zürich, 2026!");
        }
    }

    /// The tokens of `text`, as tiktoken's `encode_ordinary` gives them (special tokens are text).
    pub fn encode(self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.pieces(text, |piece, vocab| vocab.encode_piece(piece, &mut out));
        out
    }

    /// How many tokens `text` is.
    pub fn count(self, text: &str) -> usize {
        let mut n = 0;
        self.pieces(text, |piece, vocab| n += vocab.count_piece(piece));
        n
    }

    /// Splits `text` by the encoding's pattern and hands each piece to `each`. Every position
    /// starts a piece, so each search is anchored where the last piece ended. A piece whose end
    /// depends on ASCII characters alone is found by [`ascii_piece`]; the automaton finds the rest.
    fn pieces(self, text: &str, each: impl FnMut(&[u8], &Vocab)) {
        self.pieces_with(text, true, each);
    }

    fn pieces_with(self, text: &str, fast: bool, mut each: impl FnMut(&[u8], &Vocab)) {
        let vocab = self.vocab();
        let mut at = 0;
        while at < text.len() {
            let fast_end = if fast { ascii_piece(self, text.as_bytes(), at) } else { None };
            let mut end = match fast_end {
                Some(end) => end,
                // A DFA without quit bytes never fails a search.
                None => match vocab.pattern().try_search_fwd(&Input::new(text).range(at..).anchored(Anchored::Yes)) {
                    Ok(Some(m)) => m.offset(),
                    // No piece starts here (cannot happen with these patterns): skip a character.
                    _ => {
                        at += text[at..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                },
            };
            let matched = &text[at..end];
            // `\s+(?!\S)`: a whitespace run (not ended by a newline, which an earlier branch
            // takes) followed by a non-space leaves its last character to what follows.
            if end < text.len()
                && matched.as_bytes().last().is_some_and(|&c| !c.is_ascii() || matches!(c, b'\t'..=b'\r' | b' '))
                && matched.chars().all(char::is_whitespace)
                && !matched.ends_with(['\r', '\n'])
                && let Some((last, _)) = matched.char_indices().next_back().filter(|(i, _)| *i > 0)
            {
                end = at + last;
            }
            each(&text.as_bytes()[at..end], vocab);
            at = end;
        }
    }
}

/// Where the piece of `enc`'s pattern that starts at `at` ends, worked out from ASCII bytes the
/// way the pattern's leftmost-first alternatives decide it; `None` as soon as the answer depends
/// on a byte that is not ASCII (a letter, digit, mark or space of another script could extend the
/// piece, and `(?i)s` also matches `ſ`), which leaves the piece to the automaton. Most prompts are
/// mostly ASCII, and a piece is a few bytes: this is several times cheaper than a search. On ASCII
/// the classes are: letters `A-Z` (upper) and `a-z` (lower), digits `0-9`, white space
/// `\t \n \x0B \x0C \r` and space, and everything else "other". The look-ahead `\s+(?!\S)`
/// is applied by the caller, as for the automaton's matches.
fn ascii_piece(enc: Encoding, b: &[u8], at: usize) -> Option<usize> {
    const UPPER: u8 = 1;
    const LOWER: u8 = 2;
    const DIGIT: u8 = 4;
    const SPACE: u8 = 8;
    const OTHER: u8 = 16;
    const WIDE: u8 = 32;
    /// Each byte's class: one bit each, `WIDE` for the bytes of characters that are not ASCII.
    const PIECE_CLASS: [u8; 256] = {
        let mut table = [WIDE; 256];
        let mut c = 0u8;
        while c < 128 {
            table[c as usize] = match c {
                b'A'..=b'Z' => UPPER,
                b'a'..=b'z' => LOWER,
                b'0'..=b'9' => DIGIT,
                b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => SPACE,
                _ => OTHER,
            };
            c += 1;
        }
        table
    };
    // `Some(None)` past the end, `None` on a byte that is not ASCII.
    let at_byte = |i: usize| -> Option<Option<u8>> {
        match b.get(i) {
            None => Some(None),
            Some(&c) if c.is_ascii() => Some(Some(c)),
            Some(_) => None,
        }
    };
    // The end of the run from `i` of bytes of the classes in `mask`.
    let run = |mut i: usize, mask: u8| -> Option<usize> {
        while let Some(&c) = b.get(i) {
            let class = PIECE_CLASS[usize::from(c)];
            if class & mask == 0 {
                return (class != WIDE).then_some(i);
            }
            i += 1;
        }
        Some(i)
    };
    let space = |c: u8| PIECE_CLASS[usize::from(c)] == SPACE;
    let other = |c: u8| PIECE_CLASS[usize::from(c)] == OTHER;
    let newline = |c: u8| c == b'\r' || c == b'\n';
    // `'s|'t|'re|'ve|'m|'ll|'d`, case-insensitive: where one starting at `i` ends.
    let contraction = |i: usize| -> Option<Option<usize>> {
        if at_byte(i)? != Some(b'\'') {
            return Some(None);
        }
        let one = at_byte(i + 1)?.map(|c| c.to_ascii_lowercase());
        if matches!(one, Some(b's' | b't' | b'm' | b'd')) {
            return Some(Some(i + 2));
        }
        if !matches!(one, Some(b'r' | b'v' | b'l')) {
            return Some(None);
        }
        let two = at_byte(i + 2)?.map(|c| c.to_ascii_lowercase());
        Some(matches!((one, two), (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l'))).then_some(i + 3))
    };
    let first = at_byte(at)??;
    if enc == Encoding::Cl100kBase && first == b'\'' {
        // `'(?i:[sdmt]|ll|ve|re)` comes first in cl100k_base.
        if let Some(end) = contraction(at)? {
            return Some(end);
        }
    }
    // Letters, after at most one character that is neither a letter, a digit nor a newline.
    let letters_from = if first.is_ascii_alphabetic() {
        Some(at)
    } else if !first.is_ascii_digit() && !newline(first) && at_byte(at + 1)?.is_some_and(|c| c.is_ascii_alphabetic()) {
        Some(at + 1)
    } else {
        None
    };
    if let Some(from) = letters_from {
        let end = match enc {
            // `\p{L}+`.
            Encoding::Cl100kBase => run(from, UPPER | LOWER)?,
            // `U*L+C?`, else `U+L*C?` (here with no L): upper case then lower case, and a contraction.
            Encoding::O200kBase => {
                let upper = run(from, UPPER)?;
                let lower = run(upper, LOWER)?;
                contraction(lower)?.unwrap_or(lower)
            }
        };
        return Some(end);
    }
    if first.is_ascii_digit() {
        // `\p{N}{1,3}`: a fourth digit, or a non-ASCII one, is the next piece's.
        let mut end = at + 1;
        while end < at + 3 {
            match at_byte(end)? {
                Some(c) if c.is_ascii_digit() => end += 1,
                _ => break,
            }
        }
        return Some(end);
    }
    // ` ?[^\s\p{L}\p{N}]+` then newlines (and, in o200k_base, slashes).
    let from = if first == b' ' { at + 1 } else { at };
    if at_byte(from)?.is_some_and(other) {
        let mut end = run(from, OTHER)?;
        // Only ASCII bytes can be in this set, so any other byte just ends it.
        let slash = enc == Encoding::O200kBase;
        while b.get(end).is_some_and(|&c| newline(c) || (slash && c == b'/')) {
            end += 1;
        }
        return Some(end);
    }
    if !space(first) {
        return None;
    }
    // White space: to the end of the text (cl100k_base's `\s+$`), else up to its last newline
    // (`\s*[\r\n]+`), else all of it (`\s+`).
    let end = run(at, SPACE)?;
    if enc == Encoding::Cl100kBase && end == b.len() {
        return Some(end);
    }
    Some(b[at..end].iter().rposition(|&c| newline(c)).map_or(end, |i| at + i + 1))
}

impl Encoding {
    /// The encoding's pattern as a DFA for anchored searches that only need where a match ends
    /// (forward only, no capture states, minimised), serialised little-endian: what
    /// `shared/data/tokenizer/{name}.dfa` holds. Determinising it takes about a second; the
    /// `tokenizer_dfa` example writes the files and the test command checks them against this.
    #[cfg(feature = "tokenizer-build")]
    pub fn pattern_dfa(self) -> Result<Vec<u8>, String> {
        let pattern = match self {
            Encoding::O200kBase => O200K_PATTERN,
            Encoding::Cl100kBase => CL100K_PATTERN,
        };
        use regex_automata::nfa::thompson::{self, WhichCaptures};
        let dfa = dense::Builder::new()
            .configure(dense::Config::new().minimize(true).start_kind(regex_automata::dfa::StartKind::Anchored))
            .thompson(thompson::Config::new().which_captures(WhichCaptures::None))
            .build(pattern)
            .map_err(|e| e.to_string())?;
        // The serialisation starts after whatever padding aligned it in the buffer.
        let (bytes, padding) = dfa.to_bytes_little_endian();
        Ok(bytes[padding..].to_vec())
    }
}

/// A pattern's DFA, read in place from its serialised form.
fn pattern(serialised: &'static [u8]) -> dense::DFA<&'static [u32]> {
    // The files are checked against the patterns by the test command; they cannot fail to load.
    dense::DFA::from_bytes(serialised).map(|(dfa, _)| dfa).unwrap_or_else(|e| unreachable!("a tokenizer DFA does not load: {e}"))
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// A hash of a token's bytes, eight at a time: most tokens are at most eight bytes, whose hash is
/// [`short_hash`] of them as one little-endian word.
fn hash(bytes: &[u8]) -> u32 {
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut rest = bytes;
    while let Some((word, tail)) = rest.split_first_chunk::<8>().filter(|(_, tail)| !tail.is_empty()) {
        h = (h ^ u64::from_le_bytes(*word)).wrapping_mul(K).rotate_left(29);
        rest = tail;
    }
    finish(h, short_word(rest))
}

/// `bytes` (at most 8) as one little-endian word, the rest zero: two reads that may overlap (the
/// first and last 4 or 2 bytes), whose shared bytes are the same.
#[inline]
fn short_word(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let two = |at: usize| bytes.get(at..).and_then(<[u8]>::first_chunk::<2>).map_or(0, |b| u64::from(u16::from_le_bytes(*b)));
    let four = |at: usize| bytes.get(at..).and_then(<[u8]>::first_chunk::<4>).map_or(0, |b| u64::from(u32::from_le_bytes(*b)));
    match n {
        0 => 0,
        1 => u64::from(bytes[0]),
        2..=3 => two(0) | two(n - 2) << (8 * (n - 2)),
        4..=7 => four(0) | four(n - 4) << (8 * (n - 4)),
        _ => bytes.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b)),
    }
}

/// The `len` (at most 8) bytes of `blob` from `start` as one word, as [`short_word`] gives them:
/// one unaligned read masked to the length, except near the blob's end.
#[inline]
fn word_at(blob: &[u8], start: usize, len: usize) -> u64 {
    match blob.get(start..start + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        Some(word) if len < 8 => u64::from_le_bytes(word) & ((1 << (8 * len)) - 1),
        Some(word) => u64::from_le_bytes(word),
        None => short_word(blob.get(start..start + len).unwrap_or_default()),
    }
}

/// [`hash`] of `len` (1-8) bytes held in the low bytes of `word`, the rest zero.
fn short_hash(len: usize, word: u64) -> u32 {
    finish((len as u64).wrapping_mul(K), word)
}

fn finish(h: u64, word: u64) -> u32 {
    ((h ^ word).wrapping_mul(K) >> 32) as u32
}

impl Vocab {
    fn load(table: &'static [u8], dfa: &'static [u8]) -> Vocab {
        let count = table.get(5..9).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes) as usize;
        let lengths = table.get(9..9 + count).unwrap_or_default();
        let blob = table.get(9 + count..).unwrap_or_default();
        let size = (count * 2).next_power_of_two().max(2);
        let mask = size - 1;
        let mut starts = Vec::with_capacity(count + 1);
        let mut slots = vec![0u32; size];
        // One pass: where each token starts, and its slot. A short token away from the end of
        // the blob is hashed from one unaligned read, masked to its length.
        let mut at = 0usize;
        for (rank, &len) in lengths.iter().enumerate() {
            starts.push(at as u32);
            let len = usize::from(len);
            let h = if (1..=8).contains(&len) {
                short_hash(len, word_at(blob, at, len))
            } else {
                hash(blob.get(at..at + len).unwrap_or_default())
            };
            let mut slot = h as usize & mask;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = rank as u32 + 1;
            at += len;
        }
        starts.push(at as u32);
        Vocab { blob, starts, slots, serialised: dfa, pattern: OnceLock::new() }
    }

    fn pattern(&self) -> &dense::DFA<&'static [u32]> {
        self.pattern.get_or_init(|| pattern(self.serialised))
    }

    fn token(&self, rank: u32) -> &'static [u8] {
        let (start, end) = (self.starts[rank as usize] as usize, self.starts[rank as usize + 1] as usize);
        &self.blob[start..end]
    }

    /// Token `rank` as one little-endian word (see [`word_at`]), if it is `len` bytes long and
    /// `len` is at most 8.
    fn short_token(&self, rank: u32, len: usize) -> Option<u64> {
        let (start, end) = (self.starts[rank as usize] as usize, self.starts[rank as usize + 1] as usize);
        (end - start == len && len <= 8).then(|| word_at(self.blob, start, len))
    }

    /// The rank of `bytes`, if they are a token. Most pieces and parts are at most eight bytes:
    /// those are hashed and compared as one word.
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let short = (bytes.len() <= 8).then(|| short_word(bytes));
        let mut slot = short.map_or_else(|| hash(bytes), |word| short_hash(bytes.len(), word)) as usize & mask;
        loop {
            let r = self.slots[slot].checked_sub(1)?;
            let same = match short {
                Some(word) => self.short_token(r, bytes.len()) == Some(word),
                None => self.token(r) == bytes,
            };
            if same {
                return Some(r);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Hands each token of `piece` to `part`, in order. Short pieces (almost
    /// all) are merged by scanning the pairs, in place on the stack; long ones through a heap, in
    /// O(n log n), so a prompt made of one enormous word costs no more than its length warrants.
    /// Both merge the same pair at every step: the lowest rank, the leftmost of equals.
    fn split(&self, piece: &[u8], mut part: impl FnMut(&[u8])) {
        if piece.len() > LONG_PIECE {
            self.merge_long(piece).windows(2).for_each(|w| part(&piece[w[0]..w[1]]));
        } else {
            let mut bounds = [0u8; LONG_PIECE + 1];
            let n = self.merge_short(piece, &mut bounds);
            bounds[..n].windows(2).for_each(|w| part(&piece[usize::from(w[0])..usize::from(w[1])]));
        }
    }

    /// Where `piece` splits into tokens: the start of each, then its end.
    fn merge_long(&self, piece: &[u8]) -> Vec<usize> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = piece.len();
        // Parts as a list: `next[i]` is where the part starting at `i` ends; `prev[i]` where the
        // part before it starts. A merged-away part is dead.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        // (rank, start of the left part, end of the right part), smallest first.
        let mut heap = BinaryHeap::new();
        let pair = |next: &[usize], i: usize| -> Option<(u32, usize)> {
            let j = *next.get(i)?;
            let end = *next.get(j)?;
            self.rank(&piece[i..end]).map(|r| (r, end))
        };
        for i in 0..n.saturating_sub(1) {
            if let Some((r, end)) = pair(&next, i) {
                heap.push(Reverse((r, i, end)));
            }
        }
        while let Some(Reverse((_, i, end))) = heap.pop() {
            // Stale: the left part is gone, or either part has grown since this pair was seen.
            if !alive[i] || next.get(next[i]).copied() != Some(end) {
                continue;
            }
            let j = next[i];
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            if let Some((r, e)) = pair(&next, i) {
                heap.push(Reverse((r, i, e)));
            }
            if let Some(p) = prev.get(i).copied().filter(|p| *p != usize::MAX)
                && let Some((r, e)) = pair(&next, p)
            {
                heap.push(Reverse((r, p, e)));
            }
        }
        let mut bounds = Vec::new();
        let mut at = 0;
        while at < n {
            bounds.push(at);
            at = next[at];
        }
        bounds.push(n);
        bounds
    }

    /// [`Vocab::merge_long`] for a piece of at most [`LONG_PIECE`] bytes, without allocating: the
    /// boundaries go into `bounds`, and how many there are is returned.
    fn merge_short(&self, piece: &[u8], bounds: &mut [u8; LONG_PIECE + 1]) -> usize {
        const { assert!(LONG_PIECE <= u8::MAX as usize) };
        debug_assert!(piece.len() <= LONG_PIECE, "a long piece goes to merge_long");
        let mut n = piece.len().min(LONG_PIECE) + 1;
        for (i, b) in bounds[..n].iter_mut().enumerate() {
            *b = i as u8;
        }
        // The rank of each part joined with the next; the last part has none.
        let pair = |bounds: &[u8], i: usize| match bounds.get(i..i + 3) {
            Some(&[start, _, end]) => self.rank(&piece[usize::from(start)..usize::from(end)]).unwrap_or(u32::MAX),
            _ => u32::MAX,
        };
        let mut ranks = [u32::MAX; LONG_PIECE];
        for (i, r) in ranks[..n.saturating_sub(2)].iter_mut().enumerate() {
            *r = pair(&bounds[..n], i);
        }
        loop {
            // The lowest rank, the leftmost of equals, while it is a token.
            let (mut i, mut lowest) = (0, u32::MAX);
            for (j, &r) in ranks[..n - 1].iter().enumerate() {
                if r < lowest {
                    (i, lowest) = (j, r);
                }
            }
            if lowest == u32::MAX {
                return n;
            }
            bounds.copy_within(i + 2..n, i + 1);
            ranks.copy_within(i + 2..n - 1, i + 1);
            n -= 1;
            ranks[i] = pair(&bounds[..n], i);
            if i > 0 {
                ranks[i - 1] = pair(&bounds[..n], i - 1);
            }
        }
    }

    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(r) = self.rank(piece) {
            out.push(r);
            return;
        }
        // Every single byte is a token, so every part is.
        self.split(piece, |part| out.extend(self.rank(part)));
    }

    fn count_piece(&self, piece: &[u8]) -> usize {
        if self.rank(piece).is_some() {
            return 1;
        }
        let mut n = 0;
        self.split(piece, |_| n += 1);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_path_splits_as_the_automaton_does() {
        // Every branch of `ascii_piece`, and the non-ASCII characters that must send a piece to
        // the automaton: a letter, `ſ` (which `(?i)s` matches), a Greek letter, a no-break space,
        // a superscript digit, a dash, a combining mark.
        let alphabet = [
            "a", "z", "A", "Z", "'", "s", "S", "t", "T", "r", "R", "e", "v", "l", "L", "d", "m", "0", "7", "9", " ", " ", "\t", "\n", "\r",
            "\x0B", "\x0C", ",", ".", "/", "$", "-", "_", "\u{1}", "\u{1f}", "é", "ſ", "Ω", "\u{a0}", "²", "—", "\u{301}", "'s", "'ll",
            "'Re", "'vE", "12345", "\r\n", " \n ",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut fast, mut pieces) = (0, 0);
        for _ in 0..20_000 {
            let len = next(16);
            let text: String = (0..len).map(|_| alphabet[next(alphabet.len())]).collect();
            for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
                let split = |fast: bool| {
                    let mut out = Vec::new();
                    enc.pieces_with(&text, fast, |p, _| out.push(p.to_vec()));
                    out
                };
                assert_eq!(split(true), split(false), "{} on {text:?}", enc.name());
                let mut at = 0;
                for piece in split(false) {
                    pieces += 1;
                    fast += usize::from(ascii_piece(enc, text.as_bytes(), at).is_some());
                    at += piece.len();
                }
            }
        }
        // The fast path is taken for most pieces even in this deliberately mixed text.
        assert!(fast * 2 > pieces, "{fast} of {pieces}");
    }

    #[test]
    fn ranks_are_found_as_by_a_map_of_every_token() {
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let vocab = enc.vocab();
            let count = vocab.starts.len() as u32 - 1;
            let all: std::collections::HashMap<&[u8], u32> = (0..count).map(|r| (vocab.token(r), r)).collect();
            assert_eq!(all.len(), count as usize, "{}: tokens are distinct", enc.name());
            // Every token, then every pair of neighbouring tokens and each with a byte cut off:
            // short and long, tokens and not.
            for r in 0..count {
                assert_eq!(vocab.rank(vocab.token(r)), Some(r), "{}", enc.name());
                let pair = [vocab.token(r), vocab.token((r + 1) % count)].concat();
                for bytes in [&pair[..], &pair[..pair.len() - 1], &pair[1..]] {
                    assert_eq!(vocab.rank(bytes), all.get(bytes).copied(), "{}: {bytes:?}", enc.name());
                }
            }
            assert_eq!(vocab.rank(b""), None);
        }
    }

    #[test]
    fn known_encodings_of_tiktoken() {
        // From Python tiktoken 0.14.0, `encode_ordinary`.
        let text = "Hello world, héllo 世界!  \n\n  x";
        assert_eq!(Encoding::O200kBase.encode(text), [13225, 2375, 11, 37024, 72807, 185558, 0, 11691, 220, 1215]);
        assert_eq!(Encoding::Cl100kBase.encode(text), [9906, 1917, 11, 305, 19010, 385, 220, 3574, 244, 98220, 0, 19124, 220, 865]);
        assert_eq!(Encoding::O200kBase.count(text), 10);
        assert_eq!(Encoding::O200kBase.count(""), 0);
    }

    #[test]
    fn chat_prompts_and_embeddings_inputs_are_counted_exactly() {
        let chat: crate::chat::ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant."},
            {"role":"user","content":"Wie viel kostet ein Token? 你好！"},{"role":"assistant","content":"It depends.","name":"bot"}]}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        // Python tiktoken, OpenAI's chat formula: 3 a message, 1 a name, 3 to prime the answer.
        assert_eq!(chat.prompt_tokens(Some(Encoding::O200kBase)), 35);
        assert_eq!(chat.prompt_tokens(None), chat.estimate_prompt_tokens());
        let embed: crate::embeddings::EmbeddingsRequest =
            serde_json::from_str(r#"{"model":"e","input":["hello embeddings world","a second input",[1,2,3,4]]}"#)
                .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(embed.input_tokens(Some(Encoding::Cl100kBase)), 3 + 3 + 4);
    }

    #[test]
    fn long_pieces_merge_as_short_ones_do() {
        let v = Encoding::O200kBase.vocab();
        let words =
            ["internationalization", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "xyzzyplughfoo", "Größenverhältnisse", "ééééééé"];
        for w in words {
            let long = w.repeat(40);
            for len in 1..=LONG_PIECE {
                let piece = &long.as_bytes()[..len];
                let mut bounds = [0u8; LONG_PIECE + 1];
                let n = v.merge_short(piece, &mut bounds);
                let short: Vec<usize> = bounds[..n].iter().map(|&b| usize::from(b)).collect();
                assert_eq!(v.merge_long(piece), short, "{w} {len}");
            }
        }
        // One enormous word: linearithmic, not quadratic (the short merge would take minutes).
        let huge = "ab".repeat(200_000);
        assert!(Encoding::Cl100kBase.count(&huge) > 1_000);
    }

    #[test]
    fn models_map_to_their_encodings() {
        for (model, enc) in [
            ("gpt-4o-mini-2024-07-18", Some(Encoding::O200kBase)),
            ("o3-mini", Some(Encoding::O200kBase)),
            ("gpt-5", Some(Encoding::O200kBase)),
            ("openai/gpt-4.1", Some(Encoding::O200kBase)),
            ("ft:gpt-4o-mini:acme::abc", Some(Encoding::O200kBase)),
            ("gpt-4-turbo", Some(Encoding::Cl100kBase)),
            ("gpt-3.5-turbo", Some(Encoding::Cl100kBase)),
            ("text-embedding-3-small", Some(Encoding::Cl100kBase)),
            ("claude-3-5-sonnet", None),
            ("llama-3.1-8b", None),
        ] {
            assert_eq!(Encoding::for_model(model), enc, "{model}");
        }
    }
}
