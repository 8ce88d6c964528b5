# Sourced by deploy/local/dev.sh and tests/run.sh: installs what the build needs, idempotently,
# and exports the environment worker-build reads. Nothing here downloads from GitHub:
# wasm-bindgen and worker-build are built from crates.io, wasm-opt and esbuild come from npm.
#
# Built tools live in a per-user cache outside the clone (EDGEGATE_CACHE), keyed by version, so a
# fresh clone on the same machine reuses them.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export EDGEGATE_CACHE="${EDGEGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgegate}"
WASM_BINDGEN_VERSION=0.2.130   # must equal the wasm-bindgen version in Cargo.lock
WORKER_BUILD_VERSION=0.8.7

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Offline switches for wrangler.
export WRANGLER_SEND_METRICS=false WRANGLER_SEND_ERROR_REPORTS=false WRANGLER_HIDE_BANNER=true CLOUDFLARE_CF_FETCH_ENABLED=false

# Rust targets pinned in rust-toolchain.toml (RUSTUP_AUTO_INSTALL may be off).
(cd "$ROOT" && rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install)
(cd "$ROOT" && rustup target add wasm32-unknown-unknown wasm32-wasip1 wasm32-wasip2 >/dev/null 2>&1)

# npm packages, exactly as locked; reinstalled only when the lockfile changes.
stamp="$ROOT/node_modules/.edgegate-lock"
if [ ! -f "$stamp" ] || ! cmp -s "$ROOT/package-lock.json" "$stamp"; then
  say "npm ci"
  (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$ROOT/package-lock.json" "$stamp"
fi

# A cargo-installed tool, built once per version into the cache (debug builds: same output,
# a third of the build time).
cached_tool() { # crate version binary
  local dir="$EDGEGATE_CACHE/tools/$1-$2"
  if [ ! -x "$dir/bin/$3" ]; then
    say "building $1 $2 into $dir (once per machine)"
    cargo install --quiet --debug "$1" --version "=$2" --root "$dir" >&2
  fi
  echo "$dir/bin"
}
bindgen_bin="$(cached_tool wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen)"
worker_build_bin="$(cached_tool worker-build "$WORKER_BUILD_VERSION" worker-build)"

export PATH="$worker_build_bin:$bindgen_bin:$ROOT/node_modules/.bin:$PATH"
export WASM_BINDGEN_BIN="$bindgen_bin/wasm-bindgen"
export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild"
