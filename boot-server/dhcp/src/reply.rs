//! Reply building: base reply, subnet options, PXE boot information
//! (zero-wait recipe), proxy offers, NAKs, and RFC 2131 §4.1 destinations.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};

use crate::types::{BootAnswer, SubnetConfig};

/// Option 43 for PXEClient answers, as dnsmasq sends without a menu:
/// 43.6 discovery control = 8 (skip discovery when a filename is present) and
/// 43.10 prompt {timeout 0, "PXE"} (boot at once), then end.
pub(crate) const PXE_VENDOR_OPTS: [u8; 10] = [6, 1, 8, 10, 4, 0, b'P', b'X', b'E', 255];

/// A reply skeleton: BOOTREPLY echoing xid, flags, giaddr, chaddr; options
/// 53 (type) and 54 (server identifier).
pub(crate) fn base(req: &Message, mtype: MessageType, server_ip: Ipv4Addr) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    m.opts_mut().insert(DhcpOption::MessageType(mtype));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server_ip));
    m
}

/// Subnet options (mask, router, DNS, domain, broadcast) and, when
/// `with_lease`, lease time with T1 = 1/2 and T2 = 7/8.
pub(crate) fn add_subnet_opts(m: &mut Message, s: &SubnetConfig, with_lease: bool) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(s.netmask()));
    o.insert(DhcpOption::BroadcastAddr(s.broadcast()));
    if let Some(r) = s.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !s.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
    if let Some(d) = &s.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if with_lease {
        let secs = u32::try_from(s.lease_time.as_secs()).unwrap_or(u32::MAX);
        o.insert(DhcpOption::AddressLeaseTime(secs));
        o.insert(DhcpOption::Renewal(secs / 2));
        o.insert(DhcpOption::Rebinding((secs as u64 * 7 / 8) as u32));
    }
}

fn requested_params(req: &Message) -> &[OptionCode] {
    match req.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(l)) => l,
        _ => &[],
    }
}

/// Put the boot information in a reply: siaddr, the filename NUL-terminated in
/// `file` (option 67 too when asked for, or when it does not fit), option 60,
/// 43 for PXEClient, and the client's option 97 echoed. sname stays empty.
pub(crate) fn add_boot(m: &mut Message, req: &Message, answer: &BootAnswer) {
    m.set_siaddr(answer.next_server);
    let name = answer.filename.as_bytes();
    let fits = name.len() < 128 && !name.contains(&0);
    if fits {
        let mut f = name.to_vec();
        f.push(0);
        m.set_fname(&f);
    }
    let wants_67 = requested_params(req).contains(&OptionCode::BootfileName);
    if !fits || wants_67 {
        m.opts_mut().insert(DhcpOption::BootfileName(name.to_vec()));
    }
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        answer.vendor_class.as_bytes().to_vec(),
    ));
    if answer.vendor_class.starts_with("PXEClient") {
        m.opts_mut()
            .insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTS.to_vec()));
    }
    if let Some(DhcpOption::ClientMachineIdentifier(id)) =
        req.opts().get(OptionCode::ClientMachineIdentifier)
    {
        m.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
}

/// Per-client options: 12 (hostname), 15 (domain, replacing the subnet's)
/// and the advisor's extra options (replacing any of the same code; never
/// 0, 53, 54, 82 or 255, never longer than 255 bytes).
pub(crate) fn add_client_opts(
    m: &mut Message,
    hostname: Option<String>,
    domain: Option<&str>,
    extra: &[(u8, Vec<u8>)],
) {
    if let Some(h) = hostname.filter(|h| !h.is_empty() && h.len() <= 255) {
        m.opts_mut().insert(DhcpOption::Hostname(h));
    }
    if let Some(d) = domain.filter(|d| !d.is_empty() && d.len() <= 255) {
        m.opts_mut().insert(DhcpOption::DomainName(d.to_string()));
    }
    for (code, data) in extra {
        if matches!(code, 0 | 53 | 54 | 82 | 255) || data.len() > 255 {
            tracing::warn!(code, len = data.len(), "extra DHCP option refused");
            continue;
        }
        m.opts_mut().insert(unknown(*code, data.clone()));
    }
}

/// A NAK: no addresses, no options but 53, 54 and a message.
pub(crate) fn nak(req: &Message, server_ip: Ipv4Addr, why: &str) -> Message {
    let mut m = base(req, MessageType::Nak, server_ip);
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    if req.giaddr() != Ipv4Addr::UNSPECIFIED {
        // RFC 2131 §4.3.2: tell the relay to broadcast the NAK.
        m.set_flags(Flags::default().set_broadcast());
    }
    m
}

/// An option as raw code and payload (dhcproto encodes it verbatim).
pub(crate) fn unknown(code: u8, data: Vec<u8>) -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(OptionCode::from(code), data))
}

/// Where a reply on the DHCP port goes (RFC 2131 §4.1). `server_port` is the
/// port relays listen on (67), `client_port` the clients' (68).
///
/// For a client without an address and no broadcast flag, unicast to yiaddr
/// would need an ARP entry we cannot insert; we broadcast instead (as dnsmasq
/// does when it cannot).
pub(crate) fn destination(
    req: &Message,
    is_nak: bool,
    server_port: u16,
    client_port: u16,
) -> SocketAddrV4 {
    if req.giaddr() != Ipv4Addr::UNSPECIFIED {
        return SocketAddrV4::new(req.giaddr(), server_port);
    }
    if !is_nak && req.ciaddr() != Ipv4Addr::UNSPECIFIED {
        return SocketAddrV4::new(req.ciaddr(), client_port);
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, client_port)
}
