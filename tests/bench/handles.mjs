// What a Worker's per-request steps leave for V8's young-generation collector in workerd, step by
// step. Each variant is a small JavaScript Worker, in workerd without Miniflare
// (tests/bench/workerd.mjs), that does one step more than a base Worker which buffers the request,
// fetches the upstream simulator and answers with its body; the last two rows are edgegate itself.
// Under a fixed-rate load, V8's `--trace-gc-nvp` lines give, per request: the runtime's global
// handles the scavenges met (each counted once, when it is promoted or dies), the bytes
// allocated, and the scavenges' pause, over the requests between the run's first and last
// collection. A step's cost in JavaScript need not be its cost from wasm: a change to the Worker
// adapter is measured on the `edgegate` row (docs/benchmarks.md).
//
//   bash -c 'source deploy/local/setup.sh && node tests/bench/handles.mjs [--rate R] [--seconds S] [--runs N]'
//
// (EDGEGATE_UPSTREAM_SIM set; oha from `bash tests/bench/peers-setup.sh`.) Asserts nothing.
import { startSimulator } from "../e2e/lib.mjs";
import { benchPolicy, chatBody, numberArg as arg, oha } from "./common.mjs";
import { CF_BLOB, startBare } from "./workerd.mjs";

const RATE = arg("--rate", 400);
const SECONDS = arg("--seconds", 15);
const RUNS = arg("--runs", 1);

/** The base Worker with `steps` added at its marks: `head` (after the request's body is read),
 * `answer` (after the upstream's answer arrives) and `end` (before the answer is returned). */
const worker = (steps = {}) => `const JSON_TYPE = [["content-type", "application/json"]];
const DECODER = new TextDecoder();
const BYTES = new TextEncoder().encode("x".repeat(1800));
export default {
  async fetch(req, env, ctx) {
    const sink = [];
    const body = await req.arrayBuffer();
    ${steps.head ?? ""}
    const r = await fetch(env.UPSTREAM + "/v1/chat/completions", { method: "POST", headers: JSON_TYPE, body });
    ${steps.answer ?? ""}
    const b = await r.arrayBuffer();
    ${steps.end ?? ""}
    return new Response(b, { status: r.status, headers: ${steps.headers ?? "JSON_TYPE"} });
  },
};`;

const VARIANTS = {
  "forwarding floor": "floor",
  base: worker(),
  "+ request headers by entries()": worker({ head: "for (const [k, v] of req.headers) sink.push(k, v);" }),
  "+ request headers by forEach": worker({ head: "req.headers.forEach((v, k) => sink.push(k, v));" }),
  "+ answer headers by entries()": worker({ answer: "for (const [k, v] of r.headers) sink.push(k, v);" }),
  "+ answer headers by forEach": worker({ answer: "r.headers.forEach((v, k) => sink.push(k, v));" }),
  "+ request.cf read": worker({ head: "sink.push(req.cf?.country);" }),
  "+ answer's Headers object": worker({ headers: "new Headers(JSON_TYPE)" }),
  "+ waitUntil(resolved promise)": worker({ end: "ctx.waitUntil(Promise.resolve());" }),
  "+ waitUntil(timer of 0 ms)": worker({ end: "ctx.waitUntil(new Promise((r) => setTimeout(r, 0)));" }),
  "+ console.log of 900 bytes": worker({ end: "console.log('x'.repeat(900));" }),
  "+ console.log of 1800 bytes": worker({ end: "console.log('x'.repeat(1800));" }),
  "+ console.log of 1800 bytes of JSON": worker({ end: "console.log(JSON.stringify({ a: Array.from({ length: 60 }, (_, i) => ({ k: i, s: 'abcdef' })) }).slice(0, 1800));" }),
  "+ console.log of 'x'": worker({ end: "console.log('x');" }),
  "+ console.log of 1800 bytes after a timer": worker({ end: "ctx.waitUntil(new Promise((r) => setTimeout(() => r(console.log('x'.repeat(1800))), 0)));" }),
  "+ TextDecoder of 1800 bytes": worker({ end: "sink.push(DECODER.decode(BYTES));" }),
  "+ console.log of a TextDecoder's 1800 bytes": worker({ end: "console.log(DECODER.decode(BYTES));" }),
  "+ 4 × crypto.getRandomValues": worker({ end: "for (let i = 0; i < 4; i++) sink.push(crypto.getRandomValues(new Uint8Array(16)));" }),
  "+ 4 × queueMicrotask": worker({ end: "for (let i = 0; i < 4; i++) await new Promise((r) => queueMicrotask(r));" }),
  "+ 4 × Promise.then": worker({ end: "for (let i = 0; i < 4; i++) await Promise.resolve().then(() => sink.push(i));" }),
  // edgegate itself, for scale: as the peers benchmark runs it, and logging only notable requests.
  edgegate: { settings: {} },
  "edgegate notable": { settings: { request_logs: "notable" } },
};

const BODY = chatBody("sim-model");
const EDGEGATE_BODY = chatBody("estimated");
const only = process.argv.includes("--variants") ? process.argv[process.argv.indexOf("--variants") + 1].split(",") : null;

/** The collections of the isolate that ran most of them (the Worker's; the KV service's is idle). */
function collections(lines) {
  const by = new Map();
  for (const l of lines) {
    const m = l.match(/\[\d+:(0x[0-9a-f]+)(?::\d+)?\]\s+(\d+) ms: GC: (\{.*\})/);
    if (m) by.set(m[1], [...(by.get(m[1]) ?? []), { ...JSON.parse(m[3]), at: Number(m[2]) }]);
  }
  return [...by.values()].sort((a, b) => b.length - a.length)[0] ?? [];
}

const sim = await startSimulator();
const rows = [];
try {
  for (const [name, source] of Object.entries(VARIANTS).filter(([n]) => !only || only.includes(n))) {
    for (let run = 0; run < RUNS; run++) {
      const gateway = typeof source === "object";
      const policy = gateway ? benchPolicy(sim.url, { policy_refresh_seconds: 60, audit: { enabled: false }, ...source.settings }) : undefined;
      const w = await startBare({ worker: gateway ? "edgegate" : source, policy, upstream: sim.url, v8Flags: ["--trace-gc-nvp"] });
      try {
        const url = `${w.url}/v1/chat/completions`;
        const [headers, body] = gateway ? [{ authorization: "Bearer sk-bench", ...CF_BLOB }, EDGEGATE_BODY] : [CF_BLOB, BODY];
        await oha(url, headers, body, { rate: RATE, seconds: 3 }); // warm up
        const before = collections(w.lines).length;
        const load = await oha(url, headers, body, { rate: RATE, seconds: SECONDS });
        await new Promise((r) => setTimeout(r, 300));
        // Between the window's first and last collection: each collection's counts cover what
        // happened since the one before, so the first is left out and the requests are those
        // sent between the two (at the fixed rate).
        const gcs = collections(w.lines).slice(before);
        const n = gcs.length > 1 ? (load.rate * (gcs.at(-1).at - gcs[0].at)) / 1000 : NaN;
        gcs.shift();
        const scav = gcs.filter((g) => g.gc === "s");
        const sum = (xs, f) => xs.reduce((s, g) => s + (g[f] ?? 0), 0);
        rows.push({
          name,
          requests: Math.round(n),
          ok: load.ok,
          handles: (sum(scav, "nodes_promoted") + sum(scav, "nodes_died_in_new")) / n,
          kb: sum(gcs, "allocated") / n / 1000,
          scavenges: scav.length,
          pause_per_1000: (sum(scav, "pause") / n) * 1000,
          p99: load.p99,
        });
        const r = rows.at(-1);
        console.log(
          `${name.padEnd(34)} handles/request ${r.handles.toFixed(2).padStart(6)}  KB/request ${r.kb.toFixed(1).padStart(5)}  scavenges ${String(r.scavenges).padStart(3)}  pause ms per 1000 requests ${r.pause_per_1000.toFixed(1).padStart(5)}  p99 ${r.p99.toFixed(2)} ms  ok ${(r.ok * 100).toFixed(0)}%`,
        );
      } finally {
        await w.stop();
      }
    }
  }
} finally {
  await sim.stop();
}
