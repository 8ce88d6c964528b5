//! Reads the parts of a Spin manifest (version 2) that this host implements.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Deserialize)]
struct Manifest {
    spin_manifest_version: u32,
    #[serde(default)]
    variables: BTreeMap<String, AppVariable>,
    trigger: Triggers,
    component: BTreeMap<String, ComponentDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppVariable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    #[allow(dead_code)]
    secret: bool,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct Triggers {
    http: Vec<HttpTrigger>,
}

#[derive(Deserialize)]
struct HttpTrigger {
    route: String,
    component: String,
}

#[derive(Deserialize)]
struct ComponentDef {
    source: String,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

/// One allowed outbound destination; `None` parts are wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: Option<String>,
    ports: Option<(u16, u16)>,
}

impl AllowedHost {
    fn parse(entry: &str) -> Result<Self, BoxError> {
        let (scheme, rest) = entry.split_once("://").ok_or_else(|| format!("allowed_outbound_hosts entry {entry:?} has no scheme"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!("allowed_outbound_hosts entry {entry:?} may not have a path").into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
            _ => (rest, None),
        };
        let wild = |s: &str| if s == "*" { None } else { Some(s.to_ascii_lowercase()) };
        let ports = match port {
            Some("*") => None,
            Some(p) => Some(match p.split_once("..") {
                Some((a, b)) => (a.parse()?, b.parse::<u16>()?.saturating_sub(1)),
                None => (p.parse()?, p.parse()?),
            }),
            None => {
                let d = match scheme {
                    "http" => 80,
                    "https" => 443,
                    "redis" => 6379,
                    "*" => return Ok(AllowedHost { scheme: None, host: wild(host), ports: None }),
                    other => return Err(format!("no default port for scheme {other}").into()),
                };
                Some((d, d))
            }
        };
        Ok(AllowedHost { scheme: wild(scheme), host: wild(host), ports })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }
}

/// A matched route.
pub struct RouteMatch {
    pub pattern: String,
    pub path_info: String,
}

/// The served component and what it may use.
pub struct App {
    pub source: PathBuf,
    routes: Vec<String>,
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    pub key_value_stores: Vec<String>,
    pub sqlite_databases: Vec<String>,
    /// Component variables, templates already expanded.
    pub variables: HashMap<String, String>,
}

impl App {
    /// The most specific route matching `path` (exact routes first, then the longest wildcard).
    pub fn match_route(&self, path: &str) -> Option<RouteMatch> {
        if let Some(r) = self.routes.iter().find(|r| !r.ends_with("/...") && r.as_str() == path) {
            return Some(RouteMatch { pattern: r.clone(), path_info: String::new() });
        }
        self.routes
            .iter()
            .filter_map(|r| r.strip_suffix("/...").map(|prefix| (r, prefix)))
            .filter(|(_, prefix)| path == *prefix || path.starts_with(&format!("{prefix}/")))
            .max_by_key(|(_, prefix)| prefix.len())
            .map(|(r, prefix)| RouteMatch { pattern: r.clone(), path_info: path[prefix.len()..].to_owned() })
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && !name.ends_with('_')
        && !name.contains("__")
}

/// Expands `{{ name }}` templates from the application variables.
fn expand(template: &str, app_vars: &HashMap<String, String>) -> Result<String, BoxError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or_else(|| format!("unclosed template in {template:?}"))? + start;
        let name = rest[start + 2..end].trim();
        let value = app_vars.get(name).ok_or_else(|| format!("template refers to undefined variable {name:?}"))?;
        out.push_str(value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Loads `path`, resolving application variables from `SPIN_VARIABLE_<NAME>` or their defaults.
pub fn load(path: &Path) -> Result<App, BoxError> {
    let text = std::fs::read_to_string(path)?;
    let m: Manifest = toml::from_str(&text)?;
    if m.spin_manifest_version != 2 {
        return Err("only spin_manifest_version = 2 is supported".into());
    }
    let mut app_vars = HashMap::new();
    for (name, var) in &m.variables {
        if !valid_name(name) {
            return Err(format!("invalid variable name {name:?}").into());
        }
        if var.required && var.default.is_some() {
            return Err(format!("variable {name:?} cannot be both required and have a default").into());
        }
        let env = std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())).ok();
        match env.or_else(|| var.default.clone()) {
            Some(v) => {
                app_vars.insert(name.clone(), v);
            }
            None if var.required => {
                return Err(format!("required variable {name:?} has no value (set SPIN_VARIABLE_{})", name.to_ascii_uppercase()).into());
            }
            None => return Err(format!("variable {name:?} needs a default or required = true").into()),
        }
    }
    let [trigger] = m.trigger.http.as_slice() else {
        return Err("this host serves exactly one [[trigger.http]]".into());
    };
    let c = m.component.get(&trigger.component).ok_or_else(|| format!("no component {:?}", trigger.component))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut variables = HashMap::new();
    for (name, template) in &c.variables {
        if !valid_name(name) {
            return Err(format!("invalid component variable name {name:?}").into());
        }
        variables.insert(name.clone(), expand(template, &app_vars)?);
    }
    let allowed_outbound_hosts =
        c.allowed_outbound_hosts.iter().map(|h| expand(h, &app_vars).and_then(|h| AllowedHost::parse(&h))).collect::<Result<_, _>>()?;
    Ok(App {
        source: base.join(&c.source),
        routes: vec![trigger.route.clone()],
        allowed_outbound_hosts,
        key_value_stores: c.key_value_stores.clone(),
        sqlite_databases: c.sqlite_databases.clone(),
        variables,
    })
}
