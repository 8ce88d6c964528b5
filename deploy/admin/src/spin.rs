//! `check-spin`: validates a Spin deployment of the gateway before it is deployed — the manifest
//! (`spin.toml`), runtime configuration files, a SpinKube `SpinApp` manifest and, optionally, the
//! policy it will serve — against Spin's rules and against what the gateway needs. Every problem
//! is reported, each naming its file and place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What the gateway reads from Spin variables itself (policy names the provider credentials).
const GATEWAY_VARIABLES: [&str; 6] = [
    "edgegate_admin_key",
    "edgegate_admin_api",
    "edgegate_origin_country",
    "edgegate_origin_continent",
    "edgegate_location",
    "edgegate_ledger_redis",
];

/// The files to check.
pub(crate) struct Inputs<'a> {
    pub(crate) manifest: &'a Path,
    pub(crate) runtime_configs: &'a [PathBuf],
    pub(crate) spinapp: Option<&'a Path>,
    pub(crate) policy: Option<&'a Value>,
}

/// The problems found (empty: the deployment is consistent), and a one-line summary.
pub(crate) fn check(inputs: &Inputs<'_>) -> Result<(Vec<String>, String), String> {
    let manifest = read_toml(inputs.manifest)?;
    let mut problems = Vec::new();
    let mut report = |place: &str, what: String| problems.push(format!("{place}: {what}"));
    let m = inputs.manifest.display().to_string();

    if manifest["spin_manifest_version"] != 2 {
        report(&m, "`spin_manifest_version` must be 2".into());
    }
    let declared = declared_variables(&manifest, &m, &mut report);
    let components = manifest["component"].as_object().cloned().unwrap_or_default();
    if components.is_empty() {
        report(&m, "no `[component.…]` is defined".into());
    }
    for (i, t) in manifest["trigger"]["http"].as_array().into_iter().flatten().enumerate() {
        let place = format!("{m} [[trigger.http]] #{}", i + 1);
        if !t["route"].is_string() {
            report(&place, "has no `route`".into());
        }
        match t["component"].as_str() {
            Some(c) if components.contains_key(c) => {}
            Some(c) => report(&place, format!("names component `{c}`, which is not defined")),
            None => report(&place, "names no `component`".into()),
        }
    }
    let mut labels = BTreeSet::new();
    for (name, c) in &components {
        let place = format!("{m} [component.{name}]");
        if !c["source"].as_str().is_some_and(|s| s.ends_with(".wasm")) {
            report(&place, "`source` must be the path of a .wasm file".into());
        }
        for (kind, list) in [("key_value_store", "key_value_stores"), ("sqlite_database", "sqlite_databases")] {
            for label in c[list].as_array().into_iter().flatten() {
                match label.as_str() {
                    Some(l) => {
                        labels.insert((kind, l.to_owned()));
                    }
                    None => report(&place, format!("`{list}` must list strings")),
                }
            }
        }
        for host in c["allowed_outbound_hosts"].as_array().into_iter().flatten() {
            let host = host.as_str().unwrap_or("");
            let names = templates(host);
            if names.is_empty() && !host.contains("://") {
                report(&place, format!("allowed_outbound_hosts entry {host:?} has no scheme"));
            }
            for n in names.into_iter().filter(|n| !declared.contains_key(n)) {
                report(&place, format!("allowed_outbound_hosts uses `{{{{ {n} }}}}`, which is not an application variable"));
            }
        }
        let mapped = c["variables"].as_object().cloned().unwrap_or_default();
        for (var, value) in &mapped {
            if !valid_name(var) {
                report(&place, format!("variable name `{var}` must be lowercase letters, digits and underscores"));
            }
            for n in templates(value.as_str().unwrap_or("")).into_iter().filter(|n| !declared.contains_key(n)) {
                report(&place, format!("variable `{var}` uses `{{{{ {n} }}}}`, which is not an application variable"));
            }
        }
        // The gateway's own needs.
        for (list, label) in [("key_value_stores", "default"), ("sqlite_databases", "default")] {
            if !c[list].as_array().into_iter().flatten().any(|l| l == label) {
                report(&place, format!("the gateway needs `{list} = [\"{label}\"]` (policy snapshots / counters and the audit log)"));
            }
        }
        for var in GATEWAY_VARIABLES.iter().filter(|v| !mapped.contains_key(**v)) {
            report(&place, format!("does not map the variable `{var}` the gateway reads"));
        }
        if let Some(policy) = inputs.policy {
            let mut secrets = BTreeSet::new();
            secret_names(policy, &mut secrets);
            for s in secrets.into_iter().filter(|s| !mapped.contains_key(&s.to_ascii_lowercase())) {
                report(
                    &place,
                    format!("policy names the secret `{s}`, but no component variable `{}` provides it", s.to_ascii_lowercase()),
                );
            }
        }
    }

    // Runtime configuration.
    let mut stores: BTreeMap<(&str, String), String> = BTreeMap::new();
    let mut providers = Vec::new();
    for path in inputs.runtime_configs {
        let rc = read_toml(path)?;
        let p = path.display().to_string();
        for (kind, types) in
            [("key_value_store", &["spin", "redis", "azure_cosmos", "aws_dynamo"][..]), ("sqlite_database", &["spin", "libsql"][..])]
        {
            for (label, store) in rc[kind].as_object().into_iter().flatten() {
                let place = format!("{p} [{kind}.{label}]");
                let ty = store["type"].as_str().unwrap_or("");
                if !types.contains(&ty) {
                    report(&place, format!("`type` must be one of {}", types.join(", ")));
                }
                let needs: &[&str] = match ty {
                    "redis" => &["url"],
                    "libsql" => &["url", "token"],
                    "azure_cosmos" => &["account", "database", "container"],
                    _ => &[],
                };
                for field in needs.iter().filter(|f| !store[**f].is_string()) {
                    report(&place, format!("a `{ty}` store needs `{field}`"));
                }
                if ty == "redis" && !store["url"].as_str().is_some_and(|u| u.starts_with("redis://") || u.starts_with("rediss://")) {
                    report(&place, "`url` must start with redis:// or rediss://".into());
                }
                stores.insert((kind, label.clone()), ty.to_owned());
            }
        }
        for key in ["variables_provider", "config_provider"] {
            for (i, provider) in rc[key].as_array().into_iter().flatten().enumerate() {
                let place = format!("{p} [[{key}]] #{}", i + 1);
                let ty = provider["type"].as_str().unwrap_or("");
                let needs: &[&str] = match ty {
                    "vault" => &["url", "token", "mount"],
                    "azure_key_vault" => &["vault_url"],
                    "env" | "static" => &[],
                    _ => {
                        report(&place, "`type` must be one of vault, azure_key_vault, env, static".into());
                        &[]
                    }
                };
                for field in needs.iter().filter(|f| !provider[**f].is_string()) {
                    report(&place, format!("a `{ty}` provider needs `{field}`"));
                }
                providers.push(ty.to_owned());
            }
        }
    }
    for (kind, label) in &labels {
        if label != "default" && !stores.contains_key(&(*kind, label.clone())) {
            report(&m, format!("{kind} `{label}` is used but no runtime configuration defines it"));
        }
    }

    // SpinKube.
    let mut summary = format!("{} component(s), {} variable(s)", components.len(), declared.len());
    if let Some(path) = inputs.spinapp {
        let p = path.display().to_string();
        let docs = read_yaml_documents(path)?;
        let apps: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "SpinApp").collect();
        if apps.len() != 1 {
            report(&p, format!("must hold exactly one SpinApp (found {})", apps.len()));
        }
        for app in apps {
            let name = app["metadata"]["name"].as_str().unwrap_or("");
            let place = format!("{p} SpinApp {name}");
            if !app["apiVersion"].as_str().is_some_and(|v| v.starts_with("core.spinkube.dev/")) {
                report(&place, "`apiVersion` must be core.spinkube.dev/…".into());
            }
            let spec = &app["spec"];
            if spec["image"].as_str().is_none_or(str::is_empty) {
                report(&place, "`spec.image` is required".into());
            }
            if !spec["executor"].is_string() {
                report(&place, "`spec.executor` is required (e.g. containerd-shim-spin)".into());
            }
            for v in spec["variables"].as_array().into_iter().flatten() {
                let var = v["name"].as_str().unwrap_or("");
                if !declared.contains_key(var) {
                    report(&place, format!("sets the variable `{var}`, which {m} does not declare"));
                }
                if declared.get(var).is_some_and(|secret| *secret) && v.get("value").is_some() {
                    report(
                        &place,
                        format!("the secret variable `{var}` must come from a Secret (`valueFrom.secretKeyRef`), not a literal `value`"),
                    );
                }
            }
            let autoscaled = spec["enableAutoscaling"] == true;
            let replicas = spec["replicas"].as_u64().unwrap_or(1);
            if autoscaled || replicas > 1 {
                if !spec["runtimeConfig"]["loadFromSecret"].is_string() {
                    report(&place, "runs several replicas, so it needs `spec.runtimeConfig.loadFromSecret` naming shared stores".into());
                }
                if inputs.runtime_configs.is_empty() {
                    report(
                        &place,
                        "runs several replicas: pass the runtime configuration it loads (--runtime-config) to check its stores".into(),
                    );
                } else {
                    let kv = stores.get(&("key_value_store", "default".to_owned())).map_or("spin", String::as_str);
                    let db = stores.get(&("sqlite_database", "default".to_owned())).map_or("spin", String::as_str);
                    if kv == "spin" {
                        report(
                            &place,
                            "runs several replicas, but key_value_store `default` is a local file: each replica would keep its own policy"
                                .into(),
                        );
                    }
                    if db != "libsql" {
                        report(
                            &place,
                            "runs several replicas, but sqlite_database `default` is a local file: limits, budgets and the audit log would be per replica (use a shared `libsql` database)".into(),
                        );
                    }
                }
            }
            if autoscaled {
                let scaler = docs.iter().find(|d| {
                    (d["kind"] == "ScaledObject" || d["kind"] == "HorizontalPodAutoscaler") && d["spec"]["scaleTargetRef"]["name"] == name
                });
                match scaler {
                    None => report(&place, "enables autoscaling but no ScaledObject or HorizontalPodAutoscaler targets it".into()),
                    Some(s) => {
                        let min = s["spec"]["minReplicaCount"].as_u64().or_else(|| s["spec"]["minReplicas"].as_u64()).unwrap_or(1);
                        let max = s["spec"]["maxReplicaCount"].as_u64().or_else(|| s["spec"]["maxReplicas"].as_u64()).unwrap_or(0);
                        if min == 0 || max < min {
                            report(&place, format!("its scaler must keep 1 ≤ min ≤ max replicas (min {min}, max {max})"));
                        }
                        summary += &format!(", SpinApp {name} autoscaled {min}–{max}");
                    }
                }
            } else {
                summary += &format!(", SpinApp {name} with {replicas} replica(s)");
            }
        }
    }
    if !providers.is_empty() {
        summary += &format!(", variables from {}", providers.join(", "));
    }
    Ok((problems, summary))
}

/// The manifest's application variables: name → whether it is secret. Reports bad declarations.
fn declared_variables(manifest: &Value, m: &str, report: &mut impl FnMut(&str, String)) -> BTreeMap<String, bool> {
    let mut declared = BTreeMap::new();
    for (name, v) in manifest["variables"].as_object().into_iter().flatten() {
        let place = format!("{m} [variables] {name}");
        if !valid_name(name) {
            report(&place, "names must be lowercase letters, digits and underscores, starting with a letter".into());
        }
        let required = v["required"] == true;
        match (v.get("default"), required) {
            (Some(_), true) => report(&place, "has both `default` and `required = true`".into()),
            (None, false) => report(&place, "needs a `default` or `required = true`".into()),
            _ => {}
        }
        let secret = v["secret"] == true;
        if secret && v["default"].as_str().is_some_and(|d| !d.is_empty()) {
            report(&place, "is secret, so its default must be empty (give the value at deploy time)".into());
        }
        declared.insert(name.clone(), secret);
    }
    declared
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase()) && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The variable names in `{{ name }}` templates of `text`.
fn templates(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else { break };
        names.push(rest[start + 2..start + end].trim().to_owned());
        rest = &rest[start + end + 2..];
    }
    names
}

/// Every string value of a key ending in `_secret` or `_secret_secondary` in a policy document.
fn secret_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k.ends_with("_secret") || k.ends_with("_secret_secondary") => {
                        out.insert(s.clone());
                    }
                    _ => secret_names(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| secret_names(v, out)),
        _ => {}
    }
}

fn read_toml(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_yaml_documents(path: &Path) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).map_err(|e| format!("{}: {e}", path.display())))
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}
