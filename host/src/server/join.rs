//! Join tokens: what lets a page the host did not launch lend its tab to the pool.
//!
//! A token is `tpj_<id>_<secret>`. The host keeps only the secret's SHA-256 beside the id, its
//! expiry, how many tabs may use it at once and the models whose weights it may receive, in one
//! JSON file private to its owner (`$TABPOOL_JOIN_TOKENS`, else
//! `~/.local/share/tabpool/join_tokens.json`). `tabpool token create|list|revoke` edit the file;
//! a running `serve --join` reads it at every join, so a revocation takes effect at the next
//! join without a restart.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A token as the file keeps it: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinToken {
    pub id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    pub created_unix: u64,
    /// None: never expires.
    pub expires_unix: Option<u64>,
    /// Tabs that may be joined with it at once.
    pub max_tabs: usize,
    /// Models (pool names) whose weights a tab joined with it may receive.
    pub models: Vec<String>,
    pub revoked: bool,
}

/// What a good token grants a joining tab.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub token_id: String,
    pub max_tabs: usize,
    pub models: Vec<String>,
}

/// Why a join token was refused; the text is the socket's close reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed join token: expected tpj_<id>_<secret> as `tabpool token create` prints it")]
    Malformed,
    #[error("unknown join token {0}")]
    Unknown(String),
    #[error("wrong secret for join token {0}")]
    BadSecret(String),
    #[error("join token {0} expired {1} s ago")]
    Expired(String, u64),
    #[error("join token {0} was revoked")]
    Revoked(String),
    #[error("join token {0} already has its {1} tab(s) joined")]
    Full(String, usize),
    #[error("join tokens could not be read: {0}")]
    Unreadable(String),
}

const PREFIX: &str = "tpj_";

/// The file of tokens.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub path: PathBuf,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `tpj_<id>_<secret>` → (id, secret), both non-empty lowercase hex.
fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id) && hex(secret)).then_some((id, secret))
}

/// Judge `token` against the kept tokens at `now`, with `joined` tabs already using its id.
/// Pure, for the unit tests; [`TokenFile::check`] reads the file and calls it.
pub fn judge(tokens: &[JoinToken], token: &str, now: u64, joined: impl Fn(&str) -> usize) -> Result<Grant, Refusal> {
    let (id, secret) = split(token).ok_or(Refusal::Malformed)?;
    let t = tokens.iter().find(|t| t.id == id).ok_or_else(|| Refusal::Unknown(id.into()))?;
    if !crate::secret::same(&sha256_hex(secret), &t.secret_sha256) {
        return Err(Refusal::BadSecret(id.into()));
    }
    if t.revoked {
        return Err(Refusal::Revoked(id.into()));
    }
    if let Some(exp) = t.expires_unix
        && now >= exp
    {
        return Err(Refusal::Expired(id.into(), now - exp));
    }
    if joined(id) >= t.max_tabs {
        return Err(Refusal::Full(id.into(), t.max_tabs));
    }
    Ok(Grant { token_id: t.id.clone(), max_tabs: t.max_tabs, models: t.models.clone() })
}

impl TokenFile {
    /// `$TABPOOL_JOIN_TOKENS`, else `<data dir>/tabpool/join_tokens.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("TABPOOL_JOIN_TOKENS") {
            return PathBuf::from(p);
        }
        dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("tabpool").join("join_tokens.json")
    }

    pub fn at(path: impl Into<PathBuf>) -> TokenFile {
        TokenFile { path: path.into() }
    }

    /// Every token kept (none when the file does not exist yet).
    pub fn list(&self) -> anyhow::Result<Vec<JoinToken>> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    fn write(&self, tokens: &[JoinToken]) -> anyhow::Result<()> {
        crate::paths::write_private_atomically(&self.path, &serde_json::to_vec_pretty(tokens)?)
    }

    /// A new token; returns it as kept and the whole token string (shown once, never stored).
    pub fn create(
        &self,
        ttl: Option<std::time::Duration>,
        max_tabs: usize,
        models: Vec<String>,
    ) -> anyhow::Result<(JoinToken, String)> {
        anyhow::ensure!(max_tabs >= 1, "--max-tabs must be at least 1");
        anyhow::ensure!(!models.is_empty(), "a join token names the models a lent tab may receive (--models)");
        let mut tokens = self.list()?;
        let id = loop {
            let id = format!("{:08x}", rand::random::<u32>());
            if !tokens.iter().any(|t| t.id == id) {
                break id;
            }
        };
        let secret = format!("{:032x}", rand::random::<u128>());
        let now = now_unix();
        let t = JoinToken {
            id: id.clone(),
            secret_sha256: sha256_hex(&secret),
            created_unix: now,
            expires_unix: ttl.map(|d| now + d.as_secs().max(1)),
            max_tabs,
            models,
            revoked: false,
        };
        tokens.push(t.clone());
        self.write(&tokens)?;
        Ok((t, format!("{PREFIX}{id}_{secret}")))
    }

    /// Revoke token `id` (or the token whose string is given); false if there is none.
    pub fn revoke(&self, id_or_token: &str) -> anyhow::Result<bool> {
        let id = split(id_or_token).map_or(id_or_token, |(id, _)| id);
        let mut tokens = self.list()?;
        let Some(t) = tokens.iter_mut().find(|t| t.id == id) else { return Ok(false) };
        t.revoked = true;
        self.write(&tokens)?;
        Ok(true)
    }

    /// Judge a token now (see [`judge`]).
    pub fn check(&self, token: &str, joined: impl Fn(&str) -> usize) -> Result<Grant, Refusal> {
        // A malformed token is refused before the file is read.
        split(token).ok_or(Refusal::Malformed)?;
        let tokens = self.list().map_err(|e| Refusal::Unreadable(format!("{e:#}")))?;
        judge(&tokens, token, now_unix(), joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_judged_by_secret_expiry_revocation_and_tabs() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::at(dir.path().join("t.json"));
        let (kept, token) = file.create(Some(std::time::Duration::from_secs(3600)), 2, vec!["m".into()]).unwrap();
        assert!(!std::fs::read_to_string(&file.path).unwrap().contains(&token[13..]), "the secret is not stored");
        let tokens = file.list().unwrap();
        let now = kept.created_unix;
        let g = judge(&tokens, &token, now, |_| 0).unwrap();
        assert_eq!((g.token_id.as_str(), g.max_tabs, g.models.clone()), (kept.id.as_str(), 2, vec!["m".to_string()]));
        assert_eq!(judge(&tokens, &token, now, |_| 2), Err(Refusal::Full(kept.id.clone(), 2)));
        assert_eq!(judge(&tokens, &token, now + 3600, |_| 0), Err(Refusal::Expired(kept.id.clone(), 0)));
        let wrong = format!("tpj_{}_{}", kept.id, "0".repeat(32));
        assert_eq!(judge(&tokens, &wrong, now, |_| 0), Err(Refusal::BadSecret(kept.id.clone())));
        for bad in ["", "tpj_", "tpj_abc", "tpj__00", "xyz_ab_cd", "tpj_zz_00", "tpj_ab_cd_ef"] {
            assert_eq!(judge(&tokens, bad, now, |_| 0), Err(Refusal::Malformed), "{bad:?}");
        }
        assert_eq!(judge(&tokens, "tpj_0_0", now, |_| 0), Err(Refusal::Unknown("0".into())));
        assert!(file.revoke(&kept.id).unwrap());
        assert_eq!(file.check(&token, |_| 0), Err(Refusal::Revoked(kept.id.clone())));
        assert!(!file.revoke("ffffffff").unwrap());
        assert!(file.create(None, 0, vec!["m".into()]).is_err());
        assert!(file.create(None, 1, vec![]).is_err());
    }
}
