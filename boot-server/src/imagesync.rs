//! Image files across servers on one shared store. The image table records
//! every file's SHA-256; a server whose images directory lacks a file (absent,
//! or its content differs from the recorded digest) pulls it by digest
//! (`GET /files/sha256/<hex>`, [`crate::http`]) from the controller, else
//! from any other server that is up, verifies size and SHA-256 while it
//! streams, and moves it into place atomically (temporary file, fsync,
//! rename): only then does it serve the file. So a node boots from any
//! server whichever one the image was added on.
//!
//! Owns: the sync loop ([`ImageSync::run`], a round every [`SYNC_EVERY`]),
//! the choice of sources (the server registry's `url=` entries) and the
//! verified download ([`pull`]).

use crate::control::Control;
use crate::images::Integrity;
use crate::model::{BootImage, ImageFile, ServerRole, SERVER_DOWN_AFTER_MS};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How often a server compares its files with the image table.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// The registry entry (in a server's `listen` list) that gives its base URL.
pub const URL_PREFIX: &str = "url=";

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Files pulled and now served (paths relative to the images directory).
    pub pulled: Vec<String>,
    /// Files still missing: no source had an intact copy.
    pub missing: Vec<String>,
    /// Copies refused because their size or SHA-256 differed from the table's.
    pub refused: usize,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The source sent other bytes than the table records: refused.
    #[error("{0}")]
    Mismatch(String),
    /// The source could not be reached or did not have the file.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Keeps this server's images directory in step with the image table.
pub struct ImageSync {
    control: Arc<Control>,
    name: String,
    client: reqwest::Client,
    seen: Option<Vec<BootImage>>,
}

impl ImageSync {
    /// A sync for the server registered as `name` (it never pulls from itself).
    pub fn new(control: Arc<Control>, name: &str) -> Result<ImageSync> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .build()
            .context("building the image sync's HTTP client")?;
        Ok(ImageSync {
            control,
            name: name.to_string(),
            client,
            seen: None,
        })
    }

    /// Runs a round every [`SYNC_EVERY`] for ever; a failing round is logged.
    pub async fn run(mut self) -> Result<()> {
        let mut last_err = String::new();
        loop {
            match self.round().await {
                Ok(r) => {
                    last_err.clear();
                    if !r.missing.is_empty() {
                        tracing::debug!(missing = ?r.missing, "image files not yet pulled");
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if msg != last_err {
                        tracing::warn!(error = %msg, "image sync round failed");
                        last_err = msg;
                    }
                }
            }
            tokio::time::sleep(SYNC_EVERY).await;
        }
    }

    /// One comparison of the images directory with the table: pulls what is
    /// missing or differs.
    pub async fn round(&mut self) -> Result<Round> {
        let c = &self.control;
        let images = c.store.images().await.context("reading the image table")?;
        // Another server's `image add` reaches this one's file server here.
        if self.seen.as_ref() != Some(&images) {
            c.image_files.set_images(&images);
            self.seen = Some(images.clone());
        }
        let mut round = Round::default();
        let mut wanted: Vec<ImageFile> = Vec::new();
        for f in images.iter().flat_map(|i| i.files.iter()) {
            if wanted.iter().any(|w| w.path == f.path) {
                continue;
            }
            let (files, rel) = (c.image_files.clone(), f.path.clone());
            let state = tokio::task::spawn_blocking(move || files.check(&rel))
                .await
                .context("checking an image file")?;
            if state != Integrity::Intact {
                wanted.push(f.clone());
            }
        }
        if wanted.is_empty() {
            return Ok(round);
        }
        let sources = self.sources().await?;
        for f in wanted {
            let mut done = false;
            for base in &sources {
                match pull(&self.client, base, &c.config.images_dir, &f).await {
                    Ok(()) => {
                        tracing::info!(path = %f.path, sha256 = %&f.sha256[..12.min(f.sha256.len())], from = %base, "image file pulled and verified");
                        done = true;
                        break;
                    }
                    Err(PullError::Mismatch(why)) => {
                        tracing::warn!(path = %f.path, from = %base, reason = %why, "image file refused");
                        round.refused += 1;
                    }
                    Err(PullError::Other(e)) => {
                        tracing::debug!(path = %f.path, from = %base, error = %format!("{e:#}"), "image file not pulled");
                    }
                }
            }
            if done {
                round.pulled.push(f.path);
            } else {
                round.missing.push(f.path);
            }
        }
        Ok(round)
    }

    /// Base URLs of the other servers that are up: the controller first.
    async fn sources(&self) -> Result<Vec<String>> {
        let mut servers = self.control.store.servers().await?;
        servers.retain(|s| s.info.name != self.name && s.age_ms < SERVER_DOWN_AFTER_MS);
        servers.sort_by_key(|s| s.info.role != ServerRole::Controller);
        Ok(servers
            .iter()
            .filter_map(|s| {
                s.info
                    .listen
                    .iter()
                    .find_map(|l| l.strip_prefix(URL_PREFIX))
                    .map(|u| u.trim_end_matches('/').to_string())
            })
            .collect())
    }
}

/// Downloads `file` by its digest from the server at `base` into
/// `images_dir`, refusing it unless its size and SHA-256 are the table's;
/// the file appears under its path only once complete and verified.
pub async fn pull(
    client: &reqwest::Client,
    base: &str,
    images_dir: &Path,
    file: &ImageFile,
) -> std::result::Result<(), PullError> {
    if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PullError::Other(anyhow::anyhow!(
            "{}: the table's SHA-256 {:?} is not 64 hex digits",
            file.path,
            file.sha256
        )));
    }
    let dest = destination(images_dir, &file.path)?;
    let dir = dest.parent().context("image file path has no directory")?;
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let url = format!("{base}/files/sha256/{}", file.sha256);
    let mut resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        return Err(anyhow::anyhow!("GET {url}: {}", resp.status()).into());
    }
    let tmp = dir.join(format!(
        ".{}.sync-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        crate::secret::random_token(6)
    ));
    let result = async {
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            total += chunk.len() as u64;
            if total > file.size {
                return Err(PullError::Mismatch(format!(
                    "more than the recorded {} bytes",
                    file.size
                )));
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        if total != file.size {
            return Err(PullError::Mismatch(format!(
                "{total} bytes, the table records {}",
                file.size
            )));
        }
        let digest = format!("{:x}", hasher.finalize());
        if digest != file.sha256 {
            return Err(PullError::Mismatch(format!(
                "SHA-256 {} != recorded {}",
                &digest[..12],
                &file.sha256[..12]
            )));
        }
        out.sync_all()
            .await
            .with_context(|| format!("syncing {}", tmp.display()))?;
        drop(out);
        tokio::fs::rename(&tmp, &dest)
            .await
            .with_context(|| format!("renaming into {}", dest.display()))?;
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Where a table path lives under the images directory (plain components only).
fn destination(images_dir: &Path, rel: &str) -> Result<PathBuf> {
    match boot_fs::normalise(rel) {
        Ok(p) => Ok(images_dir.join(p)),
        Err(e) => bail!("image file path {rel:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    /// A source answering every digest with `body`; its base URL.
    async fn source(body: Vec<u8>) -> String {
        let app = axum::Router::new().route(
            "/files/sha256/{d}",
            get(move || {
                let b = body.clone();
                async move { b }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    fn file(data: &[u8]) -> ImageFile {
        ImageFile {
            path: "lab/vmlinuz".into(),
            size: data.len() as u64,
            sha256: format!("{:x}", Sha256::digest(data)),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_tampered_source_is_refused_and_an_honest_one_taken() {
        let dir = tempfile::tempdir().unwrap();
        let good: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let f = file(&good);
        let client = reqwest::Client::new();
        // Same size, other bytes: refused, nothing left behind.
        let mut bad = good.clone();
        bad[100_000] ^= 1;
        let liar = source(bad).await;
        match pull(&client, &liar, dir.path(), &f).await {
            Err(PullError::Mismatch(why)) => assert!(why.contains("SHA-256"), "{why}"),
            other => panic!("a tampered copy was not refused: {other:?}"),
        }
        // Longer than recorded: refused as soon as it overflows.
        let long = source([good.as_slice(), b"x"].concat()).await;
        assert!(matches!(
            pull(&client, &long, dir.path(), &f).await,
            Err(PullError::Mismatch(_))
        ));
        assert!(
            entries(&dir.path().join("lab")).is_empty(),
            "{:?}",
            entries(&dir.path().join("lab"))
        );
        // The honest copy lands under the table's path, complete.
        let honest = source(good.clone()).await;
        pull(&client, &honest, dir.path(), &f).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("lab/vmlinuz")).unwrap(), good);
        assert_eq!(
            entries(&dir.path().join("lab")),
            vec!["vmlinuz".to_string()]
        );
        // An unreachable source is not a refusal.
        assert!(matches!(
            pull(&client, "http://127.0.0.1:1", dir.path(), &f).await,
            Err(PullError::Other(_))
        ));
        // A path from the table cannot leave the images directory.
        let mut escape = f.clone();
        escape.path = "../x".into();
        assert!(pull(&client, &honest, dir.path(), &escape).await.is_err());
    }
}
