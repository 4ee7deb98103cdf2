//! API tokens (table `api_tokens`): the token as JSON, keyed by name, with
//! the SHA-256 of its secret (never the secret).

use super::SqliteStore;
use crate::model::ApiToken;
use crate::store::{Refused, Result, TokenStore};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl TokenStore for SqliteStore {
    async fn put_token(&self, token: &ApiToken, digest: &str) -> Result<()> {
        let body = serde_json::to_string(token).context("encoding a token")?;
        let (name, role, digest) = (token.name.clone(), token.role.as_str(), digest.to_string());
        self.write(move |c| {
            let taken: bool = c.query_row(
                "SELECT COUNT(*) > 0 FROM api_tokens WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            if taken {
                return Err(Refused::Conflict(format!(
                    "a token named {name:?} exists; revoke it first or pick another name"
                ))
                .into());
            }
            c.execute(
                "INSERT INTO api_tokens(name, digest, role, body) VALUES (?1, ?2, ?3, ?4)",
                params![name, digest, role, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body FROM api_tokens ORDER BY name")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(serde_json::from_str(&row?).context("stored token")?);
            }
            Ok(out)
        })
        .await
    }

    async fn token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>> {
        let digest = digest.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM api_tokens WHERE digest = ?1",
                    params![digest],
                    |r| r.get(0),
                )
                .optional()?;
            body.map(|b| serde_json::from_str(&b).context("stored token"))
                .transpose()
        })
        .await
    }

    async fn revoke_token(&self, name: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM api_tokens WHERE name = ?1",
                vec![name.to_string().into()],
            )
            .await?
            > 0)
    }
}
