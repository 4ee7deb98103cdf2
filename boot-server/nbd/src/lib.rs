//! boot-nbd: NBD server (fixed newstyle, structured replies, `base:allocation`) that
//! exports read-only raw base images and per-node copy-on-write overlays with cheap
//! snapshots.
//!
//! The storage (bases, overlays, snapshots, durability) lives in the `boot-disk` crate,
//! re-exported here as `boot_nbd::{DiskStore, ...}` for integrators.
//!
//! * `proto`: wire constants and the panic-free parsers (`parse_request`, `parse_option`).
//! * `handshake`: option haggling; `transmit`: worker threads per connection serving
//!   pipelined requests; `server`: `NbdServer` and the `ExportResolver` seam.
//! * `conns`: admission limits ([`NbdLimits`]) and the open-connection table behind
//!   [`NbdHandle`] (`revoke(overlay)` closes every connection serving it at once).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use boot_nbd::{AllowAllResolver, DiskStore, NbdLimits, NbdServer};
//! let store = Arc::new(DiskStore::open("/var/lib/boot/disks".as_ref())?);
//! store.create_base_from_file("debian12", "/tmp/debian.qcow2".as_ref())?;
//! store.create_overlay("rack1-node7", "debian12")?;
//! let limits = NbdLimits { max_connections_per_ip: 8, ..NbdLimits::default() };
//! let server = NbdServer::bind_with_limits("0.0.0.0:10809".parse()?, store.clone(),
//!     Arc::new(AllowAllResolver(store)), limits).await?;
//! let handle = server.handle();
//! tokio::spawn(server.run());
//! // Later, when rack1-node7's disk is detached (after the resolver stopped naming it):
//! let cut = handle.revoke("rack1-node7");
//! handle.wait_closed("rack1-node7", std::time::Duration::from_secs(10)).await;
//! # let _ = cut; Ok(())
//! # }
//! ```

pub mod conns;
pub mod handshake;
pub mod proto;
pub mod server;
pub mod stats;
pub mod transmit;

pub use boot_disk::{BaseInfo, Disk, DiskStore, OverlayInfo};

pub use conns::{NbdHandle, NbdLimits};
pub use proto::{
    parse_go, parse_meta_context, parse_option, parse_request, ClientOption, Command, ParseError,
    Request,
};
pub use server::{fingerprint, AllowAllResolver, ExportResolver, ExportTarget, NbdServer};
pub use stats::NbdStats;
