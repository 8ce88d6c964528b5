//! Prints the JSON Schema of policy documents. The published copy is `deploy/policy.schema.json`:
//!
//!     cargo run -q -p edgegate-core --features schema --example policy_schema > deploy/policy.schema.json
#![allow(clippy::print_stdout, missing_docs)]

fn main() {
    let schema = edgegate_core::policy::json_schema();
    println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
}
