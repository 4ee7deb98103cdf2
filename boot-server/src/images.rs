//! Boot-image manifests (`images/<name>/image.toml`) and their import into
//! the boot-image table: validates that the files exist inside the images
//! directory and records their size and SHA-256.

use crate::store::{BootImage, ImageKind};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads a manifest and completes it (size, checksum) from the files it names.
pub fn load_manifest(manifest: &Path, images_dir: &Path) -> Result<BootImage> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading image manifest {}", manifest.display()))?;
    let mut image: BootImage = toml::from_str(&text)
        .with_context(|| format!("parsing image manifest {}", manifest.display()))?;
    if image.name.is_empty()
        || !image
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "image name {:?} must be non-empty and use only letters, digits, '-', '_' or '.'",
            image.name
        );
    }
    match image.kind {
        ImageKind::Linux => {
            let Some(kernel) = image.kernel.clone() else {
                bail!("linux image {} has no kernel", image.name)
            };
            let mut hasher = Sha256::new();
            let mut size = 0;
            for rel in std::iter::once(kernel).chain(image.initrd.clone()) {
                let path = file_in(images_dir, &rel)?;
                size += hash_file(&path, &mut hasher)?;
            }
            image.size_bytes = size;
            image.checksum = Some(format!("{:x}", hasher.finalize()));
        }
        ImageKind::Sanboot if image.san_url.is_none() => {
            bail!("sanboot image {} has no san_url", image.name)
        }
        _ => {}
    }
    Ok(image)
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

/// Resolves a manifest path inside the images directory (no escaping it).
fn file_in(images_dir: &Path, rel: &str) -> Result<PathBuf> {
    boot_tftp::resolve_path(&[images_dir.to_path_buf()], rel)
        .map_err(|e| anyhow::anyhow!("{rel}: {e}"))
        .with_context(|| format!("image file {rel} under {}", images_dir.display()))
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<u64> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}
