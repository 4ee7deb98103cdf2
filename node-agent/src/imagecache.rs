//! The agent's content-addressed cache of boot images (kernels and
//! initrds), keyed by SHA-256: a file whose digest the server names is
//! served from the cache without downloading it again. The cache lives in
//! one directory (`<state dir>/images`, the agent's tmpfs, by default; a
//! directory on the node's disk with `--image-cache`), one file per digest
//! (`<sha256 hex>`, 0600, written to a temporary name and renamed, so a file
//! under its digest's name is always whole). A download is hashed before it
//! enters the cache and refused when it does not match the digest the
//! server named. The newest [`KEEP`] files are kept.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How many images the cache keeps (the oldest are removed beyond it).
pub const KEEP: usize = 6;

/// Where an image's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the cache: no download.
    Cache,
    /// Downloaded (and, when its digest was known, verified and cached).
    Download,
}

impl Source {
    /// `cache` or `download`, for result details and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Download => "download",
        }
    }
}

/// A content-addressed image cache in one directory.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: &Path) -> ImageCache {
        ImageCache {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.to_ascii_lowercase())
    }

    /// The cached bytes of `digest`, if held.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        if !valid_digest(digest) {
            return None;
        }
        fs::read(self.path(digest)).ok()
    }

    /// Stores `data` under its digest; returns the digest.
    pub fn put(&self, data: &[u8]) -> Result<String> {
        let digest = sha256_hex(data);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let tmp = self.dir.join(format!(".{digest}.{}", std::process::id()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(data)
            .with_context(|| format!("write {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, self.path(&digest))
            .with_context(|| format!("rename into {}", self.dir.display()))?;
        self.trim();
        Ok(digest)
    }

    /// Removes the oldest files beyond [`KEEP`].
    fn trim(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .flatten()
            .filter(|e| valid_digest(&e.file_name().to_string_lossy()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(KEEP);
        for (_, p) in files.into_iter().take(excess) {
            let _ = fs::remove_file(p);
        }
    }

    /// The bytes of `url`: from the cache when `digest` is given and held,
    /// else downloaded with `download`, checked against `digest` and cached.
    pub fn fetch(
        &self,
        url: &str,
        digest: Option<&str>,
        download: &dyn Fn(&str) -> Result<Vec<u8>>,
    ) -> Result<(Vec<u8>, Source)> {
        if let Some(d) = digest {
            if !valid_digest(d) {
                bail!("image digest {d:?} is not a SHA-256 in hex");
            }
            if let Some(data) = self.get(d) {
                return Ok((data, Source::Cache));
            }
        }
        let data = download(url)?;
        let got = sha256_hex(&data);
        if let Some(d) = digest {
            if !got.eq_ignore_ascii_case(d) {
                bail!("GET {url}: content has SHA-256 {got}, the server named {d}; not used");
            }
        }
        if let Err(e) = self.put(&data) {
            tracing::warn!(error = %format!("{e:#}"), "image not cached");
        }
        Ok((data, Source::Download))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_known_image_is_not_downloaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(&dir.path().join("images"));
        let data = b"kernel bytes".to_vec();
        let digest = sha256_hex(&data);
        let calls = Cell::new(0);
        let dl = |_: &str| {
            calls.set(calls.get() + 1);
            Ok(data.clone())
        };
        let (a, s) = cache.fetch("http://x/k", Some(&digest), &dl).unwrap();
        assert_eq!((a.as_slice(), s), (data.as_slice(), Source::Download));
        let (b, s) = cache
            .fetch("http://y/other-name", Some(&digest), &dl)
            .unwrap();
        assert_eq!((b.as_slice(), s), (data.as_slice(), Source::Cache));
        assert_eq!(calls.get(), 1, "downloaded once");
        let mode = fs::metadata(dir.path().join("images").join(&digest))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_download_that_does_not_match_its_digest_is_refused_and_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path());
        let wanted = sha256_hex(b"the real kernel");
        let e = cache
            .fetch("http://x/k", Some(&wanted), &|_| {
                Ok(b"something else".to_vec())
            })
            .unwrap_err();
        assert!(format!("{e:#}").contains("not used"), "{e:#}");
        assert!(cache.get(&wanted).is_none());
        assert!(cache.get(&sha256_hex(b"something else")).is_none());
        // A digest that is no digest is refused before any download.
        assert!(cache
            .fetch("http://x/k", Some("../etc/passwd"), &|_| panic!(
                "downloaded"
            ))
            .is_err());
    }

    #[test]
    fn the_cache_keeps_the_newest_images() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path());
        let mut digests = Vec::new();
        for i in 0..KEEP + 2 {
            digests.push(cache.put(format!("image {i}").as_bytes()).unwrap());
            // Distinct modification times.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let held = digests.iter().filter(|d| cache.get(d).is_some()).count();
        assert_eq!(held, KEEP);
        assert!(cache.get(digests.last().unwrap()).is_some());
        assert!(cache.get(&digests[0]).is_none());
    }
}
