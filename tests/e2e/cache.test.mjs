// The edge cache in both runtimes: workerd's Cache API and Spin key-value. A repeated safe
// request is answered without the provider, streams are replayed as streams, tenants never share
// entries, entries expire, and unsafe requests are never cached.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { startSimulator, startWorkerd, startSpin, sha256, recordOf, sseData } from "./lib.mjs";

const KEY_A = "sk-cache-a";
const KEY_B = "sk-cache-b";

function policy(simUrl) {
  const target = [{ provider: "sim", model: "sim-cached", price: { input_usd_per_mtok: 1, output_usd_per_mtok: 2 } }];
  return {
    tenants: [{ id: "a" }, { id: "b" }],
    keys: [
      { id: "ka", tenant: "a", hash: sha256(KEY_A) },
      { id: "kb", tenant: "b", hash: sha256(KEY_B) },
    ],
    providers: [{ id: "sim", kind: "openai_compatible", base_url: `${simUrl}/v1` }],
    models: [
      { alias: "cached", cache: { ttl_seconds: 300 }, targets: target },
      { alias: "brief", cache: { ttl_seconds: 1 }, targets: target },
    ],
    settings: { policy_refresh_seconds: 0 },
  };
}

const runtimes = {
  workerd: (p) => startWorkerd({ policy: p }),
  spin: (p) => startSpin({ policy: p }),
};

for (const [name, start] of Object.entries(runtimes)) {
  describe(`edge cache on ${name}`, () => {
    let sim;
    let gw;
    before(async () => {
      sim = await startSimulator();
      gw = await start(policy(sim.url));
    });
    after(async () => {
      await gw?.stop();
      await sim?.stop();
    });

    // Sends a chat request; waits for its record, so a miss's answer is stored before the next.
    const ask = async (key, body, headers = {}) => {
      const r = await fetch(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
      const text = await r.text();
      const record = await recordOf(gw, r.headers.get("x-request-id"));
      return { status: r.status, cache: r.headers.get("x-edgegate-cache"), age: r.headers.get("age"), type: r.headers.get("content-type"), text, record };
    };
    const chat = (model, content, extra = {}) => ({ model, temperature: 0, messages: [{ role: "user", content }], ...extra });
    const upstreamCalls = async () => (await sim.received()).length;

    it("answers a repeated request from the cache without calling the provider", async () => {
      await sim.clear();
      const first = await ask(KEY_A, chat("cached", "what is the capital of France?"));
      assert.deepEqual([first.status, first.cache], [200, "miss"], first.text);
      assert.equal(first.record.cache.stored, true, JSON.stringify(first.record.cache));
      const second = await ask(KEY_A, chat("cached", "what is the capital of France?"));
      assert.deepEqual([second.status, second.cache], [200, "hit"], second.text);
      assert.equal(second.text, first.text);
      assert.ok(Number(second.age) >= 0);
      assert.equal(await upstreamCalls(), 1, "the provider answered once");
      assert.equal(second.record.cache.status, "hit");
      assert.ok(second.record.cache.saved_micro_usd > 0 && second.record.cache.saved_tokens > 0, JSON.stringify(second.record.cache));
      assert.deepEqual(second.record.attempts, []);
    });

    it("never shares an entry between tenants", async () => {
      await sim.clear();
      await ask(KEY_A, chat("cached", "tenant-scoped question"));
      const b = await ask(KEY_B, chat("cached", "tenant-scoped question"));
      assert.equal(b.cache, "miss");
      assert.equal(await upstreamCalls(), 2);
      assert.equal((await ask(KEY_B, chat("cached", "tenant-scoped question"))).cache, "hit");
    });

    it("stores a stream whole and replays it as a stream", async () => {
      await sim.clear();
      const body = chat("cached", "stream me a haiku", { stream: true });
      const first = await ask(KEY_A, body);
      assert.equal(first.cache, "miss");
      assert.equal(sseData(first.text).at(-1), "[DONE]");
      const second = await ask(KEY_A, body);
      assert.deepEqual([second.cache, second.type], ["hit", "text/event-stream"]);
      assert.equal(second.text, first.text, "the same events");
      assert.equal(await upstreamCalls(), 1);
    });

    it("lets entries expire and never caches unsafe requests", async () => {
      await sim.clear();
      assert.equal((await ask(KEY_A, chat("brief", "short-lived"))).cache, "miss");
      await new Promise((r) => setTimeout(r, 1_100));
      assert.equal((await ask(KEY_A, chat("brief", "short-lived"))).cache, "miss", "after its 1 s TTL");
      const warm = { ...chat("cached", "be creative"), temperature: 0.9 };
      assert.equal((await ask(KEY_A, warm)).cache, "bypass");
      assert.equal((await ask(KEY_A, warm)).cache, "bypass");
      assert.equal((await ask(KEY_A, chat("cached", "what is the capital of France?"), { "cache-control": "no-cache" })).cache, "bypass");
      assert.equal(await upstreamCalls(), 5, "each of them reached the provider");
    });
  });
}
