// Latency added by failover, in workerd, through the upstream simulator on 127.0.0.1: the same
// request on a route whose first target answers 503 (every request fails over; its breaker is
// switched off), on a route whose first target's breaker is open (skipped without a call), and on
// a route straight to the healthy target — interleaved, sequential.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/failover.mjs [requests]'
// Needs the built Worker and the harness (npm test builds both). Asserts nothing.
import { startSimulator, startWorkerd, sha256 } from "../e2e/lib.mjs";

const n = Number(process.argv[2] ?? 300);
const sim = await startSimulator();
const dep = (id) => ({ id, kind: "openai_compatible", base_url: `${sim.url}/dep/${id}/v1` });
const policy = {
  tenants: [{ id: "bench" }],
  keys: [{ id: "bench", tenant: "bench", hash: sha256("sk-bench") }],
  providers: [dep("down"), dep("tripped"), dep("up")],
  models: [
    { alias: "direct", targets: [{ provider: "up", model: "m" }] },
    { alias: "failover", retry_budget_percent: 100, targets: [{ provider: "down", model: "m" }, { provider: "up", model: "m" }] },
    { alias: "skipped", targets: [{ provider: "tripped", model: "m" }, { provider: "up", model: "m" }] },
  ],
  settings: { policy_refresh_seconds: 60, breaker: { consecutive_failures: 5, min_requests: 1_000_000, open_seconds: 3_600 } },
};
const gw = await startWorkerd({ policy });
await fetch(`${sim.url}/_sim/faults/down`, { method: "PUT", body: JSON.stringify({ status: 503 }) });
await fetch(`${sim.url}/_sim/faults/tripped`, { method: "PUT", body: JSON.stringify({ status: 503 }) });
const once = async (model) => {
  const body = JSON.stringify({ model, messages: [{ role: "user", content: "hello" }] });
  const t = performance.now();
  const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { authorization: "Bearer sk-bench" }, body });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`${model}: status ${r.status}`);
  return performance.now() - t;
};
// Warm up; five failures in a row open `tripped`'s breaker (for an hour). `down` would open too:
// its breaker is kept closed by a success between failures, one per round.
for (let i = 0; i < 30; i++) for (const m of ["direct", "skipped"]) await once(m);
const times = { direct: [], failover: [], skipped: [] };
for (let i = 0; i < n; i++) {
  // A success on `down` every round keeps its breaker closed, so every failover request pays the 503.
  await fetch(`${sim.url}/_sim/faults/down`, { method: "DELETE" });
  await once("failover");
  await fetch(`${sim.url}/_sim/faults/down`, { method: "PUT", body: JSON.stringify({ status: 503 }) });
  for (const m of Object.keys(times)) times[m].push(await once(m));
}
await gw.stop();
await sim.stop();
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const row = (name, xs) => console.log(`${name.padEnd(44)} p50 ${pct(xs, 50).toFixed(2).padStart(7)} ms   p99 ${pct(xs, 99).toFixed(2).padStart(7)} ms`);
console.log(`workerd (Miniflare) + upstream simulator, ${n} sequential requests per case`);
row("straight to the healthy target", times.direct);
row("first target answers 503, then failover", times.failover);
row("first target's breaker open (skipped)", times.skipped);
const added = (xs) => `${(pct(xs, 50) - pct(times.direct, 50)).toFixed(2)} ms (ratio ${(pct(xs, 50) / pct(times.direct, 50)).toFixed(2)})`;
console.log(`added at p50 by failover: ${added(times.failover)}; by a skipped open breaker: ${added(times.skipped)}`);
