//! API tokens: a name, a role, and for operators the environments they may
//! operate. The secret itself is never kept: the store holds its SHA-256
//! ([`crate::secret::digest`]), the event log its name.

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenRole {
    /// Everything.
    Admin,
    /// Every read; no change.
    ReadOnly,
    /// Every read, and the operations of the environments it names (change,
    /// activate, deactivate, scale, add/remove/quarantine a node, policy).
    Operator,
}

impl TokenRole {
    /// The kebab-case name (the same string serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::ReadOnly => "read-only",
            TokenRole::Operator => "operator",
        }
    }

    /// Parses [`TokenRole::as_str`]'s names.
    pub fn parse(s: &str) -> Option<TokenRole> {
        [TokenRole::Admin, TokenRole::ReadOnly, TokenRole::Operator]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// An API token as listed (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiToken {
    /// Unique name (what the audit log records).
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
    /// For operators: the environments it may operate.
    #[serde(default)]
    pub environments: Vec<String>,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// Name of the token (or `admin-socket`) that created it.
    #[serde(default)]
    pub created_by: String,
    /// Short fingerprint of the secret (first 8 hex digits of its SHA-256),
    /// to recognise a token without showing it.
    #[serde(default)]
    pub fingerprint: String,
}
