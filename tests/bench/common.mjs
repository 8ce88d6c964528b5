// Shared by the benchmark scripts: the runtime's floor and a policy over the simulator.
import { sha256 } from "../e2e/lib.mjs";

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

/** The runtime's floor: a JavaScript Worker in its own Miniflare that only forwards each request to
 * the upstream simulator. What edgegate adds beyond it is the gateway's own work. */
export async function startFloor(upstream) {
  const { Miniflare } = await import("miniflare");
  const script = `export default {
    async fetch(req, env) {
      const u = new URL(req.url);
      if (u.pathname === "/static") return new Response(await req.text(), { headers: { "content-type": "application/json" } });
      return fetch(env.UPSTREAM + u.pathname, { method: req.method, headers: { "content-type": "application/json" }, body: req.body });
    },
  };`;
  const mf = new Miniflare({ host: "127.0.0.1", port: 0, modules: true, script, bindings: { UPSTREAM: upstream } });
  const url = (await mf.ready).toString().replace(/\/$/, "");
  return { url, stop: () => mf.dispose() };
}
