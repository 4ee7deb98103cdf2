//! Access policy and lifecycle, with a minimal initiator that can bind its source
//! address (libiscsi cannot): a target reachable only from one address, removal and
//! revocation closing open sessions at once, connection caps, and garbage input.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use boot_iscsi::{DiskRef, IscsiLimits, TargetConfig};
use common::*;

const SIZE: usize = 4 << 20;
const PINNED: &str = "iqn.2026-12.test.boot:pinned";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_target_pinned_to_an_address_refuses_every_other_address() {
    let fx = Fixture::new(SIZE);
    fx.handle
        .add_target(
            PINNED,
            TargetConfig {
                disk: DiskRef::Overlay("node".into()),
                allowed_initiator: Some("127.0.0.2".parse().unwrap()),
                chap: None,
            },
        )
        .unwrap();
    // From 127.0.0.1: "target not found" (0x0203), no hint that it exists.
    let r = Client::login(fx.addr, Some("127.0.0.1".parse().unwrap()), PINNED);
    assert_eq!(r.err(), Some(0x0203));
    // From the allowed address: works, and reads the disk.
    let mut c = Client::login(fx.addr, Some("127.0.0.2".parse().unwrap()), PINNED).unwrap();
    assert_eq!(c.read10(0, 8).unwrap(), fx.base[..4096]);
    // Unknown targets look the same as hidden ones.
    let r = Client::login(fx.addr, None, "iqn.2026-12.test.boot:nope");
    assert_eq!(r.err(), Some(0x0203));
}

#[test]
fn removing_a_target_cuts_its_open_sessions_and_it_cannot_log_in_again() {
    let fx = Fixture::new(SIZE);
    let mut c1 = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    let mut c2 = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    let mut other = Client::login(fx.addr, None, BASE_IQN).unwrap();
    assert_eq!(c1.read10(8, 1).unwrap(), fx.base[4096..4608]);
    assert_eq!(fx.handle.connections_to(OVERLAY_IQN), 2);

    let t0 = Instant::now();
    assert_eq!(fx.handle.remove_target(OVERLAY_IQN), 2);
    assert!(c1.read10(0, 1).is_err(), "removed target still answered");
    assert!(c2.read10(0, 1).is_err(), "removed target still answered");
    assert!(t0.elapsed() < Duration::from_secs(2), "not cut at once");
    assert!(rt().block_on(fx.handle.wait_closed(OVERLAY_IQN, Duration::from_secs(5))));
    assert_eq!(
        Client::login(fx.addr, None, OVERLAY_IQN).err(),
        Some(0x0203)
    );
    // Other targets' sessions are untouched.
    assert_eq!(other.read10(0, 1).unwrap(), fx.base[..512]);
}

#[test]
fn revoking_an_overlay_cuts_sessions_on_it_and_replacing_a_target_too() {
    let fx = Fixture::new(SIZE);
    let mut c = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    c.read10(0, 1).unwrap();
    assert_eq!(fx.handle.revoke_overlay("node"), 1);
    assert!(c.read10(0, 1).is_err());
    // The target itself stays: a new login works.
    let mut c = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    c.read10(0, 1).unwrap();
    // Pointing the target elsewhere (e.g. the node moved) cuts the old session.
    fx.handle
        .add_target(
            OVERLAY_IQN,
            TargetConfig {
                disk: DiskRef::Overlay("node".into()),
                allowed_initiator: Some("127.0.0.3".parse().unwrap()),
                chap: None,
            },
        )
        .unwrap();
    assert!(c.read10(0, 1).is_err(), "session survived a policy change");
}

#[test]
fn forgetting_a_target_keeps_open_sessions_until_the_overlay_is_revoked() {
    let fx = Fixture::new(SIZE);
    let mut c = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    let cfg = fx.handle.target(OVERLAY_IQN).expect("target in the table");
    assert!(fx.handle.forget_target(OVERLAY_IQN));
    assert!(!fx.handle.forget_target(OVERLAY_IQN), "forgotten twice");
    assert_eq!(fx.handle.target(OVERLAY_IQN), None);
    // The open session still reads; a new login does not find the target.
    assert_eq!(c.read10(0, 1).unwrap(), fx.base[..512]);
    assert_eq!(
        Client::login(fx.addr, None, OVERLAY_IQN).err(),
        Some(0x0203)
    );
    // Revoking the overlay cuts it.
    assert_eq!(fx.handle.revoke_overlay("node"), 1);
    assert!(c.read10(0, 1).is_err(), "session survived the revocation");
    // Adding it back (a fresh entry) works as before.
    fx.handle.add_target(OVERLAY_IQN, cfg).unwrap();
    Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
}

#[test]
fn connection_caps_close_extra_connections_at_once() {
    let limits = IscsiLimits {
        max_connections_per_ip: 2,
        max_connections: 3,
        ..IscsiLimits::default()
    };
    let fx = Fixture::with_limits(SIZE, limits);
    let _a = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    let _b = Client::login(fx.addr, None, BASE_IQN).unwrap();
    // A third from the same address: closed without a login response.
    assert_eq!(Client::login(fx.addr, None, BASE_IQN).err(), Some(0xffff));
    // Another address still gets in, up to the total cap.
    let _c = Client::login(fx.addr, Some("127.0.0.4".parse().unwrap()), BASE_IQN).unwrap();
    assert_eq!(
        Client::login(fx.addr, Some("127.0.0.5".parse().unwrap()), BASE_IQN).err(),
        Some(0xffff)
    );
}

#[test]
fn garbage_and_truncated_input_end_the_connection_and_nothing_else() {
    let fx = Fixture::new(SIZE);
    let mut rng = 0x1234_5678u64;
    for round in 0..50 {
        let mut s = TcpStream::connect(fx.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut junk = vec![0u8; 48 + round * 7];
        for b in junk.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = rng as u8;
        }
        if round % 2 == 0 {
            junk[0] = 0x43; // a login request with a random rest
        }
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    let mut c = Client::login(fx.addr, None, OVERLAY_IQN).unwrap();
    assert_eq!(c.read10(0, 1).unwrap(), fx.base[..512]);
}
