//! Public data types and the two traits the integrator implements.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use dhcproto::v4::MessageType;

use crate::reservations::Reservation;

/// What the client told us about itself, for the boot decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFacts {
    /// The client's hardware address (`chaddr`).
    pub mac: [u8; 6],
    /// Option 93 (first entry).
    pub client_arch: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 77 ("iPXE").
    pub user_class: Option<Vec<u8>>,
    /// 77 == "iPXE" or option 175 present.
    pub is_ipxe: bool,
    /// Option 97 (type 0 + GUID) as the canonical SMBIOS UUID string
    /// (first three fields little-endian).
    pub uuid: Option<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// giaddr when relayed.
    pub relay: Option<Ipv4Addr>,
    /// Option 53: what the client is doing (DISCOVER, REQUEST, INFORM...).
    pub message_type: Option<MessageType>,
    /// Option 50 (the address the client asks for), when present.
    pub requested_ip: Option<Ipv4Addr>,
    /// ciaddr when not 0.0.0.0 (the address the client says it has:
    /// RENEWING / REBINDING / INFORM, and PXE REQUESTs on port 4011).
    pub ciaddr: Option<Ipv4Addr>,
}

impl ClientFacts {
    /// The address this exchange shows the client using or about to use:
    /// ciaddr, else option 50. (In full mode the granted address is in the
    /// ACK; in proxy / relay mode this is all the server sees.)
    pub fn observed_ip(&self) -> Option<Ipv4Addr> {
        self.ciaddr.or(self.requested_ip)
    }
}

/// What to put in the reply for booting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootAnswer {
    /// Loader name (TFTP) or URL (HTTP / iPXE script).
    pub filename: String,
    /// siaddr.
    pub next_server: Ipv4Addr,
    /// "PXEClient" or "HTTPClient" (option 60).
    pub vendor_class: &'static str,
}

/// Everything the integrator decides for one client (as Tinkerbell smee's
/// backend returns per hardware).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// None: not a network-boot client or nothing to boot -> plain DHCP
    /// answer (full mode) or silence (proxy mode).
    pub boot: Option<BootAnswer>,
    /// Full mode: this client's address (inside its subnet, may lie outside
    /// the dynamic range). To keep it from other clients, also put it in the
    /// reservation table ([`crate::Reservations`]).
    pub fixed_address: Option<Ipv4Addr>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 15 (overrides the subnet's domain).
    pub domain: Option<String>,
    /// More options, code and payload (at most 255 bytes each; codes 0, 53,
    /// 54, 82 and 255 are ignored).
    pub extra_options: Vec<(u8, Vec<u8>)>,
}

/// The per-client decision, owned by the integrator.
#[async_trait::async_trait]
pub trait BootAdvisor: Send + Sync + 'static {
    /// Called for every DISCOVER, REQUEST and INFORM (and PXE requests on
    /// port 4011) the server answers.
    async fn client_config(&self, facts: &ClientFacts) -> ClientConfig;

    /// Proxy mode: a network-boot client's REQUEST to the other DHCP server
    /// shows the address it is taking (ciaddr, else option 50). The server
    /// does not answer it; this lets the integrator record that address.
    async fn observed(&self, _facts: &ClientFacts) {}
}

/// A DHCP binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// The address bound to it.
    pub ip: Ipv4Addr,
    /// When the binding runs out unless renewed.
    pub expires_at: SystemTime,
    /// Host name the client sent (option 12), if any.
    pub hostname: Option<String>,
    /// Client identifier (option 61), if the client sent one.
    pub client_id: Option<Vec<u8>>,
}

/// A [`LeaseStore::commit`] error saying the address is leased to another
/// MAC (a conflict, not a failure): the client gets a NAK and starts over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("address {0} is leased to another client")]
pub struct AddressTaken(pub Ipv4Addr);

/// In the error chain of [`LeaseStore::allocate`]: the shared store is
/// saturated and shed this DISCOVER before doing any work for it (an OFFER
/// promises nothing; the client sends another). Counted in
/// [`crate::DhcpStats::store_busy`], logged at debug only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease store busy: DISCOVER shed")]
pub struct StoreBusy;

/// Durable lease storage, owned by the integrator.
///
/// Any error is counted ([`crate::DhcpStats::store_errors`]), logged and
/// retried later; the server never ACKs what the store did not confirm.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Whether several servers allocate from this store (then an OFFER's
    /// address comes from [`LeaseStore::allocate`], not the memory pool,
    /// and the memory pool is only this server's cache). Default: no.
    fn shared(&self) -> bool {
        false
    }
    /// Shared store only: an address of `range` for `mac`, held for it
    /// until `hold_until` (the offer) unless it holds it longer already:
    /// its live lease, else the first of `prefer` that is free, else a free
    /// one; never one another MAC holds or is reserved for. `None`: the
    /// range is full.
    async fn allocate(
        &self,
        mac: [u8; 6],
        range: (Ipv4Addr, Ipv4Addr),
        prefer: &[Ipv4Addr],
        hold_until: SystemTime,
    ) -> anyhow::Result<Option<Ipv4Addr>> {
        let _ = (mac, range, prefer, hold_until);
        Ok(None)
    }
    /// At start-up. On error the server retries with backoff and answers no
    /// full-mode request until it succeeds.
    async fn load(&self) -> anyhow::Result<Vec<Lease>>;
    /// Insert or replace `lease.mac`'s lease. Returns only when durable; the
    /// ACK is sent after. Must fail, changing nothing, when `lease.ip` is
    /// held by another MAC whose lease has not expired (with
    /// [`AddressTaken`] in the error chain: the client gets a NAK).
    async fn commit(&self, lease: &Lease) -> anyhow::Result<()>;
    /// RELEASE / DECLINE / freeing an address: delete `mac`'s lease on `ip`
    /// if there is one (Ok when there is none).
    async fn remove(&self, mac: [u8; 6], ip: Ipv4Addr) -> anyhow::Result<()>;
    /// Expiry, as one conditional operation: delete `mac`'s lease on `ip`
    /// only if its stored expiry is at or before `expires_at` (the expiry
    /// the server saw when it found the lease expired).
    /// `Ok(true)`: the store holds no lease of `mac` on `ip` any more
    /// (deleted now, or absent). `Ok(false)`: it holds one expiring later (the
    /// client renewed meanwhile); nothing deleted.
    async fn expire(
        &self,
        mac: [u8; 6],
        ip: Ipv4Addr,
        expires_at: SystemTime,
    ) -> anyhow::Result<bool>;
}

/// Full DHCP server or proxyDHCP (boot information only, no addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hands out addresses and boot information.
    Full,
    /// Only adds boot information to another server's offers (proxyDHCP).
    Proxy,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Full server or proxyDHCP.
    pub mode: Mode,
    /// Bind to this device (SO_BINDTODEVICE) when set.
    pub interface: Option<String>,
    /// Our address on that link (option 54, siaddr).
    pub server_ip: Ipv4Addr,
    /// Full mode: the pools.
    pub subnets: Vec<SubnetConfig>,
    /// 67 by default.
    pub listen_port: u16,
    /// 4011 by default; 0 disables the PXE boot-server port.
    pub proxy_port: u16,
    /// Under load, how long datagrams gather between two reads
    /// ([`DEFAULT_COALESCE`]; zero reads at every wake-up).
    pub coalesce: Duration,
    /// Initial content of the live reservation table
    /// ([`crate::DhcpServer::reservations`]).
    pub reservations: Vec<Reservation>,
}

/// Default [`DhcpConfig::coalesce`]. When the socket wakes the server again
/// less than this after the last wake-up, the server sleeps this long first
/// and then takes everything queued in one `recvmmsg`: one wake-up for many
/// datagrams instead of one each (interrupt moderation, in user space). An
/// idle server answers at once; a busy one adds at most this to a reply. At
/// 16,000 exchanges/s, 1 ms cut the CPU per exchange by about 30 % here.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(1);

impl DhcpConfig {
    /// A configuration with the standard ports and no subnets.
    pub fn new(mode: Mode, server_ip: Ipv4Addr) -> Self {
        DhcpConfig {
            mode,
            interface: None,
            server_ip,
            subnets: Vec::new(),
            listen_port: 67,
            proxy_port: 4011,
            coalesce: DEFAULT_COALESCE,
            reservations: Vec::new(),
        }
    }
}

/// One address pool (full mode).
#[derive(Debug, Clone)]
pub struct SubnetConfig {
    /// Network address of the subnet.
    pub network: Ipv4Addr,
    /// Prefix length of the subnet mask.
    pub prefix_len: u8,
    /// Inclusive range of dynamic addresses.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Default gateway (option 3), if any.
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// DNS domain (option 15), if any.
    pub domain: Option<String>,
    /// How long a lease lasts (option 51).
    pub lease_time: Duration,
}

impl SubnetConfig {
    /// Netmask of the subnet.
    pub fn netmask(&self) -> Ipv4Addr {
        let p = self.prefix_len.min(32) as u32;
        let m: u32 = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        Ipv4Addr::from(m)
    }
    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask());
        (u32::from(ip) & m) == (u32::from(self.network) & m)
    }
    /// Whether `ip` lies in the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= u32::from(self.range.0) && v <= u32::from(self.range.1)
    }
    /// Broadcast address of the subnet.
    pub fn broadcast(&self) -> Ipv4Addr {
        let m = u32::from(self.netmask());
        Ipv4Addr::from((u32::from(self.network) & m) | !m)
    }
}
