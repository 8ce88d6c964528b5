// The Worker's entry module (wrangler.toml `main`): the built Worker's request handler exported
// as a plain module handler, and its Durable Object class with an RPC method.
//
// worker-build's own default export is a `WorkerEntrypoint` class behind two proxies: for every
// request the runtime constructs an instance (a runtime object) and each method read wraps the
// method in a new proxy and an `async` function (a promise and an extra turn of the microtask
// queue). In workerd each runtime object a request leaves is kept until the isolate's next full
// collection, and its collections are the Worker's tail latency (docs/benchmarks.md). Calling the
// same `fetch` through a plain object leaves none of that. Recovery after a wasm trap does not
// depend on the proxies: the worker crate's abort handler schedules a reset of the instance, and
// the generated bindings carry it out before their next call into wasm.
//
// The runtime gives a Durable Object's methods to callers over RPC only when its class extends
// `DurableObject`; the built class does not, so `Ledger` here does and holds one. The Worker calls
// `call` (src/lib.rs, `Ledger::call`): a method call and a string each way, where a `fetch` made
// a request, a response, their headers and a body stream to read on each side.
import { DurableObject } from "cloudflare:workers";
import Built, { Ledger as BuiltLedger } from "./build/index.js";

const handle = Built.prototype.fetch;

// The built code's Rust futures (wasm-bindgen's task queue) schedule their next poll with the
// global `queueMicrotask`, several times a request. workerd's `queueMicrotask` wraps each callback
// in a function of its own that the runtime holds until the isolate's next full collection, so
// every call adds to what each young-generation collection copies, and those collections are the
// tail latency. `then` on a resolved promise queues the same microtask and leaves nothing behind.
// The global scope is this Worker's own and nothing else in it queues microtasks, so it is
// replaced here (docs/benchmarks.md, "Futures scheduled by `then`"). A task that throws (a wasm
// trap) is then reported as an unhandled rejection instead of an uncaught error.
const settled = Promise.resolve();
globalThis.queueMicrotask = (task) => void settled.then(task);

export default {
  fetch(request, env, ctx) {
    return handle.call({ env, ctx }, request);
  },
};

export class Ledger extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.inner = new BuiltLedger(ctx, env);
  }

  fetch(request) {
    return this.inner.fetch(request);
  }

  call(what, body) {
    return this.inner.call(what, body);
  }
}
