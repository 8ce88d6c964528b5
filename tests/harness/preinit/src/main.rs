//! `edgegate-preinit IN.wasm OUT.wasm`: pre-initialises edgegate's Spin component.
//!
//! Spin makes a fresh instance of the component for every request, so whatever the gateway builds
//! on first use (the firewall's automata, the tokenizer's tables) would be built again in every
//! request. This runs the component's `wizer-initialize` export once, under wasmtime, and writes a
//! component whose memory starts as that export left it (Wizer's snapshot, for components). Every
//! import but `wasi:random/insecure-seed` (see [`seed`]) is defined as a trap, so initialisation
//! can read no clock, variable or store and draw no secure randomness: the snapshot holds nothing
//! that belongs to one deployment. The written component is compiled once more before it is kept.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{Component, Instance, Lift, Linker, WasmList};
use wasmtime::{Engine, Store};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: edgegate-preinit IN.wasm OUT.wasm".into());
    };
    let wasm = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let mut wizer = Wizer::new();
    // Kept: removing it leaves the component aliasing a core export that is gone (wasmtime-wizer 48).
    // Calling it again only finds everything built.
    wizer.keep_init_func(true);
    let (cx, instrumented) = wizer.instrument_component(&wasm)?;

    let engine = Engine::default();
    let component = Component::new(&engine, &instrumented)?;
    let mut linker = Linker::<()>::new(&engine);
    seed(&engine, &component, &mut linker)?;
    linker.define_unknown_imports_as_traps(&component)?;
    let mut store = Store::new(&engine, ());
    let instance = linker.instantiate(&mut store, &component)?;
    let init = instance.get_typed_func::<(), ()>(&mut store, wizer.get_init_func())?;
    init.call(&mut store, ()).map_err(|e| format!("{}: {e:?}", wizer.get_init_func()))?;

    let mut state = State { store: &mut store, instance, failed: None };
    let snapshot = ready(wizer.snapshot_component(&cx, &mut state))?;
    if let Some(e) = state.failed {
        return Err(format!("reading the instrumented component's state: {e}").into());
    }
    // What it wrote must load: compile it as a host would.
    Component::new(&engine, &snapshot).map_err(|e| format!("the pre-initialised component does not compile: {e:?}"))?;
    std::fs::write(output, &snapshot).map_err(|e| format!("{output}: {e}"))?;
    eprintln!("{output}: {} bytes (from {} bytes)", snapshot.len(), wasm.len());
    Ok(())
}

/// `wasi:random/insecure-seed`, the one import initialisation may call: Rust's standard library
/// draws its hash-map keys from it the first time a `HashMap` is made, and the automata make some.
/// The snapshot keeps those keys, so every instance of this build shares them; they come from
/// this machine's random source (through the standard library's own hash keys), so each build
/// has its own, or from `EDGEGATE_PREINIT_SEED` (32 hex digits) for a build that must be
/// reproducible byte for byte. Either way they can be read from the component, so they are no
/// secret: the maps into which a request can insert keys of its choosing are ordered, not hashed.
fn seed(engine: &Engine, component: &Component, linker: &mut Linker<()>) -> Result<(), BoxError> {
    let imports = component.component_type().imports(engine).map(|(name, _)| name.to_owned()).collect::<Vec<_>>();
    let Some(name) = imports.into_iter().find(|n| n.starts_with("wasi:random/insecure-seed@")) else { return Ok(()) };
    let value = match std::env::var("EDGEGATE_PREINIT_SEED") {
        Ok(hex) => {
            let digits = hex.trim();
            if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("EDGEGATE_PREINIT_SEED must be 32 hex digits".into());
            }
            let (a, b) = digits.split_at(16);
            (u64::from_str_radix(a, 16)?, u64::from_str_radix(b, 16)?)
        }
        Err(_) => {
            let random = |n: u64| {
                let mut hasher = RandomState::new().build_hasher();
                hasher.write_u64(n);
                hasher.finish()
            };
            (random(0), random(1))
        }
    };
    linker.instance(&name)?.func_wrap("insecure-seed", move |_, ()| Ok((value,)))?;
    Ok(())
}

/// The value of a future that never waits: the state accessors below are plain calls.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("the snapshot's accessors do not wait"),
    }
}

/// The instrumented instance, read through the accessor functions Wizer's instrumentation exports.
struct State<'a> {
    store: &'a mut Store<()>,
    instance: Instance,
    /// The first accessor that could not be called (the snapshot is then discarded).
    failed: Option<String>,
}

impl State<'_> {
    /// Calls `func` of the exported instance `instance`, recording a failure (which only a
    /// component Wizer did not instrument could cause) and answering a default in its place.
    fn call<R: Lift + 'static>(&mut self, instance: &str, func: &str) -> Option<R> {
        let exported = self.instance.get_export_index(&mut *self.store, None, instance);
        let index = exported.and_then(|i| self.instance.get_export_index(&mut *self.store, Some(&i), func));
        let result = index
            .ok_or_else(|| wasmtime::format_err!("no export {instance}#{func}"))
            .and_then(|i| self.instance.get_typed_func::<(), (R,)>(&mut *self.store, i))
            .and_then(|f| f.call(&mut *self.store, ()));
        match result {
            Ok((value,)) => Some(value),
            Err(e) => {
                self.failed.get_or_insert_with(|| format!("{instance}#{func}: {e:?}"));
                None
            }
        }
    }
}

impl ComponentInstanceState for State<'_> {
    async fn call_func_ret_list_u8(&mut self, instance: &str, func: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.call::<WasmList<u8>>(instance, func) {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func).unwrap_or_default().to_bits()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func).unwrap_or_default().to_bits()
    }
}
