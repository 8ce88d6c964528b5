//! The edgegate core's [`TokenVerifier`](edgegate_core::ports::TokenVerifier) port over
//! `jwt-simple`: RS256, ES256, EdDSA and HS256, with keys from the issuer's policy entry.
//!
//! Kept out of the core because `jwt-simple` reads the system clock (the core passes its own
//! time as `now_s`, used instead) and depends on `wasm-bindgen` on `wasm32-unknown-unknown`.
//! Both edge hosts call [`verify`].
//!
//! What is refused: an `alg` the issuer does not accept (so `none`, and HS256 unless configured
//! with a host secret — an HS256 token "signed" with an RSA public key never meets an RSA key);
//! a `kid` the issuer has no key for; a bad signature; a wrong `iss` or `aud`; an `exp` in the
//! past or an `nbf` in the future beyond the leeway; and tokens with no `exp` at all.

use std::collections::HashSet;

use base64::Engine as _;
use edgegate_core::jwt::{Jwk, JwtAlg, JwtIssuer};
use jwt_simple::prelude::*;
use serde_json::{Map, Value};

/// Longest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 16 << 10;

fn b64url(s: &Option<String>) -> Result<Vec<u8>, String> {
    let s = s.as_deref().ok_or("key member missing")?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("key member is not base64url: {e}"))
}

/// Verifies `token` for `issuer` at `now_s`; see the crate docs for what is refused.
pub fn verify(token: &str, issuer: &JwtIssuer, hmac_key: Option<&[u8]>, now_s: u64) -> Result<Map<String, Value>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token too long".into());
    }
    let meta = Token::decode_metadata(token).map_err(|e| format!("malformed token: {e}"))?;
    let alg = match meta.algorithm() {
        "RS256" => JwtAlg::RS256,
        "ES256" => JwtAlg::ES256,
        "EdDSA" => JwtAlg::EdDSA,
        "HS256" => JwtAlg::HS256,
        other => return Err(format!("algorithm {other:?} is not accepted")),
    };
    if !issuer.algorithms.contains(&alg) {
        return Err(format!("algorithm {} is not accepted by this issuer", meta.algorithm()));
    }
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from([issuer.issuer.clone()])),
        allowed_audiences: (!issuer.audiences.is_empty()).then(|| issuer.audiences.iter().cloned().collect()),
        time_tolerance: Some(Duration::from_secs(issuer.leeway_s)),
        artificial_time: Some(UnixTimeStamp::from_secs(now_s)),
        max_token_length: Some(MAX_TOKEN_BYTES),
        ..Default::default()
    };
    let claims = if alg == JwtAlg::HS256 {
        let key = hmac_key.ok_or("no HS256 key is configured")?;
        HS256Key::from_bytes(key).verify_token::<Map<String, Value>>(token, Some(options)).map_err(|e| e.to_string())?
    } else {
        let kid = meta.key_id();
        let keys: Vec<&Jwk> =
            issuer.keys.iter().filter(|k| k.algorithm() == Some(alg) && (kid.is_none() || k.kid.as_deref() == kid)).collect();
        if keys.is_empty() {
            return Err(match kid {
                Some(kid) => format!("no {} key with kid {kid:?}", meta.algorithm()),
                None => format!("no {} key", meta.algorithm()),
            });
        }
        let mut last = String::new();
        let mut verified = None;
        for key in keys {
            match verify_with(key, alg, token, options.clone()) {
                Ok(c) => {
                    verified = Some(c);
                    break;
                }
                Err(e) => last = e,
            }
        }
        verified.ok_or(last)?
    };
    let expires = claims.expires_at.ok_or("the token has no `exp`")?;
    let mut out = claims.custom;
    out.insert("iss".into(), issuer.issuer.clone().into());
    out.insert("exp".into(), expires.as_secs().into());
    if let Some(sub) = claims.subject {
        out.insert("sub".into(), sub.into());
    }
    Ok(out)
}

fn verify_with(key: &Jwk, alg: JwtAlg, token: &str, options: VerificationOptions) -> Result<JWTClaims<Map<String, Value>>, String> {
    let options = Some(options);
    let result = match alg {
        JwtAlg::RS256 => RS256PublicKey::from_components(&b64url(&key.n)?, &b64url(&key.e)?)
            .map_err(|e| format!("bad RSA key: {e}"))?
            .verify_token(token, options),
        JwtAlg::ES256 => {
            let point = [&[4u8][..], &b64url(&key.x)?, &b64url(&key.y)?].concat();
            ES256PublicKey::from_bytes(&point).map_err(|e| format!("bad P-256 key: {e}"))?.verify_token(token, options)
        }
        JwtAlg::EdDSA => {
            Ed25519PublicKey::from_bytes(&b64url(&key.x)?).map_err(|e| format!("bad Ed25519 key: {e}"))?.verify_token(token, options)
        }
        JwtAlg::HS256 => return Err("HS256 uses the issuer's shared key".into()),
    };
    result.map_err(|e| e.to_string())
}
