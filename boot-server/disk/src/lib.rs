//! boot-disk: the virtual-disk store shared by the block protocol servers (NBD now,
//! iSCSI later). It owns read-only raw base images, per-node copy-on-write overlays
//! and their snapshots, and the overlay on-disk format with its durability rules.
//!
//! * [`store`]: [`DiskStore`], the directory of bases and overlays and the registry
//!   that makes every connection to one overlay share one open [`Overlay`] (blocking
//!   calls: from async code run them with `tokio::task::spawn_blocking`).
//! * [`overlay`]: the overlay format (a sparse `data` file plus a one-byte-per-chunk
//!   `map`), copy-up, and flush (data `fdatasync`ed before the map entries that point
//!   at it; a failed sync poisons flushes until the data is durable again).
//! * [`disk`]: [`Disk`], what one opened export serves, with the blocking I/O calls.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use boot_disk::DiskStore;
//! let store = DiskStore::open("/var/lib/boot/disks".as_ref())?;
//! store.create_base_from_file("debian12", "/tmp/debian.qcow2".as_ref())?;
//! store.create_overlay("rack1-node7", "debian12")?;
//! let ov = store.open_overlay("rack1-node7")?;
//! ov.write_at(b"hello", 0, false)?;
//! ov.flush()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod disk;
pub mod overlay;
pub mod store;

pub use disk::Disk;
pub use overlay::Overlay;
pub use store::{valid_name, BaseImage, BaseInfo, DiskStore, OverlayInfo};
