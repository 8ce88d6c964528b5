// The built Worker in workerd from a config of its own, without Miniflare (tests/bench/workerd.mjs,
// which the overhead benchmarks use to measure without Miniflare's entry Worker): its KV binding
// served by a small KV service, its Durable Objects on SQLite in a temporary directory, and
// `request.cf` from a header, as Cloudflare's edge would give it.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { startSimulator, records, sha256, eventually } from "./lib.mjs";
import { CF_BLOB, startBare } from "../bench/workerd.mjs";

const KEY = "sk-bare-app";

describe("edgegate in workerd without Miniflare", () => {
  let sim, gw;
  before(async () => {
    sim = await startSimulator();
    gw = await startBare({
      worker: "edgegate",
      policy: {
        tenants: [{ id: "app", limits: { requests_per_minute: 2 } }],
        keys: [{ id: "app", tenant: "app", hash: sha256(KEY) }],
        providers: [{ id: "sim", kind: "openai_compatible", base_url: `${sim.url}/v1` }],
        models: [{ alias: "chat", targets: [{ provider: "sim", model: "sim-model" }] }],
        settings: { audit: { enabled: false } },
      },
      // A Worker of an earlier version, during a deploy, calls the ledger object with `fetch`.
      caller: `export default {
        async fetch(req, env) {
          const ledger = env.LEDGER.get(env.LEDGER.idFromName("app"));
          return ledger.fetch("https://ledger/apply", { method: "POST", body: await req.text() });
        },
      };`,
    });
  });
  after(async () => {
    await gw?.stop();
    await sim?.stop();
  });

  const ask = () =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${KEY}`, ...CF_BLOB },
      body: JSON.stringify({ model: "chat", messages: [{ role: "user", content: "hello" }] }),
    });

  it("answers from the provider, counts in its Durable Object, and sees where the request arrived", async () => {
    const first = await ask();
    assert.equal(first.status, 200);
    const id = first.headers.get("x-request-id");
    assert.match(id ?? "", /^req_/);
    assert.equal((await first.json()).choices[0].message.content, "Simulated answer to: hello");
    const rec = await eventually(() => records(gw.lines).find((r) => r.request_id === id));
    assert.ok(rec, "the request's record is logged");
    assert.equal(rec.status, 200);
    assert.equal(rec.attempts[0].provider, "sim");
    assert.equal(rec.routing.origin.country, "US");
    assert.equal(rec.routing.origin.colo, undefined, "no cf-ray here, so no colo");
    // Two a minute: the third is refused by the tenant's ledger (a Durable Object on SQLite).
    assert.equal((await ask()).status, 200);
    const third = await ask();
    assert.equal(third.status, 429);
    assert.ok(Number(third.headers.get("retry-after")) >= 1);
    assert.equal((await third.json()).error.type, "rate_limit_error");
  });

  it("answers a ledger call over HTTP, as a Worker of the version before RPC makes it, from the same book", async () => {
    const inspect = await fetch(gw.callerUrl, { method: "POST", body: JSON.stringify("inspect") });
    assert.equal(inspect.status, 200);
    const { book } = (await inspect.json()).book; // LedgerAnswer::Book { book }, externally tagged
    const counters = Object.entries(book.counters).filter(([id]) => id.includes("requests_per_minute"));
    assert.equal(counters.length, 1, JSON.stringify(book.counters));
    assert.equal(counters[0][1].used, 2, "the two requests admitted over RPC above");
    const bad = await fetch(gw.callerUrl, { method: "POST", body: "{" });
    assert.equal(bad.status, 500, "an operation that does not parse is refused");
  });
});
