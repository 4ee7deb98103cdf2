//! The bytes a transfer sends: a file read through a read-ahead buffer
//! (positioned reads, so a retransmission after a window rewind costs at most
//! one re-read), or, for netascii, converted on the fly with bounded memory
//! (see [`crate::netascii`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::netascii::{converted_len_cached, NetasciiStream};
use crate::packet::Mode;

/// Largest read-ahead chunk: 256 KiB (about 178 blocks of 1468 bytes per
/// read call), reached once 256 KiB have been sent.
pub const READ_AHEAD: usize = 256 * 1024;

/// Source of the blocks of one transfer.
pub struct Source {
    inner: Inner,
    len: u64,
}

enum Inner {
    File {
        file: File,
        buf: Vec<u8>,
        /// File offset of `buf[0]`.
        buf_off: u64,
        /// Valid bytes in `buf`.
        buf_len: usize,
    },
    Netascii(NetasciiStream),
    Memory(Vec<u8>),
}

impl Source {
    /// Opens `path` for sending in `mode` (octet or netascii).
    pub fn open(path: &Path, mode: Mode) -> io::Result<Source> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if mode == Mode::Netascii {
            let converted = converted_len_cached(&file, len)?;
            return Ok(Source {
                inner: Inner::Netascii(NetasciiStream::new(file, len)),
                len: converted,
            });
        }
        Ok(Source {
            inner: Inner::File {
                file,
                buf: Vec::new(),
                buf_off: 0,
                buf_len: 0,
            },
            len,
        })
    }

    /// A source over bytes already in memory.
    pub fn memory(data: Vec<u8>) -> Source {
        Source {
            len: data.len() as u64,
            inner: Inner::Memory(data),
        }
    }

    /// Total bytes to send.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file has no bytes to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of 1-based block `idx` (shorter for the last block, empty for the
    /// terminating block of a file whose size is a multiple of `blksize`).
    /// `window_bytes` sizes the read-ahead so a whole window stays in memory.
    pub fn block(&mut self, idx: u64, blksize: usize, window_bytes: usize) -> io::Result<&[u8]> {
        let start = (idx.saturating_sub(1))
            .saturating_mul(blksize as u64)
            .min(self.len);
        let end = start.saturating_add(blksize as u64).min(self.len);
        let want = (end - start) as usize;
        match &mut self.inner {
            Inner::Memory(data) => Ok(&data[start as usize..end as usize]),
            Inner::Netascii(stream) => stream.range(start, end, window_bytes.max(blksize)),
            Inner::File {
                file,
                buf,
                buf_off,
                buf_len,
            } => {
                let have = start >= *buf_off && end <= *buf_off + *buf_len as u64;
                if !have {
                    // One window at first, growing with the bytes already
                    // sent up to READ_AHEAD: a transfer stalled at its first
                    // block (a flooder that never ACKs) holds one window.
                    let first = window_bytes.max(blksize);
                    let cap = (start.min(READ_AHEAD as u64) as usize).max(first);
                    if buf.len() < cap {
                        buf.resize(cap, 0);
                    }
                    let n = ((self.len - start) as usize).min(cap);
                    let mut filled = 0;
                    while filled < n {
                        match file.read_at(&mut buf[filled..n], start + filled as u64) {
                            Ok(0) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "file shrank during the transfer",
                                ))
                            }
                            Ok(k) => filled += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    *buf_off = start;
                    *buf_len = n;
                }
                let s = (start - *buf_off) as usize;
                Ok(&buf[s..s + want])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_from_file_with_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(READ_AHEAD * 2 + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let mut s = Source::open(&p, Mode::Octet).unwrap();
        assert_eq!(s.len(), data.len() as u64);
        let bs = 1000;
        let nblocks = data.len() / bs + 1;
        let mut got = Vec::new();
        for i in 1..=nblocks as u64 {
            got.extend_from_slice(s.block(i, bs, 4 * bs).unwrap());
        }
        assert_eq!(got, data);
        // Going back (window rewind) works.
        assert_eq!(s.block(2, bs, 0).unwrap(), &data[1000..2000]);
        // Block past the end is empty.
        assert!(s.block(nblocks as u64 + 5, bs, 0).unwrap().is_empty());
    }

    #[test]
    fn exact_multiple_has_empty_last_block() {
        let mut s = Source::memory(vec![7; 1024]);
        assert_eq!(s.block(2, 512, 0).unwrap().len(), 512);
        assert_eq!(s.block(3, 512, 0).unwrap().len(), 0);
    }
}
