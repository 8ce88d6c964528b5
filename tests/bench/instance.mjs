// What a request pays for the firewall and for exact token counting when every request runs in a
// fresh instance (Spin's HTTP trigger) against an isolate that keeps them (workerd): sequential
// requests through the simulator, alternating an alias with the firewall's prompt rules off
// (`open`), the default firewall on an estimated alias (`estimated`), and the default firewall on
// an alias counted with o200k_base (`counted`). The differences of medians are each feature's
// per-request cost on each runtime. Spin runs twice: spin.toml's pre-initialised component, whose
// instances start with the firewall and tokenizer built, and the plain build it is made from.
// CONTAINMENT=off turns containment off: on Spin every screened request then skips its ledger
// write (a fresh instance cannot batch them as a Worker's isolate does). Prints medians; writes
// target/bench/instance.json.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/instance.mjs [rounds]'
// (with EDGEGATE_UPSTREAM_SIM and EDGEGATE_SPIN_HOST set). Not part of the test command.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, startSimulator, startSpin, startWorkerd } from "../e2e/lib.mjs";
import { benchPolicy } from "./common.mjs";

const rounds = Number(process.argv[2] ?? 100);
const sim = await startSimulator();
const policy = benchPolicy(sim.url, { policy_refresh_seconds: 60, audit: { enabled: false }, ...(process.env.CONTAINMENT === "off" ? { containment: { enabled: false } } : {}) });
policy.models.push({ alias: "open", targets: [{ provider: "sim", model: "sim-model" }], firewall: { injection: "off", pii: "off" } });
const prompt = "Summarise the quarterly report for the board: revenue grew in every region, led by demand for the new product line. ".repeat(8);
const ask = async (url, model) => {
  const t = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: "Bearer sk-bench", "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: prompt }] }),
  });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`${model}: status ${r.status}`);
  return performance.now() - t;
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
// CPU time (user + system) a process has used, in ms, from /proc (Linux; 100 ticks a second).
const cpuMs = (pid) => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
};
const result = { rounds, prompt_bytes: prompt.length };
const runtimes = [
  ["workerd", () => startWorkerd({ policy, workersAi: false })],
  ["spin", () => startSpin({ policy })],
  ["spin plain", () => startSpin({ policy, component: "target/wasm32-wasip2/release/edgegate_spin.wasm" })],
];
for (const [runtime, start] of runtimes) {
  const gw = await start();
  const times = { open: [], estimated: [], counted: [] };
  // The Spin host's CPU time per request, summed per alias (its tick is 10 ms, so only the sums
  // over many requests mean anything); workerd runs in several processes, so not there.
  const cpu = { open: 0, estimated: 0, counted: 0 };
  for (let i = 0; i < 10; i++) for (const alias of Object.keys(times)) await ask(gw.url, alias);
  for (let i = 0; i < rounds; i++) {
    for (const alias of Object.keys(times)) {
      const before = gw.pid ? cpuMs(gw.pid) : 0;
      times[alias].push(await ask(gw.url, alias));
      cpu[alias] += gw.pid ? cpuMs(gw.pid) - before : 0;
    }
  }
  await gw.stop();
  const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  const c = Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, v / rounds]));
  result[runtime] = { median_ms: m, ...(gw.pid ? { host_cpu_ms_per_request: c } : {}) };
  const host = gw.pid ? `; host CPU a request: open ${c.open.toFixed(2)}, estimated ${c.estimated.toFixed(2)}, counted ${c.counted.toFixed(2)} ms` : "";
  console.log(
    `${runtime.padEnd(10)} medians: open ${m.open.toFixed(2)} ms, estimated ${m.estimated.toFixed(2)} ms, counted ${m.counted.toFixed(2)} ms;` +
      ` firewall +${(m.estimated - m.open).toFixed(2)} ms, exact count +${(m.counted - m.estimated).toFixed(2)} ms${host}`,
  );
}
await sim.stop();
mkdirSync(join(ROOT, "target/bench"), { recursive: true });
writeFileSync(join(ROOT, "target/bench/instance.json"), JSON.stringify(result, null, 2));
