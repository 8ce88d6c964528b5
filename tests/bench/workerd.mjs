// A Worker in workerd itself (the `workerd` npm package's binary, the one Miniflare runs) from a
// config this file writes, without Miniflare. Miniflare puts an entry Worker of its own in front
// of every Worker it serves, in the same process and on the same thread; in production there is
// none. `startBare` runs edgegate (the built Worker, with a KV service holding its policy in
// memory and its Durable Objects in a temporary directory), the forwarding floor (common.mjs) or
// any JavaScript Worker, so their tails can be measured without the entry Worker's collections
// (docs/benchmarks.md).
import { spawn } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { ADMIN_KEY, ROOT, publish } from "../e2e/lib.mjs";
import { FLOOR, LEDGER_FLOOR } from "./common.mjs";

const WORKERD = createRequire(import.meta.url)(join(ROOT, "node_modules", "workerd"));
const BIN = typeof WORKERD === "string" ? WORKERD : WORKERD.default;

/** KV's binding protocol, served from memory: GET/PUT/DELETE of `/{encoded key}`. */
const KV = `const store = new Map();
export default {
  async fetch(req) {
    const key = decodeURIComponent(new URL(req.url).pathname.slice(1));
    if (req.method === "GET") return store.has(key) ? new Response(store.get(key)) : new Response(null, { status: 404 });
    if (req.method === "PUT") return store.set(key, await req.arrayBuffer()), new Response(null);
    if (req.method === "DELETE") return store.delete(key), new Response(null);
    return new Response(null, { status: 405 });
  },
};`;

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

/** What Cloudflare's edge tells a Worker about where a request arrived (`request.cf`): workerd
 * takes it from this header of each request, as JSON (the sockets' `cfBlobHeader`). */
export const CF_BLOB = { "cf-blob": JSON.stringify({ colo: "DFW", country: "US", continent: "NA", httpProtocol: "HTTP/1.1" }) };

/**
 * `worker`: "edgegate" (needs `policy`), "floor" or "ledger floor" (need `upstream`), or the
 * source of a JavaScript module Worker (given `UPSTREAM` as the floor is, and `LEDGER`, the
 * namespace of its `Ledger` class, if it exports one). `v8Flags`: passed to V8 (e.g.
 * `--trace-gc-nvp`). `caller`: the source of a JavaScript Worker served beside edgegate (at
 * `callerUrl`) with edgegate's `Ledger` namespace as its `LEDGER`. Returns `{ url, callerUrl, pid, lines, cpuMs, stop }`; `lines` are the process's output lines so far.
 *
 * workerd writes its output (every `console.log`, at once) to a file, not a pipe to this process:
 * through a full pipe, workerd would wait until this process read it (it might be in a collection
 * of its own), and the Worker would stall behind it — a stall production does not have.
 */
export async function startBare({ worker, policy, upstream, caller, v8Flags = [] }) {
  const dir = mkdtempSync(join(tmpdir(), "edgegate-workerd-"));
  const port = await freePort();
  const callerPort = caller && (await freePort());
  const build = join(ROOT, "edge", "cloudflare", "build");
  const q = JSON.stringify;
  writeFileSync(join(dir, "kv.js"), KV);
  if (caller) writeFileSync(join(dir, "caller.js"), caller);
  mkdirSync(join(dir, "do"));
  const script = { floor: FLOOR, edgegate: FLOOR, "ledger floor": LEDGER_FLOOR }[worker] ?? worker;
  writeFileSync(join(dir, "floor.js"), script);
  const edgegate = `(
  modules = [
    (name = "entry.js", esModule = embed ${q(relative(dir, join(build, "..", "entry.mjs")))}),
    (name = "build/index.js", esModule = embed ${q(relative(dir, join(build, "index.js")))}),
    (name = "build/index_bg.wasm", wasm = embed ${q(relative(dir, join(build, "index_bg.wasm")))}),
  ],
  compatibilityDate = "2026-04-20",
  bindings = [
    (name = "POLICY", kvNamespace = "kv"),
    (name = "LEDGER", durableObjectNamespace = (className = "Ledger")),
    (name = "EDGEGATE_ADMIN_KEY", text = ${q(ADMIN_KEY)}),
    (name = "EDGEGATE_ADMIN_API", text = "on"),
  ],
  durableObjectNamespaces = [(className = "Ledger", uniqueKey = "edgegate-ledger", enableSql = true)],
  durableObjectStorage = (localDisk = "do-disk"),
  globalOutbound = "internet",
)`;
  // A JavaScript Worker that exports a `Ledger` class gets it as its Durable Object namespace.
  const ledger = /export class Ledger\b/.test(script);
  const floor = `(
  modules = [(name = "floor.js", esModule = embed "floor.js")],
  compatibilityDate = "2026-04-20",
  bindings = [(name = "UPSTREAM", text = ${q(upstream ?? "")})${ledger ? `, (name = "LEDGER", durableObjectNamespace = (className = "Ledger"))` : ""}],${ledger ? `
  durableObjectNamespaces = [(className = "Ledger", uniqueKey = "floor-ledger", enableSql = true)],
  durableObjectStorage = (localDisk = "do-disk"),` : ""}
  globalOutbound = "internet",
)`;
  writeFileSync(
    join(dir, "config.capnp"),
    `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = ${worker === "edgegate" ? edgegate : floor}),
    (name = "kv", worker = (modules = [(name = "kv.js", esModule = embed "kv.js")], compatibilityDate = "2026-04-20")),
    (name = "do-disk", disk = (path = ${q(join(dir, "do"))}, writable = true)),${caller ? `
    (name = "caller", worker = (modules = [(name = "caller.js", esModule = embed "caller.js")], compatibilityDate = "2026-04-20",
      bindings = [(name = "LEDGER", durableObjectNamespace = (className = "Ledger", serviceName = "main"))])),` : ""}
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:${port}", http = (cfBlobHeader = "cf-blob"), service = "main")${caller ? `,
    (name = "caller", address = "127.0.0.1:${callerPort}", http = (), service = "caller")` : ""}],
  v8Flags = ${q(v8Flags)},
);
`,
  );
  const out = join(dir, "output.log");
  const fd = openSync(out, "w");
  const child = spawn(BIN, ["serve", join(dir, "config.capnp"), "--experimental"], { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const output = () => readFileSync(out, "utf8").split("\n").filter(Boolean);
  const url = `http://127.0.0.1:${port}`;
  const stop = () =>
    new Promise((r) => {
      const done = () => (rmSync(dir, { recursive: true, force: true }), r());
      if (child.exitCode !== null) return done();
      child.once("exit", done);
      child.kill("SIGTERM");
    });
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`workerd exited: ${output().slice(-20).join("\n")}`);
    try {
      await fetch(url);
      break;
    } catch {
      if (i > 300) {
        const why = new Error(`workerd did not answer at ${url}: ${output().slice(-20).join("\n")}`);
        throw (await stop(), why);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  if (policy) await publish(url, policy);
  return {
    url,
    callerUrl: caller && `http://127.0.0.1:${callerPort}`,
    pid: child.pid,
    /** CPU time workerd has used so far (user and system, all threads), ms. */
    cpuMs: () => {
      const f = readFileSync(`/proc/${child.pid}/stat`, "utf8").split(") ")[1].split(" ");
      return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ 100)
    },
    get lines() {
      return output();
    },
    stop,
  };
}
