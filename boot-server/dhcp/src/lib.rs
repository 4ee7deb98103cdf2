//! boot-dhcp: the DHCPv4 server (full, proxyDHCP, relay, PXE) and the IPv6 Router
//! Advertisement responder of the boot service, as a library.
//!
//! Protocol code only: it parses and answers. What a node boots is asked of a
//! [`BootAdvisor`]; leases are made durable through a [`LeaseStore`]. Both are
//! implemented by the integrator.

mod codec;
mod facts;
mod handler;
mod pool;
mod ra;
mod reply;
mod server;
mod stats;
mod types;

pub use codec::{decode, DecodeError};
pub use facts::{client_facts, format_uuid};
pub use handler::{Handler, Ingress, Outgoing};
pub use ra::{build_ra, RaResponder};
pub use server::DhcpServer;
pub use stats::DhcpStats;
pub use types::*;

/// Re-export of the codec crate, so users see the same `Message` type.
pub use dhcproto;
