//! Hardening regressions against the real binary: a locked state database
//! does not stop the server (item 8); unauthenticated traffic cannot grow
//! the node table or the event log without bound (item 15). SIGTERM (item
//! 21) is covered in http_limits.rs.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1)
}

/// Item 8: another process holding the database's write lock for 10 s does
/// not make the server exit; files keep being served, and writes go through
/// once the lock is gone.
#[test]
fn a_locked_database_does_not_stop_the_server() {
    if !test_support::require(
        "a_locked_database_does_not_stop_the_server",
        &[test_support::Need::Tool("python3")],
    ) {
        return;
    }
    let (dir, config) = Server::prepare("");
    write_image(&dir.path().join("images"), "lab", &[]);
    let mut s = Server::start_in(dir, config);
    let db = s.path().join("state/state.db");
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3,time,sys\nc=sqlite3.connect('{}', isolation_level=None, timeout=30)\nc.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\ntime.sleep(10)\nc.execute('COMMIT')\n",
            db.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(locker.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    // A write waits for the lock (and fails after the busy timeout), the server lives on.
    let failed = Command::new(bin())
        .args([
            "--config",
            s.config.to_str().unwrap(),
            "default-image",
            "lab",
        ])
        .output()
        .unwrap();
    let (code, body) = curl(&[&s.url("/images/lab/vmlinuz"), "-o", "/dev/null"]);
    assert_eq!(
        code, 200,
        "file serving stopped while the database was locked"
    );
    let _ = body;
    assert_eq!(curl(&[&s.url("/healthz")]).0, 200);
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "server exited under a locked database"
    );
    // After the lock is released (the locker commits and exits), writes work again.
    assert!(locker.wait().unwrap().success(), "the locker failed");
    if !failed.status.success() {
        s.cli(&["default-image", "lab"]);
    }
    assert!(s.cli(&["default-image"]).contains("lab"));
    assert!(s.child.try_wait().unwrap().is_none());
}

/// Item 15: script requests for arbitrary MACs and file requests from
/// unknown addresses cannot grow the state without bound.
#[test]
fn unauthenticated_traffic_is_bounded() {
    let (dir, config) = Server::prepare("discovery_limit = 20\n[events]\nretain = 200");
    write_image(&dir.path().join("images"), "lab", &[]);
    let s = Server::start_in(dir, config);
    s.cli(&["default-image", "lab"]);
    for i in 0..300u32 {
        let mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let (code, _) = curl(&[&s.url(&format!("/ipxe/{mac}"))]);
        assert_eq!(code, 200);
        curl(&[&s.url("/images/lab/initrd.img"), "-o", "/dev/null"]);
    }
    let db = s.path().join("state/state.db");
    let nodes = count(&db, "SELECT COUNT(*) FROM nodes");
    assert!(
        nodes <= 20,
        "{nodes} nodes from 300 arbitrary script requests"
    );
    // Events: bounded by retention (prune runs after every ~100 events).
    for _ in 0..40 {
        s.cli(&["default-image", "lab"]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = count(&db, "SELECT COUNT(*) FROM events");
        let files = count(&db, "SELECT COUNT(*) FROM events WHERE kind = 'http-file'");
        assert_eq!(files, 0, "file fetches by unknown peers recorded");
        if events <= 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{events} events kept with retain = 200"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
