//! Configuration of the redaction stage (`[redaction]` in the config file).
//!
//! With no configuration at all, every built-in detector is on with its safe default (emails
//! keyed-hashed, everything else masked) and the default key rules mask the values of keys
//! that name secrets and hash customer ids. Configuration only adds rules or changes actions.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::detectors::BUILTINS;

/// What happens to a detected value or to the value of a matching key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Replace with a placeholder that names the kind: `<EMAIL>`.
    Mask,
    /// Replace with a keyed hash (HMAC-SHA256): `<EMAIL:5d41402abc4b2a76>`. Equal values give
    /// equal tokens, so joins and distinct counts still work.
    Hash,
    /// Remove the attribute that holds the value (a span name or other column that cannot be
    /// removed is masked instead).
    Drop,
    /// For a key rule: keep the value as it is, without running detectors. For a detector:
    /// turn it off.
    Allow,
}

/// A deployment's own pattern, e.g. employee or contract numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// The kind named in placeholders and summaries (`EMPLOYEE_ID` gives `<EMPLOYEE_ID>`).
    pub name: String,
    /// A regular expression (Rust `regex` syntax); the whole match is redacted.
    pub pattern: String,
    /// Default: mask.
    #[serde(default = "default_mask")]
    pub action: Action,
}

/// A rule by attribute key: the value of every attribute whose key matches is redacted (or
/// kept) as a whole, whatever it contains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRule {
    /// A glob over attribute keys, case-insensitive: `*password*`, `http.request.header.*`.
    /// Keys inside JSON values (key-value lists, tool arguments) are matched by their own name.
    pub pattern: String,
    /// `allow` keeps the value untouched (no detectors); the others act on the whole value.
    pub action: Action,
    /// The kind named in placeholders and summaries. Default: `REDACTED`.
    #[serde(default)]
    pub kind: Option<String>,
}

fn default_mask() -> Action {
    Action::Mask
}

/// The `[redaction]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// The HMAC key for keyed hashes. When unset: the environment variable named by
    /// `hmac_key_env`, else `<data-dir>/hmac.key`, generated (mode 0600) on first use. Keep it
    /// secret and stable: a new key gives new tokens, so old and new data no longer join.
    pub hmac_key: Option<String>,
    /// Default: `RUNLEDGER_HMAC_KEY`.
    pub hmac_key_env: String,
    /// Actions per built-in detector, overriding the defaults, e.g. `ipv4 = "hash"`.
    pub actions: BTreeMap<String, Action>,
    /// Custom regex rules, `[[redaction.rules]]`.
    pub rules: Vec<CustomRule>,
    /// Key rules, `[[redaction.keys]]`, tried in order before the default key rules.
    pub keys: Vec<KeyRule>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            hmac_key: None,
            hmac_key_env: "RUNLEDGER_HMAC_KEY".to_string(),
            actions: BTreeMap::new(),
            rules: Vec::new(),
            keys: Vec::new(),
        }
    }
}

/// Key patterns whose values are secrets whatever they look like: masked by default.
pub const DEFAULT_SECRET_KEYS: &[&str] = &[
    "*password*",
    "*passwd*",
    "*passphrase*",
    "*secret*",
    "*api_key*",
    "*api-key*",
    "*apikey*",
    "*access_key*",
    "*private_key*",
    "*authorization*",
    "*cookie*",
    "*access_token*",
    "*refresh_token*",
    "*id_token*",
    "*auth_token*",
    "*session_token*",
    "*credential*",
];

impl RedactionConfig {
    /// Checks what serde cannot: detector names, that every regex and glob compiles.
    pub fn validate(&self) -> Result<(), String> {
        for name in self.actions.keys() {
            if !BUILTINS.iter().any(|b| b.name == name) {
                let known: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
                return Err(format!(
                    "redaction.actions: unknown detector `{name}` (known: {})",
                    known.join(", ")
                ));
            }
        }
        for rule in &self.rules {
            regex::Regex::new(&rule.pattern)
                .map_err(|e| format!("redaction.rules `{}`: bad pattern: {e}", rule.name))?;
            if rule.action == Action::Allow {
                return Err(format!(
                    "redaction.rules `{}`: action must be mask, hash or drop",
                    rule.name
                ));
            }
        }
        for rule in &self.keys {
            globset::Glob::new(&rule.pattern)
                .map_err(|e| format!("redaction.keys: bad pattern `{}`: {e}", rule.pattern))?;
        }
        Ok(())
    }

    /// The HMAC key: from the config, else the environment, else `<data-dir>/hmac.key`
    /// (created with 32 random bytes, mode 0600, when it does not exist).
    pub fn resolve_hmac_key(&self, data_dir: &Path) -> std::io::Result<Vec<u8>> {
        if let Some(key) = self.hmac_key.as_ref().filter(|k| !k.is_empty()) {
            return Ok(key.as_bytes().to_vec());
        }
        if let Ok(key) = std::env::var(&self.hmac_key_env) {
            if !key.is_empty() {
                return Ok(key.into_bytes());
            }
        }
        let path = data_dir.join("hmac.key");
        match std::fs::read_to_string(&path) {
            Ok(key) if !key.trim().is_empty() => return Ok(key.trim().as_bytes().to_vec()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(data_dir)?;
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        let key = hex::encode(bytes);
        match write_private_once(&path, key.as_bytes()) {
            Ok(()) => Ok(key.into_bytes()),
            // Another process (an `erase` next to `serve`) created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
            }
            Err(e) => Err(e),
        }
    }
}

/// Creates a file readable by its owner only, complete or not at all (written aside, then
/// hard-linked into place, which fails if the file exists), so that neither a crash nor a
/// second process can leave or swap in another key that would silently change every token.
fn write_private_once(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}
