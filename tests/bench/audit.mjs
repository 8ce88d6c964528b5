// What the audit log costs in workerd: the same mock-provider request on a gateway that appends
// every request to the tenant's audit log (a deferred Durable Object call: one SQLite insert, and
// retention's check) and on one with `settings.audit.enabled: false` — sequential latency
// (interleaved, so both see the same machine) and throughput with 16 requests in flight.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/audit.mjs [requests]'
// Needs the built Worker (npm test builds it). Not part of the test command: it asserts nothing.
import { startWorkerd, sha256 } from "../e2e/lib.mjs";

const n = Number(process.argv[2] ?? 400);
const policy = (enabled) => ({
  tenants: [{ id: "t" }],
  keys: [{ id: "k", tenant: "t", hash: sha256("sk-bench") }],
  providers: [{ id: "builtin", kind: "mock" }],
  models: [{ alias: "mock", targets: [{ provider: "builtin", model: "mock-1" }] }],
  settings: { policy_refresh_seconds: 60, audit: { enabled } },
});
const on = await startWorkerd({ policy: policy(true) });
const off = await startWorkerd({ policy: policy(false) });
const body = JSON.stringify({ model: "mock", messages: [{ role: "user", content: "hello" }] });
const once = async (gw) => {
  const t = performance.now();
  const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { authorization: "Bearer sk-bench" }, body });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  return performance.now() - t;
};
for (let i = 0; i < 50; i++) await Promise.all([once(on), once(off)]); // warm up
const times = { on: [], off: [] };
for (let i = 0; i < n; i++) {
  times.on.push(await once(on));
  times.off.push(await once(off));
}
const throughput = async (gw) => {
  const t = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next++ < n) await once(gw);
  }));
  return (n / (performance.now() - t)) * 1000;
};
const rps = { off: await throughput(off), on: await throughput(on) };
const verify = await fetch(`${on.url}/admin/tenants/t/audit/verify`, { headers: { authorization: "Bearer sk-e2e-bootstrap-admin" } }).then((r) => r.json());
await on.stop();
await off.stop();
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const row = (name, xs, r) =>
  console.log(`${name.padEnd(24)} p50 ${pct(xs, 50).toFixed(2).padStart(7)} ms   p99 ${pct(xs, 99).toFixed(2).padStart(7)} ms   ${r.toFixed(0).padStart(5)} req/s (16 in flight)`);
console.log(`workerd (Miniflare), ${n} sequential requests each, then ${n} with 16 in flight; mock provider`);
row("audit log off", times.off, rps.off);
row("audit log on", times.on, rps.on);
console.log(`p50 ratio ${(pct(times.on, 50) / pct(times.off, 50)).toFixed(2)}, throughput ratio ${(rps.on / rps.off).toFixed(2)}; chain after the run: ${verify.report.checked} entries, valid ${verify.report.valid}`);
