#!/usr/bin/env bash
# A benchmark example of the core, native and wasm side by side: the same program
# (shared/examples/EXAMPLE.rs) natively and as a WASIp2 component under wasmtime.
# Usage: bash tests/bench/native-vs-wasm.sh [bench_translate|bench_policy|bench_firewall]
# Not part of the test command: it asserts nothing.
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/setup.sh"
cd "$ROOT"
HARNESS_TARGET="$EDGEGATE_CACHE/harness-target"
(cd tests/harness && CARGO_TARGET_DIR="$HARNESS_TARGET" cargo build --release --locked --quiet)
EXAMPLE="${1:-bench_translate}"
cargo build --quiet --release -p edgegate-core --features testkit --example "$EXAMPLE"
cargo build --quiet --release -p edgegate-core --features testkit --example "$EXAMPLE" --target wasm32-wasip2
native=$("target/release/examples/$EXAMPLE")
wasm=$("$HARNESS_TARGET/release/spin-test-host" --run "target/wasm32-wasip2/release/examples/$EXAMPLE.wasm")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-60s %12s %12s %7s\n' "case (µs: median of 15 batches)" "native" "wasm" "wasm/x"
paste -d'|' <(echo "$native") <(echo "$wasm") | while IFS='|' read -r n w; do
  name=$(echo "$n" | sed -E 's/ +[0-9.]+ (µs|bytes)$//')
  unit=$(echo "$n" | grep -oE '(µs|bytes)$')
  nv=$(echo "$n" | grep -oE '[0-9.]+ (µs|bytes)$' | cut -d' ' -f1)
  wv=$(echo "$w" | grep -oE '[0-9.]+ (µs|bytes)$' | cut -d' ' -f1)
  printf '%-60s %12s %12s %7.2f %s\n' "$name" "$nv" "$wv" "$(echo "$wv / $nv" | bc -l)" "$unit"
done
