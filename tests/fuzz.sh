#!/usr/bin/env bash
# Coverage-guided fuzzing of everything that parses or inspects untrusted bytes (fuzz/): the
# targets are built with stable rustc's sanitizer-coverage flags — what `cargo fuzz build
# --sanitizer none` passes — plus debug assertions and overflow checks, then each runs for a
# bounded time. Files in fuzz/regressions/<target>/ (inputs that once failed) are replayed first.
# A crash, a panic or an input slower than 5 s fails the run and is kept under
# $EDGEGATE_CACHE/fuzz-artifacts/. The growing corpus lives in the cache, not the clone.
# Usage: bash tests/fuzz.sh [seconds per target, default 8] [target …]
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/local/setup.sh"
cd "$ROOT/fuzz"
seconds="${1:-8}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(firewall guard sse stream_decoders requests policy)
host=$(rustc -vV | sed -n 's/^host: //p')
target_dir="$EDGEGATE_CACHE/fuzz-target"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  CARGO_TARGET_DIR="$target_dir" cargo build --locked --release --quiet --target "$host"
mkdir -p "$EDGEGATE_CACHE/fuzz-artifacts"
for t in "${targets[@]}"; do
  bin="$target_dir/$host/release/$t"
  if compgen -G "regressions/$t/*" >/dev/null; then
    "$bin" regressions/"$t"/* 2>"$EDGEGATE_CACHE/fuzz-artifacts/$t-replay.log" || { cat "$EDGEGATE_CACHE/fuzz-artifacts/$t-replay.log" >&2; exit 1; }
  fi
  corpus="$EDGEGATE_CACHE/fuzz-corpus/$t"
  mkdir -p "$corpus"
  log="$EDGEGATE_CACHE/fuzz-artifacts/$t.log"
  if ! "$bin" "$corpus" "seeds/$t" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$EDGEGATE_CACHE/fuzz-artifacts/$t-" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz target $t failed; the input is under $EDGEGATE_CACHE/fuzz-artifacts/ — add it to fuzz/regressions/$t/" >&2
    exit 1
  fi
  # Keep the corpus small enough to replay well within the budget: past 5,000 inputs, keep only
  # those that add coverage (libFuzzer's merge).
  if [ "$(ls "$corpus" | wc -l)" -gt 5000 ]; then
    rm -rf "$corpus.min" && mkdir -p "$corpus.min"
    if "$bin" -merge=1 -timeout=5 -rss_limit_mb=2048 "$corpus.min" "$corpus" >"$log.merge" 2>&1; then
      rm -rf "$corpus" && mv "$corpus.min" "$corpus"
    fi
  fi
  runs=$(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  printf '  fuzz %-16s %9s runs in %ss, %s, corpus %s\n' "$t" "${runs:-?}" "$seconds" "${cov:-cov: ?}" "$(ls "$corpus" | wc -l)" >&2
done
