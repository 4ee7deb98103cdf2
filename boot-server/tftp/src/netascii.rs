//! Streaming netascii (RFC 764 as used by RFC 1350): LF -> CR LF, bare
//! CR -> CR NUL, converted on the fly with bounded memory.
//!
//! The converted size (for `tsize` and for knowing the last block) is found
//! by a first streaming pass that counts CR and LF bytes, cached per file
//! version and run one at a time ([`converted_len_cached`]). Blocks are then
//! converted chunk by chunk; the buffer keeps the current window (plus one
//! block) behind the requested block so a window rewind is served from
//! memory. A rewind further back than that (which the transfer never asks
//! for) restarts the conversion from the start of the file: slow but
//! correct, and still bounded.
//!
//! Memory per transfer: at most about `window_bytes + blksize + 3 * RAW_CHUNK`,
//! whatever the file size. Reads start at one window and grow with the bytes
//! already sent (up to [`RAW_CHUNK`]), so a transfer stalled at its first
//! block (a flooder that never ACKs) holds only a few KiB.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Mutex, PoisonError};

/// Largest raw read (and conversion) per read call.
pub const RAW_CHUNK: usize = 64 * 1024;

/// Read size of the counting pass.
const COUNT_CHUNK: usize = 16 * 1024;

/// Appends the netascii form of `raw` to `out`.
pub fn convert_into(raw: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw.len() + raw.len() / 8);
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(if rest[i] == b'\n' { b"\r\n" } else { b"\r\0" });
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// RFC 764 netascii of a whole buffer (for small inputs and tests).
pub fn to_netascii(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    convert_into(raw, &mut out);
    out
}

/// Reads `buf.len()` bytes at `off` (short only at end of file).
fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], off + filled as u64) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Converted sizes already computed, by (device, inode, size, mtime). Held
/// locked during a counting pass: passes run one at a time, so a flood of
/// netascii requests costs at most one core and one pass per file version,
/// not one full read of the file per request.
static LEN_CACHE: Mutex<Option<HashMap<FileVersion, u64>>> = Mutex::new(None);

/// (device, inode, size, mtime seconds, mtime nanoseconds).
type FileVersion = (u64, u64, u64, i64, i64);

/// Entries kept before the cache is emptied.
const LEN_CACHE_MAX: usize = 256;

/// [`converted_len`] through the cache (the file's current metadata is the key).
pub fn converted_len_cached(file: &File, raw_len: u64) -> io::Result<u64> {
    let m = file.metadata()?;
    let key = (m.dev(), m.ino(), raw_len, m.mtime(), m.mtime_nsec());
    let mut cache = LEN_CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(&n) = cache.get(&key) {
        return Ok(n);
    }
    let n = converted_len(file, raw_len)?;
    if cache.len() >= LEN_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, n);
    Ok(n)
}

/// Size of the netascii form of the first `raw_len` bytes of `file`, by one
/// streaming pass.
pub fn converted_len(file: &File, raw_len: u64) -> io::Result<u64> {
    let mut chunk = vec![0u8; COUNT_CHUNK];
    let mut off = 0u64;
    let mut extra = 0u64;
    while off < raw_len {
        let want = (raw_len - off).min(COUNT_CHUNK as u64) as usize;
        let n = read_full_at(file, &mut chunk[..want], off)?;
        if n == 0 {
            return Err(shrank());
        }
        extra += chunk[..n]
            .iter()
            .filter(|&&b| b == b'\n' || b == b'\r')
            .count() as u64;
        off += n as u64;
    }
    Ok(raw_len + extra)
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file shrank during the transfer",
    )
}

/// On-the-fly converter over an open file.
pub struct NetasciiStream {
    file: File,
    raw_len: u64,
    /// Next raw offset to convert.
    raw_pos: u64,
    /// Read scratch buffer (grows up to RAW_CHUNK).
    raw: Vec<u8>,
    /// Converted bytes; `buf[0]` is converted offset `buf_off`.
    buf: Vec<u8>,
    buf_off: u64,
}

impl NetasciiStream {
    /// A stream over `file`, whose unconverted size is `raw_len` bytes.
    pub fn new(file: File, raw_len: u64) -> NetasciiStream {
        NetasciiStream {
            file,
            raw_len,
            raw_pos: 0,
            raw: Vec::new(),
            buf: Vec::new(),
            buf_off: 0,
        }
    }

    /// Converted bytes `start..end`; keeps `keep_behind` bytes before `start`
    /// for a later rewind.
    pub fn range(&mut self, start: u64, end: u64, keep_behind: usize) -> io::Result<&[u8]> {
        if start < self.buf_off {
            // Further back than we kept: convert again from the beginning.
            self.raw_pos = 0;
            self.buf.clear();
            self.buf_off = 0;
        }
        let keep_from = start.saturating_sub(keep_behind as u64);
        while self.buf_off + (self.buf.len() as u64) < end {
            // Drop what no block can need any more before growing the buffer.
            if keep_from > self.buf_off {
                let drop = (keep_from - self.buf_off).min(self.buf.len() as u64);
                self.buf.drain(..drop as usize);
                self.buf_off += drop;
            }
            if self.raw_pos >= self.raw_len {
                return Err(shrank());
            }
            // At least what the request lacks; more as the transfer proves live.
            let lacking = end - (self.buf_off + self.buf.len() as u64);
            let chunk = start.max(lacking).clamp(512, RAW_CHUNK as u64) as usize;
            if self.raw.len() < chunk {
                self.raw.resize(chunk, 0);
            }
            let want = (self.raw_len - self.raw_pos).min(chunk as u64) as usize;
            let n = read_full_at(&self.file, &mut self.raw[..want], self.raw_pos)?;
            if n == 0 {
                return Err(shrank());
            }
            self.raw_pos += n as u64;
            convert_into(&self.raw[..n], &mut self.buf);
        }
        let s = (start - self.buf_off) as usize;
        let e = (end - self.buf_off) as usize;
        Ok(&self.buf[s..e])
    }

    /// Bytes held in memory now (for tests).
    pub fn buffered(&self) -> usize {
        self.buf.capacity() + self.raw.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(to_netascii(b""), b"");
        assert_eq!(to_netascii(b"\n\n"), b"\r\n\r\n");
    }

    /// Many CR/LF, several chunks long.
    fn sample(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 8 {
                    0 => b'\n',
                    1 => b'\r',
                    _ => (x >> 8) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn stream_matches_whole_conversion_with_rewinds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let raw = sample(RAW_CHUNK * 3 + 777);
        std::fs::write(&p, &raw).unwrap();
        let want = to_netascii(&raw);
        let f = File::open(&p).unwrap();
        assert_eq!(
            converted_len(&f, raw.len() as u64).unwrap(),
            want.len() as u64
        );
        let mut s = NetasciiStream::new(f, raw.len() as u64);
        let bs = 1468u64;
        let window = 4 * bs as usize;
        let len = want.len() as u64;
        let blk = |i: u64| ((i - 1) * bs).min(len)..(i * bs).min(len);
        let mut got = Vec::new();
        let last = len / bs + 1;
        let mut i = 1;
        while i <= last {
            let r = blk(i);
            got.extend_from_slice(s.range(r.start, r.end, window).unwrap());
            // Every 7th block, rewind a window and check the resent blocks.
            if i % 7 == 0 && i > 4 {
                for j in i - 3..=i {
                    let r = blk(j);
                    assert_eq!(
                        s.range(r.start, r.end, window).unwrap(),
                        &want[r.start as usize..r.end as usize]
                    );
                }
            }
            assert!(s.buffered() <= 2 * (window + bs as usize + 3 * RAW_CHUNK));
            i += 1;
        }
        assert!(got == want, "streamed conversion differs");
        // A rewind to the very start restarts the conversion, with small reads.
        let mut fresh = NetasciiStream::new(File::open(&p).unwrap(), raw.len() as u64);
        assert_eq!(fresh.range(0, bs, window).unwrap(), &want[..bs as usize]);
        assert!(fresh.buffered() < 16 * 1024, "{}", fresh.buffered());
        assert_eq!(s.range(0, 10, window).unwrap(), &want[..10]);
    }

    #[test]
    fn shrunk_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, b"abc\n").unwrap();
        let f = File::open(&p).unwrap();
        let mut s = NetasciiStream::new(f, 100);
        assert!(s.range(0, 50, 0).is_err());
    }
}
