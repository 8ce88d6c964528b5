// Gateway overhead side by side with peers, as TensorZero, Bifrost and LiteLLM measure it: the same
// fixed-rate load (oha, latency-corrected) against the upstream simulator directly and through
// each gateway — edgegate (the built Worker in workerd), Portkey's gateway (@portkey-ai/gateway,
// Node) and the LiteLLM proxy (offline cost map, one worker) — all on 127.0.0.1 and the same
// simulator — and a "workerd floor": a JavaScript Worker in the same runtime that only forwards,
// so edgegate's overhead can be split into the runtime's and the gateway's own.
// "edgegate notable" is the same Worker logging only notable requests (settings.request_logs).
// "bare floor", "bare edgegate" and "bare edgegate notable" are the same in workerd without
// Miniflare, whose entry Worker sits in front of every Worker it serves (tests/bench/workerd.mjs).
// "bare edgegate limits" gives the tenant limits (a ledger round trip before each request and a
// settlement after); its floor is "bare ledger floor", the same ledger calls in JavaScript.
// Overhead at a percentile = the gateway's latency minus the direct latency at that percentile, in the same run. Streams: time to the first chunk, sequential, from a Node client.
//
//   bash tests/bench/peers-setup.sh                      # oha, Portkey and LiteLLM into the cache
//   bash -c 'source deploy/local/setup.sh && node tests/bench/peers.mjs [--rate R] [--seconds S] [--runs N]'
//
// Writes target/bench/peers.json and prints a table. Asserts nothing; needs the built Worker and
// the harness (npm test builds both).

import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { homedir, cpus } from "node:os";
import { ROOT, startSimulator, startWorkerd, sha256 } from "../e2e/lib.mjs";
import { HIGH_LIMITS, chatBody, numberArg as arg, oha, startFloor } from "./common.mjs";
import { CF_BLOB, startBare } from "./workerd.mjs";

const RATE = arg("--rate", 200);
const SECONDS = arg("--seconds", 10);
const RUNS = arg("--runs", 3);
// `--targets a,b` runs only those (and `direct`, the baseline).
const only = process.argv.includes("--targets") ? process.argv[process.argv.indexOf("--targets") + 1].split(",") : null;
const want = (name) => !only || only.includes(name);
const CACHE = process.env.EDGEGATE_CACHE ?? join(homedir(), ".cache", "edgegate");
const PORTKEY = join(CACHE, "bench", "portkey", "node_modules", "@portkey-ai", "gateway", "build", "start-server.js");
const LITELLM = join(CACHE, "bench", "litellm-venv", "bin", "litellm");
const LITELLM_KEY = "sk-litellm-bench-4f1c9a7e2b8d6035";
const BODY = chatBody("bench");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts a process and waits until `url` answers (any status), up to 90 s. */
async function serve(cmd, args, env, url) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err = (err + d).slice(-4000)));
  for (let i = 0; i < 900; i++) {
    if (child.exitCode !== null) throw new Error(`${cmd} exited: ${err}`);
    try {
      await fetch(url);
      return { stop: () => new Promise((r) => (child.exitCode !== null ? r() : (child.once("exit", r), child.kill("SIGINT")))) };
    } catch {
      await sleep(100);
    }
  }
  child.kill("SIGKILL");
  throw new Error(`${cmd} did not answer at ${url}: ${err}`);
}

const load = (url, headers, body = BODY) => oha(url, headers, body, { rate: RATE, seconds: SECONDS });

/** Time to first chunk of streamed answers, sequential, ms. */
async function firstChunk(url, headers, base = BODY, n = 100) {
  const body = JSON.stringify({ ...JSON.parse(base), stream: true });
  const times = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
    const reader = r.body.getReader();
    await reader.read();
    times.push(performance.now() - t);
    while (!(await reader.read()).done);
  }
  times.sort((a, b) => a - b);
  return { p50: times[Math.floor(n / 2)], p99: times[Math.floor(n * 0.99)] };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const sim = await startSimulator();
const simUrl = sim.url;
const edgegatePolicy = (settings, tenant = {}) => ({
  tenants: [{ id: "bench", ...tenant }],
  keys: [{ id: "bench", tenant: "bench", hash: sha256("sk-bench") }],
  providers: [
    { id: "sim", kind: "openai_compatible", base_url: `${simUrl}/v1` },
    { id: "builtin", kind: "mock" },
  ],
  models: [
    { alias: "bench", targets: [{ provider: "sim", model: "sim-model" }] },
    { alias: "mock", targets: [{ provider: "builtin", model: "mock-1" }] },
  ],
  settings: { policy_refresh_seconds: 60, audit: { enabled: false }, ...settings },
});
// Only what the targets need runs: an idle gateway still shares the machine's two cores.
const edgegate = (want("edgegate") || want("edgegate mock")) && await startWorkerd({ policy: edgegatePolicy({}) });
// The same, logging only notable requests (`settings.request_logs`): what a log line a request costs.
const notable = want("edgegate notable") && await startWorkerd({ policy: edgegatePolicy({ request_logs: "notable" }) });
const floor = (want("workerd floor") || want("workerd static")) && await startFloor(simUrl);
const bareFloor = want("bare floor") && await startBare({ worker: "floor", upstream: simUrl });
const bareEdgegate = want("bare edgegate") && await startBare({ worker: "edgegate", policy: edgegatePolicy({}) });
const bareNotable = want("bare edgegate notable") && await startBare({ worker: "edgegate", policy: edgegatePolicy({ request_logs: "notable" }) });
// Limits far above the load: each request reserves in, and settles with, the tenant's ledger.
const LIMITS = { limits: HIGH_LIMITS };
const bareLimits = want("bare edgegate limits") && await startBare({ worker: "edgegate", policy: edgegatePolicy({}, LIMITS) });
const bareLedgerFloor = want("bare ledger floor") && await startBare({ worker: "ledger floor", upstream: simUrl });
const port = (base) => base + Math.floor(Math.random() * 1000);
const portkeyPort = port(20000);
const portkey = want("portkey") && await serve("node", [PORTKEY, `--port=${portkeyPort}`, "--headless"], { NODE_ENV: "production" }, `http://127.0.0.1:${portkeyPort}/`);
const litellmPort = port(22000);
const config = join(ROOT, "target", "bench", "litellm.yaml");
mkdirSync(join(ROOT, "target", "bench"), { recursive: true });
writeFileSync(config, `model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/sim-model\n      api_base: ${simUrl}/v1\n      api_key: sk-sim\nlitellm_settings:\n  telemetry: false\n`);
const litellm = want("litellm") && await serve(
  LITELLM,
  ["--config", config, "--host", "127.0.0.1", "--port", String(litellmPort), "--num_workers", "1"],
  { LITELLM_MASTER_KEY: LITELLM_KEY, LITELLM_LOCAL_MODEL_COST_MAP: "True", LITELLM_LOG: "ERROR" },
  `http://127.0.0.1:${litellmPort}/health/liveliness`,
);

const targets = {
  direct: { url: `${simUrl}/v1/chat/completions`, headers: {}, body: JSON.stringify({ ...JSON.parse(BODY), model: "sim-model" }) },
  ...(floor ? { "workerd floor": { url: `${floor.url}/v1/chat/completions`, headers: {}, body: JSON.stringify({ ...JSON.parse(BODY), model: "sim-model" }) } } : {}),
  ...(edgegate ? { edgegate: { url: `${edgegate.url}/v1/chat/completions`, headers: { authorization: "Bearer sk-bench" } } } : {}),
  ...(bareFloor ? { "bare floor": { url: `${bareFloor.url}/v1/chat/completions`, headers: {}, body: JSON.stringify({ ...JSON.parse(BODY), model: "sim-model" }) } } : {}),
  ...(bareEdgegate ? { "bare edgegate": { url: `${bareEdgegate.url}/v1/chat/completions`, headers: { authorization: "Bearer sk-bench", ...CF_BLOB } } } : {}),
  ...(bareNotable ? { "bare edgegate notable": { url: `${bareNotable.url}/v1/chat/completions`, headers: { authorization: "Bearer sk-bench", ...CF_BLOB } } } : {}),
  ...(bareLedgerFloor ? { "bare ledger floor": { url: `${bareLedgerFloor.url}/v1/chat/completions`, headers: {}, body: JSON.stringify({ ...JSON.parse(BODY), model: "sim-model" }) } } : {}),
  ...(bareLimits ? { "bare edgegate limits": { url: `${bareLimits.url}/v1/chat/completions`, headers: { authorization: "Bearer sk-bench", ...CF_BLOB } } } : {}),
  ...(notable ? { "edgegate notable": { url: `${notable.url}/v1/chat/completions`, headers: { authorization: "Bearer sk-bench" } } } : {}),
  // No upstream at all: a Worker that echoes the body, and edgegate answering from its built-in mock.
  ...(floor ? { "workerd static": { url: `${floor.url}/static`, headers: {} } } : {}),
  ...(edgegate ? { "edgegate mock": { url: `${edgegate.url}/v1/chat/completions`, headers: { authorization: "Bearer sk-bench" }, body: JSON.stringify({ ...JSON.parse(BODY), model: "mock" }) } } : {}),
  portkey: {
    url: `http://127.0.0.1:${portkeyPort}/v1/chat/completions`,
    headers: { "x-portkey-provider": "openai", "x-portkey-custom-host": `${simUrl}/v1`, authorization: "Bearer sk-sim" },
    body: JSON.stringify({ ...JSON.parse(BODY), model: "sim-model" }),
  },
  litellm: { url: `http://127.0.0.1:${litellmPort}/v1/chat/completions`, headers: { authorization: `Bearer ${LITELLM_KEY}` } },
};

if (only) for (const name of Object.keys(targets)) if (name !== "direct" && !only.includes(name)) delete targets[name];
const runs = Object.fromEntries(Object.keys(targets).map((k) => [k, []]));
const streams = {};
try {
  for (const t of Object.values(targets)) await load(t.url, t.headers, t.body); // warm up every target
  for (let i = 0; i < RUNS; i++) {
    for (const [name, t] of Object.entries(targets)) runs[name].push(await load(t.url, t.headers, t.body));
  }
  for (const [name, t] of Object.entries(targets)) streams[name] = await firstChunk(t.url, t.headers, t.body ?? BODY);
} finally {
  if (litellm) await litellm.stop();
  if (portkey) await portkey.stop();
  if (edgegate) await edgegate.stop();
  if (notable) await notable.stop();
  if (bareFloor) await bareFloor.stop();
  if (bareEdgegate) await bareEdgegate.stop();
  if (bareNotable) await bareNotable.stop();
  if (bareLimits) await bareLimits.stop();
  if (bareLedgerFloor) await bareLedgerFloor.stop();
  if (floor) await floor.stop();
  await sim.stop();
}

const summary = {};
for (const [name, list] of Object.entries(runs)) {
  summary[name] = Object.fromEntries(["p50", "p90", "p99", "max", "rate", "ok"].map((k) => [k, median(list.map((r) => r[k]))]));
}
const overhead = {};
for (const name of Object.keys(summary).filter((n) => n !== "direct")) {
  overhead[name] = Object.fromEntries(["p50", "p90", "p99", "max"].map((k) => [k, summary[name][k] - summary.direct[k]]));
}
const machine = `${cpus().length} × ${cpus()[0]?.model ?? "?"}`;
const result = { machine, rate: RATE, seconds: SECONDS, runs: RUNS, summary, overhead, streams, raw: runs };
writeFileSync(join(ROOT, "target", "bench", "peers.json"), JSON.stringify(result, null, 2) + "\n");

const f = (x) => (Number.isFinite(x) ? x.toFixed(2) : "—").padStart(8);
console.log(`${machine}; ${RATE} requests/s for ${SECONDS} s, median of ${RUNS} runs (ms)`);
console.log(`${"".padEnd(22)} ${"p50".padStart(8)} ${"p90".padStart(8)} ${"p99".padStart(8)} ${"max".padStart(8)} ${"rate".padStart(8)} ${"ok".padStart(6)} | overhead ${"p50".padStart(8)} ${"p99".padStart(8)} | first chunk p50`);
for (const [name, s] of Object.entries(summary)) {
  const o = overhead[name];
  console.log(
    `${name.padEnd(22)} ${f(s.p50)} ${f(s.p90)} ${f(s.p99)} ${f(s.max)} ${f(s.rate)} ${(s.ok * 100).toFixed(0).padStart(5)}% | ${" ".repeat(8)} ${o ? f(o.p50) : " ".repeat(8)} ${o ? f(o.p99) : " ".repeat(8)} | ${f(streams[name]?.p50)}`,
  );
}
result.own = {};
for (const [gw, fl] of [["edgegate", "workerd floor"], ["bare edgegate", "bare floor"], ["bare edgegate notable", "bare floor"], ["bare edgegate limits", "bare ledger floor"]].filter(([g, f]) => overhead[g] && overhead[f])) {
  const own = Object.fromEntries(["p50", "p99"].map((k) => [k, overhead[gw][k] - overhead[fl][k]]));
  result.own[gw] = own;
  console.log(`${gw} beyond the ${fl} (the gateway's own work): p50 ${own.p50.toFixed(2)} ms, p99 ${own.p99.toFixed(2)} ms`);
}
writeFileSync(join(ROOT, "target", "bench", "peers.json"), JSON.stringify(result, null, 2) + "\n");
for (const gw of ["edgegate", "bare edgegate", "bare edgegate notable"]) {
  for (const peer of ["portkey", "litellm"].filter((p) => overhead[p] && overhead[gw])) {
    console.log(`p99 overhead ${peer} / ${gw}: ${(overhead[peer].p99 / overhead[gw].p99).toFixed(1)}×; p50: ${(overhead[peer].p50 / overhead[gw].p50).toFixed(1)}×`);
  }
}
