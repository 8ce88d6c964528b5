// The official OpenAI and Anthropic Python SDKs against the built wasm in both runtimes. The
// checks live in python/sdk_checks.py; each is asserted here as its own test.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { startSimulator, ROOT } from "./lib.mjs";
import { KEY, PY_LIMITED_KEY, SIM_SECRET, policy, runtimes } from "./fixtures.mjs";

const CHECKS = [
  "openai_chat_each_provider",
  "openai_stream_each_provider",
  "openai_tools_through_anthropic",
  "openai_models",
  "openai_error_classes",
  "openai_embeddings_base64_and_float",
  "openai_cut_stream_raises",
  "anthropic_messages_each_provider",
  "anthropic_stream_each_provider",
  "anthropic_tools_through_openai_provider",
  "anthropic_error_classes",
  "anthropic_count_tokens",
  "anthropic_cut_stream_raises",
];

function runChecks(url) {
  const python = process.env.EDGEGATE_PYTHON;
  if (!python) throw new Error("EDGEGATE_PYTHON is not set: run the tests with `npm test`");
  return new Promise((resolve, reject) => {
    execFile(python, [join(ROOT, "tests/e2e/python/sdk_checks.py"), url, KEY, PY_LIMITED_KEY], { timeout: 120_000 }, (err, stdout, stderr) => {
      const results = Object.fromEntries(
        stdout
          .split("\n")
          .filter((l) => l.startsWith("{"))
          .map((l) => JSON.parse(l))
          .map((r) => [r.check, r]),
      );
      if (err && Object.keys(results).length === 0) reject(new Error(`${err.message}\n${stderr}`));
      else resolve(results);
    });
  });
}

for (const [name, start] of Object.entries(runtimes)) {
  describe(`official Python SDKs against ${name}`, () => {
    let sim;
    let gw;
    let results;
    before(async () => {
      sim = await startSimulator({ requireKey: SIM_SECRET });
      gw = await start(policy(sim.url));
      results = await runChecks(gw.url);
    });
    after(async () => {
      await gw?.stop();
      await sim?.stop();
    });
    for (const check of CHECKS) {
      it(check, () => {
        const r = results[check];
        assert.ok(r, `${check} did not run`);
        assert.ok(r.ok, r.detail);
      });
    }
  });
}
