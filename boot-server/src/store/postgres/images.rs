//! The boot-image table, the default image and assignments (tables
//! `images`, `settings`, `assignments`).

use super::PgStore;
use crate::model::{BootImage, Selector};
use crate::store::{ImageStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::GenericClient;

async fn image_exists(c: &impl GenericClient, name: &str) -> Result<()> {
    // FOR SHARE: the image cannot be removed before the referring row commits.
    if c.query_opt("SELECT 1 FROM images WHERE name = $1 FOR SHARE", &[&name])
        .await?
        .is_none()
    {
        return Err(Refused::NotFound(format!("no image named {name}")).into());
    }
    Ok(())
}

#[async_trait]
impl ImageStore for PgStore {
    async fn put_image(&self, image: &BootImage) -> Result<()> {
        let body = serde_json::to_string(image)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO images(name, body) VALUES ($1, $2) ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                &[&image.name, &body],
            )
            .await?;
        Ok(())
    }

    async fn image(&self, name: &str) -> Result<Option<BootImage>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT body FROM images WHERE name = $1", &[&name])
            .await?;
        row.map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored image"))
            .transpose()
    }

    async fn images(&self) -> Result<Vec<BootImage>> {
        let rows = self
            .client()
            .await?
            .query("SELECT body FROM images ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("stored image"))
            .collect()
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Lock the row first: an assignment naming it waits for this decision.
        if tx
            .query_opt("SELECT 1 FROM images WHERE name = $1 FOR UPDATE", &[&name])
            .await?
            .is_none()
        {
            return Err(Refused::NotFound(format!("no image named {name}")).into());
        }
        let used: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM assignments WHERE image = $1",
                &[&name],
            )
            .await?
            .get(0);
        let default: Option<String> = tx
            .query_opt(
                "SELECT value FROM settings WHERE key = 'default_image'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        let is_default = default.as_deref() == Some(name);
        if used > 0 || is_default {
            return Err(Refused::Conflict(format!(
                "image {name} is still in use ({used} assignment(s){}); unassign it first",
                if is_default {
                    ", and it is the default"
                } else {
                    ""
                }
            ))
            .into());
        }
        tx.execute("DELETE FROM images WHERE name = $1", &[&name])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_default_image(&self, image: Option<&str>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        match image {
            Some(i) => {
                image_exists(&tx, i).await?;
                tx.execute(
                    "INSERT INTO settings(key, value) VALUES ('default_image', $1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    &[&i],
                )
                .await?
            }
            None => {
                tx.execute("DELETE FROM settings WHERE key = 'default_image'", &[])
                    .await?
            }
        };
        tx.commit().await?;
        Ok(())
    }

    async fn default_image(&self) -> Result<Option<String>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT value FROM settings WHERE key = 'default_image'",
                &[],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn assign(&self, selector: &Selector, image: Option<&str>) -> Result<()> {
        let key = selector.key();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        match image {
            Some(i) => {
                image_exists(&tx, i).await?;
                tx.execute(
                    "INSERT INTO assignments(selector, image) VALUES ($1, $2) ON CONFLICT(selector) DO UPDATE SET image = excluded.image",
                    &[&key, &i],
                )
                .await?
            }
            None => {
                tx.execute("DELETE FROM assignments WHERE selector = $1", &[&key])
                    .await?
            }
        };
        tx.commit().await?;
        Ok(())
    }

    async fn assignment(&self, selector: &Selector) -> Result<Option<String>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT image FROM assignments WHERE selector = $1",
                &[&selector.key()],
            )
            .await?
            .map(|r| r.get(0)))
    }

    async fn assignments(&self) -> Result<Vec<(Selector, String)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT selector, image FROM assignments ORDER BY selector",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((Selector::from_key(r.get(0))?, r.get(1))))
            .collect())
    }
}
