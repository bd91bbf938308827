//! Bearer tokens and roles. Tokens are kept as SHA-256 digests and compared in constant time,
//! against every configured token, so that neither the comparison nor the search leaks how
//! much of a guess was right.

use std::path::{Path, PathBuf};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Role, TokenConfig};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Their role.
    pub role: Role,
    /// The token's configured name, else its role: what the audit log records.
    pub name: String,
}

/// The configured tokens, as digests.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// From `[[api.tokens]]` (already validated).
    pub fn from_config(tokens: &[TokenConfig]) -> Self {
        let entries = tokens
            .iter()
            .filter_map(|t| {
                let hash = match (&t.token, &t.token_sha256) {
                    (Some(token), _) => digest(token),
                    (None, Some(hex_digest)) => hex::decode(hex_digest).ok()?.try_into().ok()?,
                    (None, None) => return None,
                };
                let name = t.name.clone().unwrap_or_else(|| t.role.to_string());
                Some((hash, Principal { role: t.role, name }))
            })
            .collect();
        Self { entries }
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a presented token belongs to.
    pub fn principal(&self, presented: &str) -> Option<Principal> {
        let presented = digest(presented);
        let mut found = None;
        for (hash, principal) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// The bearer token of a request: `Authorization: Bearer T`, else `?token=T` (how the
/// dashboard's login links and Grafana's JSON data sources pass it).
pub fn presented_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") {
            return Some(value[7..].trim());
        }
    }
    query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v)
    })
}

/// Where `serve` keeps the admin token it generates when none is configured.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Reads `<data-dir>/admin.token`, or creates it (mode 0600) with a new random token.
pub fn load_or_create_admin_token(data_dir: &Path) -> std::io::Result<String> {
    let path = admin_token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(token) if token.trim().len() >= 16 => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let bytes: [u8; 24] = rand::random();
    let token = format!("rl_{}", hex::encode(bytes));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write as _;
    let mut file = options.open(&path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}
