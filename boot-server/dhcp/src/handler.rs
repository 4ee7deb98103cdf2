//! Packet handling, independent of sockets: one request in, at most one reply
//! out. Owns the DHCP lifecycle (DISCOVER/OFFER, REQUEST/ACK/NAK, RELEASE,
//! DECLINE, INFORM), proxyDHCP answers, and the commit-before-ACK rule.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::SystemTime;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use tracing::{debug, info, warn};

use crate::codec::{decode_full, encode_reply, RawOpts};
use crate::facts::{client_facts, is_netboot_client, mac_of};
use crate::pool::Pool;
use crate::reply;
use crate::stats::DhcpStats;
use crate::types::{BootAdvisor, ClientFacts, DhcpConfig, Lease, LeaseStore, Mode};

/// Which port a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// The DHCP server port (67).
    Dhcp,
    /// The PXE boot-server / proxyDHCP port (4011).
    Pxe,
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub packet: Vec<u8>,
    pub dest: SocketAddrV4,
    /// The reply as built (for logs and tests).
    pub message: Message,
}

/// Socket-free DHCP logic.
pub struct Handler {
    config: DhcpConfig,
    advisor: Arc<dyn BootAdvisor>,
    leases: Arc<dyn LeaseStore>,
    pool: Pool,
    stats: Arc<DhcpStats>,
}

fn opt_ip(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(ip)) | Some(DhcpOption::ServerIdentifier(ip)) => {
            Some(*ip)
        }
        _ => None,
    }
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Handler {
    pub fn new(
        config: DhcpConfig,
        advisor: Arc<dyn BootAdvisor>,
        leases: Arc<dyn LeaseStore>,
    ) -> Self {
        let pool = Pool::new(config.subnets.clone());
        Handler {
            config,
            advisor,
            leases,
            pool,
            stats: Arc::new(DhcpStats::default()),
        }
    }

    /// Counters.
    pub fn stats(&self) -> Arc<DhcpStats> {
        self.stats.clone()
    }

    /// Load durable leases into the pool (start-up).
    pub async fn load(&self) -> anyhow::Result<usize> {
        let leases = self.leases.load().await?;
        self.pool.load(&leases);
        Ok(leases.len())
    }

    /// Remove expired leases (memory and store); returns how many.
    pub async fn expire(&self) -> usize {
        let expired = self.pool.expire(SystemTime::now());
        for (mac, ip) in &expired {
            if let Err(e) = self.leases.remove(*mac, *ip).await {
                warn!(mac = %mac_str(mac), %ip, "removing expired lease: {e:#}");
            }
        }
        expired.len()
    }

    fn server_port(&self) -> u16 {
        self.config.listen_port
    }

    fn client_port(&self) -> u16 {
        if self.config.listen_port == 67 {
            68
        } else {
            self.config.listen_port.wrapping_add(1)
        }
    }

    /// Handle one datagram from `src` on `ingress`; the reply, if any.
    pub async fn handle(
        &self,
        packet: &[u8],
        src: SocketAddrV4,
        ingress: Ingress,
    ) -> Option<Outgoing> {
        DhcpStats::inc(&self.stats.received);
        let (msg, raw) = match decode_full(packet) {
            Ok(v) => v,
            Err(e) => {
                DhcpStats::inc(&self.stats.malformed_dropped);
                debug!(%src, "dropping malformed DHCP packet: {e}");
                return None;
            }
        };
        if msg.opcode() != Opcode::BootRequest {
            DhcpStats::inc(&self.stats.ignored);
            return None;
        }
        let Some(mtype) = msg.opts().msg_type() else {
            DhcpStats::inc(&self.stats.ignored);
            debug!(%src, "ignoring BOOTP request");
            return None;
        };
        let facts = client_facts(&msg);
        let out = match (ingress, self.config.mode, mtype) {
            (Ingress::Pxe, _, MessageType::Request | MessageType::Inform) => {
                self.proxy_reply(&msg, &raw, &facts, MessageType::Ack, Some(src))
                    .await
            }
            (Ingress::Dhcp, Mode::Proxy, MessageType::Discover) => {
                self.proxy_reply(&msg, &raw, &facts, MessageType::Offer, None)
                    .await
            }
            (Ingress::Dhcp, Mode::Full, MessageType::Discover) => {
                self.discover(&msg, &raw, &facts).await
            }
            (Ingress::Dhcp, Mode::Full, MessageType::Request) => {
                self.request(&msg, &raw, &facts).await
            }
            (Ingress::Dhcp, Mode::Full, MessageType::Release) => {
                self.release(&msg, &facts).await;
                None
            }
            (Ingress::Dhcp, Mode::Full, MessageType::Decline) => {
                self.decline(&msg, &facts).await;
                None
            }
            (Ingress::Dhcp, Mode::Full, MessageType::Inform) => {
                self.inform(&msg, &raw, &facts).await
            }
            _ => None,
        };
        if out.is_none() {
            DhcpStats::inc(&self.stats.ignored);
        }
        out
    }

    fn finish(&self, m: Message, raw: &RawOpts, dest: SocketAddrV4) -> Option<Outgoing> {
        match encode_reply(&m, raw.relay_agent.as_deref()) {
            Ok(packet) => Some(Outgoing {
                packet,
                dest,
                message: m,
            }),
            Err(e) => {
                warn!("{e:#}");
                None
            }
        }
    }

    fn nak(&self, req: &Message, raw: &RawOpts, why: &str) -> Option<Outgoing> {
        DhcpStats::inc(&self.stats.naks);
        info!(mac = %mac_str(&mac_of(req)), "NAK: {why}");
        let m = reply::nak(req, self.config.server_ip, why);
        let dest = reply::destination(req, true, self.server_port(), self.client_port());
        self.finish(m, raw, dest)
    }

    /// proxyDHCP offer (port 67, proxy mode) or ACK (port 4011, both modes):
    /// boot information only, yiaddr 0. Silence for non-PXE clients.
    async fn proxy_reply(
        &self,
        req: &Message,
        raw: &RawOpts,
        facts: &ClientFacts,
        mtype: MessageType,
        src: Option<SocketAddrV4>,
    ) -> Option<Outgoing> {
        if !is_netboot_client(facts) {
            return None;
        }
        let answer = self.advisor.boot_answer(facts).await?;
        let mut m = reply::base(req, mtype, self.config.server_ip);
        m.set_ciaddr(req.ciaddr());
        reply::add_boot(&mut m, req, &answer);
        let dest = match src {
            Some(s) if *s.ip() != Ipv4Addr::UNSPECIFIED => s,
            Some(s) => SocketAddrV4::new(Ipv4Addr::BROADCAST, s.port()),
            None => reply::destination(req, false, self.server_port(), self.client_port()),
        };
        let counter = if mtype == MessageType::Offer {
            &self.stats.proxy_offers
        } else {
            &self.stats.proxy_acks
        };
        DhcpStats::inc(counter);
        debug!(mac = %mac_str(&facts.mac), file = %answer.filename, "proxy {mtype:?}");
        self.finish(m, raw, dest)
    }

    async fn discover(
        &self,
        req: &Message,
        raw: &RawOpts,
        facts: &ClientFacts,
    ) -> Option<Outgoing> {
        let subnet = self
            .pool
            .select_subnet(req.giaddr(), self.config.server_ip)?;
        let requested = opt_ip(req, OptionCode::RequestedIpAddress);
        let (ip, answer) = tokio::join!(
            async { self.pool.offer(subnet, facts.mac, requested) },
            self.advisor.boot_answer(facts)
        );
        let Some(ip) = ip else {
            DhcpStats::inc(&self.stats.pool_exhausted);
            warn!(mac = %mac_str(&facts.mac), "address pool exhausted");
            return None;
        };
        let s = &self.pool.subnets[subnet];
        let mut m = reply::base(req, MessageType::Offer, self.config.server_ip);
        m.set_yiaddr(ip);
        reply::add_subnet_opts(&mut m, s, true);
        if let Some(a) = &answer {
            reply::add_boot(&mut m, req, a);
        }
        DhcpStats::inc(&self.stats.offers);
        debug!(mac = %mac_str(&facts.mac), %ip, "OFFER");
        let dest = reply::destination(req, false, self.server_port(), self.client_port());
        self.finish(m, raw, dest)
    }

    async fn request(&self, req: &Message, raw: &RawOpts, facts: &ClientFacts) -> Option<Outgoing> {
        let server_id = opt_ip(req, OptionCode::ServerIdentifier);
        let requested = opt_ip(req, OptionCode::RequestedIpAddress);
        let ciaddr = req.ciaddr();
        let unspecified = Ipv4Addr::UNSPECIFIED;
        if let Some(sid) = server_id {
            if sid != self.config.server_ip {
                // SELECTING another server's offer: forget ours, stay silent.
                self.pool.drop_offer(facts.mac);
                return None;
            }
        }
        let ip = match (server_id, requested, ciaddr) {
            (Some(_), Some(r), _) => r,                  // SELECTING
            (Some(_), None, c) if c != unspecified => c, // non-standard, accept
            (None, Some(r), c) if c == unspecified => r, // INIT-REBOOT
            (None, _, c) if c != unspecified => c,       // RENEWING / REBINDING
            _ => return self.nak(req, raw, "no address requested"),
        };
        let subnet = if req.giaddr() != unspecified {
            self.pool.subnet_of(req.giaddr())
        } else if ciaddr != unspecified {
            self.pool.subnet_of(ciaddr)
        } else {
            self.pool.select_subnet(unspecified, self.config.server_ip)
        };
        let Some(subnet) = subnet else {
            return self.nak(req, raw, "unknown network");
        };
        let s = &self.pool.subnets[subnet];
        if !s.contains(ip) {
            return self.nak(req, raw, "wrong network");
        }
        let expires_at = SystemTime::now() + s.lease_time;
        let displaced = match self.pool.bind(subnet, facts.mac, ip, expires_at) {
            Ok(d) => d,
            Err(_) => return self.nak(req, raw, "address not available"),
        };
        let client_id = match req.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(c)) => Some(c.clone()),
            _ => None,
        };
        let lease = Lease {
            mac: facts.mac,
            ip,
            expires_at,
            hostname: facts.hostname.clone(),
            client_id,
        };
        let (committed, answer) =
            tokio::join!(self.leases.commit(&lease), self.advisor.boot_answer(facts));
        if let Err(e) = committed {
            DhcpStats::inc(&self.stats.commit_failures);
            self.pool.unbind(facts.mac, ip);
            warn!(mac = %mac_str(&facts.mac), %ip, "lease commit failed, no ACK: {e:#}");
            return None;
        }
        if let Some(old) = displaced {
            if let Err(e) = self.leases.remove(facts.mac, old).await {
                warn!(mac = %mac_str(&facts.mac), %old, "removing superseded lease: {e:#}");
            }
        }
        let mut m = reply::base(req, MessageType::Ack, self.config.server_ip);
        m.set_yiaddr(ip).set_ciaddr(ciaddr);
        reply::add_subnet_opts(&mut m, s, true);
        if let Some(a) = &answer {
            reply::add_boot(&mut m, req, a);
        }
        DhcpStats::inc(&self.stats.acks);
        debug!(mac = %mac_str(&facts.mac), %ip, "ACK");
        let dest = reply::destination(req, false, self.server_port(), self.client_port());
        self.finish(m, raw, dest)
    }

    async fn release(&self, req: &Message, facts: &ClientFacts) {
        if let Some(sid) = opt_ip(req, OptionCode::ServerIdentifier) {
            if sid != self.config.server_ip {
                return;
            }
        }
        let ip = req.ciaddr();
        DhcpStats::inc(&self.stats.releases);
        if self.pool.unbind(facts.mac, ip) {
            info!(mac = %mac_str(&facts.mac), %ip, "RELEASE");
            if let Err(e) = self.leases.remove(facts.mac, ip).await {
                warn!(mac = %mac_str(&facts.mac), %ip, "removing released lease: {e:#}");
            }
        }
    }

    async fn decline(&self, req: &Message, facts: &ClientFacts) {
        if let Some(sid) = opt_ip(req, OptionCode::ServerIdentifier) {
            if sid != self.config.server_ip {
                return;
            }
        }
        let Some(ip) = opt_ip(req, OptionCode::RequestedIpAddress) else {
            return;
        };
        DhcpStats::inc(&self.stats.declines);
        warn!(mac = %mac_str(&facts.mac), %ip, "DECLINE: address marked bad");
        self.pool.decline(facts.mac, ip);
        if let Err(e) = self.leases.remove(facts.mac, ip).await {
            warn!(mac = %mac_str(&facts.mac), %ip, "removing declined lease: {e:#}");
        }
    }

    async fn inform(&self, req: &Message, raw: &RawOpts, facts: &ClientFacts) -> Option<Outgoing> {
        let subnet = if req.giaddr() != Ipv4Addr::UNSPECIFIED {
            self.pool.subnet_of(req.giaddr())
        } else {
            self.pool.subnet_of(req.ciaddr())
        };
        let mut m = reply::base(req, MessageType::Ack, self.config.server_ip);
        m.set_ciaddr(req.ciaddr());
        if let Some(i) = subnet {
            reply::add_subnet_opts(&mut m, &self.pool.subnets[i], false);
        }
        if let Some(a) = self.advisor.boot_answer(facts).await {
            reply::add_boot(&mut m, req, &a);
        }
        DhcpStats::inc(&self.stats.informs);
        let dest = reply::destination(req, false, self.server_port(), self.client_port());
        self.finish(m, raw, dest)
    }
}
