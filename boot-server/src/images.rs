//! Boot-image manifests (`images/<name>/image.toml`) and the integrity of
//! image files: a manifest is completed with each file's size and SHA-256
//! when it is added; files are verified against those digests at import and
//! at start, and [`ImageFiles`] refuses to serve a file that changed since.

use crate::model::{BootImage, ImageFile, ImageKind};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Parses a manifest and completes it (sizes, digests) from the files it names.
pub fn parse_manifest(text: &str, images_dir: &Path) -> Result<BootImage> {
    let mut image: BootImage = toml::from_str(text).context("parsing the image manifest")?;
    if image.name.is_empty()
        || image.name.len() > 128
        || !image
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "image name {:?} must be 1-128 letters, digits, '-', '_' or '.'",
            image.name
        );
    }
    image.files.clear();
    // Sanboot images name no files: a `san_url`, or none to boot the node's own
    // iSCSI disk (crate::plan); localdisk images name nothing at all.
    if image.kind == ImageKind::Linux {
        let Some(kernel) = image.kernel.clone() else {
            bail!("linux image {} has no kernel", image.name)
        };
        let mut whole = Sha256::new();
        let mut size = 0;
        for rel in std::iter::once(kernel).chain(image.initrd.clone()) {
            let path = file_in(images_dir, &rel)?;
            let (n, digest) = hash_file(&path, Some(&mut whole))?;
            size += n;
            image.files.push(ImageFile {
                path: rel,
                size: n,
                sha256: digest,
            });
        }
        image.size_bytes = size;
        image.checksum = Some(format!("{:x}", whole.finalize()));
    }
    Ok(image)
}

/// Reads and completes a manifest file.
pub fn load_manifest(manifest: &Path, images_dir: &Path) -> Result<BootImage> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading image manifest {}", manifest.display()))?;
    parse_manifest(&text, images_dir)
        .with_context(|| format!("image manifest {}", manifest.display()))
}

/// All manifests directly below `images_dir` (`*/image.toml`).
pub fn find_manifests(images_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(images_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", images_dir.display())),
    };
    for entry in entries {
        let manifest = entry?.path().join("image.toml");
        if manifest.is_file() {
            out.push(manifest);
        }
    }
    out.sort();
    Ok(out)
}

/// Resolves a path inside the images directory (no escaping it).
pub fn file_in(images_dir: &Path, rel: &str) -> Result<PathBuf> {
    boot_fs::resolve_path(&[images_dir.to_path_buf()], rel)
        .map_err(|e| anyhow::anyhow!("{rel}: {e}"))
        .with_context(|| format!("image file {rel} under {}", images_dir.display()))
}

/// Size and hex SHA-256 of a file (also fed to `whole` when given).
pub fn hash_file(path: &Path, mut whole: Option<&mut Sha256>) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok((total, format!("{:x}", hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        if let Some(w) = whole.as_deref_mut() {
            w.update(&buf[..n]);
        }
        total += n as u64;
    }
}

/// What serving a file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// Not a file of any image (served as is).
    Unlisted,
    /// The file matches its image's recorded digest.
    Intact,
    /// The file changed since its digest was recorded: not served.
    /// Not served; which image and why.
    Changed {
        /// The image the file belongs to.
        image: String,
        /// Why: unreadable, or its size or digest differs.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Known {
    image: String,
    size: u64,
    sha256: String,
    /// (size, mtime) at the last successful verification.
    verified: Option<(u64, SystemTime)>,
}

/// The digests of every image file, and when each was last verified.
pub struct ImageFiles {
    images_dir: PathBuf,
    files: Mutex<HashMap<String, Known>>,
}

impl ImageFiles {
    /// An empty registry for `images_dir`.
    pub fn new(images_dir: &Path) -> Self {
        ImageFiles {
            images_dir: images_dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Registers (or replaces) the files of the given images.
    pub fn set_images(&self, images: &[BootImage]) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.clear();
        for i in images {
            for f in &i.files {
                files.insert(
                    normalize(&f.path),
                    Known {
                        image: i.name.clone(),
                        size: f.size,
                        sha256: f.sha256.clone(),
                        verified: None,
                    },
                );
            }
        }
    }

    /// The path (under the images directory) of an image file whose recorded
    /// SHA-256 is `sha256` (lowercase hex), if any image has one.
    pub fn path_by_digest(&self, sha256: &str) -> Option<String> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<&String> = files
            .iter()
            .filter(|(_, k)| k.sha256 == sha256)
            .map(|(p, _)| p)
            .collect();
        found.sort();
        found.first().map(|p| p.to_string())
    }

    /// Checks `rel` (a path under the images directory) before it is served:
    /// re-hashes it only when its size or modification time moved since the
    /// last verification.
    pub fn check(&self, rel: &str) -> Integrity {
        let key = normalize(rel);
        let known = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            match files.get(&key) {
                Some(k) => k.clone(),
                None => return Integrity::Unlisted,
            }
        };
        let path = self.images_dir.join(&key);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                return Integrity::Changed {
                    image: known.image,
                    reason: format!("cannot read it: {e}"),
                }
            }
        };
        let stamp = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if known.verified == Some(stamp) {
            return Integrity::Intact;
        }
        let changed = |reason: String| Integrity::Changed {
            image: known.image.clone(),
            reason,
        };
        if stamp.0 != known.size {
            return changed(format!("size {} != recorded {}", stamp.0, known.size));
        }
        match hash_file(&path, None) {
            Ok((_, d)) if d == known.sha256 => {
                let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(k) = files.get_mut(&key) {
                    k.verified = Some(stamp);
                }
                Integrity::Intact
            }
            Ok((_, d)) => changed(format!(
                "SHA-256 {} != recorded {}",
                &d[..12],
                &known.sha256[..12.min(known.sha256.len())]
            )),
            Err(e) => changed(format!("{e:#}")),
        }
    }
}

fn normalize(rel: &str) -> String {
    rel.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/k"), b"kernel").unwrap();
        let image = parse_manifest(
            "name = \"a\"\nkind = \"linux\"\nkernel = \"a/k\"\n",
            dir.path(),
        )
        .unwrap();
        assert_eq!(image.files.len(), 1);
        let files = ImageFiles::new(dir.path());
        files.set_images(&[image]);
        assert_eq!(files.check("a/k"), Integrity::Intact);
        assert_eq!(files.check("/a//k"), Integrity::Intact);
        assert_eq!(files.check("other"), Integrity::Unlisted);
        std::fs::write(dir.path().join("a/k"), b"kernal").unwrap();
        assert!(matches!(files.check("a/k"), Integrity::Changed { .. }));
    }
}
