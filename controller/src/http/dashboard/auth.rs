//! The operator token that guards the dashboard's controls: kept only as its
//! SHA-256 digest, compared in constant time, read from the request's
//! `Authorization: Bearer` header.

use std::path::Path;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// The operator token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// `None` for an empty secret (surrounding whitespace does not count).
    pub fn new(secret: &str) -> Option<Token> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Token(Sha256::digest(secret.as_bytes()).into()))
    }

    /// Compares digests without an early exit: the time taken does not
    /// depend on how much of the token was right.
    pub fn matches(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self.0.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// The token from `--token-file` (first), else `CANARY_TOKEN`; `None`
    /// when neither is set. Never prints the token.
    pub fn load(file: Option<&Path>, env: Option<String>) -> anyhow::Result<Option<Token>> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        eprintln!(
                            "warning: the token file {} is readable by other users (chmod 600 it)",
                            path.display()
                        );
                    }
                }
            }
            return Token::new(&text)
                .map(Some)
                .ok_or_else(|| anyhow::anyhow!("the token file {} is empty", path.display()));
        }
        match env {
            Some(v) => Token::new(&v).map(Some).ok_or_else(|| anyhow::anyhow!("CANARY_TOKEN is set but empty")),
            None => Ok(None),
        }
    }
}

/// What the page is told about the controls.
pub(super) const CONTROLS_DISABLED: &str =
    "controls are disabled: no operator token is configured. Start `canary run` with \
     --token-file PATH (a file holding the token) or the environment variable CANARY_TOKEN to enable them; \
     the CLI (canary pause|resume|advance|rollback) works either way";

/// The bearer token of a request, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
