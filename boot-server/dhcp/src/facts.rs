//! Extraction of [`ClientFacts`] (what the client says about itself) from a
//! decoded request: options 93, 60, 77, 175, 97, 12, 53, 50, ciaddr and giaddr.

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use std::net::Ipv4Addr;

use crate::types::ClientFacts;

/// MAC address from chaddr (zero-padded when hlen < 6).
pub(crate) fn mac_of(msg: &Message) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let c = msg.chaddr();
    let n = c.len().min(6);
    mac[..n].copy_from_slice(&c[..n]);
    mac
}

/// Format a 16-byte GUID as the canonical SMBIOS UUID string: the first three
/// fields are little-endian on the wire.
pub fn format_uuid(g: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

/// Whether option 77 says "iPXE" (raw, or RFC 3004 length-prefixed).
fn user_class_is_ipxe(uc: &[u8]) -> bool {
    uc == b"iPXE" || (uc.len() == 5 && uc[0] == 4 && &uc[1..] == b"iPXE")
}

/// Build the facts the boot advisor sees.
pub fn client_facts(msg: &Message) -> ClientFacts {
    let opts = msg.opts();
    let client_arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    };
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => Some(v.clone()),
        _ => None,
    };
    let has_175 = opts.get(OptionCode::from(175u8)).is_some();
    let is_ipxe = has_175 || user_class.as_deref().is_some_and(user_class_is_ipxe);
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(v)) if v.len() == 17 && v[0] == 0 => {
            let mut g = [0u8; 16];
            g.copy_from_slice(&v[1..]);
            Some(format_uuid(&g))
        }
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    };
    let relay = (msg.giaddr() != Ipv4Addr::UNSPECIFIED).then_some(msg.giaddr());
    let ciaddr = (msg.ciaddr() != Ipv4Addr::UNSPECIFIED).then_some(msg.ciaddr());
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    ClientFacts {
        mac: mac_of(msg),
        client_arch,
        vendor_class,
        user_class,
        is_ipxe,
        uuid,
        hostname,
        relay,
        message_type: opts.msg_type(),
        requested_ip,
        ciaddr,
    }
}

/// Whether the client announces itself as a PXE or HTTP boot client (option 60).
pub(crate) fn is_netboot_client(facts: &ClientFacts) -> bool {
    facts
        .vendor_class
        .as_deref()
        .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
}
