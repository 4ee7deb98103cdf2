//! `Disk`: what one negotiated export serves (a read-only base or a read-write overlay),
//! with the blocking I/O operations the transmission phase runs on the blocking pool.

use std::io;
use std::sync::Arc;

use crate::overlay::{file_extents, pread_full, Overlay};
use crate::proto::{STATE_HOLE, STATE_ZERO};
use crate::store::BaseImage;

/// An opened export.
#[derive(Clone)]
pub enum Disk {
    Base(Arc<BaseImage>),
    Overlay(Arc<Overlay>),
}

fn read_only() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

impl Disk {
    pub fn size(&self) -> u64 {
        match self {
            Disk::Base(b) => b.size,
            Disk::Overlay(o) => o.size(),
        }
    }

    pub fn read_only(&self) -> bool {
        matches!(self, Disk::Base(_))
    }

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

    pub fn write_at(&self, buf: &[u8], off: u64, fua: bool) -> io::Result<()> {
        match self {
            Disk::Base(_) => Err(read_only()),
            Disk::Overlay(o) => o.write_at(buf, off, fua),
        }
    }

    pub fn zero_at(&self, off: u64, len: u64, no_hole: bool, fua: bool) -> io::Result<()> {
        match self {
            Disk::Base(_) => Err(read_only()),
            Disk::Overlay(o) => o.zero_at(off, len, no_hole, fua),
        }
    }

    pub fn flush(&self) -> io::Result<()> {
        match self {
            Disk::Base(_) => Ok(()),
            Disk::Overlay(o) => o.flush(),
        }
    }

    /// `base:allocation` extents of [off, off+len) as (length, flags).
    pub fn extents(&self, off: u64, len: u64) -> Vec<(u64, u32)> {
        match self {
            Disk::Overlay(o) => o.extents(off, len),
            Disk::Base(b) => {
                let mut tmp = Vec::new();
                file_extents(&b.file, off, len, &mut tmp);
                tmp.into_iter()
                    .map(|(l, hole)| (l, if hole { STATE_HOLE | STATE_ZERO } else { 0 }))
                    .collect()
            }
        }
    }
}
