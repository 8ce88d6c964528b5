#!/usr/bin/env bash
# Installs what tests/bench/peers.mjs runs, from the registries, into the per-user cache:
# oha (crates.io), Portkey's gateway (npm) and the LiteLLM proxy (PyPI), at pinned versions.
# Not part of the test command.
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/setup.sh"
set -euo pipefail
OHA_VERSION=1.16.0
PORTKEY_VERSION=1.15.2
LITELLM_VERSION=1.108.7
tools="$EDGEGATE_CACHE/tools/oha"
if ! "$tools/bin/oha" --version 2>/dev/null | grep -q "$OHA_VERSION"; then
  say "building oha $OHA_VERSION from crates.io into $tools"
  cargo install --quiet --locked --root "$tools" oha --version "$OHA_VERSION"
fi
bench="$EDGEGATE_CACHE/bench"
mkdir -p "$bench"
if [ ! -f "$bench/portkey/node_modules/@portkey-ai/gateway/package.json" ] || ! grep -q "\"$PORTKEY_VERSION\"" "$bench/portkey/node_modules/@portkey-ai/gateway/package.json"; then
  say "installing @portkey-ai/gateway $PORTKEY_VERSION into $bench/portkey"
  npm install --silent --prefix "$bench/portkey" "@portkey-ai/gateway@$PORTKEY_VERSION"
fi
if ! "$bench/litellm-venv/bin/pip" show litellm 2>/dev/null | grep -q "^Version: $LITELLM_VERSION$"; then
  say "installing litellm[proxy] $LITELLM_VERSION into $bench/litellm-venv"
  python3 -m venv "$bench/litellm-venv"
  "$bench/litellm-venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi
