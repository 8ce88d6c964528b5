//! `edgegate-admin`: the policy admin CLI.
//!
//! Every command becomes one admin [`Endpoint`] and JSON body. With `--target gateway` they are
//! sent to a running gateway's `/admin` API (how Spin deployments are managed); with `--target
//! cloudflare` or `--target local` the CLI runs the same core operations ([`admin::serve`])
//! itself against Cloudflare KV (REST API) or `wrangler dev`'s local state. So every target
//! follows one set of rules: versions under their hash, pointers moved last, history kept.

mod diff;
mod spin;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use edgegate_core::admin::{self, Actor, Endpoint};
use serde_json::{Value, json};

const USAGE: &str = "\
usage: edgegate-admin [--target local|cloudflare|gateway] [--json] <command>

commands:
  validate FILE                 check a policy (JSON, YAML or TOML); print every error with its path
  diff FILE                     what publishing FILE would change, against the active policy
  publish FILE [--note TEXT] [--canary-tenants a,b] [--canary-groups g,h] [--canary-percent N]
                                publish to everyone, or (with a canary option) to a canary
  promote [--note TEXT]         make the running canary active for everyone
  abort-canary [--note TEXT]    end the running canary without promoting it
  rollback [--to VERSION] [--note TEXT]
                                move the active pointer back (default: to the previous version)
  history                       admin operations, newest first
  show [VERSION]                the active pointers and document, or a stored version
  keys create --id ID --tenant TENANT [--roles r,..] [--models m,..] [--expires-at UNIX_SECONDS]
                                create a key; prints its secret once (only the hash is stored)
  keys revoke ID                remove a key
  seed FILE                     print KV entries making FILE active in an empty store
                                (for `wrangler kv bulk put`)
  check-spin [MANIFEST] [--runtime-config FILE].. [--spinapp FILE] [--policy FILE]
                                check a Spin deployment (default manifest spin.toml): Spin's
                                rules, runtime configuration stores and variable providers, a
                                SpinKube SpinApp, and that every secret the policy names is mapped

targets (default: local):
  local       wrangler dev state: EDGEGATE_STATE_DIR (default .wrangler/state), WRANGLER (default `npx wrangler`)
  cloudflare  Cloudflare KV REST API: CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN, EDGEGATE_KV_NAMESPACE_ID
              (CLOUDFLARE_API_BASE overrides https://api.cloudflare.com/client/v4)
  gateway     a gateway's /admin API: EDGEGATE_URL, EDGEGATE_ADMIN_KEY
EDGEGATE_ADMIN_USER names you in pointers and history when acting on a store directly.
";

/// `println!` that ignores a closed stdout (`edgegate-admin show | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A failure the CLI reports and exits 1 (or 2 for usage) with.
#[derive(Debug)]
enum Fail {
    Usage(String),
    Other(String),
}

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::Other(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Local,
    Cloudflare,
    Gateway,
}

#[derive(Debug, Default)]
struct Args {
    target: Option<String>,
    json: bool,
    words: Vec<String>,
    note: String,
    canary_tenants: Option<String>,
    canary_groups: Option<String>,
    canary_percent: Option<u8>,
    to: Option<String>,
    id: Option<String>,
    tenant: Option<String>,
    roles: Option<String>,
    models: Option<String>,
    expires_at: Option<u64>,
    runtime_configs: Vec<PathBuf>,
    spinapp: Option<PathBuf>,
    policy: Option<PathBuf>,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("target") => args.target = Some(parser.value()?.string()?),
            Long("json") => args.json = true,
            Long("note") => args.note = parser.value()?.string()?,
            Long("canary-tenants") => args.canary_tenants = Some(parser.value()?.string()?),
            Long("canary-groups") => args.canary_groups = Some(parser.value()?.string()?),
            Long("canary-percent") => args.canary_percent = Some(parser.value()?.parse()?),
            Long("to") => args.to = Some(parser.value()?.string()?),
            Long("id") => args.id = Some(parser.value()?.string()?),
            Long("tenant") => args.tenant = Some(parser.value()?.string()?),
            Long("roles") => args.roles = Some(parser.value()?.string()?),
            Long("models") => args.models = Some(parser.value()?.string()?),
            Long("expires-at") => args.expires_at = Some(parser.value()?.parse()?),
            Long("runtime-config") => args.runtime_configs.push(parser.value()?.into()),
            Long("spinapp") => args.spinapp = Some(parser.value()?.into()),
            Long("policy") => args.policy = Some(parser.value()?.into()),
            Value(v) => args.words.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let result = parse_args().map_err(|e| Fail::Usage(e.to_string())).and_then(run);
    match result {
        Ok(code) => code,
        Err(Fail::Usage(m)) => {
            eprintln!("edgegate-admin: {m}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Fail::Other(m)) => {
            eprintln!("edgegate-admin: {m}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a policy file as JSON, YAML or TOML (by extension; JSON otherwise).
fn read_policy(path: &Path) -> Result<Value, Fail> {
    let text = std::fs::read_to_string(path).map_err(|e| Fail::Other(format!("{}: {e}", path.display())))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let value = match ext.as_str() {
        "yaml" | "yml" => serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        "toml" => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        _ => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
    };
    Ok(value)
}

fn list(csv: &Option<String>) -> Option<Vec<String>> {
    csv.as_ref().map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
}

fn run(args: Args) -> Result<ExitCode, Fail> {
    let target = match args.target.as_deref().unwrap_or("local") {
        "local" => Target::Local,
        "cloudflare" => Target::Cloudflare,
        "gateway" => Target::Gateway,
        other => return Err(Fail::Usage(format!("unknown target {other:?}"))),
    };
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let file = |i: usize| words.get(i).map(PathBuf::from).ok_or_else(|| Fail::Usage("a policy FILE is required".into()));

    // Commands that need no store.
    match words.as_slice() {
        ["validate", ..] => return validate(&read_policy(&file(1)?)?, args.json),
        ["check-spin", rest @ ..] => {
            let manifest = PathBuf::from(rest.first().copied().unwrap_or("spin.toml"));
            let policy = args.policy.as_deref().map(read_policy).transpose()?;
            let inputs = spin::Inputs {
                manifest: &manifest,
                runtime_configs: &args.runtime_configs,
                spinapp: args.spinapp.as_deref(),
                policy: policy.as_ref(),
            };
            let (problems, summary) = spin::check(&inputs)?;
            for p in &problems {
                out!("{p}");
            }
            if problems.is_empty() {
                out!("ok: {summary}");
                return Ok(ExitCode::SUCCESS);
            }
            return Err(Fail::Other(format!("{} problem(s) in the Spin deployment", problems.len())));
        }
        ["seed", ..] => {
            let actor = Actor { name: actor_name(), now_ms: now_ms() };
            let entries =
                admin::seed_entries(read_policy(&file(1)?)?, &actor).map_err(|e| Fail::Other(admin::invalid_policy(&e).message))?;
            let bulk: Vec<Value> = entries.into_iter().map(|(key, value)| json!({"key": key, "value": value})).collect();
            out!("{}", Value::Array(bulk));
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }

    let (endpoint, body) = match words.as_slice() {
        ["diff", ..] => (Endpoint::Read, Value::Null),
        ["publish", ..] => {
            let canary = (args.canary_tenants.is_some() || args.canary_groups.is_some() || args.canary_percent.is_some()).then(|| {
                json!({
                    "tenants": list(&args.canary_tenants).unwrap_or_default(),
                    "groups": list(&args.canary_groups).unwrap_or_default(),
                    "percent": args.canary_percent.unwrap_or(0),
                })
            });
            let mut body = json!({"policy": read_policy(&file(1)?)?, "note": args.note});
            if let Some(c) = canary {
                body["canary"] = c;
            }
            (Endpoint::Publish, body)
        }
        ["promote"] => (Endpoint::Promote, json!({"note": args.note})),
        ["abort-canary"] => (Endpoint::AbortCanary, json!({"note": args.note})),
        ["rollback"] => (Endpoint::Rollback, json!({"to": args.to, "note": args.note})),
        ["history"] => (Endpoint::History, Value::Null),
        ["show"] => (Endpoint::Read, Value::Null),
        ["show", version] => (Endpoint::Version((*version).to_owned()), Value::Null),
        ["keys", "create"] => {
            let required = |v: &Option<String>, name: &str| v.clone().ok_or_else(|| Fail::Usage(format!("keys create needs --{name}")));
            let mut spec = json!({"id": required(&args.id, "id")?, "tenant": required(&args.tenant, "tenant")?});
            if let Some(roles) = list(&args.roles) {
                spec["roles"] = json!(roles);
            }
            if let Some(models) = list(&args.models) {
                spec["models"] = json!(models);
            }
            if let Some(at) = args.expires_at {
                spec["expires_at"] = json!(at);
            }
            (Endpoint::CreateKey, spec)
        }
        ["keys", "revoke", id] => (Endpoint::RevokeKey((*id).to_owned()), Value::Null),
        [] => return Err(Fail::Usage("no command".into())),
        _ => return Err(Fail::Usage(format!("unknown command: {}", words.join(" ")))),
    };

    let (status, answer) = call(target, endpoint.clone(), &body)?;
    if !(200..300).contains(&status) {
        eprintln!("{}", describe_error(status, &answer));
        return Ok(ExitCode::FAILURE);
    }
    if words[0] == "diff" {
        let proposed = read_policy(&file(1)?)?;
        let changes = diff::diff(&answer["policy"], &proposed);
        if args.json {
            out!("{}", json!({"changes": changes}));
        } else if changes.is_empty() {
            out!("no changes");
        } else {
            changes.iter().for_each(|c| out!("{c}"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        out!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    print_human(&endpoint, &answer);
    Ok(ExitCode::SUCCESS)
}

fn validate(policy: &Value, json_out: bool) -> Result<ExitCode, Fail> {
    match admin::validate(policy.clone()) {
        Ok(v) => {
            if json_out {
                out!("{}", json!({"valid": true, "version": v.version}));
            } else {
                out!("valid: version {}", v.version);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors {
                if json_out {
                    out!("{}", json!({"path": e.path, "message": e.message}));
                } else {
                    out!("{}: {}", e.path, e.message);
                }
            }
            eprintln!("{} error(s)", errors.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs one admin endpoint on the chosen target.
fn call(target: Target, endpoint: Endpoint, body: &Value) -> Result<(u16, Value), Fail> {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    if target == Target::Gateway {
        return store::gateway_call(&endpoint, &body);
    }
    let actor = Actor { name: actor_name(), now_ms: now_ms() };
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| format!("no entropy: {e}"))?;
    let answer = match target {
        Target::Local => futures::executor::block_on(admin::serve(&store::Local::from_env(), endpoint, &body, &actor, &random)),
        _ => futures::executor::block_on(admin::serve(&store::Cloudflare::from_env()?, endpoint, &body, &actor, &random)),
    };
    Ok(answer.unwrap_or_else(|e| (e.status(), e.to_openai_json())))
}

fn describe_error(status: u16, answer: &Value) -> String {
    let mut out = format!("failed ({status}): {}", answer["error"]["message"].as_str().unwrap_or(&answer.to_string()));
    for e in answer["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  {}: {}", e["path"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")));
    }
    out
}

fn print_human(endpoint: &Endpoint, a: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    match endpoint {
        Endpoint::Publish => out!("published {} to {} (active before: {})", s(&a["version"]), s(&a["target"]), s(&a["active_before"])),
        Endpoint::Promote | Endpoint::Rollback => {
            out!("active is now {} (rollback goes to {})", s(&a["active"]["version"]), s(&a["active"]["previous"][0]))
        }
        Endpoint::History => {
            for e in a["history"].as_array().into_iter().flatten() {
                let at = e["at_ms"].as_u64().map(httpdate_ms).unwrap_or_default();
                out!("{at}  {:<10} {}  by {}  {}", s(&e["action"]), s(&e["version"]), s(&e["by"]), e["note"].as_str().unwrap_or(""));
            }
        }
        Endpoint::CreateKey => {
            out!("key {} created in version {}", s(&a["id"]), s(&a["version"]));
            out!("secret (shown once, store it now): {}", s(&a["key"]));
        }
        Endpoint::RevokeKey(_) => out!("key {} revoked; active version {}", s(&a["revoked"]), s(&a["version"])),
        Endpoint::AbortCanary => out!("canary {} ended; everyone is on the active version", s(&a["aborted"]["version"])),
        _ => out!("{}", serde_json::to_string_pretty(a).unwrap_or_default()),
    }
}

fn httpdate_ms(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

fn actor_name() -> String {
    std::env::var("EDGEGATE_ADMIN_USER").or_else(|_| std::env::var("USER")).map(|u| format!("cli:{u}")).unwrap_or_else(|_| "cli".into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
