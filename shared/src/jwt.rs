//! JSON Web Token issuers: their policy form, and the pure steps around verification.
//!
//! The core decides which issuer a token claims, and what a verified token's claims mean (tenant
//! and roles). Checking the signature, algorithm and time claims is the host's
//! [`crate::ports::TokenVerifier`] (the `edgegate-jwt` crate, over `jwt-simple`), kept out of the
//! core because that library reads the system clock and brings `wasm-bindgen` along.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, ErrorKind};
use crate::policy::{PolicyError, Role, Roles};

/// A signing algorithm an issuer may use. `none` does not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum JwtAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256; the shared secret is a host secret named by `hmac_secret`.
    HS256,
}

/// A public key, as in a JWKS document (RFC 7517). Extra JWKS members (`use`, `x5c`, …) are
/// accepted and ignored so an identity provider's JWKS can be pasted as is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Jwk {
    /// Key id, matched against the token's `kid` header.
    #[serde(default)]
    pub kid: Option<String>,
    /// `RSA`, `EC` or `OKP`.
    pub kty: String,
    /// The algorithm this key is for; absent: inferred from `kty`/`crv`.
    #[serde(default)]
    pub alg: Option<JwtAlg>,
    /// EC/OKP curve: `P-256` or `Ed25519`.
    #[serde(default)]
    pub crv: Option<String>,
    /// RSA modulus (base64url).
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(default)]
    pub e: Option<String>,
    /// EC x coordinate or OKP public key (base64url).
    #[serde(default)]
    pub x: Option<String>,
    /// EC y coordinate (base64url).
    #[serde(default)]
    pub y: Option<String>,
}

impl Jwk {
    /// The algorithm this key verifies, from `alg` or its type and curve.
    pub fn algorithm(&self) -> Option<JwtAlg> {
        let inferred = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => Some(JwtAlg::RS256),
            ("EC", Some("P-256")) => Some(JwtAlg::ES256),
            ("OKP", Some("Ed25519")) => Some(JwtAlg::EdDSA),
            _ => None,
        };
        match (self.alg, inferred) {
            (Some(a), Some(b)) if a == b => Some(a),
            (None, b) => b,
            _ => None,
        }
    }
}

/// A trusted token issuer, as written in policy.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtIssuer {
    /// Id of this issuer entry, used in records.
    id: String,
    /// The exact `iss` tokens carry.
    issuer: String,
    /// Accepted `aud` values; a token must name one of them. Empty: `aud` is not checked.
    #[serde(default)]
    audiences: Vec<String>,
    /// Accepted algorithms (the token's `alg` must be one, and match its key's type).
    algorithms: Vec<JwtAlg>,
    /// Public keys (JWKS `keys`), inline.
    #[serde(default)]
    keys: Vec<Jwk>,
    /// For HS256: the name of the host secret holding the shared key. Never the key itself.
    hmac_secret: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`, in seconds (default 60).
    leeway_seconds: Option<u64>,
    /// Claim naming the tenant (default `tenant`).
    tenant_claim: Option<String>,
    /// The tenants this issuer may name; absent: any. One tenant's identity provider should
    /// list only that tenant, so it cannot mint tokens for another.
    tenants: Option<Vec<String>>,
    /// Claim carrying roles: a list, or a space-separated string like OAuth `scope` (default `roles`).
    roles_claim: Option<String>,
    /// Claim values → roles. Absent: claim values are taken as role names.
    role_map: Option<BTreeMap<String, Vec<Role>>>,
    /// Roles every valid token of this issuer has (default `["invoke"]`).
    default_roles: Option<Vec<Role>>,
}

/// A trusted issuer after compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// Entry id.
    pub id: String,
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: not checked).
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<JwtAlg>,
    /// Public keys.
    pub keys: Vec<Jwk>,
    /// Name of the HS256 shared-key secret.
    pub hmac_secret: Option<String>,
    /// Clock skew allowed, seconds.
    pub leeway_s: u64,
    /// Tenants this issuer may name (`None`: any).
    pub tenants: Option<Vec<String>>,
    tenant_claim: String,
    roles_claim: String,
    role_map: Option<BTreeMap<String, Vec<Role>>>,
    default_roles: Vec<Role>,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl RawJwtIssuer {
    /// Validates and compiles, reporting problems under `path`.
    pub(crate) fn compile(self, path: &str, errors: &mut Vec<PolicyError>) -> JwtIssuer {
        let mut err = |p: String, message: &str| errors.push(PolicyError { path: p, message: message.into() });
        if self.algorithms.is_empty() {
            err(format!("{path}.algorithms"), "must name at least one algorithm");
        }
        let wants_hmac = self.algorithms.contains(&JwtAlg::HS256);
        if wants_hmac != self.hmac_secret.is_some() {
            err(format!("{path}.hmac_secret"), "required with HS256, and only with HS256");
        }
        if self.algorithms.iter().any(|a| *a != JwtAlg::HS256) && self.keys.is_empty() {
            err(format!("{path}.keys"), "public-key algorithms need at least one key");
        }
        for (i, k) in self.keys.iter().enumerate() {
            let kp = format!("{path}.keys[{i}]");
            let Some(alg) = k.algorithm() else {
                err(kp, "unsupported key: use RSA, EC with crv P-256, or OKP with crv Ed25519 (and a matching alg)");
                continue;
            };
            if !self.algorithms.contains(&alg) {
                err(format!("{kp}.alg"), "this key's algorithm is not in `algorithms`");
            }
            let members: &[(&str, &Option<String>)] = match alg {
                JwtAlg::RS256 => &[("n", &k.n), ("e", &k.e)],
                JwtAlg::ES256 => &[("x", &k.x), ("y", &k.y)],
                JwtAlg::EdDSA | JwtAlg::HS256 => &[("x", &k.x)],
            };
            for (name, value) in members {
                if value.as_deref().and_then(b64url).is_none_or(|b| b.is_empty()) {
                    err(format!("{kp}.{name}"), "required, as base64url");
                }
            }
        }
        JwtIssuer {
            id: self.id,
            issuer: self.issuer,
            audiences: self.audiences,
            algorithms: self.algorithms,
            keys: self.keys,
            hmac_secret: self.hmac_secret,
            leeway_s: self.leeway_seconds.unwrap_or(60),
            tenants: self.tenants,
            tenant_claim: self.tenant_claim.unwrap_or_else(|| "tenant".into()),
            roles_claim: self.roles_claim.unwrap_or_else(|| "roles".into()),
            role_map: self.role_map,
            default_roles: self.default_roles.unwrap_or_else(|| vec![Role::Invoke]),
        }
    }
}

/// Whether a presented credential is a compact JWS rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.split('.').count() == 3
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidToken, message)
}

/// The `iss` a token claims, read without verifying anything (to pick the issuer whose keys
/// then verify it).
pub fn claimed_issuer(token: &str) -> Result<String, Error> {
    let payload = token.split('.').nth(1).and_then(b64url).ok_or_else(|| invalid("malformed token"))?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).map_err(|_| invalid("malformed token"))?;
    claims["iss"].as_str().map(str::to_owned).ok_or_else(|| invalid("the token has no `iss`"))
}

impl JwtIssuer {
    /// The tenant and roles verified claims grant.
    pub fn grant(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<(String, Roles), Error> {
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(format!("the token has no `{}` claim naming a tenant", self.tenant_claim)))?;
        if self.tenants.as_ref().is_some_and(|allowed| !allowed.iter().any(|t| t == tenant)) {
            return Err(invalid(format!("this issuer may not name tenant {tenant:?}")));
        }
        let values: Vec<&str> = match claims.get(&self.roles_claim) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        };
        let granted = values.iter().flat_map(|v| match &self.role_map {
            Some(map) => map.get(*v).cloned().unwrap_or_default(),
            None => serde_json::from_value::<Role>(serde_json::Value::String((*v).to_owned())).into_iter().collect(),
        });
        let roles = self.default_roles.iter().copied().chain(granted).collect();
        Ok((tenant.to_owned(), roles))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(extra: serde_json::Value) -> Result<JwtIssuer, Vec<PolicyError>> {
        let mut raw = serde_json::json!({"id": "idp", "issuer": "https://idp", "algorithms": ["ES256"],
            "keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "AQ", "y": "Ag"}]});
        if let (Some(r), Some(e)) = (raw.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        let raw: RawJwtIssuer = serde_json::from_value(raw).map_err(|e| vec![PolicyError { path: ".".into(), message: e.to_string() }])?;
        let mut errors = vec![];
        let compiled = raw.compile("jwt_issuers[0]", &mut errors);
        if errors.is_empty() { Ok(compiled) } else { Err(errors) }
    }

    fn paths(r: Result<JwtIssuer, Vec<PolicyError>>) -> Vec<String> {
        r.err().unwrap_or_default().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn issuers_are_checked_key_by_key() {
        assert!(issuer(serde_json::json!({})).is_ok());
        assert_eq!(paths(issuer(serde_json::json!({"algorithms": ["RS256"]}))), ["jwt_issuers[0].keys[0].alg"]);
        assert_eq!(
            paths(issuer(serde_json::json!({"algorithms": ["HS256"]}))),
            ["jwt_issuers[0].hmac_secret", "jwt_issuers[0].keys[0].alg"]
        );
        assert_eq!(
            paths(issuer(
                serde_json::json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "AQ", "y": "AQ"}, {"kty": "EC", "crv": "P-256", "x": "!"}]})
            )),
            ["jwt_issuers[0].keys[0]", "jwt_issuers[0].keys[1].x", "jwt_issuers[0].keys[1].y"]
        );
        assert_eq!(paths(issuer(serde_json::json!({"algorithms": [], "keys": []}))), ["jwt_issuers[0].algorithms"]);
        assert!(issuer(serde_json::json!({"algorithms": ["HS256"], "keys": [], "hmac_secret": "JWT_KEY"})).is_ok());
    }

    #[test]
    fn claims_grant_a_tenant_and_roles() {
        let claims = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let plain = issuer(serde_json::json!({})).unwrap_or_else(|e| unreachable!("{e:?}"));
        let (tenant, roles) = plain
            .grant(&claims(serde_json::json!({"tenant": "acme", "roles": ["policy:read", "bogus"]})))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(tenant, "acme");
        assert!(roles.has(Role::Invoke) && roles.has(Role::PolicyRead) && !roles.has(Role::PolicyWrite));
        assert_eq!(plain.grant(&claims(serde_json::json!({"sub": "x"}))).map_err(|e| e.metric_label()), Err("invalid_token"));
        let fenced = issuer(serde_json::json!({"tenants": ["acme"]})).unwrap_or_else(|e| unreachable!("{e:?}"));
        assert!(fenced.grant(&claims(serde_json::json!({"tenant": "acme"}))).is_ok());
        assert_eq!(
            fenced.grant(&claims(serde_json::json!({"tenant": "globex"}))).map_err(|e| e.message),
            Err("this issuer may not name tenant \"globex\"".into()),
            "one tenant's identity provider cannot mint tokens for another"
        );

        let mapped = issuer(serde_json::json!({"tenant_claim": "org", "roles_claim": "scope", "default_roles": [],
            "role_map": {"gateway.admin": ["policy:read", "policy:write"]}}))
        .unwrap_or_else(|e| unreachable!("{e:?}"));
        let (_, roles) = mapped
            .grant(&claims(serde_json::json!({"org": "acme", "scope": "openid gateway.admin"})))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert!(roles.has(Role::PolicyWrite) && !roles.has(Role::Invoke));
        let (_, roles) =
            mapped.grant(&claims(serde_json::json!({"org": "acme", "scope": "policy:write"}))).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(roles, Roles::default(), "with a role map, only mapped values count");
    }

    #[test]
    fn the_claimed_issuer_is_read_without_trusting_it() {
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!("{}.{}.sig", enc(r#"{"alg":"none"}"#), enc(r#"{"iss":"https://idp"}"#));
        assert!(looks_like_jwt(&token));
        assert!(!looks_like_jwt("sk-eg-abc"));
        assert_eq!(claimed_issuer(&token).ok().as_deref(), Some("https://idp"));
        assert_eq!(claimed_issuer("eyJ.%%%.x").map_err(|e| e.metric_label()), Err("invalid_token"));
    }
}
