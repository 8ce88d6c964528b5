//! The admin CLI as a program: input formats, validation output, seed entries.

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgegate-admin")).args(args).output().unwrap_or_else(|e| unreachable!("{e}"));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| unreachable!("{e}"));
    path.to_string_lossy().into_owned()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgegate-admin-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| unreachable!("{e}"));
    dir
}

#[test]
fn json_yaml_and_toml_of_one_policy_have_one_version() {
    let dir = tempdir("formats");
    let json = write(
        &dir,
        "p.json",
        r#"{"tenants": [{"id": "acme", "limits": {"requests_per_minute": 60}}],
            "providers": [{"id": "m", "kind": "mock"}],
            "models": [{"alias": "chat", "targets": [{"provider": "m", "model": "mock-1"}]}]}"#,
    );
    let yaml = write(
        &dir,
        "p.yaml",
        "tenants:\n  - id: acme\n    limits:\n      requests_per_minute: 60\nproviders:\n  - {id: m, kind: mock}\nmodels:\n  - alias: chat\n    targets:\n      - {provider: m, model: mock-1}\n",
    );
    let toml = write(
        &dir,
        "p.toml",
        "[[tenants]]\nid = \"acme\"\nlimits = { requests_per_minute = 60 }\n\n[[providers]]\nid = \"m\"\nkind = \"mock\"\n\n[[models]]\nalias = \"chat\"\ntargets = [{ provider = \"m\", model = \"mock-1\" }]\n",
    );
    let version = |path: &str| {
        let (code, out, err) = run(&["--json", "validate", path]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v["version"].as_str().map(str::to_owned)).unwrap_or_default()
    };
    let v = version(&json);
    assert_eq!(v.len(), 16);
    assert_eq!((version(&yaml), version(&toml)), (v.clone(), v));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn validate_prints_every_error_and_fails() {
    let dir = tempdir("errors");
    let bad = write(&dir, "bad.yaml", "keys:\n  - {id: k, tenant: ghost, hash: 'sha256:00'}\nmodels:\n  - {alias: a, targets: []}\n");
    let (code, out, err) = run(&["validate", &bad]);
    assert_eq!(code, 1);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "models[0].targets: must name at least one target",
            "keys[0].tenant: unknown tenant \"ghost\"",
            "keys[0].hash: must be \"sha256:\" followed by 64 lowercase hex digits",
        ]
    );
    assert_eq!(err.trim(), "3 error(s)");
    let (code, _, err) = run(&["frobnicate"]);
    assert_eq!((code, err.starts_with("edgegate-admin: unknown command: frobnicate")), (2, true));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn seed_emits_a_version_an_active_pointer_and_history() {
    let dir = tempdir("seed");
    let p = write(&dir, "p.json", r#"{"tenants": [{"id": "t"}]}"#);
    let (code, out, err) = run(&["seed", &p]);
    assert_eq!(code, 0, "{err}");
    let entries: Value = serde_json::from_str(&out).unwrap_or_default();
    let keys: Vec<&str> = entries.as_array().into_iter().flatten().filter_map(|e| e["key"].as_str()).collect();
    assert_eq!(keys.len(), 3);
    assert!(keys[0].starts_with("policy/versions/"));
    assert_eq!(&keys[1..], ["policy/active", "policy/history"]);
    let pointer: Value = serde_json::from_str(entries[1]["value"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(format!("policy/versions/{}", pointer["version"].as_str().unwrap_or_default()), keys[0]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The repository's Spin files, from the crate's directory.
fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_spin_passes_the_shipped_spin_deployment() {
    let (code, out, err) = run(&[
        "check-spin",
        &repo("spin.toml"),
        "--runtime-config",
        &repo("deploy/spin/runtime-config.shared.toml"),
        "--spinapp",
        &repo("deploy/spin/spinapp.yaml"),
        "--policy",
        &repo("deploy/local/demo-policy.json"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: 1 component(s)") && out.contains("autoscaled 2–20") && out.contains("vault"), "{out}");
    let (code, out, err) = run(&["check-spin", &repo("spin.toml"), "--runtime-config", &repo("deploy/spin/runtime-config.single.toml")]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_spin_reports_every_problem_with_its_place() {
    let dir = tempdir("check-spin");
    let manifest = write(
        &dir,
        "spin.toml",
        r#"spin_manifest_version = 2
[application]
name = "edgegate"
[variables]
provider_api_key = { default = "sk-oops", secret = true }
orphan = { }
[[trigger.http]]
route = "/..."
component = "missing"
[component.edgegate]
source = "edgegate.js"
allowed_outbound_hosts = ["{{ upstream }}", "api.openai.com"]
key_value_stores = ["default", "cache"]
[component.edgegate.variables]
provider_api_key = "{{ provider_api_key }}"
edgegate_admin_key = "{{ admin_key }}"
"#,
    );
    let rc = write(
        &dir,
        "rc.toml",
        r#"[key_value_store.default]
type = "spin"
[sqlite_database.default]
type = "postgres"
[key_value_store.other]
type = "redis"
url = "http://not-redis"
[[variables_provider]]
type = "vault"
url = "https://vault"
"#,
    );
    let app = write(
        &dir,
        "app.yaml",
        r#"apiVersion: core.spinkube.dev/v1alpha1
kind: SpinApp
metadata: { name: edgegate }
spec:
  image: example/edgegate:1
  executor: containerd-shim-spin
  replicas: 3
  variables:
    - { name: provider_api_key, value: "sk-literal" }
    - { name: not_declared, value: "x" }
"#,
    );
    let policy = write(
        &dir,
        "policy.json",
        r#"{"providers": [{"id": "o", "kind": "openai", "api_key_secret": "OPENAI_KEY"}], "models": [], "tenants": [], "keys": []}"#,
    );
    let (code, out, _) = run(&["check-spin", &manifest, "--runtime-config", &rc, "--spinapp", &app, "--policy", &policy]);
    assert_eq!(code, 1);
    for expected in [
        "[variables] provider_api_key: is secret, so its default must be empty",
        "[variables] orphan: needs a `default` or `required = true`",
        "[[trigger.http]] #1: names component `missing`, which is not defined",
        "[component.edgegate]: `source` must be the path of a .wasm file",
        "allowed_outbound_hosts uses `{{ upstream }}`, which is not an application variable",
        "allowed_outbound_hosts entry \"api.openai.com\" has no scheme",
        "variable `edgegate_admin_key` uses `{{ admin_key }}`, which is not an application variable",
        "the gateway needs `sqlite_databases = [\"default\"]`",
        "does not map the variable `edgegate_admin_api` the gateway reads",
        "policy names the secret `OPENAI_KEY`, but no component variable `openai_key` provides it",
        "[sqlite_database.default]: `type` must be one of spin, libsql",
        "[key_value_store.other]: `url` must start with redis://",
        "[[variables_provider]] #1: a `vault` provider needs `token`",
        "key_value_store `cache` is used but no runtime configuration defines it",
        "sets the variable `not_declared`, which",
        "the secret variable `provider_api_key` must come from a Secret",
        "needs `spec.runtimeConfig.loadFromSecret`",
        "key_value_store `default` is a local file: each replica would keep its own policy",
        "limits, budgets and the audit log would be per replica",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}
