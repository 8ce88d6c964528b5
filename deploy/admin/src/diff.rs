//! A human-readable structural diff of two policy documents.
//!
//! Lists of objects with an `id` (or `alias`) are matched by it, so a change reads
//! `tenants[acme].limits.requests_per_minute: 100 -> 200` rather than as an index shuffle.

use serde_json::Value;

/// Every change from `old` to `new`, one line each, in document order.
pub(crate) fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn label(v: &Value) -> Option<String> {
    v.get("id").or_else(|| v.get("alias")).and_then(Value::as_str).map(str::to_owned)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
            keys.sort();
            for k in keys {
                let p = join(path, k);
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (Some(x), None) => out.push(format!("- {p}: {x}")),
                    (None, Some(y)) => out.push(format!("+ {p}: {y}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.iter().chain(b).all(|v| label(v).is_some()) => {
            for x in a {
                let id = label(x).unwrap_or_default();
                match b.iter().find(|y| label(y).as_deref() == Some(id.as_str())) {
                    Some(y) => walk(&format!("{path}[{id}]"), x, y, out),
                    None => out.push(format!("- {path}[{id}]")),
                }
            }
            for y in b {
                let id = label(y).unwrap_or_default();
                if !a.iter().any(|x| label(x).as_deref() == Some(id.as_str())) {
                    out.push(format!("+ {path}[{id}]: {y}"));
                }
            }
        }
        (x, y) if x != y => out.push(format!("~ {path}: {x} -> {y}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::diff;

    #[test]
    fn lists_are_matched_by_id_and_every_change_is_named() {
        let old = json!({"tenants": [{"id": "a", "limits": {"requests_per_minute": 5}}, {"id": "b"}], "models": [], "x": 1});
        let new = json!({"tenants": [{"id": "c"}, {"id": "a", "limits": {"requests_per_minute": 9}}], "models": [], "y": [1, 2]});
        assert_eq!(
            diff(&old, &new),
            ["~ tenants[a].limits.requests_per_minute: 5 -> 9", "- tenants[b]", "+ tenants[c]: {\"id\":\"c\"}", "- x: 1", "+ y: [1,2]",]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
