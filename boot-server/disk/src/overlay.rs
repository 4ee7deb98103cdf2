//! Copy-on-write overlay over a read-only raw base image.
//!
//! # On-disk format (directory `overlays/<id>/`)
//!
//! * `data`: a sparse file exactly as large as the disk. Chunk *i* of the disk lives at
//!   the same offset in `data` when it is allocated in the overlay.
//! * `map`: a 4096-byte header followed by **one state byte per 64 KiB chunk**:
//!   `0` = read from the base, `1` = read from `data`, `2` = reads as zeros
//!   (TRIM / WRITE_ZEROES of a whole chunk; the `data` range is hole-punched).
//!   Header: `"BNBDMAP1"`, u32 version (1), u32 chunk size, u64 disk size,
//!   u16 + base name, u16 + origin overlay id (empty unless this is a snapshot);
//!   all big-endian.
//!
//! One byte per chunk (not one bit) keeps every map entry independent: a torn map write
//! can only leave each chunk in its old or new state, never a neighbour's.
//!
//! # Writes and copy-up
//!
//! A write first `pwrite`s its bytes into `data`. A chunk that was not yet in state
//! `data` and is only partly covered is then completed from its previous source
//! (base bytes, or zeros for state `zero`) for the uncovered part, and only then is its
//! state switched to `data` in memory. Chunks being allocated are protected by striped
//! locks so two partial writes into one fresh chunk cannot clobber each other; writes to
//! chunks already in state `data` take no lock.
//!
//! # Durability
//!
//! State changes are remembered as dirty map entries (with the value they had when their
//! data was written). FLUSH (and every FUA write) does, under one flush lock:
//! take the dirty entries, `fdatasync(data)`, `pwrite` those entries into `map`,
//! `fdatasync(map)`. So the map on disk never points at data that is not on stable
//! storage: after a crash a chunk reads either its flushed overlay contents or its older
//! source (base / zeros), never bytes from a wrong layer. Unflushed writes may be lost.
//!
//! A failed `fdatasync(data)` is final for this open overlay: Linux reports a writeback
//! error once and marks the pages clean, so a retried sync would "succeed" without the
//! data being on disk. The overlay therefore records the failure and every later flush
//! (FLUSH, FUA write, snapshot, close) fails with EIO without writing any map entry. The
//! data is durable again only for a freshly opened `Overlay` (every connection closed
//! and the overlay reopened, e.g. after a restart), which reads the map as last synced:
//! chunks whose flush failed read as their older source, which is what the failed FLUSH
//! told the client. A failed map write or map sync is retried by the next flush (the
//! entries are put back and rewritten, so the retry really writes them again).
//!
//! # Snapshots
//!
//! `snapshot_into` blocks writers (an RwLock writers hold shared), flushes, then clones
//! `data` with the `FICLONE` reflink ioctl where the filesystem supports it (btrfs, XFS:
//! O(1), blocks shared copy-on-write by the filesystem) and otherwise copies only the
//! allocated chunks into a new sparse file (O(allocated bytes), no cost for the base part).
//! Hard links were rejected: the origin keeps being written in place, so a shared inode
//! would not keep the frozen state. The snapshot is an ordinary overlay on the same base.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};

use anyhow::{bail, Context};

/// Allocation granularity of overlays.
pub const CHUNK: u64 = 64 * 1024;
/// Bytes of the map file before its state bytes (state of chunk *i* at `HEADER_LEN + i`).
pub const HEADER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"BNBDMAP1";
const VERSION: u32 = 1;
const STRIPES: usize = 256;

/// Map state: the chunk reads from the base.
pub const ST_BASE: u8 = 0;
/// Map state: the chunk reads from the overlay's `data` file.
pub const ST_DATA: u8 = 1;
/// Map state: the chunk reads as zeros.
pub const ST_ZERO: u8 = 2;

/// Fixed part of the map file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapHeader {
    /// Name of the base image.
    pub base: String,
    /// Disk size in bytes (equal to the base's).
    pub size: u64,
    /// For snapshots: the overlay it was taken from.
    pub origin: Option<String>,
}

impl MapHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_be_bytes());
        h.extend_from_slice(&(CHUNK as u32).to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        for s in [self.base.as_str(), self.origin.as_deref().unwrap_or("")] {
            h.extend_from_slice(&(s.len() as u16).to_be_bytes());
            h.extend_from_slice(s.as_bytes());
        }
        h.resize(HEADER_LEN as usize, 0);
        h
    }

    fn decode(h: &[u8]) -> anyhow::Result<Self> {
        if h.len() < 28 || &h[0..8] != MAGIC {
            bail!("not an overlay map (bad magic)");
        }
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if u32_at(8) != VERSION {
            bail!("unsupported map version {}", u32_at(8));
        }
        if u64::from(u32_at(12)) != CHUNK {
            bail!("unsupported chunk size {}", u32_at(12));
        }
        let mut sz = [0u8; 8];
        sz.copy_from_slice(&h[16..24]);
        let size = u64::from_be_bytes(sz);
        let mut at = 24;
        let mut strs = Vec::new();
        for _ in 0..2 {
            let l = h
                .get(at..at + 2)
                .map(|s| u16::from_be_bytes([s[0], s[1]]) as usize)
                .context("truncated map header")?;
            let s = h.get(at + 2..at + 2 + l).context("truncated map header")?;
            strs.push(String::from_utf8(s.to_vec()).context("map header string")?);
            at += 2 + l;
        }
        let origin = strs.pop().filter(|s| !s.is_empty());
        let base = strs.pop().unwrap_or_default();
        Ok(MapHeader { base, size, origin })
    }
}

fn chunks_for(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// Creates (truncating) a file readable and writable by the owner only (0600 whatever
/// the umask: the mode is set again with fchmod, which the umask does not touch).
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Creates a directory accessible by the owner only (0700 whatever the umask).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Creates the files of a fresh, empty overlay in `dir` (which must exist).
pub fn create_files(dir: &Path, header: &MapHeader) -> anyhow::Result<()> {
    let data = create_private(&dir.join("data")).context("create data")?;
    data.set_len(header.size)?;
    data.sync_all()?;
    let map = create_private(&dir.join("map")).context("create map")?;
    map.write_all_at(&header.encode(), 0)?;
    map.set_len(HEADER_LEN + chunks_for(header.size))?;
    map.sync_all()?;
    Ok(())
}

/// Reads only the header and states of a map file (for listings).
pub fn read_map(path: &Path) -> anyhow::Result<(MapHeader, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let header = MapHeader::decode(&bytes)?;
    let n = chunks_for(header.size) as usize;
    let states = bytes
        .get(HEADER_LEN as usize..HEADER_LEN as usize + n)
        .context("map file truncated")?
        .to_vec();
    if let Some(bad) = states.iter().find(|s| **s > ST_ZERO) {
        bail!("corrupt map: chunk state {bad}");
    }
    Ok((header, states))
}

/// pread that fills the tail with zeros past end of file.
pub fn pread_full(f: &File, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, off) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn punch_hole(f: &File, off: u64, len: u64) {
    // Best effort: a failed punch leaves stale bytes that the map state hides anyway.
    // SAFETY: fallocate(2) takes no pointers; `f` keeps the fd open for the call.
    unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        );
    }
}

/// Extents of a plain file by SEEK_DATA / SEEK_HOLE: (length, is_hole) covering
/// [off, off+len).
pub fn file_extents(f: &File, off: u64, len: u64, out: &mut Vec<(u64, bool)>) {
    let end = off + len;
    let fd = f.as_raw_fd();
    let mut pos = off;
    while pos < end {
        // SAFETY: lseek on a valid fd; we never use the fd's file position elsewhere.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data after pos (hole to EOF); other errors: say "data".
            let hole = io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
            out.push((end - pos, hole));
            return;
        }
        let data = data as u64;
        if data > pos {
            let h = data.min(end) - pos;
            out.push((h, true));
            pos += h;
            continue;
        }
        // SAFETY: lseek(2) takes no pointers and `fd` is kept open by `f`.
        let hole = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let d = hole.max(pos + 1).min(end) - pos;
        out.push((d, false));
        pos += d;
    }
}

/// An open overlay. One instance per overlay id is shared by every connection.
pub struct Overlay {
    header: MapHeader,
    base: File,
    data: File,
    map: File,
    states: Vec<AtomicU8>,
    dirty: Mutex<BTreeMap<u64, u8>>,
    stripes: Vec<Mutex<()>>,
    flush_lock: Mutex<()>,
    quiesce: RwLock<()>,
    /// Set when `fdatasync(data)` failed: every later flush fails (see module doc).
    sync_failed: AtomicBool,
    /// Test hook: this many next data syncs fail with EIO.
    #[cfg(feature = "fault-injection")]
    fail_data_syncs: std::sync::atomic::AtomicU32,
}

fn lock_err<T>(_: T) -> io::Error {
    io::Error::other("poisoned lock")
}

impl Overlay {
    /// Opens `dir/{data,map}` over the base file `base_path`.
    pub fn open(dir: &Path, base_path: &Path) -> anyhow::Result<Self> {
        let (header, states) = read_map(&dir.join("map"))?;
        let base =
            File::open(base_path).with_context(|| format!("open base {}", base_path.display()))?;
        let blen = base.metadata()?.len();
        if blen != header.size {
            bail!(
                "base {} is {blen} bytes, overlay expects {}",
                header.base,
                header.size
            );
        }
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("data"))
            .context("open data")?;
        let map = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("map"))
            .context("open map")?;
        Ok(Overlay {
            header,
            base,
            data,
            map,
            states: states.into_iter().map(AtomicU8::new).collect(),
            dirty: Mutex::new(BTreeMap::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            flush_lock: Mutex::new(()),
            quiesce: RwLock::new(()),
            sync_failed: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            fail_data_syncs: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// The map header (base, size, origin).
    pub fn header(&self) -> &MapHeader {
        &self.header
    }

    fn state(&self, c: u64) -> u8 {
        self.states[c as usize].load(Ordering::Acquire)
    }

    /// Bytes allocated in the overlay (chunks in state data).
    pub fn allocated_bytes(&self) -> u64 {
        self.states
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == ST_DATA)
            .count() as u64
            * CHUNK
    }

    fn set_states(&self, chunks: &[u64], st: u8) -> io::Result<()> {
        let mut d = self.dirty.lock().map_err(lock_err)?;
        for &c in chunks {
            self.states[c as usize].store(st, Ordering::Release);
            d.insert(c, st);
        }
        Ok(())
    }

    /// Runs `(chunk state, start, end)` of equal state covering [off, end).
    fn runs(&self, off: u64, end: u64) -> impl Iterator<Item = (u8, u64, u64)> + '_ {
        let mut pos = off;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let st = self.state(pos / CHUNK);
            let mut run_end = ((pos / CHUNK + 1) * CHUNK).min(end);
            while run_end < end && self.state(run_end / CHUNK) == st {
                run_end = ((run_end / CHUNK + 1) * CHUNK).min(end);
            }
            let run = (st, pos, run_end);
            pos = run_end;
            Some(run)
        })
    }

    /// Reads `buf.len()` bytes at `off` (caller checked bounds).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        for (st, start, end) in self.runs(off, off + buf.len() as u64) {
            let slice = &mut buf[(start - off) as usize..(end - off) as usize];
            match st {
                ST_DATA => pread_full(&self.data, slice, start)?,
                ST_ZERO => slice.fill(0),
                _ => pread_full(&self.base, slice, start)?,
            }
        }
        Ok(())
    }

    /// Where the bytes of [off, off+len) come from right now: runs of
    /// (source, start, end) with source `None` for zeros.
    pub fn read_plan<'a>(
        &'a self,
        off: u64,
        len: u64,
        out: &mut Vec<(Option<&'a File>, u64, u64)>,
    ) {
        for (st, start, end) in self.runs(off, off + len) {
            let src = match st {
                ST_DATA => Some(&self.data),
                ST_ZERO => None,
                _ => Some(&self.base),
            };
            out.push((src, start, end));
        }
    }

    /// Writes `buf` at `off` with copy-up of partly covered fresh chunks.
    pub fn write_at(&self, buf: &[u8], off: u64, fua: bool) -> io::Result<()> {
        {
            let _q = self.quiesce.read().map_err(lock_err)?;
            self.write_inner(buf, off)?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn lock_stripes(&self, chunks: &[u64]) -> io::Result<Vec<std::sync::MutexGuard<'_, ()>>> {
        let mut idx: Vec<usize> = chunks.iter().map(|c| (*c as usize) % STRIPES).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.iter()
            .map(|i| self.stripes[*i].lock().map_err(lock_err))
            .collect()
    }

    fn write_inner(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = off + buf.len() as u64;
        let (c0, c1) = (off / CHUNK, (end - 1) / CHUNK);
        let fresh: Vec<u64> = (c0..=c1).filter(|c| self.state(*c) != ST_DATA).collect();
        if fresh.is_empty() {
            return self.data.write_all_at(buf, off);
        }
        let _guards = self.lock_stripes(&fresh)?;
        // Re-check under the locks: another writer may have allocated meanwhile.
        let fresh: Vec<(u64, u8)> = fresh
            .into_iter()
            .map(|c| (c, self.state(c)))
            .filter(|(_, s)| *s != ST_DATA)
            .collect();
        self.data.write_all_at(buf, off)?;
        let mut fill = Vec::new();
        for &(c, st) in &fresh {
            let cs = c * CHUNK;
            let ce = (cs + CHUNK).min(self.header.size);
            // Uncovered parts of this chunk: [cs, off) and [end, ce).
            for (a, b) in [(cs, off.min(ce)), (end.max(cs), ce)] {
                if a >= b {
                    continue;
                }
                fill.resize((b - a) as usize, 0);
                if st == ST_ZERO {
                    fill.fill(0);
                } else {
                    pread_full(&self.base, &mut fill, a)?;
                }
                self.data.write_all_at(&fill, a)?;
            }
        }
        let chunks: Vec<u64> = fresh.iter().map(|(c, _)| *c).collect();
        self.set_states(&chunks, ST_DATA)
    }

    /// WRITE_ZEROES / TRIM: the range reads back as zeros afterwards. Whole chunks become
    /// state zero (hole-punched) unless `no_hole`; partial chunks are written with zeros.
    pub fn zero_at(&self, off: u64, len: u64, no_hole: bool, fua: bool) -> io::Result<()> {
        {
            let _q = self.quiesce.read().map_err(lock_err)?;
            let end = off + len;
            let zeros = vec![0u8; CHUNK as usize];
            let mut pos = off;
            let mut whole = Vec::new();
            while pos < end {
                let c = pos / CHUNK;
                let cs = c * CHUNK;
                let ce = (cs + CHUNK).min(self.header.size);
                let seg_end = ce.min(end);
                if pos == cs && seg_end == ce && !no_hole {
                    whole.push(c);
                } else if self.state(c) == ST_ZERO && !no_hole {
                    // Already reads as zeros.
                } else {
                    self.write_inner(&zeros[..(seg_end - pos) as usize], pos)?;
                }
                pos = seg_end;
            }
            for group in whole.chunks(512) {
                let _g = self.lock_stripes(group)?;
                let first = group[0] * CHUNK;
                let last = ((group[group.len() - 1] + 1) * CHUNK).min(self.header.size);
                punch_hole(&self.data, first, last - first);
                self.set_states(group, ST_ZERO)?;
            }
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Fault injection for tests (feature `fault-injection`): the next `n` syncs of the
    /// `data` file fail with EIO as a failing disk's would.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_data_syncs(&self, n: u32) {
        self.fail_data_syncs.store(n, Ordering::SeqCst);
    }

    fn sync_data_file(&self) -> io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if self
            .fail_data_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.data.sync_data()
    }

    /// True once a data sync failed: flushes fail until the overlay is reopened.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::SeqCst)
    }

    /// Makes every completed write durable: data first, then the map entries.
    /// After a failed data sync every call fails with EIO (see the module doc).
    pub fn flush(&self) -> io::Result<()> {
        let _f = self.flush_lock.lock().map_err(lock_err)?;
        if self.sync_failed() {
            return Err(io::Error::other(format!(
                "an earlier data sync of this overlay (base {}) failed: \
                 writes since the last good flush may be lost",
                self.header.base
            )));
        }
        let pending = std::mem::take(&mut *self.dirty.lock().map_err(lock_err)?);
        if let Err(e) = self.sync_data_file() {
            // The entries in `pending` must never reach the map: their data may be lost.
            self.sync_failed.store(true, Ordering::SeqCst);
            tracing::error!(
                base = %self.header.base,
                "overlay data sync failed, flushes fail until it is reopened: {e}"
            );
            return Err(e);
        }
        if pending.is_empty() {
            return Ok(());
        }
        let res = self
            .write_map_entries(&pending)
            .and_then(|_| self.map.sync_data());
        if res.is_err() {
            // Put the entries back (newer values win) so a later flush retries them.
            if let Ok(mut d) = self.dirty.lock() {
                for (c, s) in pending {
                    d.entry(c).or_insert(s);
                }
            }
        }
        res
    }

    fn write_map_entries(&self, pending: &BTreeMap<u64, u8>) -> io::Result<()> {
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        for (&c, &s) in pending {
            if !run.is_empty() && run_start + run.len() as u64 != c {
                self.map.write_all_at(&run, HEADER_LEN + run_start)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = c;
            }
            run.push(s);
        }
        if !run.is_empty() {
            self.map.write_all_at(&run, HEADER_LEN + run_start)?;
        }
        Ok(())
    }

    /// Allocation extents of [off, off+len): (length, is_hole) where a hole is
    /// unallocated and reads as zeros (NBD `base:allocation`, SCSI GET LBA STATUS).
    pub fn extents(&self, off: u64, len: u64) -> Vec<(u64, bool)> {
        let end = off + len;
        let mut out: Vec<(u64, bool)> = Vec::new();
        let push = |l: u64, f: bool, out: &mut Vec<(u64, bool)>| match out.last_mut() {
            Some(last) if last.1 == f => last.0 += l,
            _ => out.push((l, f)),
        };
        let mut pos = off;
        let mut tmp = Vec::new();
        while pos < end {
            let c = pos / CHUNK;
            let st = self.state(c);
            let mut run_end = ((c + 1) * CHUNK).min(end);
            while run_end < end && self.state(run_end / CHUNK) == st {
                run_end = ((run_end / CHUNK + 1) * CHUNK).min(end);
            }
            match st {
                ST_DATA => push(run_end - pos, false, &mut out),
                ST_ZERO => push(run_end - pos, true, &mut out),
                _ => {
                    tmp.clear();
                    file_extents(&self.base, pos, run_end - pos, &mut tmp);
                    for (l, hole) in tmp.drain(..) {
                        push(l, hole, &mut out);
                    }
                }
            }
            pos = run_end;
        }
        out
    }

    /// Writes a frozen, independent copy of this overlay into `dir` (which must exist
    /// and be empty) with `origin` recorded in its header.
    pub fn snapshot_into(&self, dir: &Path, origin: &str) -> anyhow::Result<bool> {
        let _q = self
            .quiesce
            .write()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
        self.flush().context("flush before snapshot")?;
        let data = create_private(&dir.join("data")).context("create snapshot data")?;
        // SAFETY: FICLONE on two valid fds.
        let cloned =
            unsafe { libc::ioctl(data.as_raw_fd(), libc::FICLONE, self.data.as_raw_fd()) } == 0;
        if !cloned {
            data.set_len(self.header.size)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut c = 0u64;
            let n = self.states.len() as u64;
            while c < n {
                if self.state(c) != ST_DATA {
                    c += 1;
                    continue;
                }
                let mut e = c + 1;
                while e < n && e - c < 16 && self.state(e) == ST_DATA {
                    e += 1;
                }
                let a = c * CHUNK;
                let b = (e * CHUNK).min(self.header.size);
                let slice = &mut buf[..(b - a) as usize];
                pread_full(&self.data, slice, a)?;
                data.write_all_at(slice, a)?;
                c = e;
            }
        }
        data.sync_all()?;
        let header = MapHeader {
            origin: Some(origin.to_string()),
            ..self.header.clone()
        };
        let mut map = header.encode();
        map.extend(self.states.iter().map(|s| s.load(Ordering::Acquire)));
        let mf = create_private(&dir.join("map"))?;
        mf.write_all_at(&map, 0)?;
        mf.sync_all()?;
        Ok(cloned)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(base = %self.header.base, "overlay flush on close failed: {e}");
        }
    }
}
