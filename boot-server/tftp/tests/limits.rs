//! Denial of service by unauthenticated clients: a client may not choose a
//! huge retransmission timeout, may not hold more than its share of transfer
//! slots, and a flood from one address leaves other clients served. The
//! abusive side is a raw UDP socket (no real client misbehaves this way).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use boot_tftp::TftpStats;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_above_10s_is_declined() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f"), random_bytes(5000, 21)).unwrap();
    let srv = TestServer::start(root.path(), |c| c.timeout = Duration::from_millis(300)).await;
    let addr = srv.addr;
    tokio::task::spawn_blocking(move || {
        // 255 s: left out of the OACK, the server's 300 ms applies.
        let req = request(1, &["f", "octet", "timeout", "255", "blksize", "1024"]);
        let (sock, oack, _) = client(addr, &req);
        assert_eq!(
            oack_options(&oack),
            vec![("blksize".to_string(), "1024".to_string())],
            "timeout 255 must not be acknowledged"
        );
        // No ACK: the OACK comes again after the server's own timeout.
        let t = Instant::now();
        let (again, _) = recv(&sock);
        assert_eq!(again, oack);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "retransmitted after {:?}",
            t.elapsed()
        );
        // 11 s is declined too; 10 s is the largest honoured value.
        let (_, oack, _) = client(addr, &request(1, &["f", "octet", "timeout", "11"]));
        assert_eq!(opcode(&oack), 3, "no acknowledged option -> DATA 1 at once");
        let (_, oack, _) = client(addr, &request(1, &["f", "octet", "timeout", "10"]));
        assert_eq!(
            oack_options(&oack),
            vec![("timeout".to_string(), "10".to_string())]
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limit_answers_with_error() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f"), random_bytes(5000, 22)).unwrap();
    // Default limits (8 per address); a long timeout keeps the slots taken.
    let srv = TestServer::start(root.path(), |c| c.timeout = Duration::from_secs(5)).await;
    let addr = srv.addr;
    let stats = srv.stats.clone();
    let held = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..8 {
            let (sock, p, peer) = client(addr, &request(1, &["f", "octet"]));
            assert_eq!((opcode(&p), block_no(&p)), (3, 1), "admitted: DATA 1");
            held.push((sock, peer));
        }
        // The 9th from the same address is refused at once, with an ERROR.
        let t = Instant::now();
        let (_, p, _) = client(addr, &request(1, &["f", "octet"]));
        let (code, msg) = error_of(&p);
        assert_eq!(code, 0);
        assert!(msg.contains("too many transfers"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(1));
        // Another address is served.
        let (sock, p, peer) = client_from("127.0.0.2", addr, &request(1, &["f", "octet"]));
        assert_eq!((opcode(&p), block_no(&p)), (3, 1), "other address: DATA 1");
        sock.send_to(&[0, 5, 0, 0, 0], peer).unwrap();
        held
    })
    .await
    .unwrap();
    // One of the 8 ends (client ERROR): its slot is free again.
    let (sock, peer) = &held[0];
    sock.send_to(&[0, 5, 0, 0, 0], peer).unwrap();
    eventually("a slot is released", || TftpStats::get(&stats.active) == 7).await;
    tokio::task::spawn_blocking(move || {
        let (_, p, _) = client(addr, &request(1, &["f", "octet"]));
        assert_eq!((opcode(&p), block_no(&p)), (3, 1), "admitted again");
    })
    .await
    .unwrap();
    assert_eq!(TftpStats::get(&srv.stats.refused_busy), 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_512_from_one_address_leaves_others_served() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("boot.efi"), random_bytes(200_000, 23)).unwrap();
    let srv = TestServer::start(root.path(), |_| {}).await;
    let addr = srv.addr;
    let (first_block, errors) = tokio::task::spawn_blocking(move || {
        // The flood: 512 requests, each asking a 255 s timeout, never ACKed.
        let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Room for all 504 ERRORs the test counts.
        socket2::SockRef::from(&flood)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let req = request(
            1,
            &["boot.efi", "octet", "timeout", "255", "blksize", "1468"],
        );
        for _ in 0..512 {
            flood.send_to(&req, addr).unwrap();
        }
        // A real client on another address: OACK, ACK 0, DATA 1.
        let t = Instant::now();
        let legit = request(1, &["boot.efi", "octet", "blksize", "1468", "tsize", "0"]);
        let (sock, oack, peer) = client_from("127.0.0.2", addr, &legit);
        assert_eq!(
            opcode(&oack),
            6,
            "legitimate client refused: {:?}",
            error_of(&oack)
        );
        sock.send_to(&ack(0), peer).unwrap();
        let (d1, _) = recv(&sock);
        let first_block = t.elapsed();
        assert_eq!((opcode(&d1), block_no(&d1), d1.len()), (3, 1, 4 + 1468));
        // The flooder got ERRORs, not silence, for what was over its limit.
        flood
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut errors = 0;
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = flood.recv_from(&mut buf) {
            if opcode(&buf[..n]) == 5 {
                errors += 1;
                if errors == 504 {
                    break;
                }
            }
        }
        (first_block, errors)
    })
    .await
    .unwrap();
    assert!(
        first_block < Duration::from_secs(1),
        "first block after {first_block:?}"
    );
    assert_eq!(errors, 504, "over-limit requests must get an ERROR");
    assert_eq!(TftpStats::get(&srv.stats.refused_busy), 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_evicts_clients_that_never_acked() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("f"), random_bytes(50_000, 24)).unwrap();
    let mut srv = TestServer::start(root.path(), |c| {
        c.timeout = Duration::from_secs(5);
        c.max_transfers = 16;
    })
    .await;
    let addr = srv.addr;
    let stats = srv.stats.clone();
    let (first_block, live) = tokio::task::spawn_blocking(move || {
        // A real client that has ACKed once (confirmed), then paused.
        let (live, p, live_peer) = client_from("127.0.0.3", addr, &request(1, &["f", "octet"]));
        assert_eq!(block_no(&p), 1);
        live.send_to(&ack(1), live_peer).unwrap();
        let (p, _) = recv(&live);
        assert_eq!(block_no(&p), 2);
        // A flood over two addresses, 8 each, never ACKed: fills the server.
        let mut flood = Vec::new();
        for ip in ["127.0.1.1", "127.0.1.2"] {
            let s = UdpSocket::bind((ip, 0)).unwrap();
            for _ in 0..8 {
                s.send_to(&request(1, &["f", "octet", "timeout", "255"]), addr)
                    .unwrap();
            }
            flood.push(s);
        }
        // Another client is still served at once: an unconfirmed flood
        // transfer makes room, never the confirmed one.
        let t = Instant::now();
        let (_, p, _) = client_from("127.0.0.2", addr, &request(1, &["f", "octet"]));
        assert_eq!((opcode(&p), block_no(&p)), (3, 1), "new client: DATA 1");
        let first_block = t.elapsed();
        live.send_to(&ack(2), live_peer).unwrap();
        let (p, _) = recv(&live);
        assert_eq!(
            (opcode(&p), block_no(&p)),
            (3, 3),
            "confirmed transfer goes on"
        );
        live.send_to(&[0, 5, 0, 0, 0], live_peer).unwrap();
        (first_block, flood)
    })
    .await
    .unwrap();
    assert!(first_block < Duration::from_secs(1), "{first_block:?}");
    // The evicted flood transfers ended with "evicted" (and an ERROR to them).
    loop {
        let (_, result) = srv.finished("f").await;
        if result.is_err_and(|e| e.contains("evicted")) {
            break;
        }
    }
    assert_eq!(TftpStats::get(&stats.refused_busy), 0);
    drop(live);
}
