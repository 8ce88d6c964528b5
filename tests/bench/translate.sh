#!/usr/bin/env bash
# Translation overhead per request, native and wasm, side by side (the same program,
# shared/examples/bench_translate.rs, natively and as a WASIp2 component under wasmtime).
# Usage: bash tests/bench/translate.sh      Not part of the test command: it asserts nothing.
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/setup.sh"
cd "$ROOT"
HARNESS_TARGET="$EDGEGATE_CACHE/harness-target"
(cd tests/harness && CARGO_TARGET_DIR="$HARNESS_TARGET" cargo build --release --locked --quiet)
cargo build --quiet --release -p edgegate-core --features testkit --example bench_translate
cargo build --quiet --release -p edgegate-core --features testkit --example bench_translate --target wasm32-wasip2
native=$(target/release/examples/bench_translate)
wasm=$("$HARNESS_TARGET/release/spin-test-host" --run target/wasm32-wasip2/release/examples/bench_translate.wasm)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-60s %10s %10s %7s\n' "case (median of 15 batches)" "native µs" "wasm µs" "wasm/x"
paste -d'|' <(echo "$native") <(echo "$wasm") | while IFS='|' read -r n w; do
  name=$(echo "$n" | sed -E 's/ +[0-9.]+ µs$//')
  nv=$(echo "$n" | grep -oE '[0-9.]+ µs$' | cut -d' ' -f1)
  wv=$(echo "$w" | grep -oE '[0-9.]+ µs$' | cut -d' ' -f1)
  printf '%-60s %10s %10s %7.2f\n' "$name" "$nv" "$wv" "$(echo "$wv / $nv" | bc -l)"
done
