//! The published JSON Schema matches the policy types, and the policies in the repo carry it.
#![cfg(feature = "schema")]

#[test]
fn the_published_schema_is_current() {
    let generated = serde_json::to_string_pretty(&edgegate_core::policy::json_schema()).unwrap_or_default() + "\n";
    let published = include_str!("../../deploy/policy.schema.json");
    assert!(
        generated == published,
        "deploy/policy.schema.json is stale: cargo run -q -p edgegate-core --features schema --example policy_schema > deploy/policy.schema.json"
    );
}

#[test]
fn the_schema_forbids_unknown_fields_like_the_loader() {
    let schema = edgegate_core::policy::json_schema();
    assert_eq!(schema["additionalProperties"], false);
    let kinds: Vec<&str> = schema
        .pointer("/$defs/ProviderKind/oneOf")
        .and_then(|k| k.as_array())
        .map(|k| k.iter().filter_map(|v| v["const"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["mock", "openai", "openai_compatible", "anthropic", "azure_openai", "gemini", "bedrock", "workers_ai"]);
}
