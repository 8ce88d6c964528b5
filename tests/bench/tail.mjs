// Where edgegate's tail latency at a fixed rate comes from: the client's percentiles (oha,
// latency-corrected) beside the percentiles of the same requests' own records (the handler's
// duration and its upstream attempts, as the Worker timed them), and the slow records by when
// they started. When the client's p99 is far above the records' p99, the time was spent where
// the handler could not see it: queued behind something else that held the isolate's thread.
// Usage: bash -c 'source deploy/local/setup.sh && node tests/bench/tail.mjs [--rate R] [--seconds S] [--bare [--floor]] [--limits]'
// (with EDGEGATE_UPSTREAM_SIM set, after `bash tests/bench/peers-setup.sh`). Asserts nothing.
// `--bare`: in workerd without Miniflare (tests/bench/workerd.mjs); there V8_FLAGS=--trace-gc-nvp
// adds the isolate's collections to the lines this prints, and the run's CPU time a request is
// printed (workerd's, all threads). `--bare --floor`: the runtime's floor instead of edgegate
// (with `--limits`, the ledger floor: the same Durable Object calls, in JavaScript; common.mjs),
// which has no records. In Miniflare the collections need its generated config given `v8Flags`
// (a local edit, see docs/benchmarks.md): MF_V8_FLAGS=….
import { records, startSimulator, startWorkerd } from "../e2e/lib.mjs";
import { HIGH_LIMITS, benchPolicy, chatBody, numberArg as arg, oha } from "./common.mjs";
import { CF_BLOB, startBare } from "./workerd.mjs";

const load = { rate: arg("--rate", 200), seconds: arg("--seconds", 10) };
const sim = await startSimulator();
const policy = benchPolicy(sim.url, { policy_refresh_seconds: 60, audit: { enabled: false } });
// `--limits`: the tenant has limits far above the load (a Durable Object round trip each to
// reserve and to settle).
if (process.argv.includes("--limits")) policy.tenants[0].limits = HIGH_LIMITS;
const bare = process.argv.includes("--bare");
const floor = bare && process.argv.includes("--floor");
const v8Flags = process.env.V8_FLAGS?.split(" ") ?? [];
const gw = floor
  ? await startBare({ worker: process.argv.includes("--limits") ? "ledger floor" : "floor", upstream: sim.url, v8Flags })
  : bare
    ? await startBare({ worker: "edgegate", policy, v8Flags })
    : await startWorkerd({ policy });
const body = chatBody("estimated");
const run = () => oha(`${gw.url}/v1/chat/completions`, { authorization: "Bearer sk-bench", ...(bare ? CF_BLOB : {}) }, body, load);
try {
  await run(); // warm up
  const from = gw.lines.length;
  const cpu = gw.cpuMs?.();
  const client = await run();
  const cpuPerRequest = gw.cpuMs && (gw.cpuMs() - cpu) / (load.rate * load.seconds);
  await new Promise((r) => setTimeout(r, 500));
  const lines = gw.lines.slice(from);
  const recs = records(lines);
  const q = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];
  const own = recs.map((r) => r.duration_ms);
  const upstream = recs.map((r) => r.attempts.reduce((s, a) => s + a.duration_ms, 0));
  console.log(`${load.rate}/s for ${load.seconds} s; ms`);
  console.log(`client (oha):      p50 ${client.p50.toFixed(2)}  p99 ${client.p99.toFixed(2)}  max ${client.max.toFixed(2)}`);
  if (cpuPerRequest) console.log(`workerd CPU a request: ${cpuPerRequest.toFixed(3)} ms`);
  if (recs.length) {
    console.log(`records (${recs.length}):   p50 ${q(own, 0.5)}  p99 ${q(own, 0.99)}  max ${Math.max(...own)}   upstream attempts: p50 ${q(upstream, 0.5)}  p99 ${q(upstream, 0.99)}  max ${Math.max(...upstream)}`);
    const t0 = Math.min(...recs.map((r) => r.start_ms));
    console.log(`records of 5 ms or more, as start (ms into the run):duration: ${recs.filter((r) => r.duration_ms >= 5).map((r) => `${r.start_ms - t0}:${r.duration_ms}`).join(" ")}`);
  }
  const gc = lines.filter((l) => l.includes('"gc":'));
  if (gc.length) console.log(gc.join("\n"));
} finally {
  await gw.stop();
  await sim.stop();
}
