//! Tokenizes a corpus (one JSON string per line) with both encodings and prints, per document and
//! encoding, `name<TAB>count<TAB>digest` (the first 16 hex digits of the SHA-256 of the token ids
//! joined by spaces) — what `tests/tokenizer/compare.py` compares with tiktoken. With `--bench`
//! it prints timings instead: the first use of each encoding on ASCII text (its table built), then
//! on text that is not (its pattern's automaton read), and tokens/s.
//!
//! Usage: cargo run --release -p edgegate-core --example tokenize -- CORPUS|- [--bench]
//! (`-` reads the corpus from standard input, as under `spin-test-host --run`).
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::print_stderr, clippy::panic, missing_docs)]

use std::time::Instant;

use edgegate_core::tokenizer::Encoding;
use sha2::{Digest, Sha256};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: tokenize CORPUS [--bench]");
        std::process::exit(2);
    };
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).unwrap_or_else(|e| panic!("stdin: {e}"))
    } else {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let docs: Vec<String> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let bench = args.iter().any(|a| a == "--bench");
    for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let t = Instant::now();
        let first = enc.count("warm up");
        let load = t.elapsed();
        if bench {
            let t = Instant::now();
            enc.count("naïve café");
            let wide = t.elapsed();
            let bytes: usize = docs.iter().map(String::len).sum();
            let t = Instant::now();
            let tokens: usize = docs.iter().map(|d| enc.count(d)).sum();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{}: first use {:.2} ms ({first} tokens), then not ASCII {:.2} ms, {tokens} tokens in {:.1} ms: {:.2} M tokens/s, {:.1} MB/s",
                enc.name(),
                load.as_secs_f64() * 1e3,
                wide.as_secs_f64() * 1e3,
                secs * 1e3,
                tokens as f64 / secs / 1e6,
                bytes as f64 / secs / 1e6
            );
            continue;
        }
        for d in &docs {
            let ids = enc.encode(d);
            let joined = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
            let digest: String = Sha256::digest(joined.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
            println!("{}\t{}\t{digest}", enc.name(), ids.len());
        }
    }
}
