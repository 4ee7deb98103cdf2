//! NBD tests against a real nbdkit (userspace handshake and simple-reply
//! transmission) and against scripted fake servers (fallback paths).

use super::handshake::*;
use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

struct Nbdkit {
    child: Child,
    port: u16,
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `nbdkit memory 64M` on loopback and waits until it accepts;
/// `None` (reported as a skip, a failure under CI) when nbdkit is missing.
fn nbdkit(test: &str) -> Option<Nbdkit> {
    if !test_support::require(test, &[test_support::Need::Tool("nbdkit")]) {
        return None;
    }
    let port = free_port();
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["memory", "64M"])
        .stdout(Stdio::null())
        .spawn();
    let child = child.expect("nbdkit is installed but does not start");
    let k = Nbdkit { child, port };
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nbdkit never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(k)
}

/// One simple-reply request (what the kernel will do on this socket).
fn request(s: &mut TcpStream, typ: u16, cookie: u64, off: u64, data: &[u8], len: u32) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&typ.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&off.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(data);
    s.write_all(&r).unwrap();
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(
        u32::from_be_bytes(hdr[0..4].try_into().unwrap()),
        0x6744_6698,
        "simple reply magic"
    );
    assert_eq!(
        u32::from_be_bytes(hdr[4..8].try_into().unwrap()),
        0,
        "error"
    );
    assert_eq!(u64::from_be_bytes(hdr[8..16].try_into().unwrap()), cookie);
    let mut payload = vec![0u8; if typ == 0 { len as usize } else { 0 }];
    s.read_exact(&mut payload).unwrap();
    payload
}

#[test]
fn handshake_with_nbdkit_then_simple_replies() {
    let Some(k) = nbdkit("handshake_with_nbdkit_then_simple_replies") else {
        return;
    };
    let mut neg = super::connect("127.0.0.1", k.port, "").unwrap();
    assert_eq!(neg.size, 64 << 20);
    assert!(neg.flags & TF_HAS_FLAGS != 0);
    assert!(neg.flags & TF_READ_ONLY == 0);
    // Transmission phase: write then read back with simple replies only.
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    request(&mut neg.stream, 1, 1, 8192, &data, 4096);
    let back = request(&mut neg.stream, 0, 2, 8192, &[], 4096);
    assert_eq!(back, data);
    assert_eq!(kernel_block_size(neg.block_size), 512);
}

/// A scripted server: newstyle, refuses GO with ERR_UNSUP, answers EXPORT_NAME.
fn fake_pre_go_server(no_zeroes: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(&NBDMAGIC.to_be_bytes());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(
            &(FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 }).to_be_bytes(),
        );
        s.write_all(&b).unwrap();
        let mut cf = [0u8; 4];
        s.read_exact(&mut cf).unwrap();
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0; len as usize];
        s.read_exact(&mut d).unwrap();
        assert_eq!(opt, OPT_GO);
        assert_eq!(d, go_payload("disk1"));
        let mut r = Vec::new();
        r.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        r.extend_from_slice(&OPT_GO.to_be_bytes());
        r.extend_from_slice(&REP_ERR_UNSUP.to_be_bytes());
        r.extend_from_slice(&0u32.to_be_bytes());
        s.write_all(&r).unwrap();
        s.read_exact(&mut h).unwrap();
        assert_eq!(
            u32::from_be_bytes(h[8..12].try_into().unwrap()),
            OPT_EXPORT_NAME
        );
        let mut name = vec![0; u32::from_be_bytes(h[12..16].try_into().unwrap()) as usize];
        s.read_exact(&mut name).unwrap();
        assert_eq!(name, b"disk1");
        let mut r = Vec::new();
        r.extend_from_slice(&(1u64 << 30).to_be_bytes());
        r.extend_from_slice(&3u16.to_be_bytes());
        if !no_zeroes {
            r.extend_from_slice(&[0u8; 124]);
        }
        s.write_all(&r).unwrap();
        let _ = s.read(&mut [0u8; 1]);
    });
    port
}

#[test]
fn falls_back_to_export_name() {
    for nz in [true, false] {
        let port = fake_pre_go_server(nz);
        let neg = super::connect("127.0.0.1", port, "disk1").unwrap();
        assert_eq!((neg.size, neg.flags), (1 << 30, 3));
    }
}

#[test]
fn garbage_server_is_an_error_not_a_panic() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let e = super::connect("127.0.0.1", port, "x").unwrap_err();
    assert!(format!("{e:#}").contains("not an NBD server"), "{e:#}");
    // Refused connection.
    let port = free_port();
    assert!(super::connect("127.0.0.1", port, "x").is_err());
}

/// Early boot may try before the server listens: `--wait` keeps trying.
#[test]
fn connect_waits_for_a_server_that_starts_late() {
    if !test_support::require(
        "connect_waits_for_a_server_that_starts_late",
        &[test_support::Need::Tool("nbdkit")],
    ) {
        return;
    }
    let port = free_port();
    assert!(super::connect("127.0.0.1", port, "").is_err());
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        Nbdkit {
            child: Command::new("nbdkit")
                .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .args(["memory", "64M"])
                .stdout(Stdio::null())
                .spawn()
                .expect("nbdkit starts"),
            port,
        }
    });
    let neg = connect_with_wait("127.0.0.1", port, "", Duration::from_secs(20)).unwrap();
    assert_eq!(neg.size, 64 << 20);
    drop(late.join().unwrap());
}

#[test]
fn fs_candidate_order() {
    let v = fs_candidates("nodev\tsysfs\n\text3\n\text2\n\text4\nnodev\tproc\n\txfs\n\tfuseblk\n");
    assert_eq!(v, vec!["ext4", "xfs", "ext3", "ext2"]);
    assert_eq!(kernel_block_size(Some((4096, 4096, 1 << 25))), 4096);
    assert_eq!(kernel_block_size(Some((1, 4096, 1 << 25))), 512);
    assert_eq!(kernel_block_size(Some((3000, 4096, 1 << 25))), 512);
}

/// Full kernel attach through netlink: only where the host kernel has the
/// nbd driver (`cargo test -- --ignored`). The CI machines' kernel has no
/// modules at all, so there the QEMU smoke test (node-agent/tests/qemu-smoke.sh,
/// run by qemu-tests/test-all.sh) covers the same path inside a guest.
#[test]
#[ignore = "needs the host kernel's nbd driver; covered in CI by the QEMU smoke test"]
fn kernel_attach_read_write_disconnect() {
    use test_support::Need;
    // Where the host kernel has no nbd driver the QEMU smoke test
    // (node-agent/tests/qemu-smoke.sh) exercises the same path in a guest.
    if !test_support::require(
        "kernel_attach_read_write_disconnect",
        &[Need::Root, Need::Module("nbd"), Need::Tool("nbdkit")],
    ) {
        return;
    }
    let Some(k) = nbdkit("kernel_attach_read_write_disconnect") else {
        return;
    };
    let a = attach("127.0.0.1", k.port, "", None).unwrap();
    assert_eq!(a.size, 64 << 20);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a.device)
        .unwrap();
    let data = vec![0x5au8; 4096];
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    let mut f2 = fs::File::open(&a.device).unwrap();
    let mut back = vec![0u8; 4096];
    f2.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    drop((f, f2));
    if a.via == "netlink" {
        netlink::disconnect(a.index).unwrap();
    }
}
