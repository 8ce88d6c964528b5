// Routing under faults, on the built wasm in workerd and in the Spin host, through the upstream
// simulator (deployments `a`, `b`, `u` on one simulator; a test turns faults on and off while
// traffic flows). Steady open-loop load on 127.0.0.1, bounded in count and time (workerd: 200
// req/s for 4 × 5 s; the Spin test host, which is not a production host: 20 req/s):
// - provider A answers 5xx: zero failed requests while B is healthy; A's breaker opens, traffic
//   leaves it, and after the fault clears its breaker closes and A serves again; retries stay
//   within the route's budget;
// - A answers 429 with Retry-After: zero failed requests, A is left alone while it asked;
// - A's streams die before any content: failover is invisible, zero failed streams;
// - A's streams die after their first content: those end with an explicit error event (never
//   silently), and A's breaker soon keeps new streams away;
// - A stops answering in time: after the first-byte timeout the request moves on to B (zero
//   failed requests), and a stream that stalls after its first content ends with an error event;
// - an EU-resident tenant never reaches the US deployment, even with every EU deployment down:
//   it gets `residency_unavailable` instead.
// - shadow traffic: a mirrored route's requests (JSON and streams) are sent to the shadow target
//   after the answer, and the record compares the two.
// Timings are printed, never asserted.

import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { startSimulator, startWorkerd, startSpin, startBlackhole, steadyLoad, records, sha256, sseData, admin } from "./lib.mjs";
import { SIM_SECRET } from "./fixtures.mjs";

const APP_KEY = "sk-routing-app";
const EU_KEY = "sk-routing-eu";
const RPS = Number(process.env.EDGEGATE_ROUTING_RPS ?? 200);

function policy(simUrl, holeUrl) {
  const dep = (id, region) => ({
    id,
    kind: "openai_compatible",
    base_url: `${simUrl}/dep/${id}/v1`,
    api_key_secret: "PROVIDER_API_KEY",
    location: { region },
  });
  return {
    tenants: [{ id: "app" }, { id: "eu-co", residency: { regions: ["eu"] } }],
    keys: [
      { id: "app", tenant: "app", hash: sha256(APP_KEY) },
      { id: "eu", tenant: "eu-co", hash: sha256(EU_KEY) },
    ],
    providers: [
      dep("a", "eu"),
      dep("b", "eu"),
      dep("u", "us"),
      { id: "hole", kind: "openai_compatible", base_url: `${holeUrl}/v1`, api_key_secret: "PROVIDER_API_KEY" },
    ],
    models: [
      { alias: "chat", retry_budget_percent: 20, targets: [{ provider: "a", model: "sim-a" }, { provider: "b", model: "sim-b" }] },
      { alias: "eu-chat", targets: [{ provider: "u", model: "sim-u" }, { provider: "a", model: "sim-a" }] },
      {
        alias: "walled",
        timeouts: { connect_ms: 200, first_byte_ms: 1_000, total_ms: 2_000 },
        targets: [{ provider: "hole", model: "x" }, { provider: "b", model: "sim-b" }],
      },
      {
        alias: "mirrored",
        targets: [{ provider: "a", model: "sim-a" }],
        shadow: { percent: 100, target: { provider: "b", model: "sim-b-next", price: { input_usd_per_mtok: 1, output_usd_per_mtok: 2 } } },
      },
      {
        alias: "impatient",
        timeouts: { first_byte_ms: 300, total_ms: 1_500 },
        targets: [{ provider: "a", model: "sim-a" }, { provider: "b", model: "sim-b" }],
      },
    ],
    settings: {
      policy_refresh_seconds: 0,
      breaker: { error_percent: 50, min_requests: 10, window_seconds: 10, open_seconds: 2, probe_percent: 25, close_after: 2 },
    },
  };
}

const runtimes = {
  workerd: (p) => startWorkerd({ policy: p, secrets: { PROVIDER_API_KEY: SIM_SECRET } }),
  spin: (p) => startSpin({ policy: p, variables: { provider_api_key: SIM_SECRET } }),
};

const pct = (xs, p) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};

for (const [name, start] of Object.entries(runtimes)) {
  describe(`routing under faults on ${name}`, () => {
    let sim;
    let gw;
    let hole;
    before(async () => {
      sim = await startSimulator({ requireKey: SIM_SECRET });
      hole = await startBlackhole();
      gw = await start(policy(sim.url, hole.url));
    });
    after(async () => {
      await gw?.stop();
      await sim?.stop();
      await hole?.stop();
    });

    const fault = (dep, directives) =>
      fetch(`${sim.url}/_sim/faults/${dep}`, directives ? { method: "PUT", body: JSON.stringify(directives) } : { method: "DELETE" });
    const chat = async (key, model, stream = false) => {
      const t0 = performance.now();
      const r = await fetch(`${gw.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ model, stream, messages: [{ role: "user", content: "ping" }] }),
      });
      const text = await r.text();
      const ok = stream ? sseData(text).at(-1) === "[DONE]" && !text.includes('"error"') : r.status === 200;
      return { status: r.status, ok, ms: performance.now() - t0, id: r.headers.get("x-request-id"), body: text };
    };
    const byDeployment = async () => {
      const counts = {};
      for (const r of await sim.received()) counts[r.deployment] = (counts[r.deployment] ?? 0) + 1;
      await sim.clear();
      return counts;
    };
    // Sends traffic until `dep`'s breaker at this location is closed (bounded), so each test starts
    // from a healthy A whatever the one before left behind.
    const untilClosed = async (dep) => {
      for (let i = 0; i < 200; i++) {
        const board = (await admin(gw.url, "GET", "/health/default")).body.board;
        const state = board?.deployments?.[dep]?.state?.state;
        if (state === undefined || state === "closed") return;
        await chat(APP_KEY, "chat");
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`${dep}'s breaker did not close`);
    };
    // Records are written after the response (deferred work); give the last ones a moment.
    const recordsOf = async (ids) => {
      for (let i = 0; i < 100; i++) {
        const got = records(gw.lines).filter((r) => ids.has(r.request_id));
        if (got.length >= ids.size) return got;
        await new Promise((r) => setTimeout(r, 20));
      }
      return records(gw.lines).filter((r) => ids.has(r.request_id));
    };

    it("fails over with zero failed requests while A answers 5xx, opens A's breaker, and closes it after A recovers", async () => {
      const seconds = name === "workerd" ? 5 : 3;
      const rps = name === "workerd" ? RPS : 20;
      const run = () => steadyLoad({ send: () => chat(APP_KEY, "chat"), rps, seconds });
      await sim.clear();
      const healthy = await run();
      const healthyCounts = await byDeployment();
      await fault("a", { status: 503 });
      const faulty = await run();
      const faultyCounts = await byDeployment();
      await fault("a", null);
      // The breaker stays open 2 s, then a quarter of requests probe; two good probes close it.
      const recovering = await run();
      const recoveringCounts = await byDeployment();
      const after = await run();
      const afterCounts = await byDeployment();

      for (const [phase, load] of Object.entries({ healthy, faulty, recovering, after })) {
        const failed = load.results.filter((r) => !r.ok);
        assert.equal(failed.length, 0, `${phase}: ${failed.length} failed of ${load.results.length}: ${failed[0]?.body}`);
        const ms = load.results.map((r) => r.ms);
        console.log(
          `# ${name} ${phase}: ${load.results.length} requests in ${load.seconds.toFixed(1)} s (${load.skipped} not sent), ` +
            `p50 ${pct(ms, 50).toFixed(1)} ms, p99 ${pct(ms, 99).toFixed(1)} ms`,
        );
      }
      console.log(`# ${name} requests per deployment: healthy ${JSON.stringify(healthyCounts)} faulty ${JSON.stringify(faultyCounts)} ` +
        `recovering ${JSON.stringify(recoveringCounts)} after ${JSON.stringify(afterCounts)}`);
      assert.equal(healthyCounts.b ?? 0, 0, "a healthy A takes all the traffic (priority)");
      // Once its breaker opened, A got only the attempts before it opened plus half-open probes.
      const faultyAttempts = faulty.results.length;
      assert.ok((faultyCounts.a ?? 0) < faultyAttempts / 2, `A's breaker kept traffic away: ${faultyCounts.a} of ${faultyAttempts}`);
      assert.ok((afterCounts.a ?? 0) > (afterCounts.b ?? 0), `A serves again once its breaker closed: ${JSON.stringify(afterCounts)}`);
      const health = await admin(gw.url, "GET", "/health/default");
      assert.equal(health.status, 200);
      assert.equal(health.body.board.deployments.a.state.state, "closed", JSON.stringify(health.body));
      assert.ok(health.body.board.routes.chat, "the route's retry use is on the board");

      if (name === "workerd") {
        const ids = new Set(faulty.results.map((r) => r.id));
        const recs = await recordsOf(ids);
        const retries = recs.reduce((n, r) => n + Math.max(0, r.attempts.length - 1), 0);
        // The budget: 20 % of the route's requests per 10 s window, at least 100; requests in
        // flight when it runs out may each have started one retry already.
        assert.ok(retries <= Math.max(100, 0.2 * recs.length) + 48, `retries ${retries} of ${recs.length} requests`);
        console.log(`# ${name} retries during the fault: ${retries} of ${recs.length} requests`);
        const all = records(gw.lines);
        const events = all.flatMap((r) => r.breaker_events ?? []).filter((e) => e.deployment === "a").map((e) => e.change);
        assert.ok(events.includes("opened") && events.indexOf("closed") > events.indexOf("opened"), `breaker events: ${events}`);
      }
    });

    it("fails over invisibly when A's streams die before any content", async () => {
      await untilClosed("a");
      await sim.clear();
      await fault("a", { cut: 0 });
      const load = await steadyLoad({ send: () => chat(APP_KEY, "chat", true), rps: name === "workerd" ? 40 : 10, seconds: 2 });
      await fault("a", null);
      const failed = load.results.filter((r) => !r.ok);
      assert.equal(failed.length, 0, `${failed.length} failed streams: ${failed[0]?.body}`);
      const counts = await byDeployment();
      assert.ok((counts.a ?? 0) >= 5, `A's broken streams were tried, then failed over: ${JSON.stringify(counts)}`);
    });

    it("ends streams A cuts after their first content with an error event, and its breaker keeps new ones away", async () => {
      await untilClosed("a");
      await sim.clear();
      await fault("a", { cut: 2 });
      const load = await steadyLoad({ send: () => chat(APP_KEY, "chat", true), rps: name === "workerd" ? 40 : 10, seconds: 2 });
      await fault("a", null);
      const failed = load.results.filter((r) => !r.ok);
      for (const r of failed) {
        const last = JSON.parse(sseData(r.body).at(-1));
        assert.equal(last.error?.code, "upstream_unavailable", `a cut stream ends with an error event: ${r.body}`);
      }
      // Five cuts in a row open the breaker; streams in flight meanwhile and failed probes add a few.
      assert.ok(failed.length >= 5 && failed.length <= 15, `${failed.length} of ${load.results.length} streams were cut`);
      console.log(`# ${name} cut streams: ${failed.length} of ${load.results.length}, ${JSON.stringify(await byDeployment())}`);
    });

    it("moves on when A does not answer within the first-byte timeout, and ends stalled streams with an error", async () => {
      await untilClosed("a");
      await sim.clear();
      await fault("a", { latency: 2_000 });
      const load = await steadyLoad({ send: () => chat(APP_KEY, "impatient"), rps: 20, seconds: 2 });
      await fault("a", null);
      const failed = load.results.filter((r) => !r.ok);
      assert.equal(failed.length, 0, `${failed.length} failed: ${failed[0]?.body}`);
      const ms = load.results.map((r) => r.ms);
      console.log(`# ${name} timeouts: ${load.results.length} requests, p50 ${pct(ms, 50).toFixed(1)} ms, max ${Math.max(...ms).toFixed(1)} ms`);
      assert.ok(Math.max(...ms) < 1_900, "no request waited for A's 2 s answer");
      assert.ok((await byDeployment()).a >= 5, "A was tried until its breaker opened");
      // A stream whose chunks come 400 ms apart overruns the 1.5 s total after its first content.
      await new Promise((r) => setTimeout(r, 2_100)); // A's breaker (opened by the timeouts) half-opens
      await fault("b", { "chunk-delay": 400 });
      await fault("a", { "chunk-delay": 400 });
      const r = await chat(APP_KEY, "impatient", true);
      await fault("a", null);
      await fault("b", null);
      assert.equal(r.status, 200);
      const last = JSON.parse(sseData(r.body).at(-1));
      assert.equal(last.error?.code, "upstream_timeout", r.body);
      assert.ok(r.ms < 2_500, `the stream ended at the total timeout, not the provider's end: ${r.ms} ms`);
    });

    it("bounds connection setup where the runtime can (Spin), and the first byte everywhere", async () => {
      const r = await chat(APP_KEY, "walled");
      assert.equal(r.status, 200, r.body);
      const [rec] = await recordsOf(new Set([r.id]));
      assert.deepEqual(rec.attempts.map((a) => [a.provider, a.error]), [["hole", "upstream_timeout"], ["b", null]]);
      console.log(`# ${name} unreachable first target: answered in ${r.ms.toFixed(0)} ms`);
      if (name === "spin") assert.ok(r.ms < 900, `the 200 ms connect timeout ended the attempt: ${r.ms} ms`);
      else assert.ok(r.ms >= 900 && r.ms < 1_900, `workerd's fetch has no connect timeout; the 1 s first-byte one ended it: ${r.ms} ms`);
    });

    it("mirrors a route's requests to its shadow target after answering, and records the comparison", async () => {
      await sim.clear();
      const plain = await chat(APP_KEY, "mirrored");
      const streamed = await chat(APP_KEY, "mirrored", true);
      assert.ok(plain.ok && streamed.ok);
      const recs = await recordsOf(new Set([plain.id, streamed.id]));
      assert.equal(recs.length, 2);
      for (const r of recs) {
        assert.equal(r.shadow?.provider, "b", JSON.stringify(r));
        assert.equal(r.shadow.status, 200);
        assert.equal(r.shadow.similarity_permille, 1000, "the simulator gives both the same answer");
        assert.ok(r.shadow.cost_micro_usd > 0 && r.cost_micro_usd === null, "shadow spend is kept apart");
      }
      const sent = await sim.received();
      const shadows = sent.filter((x) => x.deployment === "b");
      assert.equal(shadows.length, 2);
      assert.ok(shadows.every((x) => x.body.model === "sim-b-next" && x.body.stream === undefined), "shadows are plain requests");
    });

    it("never sends an EU tenant's request to the US deployment, even with every EU deployment down", async () => {
      await sim.clear();
      const ok = await chat(EU_KEY, "eu-chat");
      assert.equal(ok.status, 200);
      await fault("a", { status: 503 });
      const down = await Promise.all(Array.from({ length: 12 }, () => chat(EU_KEY, "eu-chat")));
      await fault("a", null);
      for (const r of down) {
        assert.equal(r.status, 503, r.body);
        assert.equal(JSON.parse(r.body).error.code, "residency_unavailable");
      }
      const counts = await byDeployment();
      assert.equal(counts.u ?? 0, 0, `the US deployment got ${counts.u} requests`);
      const message = JSON.parse(down[0].body).error.message;
      assert.match(message, /u \(tenant residency: region us is not one of \[eu\]\)/);
    });
    it("treats A's 429s with Retry-After as quota: zero failed requests, A left alone while it asked", async () => {
      await untilClosed("a");
      await sim.clear();
      await fault("a", { status: 429, "retry-after": 30 });
      const load = await steadyLoad({ send: () => chat(APP_KEY, "chat"), rps: name === "workerd" ? RPS : 20, seconds: 2 });
      await fault("a", null);
      const counts = await byDeployment();
      assert.equal(load.results.filter((r) => !r.ok).length, 0);
      // Concurrent requests may all reach A before the first 429 is seen; after it, none.
      assert.ok((counts.a ?? 0) >= 1 && (counts.a ?? 0) <= 48, `A was asked to wait 30 s but got ${counts.a} requests`);
      console.log(`# ${name} 429 phase: ${JSON.stringify(counts)}`);
    });

  });
}
