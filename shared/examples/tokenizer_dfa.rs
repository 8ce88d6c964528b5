//! Determinises each encoding's pattern (`Encoding::pattern_dfa`) and writes it to
//! `shared/data/tokenizer/{name}.dfa`, which the tokenizer reads in place; with `--check`, only
//! compares, and fails if a file is not what the pattern gives (the test command runs that).
//!
//! Usage: cargo run --release -p edgegate-core --features tokenizer-build --example tokenizer_dfa [-- --check]
#![allow(clippy::print_stderr, missing_docs)]

use edgegate_core::tokenizer::Encoding;

fn main() -> std::process::ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let mut stale = false;
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let path = format!("{}/data/tokenizer/{}.dfa", env!("CARGO_MANIFEST_DIR"), encoding.name());
        let built = match encoding.pattern_dfa() {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("{}: the pattern does not determinise: {e}", encoding.name());
                return std::process::ExitCode::FAILURE;
            }
        };
        let current = std::fs::read(&path).ok();
        if current.as_deref() == Some(built.as_slice()) {
            eprintln!("{path}: current ({} bytes)", built.len());
        } else if check {
            eprintln!("{path}: stale or missing; run this example without --check to rewrite it");
            stale = true;
        } else if let Err(e) = std::fs::write(&path, &built) {
            eprintln!("{path}: {e}");
            return std::process::ExitCode::FAILURE;
        } else {
            eprintln!("{path}: written ({} bytes)", built.len());
        }
    }
    if stale { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
}
