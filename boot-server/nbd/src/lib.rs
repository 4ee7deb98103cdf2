//! boot-nbd: NBD server (fixed newstyle, structured replies, `base:allocation`) that
//! exports read-only raw base images and per-node copy-on-write overlays with cheap
//! snapshots. See `overlay` for the on-disk format and durability rules, `store` for
//! the directory layout, `server` for the resolver seam the boot server plugs into.

pub mod disk;
pub mod handshake;
pub mod overlay;
pub mod proto;
pub mod server;
pub mod store;
pub mod transmit;

pub use proto::{
    parse_go, parse_meta_context, parse_option, parse_request, ClientOption, Command, ParseError,
    Request,
};
pub use server::{AllowAllResolver, ExportResolver, ExportTarget, NbdServer};
pub use store::{BaseInfo, DiskStore, OverlayInfo};
