//! Image operations: the boot-image table (add from a manifest, uploaded
//! files, import, remove) and the default image.

use super::{Control, Error, Result};
use crate::images::{find_manifests, parse_manifest};
use crate::model::{BootImage, EventKind};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Where uploaded image files live, under the images directory.
pub const UPLOAD_DIR: &str = "uploaded";

impl Control {
    /// Adds or updates an image from manifest text whose file paths are
    /// relative to the images directory; sizes and digests are computed here.
    pub async fn add_image(&self, manifest: String) -> Result<BootImage> {
        let dir = self.config.images_dir.clone();
        let image = tokio::task::spawn_blocking(move || parse_manifest(&manifest, &dir))
            .await
            .map_err(|e| Error::new(super::ErrorKind::Internal, e.to_string()))?
            .map_err(|e| Error::bad_request(format!("{e:#}")))?;
        self.store_image(&image).await?;
        Ok(image)
    }

    /// Adds an image from a manifest file on the server (absolute, or
    /// relative to the images directory).
    pub async fn add_image_from_server_path(&self, path: &str) -> Result<BootImage> {
        let p = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.config.images_dir.join(path)
        };
        let text = tokio::fs::read_to_string(&p).await.map_err(|e| {
            Error::bad_request(format!("reading {} on the server: {e}", p.display()))
        })?;
        self.add_image(text).await
    }

    /// Imports every `images/*/image.toml`; manifests whose files are missing
    /// are skipped with a warning. Returns the names imported.
    pub async fn import_images(&self) -> Result<Vec<String>> {
        let dir = self.config.images_dir.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for m in find_manifests(&dir)? {
                match crate::images::load_manifest(&m, &dir) {
                    Ok(i) => out.push(i),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "skipping image"),
                }
            }
            anyhow::Ok(out)
        })
        .await
        .map_err(|e| Error::new(super::ErrorKind::Internal, e.to_string()))??;
        let mut names = Vec::new();
        for image in found {
            // Unchanged images are not written again: start-up needs no write.
            if self.store.image(&image.name).await?.as_ref() != Some(&image) {
                self.store_image(&image).await?;
            }
            names.push(image.name);
        }
        self.refresh_image_files().await?;
        Ok(names)
    }

    pub(super) async fn store_image(&self, image: &BootImage) -> Result<()> {
        self.store.put_image(image).await?;
        self.events.emit(
            None,
            EventKind::ImageAdded,
            json!({ "image": image.name, "version": image.version, "bytes": image.size_bytes, "sha256": image.checksum }),
        );
        self.refresh_image_files().await
    }

    /// Reloads the digests the file server checks against.
    pub async fn refresh_image_files(&self) -> Result<()> {
        let images = self.store.images().await?;
        self.image_files.set_images(&images);
        Ok(())
    }

    /// Removes an image (refused while assigned or the default).
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        self.store.remove_image(name).await?;
        self.events
            .emit(None, EventKind::ImageRemoved, json!({ "image": name }));
        self.refresh_image_files().await
    }

    /// Sets or clears the default image.
    pub async fn set_default_image(&self, image: Option<String>) -> Result<()> {
        self.store.set_default_image(image.as_deref()).await?;
        self.events
            .emit(None, EventKind::DefaultImage, json!({ "image": image }));
        Ok(())
    }

    /// Where an uploaded file of image `name` is stored: `uploaded/<name>/<file>`
    /// under the images directory (its manifest path), refusing odd names.
    pub fn upload_path(&self, name: &str, file: &str) -> Result<(String, PathBuf)> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok(name) || !ok(file) {
            return Err(Error::bad_request(
                "image and file names: 1-128 letters, digits, '-', '_' or '.', not starting with '.'",
            ));
        }
        let rel = format!("{UPLOAD_DIR}/{name}/{file}");
        Ok((rel.clone(), self.config.images_dir.join(rel)))
    }
}
