//! IPv6 Router Advertisement responder: answers every Router Solicitation on
//! one interface with an RA whose M and O flags are clear and router lifetime
//! is 0 (hop limit 255, from the link-local address), so iPXE's IPv6
//! configurator finishes at once instead of timing out.

use std::net::{Ipv6Addr, SocketAddrV6};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ICMPV6_RS: u8 = 133;
const ICMPV6_RA: u8 = 134;

/// The RA responder of one interface.
pub struct RaResponder {
    sock: Socket,
    ifindex: u32,
    interface: String,
    ra: Vec<u8>,
}

/// Build the Router Advertisement: cur hop limit 0 (unspecified), M=O=0,
/// router lifetime 0, reachable/retrans 0, plus the source link-layer address.
pub fn build_ra(mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = vec![ICMPV6_RA, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if let Some(m) = mac {
        p.extend_from_slice(&[1, 1]);
        p.extend_from_slice(&m);
    }
    p
}

fn read_mac(interface: &str) -> Option<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    parts.try_into().ok()
}

impl RaResponder {
    /// Open a raw ICMPv6 socket on `interface` and join ff02::2.
    pub fn bind(interface: &str) -> anyhow::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(interface)
            .with_context(|| format!("interface {interface}"))?;
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .context("raw ICMPv6 socket (needs CAP_NET_RAW)")?;
        s.bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("SO_BINDTODEVICE {interface}"))?;
        s.join_multicast_v6(&ALL_ROUTERS, ifindex)
            .context("joining ff02::2")?;
        s.set_multicast_if_v6(ifindex)?;
        s.set_multicast_hops_v6(255)?;
        s.set_unicast_hops_v6(255)?;
        s.set_multicast_loop_v6(false)?;
        let ra = build_ra(read_mac(interface));
        info!(interface, "router advertisement responder bound");
        Ok(RaResponder {
            sock: s,
            ifindex,
            interface: interface.to_string(),
            ra,
        })
    }

    /// Answer Router Solicitations forever (on a blocking thread: the
    /// traffic is a handful of packets per boot).
    pub async fn run(self) -> anyhow::Result<()> {
        tokio::task::spawn_blocking(move || self.serve_blocking())
            .await
            .context("RA responder thread")?
    }

    fn serve_blocking(self) -> anyhow::Result<()> {
        use std::io::Read;
        let dest: socket2::SockAddr = SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex).into();
        let mut buf = [0u8; 1500];
        loop {
            let n = match (&self.sock).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(interface = %self.interface, "ICMPv6 recv: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            let data = &buf[..n];
            if data.len() < 8 || data[0] != ICMPV6_RS || data[1] != 0 {
                continue;
            }
            debug!(interface = %self.interface, "router solicitation");
            if let Err(e) = self.sock.send_to(&self.ra, &dest) {
                warn!(interface = %self.interface, "sending RA: {e}");
            }
        }
    }
}
