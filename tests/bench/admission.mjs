// Admission latency added by the tenant ledger, in workerd: the same mock-provider request for a
// tenant with limits (a Durable Object round trip to reserve, a deferred one to settle) and for
// one without (no ledger call), interleaved, sequential, on 127.0.0.1.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/admission.mjs [requests]'
// Needs the built Worker (npm test builds it). Not part of the test command: it asserts nothing.
import { startWorkerd, sha256 } from "../e2e/lib.mjs";

const n = Number(process.argv[2] ?? 400);
const policy = {
  tenants: [{ id: "limited", limits: { requests_per_minute: 1_000_000, tokens_per_minute: 100_000_000 } }, { id: "free" }],
  keys: [
    { id: "limited", tenant: "limited", hash: sha256("sk-bench-limited") },
    { id: "free", tenant: "free", hash: sha256("sk-bench-free") },
  ],
  providers: [{ id: "builtin", kind: "mock" }],
  models: [{ alias: "mock", targets: [{ provider: "builtin", model: "mock-1" }] }],
  settings: { policy_refresh_seconds: 60 },
};
const gw = await startWorkerd({ policy });
const body = JSON.stringify({ model: "mock", messages: [{ role: "user", content: "hello" }] });
const once = async (key) => {
  const t = performance.now();
  const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer ${key}` }, body });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  return performance.now() - t;
};
for (let i = 0; i < 50; i++) await Promise.all([once("sk-bench-limited"), once("sk-bench-free")]); // warm up
const times = { limited: [], free: [] };
for (let i = 0; i < n; i++) {
  times.limited.push(await once("sk-bench-limited"));
  times.free.push(await once("sk-bench-free"));
}
await gw.stop();
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const row = (name, xs) => console.log(`${name.padEnd(32)} p50 ${pct(xs, 50).toFixed(2).padStart(7)} ms   p99 ${pct(xs, 99).toFixed(2).padStart(7)} ms`);
console.log(`workerd (Miniflare), ${n} sequential requests each, mock provider`);
row("no limits (no ledger call)", times.free);
row("limits (Durable Object reserve)", times.limited);
console.log(`added at p50: ${(pct(times.limited, 50) - pct(times.free, 50)).toFixed(2)} ms, ratio ${(pct(times.limited, 50) / pct(times.free, 50)).toFixed(2)}`);
