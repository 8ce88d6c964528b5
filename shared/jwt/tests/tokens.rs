//! JSON Web Tokens through the whole gateway on the deterministic test host, verified by this
//! crate: every accepted algorithm, and every attack the gateway must refuse with a 401 and a
//! record. The keys under `tests/keys/` are test-only fixtures.

use std::rc::Rc;

use base64::Engine as _;
use bytes::Bytes;
use edgegate_core::Gateway;
use edgegate_core::telemetry::RequestRecord;
use edgegate_core::testkit::TestHost;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

const T0_S: u64 = 1_800_000_000;
const ISS: &str = "https://idp.example";

const RSA: &str = include_str!("keys/rsa.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa.pub.pem");
const ATTACKER_RSA: &str = include_str!("keys/attacker-rsa.pem");
const EC: &str = include_str!("keys/ec.pem");
const ED25519: &str = include_str!("keys/ed25519.pem");
const HS_SECRET: &str = "an HS256 shared key that lives in a host secret";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn keys() -> (RS256KeyPair, ES256KeyPair, Ed25519KeyPair) {
    let rsa = RS256KeyPair::from_pem(RSA).unwrap_or_else(|e| unreachable!("{e}")).with_key_id("rsa-1");
    let ec = ES256KeyPair::from_pem(EC).unwrap_or_else(|e| unreachable!("{e}")).with_key_id("ec-1");
    let ed = Ed25519KeyPair::from_pem(ED25519).unwrap_or_else(|e| unreachable!("{e}")).with_key_id("ed-1");
    (rsa, ec, ed)
}

fn policy() -> String {
    let (rsa, ec, ed) = keys();
    let rsa_pub = rsa.public_key().to_components();
    let ec_point = ec.public_key().public_key().to_bytes_uncompressed();
    let ed_pub = ed.public_key().to_bytes();
    json!({
        "tenants": [{"id": "acme"}, {"id": "ops"}],
        "providers": [{"id": "builtin", "kind": "mock"}],
        "models": [{"alias": "mock", "targets": [{"provider": "builtin", "model": "mock-1"}]}],
        "jwt_issuers": [
            {"id": "idp", "issuer": ISS, "audiences": ["edgegate"], "algorithms": ["RS256", "ES256", "EdDSA"], "leeway_seconds": 30,
             "tenants": ["acme"],
             "keys": [
                {"kid": "rsa-1", "kty": "RSA", "n": b64(&rsa_pub.n), "e": b64(&rsa_pub.e), "use": "sig"},
                {"kid": "ec-1", "kty": "EC", "crv": "P-256", "x": b64(&ec_point[1..33]), "y": b64(&ec_point[33..])},
                {"kid": "ed-1", "kty": "OKP", "crv": "Ed25519", "x": b64(&ed_pub)}
             ]},
            {"id": "mixed", "issuer": "https://mixed.example", "algorithms": ["RS256", "HS256"], "hmac_secret": "JWT_HS_KEY",
             "keys": [{"kid": "rsa-1", "kty": "RSA", "n": b64(&rsa_pub.n), "e": b64(&rsa_pub.e)}]},
            {"id": "admins", "issuer": "https://admins.example", "algorithms": ["EdDSA"], "default_roles": [],
             "tenant_claim": "org", "roles_claim": "scope", "role_map": {"gw.read": ["policy:read"]},
             "keys": [{"kid": "ed-1", "kty": "OKP", "crv": "Ed25519", "x": b64(&ed_pub)}]}
        ],
        "settings": {"policy_refresh_seconds": 0}
    })
    .to_string()
}

fn claims(iss: &str, extra: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let mut custom = json!({"tenant": "acme"}).as_object().cloned().unwrap_or_default();
    custom.extend(extra.as_object().cloned().unwrap_or_default());
    let mut c =
        Claims::with_custom_claims(custom, Duration::from_secs(3600)).with_issuer(iss).with_subject("user-1").with_audience("edgegate");
    c.issued_at = Some(UnixTimeStamp::from_secs(T0_S));
    c.invalid_before = Some(UnixTimeStamp::from_secs(T0_S));
    c.expires_at = Some(UnixTimeStamp::from_secs(T0_S + 3600));
    c
}

fn host() -> (TestHost, Gateway) {
    let h = TestHost::new(T0_S * 1000, &policy());
    h.set_secret("EDGEGATE_ADMIN_API", "on");
    h.set_secret("JWT_HS_KEY", HS_SECRET);
    h.set_jwt_verifier(Rc::new(edgegate_jwt::verify));
    (h, Gateway::new())
}

fn call(h: &TestHost, gw: &Gateway, method: &str, path: &str, token: &str) -> (u16, String, RequestRecord) {
    let body = if method == "POST" {
        json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}).to_string()
    } else {
        String::new()
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://gw.example{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Bytes::from(body))
        .unwrap_or_else(|_| unreachable!());
    let (parts, body) = h.call(gw, req);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    let record = h.drain_records().pop().unwrap_or_else(|| unreachable!("every request is recorded"));
    (parts.status.as_u16(), code, record)
}

fn chat(h: &TestHost, gw: &Gateway, token: &str) -> (u16, String) {
    let (status, code, _) = call(h, gw, "POST", "/v1/chat/completions", token);
    (status, code)
}

#[test]
fn every_accepted_algorithm_authenticates_and_is_recorded() {
    let (h, gw) = host();
    let (rsa, ec, ed) = keys();
    let c = || claims(ISS, json!({}));
    for token in [rsa.sign(c()), ec.sign(c()), ed.sign(c())] {
        let token = token.unwrap_or_else(|e| unreachable!("{e}"));
        let (status, _, record) = call(&h, &gw, "POST", "/v1/chat/completions", &token);
        assert_eq!((status, record.tenant.as_deref(), record.key_id.as_deref()), (200, Some("acme"), Some("jwt:idp:user-1")));
    }
    let hs = HS256Key::from_bytes(HS_SECRET.as_bytes()).authenticate(claims("https://mixed.example", json!({}))).unwrap_or_default();
    assert_eq!(chat(&h, &gw, &hs), (200, String::new()));
}

#[test]
fn attacks_are_refused_with_401_and_recorded() {
    let (h, gw) = host();
    let (rsa, _, ed) = keys();
    let sign = |c| rsa.sign(c).unwrap_or_default();
    let refused = |token: &str, why: &str| {
        let (status, code, record) = call(&h, &gw, "POST", "/v1/chat/completions", token);
        assert_eq!((status, code.as_str(), record.error), (401, "invalid_token", Some("invalid_token")), "{why}");
    };

    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(serde_json::to_string(&claims(ISS, json!({}))).unwrap_or_default().as_bytes())
    );
    refused(&none, "alg none");

    // Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = HS256Key::from_bytes(RSA_PUBLIC.as_bytes()).with_key_id("rsa-1");
    refused(&confused.authenticate(claims(ISS, json!({}))).unwrap_or_default(), "HS256 to an issuer without HS256");
    refused(
        &confused.authenticate(claims("https://mixed.example", json!({}))).unwrap_or_default(),
        "HS256 with the public key as the secret",
    );

    let attacker = RS256KeyPair::from_pem(ATTACKER_RSA).unwrap_or_else(|e| unreachable!("{e}")).with_key_id("rsa-1");
    refused(&attacker.sign(claims(ISS, json!({}))).unwrap_or_default(), "signed by another key under a known kid");
    let unknown_kid = RS256KeyPair::from_pem(RSA).unwrap_or_else(|e| unreachable!("{e}")).with_key_id("rsa-9");
    refused(&unknown_kid.sign(claims(ISS, json!({}))).unwrap_or_default(), "unknown kid");

    let mut expired = claims(ISS, json!({}));
    expired.expires_at = Some(UnixTimeStamp::from_secs(T0_S - 31));
    refused(&sign(expired), "expired beyond the leeway");
    let mut early = claims(ISS, json!({}));
    early.invalid_before = Some(UnixTimeStamp::from_secs(T0_S + 31));
    refused(&sign(early), "not yet valid");
    let mut forever = claims(ISS, json!({}));
    forever.expires_at = None;
    refused(&sign(forever), "no exp");

    refused(&sign(claims(ISS, json!({})).with_audience("someone-else")), "wrong audience");
    refused(&sign(claims("https://evil.example", json!({}))), "untrusted issuer");
    refused(&ed.sign(claims("https://mixed.example", json!({}))).unwrap_or_default(), "EdDSA to an issuer without EdDSA");
    refused(&sign(claims(ISS, json!({"tenant": "initech"}))), "unknown tenant");
    refused(&sign(claims(ISS, json!({"tenant": "ops"}))), "a tenant this issuer may not name (cross-tenant)");
    refused(&sign(claims(ISS, json!({"tenant": null}))), "no tenant");
    refused("eyJhbGciOiJSUzI1NiJ9.e30.AAAA", "no iss");

    let mut skewed = claims(ISS, json!({}));
    skewed.expires_at = Some(UnixTimeStamp::from_secs(T0_S - 29));
    assert_eq!(chat(&h, &gw, &sign(skewed)).0, 200, "within the leeway");
}

#[test]
fn token_roles_are_separate_like_key_roles() {
    let (h, gw) = host();
    let (rsa, _, ed) = keys();
    let user = rsa.sign(claims(ISS, json!({}))).unwrap_or_default();
    assert_eq!(call(&h, &gw, "GET", "/admin/policy", &user).0, 403, "an invoke token cannot read policy");

    let reader = rsa.sign(claims(ISS, json!({"roles": ["policy:read"]}))).unwrap_or_default();
    assert_eq!(call(&h, &gw, "GET", "/admin/policy", &reader).0, 200);
    assert_eq!(call(&h, &gw, "POST", "/admin/policy/promote", &reader).1, "permission_denied");

    let admin = ed.sign(claims("https://admins.example", json!({"org": "ops", "scope": "openid gw.read"}))).unwrap_or_default();
    let (status, _, record) = call(&h, &gw, "GET", "/admin/policy", &admin);
    assert_eq!((status, record.key_id.as_deref()), (200, Some("jwt:admins:user-1")));
    assert_eq!(chat(&h, &gw, &admin), (403, "permission_denied".into()), "an admin token without invoke cannot call models");
}

#[test]
fn a_missing_hs256_secret_is_a_server_fault_not_a_pass() {
    let h = TestHost::new(T0_S * 1000, &policy());
    h.set_secret("EDGEGATE_ADMIN_API", "on");
    h.set_jwt_verifier(Rc::new(edgegate_jwt::verify));
    let gw = Gateway::new();
    let hs = HS256Key::from_bytes(HS_SECRET.as_bytes()).authenticate(claims("https://mixed.example", json!({}))).unwrap_or_default();
    assert_eq!(chat(&h, &gw, &hs), (500, "provider_credential_missing".into()));
}
