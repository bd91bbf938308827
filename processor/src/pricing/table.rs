//! The price table: TOML entries by model pattern and `effective_from` date.

use chrono::NaiveDate;
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Usage;

/// The built-in table (`schemas/prices.toml`), compiled into the binary.
pub const BUILTIN_PRICES: &str = runledger_schemas::BUILTIN_PRICES;

/// One price file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    /// The table's version; a user file without one is named by its content hash.
    version: Option<String>,
    #[serde(default)]
    model: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    #[serde(rename = "match")]
    pattern: String,
    effective_from: String,
    input_per_mtok: f64,
    output_per_mtok: f64,
    cache_read_per_mtok: Option<f64>,
    cache_write_per_mtok: Option<f64>,
    reasoning_per_mtok: Option<f64>,
    #[serde(default)]
    tier: Vec<TierEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierEntry {
    above_input_tokens: i64,
    input_per_mtok: Option<f64>,
    output_per_mtok: Option<f64>,
    cache_read_per_mtok: Option<f64>,
    cache_write_per_mtok: Option<f64>,
    reasoning_per_mtok: Option<f64>,
}

/// USD per million tokens, by kind of token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Uncached input.
    pub input: f64,
    /// Visible output (output minus reasoning).
    pub output: f64,
    /// Input read from the cache.
    pub cache_read: f64,
    /// Input written to the cache.
    pub cache_write: f64,
    /// Reasoning output.
    pub reasoning: f64,
}

/// The prices of one table entry: base rates and the tiers above them.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    /// First UTC day these prices apply, as microseconds since the epoch.
    pub effective_from_micros: i64,
    /// The entry's `effective_from`.
    pub effective_from: NaiveDate,
    /// Rates up to the first tier.
    pub base: Rates,
    /// (above this many input tokens, rates), ascending.
    pub tiers: Vec<(i64, Rates)>,
}

impl Prices {
    /// The cost of `usage` in USD: every token priced once, at its own rate.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let input = usage.input.unwrap_or(0).max(0);
        let cache_read = usage.cache_read.unwrap_or(0).max(0);
        let cache_write = usage.cache_write.unwrap_or(0).max(0);
        let output = usage.output.unwrap_or(0).max(0);
        let reasoning = usage.reasoning.unwrap_or(0).clamp(0, output);
        let cached = cache_read + cache_write;
        // OTel: input includes cached tokens. An input smaller than its cached part comes
        // from an emitter that reports them apart: then input is the uncached part.
        let (uncached, total_input) = if input >= cached {
            (input - cached, input)
        } else {
            (input, input + cached)
        };
        let rates = self
            .tiers
            .iter()
            .rev()
            .find(|(above, _)| total_input > *above)
            .map_or(&self.base, |(_, rates)| rates);
        (uncached as f64 * rates.input
            + cache_read as f64 * rates.cache_read
            + cache_write as f64 * rates.cache_write
            + (output - reasoning) as f64 * rates.output
            + reasoning as f64 * rates.reasoning)
            / 1_000_000.0
    }
}

/// Patterns in precedence order, each with values: exact names before globs, longer globs
/// before shorter ones; earlier sources before later ones.
#[derive(Debug)]
pub(crate) struct Matcher<T> {
    patterns: Vec<(String, Option<GlobMatcher>, T)>,
}

impl<T> Matcher<T> {
    /// Patterns in source order; the sort keeps it among equals.
    pub(crate) fn new<'a>(
        patterns: impl IntoIterator<Item = (&'a str, T)>,
    ) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for (pattern, value) in patterns {
            let pattern = pattern.to_ascii_lowercase();
            let glob = if pattern.contains(['*', '?', '[', '{']) {
                Some(
                    Glob::new(&pattern)
                        .map_err(|e| format!("bad pattern `{pattern}`: {e}"))?
                        .compile_matcher(),
                )
            } else {
                None
            };
            compiled.push((pattern, glob, value));
        }
        compiled
            .sort_by_key(|(pattern, glob, _)| (glob.is_some(), std::cmp::Reverse(pattern.len())));
        Ok(Self { patterns: compiled })
    }

    /// The index of the first pattern that matches `name` (already lowercased).
    fn position(&self, name: &str) -> Option<usize> {
        self.patterns
            .iter()
            .position(|(pattern, glob, _)| match glob {
                Some(glob) => glob.is_match(name),
                None => pattern == name,
            })
    }

    /// The value of the first pattern that matches `name` (any case).
    pub(crate) fn find(&self, name: &str) -> Option<&T> {
        let name = name.to_ascii_lowercase();
        self.position(&name).map(|i| &self.patterns[i].2)
    }
}

/// The merged table: the user's entries, then the built-in ones.
#[derive(Debug)]
pub struct PriceTable {
    /// Pattern -> its entries, oldest first.
    matcher: Matcher<Vec<Prices>>,
    version: String,
}

impl PriceTable {
    /// Parses the built-in table and the user's, whose patterns take precedence.
    pub fn parse(builtin: &str, user: Option<&str>) -> Result<Self, String> {
        let builtin_file: PriceFile =
            toml::from_str(builtin).map_err(|e| format!("the built-in price table: {e}"))?;
        let mut version = builtin_file
            .version
            .clone()
            .unwrap_or_else(|| short_hash(builtin.as_bytes()));
        let mut groups: Vec<(String, Vec<Prices>)> = Vec::new();
        if let Some(user) = user {
            let user_file: PriceFile =
                toml::from_str(user).map_err(|e| format!("the price file (pricing.file): {e}"))?;
            let user_version = user_file
                .version
                .clone()
                .unwrap_or_else(|| short_hash(user.as_bytes()));
            version = format!("{version}+{user_version}");
            group(&mut groups, user_file.model, "pricing.file")?;
        }
        let builtin_groups = {
            let mut g = Vec::new();
            group(&mut g, builtin_file.model, "the built-in price table")?;
            g
        };
        // A pattern the user priced hides the built-in entries of the same pattern.
        for (pattern, prices) in builtin_groups {
            if !groups.iter().any(|(p, _)| *p == pattern) {
                groups.push((pattern, prices));
            }
        }
        let matcher = Matcher::new(groups.iter().map(|(p, v)| (p.as_str(), v.clone())))?;
        Ok(Self { matcher, version })
    }

    /// The table's version: the built-in one, `+` the user file's (its `version`, else a
    /// hash of its content).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The pattern that prices `model`, if any.
    pub(crate) fn pattern_of(&self, model: &str) -> Option<usize> {
        self.matcher.position(&canonical_model(model))
    }

    /// The prices of pattern `index` in effect at `start_micros`.
    pub(crate) fn prices_at(&self, index: usize, start_micros: i64) -> Option<&Prices> {
        self.matcher.patterns[index]
            .2
            .iter()
            .rev()
            .find(|p| p.effective_from_micros <= start_micros)
    }

    /// The prices for `model` in effect at `start_micros`.
    pub fn lookup(&self, model: &str, start_micros: i64) -> Option<&Prices> {
        self.prices_at(self.pattern_of(model)?, start_micros)
    }

    /// Every (pattern, prices) in precedence order, for listing.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[Prices])> {
        self.matcher
            .patterns
            .iter()
            .map(|(p, _, v)| (p.as_str(), v.as_slice()))
    }
}

/// Groups entries by pattern, each group sorted by date, validating as it goes.
fn group(
    groups: &mut Vec<(String, Vec<Prices>)>,
    entries: Vec<ModelEntry>,
    source: &str,
) -> Result<(), String> {
    for entry in entries {
        let context = format!("{source}: model `{}`", entry.pattern);
        let date = NaiveDate::parse_from_str(entry.effective_from.trim(), "%Y-%m-%d")
            .map_err(|e| format!("{context}: effective_from `{}`: {e}", entry.effective_from))?;
        let check = |name: &str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(value)
            } else {
                Err(format!(
                    "{context}: {name} must be a non-negative number, not {value}"
                ))
            }
        };
        let input = check("input_per_mtok", entry.input_per_mtok)?;
        let output = check("output_per_mtok", entry.output_per_mtok)?;
        let base = Rates {
            input,
            output,
            cache_read: check(
                "cache_read_per_mtok",
                entry.cache_read_per_mtok.unwrap_or(input),
            )?,
            cache_write: check(
                "cache_write_per_mtok",
                entry.cache_write_per_mtok.unwrap_or(input),
            )?,
            reasoning: check(
                "reasoning_per_mtok",
                entry.reasoning_per_mtok.unwrap_or(output),
            )?,
        };
        let mut tiers = Vec::new();
        for tier in entry.tier {
            let over = |v: Option<f64>, base: f64, name: &str| check(name, v.unwrap_or(base));
            let output = over(tier.output_per_mtok, base.output, "tier output_per_mtok")?;
            tiers.push((
                tier.above_input_tokens,
                Rates {
                    input: over(tier.input_per_mtok, base.input, "tier input_per_mtok")?,
                    output,
                    cache_read: over(tier.cache_read_per_mtok, base.cache_read, "tier cache_read")?,
                    cache_write: over(
                        tier.cache_write_per_mtok,
                        base.cache_write,
                        "tier cache_write",
                    )?,
                    // A tier that raises the output price raises reasoning with it.
                    reasoning: over(
                        tier.reasoning_per_mtok,
                        if entry.reasoning_per_mtok.is_some() {
                            base.reasoning
                        } else {
                            output
                        },
                        "tier reasoning",
                    )?,
                },
            ));
        }
        tiers.sort_by_key(|(above, _)| *above);
        let prices = Prices {
            effective_from_micros: date
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
                .timestamp_micros(),
            effective_from: date,
            base,
            tiers,
        };
        let pattern = entry.pattern.trim().to_ascii_lowercase();
        match groups.iter_mut().find(|(p, _)| *p == pattern) {
            Some((_, list)) => {
                if list.iter().any(|p| p.effective_from == date) {
                    return Err(format!("{context}: two entries take effect on {date}"));
                }
                list.push(prices);
                list.sort_by_key(|p| p.effective_from);
            }
            None => groups.push((pattern, vec![prices])),
        }
    }
    Ok(())
}

/// Regions and vendors that hosts put before a model id (`us.anthropic.claude-...` on
/// Bedrock): stripped before matching.
const DOTTED_PREFIXES: &[&str] = &[
    "us.",
    "eu.",
    "apac.",
    "global.",
    "jp.",
    "au.",
    "anthropic.",
    "meta.",
    "mistral.",
    "amazon.",
    "cohere.",
    "openai.",
    "google.",
    "deepseek.",
];

/// A model name as patterns see it: lowercase, without `provider/` paths or dotted host
/// prefixes.
pub(crate) fn canonical_model(model: &str) -> String {
    let mut name = model.trim().to_ascii_lowercase();
    if let Some(slash) = name.rfind('/') {
        name.drain(..=slash);
    }
    let mut stripped = true;
    while stripped {
        stripped = false;
        for prefix in DOTTED_PREFIXES {
            if name.len() > prefix.len() && name.starts_with(prefix) {
                name.drain(..prefix.len());
                stripped = true;
            }
        }
    }
    name
}

/// The first 8 hex digits of SHA-256: a short, stable name for a text.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}
