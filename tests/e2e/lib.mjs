// Starts the real pieces for end-to-end tests: the upstream simulator, the built Worker in
// workerd (Miniflare, with bindings derived from wrangler.toml by wrangler itself), and the built
// Spin component in the Spin test host (driven by spin.toml). Every server listens on 127.0.0.1
// with a port chosen by the OS, and every one is stopped by the returned `stop()`.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import { createServer, connect } from "node:net";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export const sha256 = (s) => "sha256:" + createHash("sha256").update(s).digest("hex");

/** Spawns a binary that prints `listening on http://ADDR` and resolves once it has. */
function spawnServer(bin, args, env = {}) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    const lines = [];
    const timer = setTimeout(() => reject(new Error(`${bin} did not start in 60 s:\n${err}`)), 60_000);
    child.stderr.on("data", (d) => (err += d));
    child.stdout.on("data", (d) => {
      out += d;
      let i;
      while ((i = out.indexOf("\n")) >= 0) {
        lines.push(out.slice(0, i));
        out = out.slice(i + 1);
      }
      const ready = lines.find((l) => l.startsWith("listening on "));
      if (ready && timer) {
        clearTimeout(timer);
        resolvePromise({
          url: ready.slice("listening on ".length).trim(),
          pid: child.pid,
          lines,
          stderr: () => err,
          stop: () =>
            new Promise((r) => {
              if (child.exitCode !== null) return r();
              child.once("exit", r);
              child.kill("SIGINT");
            }),
        });
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited with ${code}:\n${err}`));
    });
  });
}

/** The upstream simulator; requires `Authorization: Bearer <requireKey>` when given. */
export async function startSimulator({ requireKey } = {}) {
  const bin = process.env.EDGEGATE_UPSTREAM_SIM;
  if (!bin) throw new Error("EDGEGATE_UPSTREAM_SIM is not set: run the tests with `npm test`");
  const args = ["--listen", "127.0.0.1:0"];
  if (requireKey) args.push("--require-key", requireKey);
  const sim = await spawnServer(bin, args);
  sim.received = async () => (await fetch(`${sim.url}/_sim/requests`)).json();
  sim.clear = async () => (await fetch(`${sim.url}/_sim/requests`, { method: "DELETE" })).json();
  return sim;
}

// A TCP port on 127.0.0.1 that never completes a connection: it listens with a backlog of 0 and
// never accepts, and its queue is filled at once, so the kernel drops further connection attempts.
const BLACKHOLE = `
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
port = s.getsockname()[1]
fill = []
for _ in range(8):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    fill.append(c)
print(f"listening on http://127.0.0.1:{port}", flush=True)
while True: time.sleep(3600)
`;

/** A provider address that accepts no connection (connection attempts hang until they time out). */
export function startBlackhole() {
  return spawnServer(process.env.EDGEGATE_PYTHON ?? "python3", ["-c", BLACKHOLE]);
}

/**
 * A stand-in for the Workers AI binding (the real one is proxied to Cloudflare and cannot run
 * offline): an object of class `Ai` whose `run(model, input)` answers text-generation inputs the
 * way Workers AI does — a result object, or a ReadableStream of SSE when `input.stream` is set. It
 * refuses inputs that are not plain JSON objects, as the real binding would misread them.
 */
const FAKE_WORKERS_AI = `
class Ai {
  async run(model, input) {
    if (Object.getPrototypeOf(input) !== Object.prototype || !Array.isArray(input.messages)) throw new Error("AiError: 5006: input must be a JSON object");
    const last = [...input.messages].reverse().find((m) => m.role === "user");
    const text = "Workers AI " + model + " says: " + (last ? last.content : "");
    const usage = { prompt_tokens: 7, completion_tokens: text.split(" ").length, total_tokens: 7 + text.split(" ").length };
    if (input.stream) {
      const enc = new TextEncoder();
      return new ReadableStream({ start(c) {
        for (const w of text.split(/(?<= )/)) c.enqueue(enc.encode("data: " + JSON.stringify({ response: w }) + "\\n\\n"));
        c.enqueue(enc.encode("data: " + JSON.stringify({ response: "", usage }) + "\\n\\n"));
        c.enqueue(enc.encode("data: [DONE]\\n\\n"));
        c.close();
      } });
    }
    if (input.tools && input.tools.length) return { response: null, tool_calls: [{ name: input.tools[0].function.name, arguments: { query: text } }], usage };
    return { response: text, usage };
  }
}
export default function () { return new Ai(); }
`;

// A wrapper around the real policy KV namespace that fails every call while the inner store
// holds the key `__fault` — how a test makes KV unavailable to the Worker.
const FAULTY_KV = `
export default function (env) {
  const inner = env.INNER;
  const guard = async () => { if (await inner.get("__fault")) throw new Error("simulated KV outage"); };
  return {
    async get(...a) { await guard(); return inner.get(...a); },
    async getWithMetadata(...a) { await guard(); return inner.getWithMetadata(...a); },
    async put(...a) { await guard(); return inner.put(...a); },
    async list(...a) { await guard(); return inner.list(...a); },
    async delete(...a) { await guard(); return inner.delete(...a); },
  };
}
`;

/** The bootstrap admin key both runtimes are started with. */
export const ADMIN_KEY = "sk-e2e-bootstrap-admin";

/** Calls the gateway's admin API; returns `{ status, body }`. */
export async function admin(url, method, path, body, key = ADMIN_KEY) {
  const res = await fetch(`${url}/admin${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, body: json ?? text, headers: res.headers };
}

/** Publishes `policy` to everyone through the admin API; returns its version. */
export async function publish(url, policy) {
  const res = await admin(url, "POST", "/policy/publish", { policy, note: "e2e" });
  if (res.status !== 200) throw new Error(`publish failed: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body.version;
}

/**
 * The built Worker in workerd, with `policy` published and `secrets` as secret bindings.
 * `faultyKv`: policy KV goes through a wrapper the test can make fail (`setKvFault`).
 * `stateDir`: KV and Durable Objects persisted where `wrangler … --local --persist-to stateDir`
 * (and so the admin CLI's `--target local`) reads and writes them; a second start on the same
 * directory finds them again.
 * `cf`: the `request.cf` object workerd gives the Worker (where the request was received).
 * `workersAi: false` leaves out the `AI` binding (a Miniflare wrapped binding, which alone adds
 * over half a second to startup: the cold-start benchmark measures without it).
 */
export async function startWorkerd({ policy, secrets = {}, faultyKv = false, stateDir = null, cf = DEFAULT_CF, inspectorPort, workersAi = true }) {
  const { Miniflare } = await import("miniflare");
  const { unstable_getMiniflareWorkerOptions } = await import("wrangler");
  const { workerOptions, main } = unstable_getMiniflareWorkerOptions(join(ROOT, "wrangler.toml"));
  const logs = [];
  const edgegate = {
    ...workerOptions,
    name: "edgegate",
    modules: true,
    modulesRoot: ROOT,
    scriptPath: main ?? join(ROOT, "edge/cloudflare/entry.mjs"),
    // The built Worker (`build/index.js`, imported by `entry.mjs`) is an ES module.
    modulesRules: [
      { type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true },
      { type: "ESModule", include: ["**/*.js"] },
    ],
    bindings: { ...(workerOptions.bindings ?? {}), EDGEGATE_ADMIN_KEY: ADMIN_KEY, EDGEGATE_ADMIN_API: "on", ...secrets },
    wrappedBindings: workersAi ? { AI: { scriptName: "fake-workers-ai" } } : {},
  };
  const workers = [edgegate, ...(workersAi ? [{ name: "fake-workers-ai", modules: true, script: FAKE_WORKERS_AI }] : [])];
  if (faultyKv) {
    edgegate.kvNamespaces = {};
    edgegate.wrappedBindings.POLICY = { scriptName: "faulty-kv" };
    workers.push({ name: "faulty-kv", modules: true, script: FAULTY_KV, kvNamespaces: { INNER: "policy-inner" } });
  }
  const mf = new Miniflare({
    cf,
    workers,
    inspectorPort,
    host: "127.0.0.1",
    port: 0,
    kvPersist: stateDir ? join(stateDir, "v3", "kv") : false,
    durableObjectsPersist: stateDir ? join(stateDir, "v3", "do") : false,
    handleRuntimeStdio(stdout, stderr) {
      stdout.on("data", (d) => logs.push(...String(d).split("\n").filter(Boolean)));
      stderr.on("data", (d) => process.stderr.write(d));
    },
  });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  const kv = faultyKv ? await mf.getKVNamespace("INNER", "faulty-kv") : await mf.getKVNamespace("POLICY");
  if (policy) await publish(url, policy);
  return {
    url,
    kv,
    setKvFault: (on) => (on ? kv.put("__fault", "1") : kv.delete("__fault")),
    lines: logs,
    setPolicy: (p) => publish(url, p),
    stop: () => mf.dispose(),
  };
}

/** Where Miniflare says requests arrive unless a test says otherwise (it would otherwise try to fetch one). */
export const DEFAULT_CF = { colo: "DFW", country: "US", continent: "NA", httpProtocol: "HTTP/1.1" };

/** Parses the runtime's log lines into request records. */
export function records(lines) {
  return lines
    .map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return null;
      }
    })
    .filter((r) => r?.request_id);
}

/** The first truthy value `probe()` resolves to, asking every `ms` up to `tries` times, or null (for what deferred work writes). */
export async function eventually(probe, { tries = 100, ms = 20 } = {}) {
  for (let i = 0; i < tries; i++) {
    const found = await probe();
    if (found) return found;
    await new Promise((r) => setTimeout(r, ms));
  }
  return null;
}

/** The record of request `id`, once the gateway `gw` has logged it (waits up to 2 s), or null. */
export function recordOf(gw, id) {
  return eventually(() => records(gw.lines).find((r) => r.request_id === id));
}

/** POSTs a chat completion with `messages` (and `extra` fields, `headers`) to the gateway at `url` with `key`; the raw Response. */
export function chatCompletion(url, key, model, messages, extra = {}, headers = {}) {
  return fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...headers },
    body: JSON.stringify({ model, messages, ...extra }),
  });
}

/**
 * Open-loop load: `rps` requests a second for `seconds`, each `send(i)` resolving to an object
 * with a `status`. At most `inFlight` run at once; a request due while that many are running is
 * not sent and is counted as `skipped` (the load generator, not the gateway, fell behind).
 */
export async function steadyLoad({ send, rps, seconds, inFlight = 48 }) {
  const results = [];
  const start = Date.now();
  const total = Math.round(rps * seconds);
  let active = 0;
  let skipped = 0;
  const running = [];
  for (let i = 0; i < total; i++) {
    const wait = start + (i * 1000) / rps - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (active >= inFlight) {
      skipped++;
      continue;
    }
    active++;
    const at = Date.now() - start;
    running.push(
      send(i)
        .catch((e) => ({ status: 0, error: String(e) }))
        .then((r) => results.push({ i, at, ...r }))
        .finally(() => active--),
    );
  }
  await Promise.all(running);
  return { results, skipped, seconds: (Date.now() - start) / 1000 };
}

/**
 * The built Spin component in the Spin test host, with `policy` published: spin.toml's (the
 * pre-initialised one), or `component` (a path from the project root) under spin.toml's settings.
 */
export async function startSpin({ policy, variables = {}, component }) {
  const bin = process.env.EDGEGATE_SPIN_HOST;
  if (!bin) throw new Error("EDGEGATE_SPIN_HOST is not set: run the tests with `npm test`");
  const dir = mkdtempSync(join(tmpdir(), "edgegate-spin-"));
  let manifest = join(ROOT, "spin.toml");
  if (component) {
    const text = readFileSync(manifest, "utf8");
    const replaced = text.replace(/^source = ".*"$/m, () => `source = ${JSON.stringify(join(ROOT, component))}`);
    if (replaced === text) throw new Error("spin.toml has no `source = \"…\"` line to replace");
    manifest = join(dir, "spin.toml");
    writeFileSync(manifest, replaced);
  }
  const env = Object.fromEntries(Object.entries({ edgegate_admin_key: ADMIN_KEY, edgegate_admin_api: "on", ...variables }).map(([k, v]) => [`SPIN_VARIABLE_${k.toUpperCase()}`, v]));
  const host = await spawnServer(
    bin,
    ["--manifest", manifest, "--listen", "127.0.0.1:0", "--state-dir", join(dir, "state")],
    env,
  );
  if (policy) await publish(host.url, policy);
  return {
    url: host.url,
    pid: host.pid,
    lines: host.lines,
    stateDir: join(dir, "state"),
    setPolicy: (p) => publish(host.url, p),
    stop: async () => {
      await host.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A free TCP port on 127.0.0.1 (closed again before it is returned). */
function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/**
 * A Redis server on 127.0.0.1 (Debian's, from `EDGEGATE_REDIS_SERVER`), in memory only. `command`
 * sends one command and resolves with its raw RESP reply.
 */
export async function startRedis() {
  const bin = process.env.EDGEGATE_REDIS_SERVER;
  if (!bin) throw new Error("EDGEGATE_REDIS_SERVER is not set: run the tests with `npm test`");
  const port = await freePort();
  const child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
  await new Promise((res, rej) => {
    let out = "";
    const timer = setTimeout(() => rej(new Error(`redis-server did not start in 20 s:\n${out}`)), 20_000);
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("Ready to accept connections")) {
        clearTimeout(timer);
        res();
      }
    });
    child.stderr.on("data", (d) => (out += d));
    child.once("exit", (code) => {
      clearTimeout(timer);
      rej(new Error(`redis-server exited with ${code}:\n${out}`));
    });
  });
  child.removeAllListeners("exit");
  const url = `redis://127.0.0.1:${port}`;
  const command = (...args) =>
    new Promise((res, rej) => {
      const sock = connect(port, "127.0.0.1");
      let reply = "";
      sock.on("data", (d) => {
        reply += d;
        if (reply.endsWith("\r\n")) {
          sock.end();
          res(reply);
        }
      });
      sock.on("error", rej);
      sock.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(""));
    });
  return {
    url,
    command,
    stop: () =>
      new Promise((r) => {
        if (child.exitCode !== null) return r();
        child.once("exit", r);
        child.kill("SIGTERM");
      }),
  };
}

/** Parses an SSE body into its data payloads. */
export function sseData(text) {
  return text
    .split(/\r?\n\r?\n/)
    .map((frame) =>
      frame
        .split(/\r?\n/)
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n"),
    )
    .filter((d) => d.length > 0);
}

/** Waits, if needed, so that the next `seconds` do not cross a minute boundary. */
export async function awayFromMinuteEdge(seconds = 8) {
  const intoMinute = (Date.now() % 60_000) / 1000;
  if (intoMinute > 60 - seconds) await new Promise((r) => setTimeout(r, (60 - intoMinute + 0.2) * 1000));
}
