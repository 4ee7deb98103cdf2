//! API tokens (table `api_tokens`): the token as JSON, keyed by name, with
//! the SHA-256 of its secret (never the secret); the database keeps names
//! and digests unique.

use super::{unique_violation, PgStore};
use crate::model::ApiToken;
use crate::store::{Refused, Result, TokenStore};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

#[async_trait]
impl TokenStore for PgStore {
    async fn put_token(&self, token: &ApiToken, digest: &str) -> Result<()> {
        let body = serde_json::to_string(token).context("encoding a token")?;
        let put = self
            .client()
            .await?
            .execute(
                "INSERT INTO api_tokens(name, digest, role, body) VALUES ($1, $2, $3, $4)",
                &[&token.name, &digest, &token.role.as_str(), &body],
            )
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = anyhow::Error::from(e);
                if unique_violation(&e).is_some() {
                    return Err(Refused::Conflict(format!(
                        "a token named {:?} exists; revoke it first or pick another name",
                        token.name
                    ))
                    .into());
                }
                Err(e)
            }
        }
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = self
            .client()
            .await?
            .query("SELECT body FROM api_tokens ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored token"))
            .collect()
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM api_tokens WHERE digest = $1", &[&digest])
            .await?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored token"))
            .transpose()
    }

    async fn revoke_token(&self, name: &str) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute("DELETE FROM api_tokens WHERE name = $1", &[&name])
            .await?
            > 0)
    }
}
