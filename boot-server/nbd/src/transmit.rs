//! Transmission phase, in nbdkit's "parallel" model: after the (async) handshake the
//! socket is handed to a small set of worker threads per connection. Each worker takes
//! the reader lock, reads one request (and its WRITE payload), releases it, executes the
//! request with plain blocking I/O into its own reusable buffer, and writes the reply
//! under the writer lock. No task hops per request; replies go out in completion order
//! matched by cookie. Threads per connection and the large WRITE buffers across all
//! connections are bounded by the server's `NbdLimits` (see `conns`).
//! Simple replies unless the client negotiated structured replies.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::conns::{BudgetGuard, Ticket, SMALL_BUF};
use crate::handshake::{Negotiated, ALLOC_CONTEXT_ID, MAX_PAYLOAD};
use crate::proto::*;
use crate::stats::NbdStats;
use boot_disk::Disk;

/// A client that accepts no reply bytes for this long is cut off (it would otherwise
/// pin its workers and their buffers).
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most extents returned by one BLOCK_STATUS.
const MAX_EXTENTS: usize = 4096;

fn errno(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::EPERM) => EPERM,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ENOSPC,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EINVAL) => EINVAL,
        _ => EIO,
    }
}

/// What a worker sends back.
enum Out {
    /// The first n bytes of the worker's buffer.
    Buf(usize),
    Small(Vec<u8>),
    /// Reply header, then the export's bytes [off, off+len) sent with sendfile(2).
    Sendfile(Vec<u8>, u64, u64),
}

/// READs at least this long are sent with sendfile(2) (one copy less than pread+write).
const SENDFILE_MIN: usize = 64 * 1024;
static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// send(2) with MSG_MORE so the header shares a segment with the data after it.
fn send_more(sock: &TcpStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        // SAFETY: `sock` keeps the fd open; the pointer and length come from
        // the live slice `b`, which send(2) only reads.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                b.as_ptr().cast(),
                b.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        b = &b[n as usize..];
    }
    Ok(())
}

/// sendfile(2) of [off, end) of `f`; zeros past end of file.
fn send_file(sock: &mut TcpStream, f: &std::fs::File, mut off: u64, end: u64) -> io::Result<()> {
    while off < end {
        let mut o = off as libc::off_t;
        let want = (end - off).min(1 << 30) as usize;
        // SAFETY: valid fds; `o` is a local offset, the file position is not used.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), f.as_raw_fd(), &mut o, want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // Past end of file: the rest reads as zeros.
            return send_zeros(sock, end - off);
        }
        off += n as u64;
    }
    Ok(())
}

fn send_zeros(sock: &mut TcpStream, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        sock.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

struct Conn {
    disk: Disk,
    structured: bool,
    meta_alloc: bool,
    stats: std::sync::Arc<NbdStats>,
}

impl Conn {
    fn error_reply(&self, cookie: u64, err: u32) -> Vec<u8> {
        if self.structured {
            let mut v = structured_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6).to_vec();
            v.extend_from_slice(&err.to_be_bytes());
            v.extend_from_slice(&0u16.to_be_bytes());
            v
        } else {
            simple_reply(err, cookie).to_vec()
        }
    }

    fn ok_reply(&self, cookie: u64) -> Vec<u8> {
        if self.structured {
            structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0).to_vec()
        } else {
            simple_reply(0, cookie).to_vec()
        }
    }

    fn status(&self, cookie: u64, r: io::Result<()>) -> Vec<u8> {
        match r {
            Ok(()) => self.ok_reply(cookie),
            Err(e) => {
                NbdStats::add(&self.stats.errors, 1);
                tracing::warn!("I/O error: {e}");
                self.error_reply(cookie, errno(&e))
            }
        }
    }

    fn block_status(&self, req: &Request) -> Vec<u8> {
        let mut ext = self.disk.extents(req.offset, u64::from(req.length));
        let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_EXTENTS
        };
        ext.truncate(max);
        let mut v = structured_header(
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            req.cookie,
            4 + 8 * ext.len() as u32,
        )
        .to_vec();
        v.extend_from_slice(&ALLOC_CONTEXT_ID.to_be_bytes());
        for (l, hole) in ext {
            let f = if hole { STATE_HOLE | STATE_ZERO } else { 0 };
            v.extend_from_slice(&(l as u32).to_be_bytes());
            v.extend_from_slice(&f.to_be_bytes());
        }
        v
    }

    /// Builds a READ reply in `buf`; returns what to send.
    fn read(&self, req: &Request, buf: &mut Vec<u8>) -> Out {
        let len = req.length as usize;
        if len == 0 {
            return Out::Small(self.ok_reply(req.cookie));
        }
        let hdr = if self.structured { 28 } else { 16 };
        if len >= SENDFILE_MIN {
            // Header now, data straight from the page cache at send time.
            let mut h = Vec::with_capacity(28);
            if self.structured {
                h.extend_from_slice(&structured_header(
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_DATA,
                    req.cookie,
                    8 + req.length,
                ));
                h.extend_from_slice(&req.offset.to_be_bytes());
            } else {
                h.extend_from_slice(&simple_reply(0, req.cookie));
            }
            return Out::Sendfile(h, req.offset, u64::from(req.length));
        }
        if buf.len() < hdr + len {
            buf.resize(hdr + len, 0);
        }
        if self.structured {
            let h = structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                8 + req.length,
            );
            buf[..20].copy_from_slice(&h);
            buf[20..28].copy_from_slice(&req.offset.to_be_bytes());
        } else {
            buf[..16].copy_from_slice(&simple_reply(0, req.cookie));
        }
        match self.disk.read_at(&mut buf[hdr..hdr + len], req.offset) {
            Ok(()) => Out::Buf(hdr + len),
            Err(e) => {
                NbdStats::add(&self.stats.errors, 1);
                tracing::warn!("read error: {e}");
                Out::Small(self.error_reply(req.cookie, errno(&e)))
            }
        }
    }

    /// Runs one validated request; a WRITE's payload is in `buf`.
    fn execute(&self, req: &Request, buf: &mut Vec<u8>) -> Out {
        let c = req.cookie;
        let r = match req.command {
            Command::Read => return self.read(req, buf),
            Command::Write => {
                let len = req.length as usize;
                self.status(c, self.disk.write_at(&buf[..len], req.offset, req.fua()))
            }
            Command::Flush => self.status(c, self.disk.flush()),
            Command::Trim => self.status(
                c,
                self.disk
                    .zero_at(req.offset, u64::from(req.length), false, req.fua()),
            ),
            Command::WriteZeroes => self.status(
                c,
                self.disk.zero_at(
                    req.offset,
                    u64::from(req.length),
                    req.flags & CMD_FLAG_NO_HOLE != 0,
                    req.fua(),
                ),
            ),
            Command::Cache => self.ok_reply(c),
            Command::BlockStatus => self.block_status(req),
            Command::Disc | Command::Unknown(_) => self.error_reply(c, EINVAL),
        };
        Out::Small(r)
    }

    /// Checks a request before execution: Some(errno) to refuse it.
    fn validate(&self, req: &Request) -> Option<u32> {
        if req.flags & !CMD_FLAGS_KNOWN != 0 {
            return Some(EINVAL);
        }
        let in_bounds = req
            .offset
            .checked_add(u64::from(req.length))
            .is_some_and(|e| e <= self.disk.size());
        let too_big = if self.structured { EOVERFLOW } else { EINVAL };
        match req.command {
            Command::Read | Command::Cache => {
                if req.command == Command::Read && req.length > MAX_PAYLOAD {
                    return Some(too_big);
                }
                (!in_bounds).then_some(EINVAL)
            }
            Command::Write | Command::Trim | Command::WriteZeroes => {
                if self.disk.read_only() {
                    Some(EPERM)
                } else if req.command == Command::Write && req.length > MAX_PAYLOAD {
                    Some(too_big)
                } else if !in_bounds {
                    Some(ENOSPC)
                } else {
                    None
                }
            }
            Command::Flush => None,
            Command::BlockStatus => {
                if !self.meta_alloc || req.length == 0 || !in_bounds {
                    Some(EINVAL)
                } else {
                    None
                }
            }
            Command::Disc => None,
            Command::Unknown(_) => Some(EINVAL),
        }
    }
}

/// Serves requests until the client disconnects (or the connection is revoked).
pub(crate) async fn serve(
    stream: tokio::net::TcpStream,
    neg: Negotiated,
    ticket: Ticket,
) -> Result<()> {
    let sock = stream.into_std().context("detach socket")?;
    sock.set_nonblocking(false)?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nbd-conn".into())
        .spawn(move || {
            let r = serve_blocking(sock, neg, &ticket);
            drop(ticket);
            let _ = tx.send(r);
        })
        .context("spawn connection thread")?;
    rx.await.context("connection thread vanished")?
}

struct Shared<'t> {
    ticket: &'t Ticket,
    conn: Conn,
    reader: Mutex<BufReader<TcpStream>>,
    writer: Mutex<TcpStream>,
    sock: TcpStream,
    stop: AtomicBool,
}

impl Shared<'_> {
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

fn serve_blocking(sock: TcpStream, neg: Negotiated, ticket: &Ticket) -> Result<()> {
    let workers = ticket.workers();
    let shared = Shared {
        ticket,
        conn: Conn {
            disk: neg.disk,
            structured: neg.structured,
            meta_alloc: neg.meta_alloc,
            stats: ticket.registry().stats().clone(),
        },
        reader: Mutex::new(BufReader::with_capacity(128 * 1024, sock.try_clone()?)),
        writer: Mutex::new(sock.try_clone()?),
        sock,
        stop: AtomicBool::new(false),
    };
    let shared = &shared;
    let mut result = Ok(());
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let h = std::thread::Builder::new()
                .name("nbd-worker".into())
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    let r = worker(shared);
                    if r.is_err() {
                        shared.halt();
                    }
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.halt();
                    tracing::error!("spawn NBD worker: {e}");
                    break;
                }
            }
        }
        for h in handles {
            match h.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(_) => result = Err(anyhow::anyhow!("NBD worker panicked")),
            }
        }
    });
    let _ = shared.sock.shutdown(Shutdown::Both);
    if let Err(e) = shared.conn.disk.flush() {
        tracing::warn!("flush at disconnect: {e}");
    }
    result
}

/// What the reader lock yields.
enum Next<'a> {
    /// A request to run, with the buffer budget its WRITE payload holds.
    Run(Request, Option<BudgetGuard<'a>>),
    Refuse(Request, u32),
    Stop,
}

fn read_next<'a>(sh: &'a Shared<'_>, buf: &mut Vec<u8>) -> Result<Next<'a>> {
    let mut rd = sh.reader.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if sh.stop.load(Ordering::SeqCst) {
        return Ok(Next::Stop);
    }
    let mut hdr = [0u8; REQUEST_LEN];
    match rd.read_exact(&mut hdr) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            sh.stop.store(true, Ordering::SeqCst);
            return Ok(Next::Stop);
        }
        Err(e) => {
            if sh.stop.load(Ordering::SeqCst) {
                return Ok(Next::Stop);
            }
            return Err(e).context("read request");
        }
    }
    let stats = sh.ticket.registry().stats();
    let req = match parse_request(&hdr) {
        Ok(r) => r,
        Err(e) => {
            NbdStats::add(&stats.malformed, 1);
            return Err(e).context("bad request");
        }
    };
    if req.command == Command::Disc {
        // Workers still executing finish and send their replies.
        sh.stop.store(true, Ordering::SeqCst);
        return Ok(Next::Stop);
    }
    if let Some(err) = sh.conn.validate(&req) {
        if req.command == Command::Write {
            // Skip the payload so the stream stays in sync.
            let n = io::copy(&mut (&mut *rd).take(u64::from(req.length)), &mut io::sink())?;
            if n != u64::from(req.length) {
                sh.stop.store(true, Ordering::SeqCst);
                return Ok(Next::Stop);
            }
        }
        return Ok(Next::Refuse(req, err));
    }
    let mut budget = None;
    if req.command == Command::Write {
        let len = req.length as usize;
        if len > SMALL_BUF {
            // Waits (holding the reader: backpressure on this client) while other
            // connections hold the large-buffer budget.
            budget = Some(sh.ticket.registry().buffers().acquire(len));
        }
        if buf.len() < len {
            buf.resize(len, 0);
        }
        rd.read_exact(&mut buf[..len]).context("write payload")?;
        NbdStats::add(&stats.bytes_written, len as u64);
    }
    Ok(Next::Run(req, budget))
}

fn worker(sh: &Shared<'_>) -> Result<()> {
    let stats = sh.ticket.registry().stats();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut budget = None;
        let out = match read_next(sh, &mut buf)? {
            Next::Stop => return Ok(()),
            Next::Refuse(req, err) => {
                NbdStats::add(&stats.errors, 1);
                tracing::debug!(?req, err, "request refused");
                Out::Small(sh.conn.error_reply(req.cookie, err))
            }
            Next::Run(req, b) => {
                budget = b;
                let counter = match req.command {
                    Command::Read => &stats.reads,
                    Command::Write => &stats.writes,
                    _ => &stats.other_requests,
                };
                NbdStats::add(counter, 1);
                let out = sh.conn.execute(&req, &mut buf);
                if req.command == Command::Read && !matches!(out, Out::Small(_)) {
                    NbdStats::add(&stats.bytes_read, u64::from(req.length));
                }
                out
            }
        };
        let mut w = sh.writer.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        match &out {
            Out::Buf(n) => w.write_all(&buf[..*n]).context("send reply")?,
            Out::Small(v) => w.write_all(v).context("send reply")?,
            Out::Sendfile(h, off, len) => {
                send_more(&w, h).context("send reply header")?;
                for (src, a, b) in sh.conn.disk.read_plan(*off, *len) {
                    match src {
                        Some(f) => send_file(&mut w, f, a, b),
                        None => send_zeros(&mut w, b - a),
                    }
                    .context("send read data")?;
                }
            }
        }
        drop(w);
        // Large buffers are only lent by the budget for one request.
        if buf.len() > SMALL_BUF {
            buf = Vec::new();
        }
        drop(budget);
    }
}
