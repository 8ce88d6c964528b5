//! The `/admin` API and policy lifecycle on the deterministic test host: bootstrap, publish,
//! canary, promote, rollback, keys, and the separation of roles.

use bytes::Bytes;
use edgegate_core::policy::key_hash_string;
use edgegate_core::testkit::TestHost;
use edgegate_core::{Error, ErrorKind, Gateway};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000_000;
const BOOTSTRAP: &str = "sk-bootstrap-admin";

/// A policy whose tenant `acme` gets `rpm` requests per minute; re-read on every request.
fn doc(rpm: u64) -> Value {
    json!({
        "tenants": [{"id": "acme", "limits": {"requests_per_minute": rpm}}, {"id": "beta", "canary_group": "early"}, {"id": "ops"}],
        "keys": [
            {"id": "acme-1", "tenant": "acme", "hash": key_hash_string("sk-acme")},
            {"id": "beta-1", "tenant": "beta", "hash": key_hash_string("sk-beta")},
            {"id": "writer", "tenant": "ops", "hash": key_hash_string("sk-writer"), "roles": ["policy:read", "policy:write"]},
            {"id": "reader", "tenant": "ops", "hash": key_hash_string("sk-reader"), "roles": ["policy:read"]},
            {"id": "keymaster", "tenant": "ops", "hash": key_hash_string("sk-keys"), "roles": ["keys:admin"]}
        ],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": [{"alias": "mock", "targets": [{"provider": "builtin", "model": "mock-1"}]}],
        "settings": {"policy_refresh_seconds": 0}
    })
}

struct Answer {
    status: u16,
    version: String,
    body: Value,
}

fn send(h: &TestHost, gw: &Gateway, method: &str, path: &str, key: &str, body: Option<Value>) -> Answer {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://gw.example{path}"))
        .header("authorization", format!("Bearer {key}"))
        .body(body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())))
        .unwrap_or_else(|_| unreachable!());
    let (parts, body) = h.call(gw, req);
    let version = parts.headers.get("x-edgegate-policy-version").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    Answer { status: parts.status.as_u16(), version, body: serde_json::from_slice(&body).unwrap_or(Value::Null) }
}

fn chat(h: &TestHost, gw: &Gateway, key: &str) -> Answer {
    send(h, gw, "POST", "/v1/chat/completions", key, Some(json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]})))
}

fn host() -> TestHost {
    let h = TestHost::default();
    h.advance(T0);
    h.set_secret("EDGEGATE_ADMIN_KEY", BOOTSTRAP);
    h.set_secret("EDGEGATE_ADMIN_API", "on");
    h
}

#[test]
fn bootstrap_publishes_the_first_policy_and_nothing_else_can() {
    let (h, gw) = (host(), Gateway::new());
    assert_eq!(chat(&h, &gw, "sk-acme").status, 503, "nothing published yet");
    assert_eq!(send(&h, &gw, "POST", "/admin/policy/publish", "sk-acme", Some(json!({"policy": doc(5)}))).status, 503);
    let published = send(&h, &gw, "POST", "/admin/policy/publish", BOOTSTRAP, Some(json!({"policy": doc(5), "note": "first"})));
    assert_eq!(published.status, 200, "{}", published.body);
    let v1 = published.body["version"].as_str().unwrap_or_default().to_owned();
    let served = chat(&h, &gw, "sk-acme");
    assert_eq!((served.status, served.version.as_str()), (200, v1.as_str()));
    assert_eq!(chat(&h, &gw, BOOTSTRAP).status, 401, "the bootstrap key cannot invoke models");
}

#[test]
fn roles_are_separate() {
    let (h, gw) = (host(), Gateway::new());
    h.set_policy(doc(5).to_string().as_bytes());
    let code = |a: Answer| (a.status, a.body["error"]["code"].as_str().unwrap_or("").to_owned());
    let publish = |key| send(&h, &gw, "POST", "/admin/policy/publish", key, Some(json!({"policy": doc(6)})));
    assert_eq!(code(publish("sk-acme")), (403, "permission_denied".into()), "an invoke key cannot change policy");
    assert_eq!(code(publish("sk-reader")), (403, "permission_denied".into()));
    assert_eq!(code(publish("sk-keys")), (403, "permission_denied".into()));
    assert_eq!(code(chat(&h, &gw, "sk-writer")), (403, "permission_denied".into()), "an admin key cannot invoke models");
    assert_eq!(code(send(&h, &gw, "GET", "/admin/policy", "sk-nobody", None)), (401, "invalid_api_key".into()));
    assert_eq!(code(send(&h, &gw, "GET", "/admin/policy", "", None)), (401, "missing_api_key".into()));
    assert_eq!(code(send(&h, &gw, "POST", "/admin/keys", "sk-writer", Some(json!({"id": "x", "tenant": "acme"})))).0, 403);
    assert_eq!(send(&h, &gw, "GET", "/admin/policy", "sk-reader", None).status, 200);
    assert_eq!(publish("sk-writer").status, 200);
    assert_eq!(code(send(&h, &gw, "GET", "/admin/nothing", "sk-writer", None)), (404, "route_not_found".into()));
}

#[test]
fn canary_promote_and_rollback() {
    let (h, gw) = (host(), Gateway::new());
    let write = |path: &str, body: Value| send(&h, &gw, "POST", path, "sk-writer", Some(body));
    let v1 = write("/admin/policy/publish", json!({"policy": doc(5)})).body["version"].as_str().map(str::to_owned);
    assert!(v1.is_none(), "nothing is published, so the writer key does not exist yet");
    h.set_policy(doc(5).to_string().as_bytes());
    let v1 = chat(&h, &gw, "sk-acme").version;

    let canary = write("/admin/policy/publish", json!({"policy": doc(50), "canary": {"tenants": ["acme"]}, "note": "raise acme"}));
    assert_eq!((canary.status, canary.body["target"].as_str()), (200, Some("canary")), "{}", canary.body);
    let v2 = canary.body["version"].as_str().unwrap_or_default().to_owned();
    assert_ne!(v1, v2);
    assert_eq!(chat(&h, &gw, "sk-acme").version, v2, "the canary tenant is decided by the canary");
    assert_eq!(chat(&h, &gw, "sk-beta").version, v1, "everyone else by the active policy");

    let read = send(&h, &gw, "GET", "/admin/policy", "sk-reader", None);
    assert_eq!((read.body["active"]["version"].as_str(), read.body["canary"]["version"].as_str()), (Some(v1.as_str()), Some(v2.as_str())));

    assert_eq!(write("/admin/policy/promote", json!({})).status, 200);
    assert_eq!((chat(&h, &gw, "sk-acme").version, chat(&h, &gw, "sk-beta").version), (v2.clone(), v2.clone()));
    assert_eq!(write("/admin/policy/promote", json!({})).status, 409, "no canary left to promote");

    let back = write("/admin/policy/rollback", json!({"note": "bad limits"}));
    assert_eq!(back.body["active"]["version"].as_str(), Some(v1.as_str()), "{}", back.body);
    assert_eq!(chat(&h, &gw, "sk-beta").version, v1);
    let again = write("/admin/policy/rollback", json!({}));
    assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("conflict")), "v1 was the first active version");

    let forward = write("/admin/policy/rollback", json!({"to": v2}));
    assert_eq!(forward.status, 200);
    assert_eq!(chat(&h, &gw, "sk-beta").version, v2);
    assert_eq!(forward.body["active"]["previous"], json!([v1]), "a target outside the chain is stacked like a publish");
    let unknown = write("/admin/policy/rollback", json!({"to": "0123456789abcdef"}));
    assert_eq!(unknown.status, 404);

    let history = send(&h, &gw, "GET", "/admin/policy/history", "sk-reader", None).body;
    let actions: Vec<&str> = history["history"].as_array().into_iter().flatten().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["rollback", "rollback", "promote", "canary"]);
    assert_eq!(history["history"][0]["by"], "writer");
}

#[test]
fn a_bad_policy_is_refused_with_every_error_and_changes_nothing() {
    let (h, gw) = (host(), Gateway::new());
    h.set_policy(doc(5).to_string().as_bytes());
    let before = chat(&h, &gw, "sk-acme").version;
    let mut bad = doc(5);
    bad["keys"][0]["tenant"] = json!("ghost");
    bad["models"][0]["targets"][0]["provider"] = json!("nowhere");
    let refused = send(&h, &gw, "POST", "/admin/policy/publish", "sk-writer", Some(json!({"policy": bad})));
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (422, Some("invalid_policy")));
    let paths: Vec<&str> = refused.body["errors"].as_array().into_iter().flatten().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, ["models[0].targets[0].provider", "keys[0].tenant"]);
    assert_eq!(chat(&h, &gw, "sk-acme").version, before);

    let valid = send(&h, &gw, "POST", "/admin/policy/validate", "sk-reader", Some(json!({"policy": doc(9)})));
    assert_eq!((valid.status, valid.body["valid"].as_bool()), (200, Some(true)));
    let junk = send(&h, &gw, "POST", "/admin/policy/publish", "sk-writer", Some(json!({"policy": doc(9), "colour": 1})));
    assert_eq!((junk.status, junk.body["error"]["param"].as_str()), (400, Some("colour")));
}

#[test]
fn keys_are_created_once_and_revoked() {
    let (h, gw) = (host(), Gateway::new());
    h.set_policy(doc(5).to_string().as_bytes());
    let created = send(&h, &gw, "POST", "/admin/keys", "sk-keys", Some(json!({"id": "acme-2", "tenant": "acme", "models": ["mock"]})));
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.body["key"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("sk-eg-") && secret.len() == 70, "{secret}");
    let stored = h.store_value(&format!("policy/versions/{}", created.body["version"].as_str().unwrap_or_default()));
    let stored = String::from_utf8(stored.map(|b| b.to_vec()).unwrap_or_default()).unwrap_or_default();
    assert!(stored.contains(&key_hash_string(&secret)) && !stored.contains(&secret), "only the hash is stored");
    assert_eq!(chat(&h, &gw, &secret).status, 200);

    let dup = send(&h, &gw, "POST", "/admin/keys", "sk-keys", Some(json!({"id": "acme-2", "tenant": "acme"})));
    assert_eq!(dup.status, 409);
    let orphan = send(&h, &gw, "POST", "/admin/keys", "sk-keys", Some(json!({"id": "x", "tenant": "ghost"})));
    assert_eq!((orphan.status, orphan.body["error"]["code"].as_str()), (422, Some("invalid_policy")));

    assert_eq!(send(&h, &gw, "DELETE", "/admin/keys/acme-2", "sk-keys", None).status, 200);
    assert_eq!(chat(&h, &gw, &secret).status, 401);
    assert_eq!(send(&h, &gw, "DELETE", "/admin/keys/acme-2", "sk-keys", None).status, 404);
}

#[test]
fn admin_reads_survive_nothing_but_a_working_store() {
    let (h, gw) = (host(), Gateway::new());
    h.set_policy(doc(5).to_string().as_bytes());
    assert_eq!(chat(&h, &gw, "sk-acme").status, 200);
    h.fail_store(Some(Error::new(ErrorKind::StoreUnavailable, "kv down")));
    assert_eq!(chat(&h, &gw, "sk-acme").status, 200, "requests keep the last good policy");
    let publish = send(&h, &gw, "POST", "/admin/policy/publish", "sk-writer", Some(json!({"policy": doc(6)})));
    assert_eq!((publish.status, publish.body["error"]["code"].as_str()), (503, Some("store_unavailable")), "writes report the failure");
}

#[test]
fn publishing_replaces_an_unreadable_active_pointer() {
    let (h, gw) = (host(), Gateway::new());
    h.set_policy(doc(5).to_string().as_bytes());
    // What `policy/active` held before snapshots had pointers: the document itself.
    futures::executor::block_on(edgegate_core::ports::PolicyStore::put(&h, "policy/active", Bytes::from(doc(5).to_string())))
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(chat(&h, &gw, "sk-acme").status, 503, "a stale pointer cannot be served");
    let published = send(&h, &gw, "POST", "/admin/policy/publish", BOOTSTRAP, Some(json!({"policy": doc(5)})));
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(chat(&h, &gw, "sk-acme").status, 200);
}

#[test]
fn canary_groups_and_percentages_select_tenants() {
    let (h, gw) = (host(), Gateway::new());
    h.set_policy(doc(5).to_string().as_bytes());
    let v1 = chat(&h, &gw, "sk-acme").version;
    let write = |body: Value| send(&h, &gw, "POST", "/admin/policy/publish", "sk-writer", Some(body));
    let by_group = write(json!({"policy": doc(6), "canary": {"groups": ["early"]}}));
    let v2 = by_group.body["version"].as_str().unwrap_or_default().to_owned();
    assert_eq!((chat(&h, &gw, "sk-beta").version, chat(&h, &gw, "sk-acme").version), (v2.clone(), v1.clone()), "beta is in group early");
    let everyone = write(json!({"policy": doc(7), "canary": {"percent": 100}}));
    let v3 = everyone.body["version"].as_str().unwrap_or_default().to_owned();
    assert_eq!((chat(&h, &gw, "sk-beta").version, chat(&h, &gw, "sk-acme").version), (v3.clone(), v3));
    let nobody = write(json!({"policy": doc(8), "canary": {"percent": 0}}));
    assert_eq!(nobody.status, 200);
    assert_eq!(chat(&h, &gw, "sk-acme").version, v1, "a canary for no one leaves everyone on active");
    assert_eq!(write(json!({"policy": doc(9), "canary": {"percent": 101}})).status, 400);
}
