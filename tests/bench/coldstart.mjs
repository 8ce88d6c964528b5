// Cold start in workerd, end to end: each round starts a new workerd (a fresh isolate) on state a
// first run left behind — the policy already in KV, as in production — and times how long the
// runtime takes to be ready (loading the script, compiling and instantiating the wasm, and the
// module's start hook) and then the first request: the policy read from KV and compiled, the
// firewall, the ledger, the upstream call through the simulator on 127.0.0.1. Alternately on an
// alias whose prompt is estimated and one counted with o200k_base, the latter once with an ASCII
// prompt (whose pieces need not the pattern's automaton) and once with a prompt that is not all
// ASCII (whose first such piece loads it). The same for the workerd
// floor, a JavaScript Worker that only forwards. "Excluding upstream" subtracts the first request's
// upstream attempts as its own record timed them (the simulator's answer, the connection to it
// included), which is how the target is stated. Prints medians; writes target/bench/coldstart.json.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/coldstart.mjs [rounds]'
// (with EDGEGATE_UPSTREAM_SIM set). Not part of the test command: it asserts nothing.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, recordOf, startSimulator, startWorkerd } from "../e2e/lib.mjs";
import { benchPolicy, startFloor } from "./common.mjs";

const rounds = Number(process.argv[2] ?? 7);
const sim = await startSimulator();
const stateDir = mkdtempSync(join(tmpdir(), "edgegate-coldstart-"));
const first = await startWorkerd({
  stateDir,
  workersAi: false,
  policy: benchPolicy(sim.url, { policy_refresh_seconds: 60 }),
});
await first.stop();

const prompts = { ascii: "Summarise the quarterly report for the board in three lines.", wide: "Résumé the quarterly report for the board — in three lines." };
const body = (model, prompt = prompts.ascii) => JSON.stringify({ model, messages: [{ role: "user", content: prompt }] });
const ask = async (url, model, headers = { authorization: "Bearer sk-bench" }, prompt = undefined) => {
  const t = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: body(model, prompt) });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  return { ms: performance.now() - t, id: r.headers.get("x-request-id") };
};
const targets = {
  floor: ["sim-model", {}],
  estimated: ["estimated"],
  counted: ["counted"],
  "counted, not ASCII": ["counted", undefined, prompts.wide],
};
const runs = Object.fromEntries(Object.keys(targets).map((t) => [t, []]));
for (let i = 0; i < rounds; i++) {
  for (const [target, how] of Object.entries(targets)) {
    const t0 = performance.now();
    const gw = target === "floor" ? await startFloor(sim.url) : await startWorkerd({ stateDir, workersAi: false });
    const ready = performance.now() - t0;
    const firstAnswer = await ask(gw.url, ...how);
    const second = await ask(gw.url, ...how);
    // Read after the second request, so that waiting for the log line changes neither timing.
    const record = target === "floor" ? null : await recordOf(gw, firstAnswer.id);
    if (target !== "floor" && !record) throw new Error(`no record of ${firstAnswer.id}`);
    const upstream = record ? record.attempts.reduce((sum, a) => sum + a.duration_ms, 0) : null;
    runs[target].push({ ready, first: firstAnswer.ms, upstream, second: second.ms });
    await gw.stop();
  }
}
await sim.stop();
rmSync(stateDir, { recursive: true, force: true });

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const summary = {};
console.log(`${rounds} fresh workerd processes per target; ms, medians (all runs in brackets)`);
console.log(`${"target".padEnd(22)} ${"ready".padStart(8)} ${"1st request".padStart(12)} ${"excl. upstream".padStart(15)} ${"ready+1st".padStart(10)} ${"2nd request".padStart(12)}`);
for (const [name, rs] of Object.entries(runs)) {
  const own = rs[0].upstream === null ? null : median(rs.map((r) => r.first - r.upstream));
  const s = { ready: median(rs.map((r) => r.ready)), first: median(rs.map((r) => r.first)), first_excluding_upstream: own, total: median(rs.map((r) => r.ready + r.first)), second: median(rs.map((r) => r.second)) };
  summary[name] = { ...s, runs: rs };
  const excl = own === null ? "-" : own.toFixed(1);
  console.log(`${name.padEnd(22)} ${s.ready.toFixed(1).padStart(8)} ${s.first.toFixed(1).padStart(12)} ${excl.padStart(15)} ${s.total.toFixed(1).padStart(10)} ${s.second.toFixed(1).padStart(12)}   [first: ${rs.map((r) => r.first.toFixed(1)).join(" ")}]`);
}
for (const alias of ["estimated", "counted", "counted, not ASCII"]) {
  console.log(`edgegate ${alias} over the floor: first request +${(summary[alias].first - summary.floor.first).toFixed(1)} ms, ready+first +${(summary[alias].total - summary.floor.total).toFixed(1)} ms`);
}
mkdirSync(join(ROOT, "target/bench"), { recursive: true });
writeFileSync(join(ROOT, "target/bench/coldstart.json"), JSON.stringify({ rounds, ...summary }, null, 2));
