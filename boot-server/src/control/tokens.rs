//! API tokens: create (the secret is shown once and stored as a digest),
//! list and revoke. The bootstrap admin token (`admin.token`) is not one of
//! them: it is the configuration's, and cannot be revoked here.

use super::{Control, Error, Result};
use crate::model::{now_ms, ApiToken, EventKind, TokenRole};
use serde_json::json;

/// Longest token or environment name accepted.
const MAX_NAME: usize = 64;

/// A token just created: its record and its secret (shown this once).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The token as listed.
    #[serde(flatten)]
    pub token: ApiToken,
    /// The secret to send as `Authorization: Bearer <secret>`; not kept by
    /// the server (only its SHA-256), so it cannot be shown again.
    pub secret: String,
}

pub(super) fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "{what} {name:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Control {
    /// Creates a token; `created_by` names the caller (for the record).
    pub async fn create_token(
        &self,
        name: &str,
        role: TokenRole,
        environments: Vec<String>,
        created_by: &str,
    ) -> Result<NewToken> {
        check_name("token name", name)?;
        if name == crate::http::auth::BOOTSTRAP_NAME || name == crate::http::auth::SOCKET_NAME {
            return Err(Error::bad_request(format!(
                "token name {name:?} is reserved (it names the bootstrap admin token or the admin socket in the audit log)"
            )));
        }
        match (role, environments.is_empty()) {
            (TokenRole::Operator, true) => {
                return Err(Error::bad_request(
                    "an operator token needs the environments it may operate (\"environments\": [\"web\"])",
                ))
            }
            (TokenRole::Admin | TokenRole::ReadOnly, false) => {
                return Err(Error::bad_request(format!(
                    "a {} token is not limited to environments; give environments only to an operator token",
                    role.as_str()
                )))
            }
            _ => {}
        }
        for e in &environments {
            check_name("environment", e)?;
        }
        let mut environments = environments;
        environments.sort();
        environments.dedup();
        let secret = crate::secret::random_token(24);
        let token = ApiToken {
            name: name.to_string(),
            role,
            environments,
            created_ms: now_ms(),
            created_by: created_by.to_string(),
            fingerprint: crate::secret::fingerprint(&secret),
        };
        self.store
            .put_token(&token, &crate::secret::digest(&secret))
            .await?;
        self.events.emit(
            None,
            EventKind::TokenChanged,
            json!({ "created": token.name, "role": token.role, "environments": token.environments,
                    "fingerprint": token.fingerprint, "by": created_by }),
        );
        Ok(NewToken { token, secret })
    }

    /// Every token (without secrets).
    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        Ok(self.store.tokens().await?)
    }

    /// The token whose secret is `secret`, if any.
    pub async fn token_by_secret(&self, secret: &str) -> Result<Option<ApiToken>> {
        Ok(self
            .store
            .token_by_digest(&crate::secret::digest(secret))
            .await?)
    }

    /// Revokes a token: requests carrying it get 401 from now on.
    pub async fn revoke_token(&self, name: &str, by: &str) -> Result<()> {
        if !self.store.revoke_token(name).await? {
            return Err(Error::not_found(format!(
                "no token {name:?} (see `token list`)"
            )));
        }
        self.events.emit(
            None,
            EventKind::TokenChanged,
            json!({ "revoked": name, "by": by }),
        );
        Ok(())
    }
}
