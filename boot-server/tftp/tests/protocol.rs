//! Protocol behaviour no Debian client exercises, checked with a small
//! in-test client: RFC 7440 windowsize (with a lost block), the EDK2 tsize
//! probe, no Sorcerer's Apprentice, retransmission on timeout, write requests,
//! netascii and malformed packets.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use boot_tftp::TftpStats;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowsize_4_with_a_lost_block() {
    let root = tempfile::tempdir().unwrap();
    let len = 1468 * 50 + 333;
    let want = random_bytes(len, 11);
    std::fs::write(root.path().join("w.bin"), &want).unwrap();
    // A long timeout: recovering the lost block must not depend on it.
    let mut srv = TestServer::start(root.path(), |c| c.timeout = Duration::from_secs(3)).await;
    let addr = srv.addr;
    let got = tokio::task::spawn_blocking(move || {
        let req = request(
            1,
            &[
                "w.bin",
                "octet",
                "blksize",
                "1468",
                "windowsize",
                "4",
                "tsize",
                "0",
            ],
        );
        let (sock, oack, peer) = client(addr, &req);
        let mut opts = oack_options(&oack);
        opts.sort();
        assert_eq!(
            opts,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), len.to_string()),
                ("windowsize".into(), "4".into())
            ]
        );
        sock.send_to(&ack(0), peer).unwrap();
        let mut data = Vec::new();
        let mut expected: u16 = 1;
        let mut dropped_once = false;
        let mut since_ack = 0;
        loop {
            let (p, from) = recv(&sock);
            assert_eq!(from, peer);
            assert_eq!(opcode(&p), 3, "DATA expected");
            let b = block_no(&p);
            if b == 10 && !dropped_once {
                dropped_once = true; // simulate loss of block 10
                continue;
            }
            if b != expected {
                // RFC 7440: out of order -> ACK the last in-order block at once.
                sock.send_to(&ack(expected - 1), peer).unwrap();
                since_ack = 0;
                // Drain the rest of the stale window; the server resends from `expected`.
                continue;
            }
            data.extend_from_slice(&p[4..]);
            expected += 1;
            since_ack += 1;
            let last = p.len() - 4 < 1468;
            if since_ack == 4 || last {
                sock.send_to(&ack(b), peer).unwrap();
                since_ack = 0;
            }
            if last {
                return (data, dropped_once);
            }
        }
    })
    .await
    .unwrap();
    assert!(got.1, "block 10 was never seen");
    assert!(got.0 == want, "window transfer data differs");
    assert_eq!(srv.finished("w.bin").await, (len as u64, Ok(())));
    assert_eq!(
        TftpStats::get(&srv.stats.retransmits),
        0,
        "loss recovered without a timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edk2_tsize_probe_then_error_is_normal() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("boot.efi"), random_bytes(123_457, 12)).unwrap();
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        let req = request(1, &["boot.efi", "octet", "tsize", "0", "blksize", "1468"]);
        let (sock, oack, peer) = client(addr, &req);
        let opts = oack_options(&oack);
        assert!(
            opts.contains(&("tsize".into(), "123457".into())),
            "{opts:?}"
        );
        let mut err = vec![0, 5, 0, 8];
        err.extend_from_slice(b"User aborted the transfer\0");
        sock.send_to(&err, peer).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(srv.finished("boot.efi").await, (0, Ok(())));
    assert_eq!(TftpStats::get(&srv.stats.size_probes), 1);
    assert_eq!(TftpStats::get(&srv.stats.errors), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ack_does_not_trigger_retransmission() {
    let root = tempfile::tempdir().unwrap();
    let want = random_bytes(512 * 2 + 10, 13);
    std::fs::write(root.path().join("d.bin"), &want).unwrap();
    let mut srv = TestServer::start(root.path(), |c| c.timeout = Duration::from_secs(3)).await;
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        let (sock, p1, peer) = client(addr, &request(1, &["d.bin", "octet"]));
        assert_eq!(
            (opcode(&p1), block_no(&p1)),
            (3, 1),
            "no options -> DATA 1 at once"
        );
        sock.send_to(&ack(1), peer).unwrap();
        sock.send_to(&ack(1), peer).unwrap();
        let (p2, _) = recv(&sock);
        assert_eq!(block_no(&p2), 2);
        // Within well under the 3 s timeout, nothing else may arrive.
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 600];
        assert!(
            sock.recv_from(&mut buf).is_err(),
            "duplicate ACK caused a resend"
        );
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.send_to(&ack(2), peer).unwrap();
        let (p3, _) = recv(&sock);
        assert_eq!((block_no(&p3), p3.len() - 4), (3, 10));
        sock.send_to(&ack(3), peer).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(srv.finished("d.bin").await, (want.len() as u64, Ok(())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmits_on_timeout_then_gives_up() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("t.bin"), random_bytes(2000, 14)).unwrap();
    let mut srv = TestServer::start(root.path(), |c| {
        c.timeout = Duration::from_millis(300);
        c.retries = 2;
    })
    .await;
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        let (sock, p1, _) = client(addr, &request(1, &["t.bin", "octet"]));
        // Never ACK: the same block must come back after each timeout.
        for _ in 0..2 {
            let (p, _) = recv(&sock);
            assert_eq!(p, p1, "retransmission differs");
        }
    })
    .await
    .unwrap();
    let (bytes, result) = srv.finished("t.bin").await;
    assert_eq!(bytes, 0);
    assert!(result.unwrap_err().contains("timed out"));
    assert_eq!(TftpStats::get(&srv.stats.retransmits), 2);
    assert_eq!(TftpStats::get(&srv.stats.errors), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_request_refused_and_netascii_converted() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("n.txt"), b"a\nb\rc").unwrap();
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        let (_, e, _) = client(addr, &request(2, &["up.bin", "octet"]));
        assert_eq!((opcode(&e), block_no(&e)), (5, 2), "WRQ -> ERROR 2");
        let (sock, p, peer) = client(addr, &request(1, &["n.txt", "NetASCII"]));
        assert_eq!(&p[4..], b"a\r\nb\r\0c");
        sock.send_to(&ack(1), peer).unwrap();
        // tsize is the converted size (a streaming counting pass).
        let req = request(1, &["n.txt", "netascii", "tsize", "0"]);
        let (sock, oack, peer) = client(addr, &req);
        assert_eq!(oack_options(&oack), vec![("tsize".into(), "7".into())]);
        sock.send_to(&ack(0), peer).unwrap();
        let (p, _) = recv(&sock);
        assert_eq!(&p[4..], b"a\r\nb\r\0c");
        sock.send_to(&ack(1), peer).unwrap();
    })
    .await
    .unwrap();
    assert!(srv
        .finished("up.bin")
        .await
        .1
        .unwrap_err()
        .contains("read-only"));
    assert_eq!(srv.finished("n.txt").await, (7, Ok(())));
    assert_eq!(srv.finished("n.txt").await, (7, Ok(())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_dropped_and_counted() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("ok"), b"ok").unwrap();
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk: [&[u8]; 5] = [
        b"",
        b"\x00",
        b"\x00\x01noterminator",
        b"\x00\x04\x00\x01",
        b"\xff\xff\x00\x00",
    ];
    for j in junk {
        sock.send_to(j, srv.addr).unwrap();
    }
    let stats = srv.stats.clone();
    eventually("5 malformed counted", || {
        TftpStats::get(&stats.malformed_dropped) == 5
    })
    .await;
    assert_eq!(TftpStats::get(&stats.requests), 0);
    // Still serving.
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        let (sock, p, peer) = client(addr, &request(1, &["ok", "octet"]));
        assert_eq!(&p[4..], b"ok");
        // Junk on the transfer socket is dropped too; the transfer goes on.
        sock.send_to(b"\x00", peer).unwrap();
        sock.send_to(&ack(1), peer).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(srv.finished("ok").await, (2, Ok(())));
    assert_eq!(TftpStats::get(&stats.malformed_dropped), 6);
}
