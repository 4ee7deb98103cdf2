//! Transmission phase: reads pipelined requests, runs each on the blocking pool, and
//! replies in completion order (matched by cookie). Simple replies unless the client
//! negotiated structured replies. Memory is bounded by a per-connection byte budget that
//! every in-flight READ/WRITE holds until its reply has been written.

use std::io;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::disk::Disk;
use crate::handshake::{Negotiated, ALLOC_CONTEXT_ID, MAX_PAYLOAD};
use crate::proto::*;

/// In-flight byte budget per connection, in KiB.
const BUDGET_KIB: u32 = 96 * 1024;
/// Most extents returned by one BLOCK_STATUS.
const MAX_EXTENTS: usize = 4096;

type Reply = (Vec<u8>, Option<OwnedSemaphorePermit>);

fn errno(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::EPERM) => EPERM,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ENOSPC,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EINVAL) => EINVAL,
        _ => EIO,
    }
}

struct Conn {
    disk: Disk,
    structured: bool,
    meta_alloc: bool,
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
                tracing::warn!("I/O error: {e}");
                self.error_reply(cookie, errno(&e))
            }
        }
    }

    fn read(&self, req: &Request) -> Vec<u8> {
        let len = req.length as usize;
        if len == 0 {
            return self.ok_reply(req.cookie);
        }
        let (hdr, mut buf) = if self.structured {
            let mut b = vec![0u8; 28 + len];
            let h = structured_header(
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                8 + req.length,
            );
            b[..20].copy_from_slice(&h);
            b[20..28].copy_from_slice(&req.offset.to_be_bytes());
            (28, b)
        } else {
            let mut b = vec![0u8; 16 + len];
            b[..16].copy_from_slice(&simple_reply(0, req.cookie));
            (16, b)
        };
        match self.disk.read_at(&mut buf[hdr..], req.offset) {
            Ok(()) => buf,
            Err(e) => {
                tracing::warn!("read error: {e}");
                self.error_reply(req.cookie, errno(&e))
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
        for (l, f) in ext {
            v.extend_from_slice(&(l as u32).to_be_bytes());
            v.extend_from_slice(&f.to_be_bytes());
        }
        v
    }

    /// Runs one validated request (blocking).
    fn execute(&self, req: &Request, payload: Vec<u8>) -> Vec<u8> {
        let c = req.cookie;
        match req.command {
            Command::Read => self.read(req),
            Command::Write => self.status(c, self.disk.write_at(&payload, req.offset, req.fua())),
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
        }
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

/// Serves requests until the client disconnects.
pub async fn serve(stream: TcpStream, neg: Negotiated) -> Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let conn = Arc::new(Conn {
        disk: neg.disk,
        structured: neg.structured,
        meta_alloc: neg.meta_alloc,
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(256 * 1024, wr);
        while let Some((buf, permit)) = rx.recv().await {
            w.write_all(&buf).await?;
            drop(permit);
            while let Ok((buf, permit)) = rx.try_recv() {
                w.write_all(&buf).await?;
                drop(permit);
            }
            w.flush().await?;
        }
        w.shutdown().await.ok();
        Ok::<(), io::Error>(())
    });
    let budget = Arc::new(Semaphore::new(BUDGET_KIB as usize));
    let result = read_loop(&mut rd, &conn, &tx, &budget).await;
    // Let in-flight requests finish, then close the writer.
    drop(tx);
    let _ = writer.await;
    let disk = conn.disk.clone();
    let _ = tokio::task::spawn_blocking(move || disk.flush()).await;
    result
}

async fn read_loop(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    conn: &Arc<Conn>,
    tx: &mpsc::UnboundedSender<Reply>,
    budget: &Arc<Semaphore>,
) -> Result<()> {
    let mut hdr = [0u8; REQUEST_LEN];
    loop {
        match rd.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let req = parse_request(&hdr).context("bad request")?;
        if req.command == Command::Disc {
            return Ok(());
        }
        let data_len = matches!(req.command, Command::Read | Command::Write)
            .then_some(req.length.min(MAX_PAYLOAD))
            .unwrap_or(0);
        let permit = budget
            .clone()
            .acquire_many_owned((data_len / 1024).max(1))
            .await
            .context("budget")?;
        if let Some(err) = conn.validate(&req) {
            if req.command == Command::Write {
                // Skip the payload so the stream stays in sync.
                let n = tokio::io::copy(
                    &mut (&mut *rd).take(u64::from(req.length)),
                    &mut tokio::io::sink(),
                )
                .await?;
                if n != u64::from(req.length) {
                    return Ok(());
                }
            }
            tracing::debug!(?req, err, "request refused");
            let _ = tx.send((conn.error_reply(req.cookie, err), Some(permit)));
            continue;
        }
        let mut payload = Vec::new();
        if req.command == Command::Write {
            payload = vec![0u8; req.length as usize];
            rd.read_exact(&mut payload).await.context("write payload")?;
        }
        let conn = conn.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let c = conn.clone();
            let cookie = req.cookie;
            let reply = match tokio::task::spawn_blocking(move || c.execute(&req, payload)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("request task failed: {e}");
                    conn.error_reply(cookie, EIO)
                }
            };
            let _ = tx.send((reply, Some(permit)));
        });
    }
}
