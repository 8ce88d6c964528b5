// Where workerd's CPU time goes a request, with the runtime's own C++ in view: Linux `perf`
// samples the whole workerd process (every thread, the kernel's share of its sockets included)
// while oha sends a fixed rate through bare workerd (tests/bench/workerd.mjs), and each sample is
// put in one bucket by its stack. V8 is started with `--perf-basic-prof`, so its compiled code
// (the Worker's wasm functions by name, and JavaScript) has names in the stacks.
//
// The inspector's profiler (profile.mjs) sees only JavaScript and wasm frames, slows every call
// into the runtime, and so overstates them: by it the log line and the `cf` read were about 10 %
// of a request; removing both changed workerd's CPU a request by nothing measurable. Here a
// runtime API is charged what it really costs, and what runs outside any JavaScript (the HTTP
// server and client, the event loop, the kernel's TCP) is counted too.
//
// Buckets, µs a request:
// - outside the isolate: HTTP parsing and writing, the event loop, sockets, threads that are not
//   the isolate's (the collector's helpers);
// - isolate, no JavaScript frame: the runtime and V8 working for the isolate without a compiled
//   function on the stack (promise reactions, collections, the floor's interpreted JavaScript);
// - runtime APIs: everything under a call from JavaScript into the runtime, by the JavaScript
//   function that made it (for the Worker, wasm-bindgen's import shims, so by API);
// - wasm: samples in the Worker's own code, by function;
// - JavaScript itself: samples in the glue's or entry module's own code (or the floor's).
//
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/perf.mjs [--floor] [--limits] [--rate R] [--seconds S]'
// (with EDGEGATE_UPSTREAM_SIM set, after `bash tests/bench/peers-setup.sh`; needs `perf`, Debian's
// linux-perf, and kernel.perf_event_paranoid ≤ 2 for the same user). Asserts nothing.
import { spawn, spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startSimulator } from "../e2e/lib.mjs";
import { HIGH_LIMITS, benchPolicy, chatBody, numberArg as arg, oha } from "./common.mjs";
import { CF_BLOB, startBare } from "./workerd.mjs";

const load = { rate: arg("--rate", 200), seconds: arg("--seconds", 10) };
const limits = process.argv.includes("--limits");
const floor = process.argv.includes("--floor");
const HZ = 2000;

const sim = await startSimulator();
const policy = benchPolicy(sim.url, { policy_refresh_seconds: 60, audit: { enabled: false } });
if (limits) policy.tenants[0].limits = HIGH_LIMITS;
const v8Flags = ["--perf-basic-prof"];
const gw = floor
  ? await startBare({ worker: limits ? "ledger floor" : "floor", upstream: sim.url, v8Flags })
  : await startBare({ worker: "edgegate", policy, v8Flags });
const body = chatBody("estimated");
const run = () => oha(`${gw.url}/v1/chat/completions`, { authorization: "Bearer sk-bench", ...CF_BLOB }, body, load);
const data = join(tmpdir(), `edgegate-perf-${process.pid}.data`);
let stacks;
try {
  await run(); // warm up: every hot function compiled by the optimising tier
  const perf = spawn("perf", ["record", "-F", String(HZ), "-e", "cpu-clock", "-g", "-p", String(gw.pid), "-o", data], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 300));
  const client = await run();
  perf.kill("SIGINT");
  await new Promise((r) => perf.once("exit", r));
  const script = spawnSync("perf", ["script", "-i", data, "-F", "ip,sym"], { encoding: "utf8", maxBuffer: 1 << 30 });
  if (script.status !== 0) throw new Error(`perf script failed: ${script.stderr}`);
  stacks = script.stdout.split("\n\n").map((s) => s.trim().split("\n").map((l) => l.trim().replace(/^[0-9a-f]+ /, ""))).filter((f) => f[0]);
  console.log(`${floor ? (limits ? "ledger floor" : "floor") : limits ? "edgegate, limits" : "edgegate"}: ${load.rate}/s for ${load.seconds} s, client p50 ${client.p50.toFixed(2)} ms, p99 ${client.p99.toFixed(2)} ms`);
} finally {
  await gw.stop();
  await sim.stop();
}

const requests = load.rate * load.seconds;
const us = (samples) => ((samples * 1e6) / HZ / requests).toFixed(1).padStart(7);
const clean = (f) => f.replace(/::h[0-9a-f]{16}/g, "").replace(/\[[0-9a-f]{16}\]/g, "").replace(/-\d+-(turbofan|maglev|liftoff|sparkplug|none)$/, "").replace(/^JS:[*+^~']*/, "");
const buckets = new Map();
const detail = { api: new Map(), wasm: new Map() };
const add = (m, k) => m.set(k, (m.get(k) ?? 0) + 1);
for (const frames of stacks) {
  const js = frames.find((f) => f.startsWith("JS:"));
  if (!js) {
    add(buckets, frames.some((f) => f.includes("IoContext::runImpl")) ? "isolate, no JavaScript frame" : "outside the isolate");
  } else if (/\.m?js:\d+|wasm-to-js/.test(js)) {
    if (frames[0] === js) add(buckets, "JavaScript itself");
    else (add(buckets, "runtime APIs"), add(detail.api, clean(js).replace(/ \S+\.m?js:.*/, "")));
  } else {
    add(buckets, "wasm (and builtins it calls)");
    add(detail.wasm, clean(js));
  }
}
console.log(`${us(stacks.length)} µs a request in all (perf samples at ${HZ}/s)`);
for (const [k, n] of [...buckets].sort((a, b) => b[1] - a[1])) console.log(`${us(n)} µs  ${k}`);
for (const [name, m] of [["runtime APIs, by caller", detail.api], ["wasm, by function", detail.wasm]]) {
  if (!m.size) continue;
  console.log(`${name}, top 15:`);
  for (const [k, n] of [...m].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${us(n)} µs    ${k.slice(0, 120)}`);
}
rmSync(data, { force: true });
