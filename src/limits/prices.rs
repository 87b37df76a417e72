//! Prices: USD per million prompt and completion tokens, per client-facing model.
//!
//! A built-in table of common models (list prices at the time of writing, converted to USD
//! where the vendor prices in CNY; see docs/LIMITS.md) is overridden per model by the config's
//! `prices:`. Lookup is exact first, then the longest built-in or configured name that the model
//! starts with followed by `-` (so `gpt-4o-2024-08-06` is priced as `gpt-4o`, and
//! `gpt-4o-mini-…` as `gpt-4o-mini`). A model with no price costs 0: budgets do not see it, and
//! `check-config` warns about such models when budgets are set.
//!
//! Money is counted in integer nano-dollars (1e-9 USD) everywhere below this module, so spend
//! recorded by several replicas adds up exactly.

use std::collections::HashMap;

use crate::config::PriceConfig;
use crate::openai::Usage;

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// A model's price, USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// Cost of `prompt` and `completion` tokens in nano-dollars, rounded up.
    pub fn cost_nanos(&self, prompt: u64, completion: u64) -> u64 {
        // USD per million tokens = nano-dollars per thousandth of a token: x/1e6 * 1e9 = x*1e3.
        let nanos = prompt as f64 * self.input_per_million * 1e3
            + completion as f64 * self.output_per_million * 1e3;
        nanos.max(0.0).ceil() as u64
    }
    pub fn cost_of(&self, u: Usage) -> u64 {
        self.cost_nanos(u.prompt_tokens, u.completion_tokens)
    }
}

impl From<PriceConfig> for Price {
    fn from(p: PriceConfig) -> Price {
        Price {
            input_per_million: p.input_per_million,
            output_per_million: p.output_per_million,
        }
    }
}

/// (model, input USD/M, output USD/M). CNY prices converted at 7.2 CNY/USD.
const BUILT_IN: &[(&str, f64, f64)] = &[
    // OpenAI
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4-turbo", 10.00, 30.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o1", 15.00, 60.00),
    ("o1-mini", 1.10, 4.40),
    ("o3-mini", 1.10, 4.40),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.0),
    // Anthropic (through OpenAI-compatible front ends)
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-5-haiku", 0.80, 4.00),
    // DeepSeek
    ("deepseek-chat", 0.27, 1.10),
    ("deepseek-reasoner", 0.55, 2.19),
    // Zhipu GLM (CNY 100 / 50 / 1 / 0 per million)
    ("glm-4", 13.89, 13.89),
    ("glm-4-plus", 6.94, 6.94),
    ("glm-4-air", 0.14, 0.14),
    ("glm-4-flash", 0.0, 0.0),
    // Baidu ERNIE (CNY 30/90, 0.8/2, 0/0 per million)
    ("ernie-4.0", 4.17, 12.50),
    ("ernie-4.0-turbo", 4.17, 12.50),
    ("ernie-3.5", 0.11, 0.28),
    ("ernie-speed", 0.0, 0.0),
    // Qwen (CNY 2.4/9.6)
    ("qwen-max", 0.33, 1.33),
    // The built-in mock: small but not zero, so tests and the quickstart see spend.
    ("mock-gpt", 1.00, 2.00),
];

/// The price table: built-ins overridden by config.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    table: HashMap<String, Price>,
}

impl Prices {
    pub fn new(overrides: &std::collections::BTreeMap<String, PriceConfig>) -> Prices {
        let mut table: HashMap<String, Price> = BUILT_IN
            .iter()
            .map(|&(m, i, o)| {
                (
                    m.to_owned(),
                    Price {
                        input_per_million: i,
                        output_per_million: o,
                    },
                )
            })
            .collect();
        for (m, p) in overrides {
            table.insert(m.clone(), Price::from(*p));
        }
        Prices { table }
    }

    /// The price of `model`, if known (exact, else the longest `name-` prefix).
    pub fn get(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.table.get(model) {
            return Some(*p);
        }
        self.table
            .iter()
            .filter(|(name, _)| {
                model.len() > name.len()
                    && model.starts_with(name.as_str())
                    && model.as_bytes()[name.len()] == b'-'
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }
}

/// Warnings for `check-config`: models without a price while budgets are set (they cost 0
/// against every budget). Lives here, where prices are known, not in `config`.
pub fn unpriced_warnings(cfg: &crate::config::Config) -> Vec<String> {
    let budgeted = cfg.teams.values().any(|t| t.limits.budget.is_some())
        || cfg.keys.iter().any(|k| k.limits.budget.is_some());
    if !budgeted {
        return Vec::new();
    }
    let prices = Prices::new(&cfg.prices);
    cfg.models
        .keys()
        .filter(|name| prices.get(name).is_none())
        .map(|name| {
            format!(
                "models.{name}: no price (built in or under prices:); its requests cost 0 \
                 against budgets"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn cost_is_prompt_times_input_plus_completion_times_output() {
        let p = Price {
            input_per_million: 2.5,
            output_per_million: 10.0,
        };
        // 1000 * 2.5e-6 + 500 * 10e-6 = 0.0025 + 0.005 USD
        assert_eq!(p.cost_nanos(1000, 500), 7_500_000);
        assert_eq!(p.cost_nanos(0, 0), 0);
    }

    #[test]
    fn lookup_exact_then_longest_prefix_then_config_wins() {
        let mut over = BTreeMap::new();
        over.insert(
            "deepseek-chat".to_owned(),
            PriceConfig {
                input_per_million: 9.0,
                output_per_million: 9.0,
            },
        );
        let prices = Prices::new(&over);
        assert_eq!(
            prices
                .get("gpt-4o-mini-2024-07-18")
                .map(|p| p.input_per_million),
            Some(0.15)
        );
        assert_eq!(
            prices.get("gpt-4o-2024-08-06").map(|p| p.input_per_million),
            Some(2.5)
        );
        assert_eq!(
            prices.get("deepseek-chat").map(|p| p.input_per_million),
            Some(9.0)
        );
        assert_eq!(prices.get("gpt-4oo"), None);
        assert_eq!(prices.get("unknown"), None);
        assert!(prices
            .get("mock-gpt")
            .is_some_and(|p| p.cost_nanos(1, 1) > 0));
    }

    #[test]
    fn unpriced_models_are_warned_about_when_budgets_are_set() {
        let base = r#"
upstreams:
  m: { provider: mock }
models:
  mock-gpt: { targets: [ { upstream: m } ] }
teams:
  t: { models: ["*"] }
"#;
        let warn = |text: &str| match crate::config::Config::parse(text) {
            Ok(c) => unpriced_warnings(&c),
            Err(e) => panic!("{e}"),
        };
        let t = base.replace("mock-gpt:", "house-model:").replace(
            r#"t: { models: ["*"] }"#,
            r#"t: { models: ["*"], budget: { amount_usd: 10, period: daily } }"#,
        );
        let w = warn(&t);
        assert!(
            w.iter()
                .any(|w| w.starts_with("models.house-model: no price")),
            "{w:?}"
        );
        assert!(warn(base).is_empty());
    }
}
