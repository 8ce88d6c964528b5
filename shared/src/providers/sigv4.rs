//! AWS Signature Version 4 for HTTP requests with a fully buffered body (what Bedrock needs).
//! Time is an argument, as everywhere in the core.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind};
use crate::policy::hex;

/// AWS credentials: an access key pair and, for temporary credentials, a session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl Credentials {
    /// Parses `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`, the form the secret is stored in.
    pub fn parse(secret: &str) -> Option<Self> {
        let mut parts = secret.splitn(3, ':');
        let access_key_id = parts.next().filter(|s| !s.is_empty())?.to_owned();
        let secret_access_key = parts.next().filter(|s| !s.is_empty())?.to_owned();
        let session_token = parts.next().map(str::to_owned);
        Some(Credentials { access_key_id, secret_access_key, session_token })
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` for epoch milliseconds (proleptic Gregorian, UTC).
pub fn amz_date(now_ms: u64) -> String {
    let secs = now_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Percent-encodes per SigV4 (unreserved characters kept; `/` kept when `keep_slash`).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Signs `req` in place for `service` in `region`: sets `x-amz-date`, the session token header if
/// any, and `authorization`. Every header present is signed, and so is `host` — taken from the
/// URL and not set on the request, because HTTP clients in both edge runtimes derive `Host`
/// from the URL themselves (wasi-http refuses it as a forbidden header).
pub fn sign(req: &mut http::Request<Bytes>, creds: &Credentials, region: &str, service: &str, now_ms: u64) -> Result<(), Error> {
    let bad = |what: &str| Error::new(ErrorKind::Internal, format!("cannot sign request: {what}"));
    let date_time = amz_date(now_ms);
    let date = &date_time[..8];
    let host = req.uri().authority().ok_or_else(|| bad("no host in URL"))?.to_string();
    let headers = req.headers_mut();
    headers.insert("x-amz-date", date_time.parse().map_err(|_| bad("date"))?);
    if let Some(token) = &creds.session_token {
        headers.insert("x-amz-security-token", token.parse().map_err(|_| bad("session token"))?);
    }

    // The path is already percent-encoded in the URI; SigV4 (outside S3) encodes it once more.
    let path = uri_encode(req.uri().path(), true);
    let mut query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(k, false), uri_encode(v, false))
        })
        .collect();
    query.sort();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");

    let mut signed: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(name, _)| *name != http::header::AUTHORIZATION)
        .map(|(name, value)| {
            (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect();
    if !signed.iter().any(|(k, _)| k == "host") {
        signed.push(("host".into(), host));
    }
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_names = signed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let payload_hash = hex(&Sha256::digest(req.body()));
    let canonical = format!("{}\n{path}\n{query}\n{canonical_headers}\n{signed_names}\n{payload_hash}", req.method());

    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let mut key = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    let authorization =
        format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}", creds.access_key_id);
    req.headers_mut().insert(http::header::AUTHORIZATION, authorization.parse().map_err(|_| bad("authorization"))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's SigV4 test suite, case `get-vanilla-query-order-key-case`.
    #[test]
    fn matches_the_aws_test_suite() {
        let creds = Credentials::parse("AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap_or_else(|| unreachable!());
        let mut req = http::Request::get("https://example.amazonaws.com/?Param2=value2&Param1=value1")
            .body(Bytes::new())
            .unwrap_or_else(|_| unreachable!());
        let now_ms = 1_440_938_160_000; // 2015-08-30T12:36:00Z
        sign(&mut req, &creds, "us-east-1", "service", now_ms).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            req.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, \
             Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
        assert_eq!(req.headers()["x-amz-date"], "20150830T123600Z");
    }

    #[test]
    fn dates_and_credentials() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400_000), "20000229T000000Z");
        assert_eq!(amz_date(1_795_902_079_000), "20261128T214119Z");
        assert_eq!(Credentials::parse("A:B:C").map(|c| c.session_token), Some(Some("C".into())));
        assert_eq!(Credentials::parse("only-a-key"), None);
    }
}
