//! Policy at scale: a snapshot of 10,000 tenants, 50,000 keys and 1,000 model aliases (routes) — its
//! size in KV, its compile time, and the per-request decisions made from it (authenticate a key,
//! pick the policy, plan the route: residency filter, strategy, health), against the same
//! decisions on a one-tenant snapshot measured in the same run, to show they do not grow with the
//! snapshot. Routes cycle through the strategies; half the tenants are held to EU residency.
//!
//! Native:  cargo run --release -p edgegate-core --features testkit --example bench_policy
//! wasm:    `bash tests/bench/native-vs-wasm.sh bench_policy` (a WASIp2 component under wasmtime)
#![allow(clippy::disallowed_methods, clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/bench.rs"]
mod support;

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use edgegate_core::health::Board;
use edgegate_core::phases;
use edgegate_core::policy::{Policy, Role, canonical_json, key_hash_string};
use edgegate_core::routing::{self, Ask, Origin};
use edgegate_core::snapshot::Snapshot;
use serde_json::{Value, json};
use support::bench;

fn document(tenants: usize, keys_per_tenant: usize, aliases: usize) -> Value {
    let providers: Vec<Value> = (0..10)
        .map(|p| {
            let region = if p % 2 == 0 { "eu" } else { "us" };
            json!({"id": format!("p{p}"), "kind": "openai_compatible", "base_url": format!("https://p{p}.example/v1"),
                   "location": {"region": region, "jurisdictions": if p % 2 == 0 { json!(["gdpr"]) } else { json!([]) }}})
        })
        .collect();
    let models: Vec<Value> = (0..aliases)
        .map(|a| {
            let strategy = ["priority", "weighted", "latency", "cost", "complexity"][a % 5];
            json!({"alias": format!("model-{a}"), "strategy": strategy, "targets": [
                {"provider": format!("p{}", a % 10), "model": format!("m-{a}"), "weight": 3, "class": "simple",
                 "price": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}},
                {"provider": format!("p{}", (a + 1) % 10), "model": format!("m-{a}-backup"), "weight": 1, "class": "complex",
                 "price": {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0}},
                {"provider": format!("p{}", (a + 2) % 10), "model": format!("m-{a}-third")}
            ]})
        })
        .collect();
    let tenant_list: Vec<Value> = (0..tenants)
        .map(|t| {
            let mut tenant = json!({"id": format!("tenant-{t}"), "limits": {"requests_per_minute": 600}});
            if t % 2 == 0 {
                tenant["residency"] = json!({"regions": ["eu"], "jurisdictions": ["gdpr"]});
            }
            tenant
        })
        .collect();
    let keys: Vec<Value> = (0..tenants * keys_per_tenant)
        .map(|k| {
            let mut key = json!({"id": format!("key-{k}"), "tenant": format!("tenant-{}", k / keys_per_tenant), "hash": key_hash_string(&format!("sk-bench-{k}"))});
            if k % 2 == 0 {
                key["models"] = json!([format!("model-{}", k % aliases), format!("model-{}", (k + 7) % aliases)]);
            }
            key
        })
        .collect();
    json!({"tenants": tenant_list, "keys": keys, "providers": providers, "models": models})
}

/// The per-request decisions: authenticate, choose the policy, plan the route.
fn decide(snapshot: &Snapshot, board: &Board, secret: &str, alias: &str) -> usize {
    let (policy, principal) = phases::authenticate(snapshot, secret, 0, Role::Invoke).expect("key");
    let origin = Origin { country: Some("DE".into()), continent: Some("EU".into()), ..Origin::default() };
    let ask = Ask { alias, origin: &origin, chat: None, prompt_tokens: 500, output_tokens: 200 };
    routing::plan(&policy, &principal, ask, board, 0, 0x5eed).expect("route").candidates.len()
}

fn main() {
    let big = document(10_000, 5, 1_000);
    let small = document(1, 5, 1);
    let canonical = canonical_json(&big);
    println!("{:<58} {:>9} bytes", "snapshot in KV: canonical JSON", canonical.len());

    bench("compile 10k tenants / 50k keys / 1k aliases", || {
        black_box(Policy::compile(canonical.as_bytes()).expect("compiles"));
    });
    let t = Instant::now();
    let policy = Rc::new(Policy::compile(canonical.as_bytes()).expect("compiles"));
    println!("{:<58} {:>9.2} µs", "compile once (cold)", t.elapsed().as_secs_f64() * 1e6);

    let big_snapshot = Snapshot { active: policy, canary: None };
    let small_snapshot = Snapshot { active: Rc::new(Policy::compile(canonical_json(&small).as_bytes()).expect("compiles")), canary: None };

    // 1,024 requests spread over the keys (even keys have a model list; each may use its first alias).
    let spread: Vec<(String, String)> =
        (0..1_024).map(|i| (i * 7_919 * 2) % 50_000).map(|k| (format!("sk-bench-{k}"), format!("model-{}", k % 1_000))).collect();
    let same: Vec<(String, String)> = (0..1_024).map(|_| ("sk-bench-0".to_owned(), "model-0".to_owned())).collect();
    let mut i = 0usize;
    let mut run = |name: &str, snapshot: &Snapshot, requests: &[(String, String)]| {
        bench(name, || {
            i = (i + 1) % requests.len();
            let (secret, alias) = &requests[i];
            black_box(decide(snapshot, &Board::default(), secret, alias));
        });
    };
    run("decide on the big snapshot (auth + policy + route)", &big_snapshot, &spread);
    run("decide on a one-tenant snapshot (baseline)", &small_snapshot, &same);
}
