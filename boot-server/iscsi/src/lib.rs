//! boot-iscsi: an iSCSI target (RFC 7143) serving the same `boot-disk` store as
//! boot-nbd: read-only bases and per-node copy-on-write overlays, one storage layer,
//! two protocols. Each target has one LUN (0) backed by one disk; FUA writes and
//! SYNCHRONIZE CACHE have the durability of NBD FLUSH (the overlay's flush).
//!
//! * `pdu`: PDU codec, CRC32C digests, text key=value (panic-free, fuzzed).
//! * `login`: security (None, CHAP one-way / mutual) and operational negotiation.
//! * `discovery`: SendTargets.
//! * `session`: the full feature phase of one connection.
//! * `scsi`: the SBC/SPC command set over a `boot_disk::Disk`.
//! * `server`: listener, target table, limits, [`IscsiHandle`] (add/remove/revoke).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use boot_iscsi::{DiskRef, IscsiLimits, IscsiServer, TargetConfig};
//! let store = Arc::new(boot_disk::DiskStore::open("/var/lib/boot/disks".as_ref())?);
//! let server = IscsiServer::bind("0.0.0.0:3260".parse()?, store, IscsiLimits::default()).await?;
//! let handle = server.handle();
//! handle.add_target("iqn.2026-01.boot:node7", TargetConfig {
//!     disk: DiskRef::Overlay("rack1-node7".into()),
//!     allowed_initiator: Some("10.0.0.7".parse()?),
//!     chap: None,
//! })?;
//! tokio::spawn(server.run());
//! // Detach: the target disappears and its sessions are cut.
//! handle.remove_target("iqn.2026-01.boot:node7");
//! # Ok(())
//! # }
//! ```

pub mod discovery;
pub mod login;
pub mod pdu;
pub mod scsi;
pub mod server;
mod session;

pub use login::{Chap, ChapSecret};
pub use server::{
    valid_iqn, DiskRef, IscsiHandle, IscsiLimits, IscsiServer, SessionInfo, TargetConfig,
};
