// The Worker's entry module (wrangler.toml `main`): the built Worker's request handler exported
// as a plain module handler, and its Durable Object class as built.
//
// worker-build's own default export is a `WorkerEntrypoint` class behind two proxies: for every
// request the runtime constructs an instance (a runtime object) and each method read wraps the
// method in a new proxy and an `async` function (a promise and an extra turn of the microtask
// queue). In workerd each runtime object a request leaves is kept until the isolate's next full
// collection, and its collections are the Worker's tail latency (docs/benchmarks.md). Calling the
// same `fetch` through a plain object leaves none of that. Recovery after a wasm trap does not
// depend on the proxies: the worker crate's abort handler schedules a reset of the instance, and
// the generated bindings carry it out before their next call into wasm.
import Built, { Ledger } from "./build/index.js";

const handle = Built.prototype.fetch;

export default {
  fetch(request, env, ctx) {
    return handle.call({ env, ctx }, request);
  },
};

export { Ledger };
