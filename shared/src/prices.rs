//! The embedded price table: list prices of well-known models per usage bucket, used for a target
//! whose policy gives no `price` and whose model `prices` in policy does not name.
//!
//! Prices are US dollars per million tokens, the providers' public list prices for standard
//! (non-batch, non-priority) use as of mid-2025, for prompts within the models' base context tier.
//! They change: policy overrides them (a target's `price`, or the document's `prices` by model
//! name), and records say which price was used by their `cost_micro_usd` only, so keep policy
//! current for models that matter to budgets.

use crate::policy::Price;

/// One row: model name, then input, cache read, cache write, output — USD per million tokens.
/// Reasoning tokens are billed as output.
type Row = (String, f64, f64, f64, f64);

/// The embedded table (`shared/data/prices.json`), parsed on first use.
fn table() -> &'static [Row] {
    #[derive(serde::Deserialize)]
    struct File {
        models: Vec<Row>,
    }
    static TABLE: std::sync::OnceLock<Vec<Row>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| serde_json::from_str::<File>(include_str!("../data/prices.json")).map(|f| f.models).unwrap_or_default())
}

/// The list price of `model`, if the table knows it: by its name, or by a table name it starts
/// with followed by a snapshot tail — `-` and a digit, or `@` (`gpt-4o-2024-08-06`,
/// `claude-3-5-sonnet-20241022-v2:0`, `claude-sonnet-4@20250514`); a named variant (`o3-pro`,
/// `gemini-2.5-flash-lite`) is a different model and is not priced as its base. Provider
/// decorations are ignored: a Bedrock vendor and region prefix (`us.anthropic.`), a `models/` path.
pub fn list_price(model: &str) -> Option<Price> {
    let name = model.rsplit('/').next().unwrap_or(model);
    let name = name.rsplit_once('.').filter(|(vendor, _)| !vendor.contains('-')).map_or(name, |(_, rest)| rest);
    table()
        .iter()
        .filter(|(known, ..)| {
            name == *known
                || name.strip_prefix(known).is_some_and(|rest| {
                    rest.starts_with('@') || rest.strip_prefix('-').is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
        })
        .max_by_key(|(known, ..)| known.len())
        .map(|&(_, input, cache_read, cache_write, output)| Price {
            input_micro_usd_per_mtok: micro(input),
            cache_read_micro_usd_per_mtok: micro(cache_read),
            cache_write_micro_usd_per_mtok: micro(cache_write),
            output_micro_usd_per_mtok: micro(output),
        })
}

/// Dollars as micro-dollars (the table's amounts are small, positive and exact to a micro-dollar).
fn micro(usd: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let m = (usd * 1_000_000.0).round() as u64;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_found_by_name_snapshot_and_provider_decoration() {
        let input = |m: &str| list_price(m).map(|p| p.input_micro_usd_per_mtok);
        assert_eq!(input("gpt-4o"), Some(2_500_000));
        assert_eq!(input("gpt-4o-2024-08-06"), Some(2_500_000));
        assert_eq!(input("gpt-4o-mini-2024-07-18"), Some(150_000));
        assert_eq!(input("gpt-4.1-mini"), Some(400_000), "a version dot is not a vendor prefix");
        assert_eq!(input("claude-3-5-sonnet-20241022"), Some(3_000_000));
        assert_eq!(input("us.anthropic.claude-3-5-haiku-20241022-v1:0"), Some(800_000));
        assert_eq!(input("anthropic.claude-3-haiku-20240307-v1:0"), Some(250_000));
        assert_eq!(input("models/gemini-2.0-flash"), Some(100_000));
        assert_eq!(input("claude-sonnet-4@20250514"), Some(3_000_000), "Vertex's snapshot form");
        assert_eq!(input("gpt-4o2"), None, "a different model that shares a prefix");
        assert_eq!(input("o3-pro"), None, "not in the table: not priced as o3");
        assert_eq!(input("my-finetune"), None);
    }

    #[test]
    fn a_target_takes_its_own_price_then_the_documents_then_the_list_price() {
        let doc = serde_json::json!({
            "providers": [{"id": "p", "kind": "openai"}],
            "models": [{"alias": "a", "targets": [
                {"provider": "p", "model": "gpt-4o", "price": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}},
                {"provider": "p", "model": "gpt-4o-mini", "price": null},
                {"provider": "p", "model": "gpt-4o"},
                {"provider": "p", "model": "in-house"}
            ]}],
            "prices": {"gpt-4o-mini": {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1, "cache_read_usd_per_mtok": 0.25}}
        });
        let policy = crate::policy::Policy::compile_value(doc).unwrap_or_else(|e| unreachable!("{e:?}"));
        let prices: Vec<Option<(u64, u64, u64)>> = policy
            .route("a")
            .map(|r| {
                r.targets
                    .iter()
                    .map(|t| t.price.map(|p| (p.input_micro_usd_per_mtok, p.cache_read_micro_usd_per_mtok, p.output_micro_usd_per_mtok)))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            prices,
            [Some((1_000_000, 1_000_000, 2_000_000)), Some((500_000, 250_000, 1_000_000)), Some((2_500_000, 1_250_000, 10_000_000)), None]
        );
    }

    #[test]
    fn each_usage_bucket_is_charged_at_its_price() {
        let p = list_price("claude-3-5-sonnet").unwrap_or_else(|| unreachable!());
        let usage = crate::chat::Usage { input: 1_000, cache_read: 10_000, cache_write: 2_000, output: 500, reasoning: 100 };
        // 1k × $3 + 10k × $0.30 + 2k × $3.75 + 600 × $15 per million = 0.003 + 0.003 + 0.0075 + 0.009 USD.
        assert_eq!(p.charge(&usage), 22_500);
        assert_eq!(p.cost(1_000, 600), 3_000 + 9_000, "an estimate prices every prompt token fresh");
    }

    #[test]
    fn every_row_is_a_usable_price() {
        assert_eq!(table().len(), 23, "the embedded file parses");
        for (name, input, cache_read, cache_write, output) in table() {
            assert!(*input > 0.0 && *cache_read <= *input && *cache_write >= *input && *output >= 0.0, "{name}");
        }
    }
}
