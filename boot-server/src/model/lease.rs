//! DHCP leases and reservations.

use super::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A DHCP binding. Durable before the ACK that promises it leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    /// The client's MAC.
    pub mac: MacAddr,
    /// The bound address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// When it runs out unless renewed (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// Host name the client sent (option 12), if any.
    pub hostname: Option<String>,
    /// Client identifier (option 61), if the client sent one.
    pub client_id: Option<Vec<u8>>,
}

/// A fixed address (and optional hostname) for one MAC, answered by DHCP in
/// full mode. The engine will move a slot's reservation between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    /// The client's MAC.
    pub mac: MacAddr,
    /// The address it always gets.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// Host name handed out with it (option 12).
    #[serde(default)]
    pub hostname: Option<String>,
}
