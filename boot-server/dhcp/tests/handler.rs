//! Packet-level tests of the DHCP logic (no sockets): client facts, offer
//! contents for BIOS / UEFI / iPXE / HTTP boot, NAKs, relay, lifecycle,
//! proxy mode, malformed packets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boot_dhcp::dhcproto::v4::{
    DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use boot_dhcp::dhcproto::Encodable;
use boot_dhcp::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const MAC2: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x57];

struct Advisor;
#[async_trait::async_trait]
impl BootAdvisor for Advisor {
    async fn client_config(&self, f: &ClientFacts) -> ClientConfig {
        ClientConfig {
            boot: boot_answer(f),
            ..ClientConfig::default()
        }
    }
}

fn boot_answer(f: &ClientFacts) -> Option<BootAnswer> {
    {
        let next_server = SERVER;
        if f.is_ipxe {
            return Some(BootAnswer {
                filename: "http://10.9.0.1/boot.ipxe".into(),
                next_server,
                vendor_class: "PXEClient",
            });
        }
        match f.client_arch {
            Some(0x10) => Some(BootAnswer {
                filename: "http://10.9.0.1/ipxe.efi".into(),
                next_server,
                vendor_class: "HTTPClient",
            }),
            Some(7) | Some(9) => Some(BootAnswer {
                filename: "ipxe.efi".into(),
                next_server,
                vendor_class: "PXEClient",
            }),
            Some(0) => Some(BootAnswer {
                filename: "undionly.kpxe".into(),
                next_server,
                vendor_class: "PXEClient",
            }),
            _ => None,
        }
    }
}

/// A lease store in memory that behaves like the real one (refuses an
/// address leased live to another MAC, conditional expiry) and can be told to
/// fail, or to hold a commit / an expiry until released.
#[derive(Default)]
struct MemStore {
    leases: Mutex<std::collections::HashMap<[u8; 6], Lease>>,
    commits: Mutex<u32>,
    fail_commit: AtomicBool,
    fail_remove: AtomicBool,
    fail_load: AtomicBool,
    hold_commit: AtomicBool,
    hold_expire: AtomicBool,
    /// Signalled when a held operation has started.
    entered: tokio::sync::Notify,
    /// Lets a held operation go on.
    release: tokio::sync::Notify,
}
impl MemStore {
    async fn hold(&self, flag: &AtomicBool) {
        if flag.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }
    /// Wait until a held operation has started (a test failure, not a
    /// hang, when the code under test never calls it).
    async fn wait_entered(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.entered.notified())
            .await
            .expect("the held store operation was never called");
    }
    fn lease_of(&self, mac: [u8; 6]) -> Option<Lease> {
        self.leases.lock().unwrap().get(&mac).cloned()
    }
}
#[async_trait::async_trait]
impl LeaseStore for MemStore {
    async fn load(&self) -> anyhow::Result<Vec<Lease>> {
        if self.fail_load.load(Ordering::SeqCst) {
            anyhow::bail!("store unavailable");
        }
        Ok(self.leases.lock().unwrap().values().cloned().collect())
    }
    async fn commit(&self, lease: &Lease) -> anyhow::Result<()> {
        self.hold(&self.hold_commit).await;
        if self.fail_commit.load(Ordering::SeqCst) {
            anyhow::bail!("disk full");
        }
        let mut l = self.leases.lock().unwrap();
        let now = std::time::SystemTime::now();
        if l.values()
            .any(|x| x.ip == lease.ip && x.mac != lease.mac && x.expires_at > now)
        {
            anyhow::bail!("{} is leased to another MAC", lease.ip);
        }
        l.insert(lease.mac, lease.clone());
        *self.commits.lock().unwrap() += 1;
        Ok(())
    }
    async fn remove(&self, mac: [u8; 6], ip: Ipv4Addr) -> anyhow::Result<()> {
        // (an expiry done as a plain remove is held like one)
        self.hold(&self.hold_expire).await;
        if self.fail_remove.load(Ordering::SeqCst) {
            anyhow::bail!("store unavailable");
        }
        let mut l = self.leases.lock().unwrap();
        if l.get(&mac).is_some_and(|x| x.ip == ip) {
            l.remove(&mac);
        }
        Ok(())
    }
    async fn expire(
        &self,
        mac: [u8; 6],
        ip: Ipv4Addr,
        expires_at: std::time::SystemTime,
    ) -> anyhow::Result<bool> {
        self.hold(&self.hold_expire).await;
        let mut l = self.leases.lock().unwrap();
        match l.get(&mac) {
            Some(x) if x.ip == ip && x.expires_at > expires_at => Ok(false),
            Some(x) if x.ip == ip => {
                l.remove(&mac);
                Ok(true)
            }
            _ => Ok(true),
        }
    }
}

fn subnet() -> SubnetConfig {
    SubnetConfig {
        network: Ipv4Addr::new(10, 9, 0, 0),
        prefix_len: 24,
        range: (Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 109)),
        router: Some(SERVER),
        dns: vec![SERVER],
        domain: Some("lab".into()),
        lease_time: Duration::from_secs(3600),
    }
}

fn relay_subnet() -> SubnetConfig {
    SubnetConfig {
        network: Ipv4Addr::new(10, 20, 0, 0),
        prefix_len: 16,
        range: (Ipv4Addr::new(10, 20, 1, 1), Ipv4Addr::new(10, 20, 1, 200)),
        router: Some(Ipv4Addr::new(10, 20, 0, 1)),
        dns: vec![],
        domain: None,
        lease_time: Duration::from_secs(600),
    }
}

const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 50);

fn config(mode: Mode) -> DhcpConfig {
    let mut cfg = DhcpConfig::new(mode, SERVER);
    if mode == Mode::Full {
        cfg.subnets = vec![subnet(), relay_subnet()];
        cfg.reservations = vec![Reservation {
            mac: MAC2,
            ip: RESERVED,
            hostname: Some("node2".into()),
        }];
    }
    cfg
}

async fn handler(mode: Mode) -> (Handler, Arc<MemStore>) {
    let store = Arc::new(MemStore::default());
    let h = Handler::new(config(mode), Arc::new(Advisor), store.clone());
    h.load().await.unwrap();
    (h, store)
}

fn request(mtype: MessageType, mac: [u8; 6]) -> Message {
    let mut m = Message::new(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_opcode(Opcode::BootRequest).set_xid(0x1234_5678);
    m.opts_mut().insert(DhcpOption::MessageType(mtype));
    m
}

fn pxe(mut m: Message, arch: u16) -> Message {
    let vci = format!("PXEClient:Arch:{arch:05}:UNDI:002001");
    m.opts_mut()
        .insert(DhcpOption::ClassIdentifier(vci.into_bytes()));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(arch.into()));
    let mut guid = vec![0u8];
    guid.extend_from_slice(&[
        0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ]);
    m.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(guid));
    m
}

fn ipxe(mut m: Message) -> Message {
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(175u8),
        vec![0xb1, 5, 1, 0x10, 0xec, 0x81, 0x39],
    )));
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

fn client() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

async fn send(h: &Handler, m: &Message) -> Option<Outgoing> {
    h.handle(&bytes(m), client(), Ingress::Dhcp).await
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn vendor_class(m: &Message) -> Option<String> {
    match opt(m, OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8(v.clone()).unwrap()),
        _ => None,
    }
}

fn file_field(packet: &[u8]) -> &[u8] {
    &packet[108..236]
}

#[test]
fn facts_detect_arch_uuid_ipxe() {
    let m = ipxe(pxe(request(MessageType::Discover, MAC), 7));
    let f = client_facts(&boot_dhcp::decode(&bytes(&m)).unwrap());
    assert_eq!(f.mac, MAC);
    assert_eq!(f.client_arch, Some(7));
    assert!(f.is_ipxe);
    assert_eq!(f.user_class.as_deref(), Some(&b"iPXE"[..]));
    assert_eq!(
        f.uuid.as_deref(),
        Some("00112233-4455-6677-8899-aabbccddeeff")
    );
    assert_eq!(
        f.vendor_class.as_deref(),
        Some("PXEClient:Arch:00007:UNDI:002001")
    );
    assert_eq!(f.relay, None);

    // option 175 alone marks iPXE; 77 alone too; neither: not iPXE
    let mut only175 = pxe(request(MessageType::Discover, MAC), 0);
    only175
        .opts_mut()
        .insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175u8),
            vec![0x13, 1, 1],
        )));
    assert!(client_facts(&boot_dhcp::decode(&bytes(&only175)).unwrap()).is_ipxe);
    let mut only77 = request(MessageType::Discover, MAC);
    only77
        .opts_mut()
        .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    assert!(client_facts(&only77).is_ipxe);
    let plain = pxe(request(MessageType::Discover, MAC), 0);
    let f = client_facts(&plain);
    assert!(!f.is_ipxe);
    assert_eq!(f.client_arch, Some(0));
}

#[tokio::test]
async fn bios_pxe_offer_is_zero_wait() {
    let (h, store) = handler(Mode::Full).await;
    let out = send(&h, &pxe(request(MessageType::Discover, MAC), 0))
        .await
        .expect("offer");
    let m = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.xid(), 0x1234_5678);
    assert!(subnet().in_range(m.yiaddr()));
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(
        opt(&m, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(vendor_class(&m).as_deref(), Some("PXEClient"));
    assert_eq!(&file_field(&out.packet)[..14], b"undionly.kpxe\0");
    assert!(m.sname().is_none(), "sname must be empty");
    assert!(
        opt(&m, OptionCode::BootfileName).is_none(),
        "67 only if asked"
    );
    assert!(
        matches!(opt(&m, OptionCode::VendorExtensions), Some(DhcpOption::VendorExtensions(v)) if v[..3] == [6, 1, 8])
    );
    assert!(
        matches!(opt(&m, OptionCode::ClientMachineIdentifier), Some(DhcpOption::ClientMachineIdentifier(v)) if v.len() == 17)
    );
    assert!(matches!(
        opt(&m, OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(3600))
    ));
    assert_eq!(out.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(out.packet.len() >= 300);
    assert_eq!(
        *store.commits.lock().unwrap(),
        0,
        "offers are not committed"
    );
}

#[tokio::test]
async fn uefi_ipxe_and_http_offers() {
    let (h, _) = handler(Mode::Full).await;
    // UEFI x64 (7 and the legacy 9)
    for arch in [7u16, 9] {
        let out = send(&h, &pxe(request(MessageType::Discover, MAC), arch))
            .await
            .unwrap();
        assert_eq!(&file_field(&out.packet)[..9], b"ipxe.efi\0");
    }
    // iPXE: script URL; option 67 too when requested
    let mut m = ipxe(pxe(request(MessageType::Discover, MAC), 7));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::BootfileName,
    ]));
    let out = send(&h, &m).await.unwrap();
    let r = boot_dhcp::decode(&out.packet).unwrap();
    let url = b"http://10.9.0.1/boot.ipxe";
    assert_eq!(
        &file_field(&out.packet)[..url.len() + 1],
        &[&url[..], &[0]].concat()[..]
    );
    assert_eq!(
        opt(&r, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(url.to_vec()))
    );
    // UEFI HTTP boot: HTTPClient + URL, no option 43
    let mut m = request(MessageType::Discover, MAC);
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"HTTPClient:Arch:00016:UNDI:003000".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(0x10.into()));
    let out = send(&h, &m).await.unwrap();
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(vendor_class(&r).as_deref(), Some("HTTPClient"));
    assert!(opt(&r, OptionCode::VendorExtensions).is_none());
    assert!(file_field(&out.packet).starts_with(b"http://10.9.0.1/ipxe.efi\0"));
    // plain client: no boot info at all
    let out = send(&h, &request(MessageType::Discover, MAC2))
        .await
        .unwrap();
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert!(vendor_class(&r).is_none());
    assert_eq!(r.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(r.fname().is_none());
    // reservation honoured
    assert_eq!(r.yiaddr(), Ipv4Addr::new(10, 9, 0, 50));
}

async fn dora(h: &Handler, mac: [u8; 6]) -> Message {
    let offer = send(h, &request(MessageType::Discover, mac)).await.unwrap();
    let offer = boot_dhcp::decode(&offer.packet).unwrap();
    let mut req = request(MessageType::Request, mac);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let ack = send(h, &req).await.unwrap();
    boot_dhcp::decode(&ack.packet).unwrap()
}

#[tokio::test]
async fn lifecycle_commit_release_decline_inform() {
    let (h, store) = handler(Mode::Full).await;
    let ack = dora(&h, MAC).await;
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    let ip = ack.yiaddr();
    assert_eq!(
        store.leases.lock().unwrap()[&MAC].ip,
        ip,
        "committed before ACK"
    );
    // same MAC again: same address
    assert_eq!(dora(&h, MAC).await.yiaddr(), ip);
    // renewing: unicast to ciaddr
    let mut renew = request(MessageType::Request, MAC);
    renew.set_ciaddr(ip);
    let out = send(&h, &renew).await.unwrap();
    assert_eq!(out.dest, SocketAddrV4::new(ip, 68));
    assert_eq!(
        boot_dhcp::decode(&out.packet).unwrap().opts().msg_type(),
        Some(MessageType::Ack)
    );
    // another MAC never gets it
    let other = dora(&h, [2, 0, 0, 0, 0, 9]).await;
    assert_ne!(other.yiaddr(), ip);
    // selecting another server: silence
    let mut req = request(MessageType::Request, [2, 0, 0, 0, 0, 10]);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 2)));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 105)));
    assert!(send(&h, &req).await.is_none());
    // release
    let mut rel = request(MessageType::Release, MAC);
    rel.set_ciaddr(ip);
    rel.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(send(&h, &rel).await.is_none());
    assert!(!store.leases.lock().unwrap().contains_key(&MAC));
    // decline: the address is not offered again for a while
    let ack = dora(&h, MAC).await;
    let mut dec = request(MessageType::Decline, MAC);
    dec.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ack.yiaddr()));
    dec.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(send(&h, &dec).await.is_none());
    let again = dora(&h, MAC).await;
    assert_ne!(again.yiaddr(), ack.yiaddr());
    // inform: ACK without yiaddr and lease time, unicast to ciaddr
    let mut inf = request(MessageType::Inform, MAC);
    inf.set_ciaddr(Ipv4Addr::new(10, 9, 0, 7));
    let out = send(&h, &inf).await.unwrap();
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(opt(&r, OptionCode::AddressLeaseTime).is_none());
    assert_eq!(out.dest, SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 7), 68));
    assert_eq!(h.stats().releases.load(Ordering::Relaxed), 1);
    assert_eq!(h.stats().declines.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn restart_keeps_address() {
    let (h, store) = handler(Mode::Full).await;
    let ip = dora(&h, MAC).await.yiaddr();
    let mut cfg = DhcpConfig::new(Mode::Full, SERVER);
    cfg.subnets = vec![subnet()];
    let h2 = Handler::new(cfg, Arc::new(Advisor), store.clone());
    h2.load().await.unwrap();
    assert_eq!(dora(&h2, MAC).await.yiaddr(), ip);
}

#[tokio::test]
async fn pool_exhaustion_counted() {
    let (h, _) = handler(Mode::Full).await;
    for i in 0..10u8 {
        assert!(dora(&h, [2, 0, 0, 0, 1, i]).await.opts().msg_type() == Some(MessageType::Ack));
    }
    assert!(
        send(&h, &request(MessageType::Discover, [2, 0, 0, 0, 2, 0]))
            .await
            .is_none()
    );
    assert_eq!(h.stats().pool_exhausted.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn nak_cases() {
    let (h, _) = handler(Mode::Full).await;
    let is_nak = |o: Option<Outgoing>| {
        let o = o.expect("a reply");
        assert_eq!(
            o.dest,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            "NAK broadcast"
        );
        boot_dhcp::decode(&o.packet).unwrap().opts().msg_type() == Some(MessageType::Nak)
    };
    // init-reboot with an address from another network
    let mut m = request(MessageType::Request, MAC);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            192, 168, 1, 5,
        )));
    assert!(is_nak(send(&h, &m).await));
    // selecting an address outside the range
    let mut m = request(MessageType::Request, MAC);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 3)));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(is_nak(send(&h, &m).await));
    // an address bound to another client
    let taken = dora(&h, MAC2).await.yiaddr();
    let mut m = request(MessageType::Request, MAC);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(taken));
    assert!(is_nak(send(&h, &m).await));
    // the reserved address of another client
    assert!(h.stats().naks.load(Ordering::Relaxed) >= 3);
}

#[tokio::test]
async fn relay_reply_goes_to_giaddr_with_option_82_verbatim() {
    let (h, _) = handler(Mode::Full).await;
    let giaddr = Ipv4Addr::new(10, 20, 0, 1);
    let mut m = pxe(request(MessageType::Discover, MAC), 0);
    m.set_giaddr(giaddr).set_hops(1);
    let mut pkt = bytes(&m);
    // append option 82 by hand (circuit-id "eth7", remote-id 6 bytes) before END
    assert_eq!(pkt.pop(), Some(255));
    let opt82 = [1u8, 4, b'e', b't', b'h', b'7', 2, 6, 1, 2, 3, 4, 5, 6];
    pkt.push(82);
    pkt.push(opt82.len() as u8);
    pkt.extend_from_slice(&opt82);
    pkt.push(255);
    let out = h
        .handle(&pkt, SocketAddrV4::new(giaddr, 67), Ingress::Dhcp)
        .await
        .unwrap();
    assert_eq!(out.dest, SocketAddrV4::new(giaddr, 67));
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(r.giaddr(), giaddr);
    assert!(
        relay_subnet().in_range(r.yiaddr()),
        "subnet chosen by giaddr"
    );
    let mut wire = vec![82u8, opt82.len() as u8];
    wire.extend_from_slice(&opt82);
    assert!(
        out.packet.windows(wire.len()).any(|w| w == wire.as_slice()),
        "option 82 echoed verbatim"
    );
    // relayed NAK goes to the relay with the broadcast bit
    let mut m = request(MessageType::Request, MAC);
    m.set_giaddr(giaddr);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 100)));
    let out = send(&h, &m).await.unwrap();
    assert_eq!(out.dest, SocketAddrV4::new(giaddr, 67));
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Nak));
    assert!(r.flags().broadcast());
    // unknown relay network: silence
    let mut m = request(MessageType::Discover, MAC);
    m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(send(&h, &m).await.is_none());
}

#[tokio::test]
async fn proxy_mode() {
    let (h, store) = handler(Mode::Proxy).await;
    // non-PXE client: silence
    assert!(send(&h, &request(MessageType::Discover, MAC))
        .await
        .is_none());
    // PXE DISCOVER: proxy offer without address
    let out = send(&h, &pxe(request(MessageType::Discover, MAC), 0))
        .await
        .unwrap();
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.siaddr(), SERVER);
    assert_eq!(vendor_class(&r).as_deref(), Some("PXEClient"));
    assert_eq!(
        opt(&r, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert!(
        matches!(opt(&r, OptionCode::VendorExtensions), Some(DhcpOption::VendorExtensions(v)) if v[..3] == [6, 1, 8])
    );
    assert!(file_field(&out.packet).starts_with(b"undionly.kpxe\0"));
    // PXE REQUEST on 4011: ACK back to the source
    let mut req = pxe(request(MessageType::Request, MAC), 0);
    let me = Ipv4Addr::new(10, 9, 0, 123);
    req.set_ciaddr(me);
    let src = SocketAddrV4::new(me, 68);
    let out = h.handle(&bytes(&req), src, Ingress::Pxe).await.unwrap();
    assert_eq!(out.dest, src);
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(file_field(&out.packet).starts_with(b"undionly.kpxe\0"));
    // DHCPREQUEST on 67 in proxy mode: not ours
    let mut req = pxe(request(MessageType::Request, MAC), 0);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 2)));
    assert!(send(&h, &req).await.is_none());
    assert!(store.leases.lock().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_packets_are_counted_not_panicking() {
    let (h, _) = handler(Mode::Full).await;
    let good = bytes(&pxe(request(MessageType::Discover, MAC), 0));
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1, 1, 6],
        good[..200].to_vec(),
        good[..239].to_vec(),
    ];
    // option length running past the end
    let mut overrun = good[..240].to_vec();
    overrun.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
    cases.push(overrun);
    // huge length byte on the last option
    let mut huge = good[..240].to_vec();
    huge.extend_from_slice(&[53, 1, 1, 97, 255]);
    cases.push(huge);
    // wrong fixed lengths dhcproto would debug_assert / underflow on
    for bad in [
        &[53u8, 2, 1, 1][..],
        &[80, 1, 0],
        &[94, 2, 1, 2],
        &[151, 0],
        &[81, 1, 0],
        &[152, 2, 0, 0],
        &[50, 3, 1, 2, 3],
        &[12, 2, 0xff, 0xfe],
    ] {
        let mut p = good[..240].to_vec();
        p.extend_from_slice(&[53, 1, 1]);
        p.extend_from_slice(bad);
        p.push(255);
        cases.push(p);
    }
    // hlen > 16
    let mut p = good.clone();
    p[2] = 200;
    cases.push(p);
    // bad magic
    let mut p = good.clone();
    p[236] = 0;
    cases.push(p);
    // oversized datagram
    cases.push(vec![0u8; 70_000]);
    let n = cases.len() as u64;
    for c in &cases {
        assert!(boot_dhcp::decode(c).is_err(), "{c:?} should not decode");
        assert!(h.handle(c, client(), Ingress::Dhcp).await.is_none());
    }
    assert_eq!(h.stats().malformed_dropped.load(Ordering::Relaxed), n);
    // the good one still works
    assert!(h.handle(&good, client(), Ingress::Dhcp).await.is_some());
}

#[tokio::test]
async fn broadcast_flag_and_long_filename() {
    struct LongAdvisor;
    #[async_trait::async_trait]
    impl BootAdvisor for LongAdvisor {
        async fn client_config(&self, _: &ClientFacts) -> ClientConfig {
            ClientConfig {
                boot: Some(BootAnswer {
                    filename: format!("http://10.9.0.1/{}", "x".repeat(200)),
                    next_server: SERVER,
                    vendor_class: "PXEClient",
                }),
                ..ClientConfig::default()
            }
        }
    }
    let mut cfg = DhcpConfig::new(Mode::Full, SERVER);
    cfg.subnets = vec![subnet()];
    let h = Handler::new(cfg, Arc::new(LongAdvisor), Arc::new(MemStore::default()));
    h.load().await.unwrap();
    let mut m = pxe(request(MessageType::Discover, MAC), 0);
    m.set_flags(Flags::default().set_broadcast());
    let out = send(&h, &m).await.unwrap();
    let r = boot_dhcp::decode(&out.packet).unwrap();
    assert!(r.flags().broadcast());
    assert!(r.fname().is_none(), "too long for the file field");
    assert!(
        matches!(opt(&r, OptionCode::BootfileName), Some(DhcpOption::BootfileName(v)) if v.len() == 216)
    );
}

/// In-process DORA throughput of the handler alone (no sockets, memory store):
/// `cargo test --release -p boot-dhcp --test handler -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn handler_throughput() {
    let mut cfg = DhcpConfig::new(Mode::Full, SERVER);
    let mut big = relay_subnet();
    big.range = (Ipv4Addr::new(10, 20, 1, 0), Ipv4Addr::new(10, 20, 255, 254));
    cfg.subnets = vec![big];
    let h = Arc::new(Handler::new(
        cfg,
        Arc::new(Advisor),
        Arc::new(MemStore::default()),
    ));
    h.load().await.unwrap();
    let n = 50_000u32;
    let start = std::time::Instant::now();
    for i in 0..n {
        let mac = [2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let mut d = request(MessageType::Discover, mac);
        d.set_giaddr(Ipv4Addr::new(10, 20, 0, 1));
        let o = h.handle(&bytes(&d), client(), Ingress::Dhcp).await.unwrap();
        let o = boot_dhcp::decode(&o.packet).unwrap();
        let mut r = request(MessageType::Request, mac);
        r.set_giaddr(Ipv4Addr::new(10, 20, 0, 1));
        r.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(o.yiaddr()));
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        h.handle(&bytes(&r), client(), Ingress::Dhcp).await.unwrap();
    }
    let el = start.elapsed();
    eprintln!(
        "{n} DORA in {el:?}: {:.0} exchanges/s (one thread, incl. client-side encode/decode)",
        n as f64 / el.as_secs_f64()
    );
}

const MAC3: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x58];
const MAC4: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x59];

fn msg_type(o: &Option<Outgoing>) -> Option<MessageType> {
    o.as_ref()
        .and_then(|o| boot_dhcp::decode(&o.packet).unwrap().opts().msg_type())
}

/// RENEWING request: ciaddr set, no option 50 / 54.
fn renew(mac: [u8; 6], ip: Ipv4Addr) -> Message {
    let mut m = request(MessageType::Request, mac);
    m.set_ciaddr(ip);
    m
}

/// INIT-REBOOT request for `ip`.
fn init_reboot(mac: [u8; 6], ip: Ipv4Addr) -> Message {
    let mut m = request(MessageType::Request, mac);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m
}

fn discover_asking(mac: [u8; 6], ip: Ipv4Addr) -> Message {
    let mut m = request(MessageType::Discover, mac);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m
}

/// Asserts nobody but the holder can get `ip`.
async fn nobody_else_gets(h: &Handler, ip: Ipv4Addr, who: [u8; 6]) {
    let offer = send(h, &discover_asking(who, ip)).await.unwrap();
    assert_ne!(
        boot_dhcp::decode(&offer.packet).unwrap().yiaddr(),
        ip,
        "{ip} offered to another client"
    );
    assert_eq!(
        msg_type(&send(h, &init_reboot(who, ip)).await),
        Some(MessageType::Nak),
        "{ip} must be refused to another client"
    );
}

#[tokio::test]
async fn failed_commit_keeps_the_clients_valid_binding() {
    let (h, store) = handler(Mode::Full).await;
    let ip = dora(&h, MAC).await.yiaddr();
    store.fail_commit.store(true, Ordering::SeqCst);
    // a failed renewal and a failed move to another address: no ACK ...
    assert!(send(&h, &renew(MAC, ip)).await.is_none());
    assert!(send(&h, &init_reboot(MAC, Ipv4Addr::new(10, 9, 0, 107)))
        .await
        .is_none());
    assert_eq!(h.stats().commit_failures.load(Ordering::Relaxed), 2);
    assert!(h.stats().store_errors.load(Ordering::Relaxed) >= 2);
    store.fail_commit.store(false, Ordering::SeqCst);
    // ... and the still-valid binding keeps its address in memory too
    nobody_else_gets(&h, ip, MAC3).await;
    assert_eq!(store.lease_of(MAC).unwrap().ip, ip);
    // the address it tried to move to was not kept for it either
    let got = dora(&h, MAC4).await;
    assert_eq!(got.opts().msg_type(), Some(MessageType::Ack));
    // and the client itself still renews
    assert_eq!(
        msg_type(&send(&h, &renew(MAC, ip)).await),
        Some(MessageType::Ack)
    );
}

#[tokio::test]
async fn store_refusal_means_no_ack() {
    let (h, store) = handler(Mode::Full).await;
    // another writer holds 10.9.0.104 live in the store; memory does not know
    let ip = Ipv4Addr::new(10, 9, 0, 104);
    store.leases.lock().unwrap().insert(
        MAC4,
        Lease {
            mac: MAC4,
            ip,
            expires_at: std::time::SystemTime::now() + Duration::from_secs(600),
            hostname: None,
            client_id: None,
        },
    );
    assert!(send(&h, &init_reboot(MAC, ip)).await.is_none(), "no ACK");
    assert_eq!(h.stats().acks.load(Ordering::Relaxed), 0);
    assert_eq!(store.lease_of(MAC4).unwrap().ip, ip);
    assert!(store.lease_of(MAC).is_none());
}

#[tokio::test]
async fn decline_from_a_non_holder_is_ignored() {
    let (h, store) = handler(Mode::Full).await;
    let ip = dora(&h, MAC).await.yiaddr();
    let mut dec = request(MessageType::Decline, MAC3);
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    dec.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(send(&h, &dec).await.is_none());
    assert_eq!(h.stats().declines_ignored.load(Ordering::Relaxed), 1);
    assert_eq!(h.stats().declines.load(Ordering::Relaxed), 0);
    assert_eq!(store.lease_of(MAC).unwrap().ip, ip, "lease kept");
    assert_eq!(
        msg_type(&send(&h, &renew(MAC, ip)).await),
        Some(MessageType::Ack),
        "the holder still renews"
    );
    nobody_else_gets(&h, ip, MAC3).await;
}

#[tokio::test]
async fn renewal_between_expiry_scan_and_delete_wins() {
    let store = Arc::new(MemStore::default());
    let ip = Ipv4Addr::new(10, 9, 0, 103);
    store.leases.lock().unwrap().insert(
        MAC,
        Lease {
            mac: MAC,
            ip,
            expires_at: std::time::SystemTime::now() - Duration::from_secs(1),
            hostname: None,
            client_id: None,
        },
    );
    let h = Arc::new(Handler::new(
        config(Mode::Full),
        Arc::new(Advisor),
        store.clone(),
    ));
    h.load().await.unwrap();
    store.hold_expire.store(true, Ordering::SeqCst);
    let sweep = tokio::spawn({
        let h = h.clone();
        async move { h.expire().await }
    });
    // the sweep found the lease expired and is in the store's expire ...
    store.wait_entered().await;
    // ... when the client renews
    assert_eq!(
        msg_type(&send(&h, &renew(MAC, ip)).await),
        Some(MessageType::Ack)
    );
    store.release.notify_one();
    assert_eq!(sweep.await.unwrap(), 0, "nothing expired");
    let l = store.lease_of(MAC).expect("renewed lease still stored");
    assert!(l.expires_at > std::time::SystemTime::now());
    nobody_else_gets(&h, ip, MAC3).await;
    // a lease that really expired goes, from the store and from memory
    let (h, store) = handler(Mode::Full).await;
    let ip = dora(&h, MAC4).await.yiaddr();
    store
        .leases
        .lock()
        .unwrap()
        .get_mut(&MAC4)
        .unwrap()
        .expires_at = std::time::SystemTime::now() - Duration::from_secs(1);
    let h2 = Handler::new(config(Mode::Full), Arc::new(Advisor), store.clone());
    h2.load().await.unwrap();
    assert_eq!(h2.expire().await, 1);
    assert!(store.lease_of(MAC4).is_none());
    assert_eq!(
        msg_type(&send(&h2, &init_reboot(MAC3, ip)).await),
        Some(MessageType::Ack)
    );
}

#[tokio::test]
async fn ack_leaves_only_after_the_commit_returned() {
    let (h, store) = handler(Mode::Full).await;
    let h = Arc::new(h);
    let offer = send(&h, &request(MessageType::Discover, MAC))
        .await
        .unwrap();
    let ip = boot_dhcp::decode(&offer.packet).unwrap().yiaddr();
    let mut req = request(MessageType::Request, MAC);
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    store.hold_commit.store(true, Ordering::SeqCst);
    let mut task = tokio::spawn({
        let h = h.clone();
        let req = bytes(&req);
        async move { h.handle(&req, client(), Ingress::Dhcp).await }
    });
    store.wait_entered().await;
    // the commit is held: no reply may come out
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut task)
            .await
            .is_err(),
        "a reply left before the commit returned"
    );
    assert!(store.lease_of(MAC).is_none());
    store.release.notify_one();
    let out = task.await.unwrap();
    assert_eq!(msg_type(&out), Some(MessageType::Ack));
    assert_eq!(store.lease_of(MAC).unwrap().ip, ip, "committed before ACK");
    // a commit that fails: no ACK at all
    store.fail_commit.store(true, Ordering::SeqCst);
    assert!(send(&h, &renew(MAC, ip)).await.is_none());
}

#[tokio::test]
async fn store_errors_never_stop_dhcp() {
    let store = Arc::new(MemStore::default());
    store.fail_load.store(true, Ordering::SeqCst);
    let h = Handler::new(config(Mode::Full), Arc::new(Advisor), store.clone());
    assert!(h.load().await.is_err());
    assert_eq!(h.stats().store_errors.load(Ordering::Relaxed), 1);
    // not loaded: full mode answers nothing (it could hand out leased addresses)
    assert!(send(&h, &request(MessageType::Discover, MAC))
        .await
        .is_none());
    assert_eq!(h.stats().not_ready.load(Ordering::Relaxed), 1);
    store.fail_load.store(false, Ordering::SeqCst);
    h.load().await.unwrap();
    let ip = dora(&h, MAC).await.yiaddr();
    // a RELEASE the store cannot record keeps the binding (expiry retries)
    store.fail_remove.store(true, Ordering::SeqCst);
    let mut rel = request(MessageType::Release, MAC);
    rel.set_ciaddr(ip);
    rel.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    assert!(send(&h, &rel).await.is_none());
    assert_eq!(store.lease_of(MAC).unwrap().ip, ip);
    nobody_else_gets(&h, ip, MAC3).await;
    store.fail_remove.store(false, Ordering::SeqCst);
    assert!(send(&h, &rel).await.is_none());
    assert!(store.lease_of(MAC).is_none());
}

/// Advisor giving MAC a fixed address outside the range, a hostname, a
/// domain and an extra option.
struct PerClient;
#[async_trait::async_trait]
impl BootAdvisor for PerClient {
    async fn client_config(&self, f: &ClientFacts) -> ClientConfig {
        if f.mac != MAC {
            return ClientConfig::default();
        }
        ClientConfig {
            boot: boot_answer(f),
            fixed_address: Some(Ipv4Addr::new(10, 9, 0, 20)),
            hostname: Some("node1".into()),
            domain: Some("site.example".into()),
            extra_options: vec![(42, vec![10, 9, 0, 1]), (53, vec![5])],
        }
    }
}

#[tokio::test]
async fn per_client_config_and_live_reservations() {
    let store = Arc::new(MemStore::default());
    let h = Handler::new(config(Mode::Full), Arc::new(PerClient), store.clone());
    h.load().await.unwrap();
    let fixed = Ipv4Addr::new(10, 9, 0, 20);
    for ack in [
        dora(&h, MAC).await,
        boot_dhcp::decode(
            &send(&h, &pxe(request(MessageType::Discover, MAC), 0))
                .await
                .unwrap()
                .packet,
        )
        .unwrap(),
    ] {
        assert_eq!(ack.yiaddr(), fixed, "fixed address outside the range");
        assert_eq!(
            opt(&ack, OptionCode::Hostname),
            Some(&DhcpOption::Hostname("node1".into()))
        );
        assert_eq!(
            opt(&ack, OptionCode::DomainName),
            Some(&DhcpOption::DomainName("site.example".into()))
        );
        assert!(
            matches!(
                opt(&ack, OptionCode::from(42u8)),
                Some(DhcpOption::NtpServers(v)) if v == &[SERVER]
            ),
            "{:?}",
            opt(&ack, OptionCode::from(42u8))
        );
    }
    // INIT-REBOOT with a dynamic address while a fixed one is set: NAK
    assert_eq!(
        msg_type(&send(&h, &init_reboot(MAC, Ipv4Addr::new(10, 9, 0, 100))).await),
        Some(MessageType::Nak)
    );
    // the initial reservation table: MAC2 gets 10.9.0.50 and its hostname
    let ack = dora(&h, MAC2).await;
    assert_eq!(ack.yiaddr(), RESERVED);
    assert_eq!(
        opt(&ack, OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node2".into()))
    );
    // a dynamic client, then its address becomes MAC4's reservation: MAC4
    // does not get it while MAC3 holds it ...
    let held = dora(&h, MAC3).await.yiaddr();
    h.reservations().replace(vec![Reservation {
        mac: MAC4,
        ip: held,
        hostname: None,
    }]);
    assert_ne!(dora(&h, MAC4).await.yiaddr(), held);
    assert_eq!(store.lease_of(MAC3).unwrap().ip, held);
    // ... until the explicit move frees it (store, then memory)
    assert_eq!(h.free_address(held).await.unwrap(), Some(MAC3));
    assert!(store.lease_of(MAC3).is_none());
    assert_eq!(dora(&h, MAC4).await.yiaddr(), held);
    // the old holder is refused it now
    assert_eq!(
        msg_type(&send(&h, &renew(MAC3, held)).await),
        Some(MessageType::Nak)
    );
    // 10.9.0.50 (outside the range) is no longer reserved: MAC2's renewal is
    // refused, and it moves to a dynamic address
    assert_eq!(
        msg_type(&send(&h, &renew(MAC2, RESERVED)).await),
        Some(MessageType::Nak)
    );
    let moved = dora(&h, MAC2).await.yiaddr();
    assert!(subnet().in_range(moved));
    assert_eq!(store.lease_of(MAC2).unwrap().ip, moved);
}

#[test]
fn facts_show_the_observed_address() {
    let mut m = request(MessageType::Request, MAC);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 9, 0, 7)));
    m.set_giaddr(Ipv4Addr::new(10, 20, 0, 1));
    let f = client_facts(&boot_dhcp::decode(&bytes(&m)).unwrap());
    assert_eq!(f.message_type, Some(MessageType::Request));
    assert_eq!(f.requested_ip, Some(Ipv4Addr::new(10, 9, 0, 7)));
    assert_eq!(f.ciaddr, None);
    assert_eq!(f.relay, Some(Ipv4Addr::new(10, 20, 0, 1)));
    assert_eq!(f.observed_ip(), Some(Ipv4Addr::new(10, 9, 0, 7)));
    let r = renew(MAC, Ipv4Addr::new(10, 9, 0, 8));
    let f = client_facts(&boot_dhcp::decode(&bytes(&r)).unwrap());
    assert_eq!(f.ciaddr, Some(Ipv4Addr::new(10, 9, 0, 8)));
    assert_eq!(f.observed_ip(), Some(Ipv4Addr::new(10, 9, 0, 8)));
}
