//! Every provider's stream decoder on arbitrary bytes in arbitrary pieces: no panic; errors are
//! values. The first byte picks the provider and the piece size.
#![no_main]

use edgegate_core::policy::Policy;
use edgegate_core::providers;
use libfuzzer_sys::fuzz_target;

fn policy() -> Policy {
    {
        let kinds = ["mock", "openai", "openai_compatible", "anthropic", "azure_openai", "gemini", "bedrock", "workers_ai"];
        let providers: Vec<serde_json::Value> = kinds
            .iter()
            .map(|k| {
                let mut p = serde_json::json!({"id": k, "kind": k, "base_url": "https://p.test/v1"});
                if *k == "bedrock" {
                    p["region"] = "us-east-1".into();
                }
                p
            })
            .collect();
        let doc = serde_json::json!({"providers": providers});
        Policy::compile(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("fuzz policy: {e:?}"))
    }
}

thread_local! {
    static POLICY: Policy = policy();
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let kinds = ["mock", "openai", "openai_compatible", "anthropic", "azure_openai", "gemini", "bedrock", "workers_ai"];
    let mut decoder = POLICY.with(|p| {
        let provider = p.provider(kinds[usize::from(pick) % kinds.len()])?;
        Some(providers::adapter(provider.kind).stream_decoder(provider, 1_700_000_000))
    });
    let Some(decoder) = decoder.as_mut() else { return };
    for chunk in rest.chunks(usize::from(pick >> 3) + 1) {
        if decoder.push(chunk).is_err() {
            return;
        }
    }
    let _ = decoder.finish();
});
