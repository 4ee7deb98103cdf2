//! Integration tests with real clients in network namespaces (root only):
//! udhcpc and dhclient against the example daemon (lease, renew, release),
//! lease persistence across SIGKILL, proxy mode next to dnsmasq, and the
//! Router Advertisement responder. Each test makes its own namespaces (prefix
//! `dh<pid>`) and deletes them on drop.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use boot_dhcp::dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use boot_dhcp::dhcproto::Encodable;
use test_support::Need;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Root (network namespaces), `ip`, and the given client tools: else an
/// honest skip (a failure under CI).
fn skip(what: &str, tools: &[&str]) -> bool {
    let mut needs = vec![Need::Root, Need::Tool("ip")];
    needs.extend(tools.iter().map(|t| Need::Tool(t)));
    !test_support::require(what, &needs)
}

/// Run a command, panic with its output on failure.
fn run(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces deleted on drop (also when a test panics).
struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Server namespace + client namespace joined by a veth pair.
struct Lab {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    dir: tempfile::TempDir,
    _ns: Namespaces,
}

fn tag() -> String {
    format!(
        "dh{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn lab() -> Lab {
    let tag = tag();
    let (s, c) = (format!("{tag}s"), format!("{tag}c"));
    let ns = Namespaces(vec![s.clone(), c.clone()]);
    run(&format!("ip netns add {s} && ip netns add {c}"));
    let (si, ci) = (format!("{tag}a"), format!("{tag}b"));
    run(&format!(
        "ip link add {si} netns {s} type veth peer name {ci} netns {c} && \
         ip netns exec {s} sysctl -qw net.ipv6.conf.{si}.accept_dad=0 && \
         ip netns exec {c} sysctl -qw net.ipv6.conf.{ci}.accept_dad=0 && \
         ip netns exec {c} sysctl -qw net.ipv6.conf.{ci}.router_solicitations=0 && \
         ip -n {s} addr add 10.9.0.1/24 dev {si} && ip -n {s} link set {si} up && ip -n {s} link set lo up && \
         ip -n {c} link set {ci} address 02:00:00:00:00:01 && ip -n {c} link set {ci} up && ip -n {c} link set lo up"
    ));
    Lab {
        server_ns: s,
        client_ns: c,
        server_if: si,
        client_if: ci,
        dir: tempfile::tempdir().unwrap(),
        _ns: ns,
    }
}

fn example_bin() -> PathBuf {
    // target/<profile>/deps/netns-xxxx -> target/<profile>/examples/dhcpd
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/dhcpd");
    assert!(
        p.exists(),
        "{} missing (cargo test builds examples)",
        p.display()
    );
    p
}

/// The example daemon running in a namespace; killed (SIGKILL) on drop.
struct Server {
    child: Child,
}
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(ns: &str, args: &[&str]) -> Server {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(example_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dhcpd");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("dhcpd did not print READY");
    assert_eq!(line, "READY");
    Server { child }
}

fn full_server(lab: &Lab, leases: &Path) -> Server {
    start_server(
        &lab.server_ns,
        &[
            "--interface",
            &lab.server_if,
            "--server-ip",
            "10.9.0.1",
            "--subnet",
            "10.9.0.0/24",
            "--range",
            "10.9.0.100-10.9.0.150",
            "--router",
            "10.9.0.1",
            "--leases",
            leases.to_str().unwrap(),
        ],
    )
}

/// Wait until `f` returns Some, polling the condition (file contents) often.
fn await_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_has(path: &Path, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

fn udhcpc_script(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("udhcpc.events");
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip serverid=$serverid lease=$lease siaddr=$siaddr boot_file=$boot_file\" >> {out}\n\
             case \"$1\" in\n bound|renew) ip addr flush dev $interface; ip addr add $ip/$mask dev $interface ;;\n \
             deconfig) ip addr flush dev $interface ;;\nesac\nexit 0\n",
            out = out.display()
        ),
    )
    .unwrap();
    run(&format!("chmod +x {}", script.display()));
    (script, out)
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

#[test]
fn udhcpc_lease_renew_release() {
    if skip("udhcpc_lease_renew_release", &["udhcpc"]) {
        return;
    }
    let lab = lab();
    let leases = lab.dir.path().join("leases.jsonl");
    let _server = full_server(&lab, &leases);
    let (script, events) = udhcpc_script(lab.dir.path());
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client_ns,
            "udhcpc",
            "-f",
            "-i",
            &lab.client_if,
        ])
        .args([
            "-s",
            script.to_str().unwrap(),
            "-t",
            "5",
            "-T",
            "1",
            "-A",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bound = await_until("udhcpc bound", Duration::from_secs(15), || {
        file_has(&events, "bound ")
    });
    assert!(bound.contains("ip=10.9.0.100"), "{bound}");
    assert!(bound.contains("serverid=10.9.0.1"), "{bound}");
    assert!(bound.contains("lease=3600"), "{bound}");
    assert!(file_has(&leases, "\"commit\"").is_some(), "lease durable");
    // renew (SIGUSR1): unicast REQUEST with ciaddr, ACK to ciaddr
    kill(client.id(), nix::sys::signal::Signal::SIGUSR1);
    let renew = await_until("udhcpc renew", Duration::from_secs(15), || {
        file_has(&events, "renew ")
    });
    assert!(renew.contains("ip=10.9.0.100"), "{renew}");
    // release (SIGUSR2): server forgets the lease durably
    kill(client.id(), nix::sys::signal::Signal::SIGUSR2);
    await_until("lease removed", Duration::from_secs(10), || {
        file_has(&leases, "\"remove\"")
    });
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn dhclient_lease_reboot_release() {
    if skip("dhclient_lease_reboot_release", &["dhclient", "timeout"]) {
        return;
    }
    let lab = lab();
    let leases = lab.dir.path().join("leases.jsonl");
    let _server = full_server(&lab, &leases);
    let d = lab.dir.path();
    let events = d.join("dhclient.events");
    let script = d.join("dhclient.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$reason $new_ip_address\" >> {}\n\
             case \"$reason\" in BOUND|RENEW|REBOOT|REBIND) ip addr replace $new_ip_address/24 dev $interface ;; \
             RELEASE|EXPIRE|STOP) ip addr flush dev $interface ;; esac\nexit 0\n",
            events.display()
        ),
    )
    .unwrap();
    run(&format!("chmod +x {}", script.display()));
    let (lf, pf) = (d.join("dhclient.leases"), d.join("dhclient.pid"));
    let dhclient = |extra: &str| {
        run(&format!(
            "ip netns exec {ns} timeout 30 dhclient {extra} -sf {script} -lf {lf} -pf {pf} {ifc} 2>&1",
            ns = lab.client_ns,
            script = script.display(),
            lf = lf.display(),
            pf = pf.display(),
            ifc = lab.client_if
        ))
    };
    // get a lease (dhclient daemonizes once bound)
    dhclient("-1");
    let bound = file_has(&events, "BOUND").expect("BOUND event");
    assert_eq!(bound, "BOUND 10.9.0.100");
    let stop_daemon = || {
        if let Ok(pid) = std::fs::read_to_string(&pf) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    };
    // run again: INIT-REBOOT from the lease file, same address
    stop_daemon();
    dhclient("-1");
    let again = await_until("second dhclient run", Duration::from_secs(5), || {
        file_has(&events, "REBOOT").or_else(|| {
            std::fs::read_to_string(&events).ok().and_then(|t| {
                t.lines()
                    .filter(|l| l.starts_with("BOUND"))
                    .nth(1)
                    .map(str::to_string)
            })
        })
    });
    assert!(again.ends_with("10.9.0.100"), "{again}");
    eprintln!(
        "dhclient events: {:?}",
        std::fs::read_to_string(&events).unwrap_or_default()
    );
    // release
    dhclient("-r");
    await_until("lease removed", Duration::from_secs(10), || {
        file_has(&leases, "\"remove\"")
    });
    stop_daemon();
}

fn udhcpc_once(lab: &Lab, mac: &str) -> String {
    run(&format!(
        "ip -n {ns} addr flush dev {i}; ip -n {ns} link set {i} down; ip -n {ns} link set {i} address {mac}; ip -n {ns} link set {i} up",
        ns = lab.client_ns,
        i = lab.client_if
    ));
    let (script, events) = udhcpc_script(lab.dir.path());
    let _ = std::fs::remove_file(&events);
    run(&format!(
        "ip netns exec {} timeout 30 udhcpc -f -q -n -i {} -s {} -t 5 -T 1",
        lab.client_ns,
        lab.client_if,
        script.display()
    ));
    let line = file_has(&events, "bound ").expect("bound");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ip="))
        .unwrap()
        .to_string()
}

#[test]
fn lease_survives_sigkill_restart() {
    if skip("lease_survives_sigkill_restart", &["udhcpc"]) {
        return;
    }
    let lab = lab();
    let leases = lab.dir.path().join("leases.jsonl");
    let server = full_server(&lab, &leases);
    let first = udhcpc_once(&lab, "02:00:00:00:00:0a");
    let mine = udhcpc_once(&lab, "02:00:00:00:00:0b");
    assert_ne!(first, mine);
    drop(server); // SIGKILL
    let _server = full_server(&lab, &leases);
    // A server without memory would hand out the first free address.
    assert_eq!(udhcpc_once(&lab, "02:00:00:00:00:0b"), mine);
    assert_eq!(udhcpc_once(&lab, "02:00:00:00:00:0a"), first);
}

/// Run `f` on a thread inside namespace `ns` (sockets created there stay there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns handle");
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

fn pxe_packet(mtype: MessageType, mac: [u8; 6], xid: u32, extra: &[DhcpOption]) -> Vec<u8> {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, u, u, u, u, &mac);
    // broadcast flag: the test socket has no address, so unicast to yiaddr
    // (as dnsmasq would do) could not reach it
    m.set_opcode(Opcode::BootRequest)
        .set_flags(boot_dhcp::dhcproto::v4::Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(mtype));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
    for o in extra {
        m.opts_mut().insert(o.clone());
    }
    m.to_vec().unwrap()
}

/// Collect replies with `xid` for `dur`.
fn collect(
    sock: &std::net::UdpSocket,
    xid: u32,
    dur: Duration,
    want: usize,
) -> Vec<(Message, Vec<u8>)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while start.elapsed() < dur && got.len() < want {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(m) = boot_dhcp::decode(&buf[..n]) {
                if m.xid() == xid && m.opcode() == Opcode::BootReply {
                    got.push((m, buf[..n].to_vec()));
                }
            }
        }
    }
    got
}

#[test]
fn proxy_mode_next_to_dnsmasq() {
    if skip("proxy_mode_next_to_dnsmasq", &["dnsmasq", "udhcpc"]) {
        return;
    }
    // bridge in the proxy's namespace; dnsmasq and the client each in their own
    let t = tag();
    let (p, d, c) = (format!("{t}p"), format!("{t}d"), format!("{t}c"));
    let _ns = Namespaces(vec![p.clone(), d.clone(), c.clone()]);
    let br = format!("{t}br");
    let (pd, dd, pc, cc) = (
        format!("{t}pd"),
        format!("{t}dd"),
        format!("{t}pc"),
        format!("{t}cc"),
    );
    run(&format!(
        "ip netns add {p} && ip netns add {d} && ip netns add {c} && \
         ip -n {p} link add {br} type bridge && ip -n {p} addr add 10.9.0.1/24 dev {br} && ip -n {p} link set {br} up && \
         ip link add {pd} netns {p} type veth peer name {dd} netns {d} && \
         ip link add {pc} netns {p} type veth peer name {cc} netns {c} && \
         ip -n {p} link set {pd} master {br} up && ip -n {p} link set {pc} master {br} up && \
         ip -n {d} addr add 10.9.0.2/24 dev {dd} && ip -n {d} link set {dd} up && ip -n {d} link set lo up && \
         ip -n {c} link set {cc} address 02:00:00:00:00:0c && ip -n {c} link set {cc} up && ip -n {c} link set lo up"
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &d,
            "dnsmasq",
            "--keep-in-foreground",
            "--port=0",
            "--no-ping",
        ])
        .arg(format!("--interface={dd}"))
        .arg("--bind-interfaces")
        .arg("--dhcp-range=10.9.0.100,10.9.0.150,1h")
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("dnsmasq.leases").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let leases = dir.path().join("proxy.jsonl");
    let _server = start_server(
        &p,
        &[
            "--mode",
            "proxy",
            "--interface",
            &br,
            "--server-ip",
            "10.9.0.1",
            "--leases",
            leases.to_str().unwrap(),
            "--boot-file",
            "undionly.kpxe",
        ],
    );
    // a plain client (udhcpc, vendor "udhcp ...") gets its lease from dnsmasq
    let plain = run(&format!(
        "ip netns exec {c} timeout 30 udhcpc -f -q -n -i {cc} -s /bin/true -t 5 -T 1 2>&1"
    ));
    assert!(plain.contains("10.9.0.1"), "udhcpc: {plain}");
    // a PXE client sees both the address offer and the proxy offer
    let ccc = cc.clone();
    let (offers, ack) = in_netns(&c, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_broadcast(true).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind_device(Some(ccc.as_bytes())).unwrap();
        s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
            .unwrap();
        let sock: std::net::UdpSocket = s.into();
        let mac = [2, 0, 0, 0, 0, 0x0c];
        let disc = pxe_packet(MessageType::Discover, mac, 0xabcd, &[]);
        sock.send_to(&disc, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
            .unwrap();
        let offers = collect(&sock, 0xabcd, Duration::from_secs(5), 2);
        // ProxyDHCPREQUEST to 4011 (as a legacy PXE ROM does after its DHCPACK)
        let req = pxe_packet(
            MessageType::Request,
            mac,
            0xabce,
            &[DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 1))],
        );
        sock.send_to(&req, SocketAddrV4::new(Ipv4Addr::BROADCAST, 4011))
            .unwrap();
        let ack = collect(&sock, 0xabce, Duration::from_secs(5), 1);
        (offers, ack)
    });
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let proxy = offers
        .iter()
        .find(|(m, _)| m.yiaddr() == Ipv4Addr::UNSPECIFIED)
        .expect("proxy offer");
    let real = offers
        .iter()
        .find(|(m, _)| m.yiaddr() != Ipv4Addr::UNSPECIFIED)
        .expect("dnsmasq offer");
    assert!(real.0.yiaddr().octets()[3] >= 100);
    let (m, raw) = proxy;
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.siaddr(), Ipv4Addr::new(10, 9, 0, 1));
    assert_eq!(
        m.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 9, 0, 1)))
    );
    assert_eq!(
        m.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert!(raw[108..].starts_with(b"undionly.kpxe\0"));
    let (a, _) = ack.first().expect("proxy ACK on 4011");
    assert_eq!(a.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(a.fname(), Some(&b"undionly.kpxe\0"[..]));
}

#[test]
fn router_advertisement_answers_solicitation() {
    if skip("router_advertisement_answers_solicitation", &[]) {
        return;
    }
    let lab = lab();
    let leases = lab.dir.path().join("leases.jsonl");
    let _server = start_server(
        &lab.server_ns,
        &[
            "--mode",
            "proxy",
            "--interface",
            &lab.server_if,
            "--server-ip",
            "10.9.0.1",
            "--leases",
            leases.to_str().unwrap(),
            "--ra",
            &lab.server_if,
        ],
    );
    // the only RS on the link is ours (kernel RS disabled in lab()); wait for
    // the client's link-local address so the RS can be sent at all
    for (ns, ifc) in [
        (&lab.client_ns, &lab.client_if),
        (&lab.server_ns, &lab.server_if),
    ] {
        await_until("link-local address", Duration::from_secs(10), || {
            let out = run(&format!("ip -n {ns} -6 addr show dev {ifc} scope link"));
            (out.contains("fe80") && !out.contains("tentative")).then_some(())
        });
    }
    let ifc = lab.client_if.clone();
    let ra = in_netns(&lab.client_ns, move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV6),
        )
        .unwrap();
        let idx = nix::net::if_::if_nametoindex(ifc.as_str()).unwrap();
        s.bind_device(Some(ifc.as_bytes())).unwrap();
        s.set_multicast_if_v6(idx).unwrap();
        s.set_multicast_hops_v6(255).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
        let dst = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), 0, 0, idx);
        let start = Instant::now();
        let mut buf = [0u8; 1500];
        let mut next_rs = Instant::now();
        let mut last_sent = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if Instant::now() >= next_rs {
                // may fail while the link-local address is not ready yet
                match s.send_to(&rs, &dst.into()) {
                    Ok(_) => last_sent = Instant::now(),
                    Err(e) => eprintln!("RS send at {:?}: {e}", start.elapsed()),
                }
                next_rs = Instant::now() + Duration::from_millis(250);
            }
            if let Ok(n) = std::io::Read::read(&mut &s, &mut buf) {
                let data = buf[..n].to_vec();
                if data.first() == Some(&134) {
                    return Some((data, start.elapsed(), last_sent.elapsed()));
                }
            }
        }
        None
    });
    let (ra, took, since_rs) = ra.expect("no Router Advertisement received");
    assert!(ra.len() >= 16);
    assert_eq!(ra[5] & 0xc0, 0, "M and O flags clear");
    assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 0, "router lifetime 0");
    eprintln!("RA after {took:?} ({since_rs:?} after the last RS sent)");
    assert!(
        since_rs < Duration::from_millis(250),
        "RA answers the solicitation at once"
    );
}
