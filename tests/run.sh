#!/usr/bin/env bash
# Runs every test: core unit and pipeline tests, the core's portability and boundary checks, then
# the end-to-end suites against the built wasm in workerd (Miniflare, configured from
# wrangler.toml) and in the Spin test host (driven by spin.toml), both through the upstream
# simulator. Usage: npm test
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/local/setup.sh"
cd "$ROOT"
export CARGO_TERM_COLOR=never
HARNESS_TARGET="$EDGEGATE_CACHE/harness-target"

say "building the test harness (Spin test host, upstream simulator, the Spin pre-initialiser) into $HARNESS_TARGET"
(cd tests/harness && CARGO_TARGET_DIR="$HARNESS_TARGET" cargo build --release --locked --quiet)
export EDGEGATE_SPIN_HOST="$HARNESS_TARGET/release/spin-test-host"
export EDGEGATE_UPSTREAM_SIM="$HARNESS_TARGET/release/upstream-sim"

# The official Python SDKs, pinned, in a virtualenv keyed by the requirements file's hash.
venv="$EDGEGATE_CACHE/venv-$(sha256sum tests/e2e/python/requirements.txt | cut -c1-12)"
if [ ! -f "$venv/.complete" ]; then
  say "installing the official Python SDKs into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/e2e/python/requirements.txt
  touch "$venv/.complete"
fi
export EDGEGATE_PYTHON="$venv/bin/python"

# A Redis server for the Spin ledger on Redis: Debian's redis-tools (whose one binary is also
# the server, chosen by its name) and its two libraries, unpacked into the cache.
redis_dir="$EDGEGATE_CACHE/tools/redis-7"
if [ ! -x "$redis_dir/redis-server" ]; then
  say "fetching Debian's Redis into $redis_dir"
  tmp=$(mktemp -d)
  pkgs="redis-tools libjemalloc2 liblzf1"
  (cd "$tmp" && { apt-get download $pkgs >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download $pkgs >/dev/null 2>&1; }; } \
    && for f in *.deb; do dpkg-deb -x "$f" x; done) || { echo "could not fetch Debian's redis-tools for a Redis server" >&2; exit 1; }
  mkdir -p "$redis_dir/lib"
  cp "$tmp"/x/usr/lib/*/libjemalloc.so.2 "$tmp"/x/usr/lib/*/liblzf.so.1 "$redis_dir/lib/"
  cp "$tmp/x/usr/bin/redis-check-rdb" "$redis_dir/redis-server.bin"
  printf '#!/bin/sh\nexec env LD_LIBRARY_PATH="%s/lib" "%s/redis-server.bin" "$@"\n' "$redis_dir" "$redis_dir" > "$redis_dir/redis-server"
  chmod +x "$redis_dir/redis-server"
  rm -rf "$tmp"
fi
export EDGEGATE_REDIS_SERVER="$redis_dir/redis-server"

say "core: formatting and lints (the core may not read clocks or draw randomness)"
cargo fmt --all --check
cargo clippy --locked --quiet -p edgegate-core --all-targets --features testkit,schema,tokenizer-build -- -D warnings
cargo clippy --locked --quiet -p edgegate-admin -p edgegate-jwt --all-targets -- -D warnings

say "core: the dependency tree holds no host SDK, runtime or HTTP client"
forbidden='^(worker|worker-sys|spin-sdk|wasm-bindgen|js-sys|web-sys|tokio|reqwest|hyper|wasmtime|ureq|isahc|surf) '
if cargo tree --locked -p edgegate-core -e normal --target all --prefix none | grep -E "$forbidden"; then
  echo "edgegate-core must not depend on the crates above" >&2; exit 1
fi

say "core: builds for wasm32-unknown-unknown, wasm32-wasip2 and native"
cargo build --locked --quiet -p edgegate-core --target wasm32-unknown-unknown
cargo build --locked --quiet -p edgegate-core --target wasm32-wasip2

say "core, JWT verifier and admin CLI: tests"
cargo test --locked --quiet -p edgegate-core -p edgegate-jwt -p edgegate-admin --features edgegate-core/schema
cargo build --locked --quiet -p edgegate-admin
export EDGEGATE_ADMIN_CLI="$ROOT/target/debug/edgegate-admin"

say "deploy check: the Spin manifest, runtime configurations and SpinKube SpinApp (edgegate-admin check-spin)"
"$EDGEGATE_ADMIN_CLI" check-spin spin.toml --runtime-config deploy/spin/runtime-config.single.toml --policy deploy/local/demo-policy.json
"$EDGEGATE_ADMIN_CLI" check-spin spin.toml --runtime-config deploy/spin/runtime-config.shared.toml --spinapp deploy/spin/spinapp.yaml --policy deploy/local/demo-policy.json

say "tokenizer: its patterns' DFAs are what the patterns give (tokenizer_dfa --check), and token for token identical to Python tiktoken on a 1.5 MB mixed-language corpus (tests/tokenizer/compare.py)"
cargo run --locked --quiet --release -p edgegate-core --features tokenizer-build --example tokenizer_dfa -- --check
cargo build --locked --quiet --release -p edgegate-core --example tokenize
"$EDGEGATE_PYTHON" tests/tokenizer/compare.py target/release/examples/tokenize

say "telemetry: Prometheus rules and Grafana dashboards checked, rules unit-tested, with promtool (Debian's prometheus package)"
promtool="$EDGEGATE_CACHE/tools/promtool/promtool"
if [ ! -x "$promtool" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download prometheus >/dev/null 2>&1; }; } \
    && dpkg-deb -x prometheus_*.deb x) || { echo "could not fetch Debian's prometheus package for promtool" >&2; exit 1; }
  mkdir -p "$(dirname "$promtool")" && cp "$tmp/x/usr/bin/promtool" "$promtool"
  rm -rf "$tmp"
fi
"$promtool" check rules deploy/telemetry/rules.yaml
(cd deploy/telemetry && "$promtool" test rules rules.test.yaml)
node deploy/dashboards/check.mjs "$promtool"

say "fuzzing: every parser and detector of untrusted bytes, 8 s per target (tests/fuzz.sh)"
(cd fuzz && cargo fmt --check)
bash tests/fuzz.sh 8

say "building the Worker (worker-build) and the Spin component"
mkdir -p target
(cd edge/cloudflare && worker-build --release >"$ROOT/target/worker-build.log" 2>&1) || { cat target/worker-build.log >&2; exit 1; }
cargo build --locked --quiet -p edgegate-spin --target wasm32-wasip2 --release
"$HARNESS_TARGET/release/edgegate-preinit" target/wasm32-wasip2/release/edgegate_spin.wasm target/wasm32-wasip2/release/edgegate_spin.preinit.wasm
for f in edge/cloudflare/build/index_bg.wasm target/wasm32-wasip2/release/edgegate_spin.wasm target/wasm32-wasip2/release/edgegate_spin.preinit.wasm; do
  printf '  %-56s %9d bytes raw %8d gzip\n' "$f" "$(stat -c %s "$f")" "$(gzip -9c "$f" | wc -c)" >&2
done
# With its seed given, pre-initialisation is reproducible byte for byte.
for n in 1 2; do
  EDGEGATE_PREINIT_SEED=00112233445566778899aabbccddeeff "$HARNESS_TARGET/release/edgegate-preinit" \
    target/wasm32-wasip2/release/edgegate_spin.wasm "target/preinit-seeded-$n.wasm" 2>target/preinit-seeded.log \
    || { cat target/preinit-seeded.log >&2; exit 1; }
done
cmp target/preinit-seeded-1.wasm target/preinit-seeded-2.wasm || { echo "two pre-initialisations with one seed differ" >&2; exit 1; }
rm -f target/preinit-seeded-*.wasm

say "deploy check: wrangler deploy --dry-run of the staging and production environments (no account)"
for env in staging production; do
  out=$(mktemp -d)
  log="$ROOT/target/deploy-$env.log"
  npx wrangler deploy --dry-run --outdir "$out" --env "$env" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  for binding in "env.POLICY" "env.LEDGER (Ledger)"; do
    grep -qF "$binding" "$log" || { cat "$log" >&2; echo "the $env environment lacks $binding" >&2; exit 1; }
  done
  test -s "$out/entry.js" && ls "$out"/*index_bg.wasm >/dev/null || { echo "wrangler wrote no bundle (entry.js and the wasm) for $env" >&2; exit 1; }
  rm -rf "$out"
done

say "end-to-end: workerd and the Spin host, with the official OpenAI and Anthropic SDKs (Node and Python)"
node --test --test-concurrency=1 tests/e2e/

say "game-day drills, short form (tests/drills/run.mjs; the monthly full form is in deploy/runbooks/game-days.md)"
node tests/drills/run.mjs --short
