//! Packet handling, independent of sockets: one request in, at most one reply
//! out. Owns the DHCP lifecycle (DISCOVER/OFFER, REQUEST/ACK/NAK, RELEASE,
//! DECLINE, INFORM), proxyDHCP answers, and the store-first rules: the ACK
//! leaves only after the commit returned, a failed commit puts the pool back
//! as it was, and release / decline / expiry touch memory only after the
//! store confirmed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use boot_proto::fmt_mac;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use tracing::{debug, info, warn};

use crate::codec::{decode_full, encode_reply, RawOpts};
use crate::facts::{client_facts, is_netboot_client, mac_of};
use crate::pool::Pool;
use crate::reply;
use crate::reservations::Reservations;
use crate::stats::DhcpStats;
use crate::types::{
    AddressTaken, BootAdvisor, ClientFacts, DhcpConfig, Lease, LeaseStore, Mode, StoreBusy,
};

/// How long a shared store holds an offered address for the client.
const OFFER_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// The encoded reply.
    pub packet: Vec<u8>,
    /// Where to send it (client, broadcast or relay).
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
    reservations: Arc<Reservations>,
    stats: Arc<DhcpStats>,
    /// Full mode answers nothing on port 67 until the leases are loaded.
    loaded: AtomicBool,
}

fn opt_ip(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(ip)) | Some(DhcpOption::ServerIdentifier(ip)) => {
            Some(*ip)
        }
        _ => None,
    }
}

impl Handler {
    /// A handler answering with `config`, asking `advisor` what each client boots and keeping bindings in `leases`.
    pub fn new(
        config: DhcpConfig,
        advisor: Arc<dyn BootAdvisor>,
        leases: Arc<dyn LeaseStore>,
    ) -> Self {
        let reservations = Arc::new(Reservations::new(config.reservations.clone()));
        let pool = Pool::new(config.subnets.clone(), reservations.clone());
        // Proxy mode has no leases: nothing to load.
        let loaded = AtomicBool::new(config.mode == Mode::Proxy);
        Handler {
            config,
            advisor,
            leases,
            pool,
            reservations,
            stats: Arc::new(DhcpStats::default()),
            loaded,
        }
    }

    /// Counters.
    pub fn stats(&self) -> Arc<DhcpStats> {
        self.stats.clone()
    }

    /// The live reservation table.
    pub fn reservations(&self) -> Arc<Reservations> {
        self.reservations.clone()
    }

    /// Whether the durable leases are loaded (full mode answers only then).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    fn store_error(&self, what: &str, mac: &[u8; 6], ip: Ipv4Addr, e: &anyhow::Error) {
        DhcpStats::inc(&self.stats.store_errors);
        warn!(mac = %fmt_mac(mac), %ip, "lease store: {what}: {e:#}");
    }

    /// Load durable leases into the pool (start-up); full mode answers from
    /// then on. A failure is counted and returned (the caller retries).
    pub async fn load(&self) -> anyhow::Result<usize> {
        let leases = match self.leases.load().await {
            Ok(l) => l,
            Err(e) => {
                DhcpStats::inc(&self.stats.store_errors);
                return Err(e.context("loading leases"));
            }
        };
        self.pool.load(&leases);
        self.loaded.store(true, Ordering::Release);
        Ok(leases.len())
    }

    /// Remove expired leases, store first: each is deleted by one
    /// conditional store operation ([`LeaseStore::expire`]) and forgotten in
    /// memory only when the store confirmed and memory still holds that very
    /// binding. A store error leaves the binding for the next sweep.
    /// Returns how many were forgotten.
    pub async fn expire(&self) -> usize {
        if !self.is_loaded() {
            return 0;
        }
        let mut n = 0;
        for e in self.pool.expired(SystemTime::now()) {
            match self.leases.expire(e.mac, e.ip, e.expires_at).await {
                Ok(true) => {
                    if self.pool.unbind_expired(&e) {
                        n += 1;
                    }
                }
                Ok(false) => debug!(mac = %fmt_mac(&e.mac), ip = %e.ip, "renewed before expiry"),
                Err(err) => self.store_error("expiring lease", &e.mac, e.ip, &err),
            }
        }
        n
    }

    /// Take `ip` from whichever client holds it (store first, then memory),
    /// e.g. before its reservation moves to another MAC. Returns the MAC that
    /// held it.
    pub async fn free_address(&self, ip: Ipv4Addr) -> anyhow::Result<Option<[u8; 6]>> {
        let Some(mac) = self.pool.holder_of(ip) else {
            return Ok(None);
        };
        if let Err(e) = self.leases.remove(mac, ip).await {
            self.store_error("freeing address", &mac, ip, &e);
            return Err(e.context(format!("freeing {ip}")));
        }
        self.pool.unbind(mac, ip);
        info!(mac = %fmt_mac(&mac), %ip, "address freed");
        Ok(Some(mac))
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
        DhcpStats::add(&self.stats.bytes_received, packet.len());
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
        if self.config.mode == Mode::Full && ingress == Ingress::Dhcp && !self.is_loaded() {
            DhcpStats::inc(&self.stats.not_ready);
            debug!(%src, "leases not loaded yet: not answering");
            return None;
        }
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
            (Ingress::Dhcp, Mode::Proxy, MessageType::Request) => {
                if is_netboot_client(&facts) && facts.observed_ip().is_some() {
                    self.advisor.observed(&facts).await;
                }
                None
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
        info!(mac = %fmt_mac(&mac_of(req)), "NAK: {why}");
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
        let answer = self.advisor.client_config(facts).await.boot?;
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
        debug!(mac = %fmt_mac(&facts.mac), file = %answer.filename, "proxy {mtype:?}");
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
        let cfg = self.advisor.client_config(facts).await;
        let ip = if self.leases.shared() {
            // Several servers: the store allocates (and holds the offer).
            let s = &self.pool.subnets[subnet];
            let mut prefer: Vec<Ipv4Addr> = cfg.fixed_address.into_iter().collect();
            prefer.extend(requested.filter(|r| s.in_range(*r)));
            let hold = SystemTime::now() + OFFER_HOLD;
            match self
                .leases
                .allocate(facts.mac, s.range, &prefer, hold)
                .await
            {
                Ok(ip) => ip,
                Err(e) if e.downcast_ref::<StoreBusy>().is_some() => {
                    DhcpStats::inc(&self.stats.store_busy);
                    debug!(mac = %fmt_mac(&facts.mac), "store busy: DISCOVER shed");
                    return None;
                }
                Err(e) => {
                    self.store_error(
                        "allocating an address, no OFFER",
                        &facts.mac,
                        Ipv4Addr::UNSPECIFIED,
                        &e,
                    );
                    return None;
                }
            }
        } else {
            self.pool
                .offer(subnet, facts.mac, requested, cfg.fixed_address)
        };
        if let Some(w) = self.pool.wanted(subnet, facts.mac, cfg.fixed_address) {
            if ip != Some(w) {
                warn!(mac = %fmt_mac(&facts.mac), fixed = %w, "fixed address held by another client");
            }
        }
        let Some(ip) = ip else {
            DhcpStats::inc(&self.stats.pool_exhausted);
            warn!(mac = %fmt_mac(&facts.mac), "address pool exhausted");
            return None;
        };
        let s = &self.pool.subnets[subnet];
        let mut m = reply::base(req, MessageType::Offer, self.config.server_ip);
        m.set_yiaddr(ip);
        reply::add_subnet_opts(&mut m, s, true);
        self.add_client_opts(&mut m, req, facts, &cfg);
        DhcpStats::inc(&self.stats.offers);
        debug!(mac = %fmt_mac(&facts.mac), %ip, "OFFER");
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
        let cfg = self.advisor.client_config(facts).await;
        if let Some(w) = self.pool.wanted(subnet, facts.mac, cfg.fixed_address) {
            if w != ip
                && self
                    .pool
                    .is_available(subnet, facts.mac, w, cfg.fixed_address)
            {
                return self.nak(req, raw, "another address is reserved for this client");
            }
        }
        let expires_at = SystemTime::now() + s.lease_time;
        let mut bound = self
            .pool
            .bind(subnet, facts.mac, ip, expires_at, cfg.fixed_address);
        if bound.is_err() && self.leases.shared() {
            // This server's memory may be stale (another server freed or
            // moved the address): the store decides, at the commit.
            if let Some(holder) = self.pool.holder_of(ip).filter(|h| *h != facts.mac) {
                self.pool.unbind(holder, ip);
            }
            bound = self
                .pool
                .bind(subnet, facts.mac, ip, expires_at, cfg.fixed_address);
        }
        let undo = match bound {
            Ok(u) => u,
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
        if let Err(e) = self.leases.commit(&lease).await {
            // The pool goes back exactly as it was: the client's previous
            // binding (still valid, still in the store) keeps its address.
            self.pool.restore(undo);
            if e.downcast_ref::<AddressTaken>().is_some() {
                // Another server leased it meanwhile: the client starts over.
                return self.nak(req, raw, "address not available");
            }
            DhcpStats::inc(&self.stats.commit_failures);
            self.store_error("commit failed, no ACK", &facts.mac, ip, &e);
            return None;
        }
        if let Some(old) = self.pool.settle(undo) {
            if let Err(e) = self.leases.remove(facts.mac, old).await {
                self.store_error("removing superseded lease", &facts.mac, old, &e);
            }
        }
        let mut m = reply::base(req, MessageType::Ack, self.config.server_ip);
        m.set_yiaddr(ip).set_ciaddr(ciaddr);
        reply::add_subnet_opts(&mut m, s, true);
        self.add_client_opts(&mut m, req, facts, &cfg);
        DhcpStats::inc(&self.stats.acks);
        debug!(mac = %fmt_mac(&facts.mac), %ip, "ACK");
        let dest = reply::destination(req, false, self.server_port(), self.client_port());
        self.finish(m, raw, dest)
    }

    /// Boot information, hostname (the advisor's, else the reservation's),
    /// domain and extra options of this client.
    fn add_client_opts(
        &self,
        m: &mut Message,
        req: &Message,
        facts: &ClientFacts,
        cfg: &crate::types::ClientConfig,
    ) {
        if let Some(a) = &cfg.boot {
            reply::add_boot(m, req, a);
        }
        let hostname = cfg
            .hostname
            .clone()
            .or_else(|| self.reservations.hostname_of(facts.mac));
        reply::add_client_opts(m, hostname, cfg.domain.as_deref(), &cfg.extra_options);
    }

    async fn release(&self, req: &Message, facts: &ClientFacts) {
        if let Some(sid) = opt_ip(req, OptionCode::ServerIdentifier) {
            if sid != self.config.server_ip {
                return;
            }
        }
        let ip = req.ciaddr();
        DhcpStats::inc(&self.stats.releases);
        if !self.pool.holds(facts.mac, ip) {
            return;
        }
        // Store first: if the delete fails the binding stays (in memory and
        // store alike) and expiry retries it.
        match self.leases.remove(facts.mac, ip).await {
            Ok(()) => {
                self.pool.unbind(facts.mac, ip);
                info!(mac = %fmt_mac(&facts.mac), %ip, "RELEASE");
            }
            Err(e) => self.store_error("removing released lease", &facts.mac, ip, &e),
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
        if !self.pool.holds(facts.mac, ip) {
            // Only the holder may give an address back: anyone else's
            // DECLINE (spoofed, or stale) must not take it from its holder.
            DhcpStats::inc(&self.stats.declines_ignored);
            warn!(mac = %fmt_mac(&facts.mac), %ip, "DECLINE for an address this client does not hold: ignored");
            return;
        }
        DhcpStats::inc(&self.stats.declines);
        warn!(mac = %fmt_mac(&facts.mac), %ip, "DECLINE: address marked bad");
        self.pool.mark_declined(facts.mac, ip);
        match self.leases.remove(facts.mac, ip).await {
            Ok(()) => {
                self.pool.unbind(facts.mac, ip);
            }
            Err(e) => self.store_error("removing declined lease", &facts.mac, ip, &e),
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
        let cfg = self.advisor.client_config(facts).await;
        self.add_client_opts(&mut m, req, facts, &cfg);
        DhcpStats::inc(&self.stats.informs);
        let dest = reply::destination(req, false, self.server_port(), self.client_port());
        self.finish(m, raw, dest)
    }
}
