//! boot-dhcp: the DHCPv4 server (full, proxyDHCP, relay, PXE) and the IPv6 Router
//! Advertisement responder of the boot service, as a library.
//!
//! Protocol code only: it parses and answers. What a client gets (boot
//! answer, fixed address, hostname, domain, extra options) is asked of a
//! [`BootAdvisor`] as a [`ClientConfig`]; leases are made durable through a
//! [`LeaseStore`]. Both are implemented by the integrator, who also pushes
//! the live reservation table ([`DhcpServer::reservations`]).
//!
//! Behaviour worth knowing:
//! - **Full mode** allocates per subnet (the advisor's fixed address, the
//!   reservation, the MAC's previous lease, option 50 if free, else the next
//!   free address; never one held by another MAC or reserved for one). An
//!   OFFER only holds the address in memory (60 s); a REQUEST is bound in
//!   memory, then committed through [`LeaseStore::commit`], and the ACK
//!   leaves only after the commit returned. A failed commit means no ACK and
//!   puts the memory pool back exactly as it was (the client's previous,
//!   still-valid binding keeps its address).
//! - **Shared store** ([`LeaseStore::shared`], several servers on one
//!   segment): the store allocates each OFFER's address and holds it for
//!   the client ([`LeaseStore::allocate`], 60 s); the memory pool is this
//!   server's cache, the store's constraints decide, and a commit refused
//!   with [`AddressTaken`] (another server leased it) gets a NAK.
//! - **Store first:** RELEASE, DECLINE and expiry delete in the store before
//!   memory forgets; expiry is one conditional [`LeaseStore::expire`], so a
//!   renewal between the sweep and the delete wins. Store errors are counted
//!   ([`DhcpStats::store_errors`]) and retried; until the leases are loaded
//!   (retried with backoff) full mode answers nothing.
//!   Requests are handled concurrently (in the socket's task), so a store
//!   that batches concurrent commits into one fsync gets group commit.
//! - INIT-REBOOT / RENEWING / REBINDING for an address that is free and in
//!   range is ACKed even without a record (authoritative); wrong network or an
//!   address of another client gets a NAK. DECLINE (only from the MAC that
//!   holds the address; others are counted and ignored) keeps the address
//!   out of the pool for 10 minutes. Expired leases are swept every 30 s.
//! - **Relay:** giaddr selects the subnet, replies go to giaddr:`listen_port`,
//!   option 82 is echoed verbatim (last option).
//! - **Destinations:** giaddr, else ciaddr, else 255.255.255.255:68 (also for
//!   clients without the broadcast flag: no ARP injection). Bind to the
//!   interface (`DhcpConfig::interface`) so broadcasts leave on the right link.
//! - **PXE:** a [`BootAnswer`] puts siaddr, the NUL-terminated filename in
//!   `file` (option 67 too when requested or when longer than 127 bytes),
//!   option 60, option 43 (6=8, prompt 0) for PXEClient and the echoed option
//!   97 into the OFFER/ACK: iPXE then requests at once (no ProxyDHCP wait).
//! - **Proxy mode:** no addresses; PXE/HTTP clients' DISCOVERs get a proxy
//!   OFFER (yiaddr 0) on port 67; REQUESTs on `proxy_port` (4011, also bound
//!   in full mode unless 0) get an ACK with the boot information. Clients
//!   without option 60 PXEClient/HTTPClient are ignored.
//! - **Malformed packets** (truncated, option overruns, lengths dhcproto would
//!   assert on, undecodable options) are counted in
//!   [`DhcpStats::malformed_dropped`] and dropped; BOOTP (no option 53) and
//!   replies are ignored.

pub mod batch;
mod codec;
mod facts;
mod handler;
mod pool;
mod ra;
mod reply;
mod reservations;
mod server;
mod stats;
mod types;

pub use codec::{decode, DecodeError};
pub use facts::{client_facts, format_uuid};
pub use handler::{Handler, Ingress, Outgoing};
pub use ra::{build_ra, RaResponder};
pub use reservations::{Reservation, Reservations};
pub use server::{DhcpControl, DhcpServer};
pub use stats::DhcpStats;
pub use types::*;

/// Re-export of the codec crate, so users see the same `Message` type.
pub use dhcproto;
