//! Packet-level tests of the DHCP logic (no sockets): client facts, offer
//! contents for BIOS / UEFI / iPXE / HTTP boot, NAKs, relay, lifecycle,
//! proxy mode, malformed packets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
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
    async fn boot_answer(&self, f: &ClientFacts) -> Option<BootAnswer> {
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

#[derive(Default)]
struct MemStore {
    leases: Mutex<std::collections::HashMap<[u8; 6], Lease>>,
    commits: Mutex<u32>,
}
#[async_trait::async_trait]
impl LeaseStore for MemStore {
    async fn load(&self) -> anyhow::Result<Vec<Lease>> {
        Ok(self.leases.lock().unwrap().values().cloned().collect())
    }
    async fn commit(&self, lease: &Lease) -> anyhow::Result<()> {
        self.leases.lock().unwrap().insert(lease.mac, lease.clone());
        *self.commits.lock().unwrap() += 1;
        Ok(())
    }
    async fn remove(&self, mac: [u8; 6], ip: Ipv4Addr) -> anyhow::Result<()> {
        let mut l = self.leases.lock().unwrap();
        if l.get(&mac).is_some_and(|x| x.ip == ip) {
            l.remove(&mac);
        }
        Ok(())
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
        reservations: vec![(MAC2, Ipv4Addr::new(10, 9, 0, 50))],
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
        reservations: vec![],
    }
}

fn handler(mode: Mode) -> (Handler, Arc<MemStore>) {
    let mut cfg = DhcpConfig::new(mode, SERVER);
    if mode == Mode::Full {
        cfg.subnets = vec![subnet(), relay_subnet()];
    }
    let store = Arc::new(MemStore::default());
    (Handler::new(cfg, Arc::new(Advisor), store.clone()), store)
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
    let (h, store) = handler(Mode::Full);
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
    let (h, _) = handler(Mode::Full);
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
    let (h, store) = handler(Mode::Full);
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
    let (h, store) = handler(Mode::Full);
    let ip = dora(&h, MAC).await.yiaddr();
    let mut cfg = DhcpConfig::new(Mode::Full, SERVER);
    cfg.subnets = vec![subnet()];
    let h2 = Handler::new(cfg, Arc::new(Advisor), store.clone());
    h2.load().await.unwrap();
    assert_eq!(dora(&h2, MAC).await.yiaddr(), ip);
}

#[tokio::test]
async fn pool_exhaustion_counted() {
    let (h, _) = handler(Mode::Full);
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
    let (h, _) = handler(Mode::Full);
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
    let (h, _) = handler(Mode::Full);
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
    let (h, store) = handler(Mode::Proxy);
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
    let (h, _) = handler(Mode::Full);
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
        async fn boot_answer(&self, _: &ClientFacts) -> Option<BootAnswer> {
            Some(BootAnswer {
                filename: format!("http://10.9.0.1/{}", "x".repeat(200)),
                next_server: SERVER,
                vendor_class: "PXEClient",
            })
        }
    }
    let mut cfg = DhcpConfig::new(Mode::Full, SERVER);
    cfg.subnets = vec![subnet()];
    let h = Handler::new(cfg, Arc::new(LongAdvisor), Arc::new(MemStore::default()));
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
