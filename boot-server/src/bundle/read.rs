//! Reading a bundle into a private staging directory: every entry is
//! checked against the manifest (listed, not repeated, its size and
//! SHA-256) while it is written there, and a truncated or corrupt stream is
//! an error naming the entry. Nothing outside the staging directory is
//! touched; the caller creates things only from a [`Staged`] bundle.

use super::{chunks, EnvRecord, Manifest, ENV_ENTRY, FORMAT, MANIFEST, VERSION};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest manifest or JSON record accepted (they are small).
const MAX_RECORD: u64 = 16 << 20;

/// A bundle read and verified into a staging directory.
#[derive(Debug)]
pub struct Staged {
    /// The manifest.
    pub manifest: Manifest,
    /// The environment record.
    pub record: EnvRecord,
    /// Image rows by name.
    pub images: BTreeMap<String, crate::model::BootImage>,
    /// Staged path of every file entry (image files, restored disks) by entry path.
    pub files: BTreeMap<String, PathBuf>,
    /// Bytes of disk data carried.
    pub disk_bytes: u64,
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

fn staged_name(entry: &str) -> String {
    entry.replace('/', "__")
}

/// Reads the bundle from `input` into `dir` (an empty private directory),
/// verifying everything.
pub fn stage(input: impl Read, dir: &Path) -> Result<Staged> {
    let z = zstd::Decoder::new(input).context("not a zstd stream")?;
    let mut ar = tar::Archive::new(z);
    let mut entries = ar
        .entries()
        .context("not an environment bundle (no tar stream)")?;

    let first = entries
        .next()
        .ok_or_else(|| anyhow!("empty bundle (no manifest)"))?
        .map_err(|e| {
            anyhow!("not an environment bundle, or one truncated before its manifest ends: {e}")
        })?;
    let path = first.path()?.to_string_lossy().to_string();
    if path != MANIFEST {
        bail!("not an environment bundle: the first entry is {path:?}, not {MANIFEST}");
    }
    if first.size() > MAX_RECORD {
        bail!("bundle manifest is {} bytes: too large", first.size());
    }
    let mut text = Vec::new();
    first
        .take(MAX_RECORD)
        .read_to_end(&mut text)
        .context("bundle truncated in its manifest")?;
    let manifest: Manifest =
        serde_json::from_slice(&text).context("bundle manifest is not valid JSON")?;
    if manifest.format != FORMAT {
        bail!("not an environment bundle (format {:?})", manifest.format);
    }
    if manifest.version != VERSION {
        bail!(
            "bundle format version {} is not supported here (this server reads version {VERSION})",
            manifest.version
        );
    }
    let listed: BTreeMap<&str, &super::EntryInfo> = manifest
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    if listed.len() != manifest.entries.len() {
        bail!("bundle manifest lists an entry twice");
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut record: Option<EnvRecord> = None;
    let mut images = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut disk_bytes = 0;
    for e in entries.by_ref() {
        let e = e.map_err(|err| {
            anyhow!(
                "bundle truncated or corrupt after {} entries: {err}",
                seen.len() + 1
            )
        })?;
        let path = e.path()?.to_string_lossy().to_string();
        let Some(info) = listed.get(path.as_str()) else {
            bail!("bundle entry {path} is not in its manifest (tampered bundle)");
        };
        if !seen.insert(path.clone()) {
            bail!("bundle entry {path} appears twice (tampered bundle)");
        }
        if e.size() != info.size {
            bail!(
                "bundle entry {path}: {} bytes, the manifest says {} (tampered bundle)",
                e.size(),
                info.size
            );
        }
        let mut r = Hashing {
            inner: e,
            hasher: Sha256::new(),
            n: 0,
        };
        let what = (|| -> Result<()> {
            if path == ENV_ENTRY || path.ends_with("/image.json") {
                if info.size > MAX_RECORD {
                    bail!("{} bytes: too large for a record", info.size);
                }
                let mut buf = Vec::new();
                r.read_to_end(&mut buf)?;
                if path == ENV_ENTRY {
                    record = Some(serde_json::from_slice(&buf).map_err(|e| anyhow!("{e}"))?);
                } else {
                    let image: crate::model::BootImage =
                        serde_json::from_slice(&buf).map_err(|e| anyhow!("{e}"))?;
                    images.insert(image.name.clone(), image);
                }
            } else if path.starts_with("images/") {
                let dest = dir.join(staged_name(&path));
                let mut f = boot_disk::overlay::create_private(&dest)?;
                std::io::copy(&mut r, &mut f)?;
                files.insert(path.clone(), dest);
            } else if path.starts_with("disks/base/") {
                let dest = dir.join(staged_name(&path));
                disk_bytes += chunks::restore_base(&mut r, &dest)?;
                files.insert(path.clone(), dest);
            } else if path.starts_with("disks/overlays/") {
                let base = record
                    .as_ref()
                    .and_then(|r| r.base.as_ref())
                    .ok_or_else(|| anyhow!("an overlay without a base disk entry before it"))?;
                let dest = dir.join(staged_name(&path));
                chunks::restore_overlay(&mut r, &dest, &base.name)?;
                files.insert(path.clone(), dest);
            } else {
                bail!("unknown kind of entry");
            }
            // Whatever the decoder left (it must be nothing) still counts.
            std::io::copy(&mut r, &mut std::io::sink())?;
            Ok(())
        })();
        let Hashing { hasher, n, .. } = r;
        // A short read means the stream ended inside this entry.
        if n != info.size {
            bail!(
                "bundle truncated in entry {path} ({n} of {} bytes)",
                info.size
            );
        }
        let digest = format!("{:x}", hasher.finalize());
        if digest != info.sha256 {
            bail!(
                "bundle entry {path}: SHA-256 {} does not match the manifest's {} (tampered or corrupt bundle)",
                &digest[..16],
                &info.sha256[..16.min(info.sha256.len())]
            );
        }
        what.with_context(|| format!("bundle entry {path}"))?;
    }
    // The rest of the stream (tar's end blocks) up to the zstd frame's end,
    // where its checksum is verified.
    std::io::copy(&mut ar.into_inner(), &mut std::io::sink())
        .context("bundle truncated or corrupt at its end")?;
    let missing: Vec<&str> = manifest
        .entries
        .iter()
        .map(|e| e.path.as_str())
        .filter(|p| !seen.contains(*p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "bundle truncated: {} entr{} missing, first {}",
            missing.len(),
            if missing.len() == 1 { "y" } else { "ies" },
            missing[0]
        );
    }
    let record = record.ok_or_else(|| anyhow!("bundle has no {ENV_ENTRY}"))?;
    Ok(Staged {
        manifest,
        record,
        images,
        files,
        disk_bytes,
    })
}
