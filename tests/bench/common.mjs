// Shared by the benchmark scripts: the runtime's floor, a policy over the simulator, and a
// fixed-rate load run by oha.
import { spawn } from "node:child_process";
import { homedir } from "node:os";
import { join } from "node:path";
import { sha256 } from "../e2e/lib.mjs";

const OHA = process.env.EDGEGATE_OHA ?? join(process.env.EDGEGATE_CACHE ?? join(homedir(), ".cache", "edgegate"), "tools", "oha", "bin", "oha");

/** Runs a program to its end without blocking the event loop (workerd's log pipe must keep
 * draining, or the Worker stalls once 64 KB of records are unread); its standard output. */
export function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited with ${code}`))));
  });
}

/** One oha run (`bash tests/bench/peers-setup.sh` installs it): POSTs of `body` at a fixed
 * `rate` for `seconds`, latency-corrected; latencies in ms. */
export async function oha(url, headers, body, { rate, seconds }) {
  const args = ["-z", `${seconds}s`, "-q", String(rate), "-c", "64", "--latency-correction", "--no-tui", "--output-format", "json", "-m", "POST", "-d", body];
  for (const [k, v] of Object.entries({ "content-type": "application/json", ...headers })) args.push("-H", `${k}: ${v}`);
  const out = JSON.parse(await run(OHA, [...args, url]));
  const p = out.latencyPercentiles;
  const ms = (s) => s * 1000;
  const codes = out.statusCodeDistribution ?? {};
  return {
    p50: ms(p.p50),
    p90: ms(p.p90),
    p99: ms(p.p99),
    max: ms(out.summary.slowest),
    rate: out.summary.requestsPerSec,
    ok: (codes["200"] ?? 0) / Math.max(1, Object.values(codes).reduce((a, b) => a + b, 0)),
  };
}

/** A tenant's limits far above any benchmark's load: each request reserves in, and settles with,
 * its ledger (a round trip each) without ever being refused. */
export const HIGH_LIMITS = { requests_per_minute: 1_000_000, tokens_per_minute: 100_000_000 };

/** A one-sentence chat request for `model`, the prompt the benchmarks send. */
export const chatBody = (model) => JSON.stringify({ model, messages: [{ role: "user", content: "Summarise the benchmark in one line." }] });

/** The number after `--name` on the command line, or `fallback`. */
export const numberArg = (name, fallback) => (process.argv.includes(name) ? Number(process.argv[process.argv.indexOf(name) + 1]) : fallback);

/** One tenant and key (`sk-bench`), and two aliases on the simulator at `simUrl`: `counted`
 * (gpt-4o-mini, so its prompts are counted with o200k_base) and `estimated` (a model with no
 * encoding, so its prompts are estimated). */
export function benchPolicy(simUrl, settings = {}) {
  return {
    tenants: [{ id: "bench" }],
    keys: [{ id: "bench", tenant: "bench", hash: sha256("sk-bench") }],
    providers: [{ id: "sim", kind: "openai_compatible", base_url: `${simUrl}/v1` }],
    models: [
      { alias: "counted", targets: [{ provider: "sim", model: "gpt-4o-mini" }] },
      { alias: "estimated", targets: [{ provider: "sim", model: "sim-model" }] },
    ],
    settings,
  };
}

/** The runtime's floor: a JavaScript Worker that only forwards each request to the upstream
 * simulator (`env.UPSTREAM`); `/static` echoes the body instead. */
export const FLOOR = `export default {
  async fetch(req, env) {
    const u = new URL(req.url);
    if (u.pathname === "/static") return new Response(await req.text(), { headers: { "content-type": "application/json" } });
    return fetch(env.UPSTREAM + u.pathname, { method: req.method, headers: { "content-type": "application/json" }, body: req.body });
  },
};`;

/** The runtime's floor for a tenant with limits: the forwarding floor plus what a ledger costs in
 * the same runtime, written in JavaScript. Before forwarding, the Worker reserves in the tenant's
 * Durable Object and awaits its answer; after answering, it settles there (`waitUntil`). Each is
 * an RPC call with a JSON string each way that changes the object's book (one JSON row in its
 * SQLite storage, kept in memory once read) and writes it back, as edgegate's `Ledger` does. What edgegate with limits adds beyond this is its own work. */
export const LEDGER_FLOOR = `import { DurableObject } from "cloudflare:workers";
export class Ledger extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.sql.exec("CREATE TABLE IF NOT EXISTS book (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL)");
  }
  apply(json) {
    const op = JSON.parse(json);
    const row = this.book ? null : this.sql.exec("SELECT json FROM book WHERE id = 1").toArray()[0];
    const book = (this.book ??= row ? JSON.parse(row.json) : { requests: 0, tokens: 0, holds: {} });
    if (op.reserve) (book.requests += 1), (book.tokens += op.tokens), (book.holds[op.id] = op.tokens);
    else (book.tokens += op.tokens - (book.holds[op.id] ?? 0)), delete book.holds[op.id];
    this.sql.exec("INSERT INTO book (id, json) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET json = excluded.json", JSON.stringify(book));
    return JSON.stringify({ ok: true });
  }
}
export default {
  async fetch(req, env, ctx) {
    const u = new URL(req.url);
    const ledger = env.LEDGER.get(env.LEDGER.idFromName("bench"));
    const id = crypto.randomUUID();
    const call = async (op) => JSON.parse(await ledger.apply(JSON.stringify({ id, ...op })));
    await call({ reserve: true, tokens: 64 });
    const body = await req.arrayBuffer();
    const res = await fetch(env.UPSTREAM + u.pathname, { method: req.method, headers: { "content-type": "application/json" }, body });
    const answer = await res.arrayBuffer();
    ctx.waitUntil(call({ settle: true, tokens: 40 }));
    return new Response(answer, { status: res.status, headers: { "content-type": "application/json" } });
  },
};`;

/** The floor in its own Miniflare. What edgegate adds beyond it is the gateway's own work. */
export async function startFloor(upstream) {
  const { Miniflare } = await import("miniflare");
  const mf = new Miniflare({ host: "127.0.0.1", port: 0, modules: true, script: FLOOR, bindings: { UPSTREAM: upstream } });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  return { url, stop: () => mf.dispose() };
}
