// The runtime's floor: a JavaScript Worker in its own Miniflare that only forwards each request to
// the upstream simulator. What edgegate adds beyond it is the gateway's own work.
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
