//! Protocol behaviour with a hand-written client: kill -9 durability of flushed writes,
//! pipelining with out-of-order replies, TRIM/WRITE_ZEROES semantics, bounds and size
//! limits, malformed input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use boot_nbd::{AllowAllResolver, DiskStore};
use common::*;

const SIZE: usize = 16 * 1024 * 1024;

fn store_with_overlay(dir: &std::path::Path) -> (Arc<DiskStore>, Vec<u8>) {
    let src = dir.join("src.img");
    let base = random_file(&src, SIZE);
    let store = Arc::new(DiskStore::open(&dir.join("store")).unwrap());
    store.create_base_from_file("deb", &src).unwrap();
    store.create_overlay("node", "deb").unwrap();
    (store, base)
}

#[test]
fn flushed_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let (store, base) = store_with_overlay(dir.path());
    drop(store);

    let mut srv = ServerProc::start(&root, "127.0.0.1:0");
    let mut c = Client::connect(srv.addr, "node").unwrap();
    let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.write(12_345, &a); // partial chunks at both ends
    c.write(5 * 1024 * 1024, &a[..65_536]); // exactly one chunk
    let (e, _) = c.call(CMD_WRITE_ZEROES, 0, 8 * 1024 * 1024, 200_000, &[]);
    assert_eq!(e, 0);
    let (e, _) = c.call(
        CMD_WRITE,
        1, /* FUA */
        10 * 1024 * 1024 + 7,
        1000,
        &a[..1000],
    );
    assert_eq!(e, 0);
    c.flush();
    // An unflushed write: may be lost, but must read as old or new, never garbage.
    c.write(12 * 1024 * 1024 + 100, &a[..70_000]);
    srv.kill9();

    let srv2 = ServerProc::start(&root, "127.0.0.1:0");
    let mut c = Client::connect(srv2.addr, "node").unwrap();
    let got = c.read(0, SIZE as u32);
    let mut exp = base.clone();
    exp[12_345..12_345 + a.len()].copy_from_slice(&a);
    exp[5 * 1024 * 1024..5 * 1024 * 1024 + 65_536].copy_from_slice(&a[..65_536]);
    exp[8 * 1024 * 1024..8 * 1024 * 1024 + 200_000].fill(0);
    let f = 10 * 1024 * 1024 + 7;
    exp[f..f + 1000].copy_from_slice(&a[..1000]);
    let u = 12 * 1024 * 1024 + 100;
    let unflushed = &got[u..u + 70_000];
    assert!(
        unflushed == &base[u..u + 70_000] || unflushed == &a[..70_000],
        "unflushed region holds neither old nor new data"
    );
    exp[u..u + 70_000].copy_from_slice(unflushed);
    assert!(got == exp, "flushed data lost after kill -9");
}

#[test]
fn pipelined_requests_and_multi_conn() {
    let dir = tempfile::tempdir().unwrap();
    let (store, base) = store_with_overlay(dir.path());
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store)));
    let mut c1 = Client::connect(addr, "node").unwrap();
    let mut c2 = Client::connect(addr, "node").unwrap();
    assert!(c1.flags & (1 << 8) != 0, "CAN_MULTI_CONN");
    // 64 writes in flight on c1 (disjoint 40 000-byte pieces straddling chunks).
    let mut sent = Vec::new();
    for i in 0..64u64 {
        let piece = vec![i as u8 + 1; 40_000];
        sent.push(c1.send(CMD_WRITE, 0, i * 50_000 + 30_000, 40_000, &piece));
    }
    let mut got: Vec<u64> = (0..64)
        .map(|_| c1.recv())
        .map(|(k, e, _)| {
            assert_eq!(e, 0);
            k
        })
        .collect();
    got.sort();
    assert_eq!(got, sent);
    // The other connection sees them (shared overlay object) after c1's flush.
    c1.flush();
    let mut reads = Vec::new();
    for i in 0..64u64 {
        reads.push((c2.send(CMD_READ, 0, i * 50_000 + 25_000, 50_000, &[]), i));
    }
    let mut by_cookie = std::collections::HashMap::new();
    for _ in 0..64 {
        let (k, e, d) = c2.recv();
        assert_eq!(e, 0);
        by_cookie.insert(k, d);
    }
    for (k, i) in reads {
        let d = &by_cookie[&k];
        let off = (i * 50_000 + 25_000) as usize;
        assert_eq!(&d[..5_000], &base[off..off + 5_000], "gap keeps base bytes");
        assert!(d[5_000..45_000].iter().all(|b| *b == i as u8 + 1));
    }
}

#[test]
fn trim_and_zero_read_back_zeros_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (store, base) = store_with_overlay(dir.path());
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store)));
    let mut c = Client::connect(addr, "node").unwrap();
    // TRIM over partial + whole chunks, WRITE_ZEROES with NO_HOLE.
    assert_eq!(c.call(CMD_TRIM, 0, 1000, 300_000, &[]).0, 0);
    assert_eq!(c.call(CMD_WRITE_ZEROES, 2, 1_000_000, 131_072, &[]).0, 0);
    let d = c.read(0, 1_200_000);
    assert_eq!(&d[..1000], &base[..1000]);
    assert!(
        d[1000..301_000].iter().all(|b| *b == 0),
        "trimmed range is not zero"
    );
    assert_eq!(&d[301_000..1_000_000], &base[301_000..1_000_000]);
    assert!(d[1_000_000..1_131_072].iter().all(|b| *b == 0));
    // Write into a zeroed chunk keeps the rest zero.
    c.write(70_000, &[9; 10]);
    let d = c.read(65_536, 65_536);
    assert!(d[..4464].iter().all(|b| *b == 0) && d[4464..4474] == [9; 10]);
    assert!(d[4474..].iter().all(|b| *b == 0));

    // Bounds and size limits: errors, connection stays usable.
    assert_eq!(c.call(CMD_READ, 0, SIZE as u64 - 10, 20, &[]).0, 22);
    assert_eq!(c.call(CMD_READ, 0, u64::MAX - 1, 20, &[]).0, 22);
    assert_eq!(c.call(CMD_READ, 0, 0, 64 << 20, &[]).0, 22);
    assert_eq!(c.call(CMD_WRITE, 0, SIZE as u64 - 1, 2, &[1, 2]).0, 28);
    assert_eq!(c.call(99, 0, 0, 0, &[]).0, 22);
    assert_eq!(c.call(CMD_READ, 0x8000, 0, 1, &[]).0, 22);
    // Oversized WRITE: payload skipped, EINVAL, stream stays in sync.
    let big = vec![0u8; (32 << 20) + 1];
    assert_eq!(c.call(CMD_WRITE, 0, 0, big.len() as u32, &big).0, 22);
    assert_eq!(c.read(0, 1000), base[..1000].to_vec());

    // Read-only base export refuses writes with EPERM.
    let mut b = Client::connect(addr, "deb").unwrap();
    assert!(b.flags & 2 != 0, "READ_ONLY flag");
    assert_eq!(b.call(CMD_WRITE, 0, 0, 3, &[1, 2, 3]).0, 1);
    b.disconnect();

    // Garbage in the transmission phase: server drops that connection only.
    c.s.write_all(&[0xde; 28]).unwrap();
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    // Garbage in the handshake.
    let mut g = TcpStream::connect(addr).unwrap();
    let mut hello = [0u8; 18];
    g.read_exact(&mut hello).unwrap();
    g.write_all(&[0xff; 64]).unwrap();
    let _ = g.read_to_end(&mut rest);
    let mut c = Client::connect(addr, "node").unwrap();
    assert_eq!(c.read(0, 10), base[..10].to_vec());
}

fn opt(s: &mut TcpStream, o: u32, data: &[u8]) {
    let mut v = b"IHAVEOPT".to_vec();
    v.extend_from_slice(&o.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    s.write_all(&v).unwrap();
}

/// (reply type, payload) of one option reply.
fn opt_reply(s: &mut TcpStream, o: u32) -> (u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u64::from_be_bytes(h[0..8].try_into().unwrap()),
        0x3e889045565a9
    );
    assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), o);
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (u32::from_be_bytes(h[12..16].try_into().unwrap()), p)
}

#[test]
fn option_haggling() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _base) = store_with_overlay(dir.path());
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store)));
    let mut s = TcpStream::connect(addr).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(
        u16::from_be_bytes([g[16], g[17]]),
        3,
        "FIXED_NEWSTYLE | NO_ZEROES"
    );
    s.write_all(&1u32.to_be_bytes()).unwrap(); // fixed newstyle, zeroes wanted
    opt(&mut s, 99, b"whatever");
    assert_eq!(
        opt_reply(&mut s, 99).0,
        (1 << 31) + 1,
        "unknown option -> ERR_UNSUP"
    );
    opt(&mut s, 5, &[]);
    assert_eq!(
        opt_reply(&mut s, 5).0,
        (1 << 31) + 1,
        "STARTTLS -> ERR_UNSUP"
    );
    opt(&mut s, 8, b"x");
    assert_eq!(
        opt_reply(&mut s, 8).0,
        (1 << 31) + 3,
        "payload on STRUCTURED_REPLY"
    );
    opt(&mut s, 10, &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        opt_reply(&mut s, 10).0,
        (1 << 31) + 3,
        "SET_META_CONTEXT before STRUCTURED"
    );
    opt(&mut s, 6, &[0, 0, 0, 2, b'n']);
    assert_eq!(opt_reply(&mut s, 6).0, (1 << 31) + 3, "truncated INFO");
    opt(&mut s, 3, &[]);
    let mut names = Vec::new();
    loop {
        let (t, p) = opt_reply(&mut s, 3);
        if t == 1 {
            break;
        }
        assert_eq!(t, 2);
        names.push(String::from_utf8(p[4..].to_vec()).unwrap());
    }
    assert!(names.contains(&"node".to_string()) && names.contains(&"deb".to_string()));
    // EXPORT_NAME without NO_ZEROES: size, flags, 124 zero bytes, then transmission.
    opt(&mut s, 1, b"node");
    let mut r = [0u8; 134];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), SIZE as u64);
    assert!(r[10..].iter().all(|b| *b == 0));
    let mut req = Vec::new();
    req.extend_from_slice(&0x25609513u32.to_be_bytes());
    req.extend_from_slice(&[0, 0, 0, 3]); // FLUSH
    req.extend_from_slice(&42u64.to_be_bytes());
    req.extend_from_slice(&[0; 12]);
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 16];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(&rep[0..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0]);
    assert_eq!(u64::from_be_bytes(rep[8..16].try_into().unwrap()), 42);

    // ABORT gets an ACK and the connection closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    opt(&mut s, 2, &[]);
    assert_eq!(opt_reply(&mut s, 2).0, 1);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn flush_fails_after_a_failed_data_sync_and_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_overlay(dir.path());
    let addr = start_server(store.clone(), Arc::new(AllowAllResolver(store.clone())));
    let mut c = Client::connect(addr, "node").unwrap();
    c.write(0, &[1u8; 4096]);
    c.flush();
    // The server shares one Overlay per id: this is the object the connection writes to.
    let ov = store.open_overlay("node").unwrap();
    c.write(1 << 20, &[2u8; 100_000]);
    ov.fail_next_data_syncs(1);
    let (e, _) = c.call(CMD_FLUSH, 0, 0, 0, &[]);
    assert_eq!(e, 5, "FLUSH over a failed data sync must fail with EIO");
    let (e, _) = c.call(CMD_FLUSH, 0, 0, 0, &[]);
    assert_eq!(
        e, 5,
        "a later FLUSH must fail too: the writes are not durable"
    );
    let (e, _) = c.call(CMD_WRITE, 1 /* FUA */, 0, 10, &[3u8; 10]);
    assert_eq!(
        e, 5,
        "a FUA write must fail while the overlay is not durable"
    );
    // A second connection to the same overlay is not fooled either.
    let mut c2 = Client::connect(addr, "node").unwrap();
    let (e, _) = c2.call(CMD_FLUSH, 0, 0, 0, &[]);
    assert_eq!(e, 5);
    // Reads keep working.
    assert_eq!(c.read(1 << 20, 4), vec![2u8; 4]);
}
