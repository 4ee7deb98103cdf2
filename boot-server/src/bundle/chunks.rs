//! The sparse disk encoding of bundle entries (`*.chunks`): a disk as the
//! list of its 64 KiB chunks that differ from what the importer starts from.
//!
//! Layout: a 32-byte header (`"BNDLCHK1"`, u32 version 1, u32 chunk size,
//! u64 disk size, u64 record count, all big-endian), then records in
//! strictly increasing chunk order: u64 chunk index, u8 state, and for
//! state 1 (`data`) the chunk's bytes (a whole chunk; the tail past the disk
//! size is zeros). State 2 (`zero`) carries no bytes: the chunk reads as
//! zeros whatever is below.
//!
//! * A base is encoded canonically: one `data` record for every chunk that
//!   is not all zeros (holes are skipped without reading), so two copies of
//!   the same content encode to the same bytes and the entry's SHA-256 names
//!   the content.
//! * An overlay: a record for each chunk its map says is `data` or `zero`
//!   (chunks that read from the base carry nothing).

use anyhow::{bail, Context, Result};
use boot_disk::overlay::{
    create_files, file_extents, pread_full, read_map, MapHeader, CHUNK, HEADER_LEN, ST_DATA,
    ST_ZERO,
};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"BNDLCHK1";
const HEAD: usize = 32;
const REC: usize = 9;

/// What to encode: the chunks and where their bytes come from.
pub struct ChunkPlan {
    /// Disk size in bytes.
    pub size: u64,
    /// (chunk index, state) in increasing order.
    pub records: Vec<(u64, u8)>,
    file: File,
}

impl ChunkPlan {
    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> u64 {
        let data = self.records.iter().filter(|r| r.1 == ST_DATA).count() as u64;
        HEAD as u64 + self.records.len() as u64 * REC as u64 + data * CHUNK
    }

    /// Bytes of disk data it carries.
    pub fn data_bytes(&self) -> u64 {
        self.records.iter().filter(|r| r.1 == ST_DATA).count() as u64 * CHUNK
    }

    /// The plan of a raw base file: every chunk holding data that is not all
    /// zeros (reads the file's data extents once).
    pub fn base(path: &Path) -> Result<ChunkPlan> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let size = file.metadata()?.len();
        let mut extents = Vec::new();
        file_extents(&file, 0, size, &mut extents);
        let mut records = Vec::new();
        let mut buf = vec![0u8; CHUNK as usize];
        let mut pos = 0u64;
        let mut last: Option<u64> = None;
        for (len, hole) in extents {
            if !hole {
                let first = pos / CHUNK;
                let end = (pos + len).div_ceil(CHUNK);
                for c in first..end {
                    if last.is_some_and(|l| l >= c) {
                        continue;
                    }
                    last = Some(c);
                    pread_full(&file, &mut buf, c * CHUNK)?;
                    if buf.iter().any(|b| *b != 0) {
                        records.push((c, ST_DATA));
                    }
                }
            }
            pos += len;
        }
        Ok(ChunkPlan {
            size,
            records,
            file,
        })
    }

    /// The plan of an overlay directory (`data` + `map`): its `data` and
    /// `zero` chunks. The directory must not change meanwhile (a snapshot).
    pub fn overlay(dir: &Path) -> Result<(MapHeader, ChunkPlan)> {
        let (header, states) = read_map(&dir.join("map"))?;
        let file = File::open(dir.join("data"))
            .with_context(|| format!("open {}", dir.join("data").display()))?;
        let records = states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == ST_DATA || **s == ST_ZERO)
            .map(|(i, s)| (i as u64, *s))
            .collect();
        let size = header.size;
        Ok((
            header,
            ChunkPlan {
                size,
                records,
                file,
            },
        ))
    }

    /// Writes the encoding to `out`.
    pub fn write_to(&self, out: &mut dyn Write) -> Result<()> {
        let mut head = Vec::with_capacity(HEAD);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&1u32.to_be_bytes());
        head.extend_from_slice(&(CHUNK as u32).to_be_bytes());
        head.extend_from_slice(&self.size.to_be_bytes());
        head.extend_from_slice(&(self.records.len() as u64).to_be_bytes());
        out.write_all(&head)?;
        let mut buf = vec![0u8; CHUNK as usize];
        for (c, state) in &self.records {
            let mut rec = [0u8; REC];
            rec[..8].copy_from_slice(&c.to_be_bytes());
            rec[8] = *state;
            out.write_all(&rec)?;
            if *state == ST_DATA {
                pread_full(&self.file, &mut buf, c * CHUNK)?;
                let keep = (self.size - c * CHUNK).min(CHUNK) as usize;
                buf[keep..].fill(0);
                out.write_all(&buf)?;
            }
        }
        Ok(())
    }
}

fn read_head(r: &mut dyn Read) -> Result<(u64, u64)> {
    let mut head = [0u8; HEAD];
    r.read_exact(&mut head).context("chunk header")?;
    if &head[..8] != MAGIC {
        bail!("not a chunk encoding (bad magic)");
    }
    let u32_at = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_be_bytes(b)
    };
    if u32_at(8) != 1 {
        bail!("unsupported chunk encoding version {}", u32_at(8));
    }
    if u64::from(u32_at(12)) != CHUNK {
        bail!("unsupported chunk size {}", u32_at(12));
    }
    Ok((u64_at(16), u64_at(24)))
}

/// Calls `f(index, state, bytes)` for every record (bytes empty unless
/// `data`), checking the order and bounds; returns the disk size.
fn each_record(
    r: &mut dyn Read,
    allow_zero: bool,
    mut f: impl FnMut(u64, u8, &[u8]) -> Result<()>,
) -> Result<u64> {
    let (size, count) = read_head(r)?;
    let chunks = size.div_ceil(CHUNK);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut next = 0u64;
    for _ in 0..count {
        let mut rec = [0u8; REC];
        r.read_exact(&mut rec).context("chunk record")?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&rec[..8]);
        let c = u64::from_be_bytes(b);
        if c < next || c >= chunks {
            bail!("chunk record {c} out of order or past the disk's {chunks} chunks");
        }
        next = c + 1;
        match rec[8] {
            ST_DATA => {
                r.read_exact(&mut buf).context("chunk data")?;
                f(c, ST_DATA, &buf)?;
            }
            ST_ZERO if allow_zero => f(c, ST_ZERO, &[])?,
            s => bail!("chunk record {c}: bad state {s}"),
        }
    }
    let mut probe = [0u8; 1];
    if r.read(&mut probe)? != 0 {
        bail!("bytes after the last chunk record");
    }
    Ok(size)
}

/// Decodes a base encoding from `r` into a new sparse raw file `dest`.
pub fn restore_base(r: &mut dyn Read, dest: &Path) -> Result<u64> {
    let file = boot_disk::overlay::create_private(dest)
        .with_context(|| format!("create {}", dest.display()))?;
    let size = each_record(r, false, |c, _, bytes| {
        file.write_all_at(bytes, c * CHUNK)?;
        Ok(())
    })?;
    file.set_len(size)?;
    file.sync_all()?;
    Ok(size)
}

/// Decodes an overlay encoding from `r` into a new overlay directory `dir`
/// (created) on base `base`.
pub fn restore_overlay(r: &mut dyn Read, dir: &Path, base: &str) -> Result<u64> {
    boot_disk::overlay::create_private_dir(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let mut records: Vec<(u64, u8)> = Vec::new();
    let data = boot_disk::overlay::create_private(&dir.join("data"))?;
    let size = each_record(r, true, |c, state, bytes| {
        if state == ST_DATA {
            data.write_all_at(bytes, c * CHUNK)?;
        }
        records.push((c, state));
        Ok(())
    })?;
    data.set_len(size)?;
    data.sync_all()?;
    drop(data);
    // The map is written last, over a fresh empty one (all chunks `base`).
    let keep = dir.join("data.keep");
    std::fs::rename(dir.join("data"), &keep)?;
    create_files(
        dir,
        &MapHeader {
            base: base.to_string(),
            size,
            origin: None,
        },
    )?;
    std::fs::rename(&keep, dir.join("data"))?;
    let map = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("map"))?;
    for (c, state) in records {
        map.write_all_at(&[state], HEADER_LEN + c)?;
    }
    map.sync_all()?;
    Ok(size)
}
