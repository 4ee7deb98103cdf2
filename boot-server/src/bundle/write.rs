//! Writing a bundle: the sources of every entry, a first pass that sizes
//! and hashes them, then the stream (manifest first) through zstd into any
//! writer. Memory stays flat: entries are streamed from their files.

use super::chunks::ChunkPlan;
use super::{EntryInfo, Manifest, MANIFEST};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::PathBuf;

/// Where an entry's bytes come from.
pub enum Source {
    /// Bytes in memory (small JSON records).
    Bytes(Vec<u8>),
    /// A file, as is.
    File(PathBuf),
    /// A disk in the sparse chunk encoding.
    Chunks(ChunkPlan),
}

/// One entry to write.
pub struct Entry {
    /// Path in the stream.
    pub path: String,
    /// Its bytes.
    pub source: Source,
}

struct HashWriter<'a> {
    hasher: &'a mut Sha256,
    n: u64,
}

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.n += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Entry {
    fn emit(&self, out: &mut dyn Write) -> Result<()> {
        match &self.source {
            Source::Bytes(b) => out.write_all(b)?,
            Source::File(p) => {
                let mut f =
                    std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
                std::io::copy(&mut f, out).with_context(|| format!("read {}", p.display()))?;
            }
            Source::Chunks(c) => c.write_to(out)?,
        }
        Ok(())
    }

    /// Size and SHA-256 of the entry's bytes (reads them once).
    pub fn measure(&self) -> Result<EntryInfo> {
        let mut hasher = Sha256::new();
        let mut w = HashWriter {
            hasher: &mut hasher,
            n: 0,
        };
        self.emit(&mut w)
            .with_context(|| format!("reading entry {}", self.path))?;
        let size = w.n;
        Ok(EntryInfo {
            path: self.path.clone(),
            size,
            sha256: format!("{:x}", hasher.finalize()),
        })
    }
}

/// Adapts an entry's writer-driven output into the reader `tar` wants,
/// checking it yields exactly the bytes measured.
struct Pump<'a> {
    entry: &'a Entry,
    info: &'a EntryInfo,
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
        .with_context(|| format!("writing entry {path}"))
}

/// Writes a sized entry: tar needs the size first, so the entry's writer
/// output is passed through a bounded in-thread buffer into tar's reader.
fn write_entry(tar: &mut tar::Builder<impl Write>, p: Pump<'_>) -> Result<()> {
    // The tar builder reads; our sources write. A small adapter: collect the
    // entry's output through a writer that forwards into the tar stream
    // directly (header first, then data, then padding).
    let mut h = tar::Header::new_ustar();
    h.set_size(p.info.size);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path(&p.info.path)
        .with_context(|| format!("entry path {}", p.info.path))?;
    h.set_cksum();
    let out = tar.get_mut();
    out.write_all(h.as_bytes())?;
    let mut counting = Counting {
        inner: out,
        n: 0,
        limit: p.info.size,
    };
    p.entry
        .emit(&mut counting)
        .with_context(|| format!("writing entry {}", p.info.path))?;
    if counting.n != p.info.size {
        anyhow::bail!(
            "entry {} changed while exporting ({} bytes, measured {})",
            p.info.path,
            counting.n,
            p.info.size
        );
    }
    let pad = (512 - p.info.size % 512) % 512;
    out.write_all(&vec![0u8; pad as usize])?;
    Ok(())
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
    limit: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.n + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other("entry grew while exporting"));
        }
        self.inner.write_all(buf)?;
        self.n += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Measures every entry (first pass); with the manifest's other fields
/// filled by the caller, [`write_bundle`] then streams them.
pub fn measure(entries: &[Entry]) -> Result<Vec<EntryInfo>> {
    entries.iter().map(Entry::measure).collect()
}

/// Writes the bundle (manifest, then every entry) compressed into `out`.
/// `manifest.entries` must be [`measure`]'s result for `entries`.
pub fn write_bundle(manifest: &Manifest, entries: &[Entry], out: impl Write) -> Result<()> {
    let mut z = zstd::Encoder::new(out, 3).context("zstd")?;
    z.include_checksum(true).context("zstd")?;
    let mut tar = tar::Builder::new(z);
    let m = serde_json::to_vec_pretty(manifest)?;
    append(&mut tar, MANIFEST, m.len() as u64, &m[..])?;
    for (e, info) in entries.iter().zip(&manifest.entries) {
        write_entry(&mut tar, Pump { entry: e, info })?;
    }
    let z = tar.into_inner().context("finishing the tar stream")?;
    let mut out = z.finish().context("finishing the zstd stream")?;
    out.flush()?;
    Ok(())
}
