#!/usr/bin/env bash
# Runs edgegate locally in the real Workers runtime: `wrangler dev` with local KV and Durable
# Object state in .wrangler/state (git-ignored), the demo policy published, the built-in mock
# provider answering. Usage: npm run dev   (PORT=8787 by default)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
PORT="${PORT:-8787}"
STATE=.wrangler/state

ADMIN_KEY=sk-edgegate-demo-admin

cat >&2 <<MSG

  edgegate is starting on http://127.0.0.1:$PORT (the first start builds the worker)
  demo key:   sk-edgegate-demo      models: demo-chat, gpt-4o-mini (built-in mock provider)
  admin key:  $ADMIN_KEY   (bootstrap admin for /admin, local only)

  curl http://127.0.0.1:$PORT/v1/chat/completions \\
    -H 'Authorization: Bearer sk-edgegate-demo' -H 'Content-Type: application/json' \\
    -d '{"model":"demo-chat","messages":[{"role":"user","content":"Hello"}]}'

MSG
# The demo policy is published through the gateway's own admin API once the worker answers.
node deploy/local/publish-demo.mjs "http://127.0.0.1:$PORT" "$ADMIN_KEY" deploy/local/demo-policy.json &
exec wrangler dev --local --persist-to "$STATE" --ip 127.0.0.1 --port "$PORT" --var "EDGEGATE_ADMIN_KEY:$ADMIN_KEY" --var "EDGEGATE_ADMIN_API:on"
