//! `Disk`: what one opened export serves (a read-only base or a read-write overlay),
//! with the blocking I/O operations a protocol server (NBD, later iSCSI) runs on it.

use std::io;
use std::sync::Arc;

use crate::overlay::{file_extents, pread_full, Overlay};
use crate::store::BaseImage;

/// An opened export.
#[derive(Clone)]
pub enum Disk {
    /// A base image, served read-only.
    Base(Arc<BaseImage>),
    /// An overlay (or snapshot), served read-write.
    Overlay(Arc<Overlay>),
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

impl Disk {
    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Disk::Base(b) => b.size,
            Disk::Overlay(o) => o.size(),
        }
    }

    /// True for bases (writes fail with EPERM).
    pub fn read_only(&self) -> bool {
        matches!(self, Disk::Base(_))
    }

    /// Reads `buf.len()` bytes at `off` (caller checked bounds).
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        match self {
            Disk::Base(b) => pread_full(&b.file, buf, off),
            Disk::Overlay(o) => o.read_at(buf, off),
        }
    }

    /// Source runs of [off, off+len) for zero-copy sending (`None` = zeros).
    pub fn read_plan(&self, off: u64, len: u64) -> Vec<(Option<&std::fs::File>, u64, u64)> {
        let mut v = Vec::new();
        match self {
            Disk::Base(b) => v.push((Some(&b.file), off, off + len)),
            Disk::Overlay(o) => o.read_plan(off, len, &mut v),
        }
        v
    }

    /// Writes `buf` at `off`; with `fua` the write is durable when this returns.
    pub fn write_at(&self, buf: &[u8], off: u64, fua: bool) -> io::Result<()> {
        match self {
            Disk::Base(_) => Err(read_only()),
            Disk::Overlay(o) => o.write_at(buf, off, fua),
        }
    }

    /// Makes [off, off+len) read as zeros (punching whole chunks unless `no_hole`).
    pub fn zero_at(&self, off: u64, len: u64, no_hole: bool, fua: bool) -> io::Result<()> {
        match self {
            Disk::Base(_) => Err(read_only()),
            Disk::Overlay(o) => o.zero_at(off, len, no_hole, fua),
        }
    }

    /// Makes every completed write durable (no-op for bases).
    pub fn flush(&self) -> io::Result<()> {
        match self {
            Disk::Base(_) => Ok(()),
            Disk::Overlay(o) => o.flush(),
        }
    }

    /// Allocation extents of [off, off+len) as (length, is_hole); holes read as zeros.
    pub fn extents(&self, off: u64, len: u64) -> Vec<(u64, bool)> {
        match self {
            Disk::Overlay(o) => o.extents(off, len),
            Disk::Base(b) => {
                let mut v = Vec::new();
                file_extents(&b.file, off, len, &mut v);
                v
            }
        }
    }
}
