//! DHCP leases and reservations.

use super::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A DHCP binding. Durable before the ACK that promises it leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub expires_at_ms: i64,
    pub hostname: Option<String>,
    pub client_id: Option<Vec<u8>>,
}

/// A fixed address (and optional hostname) for one MAC, answered by DHCP in
/// full mode. The engine will move a slot's reservation between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub hostname: Option<String>,
}
