//! The boot-image table, the default image and assignments (tables
//! `images`, `settings`, `assignments`).

use super::SqliteStore;
use crate::model::{BootImage, Selector};
use crate::store::{ImageStore, Refused, Result};
use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

fn image_exists(c: &Connection, name: &str) -> Result<()> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM images WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    if n == 0 {
        return Err(Refused::NotFound(format!("no image named {name}")).into());
    }
    Ok(())
}

#[async_trait]
impl ImageStore for SqliteStore {
    async fn put_image(&self, image: &BootImage) -> Result<()> {
        let body = serde_json::to_string(image)?;
        let name = image.name.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO images(name, body) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                params![name, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn image(&self, name: &str) -> Result<Option<BootImage>> {
        let name = name.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM images WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            body.map(|b| serde_json::from_str(&b).context("stored image"))
                .transpose()
        })
        .await
    }

    async fn images(&self) -> Result<Vec<BootImage>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body FROM images ORDER BY name")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|b| Ok(serde_json::from_str(&b?)?)).collect()
        })
        .await
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            let used: i64 = c.query_row(
                "SELECT COUNT(*) FROM assignments WHERE image = ?1",
                params![name],
                |r| r.get(0),
            )?;
            let default: Option<String> = c
                .query_row(
                    "SELECT value FROM settings WHERE key = 'default_image'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let is_default = default.as_deref() == Some(name.as_str());
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
            if c.execute("DELETE FROM images WHERE name = ?1", params![name])? == 0 {
                return Err(Refused::NotFound(format!("no image named {name}")).into());
            }
            Ok(())
        })
        .await
    }

    async fn set_default_image(&self, image: Option<&str>) -> Result<()> {
        let image = image.map(str::to_string);
        self.write(move |c| {
            match image {
                Some(i) => {
                    image_exists(c, &i)?;
                    c.execute(
                        "INSERT INTO settings(key, value) VALUES ('default_image', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        params![i],
                    )?
                }
                None => c.execute("DELETE FROM settings WHERE key = 'default_image'", [])?,
            };
            Ok(())
        })
        .await
    }

    async fn default_image(&self) -> Result<Option<String>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT value FROM settings WHERE key = 'default_image'",
                [],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn assign(&self, selector: &Selector, image: Option<&str>) -> Result<()> {
        let key = selector.key();
        let image = image.map(str::to_string);
        self.write(move |c| {
            match image {
                Some(i) => {
                    image_exists(c, &i)?;
                    c.execute(
                        "INSERT INTO assignments(selector, image) VALUES (?1, ?2) ON CONFLICT(selector) DO UPDATE SET image = excluded.image",
                        params![key, i],
                    )?
                }
                None => c.execute("DELETE FROM assignments WHERE selector = ?1", params![key])?,
            };
            Ok(())
        })
        .await
    }

    async fn assignment(&self, selector: &Selector) -> Result<Option<String>> {
        let key = selector.key();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT image FROM assignments WHERE selector = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn assignments(&self) -> Result<Vec<(Selector, String)>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT selector, image FROM assignments ORDER BY selector")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (key, image) = row?;
                if let Some(sel) = Selector::from_key(&key) {
                    out.push((sel, image));
                }
            }
            Ok(out)
        })
        .await
    }
}
