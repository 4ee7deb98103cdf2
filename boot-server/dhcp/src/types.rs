//! Public data types and the two traits the integrator implements.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// What the client told us about itself, for the boot decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFacts {
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

/// The boot decision, owned by the integrator.
#[async_trait::async_trait]
pub trait BootAdvisor: Send + Sync + 'static {
    /// None: not a network-boot client or nothing to boot -> plain DHCP answer
    /// (full mode) or silence (proxy mode).
    async fn boot_answer(&self, facts: &ClientFacts) -> Option<BootAnswer>;
}

/// A DHCP binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub expires_at: SystemTime,
    pub hostname: Option<String>,
    pub client_id: Option<Vec<u8>>,
}

/// Durable lease storage, owned by the integrator.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// At start-up.
    async fn load(&self) -> anyhow::Result<Vec<Lease>>;
    /// Returns only when durable; the ACK is sent after.
    async fn commit(&self, lease: &Lease) -> anyhow::Result<()>;
    /// RELEASE / DECLINE / expiry.
    async fn remove(&self, mac: [u8; 6], ip: Ipv4Addr) -> anyhow::Result<()>;
}

/// Full DHCP server or proxyDHCP (boot information only, no addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Proxy,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
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
}

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
        }
    }
}

/// One address pool (full mode).
#[derive(Debug, Clone)]
pub struct SubnetConfig {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// Inclusive range of dynamic addresses.
    pub range: (Ipv4Addr, Ipv4Addr),
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: Duration,
    /// Fixed addresses: (mac, ip). May lie outside `range` but inside the subnet.
    pub reservations: Vec<([u8; 6], Ipv4Addr)>,
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
