// What a request pays for the firewall and for exact token counting when every request runs in a
// fresh instance (Spin's HTTP trigger) against an isolate that keeps them (workerd): sequential
// requests through the simulator, alternating an alias with the firewall's prompt rules off
// (`open`), the default firewall on an estimated alias (`estimated`), and the default firewall on
// an alias counted with o200k_base (`counted`). The differences of medians are each feature's
// per-request cost on each runtime. Prints medians; writes target/bench/instance.json.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/instance.mjs [rounds]'
// (with EDGEGATE_UPSTREAM_SIM and EDGEGATE_SPIN_HOST set). Not part of the test command.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, startSimulator, startSpin, startWorkerd } from "../e2e/lib.mjs";
import { benchPolicy } from "./common.mjs";

const rounds = Number(process.argv[2] ?? 100);
const sim = await startSimulator();
const policy = benchPolicy(sim.url, { policy_refresh_seconds: 60, audit: { enabled: false } });
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
const result = { rounds, prompt_bytes: prompt.length };
for (const [runtime, start] of [["workerd", () => startWorkerd({ policy, workersAi: false })], ["spin", () => startSpin({ policy })]]) {
  const gw = await start();
  const times = { open: [], estimated: [], counted: [] };
  for (let i = 0; i < 10; i++) for (const alias of Object.keys(times)) await ask(gw.url, alias);
  for (let i = 0; i < rounds; i++) for (const alias of Object.keys(times)) times[alias].push(await ask(gw.url, alias));
  await gw.stop();
  const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  result[runtime] = m;
  console.log(
    `${runtime.padEnd(8)} medians: open ${m.open.toFixed(2)} ms, estimated ${m.estimated.toFixed(2)} ms, counted ${m.counted.toFixed(2)} ms;` +
      ` firewall +${(m.estimated - m.open).toFixed(2)} ms, exact count +${(m.counted - m.estimated).toFixed(2)} ms`,
  );
}
await sim.stop();
mkdirSync(join(ROOT, "target/bench"), { recursive: true });
writeFileSync(join(ROOT, "target/bench/instance.json"), JSON.stringify(result, null, 2));
