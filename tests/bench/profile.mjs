// A CPU profile of the edgegate isolate in workerd under load: where a request's time goes
// inside the Worker (wasm functions by name, and the JavaScript glue around them). Connects to
// workerd's inspector (DevTools protocol) through Miniflare's `inspectorPort`, profiles while a
// fixed number of requests run against the simulator, and prints the functions with the most
// self time. Writes target/bench/edgegate.cpuprofile (open it in Chrome DevTools).
// `first` profiles instead the first request of a fresh isolate (the policy already in KV), on an
// alias whose prompt is counted with o200k_base (what a cold start costs inside the Worker).
// A last argument `notable` sets `settings.request_logs: "notable"` (no log line for plain successes).
// `heap` samples the isolate's JavaScript allocations instead (objects the collector has since
// freed included): bytes allocated per request, by the function that allocated them. What a
// request allocates sets how often workerd's young-generation collections pause the isolate.
// Writes target/bench/edgegate.heapprofile. `heap survivors` keeps only what outlived the young
// generation's collections (what a scavenge copies and promotes, and so what sets its pause).
// `limits` gives the tenant limits, so each request also calls its ledger Durable Object.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/profile.mjs [requests [in-flight] | first] [notable] [limits] [heap [survivors]]'
// (with EDGEGATE_UPSTREAM_SIM set). Not part of the test command: it asserts nothing.
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { ROOT, startSimulator, startWorkerd } from "../e2e/lib.mjs";
import { HIGH_LIMITS, benchPolicy, chatBody } from "./common.mjs";

const first = process.argv[2] === "first";
const heap = process.argv.includes("heap");
const total = first ? 1 : Number(process.argv[2] ?? 4000);
const inFlight = Number(process.argv[3] ?? 8);
const inspectorPort = 9300 + Math.floor(Math.random() * 500);
const sim = await startSimulator();
const policy = benchPolicy(sim.url, { policy_refresh_seconds: 60, audit: { enabled: false }, ...(process.argv.includes("notable") ? { request_logs: "notable" } : {}) });
if (process.argv.includes("limits")) policy.tenants[0].limits = HIGH_LIMITS;
// `first`: the policy is published by an earlier workerd on the same state, so the profiled
// request is the isolate's first, and reads the policy from KV as in production.
const stateDir = first ? mkdtempSync(join(tmpdir(), "edgegate-profile-")) : null;
if (first) await (await startWorkerd({ stateDir, policy })).stop();
const gw = await startWorkerd({ inspectorPort, stateDir, policy: first ? undefined : policy });
const body = chatBody(first ? "counted" : "estimated");
const send = async () => {
  const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { authorization: "Bearer sk-bench", "content-type": "application/json" }, body });
  await r.arrayBuffer();
};
if (!first) for (let i = 0; i < 200; i++) await send(); // warm up

const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json/list`)).json();
const target = targets.find((t) => t.webSocketDebuggerUrl?.includes("edgegate")) ?? targets[0];
const ws = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((res, rej) => (ws.once("open", res), ws.once("error", rej)));
let next = 1;
const pending = new Map();
ws.on("message", (m) => {
  const msg = JSON.parse(m);
  if (msg.id && pending.has(msg.id)) pending.get(msg.id)(msg);
});
const call = (method, params = {}) =>
  new Promise((res) => {
    const id = next++;
    pending.set(id, res);
    ws.send(JSON.stringify({ id, method, params }));
  });
const load = async () => {
  const t0 = performance.now();
  let sent = 0;
  await Promise.all(Array.from({ length: inFlight }, async () => { while (sent++ < total) await send(); }));
  return (performance.now() - t0) / 1000;
};
if (heap) {
  await call("HeapProfiler.enable");
  await call("HeapProfiler.startSampling", { samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: !process.argv.includes("survivors") });
  const seconds = await load();
  const { result } = await call("HeapProfiler.stopSampling");
  ws.close();
  await gw.stop();
  await sim.stop();
  mkdirSync(join(ROOT, "target", "bench"), { recursive: true });
  writeFileSync(join(ROOT, "target", "bench", "edgegate.heapprofile"), JSON.stringify(result.profile));
  const self = new Map();
  const walk = (n) => {
    const name = (n.callFrame.functionName || "(anonymous)").replace(/::h[0-9a-f]{16}$/, "");
    self.set(name, (self.get(name) ?? 0) + n.selfSize);
    (n.children ?? []).forEach(walk);
  };
  walk(result.profile.head);
  const bytes = [...self.values()].reduce((a, b) => a + b, 0);
  console.log(`${total} requests in ${seconds.toFixed(1)} s, ${inFlight} in flight; ${(bytes / total / 1024).toFixed(1)} KB of JavaScript objects ${process.argv.includes("survivors") ? "outliving young collections" : "allocated"} per request (sampled)`);
  console.log("bytes allocated per request, by allocating function, top 30:");
  for (const [name, b] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(`${(b / total).toFixed(0).padStart(8)}  ${name.slice(0, 150)}`);
  process.exit(0);
}
await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });
await call("Profiler.start");
const seconds = await load();
const { result } = await call("Profiler.stop");
ws.close();
await gw.stop();
await sim.stop();

const profile = result.profile;
mkdirSync(join(ROOT, "target", "bench"), { recursive: true });
writeFileSync(join(ROOT, "target", "bench", "edgegate.cpuprofile"), JSON.stringify(profile));
// Self time per function: samples × interval, attributed to the sampled (leaf) node.
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
const deltas = profile.timeDeltas;
profile.samples.forEach((id, i) => {
  const n = byId.get(id);
  const name = (n.callFrame.functionName || "(anonymous)").replace(/::h[0-9a-f]{16}$/, "") + (n.callFrame.url ? "" : "");
  self.set(name, (self.get(name) ?? 0) + (deltas[i + 1] ?? 0));
});
const totalUs = [...self.values()].reduce((a, b) => a + b, 0);
const idle = (self.get("(idle)") ?? 0) + (self.get("(program)") ?? 0);
console.log(`${total} requests in ${seconds.toFixed(1)} s (${(total / seconds).toFixed(0)}/s), ${inFlight} in flight; isolate busy ${((totalUs - idle) / 1000).toFixed(0)} ms of ${(totalUs / 1000).toFixed(0)} ms sampled, ${((totalUs - idle) / total).toFixed(0)} µs per request`);
console.log("self time, µs per request, top 30:");
for (const [name, us] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 30)) {
  console.log(`${(us / total).toFixed(1).padStart(8)}  ${name.slice(0, 150)}`);
}
