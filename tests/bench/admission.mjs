// Admission latency added by the tenant ledger: the same mock-provider request for a tenant with
// limits (a ledger round trip to reserve, a deferred one to settle), for one whose ledger is split
// into four books, and for one without limits (no ledger call), interleaved, sequential, on
// 127.0.0.1. In workerd (Durable Objects), and in the Spin test host with the ledger in SQLite
// and in Redis.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/admission.mjs [requests]'
// Needs the built Worker, Spin component and harness, and EDGEGATE_SPIN_HOST / EDGEGATE_REDIS_SERVER
// as the test command sets them. Not part of the test command: it asserts nothing.
import { startWorkerd, startSpin, startRedis, sha256 } from "../e2e/lib.mjs";
import { HIGH_LIMITS as limits } from "./common.mjs";

const n = Number(process.argv[2] ?? 400);
const policy = {
  tenants: [{ id: "limited", limits }, { id: "split", ledger_shards: 4, limits }, { id: "free" }],
  keys: ["limited", "split", "free"].map((t) => ({ id: t, tenant: t, hash: sha256(`sk-bench-${t}`) })),
  providers: [{ id: "builtin", kind: "mock" }],
  models: [{ alias: "mock", targets: [{ provider: "builtin", model: "mock-1" }] }],
  settings: { policy_refresh_seconds: 60 },
};
const runtimes = {
  "workerd (Durable Objects)": () => startWorkerd({ policy }),
  "Spin host (SQLite)": () => startSpin({ policy }),
  "Spin host (Redis)": async () => {
    const redis = await startRedis();
    const gw = await startSpin({ policy, variables: { edgegate_ledger_redis: redis.url, allowed_redis: redis.url } });
    return { ...gw, stop: async () => (await gw.stop(), await redis.stop()) };
  },
};
const body = JSON.stringify({ model: "mock", messages: [{ role: "user", content: "hello" }] });
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const row = (name, xs) => console.log(`  ${name.padEnd(30)} p50 ${pct(xs, 50).toFixed(2).padStart(7)} ms   p99 ${pct(xs, 99).toFixed(2).padStart(7)} ms`);
console.log(`${n} sequential requests per tenant, interleaved, built-in mock provider`);
for (const [name, start] of Object.entries(runtimes)) {
  const gw = await start();
  const once = async (tenant) => {
    const t = performance.now();
    const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { authorization: `Bearer sk-bench-${tenant}` }, body });
    await r.arrayBuffer();
    if (r.status !== 200) throw new Error(`status ${r.status}`);
    return performance.now() - t;
  };
  const times = { free: [], limited: [], split: [] };
  try {
    for (let i = 0; i < 50; i++) for (const t of Object.keys(times)) await once(t); // warm up
    for (let i = 0; i < n; i++) for (const t of Object.keys(times)) times[t].push(await once(t));
  } finally {
    await gw.stop();
  }
  console.log(name);
  row("no limits (no ledger call)", times.free);
  row("limits, one book", times.limited);
  row("limits, four books", times.split);
  for (const t of ["limited", "split"]) {
    console.log(`  added at p50 (${t}): ${(pct(times[t], 50) - pct(times.free, 50)).toFixed(2)} ms, p99: ${(pct(times[t], 99) - pct(times.free, 99)).toFixed(2)} ms`);
  }
}
