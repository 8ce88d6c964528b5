// What exact token counting costs in workerd: the first request of a fresh isolate on an alias
// served by an OpenAI model (its prompt is counted with o200k_base, whose tables are built then)
// against the first request on an alias whose model has no encoding (estimated), each in its own
// fresh workerd; then the same pair warm. The difference of medians is the tokenizer's first-use
// cost, and its cost per 1 KB prompt once warm. Through the upstream simulator on 127.0.0.1.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/tokenizer.mjs [rounds]'
// Needs the built Worker and the harness (npm test builds both). Asserts nothing.
import { startSimulator, startWorkerd } from "../e2e/lib.mjs";
import { benchPolicy } from "./common.mjs";

const rounds = Number(process.argv[2] ?? 7);
const sim = await startSimulator();
const policy = benchPolicy(sim.url);
// About 1 KB of mixed prose.
const prompt = "The gateway counts every prompt before it admits it; 价格 und Größe zählen. ".repeat(14).slice(0, 1024);
const once = async (url, model) => {
  const body = JSON.stringify({ model, messages: [{ role: "user", content: prompt }] });
  const t = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { authorization: "Bearer sk-bench" }, body });
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  return performance.now() - t;
};
const times = { counted: { first: [], warm: [] }, estimated: { first: [], warm: [] } };
for (let i = 0; i < rounds; i++) {
  for (const model of ["counted", "estimated"]) {
    const gw = await startWorkerd({ policy });
    times[model].first.push(await once(gw.url, model));
    const warm = [];
    for (let j = 0; j < 20; j++) warm.push(await once(gw.url, model));
    times[model].warm.push(median(warm));
    await gw.stop();
  }
}
await sim.stop();
function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
const row = (name, xs) => console.log(`${name.padEnd(46)} median ${median(xs).toFixed(2).padStart(7)} ms  (${xs.map((x) => x.toFixed(1)).join(" ")})`);
console.log(`${rounds} fresh workerd isolates per alias, 1 KB prompt`);
row("first request, counted (o200k_base)", times.counted.first);
row("first request, estimated (no encoding)", times.estimated.first);
row("warm request, counted", times.counted.warm);
row("warm request, estimated", times.estimated.warm);
console.log(`tokenizer first use in a fresh isolate: ${(median(times.counted.first) - median(times.estimated.first)).toFixed(2)} ms; warm, per 1 KB prompt: ${(median(times.counted.warm) - median(times.estimated.warm)).toFixed(3)} ms`);
