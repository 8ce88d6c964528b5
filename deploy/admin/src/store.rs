//! Where the CLI's operations land: policy stores it drives itself (local `wrangler dev` state,
//! Cloudflare KV over the REST API), or a gateway's `/admin` API.

use std::io::Write;
use std::process::Command;

use bytes::Bytes;
use edgegate_core::admin::Endpoint;
use edgegate_core::ports::PolicyStore;
use edgegate_core::{Error, ErrorKind};
use serde_json::Value;

use crate::Fail;

fn store_error(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::StoreUnavailable, what.to_string())
}

fn env(name: &str) -> Result<String, Fail> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| Fail::Usage(format!("{name} is not set")))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// `wrangler dev`'s local KV state, driven through `wrangler kv key … --local`.
pub(crate) struct Local {
    wrangler: Vec<String>,
    state: String,
}

impl Local {
    pub(crate) fn from_env() -> Self {
        let wrangler = std::env::var("WRANGLER").unwrap_or_else(|_| "npx wrangler".into());
        let state = std::env::var("EDGEGATE_STATE_DIR").unwrap_or_else(|_| ".wrangler/state".into());
        Local { wrangler: wrangler.split_whitespace().map(str::to_owned).collect(), state }
    }

    fn wrangler(&self, args: &[&str]) -> Result<std::process::Output, Error> {
        let (program, first) = self.wrangler.split_first().ok_or_else(|| store_error("WRANGLER is empty"))?;
        let out = Command::new(program)
            .args(first)
            .args(["kv", "key"])
            .args(args)
            .args(["--binding", "POLICY", "--local", "--persist-to", &self.state])
            .output()
            .map_err(|e| store_error(format!("running {program}: {e}")))?;
        if !out.status.success() {
            return Err(store_error(format!("wrangler kv key {}: {}", args[0], String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(out)
    }
}

impl PolicyStore for Local {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        // `kv key get` prints "Value not found" for a missing key; stored values are JSON, which
        // never starts with a letter.
        let out = self.wrangler(&["get", key])?;
        Ok((out.stdout.first() != Some(&b'V')).then(|| Bytes::from(out.stdout)))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), Error> {
        let mut file = tempfile(&value)?;
        file.flush().map_err(store_error)?;
        self.wrangler(&["put", key, "--path", &file.path])?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.wrangler(&["delete", key]).map(drop)
    }
}

/// A file removed on drop.
struct TempFile {
    path: String,
    file: std::fs::File,
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tempfile(contents: &[u8]) -> Result<TempFile, Error> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(store_error)?;
    let path = std::env::temp_dir().join(format!("edgegate-admin-{}.json", edgegate_core::policy::hex(&random)));
    let path = path.to_string_lossy().into_owned();
    let mut file = std::fs::File::create(&path).map_err(store_error)?;
    file.write_all(contents).map_err(store_error)?;
    Ok(TempFile { path, file })
}

/// Cloudflare Workers KV through the REST API.
pub(crate) struct Cloudflare {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Cloudflare {
    pub(crate) fn from_env() -> Result<Self, Fail> {
        let api = std::env::var("CLOUDFLARE_API_BASE").unwrap_or_else(|_| "https://api.cloudflare.com/client/v4".into());
        let base = format!(
            "{}/accounts/{}/storage/kv/namespaces/{}/values",
            api.trim_end_matches('/'),
            env("CLOUDFLARE_ACCOUNT_ID")?,
            env("EDGEGATE_KV_NAMESPACE_ID")?
        );
        Ok(Cloudflare { base, token: env("CLOUDFLARE_API_TOKEN")?, agent: agent() })
    }

    fn send(&self, method: http::Method, key: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), Error> {
        let url = format!("{}/{}", self.base, encode(key));
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/octet-stream")
            .body(body)
            .map_err(store_error)?;
        let mut resp = self.agent.run(req).map_err(|e| store_error(format!("Cloudflare API: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_vec().map_err(|e| store_error(format!("Cloudflare API: {e}")))?;
        Ok((status, body))
    }

    fn check(&self, what: &str, (status, body): (u16, Vec<u8>)) -> Result<Vec<u8>, Error> {
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let message = parsed["errors"][0]["message"].as_str().map_or_else(|| String::from_utf8_lossy(&body).into_owned(), str::to_owned);
        Err(store_error(format!("Cloudflare API {what} answered {status}: {message}")))
    }
}

impl PolicyStore for Cloudflare {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let answer = self.send(http::Method::GET, key, vec![])?;
        if answer.0 == 404 {
            return Ok(None);
        }
        self.check("read", answer).map(|b| Some(Bytes::from(b)))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), Error> {
        let answer = self.send(http::Method::PUT, key, value.to_vec())?;
        self.check("write", answer).map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        let answer = self.send(http::Method::DELETE, key, vec![])?;
        if answer.0 == 404 {
            return Ok(());
        }
        self.check("delete", answer).map(drop)
    }
}

/// Percent-encodes a KV key for a URL path segment.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one endpoint to a gateway's admin API.
pub(crate) fn gateway_call(endpoint: &Endpoint, body: &[u8]) -> Result<(u16, Value), Fail> {
    let url = env("EDGEGATE_URL")?;
    let key = env("EDGEGATE_ADMIN_KEY")?;
    let (method, path) = endpoint.request_line();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", url.trim_end_matches('/')))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_vec())?;
    let mut resp = agent().run(req).map_err(|e| Fail::Other(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}
