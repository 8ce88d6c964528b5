//! A small Spin-compatible host for tests: serves the HTTP component named by a real `spin.toml`
//! on wasmtime, with the Spin 3.x interfaces it imports — `fermyon:spin/key-value@2.0.0`,
//! `fermyon:spin/sqlite@2.0.0`, `fermyon:spin/variables@2.0.0` — backed by local SQLite files,
//! and `fermyon:spin/redis@2.0.0` connected to a real Redis server,
//! `allowed_outbound_hosts` enforced, variables resolved as Spin does (defaults, `required`,
//! `SPIN_VARIABLE_*` overrides, `{{ }}` templates), and response bodies streamed.
//!
//! Usage: `spin-test-host --manifest spin.toml --listen 127.0.0.1:0 --state-dir DIR
//!         [--key-value KEY=VALUE | KEY=@FILE]...`
//! Prints `listening on http://ADDR` once ready. Test infrastructure, not product.
//!
//! `spin-test-host --run FILE.wasm [ARGS]` instead runs a WASI command component (used to run the
//! core's benchmarks as wasm).

mod manifest;
mod spin;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::manifest::App;
use crate::spin::{AllowHooks, Shared};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-request store data.
pub struct St {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: AllowHooks,
    shared: Arc<Shared>,
}

impl WasiView for St {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for St {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

struct Server {
    pre: ProxyPre<St>,
    shared: Arc<Shared>,
    app: Arc<App>,
}

/// Store data for `--run`: plain WASI, nothing else.
struct RunSt {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RunSt {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Runs a `wasi:cli/run` component with this process's stdio and the given arguments.
fn run_command(file: &str, args: &[String]) -> Result<(), BoxError> {
    let engine = Engine::default();
    let component = Component::from_file(&engine, file)?;
    let mut linker = Linker::<RunSt>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let wasi = WasiCtx::builder().inherit_stdio().args(&[file.to_owned()]).args(args).build();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut store = Store::new(&engine, RunSt { wasi, table: ResourceTable::new() });
        let command = wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker).await?;
        match command.wasi_cli_run().call_run(&mut store).await? {
            Ok(()) => Ok(()),
            Err(()) => Err("the component exited with an error".into()),
        }
    })
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--run") {
        let file = args.get(1).ok_or("--run needs a component file")?;
        return run_command(file, &args[2..]);
    }
    let mut manifest = PathBuf::from("spin.toml");
    let mut listen: SocketAddr = "127.0.0.1:3000".parse()?;
    let mut state_dir = PathBuf::from(".spin");
    let mut seeds = Vec::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--manifest" | "-f" => manifest = PathBuf::from(value()?),
            "--listen" => listen = value()?.parse()?,
            "--state-dir" => state_dir = PathBuf::from(value()?),
            "--key-value" => seeds.push(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let app = Arc::new(manifest::load(&manifest)?);
    std::fs::create_dir_all(&state_dir)?;
    let shared = Arc::new(Shared::open(&state_dir, &app)?);
    for seed in seeds {
        let (key, value) = seed.split_once('=').ok_or("--key-value wants KEY=VALUE")?;
        let bytes = match value.strip_prefix('@') {
            Some(path) => std::fs::read(path)?,
            None => value.as_bytes().to_vec(),
        };
        shared.kv_set("default", key, &bytes)?;
    }

    let engine = Engine::default();
    let component = Component::from_file(&engine, &app.source)?;
    let mut linker = Linker::<St>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    spin::fermyon::spin::key_value::add_to_linker::<St, HasSelf<St>>(&mut linker, |s| s)?;
    spin::fermyon::spin::sqlite::add_to_linker::<St, HasSelf<St>>(&mut linker, |s| s)?;
    spin::fermyon::spin::redis::add_to_linker::<St, HasSelf<St>>(&mut linker, |s| s)?;
    spin::fermyon::spin::variables::add_to_linker::<St, HasSelf<St>>(&mut linker, |s| s)?;
    // Fails here if the component imports anything this host (and so this Spin line) lacks.
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let server = Arc::new(Server { pre, shared, app });

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        loop {
            let (sock, client) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = tokio::signal::ctrl_c() => return Ok::<(), BoxError>(()),
            };
            let _ = sock.set_nodelay(true);
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let server = Arc::clone(&server);
                    async move { Ok::<_, std::convert::Infallible>(server.handle(req, client).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(sock), service).await;
            });
        }
    })
}

impl Server {
    async fn handle(&self, mut req: hyper::Request<Incoming>, client: SocketAddr) -> hyper::Response<HyperOutgoingBody> {
        let path = req.uri().path().to_owned();
        let Some(route) = self.app.match_route(&path) else {
            return plain(404, "no route matches");
        };
        let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_owned();
        let full_url = format!("http://{host}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
        for (name, value) in [
            ("spin-full-url", full_url),
            ("spin-path-info", route.path_info.clone()),
            ("spin-matched-route", route.pattern.clone()),
            ("spin-raw-component-route", route.pattern.clone()),
            ("spin-component-route", route.pattern.trim_end_matches("/...").to_owned()),
            ("spin-base-path", "/".to_owned()),
            ("spin-client-addr", client.to_string()),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                req.headers_mut().insert(name, v);
            }
        }
        match self.run(req).await {
            Ok(resp) => resp,
            Err(e) => {
                eprintln!("spin-test-host: component failed: {e}");
                plain(500, "component failed")
            }
        }
    }

    async fn run(&self, req: hyper::Request<Incoming>) -> Result<hyper::Response<HyperOutgoingBody>, BoxError> {
        let mut store = Store::new(
            self.pre.engine(),
            St {
                wasi: WasiCtx::builder().inherit_stdout().inherit_stderr().build(),
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
                hooks: AllowHooks::new(self.app.allowed_outbound_hosts.clone()),
                shared: Arc::clone(&self.shared),
            },
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        let pre = self.pre.clone();
        // Runs on after the head is sent, so the body keeps streaming.
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, out).await
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(format!("component answered with error code {code:?}").into()),
            Err(_) => match task.await {
                Ok(Ok(())) => Err("component never set a response".into()),
                Ok(Err(e)) => Err(format!("{e:?}").into()),
                Err(e) => Err(e.into()),
            },
        }
    }
}

fn plain(status: u16, text: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes())).map_err(|never| match never {}).boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp
}
