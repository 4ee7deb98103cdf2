//! Fixed-newstyle handshake and option haggling: from the greeting to the start of the
//! transmission phase (EXPORT_NAME or GO), asking the `ExportResolver` which export a
//! peer may open.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conns::Ticket;
use crate::proto::*;
use crate::server::{ExportResolver, ExportTarget};
use boot_disk::Disk;
use boot_disk::DiskStore;

/// Largest request payload / read length we accept.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Largest option payload we read; longer ones get NBD_REP_ERR_TOO_BIG.
const MAX_OPTION: u32 = 64 * 1024;
/// Options with payloads up to this size are skipped rather than hung up on.
const MAX_SKIP: u32 = 16 * 1024 * 1024;
/// Context id we hand out for `base:allocation`.
pub const ALLOC_CONTEXT_ID: u32 = 1;

/// Result of a successful handshake.
pub struct Negotiated {
    /// Name of the export the client chose.
    pub export: String,
    /// The disk that export serves.
    pub disk: Disk,
    /// Whether structured replies were negotiated.
    pub structured: bool,
    /// Whether the `base:allocation` meta context was negotiated.
    pub meta_alloc: bool,
}

/// Transmission flags for a disk.
pub fn transmission_flags(disk: &Disk, structured: bool) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_CAN_MULTI_CONN | TF_SEND_CACHE;
    if disk.read_only() {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    if structured {
        f |= TF_SEND_DF;
    }
    f
}

async fn open_target(store: &Arc<DiskStore>, target: ExportTarget) -> Result<Disk> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || match target {
        ExportTarget::Base(n) => store.open_base(&n).map(Disk::Base),
        ExportTarget::Overlay(id) => store.open_overlay(&id).map(Disk::Overlay),
    })
    .await
    .context("open task")?
}

/// Resolves and opens `name` for `peer`, binding the connection to it (refused when
/// the overlay was revoked while we were resolving).
async fn resolve(
    store: &Arc<DiskStore>,
    resolver: &Arc<dyn ExportResolver>,
    name: &str,
    peer: SocketAddr,
    ticket: &Ticket,
) -> Option<Disk> {
    let epoch = ticket.epoch();
    let target = resolver.resolve(name, peer)?;
    let overlay = match &target {
        ExportTarget::Overlay(id) => Some(id.clone()),
        ExportTarget::Base(_) => None,
    };
    let disk = match open_target(store, target).await {
        Ok(d) => d,
        Err(e) => {
            let export = resolver.display_name(name);
            tracing::warn!(%peer, export, "cannot open export: {e:#}");
            return None;
        }
    };
    if !ticket.bind(overlay.as_deref(), epoch) {
        let export = resolver.display_name(name);
        tracing::info!(%peer, export, "export revoked during the handshake");
        return None;
    }
    Some(disk)
}

fn is_alloc_query(q: &str, list: bool) -> bool {
    q == BASE_ALLOCATION || (list && q == "base:")
}

/// Runs the handshake. `Ok(None)`: the client aborted or was refused cleanly.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    peer: SocketAddr,
    store: &Arc<DiskStore>,
    resolver: &Arc<dyn ExportResolver>,
    ticket: &Ticket,
) -> Result<Option<Negotiated>> {
    let mut greet = Vec::with_capacity(18);
    greet.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greet.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greet.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&greet).await?;
    let cflags = s.read_u32().await.context("client flags")?;
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        bail!("unknown client flags {cflags:#x}");
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    // (export name, contexts) negotiated by SET_META_CONTEXT.
    let mut meta: Option<(String, bool)> = None;

    loop {
        let magic = s.read_u64().await.context("option magic")?;
        if magic != IHAVEOPT {
            bail!("bad option magic {magic:#x}");
        }
        let opt = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > MAX_OPTION {
            if opt == OPT_EXPORT_NAME || len > MAX_SKIP {
                bail!("option {opt} payload of {len} bytes is too big");
            }
            tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink()).await?;
            reply(s, opt, REP_ERR_TOO_BIG, b"option too big").await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        let parsed = match parse_option(opt, &data) {
            Ok(p) => p,
            Err(e) if opt == OPT_EXPORT_NAME => bail!("bad NBD_OPT_EXPORT_NAME: {e}"),
            Err(e) => {
                reply(s, opt, REP_ERR_INVALID, e.to_string().as_bytes()).await?;
                continue;
            }
        };
        match parsed {
            ClientOption::ExportName(name) => {
                let Some(disk) = resolve(store, resolver, &name, peer, ticket).await else {
                    let export = resolver.display_name(&name);
                    tracing::info!(%peer, export, "EXPORT_NAME refused");
                    return Ok(None);
                };
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&disk.size().to_be_bytes());
                out.extend_from_slice(&transmission_flags(&disk, structured).to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&out).await?;
                let meta_alloc = matches!(&meta, Some((n, true)) if *n == name);
                return Ok(Some(Negotiated {
                    export: name,
                    disk,
                    structured,
                    meta_alloc,
                }));
            }
            ClientOption::Abort => {
                let _ = reply(s, opt, REP_ACK, &[]).await;
                return Ok(None);
            }
            ClientOption::List => {
                for name in resolver.list(peer) {
                    if name.len() > MAX_STRING {
                        continue;
                    }
                    let mut p = Vec::with_capacity(4 + name.len());
                    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    p.extend_from_slice(name.as_bytes());
                    reply(s, opt, REP_SERVER, &p).await?;
                }
                reply(s, opt, REP_ACK, &[]).await?;
            }
            ClientOption::Info(g) | ClientOption::Go(g) => {
                let Some(disk) = resolve(store, resolver, &g.name, peer, ticket).await else {
                    let export = resolver.display_name(&g.name);
                    tracing::info!(%peer, export, "INFO/GO refused");
                    reply(s, opt, REP_ERR_UNKNOWN, b"unknown export or access denied").await?;
                    continue;
                };
                let mut p = Vec::with_capacity(12);
                p.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                p.extend_from_slice(&disk.size().to_be_bytes());
                p.extend_from_slice(&transmission_flags(&disk, structured).to_be_bytes());
                reply(s, opt, REP_INFO, &p).await?;
                if g.infos.contains(&INFO_NAME) {
                    let mut p = INFO_NAME.to_be_bytes().to_vec();
                    p.extend_from_slice(g.name.as_bytes());
                    reply(s, opt, REP_INFO, &p).await?;
                }
                let mut p = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, MAX_PAYLOAD] {
                    p.extend_from_slice(&v.to_be_bytes());
                }
                reply(s, opt, REP_INFO, &p).await?;
                reply(s, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    let meta_alloc = matches!(&meta, Some((n, true)) if *n == g.name);
                    return Ok(Some(Negotiated {
                        export: g.name,
                        disk,
                        structured,
                        meta_alloc,
                    }));
                }
            }
            ClientOption::StructuredReply => {
                structured = true;
                reply(s, opt, REP_ACK, &[]).await?;
            }
            ClientOption::ListMetaContext(m) | ClientOption::SetMetaContext(m) => {
                let list = opt == OPT_LIST_META_CONTEXT;
                if !structured {
                    reply(
                        s,
                        opt,
                        REP_ERR_INVALID,
                        b"structured replies not negotiated",
                    )
                    .await?;
                    continue;
                }
                if resolver.resolve(&m.export, peer).is_none() {
                    reply(s, opt, REP_ERR_UNKNOWN, b"unknown export or access denied").await?;
                    continue;
                }
                let want = if list && m.queries.is_empty() {
                    true
                } else {
                    m.queries.iter().any(|q| is_alloc_query(q, list))
                };
                if want {
                    let mut p = ALLOC_CONTEXT_ID.to_be_bytes().to_vec();
                    p.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    reply(s, opt, REP_META_CONTEXT, &p).await?;
                }
                if !list {
                    meta = Some((m.export, want));
                }
                reply(s, opt, REP_ACK, &[]).await?;
            }
            ClientOption::Unsupported(o) => {
                reply(s, o, REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    rtype: u32,
    payload: &[u8],
) -> Result<()> {
    s.write_all(&option_reply(opt, rtype, payload)).await?;
    Ok(())
}
