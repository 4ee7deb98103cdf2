//! Transfers with real TFTP clients (curl, atftp) over loopback.

mod common;

use std::path::Path;
use std::process::Output;

use boot_tftp::TftpStats;
use common::*;
use test_support::Need;
use tokio::process::Command;

async fn curl(
    addr: std::net::SocketAddr,
    name: &str,
    blksize: Option<u16>,
    out: &Path,
    path_as_is: bool,
) -> Output {
    let mut cmd = Command::new("curl");
    cmd.arg("-sS")
        .arg("--max-time")
        .arg("120")
        .arg("-o")
        .arg(out);
    if let Some(b) = blksize {
        cmd.arg("--tftp-blksize").arg(b.to_string());
    }
    if path_as_is {
        cmd.arg("--path-as-is");
    }
    cmd.arg(format!("tftp://{addr}/{name}"));
    cmd.output().await.expect("running curl")
}

fn assert_same(got: &Path, want: &Path) {
    let g = std::fs::read(got).unwrap();
    let w = std::fs::read(want).unwrap();
    assert_eq!(g.len(), w.len(), "length of {got:?}");
    assert!(g == w, "content of {got:?} differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_identical_files_at_512_and_1468() {
    if !test_support::require(
        "curl_fetches_identical_files_at_512_and_1468",
        &[Need::Tool("curl")],
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = [
        write_random(root.path(), "random5m.bin", 5_000_017, 1),
        // Exact multiple of both block sizes: ends with an empty DATA block.
        write_random(root.path(), "multiple.bin", 512 * 1468 * 2, 2),
        write_random(root.path(), "small.bin", 100, 4),
    ];
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    for bs in [512u16, 1468] {
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            let dst = out.path().join(format!("{name}.{bs}"));
            let o = curl(srv.addr, name, Some(bs), &dst, false).await;
            assert!(o.status.success(), "curl {name} bs {bs}: {o:?}");
            assert_same(&dst, f);
            let (bytes, result) = srv.finished(name).await;
            assert_eq!(result, Ok(()));
            assert_eq!(bytes, std::fs::metadata(f).unwrap().len());
        }
    }
    // (An empty file is tested with atftp: curl 7.88 fails on any 0-byte
    // TFTP file with "getpeername() failed", against dnsmasq too.)
    assert_eq!(TftpStats::get(&srv.stats.completed), 6);
    assert_eq!(TftpStats::get(&srv.stats.errors), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_block_number_rollover_past_65535() {
    if !test_support::require(
        "curl_block_number_rollover_past_65535",
        &[Need::Tool("curl")],
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // 65536 full blocks of 512 plus a partial one: block numbers wrap to 0 and on.
    let len = 65536 * 512 + 1000;
    let f = write_random(root.path(), "big.bin", len, 5);
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    let dst = out.path().join("big.bin");
    let o = curl(srv.addr, "big.bin", Some(512), &dst, false).await;
    assert!(o.status.success(), "curl: {o:?}");
    assert_same(&dst, &f);
    assert_eq!(srv.finished("big.bin").await, (len as u64, Ok(())));
    assert!(TftpStats::get(&srv.stats.bytes_sent) >= len as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_concurrent_transfers() {
    if !test_support::require("curl_concurrent_transfers", &[Need::Tool("curl")]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let f = write_random(root.path(), "c.bin", 2_000_000, 6);
    let srv = TestServer::start(root.path(), |_| {}).await;
    let mut jobs = Vec::new();
    for i in 0..6 {
        let dst = out.path().join(format!("c{i}"));
        let addr = srv.addr;
        jobs.push(tokio::spawn(async move {
            let o = curl(addr, "c.bin", Some(1468), &dst, false).await;
            (o, dst)
        }));
    }
    for j in jobs {
        let (o, dst) = j.await.unwrap();
        assert!(o.status.success(), "curl: {o:?}");
        assert_same(&dst, &f);
    }
    eventually("6 completed", || TftpStats::get(&srv.stats.completed) == 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_missing_file_is_error_1() {
    if !test_support::require("curl_missing_file_is_error_1", &[Need::Tool("curl")]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    let o = curl(srv.addr, "nope.bin", None, &out.path().join("x"), false).await;
    // curl: 68 = CURLE_TFTP_NOTFOUND (TFTP error 1).
    assert_eq!(o.status.code(), Some(68), "{o:?}");
    let (bytes, result) = srv.finished("nope.bin").await;
    assert_eq!(bytes, 0);
    let e = result.unwrap_err();
    assert!(e.contains("error 1") && e.contains("not found"), "{e}");
    assert_eq!(TftpStats::get(&srv.stats.errors), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_escape_attempts_are_refused() {
    if !test_support::require("curl_escape_attempts_are_refused", &[Need::Tool("curl")]) {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(base.path().join("secret"), b"TOP SECRET").unwrap();
    std::fs::write(root.join("ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abslink")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut srv = TestServer::start(&root, |_| {}).await;
    // (URL path, TFTP file name the server sees, expected curl exit code)
    // curl exit 69 = CURLE_TFTP_PERM (TFTP error 2), 68 = not found (error 1).
    let cases = [
        ("../secret", "../secret", 69),
        ("a/../../secret", "a/../../secret", 69),
        ("..%5Csecret", "..\\secret", 69),
        ("link", "link", 69),
        ("abslink", "abslink", 69),
        // Absolute: looked up inside the root, where it does not exist.
        ("/etc/passwd", "/etc/passwd", 68),
        ("%2Fetc%2Fpasswd", "/etc/passwd", 68),
    ];
    for (i, (url, seen, code)) in cases.iter().enumerate() {
        let dst = out.path().join(format!("o{i}"));
        let o = curl(srv.addr, url, None, &dst, true).await;
        assert_eq!(o.status.code(), Some(*code), "{url}: {o:?}");
        let got = std::fs::read(&dst).unwrap_or_default();
        assert!(
            !got.windows(6).any(|w| w == b"SECRET") && !got.starts_with(b"root:"),
            "{url} leaked data"
        );
        let (_, result) = srv.finished(seen).await;
        assert!(result.is_err(), "{url}");
    }
    // A leading slash on a file that exists inside the root works.
    let dst = out.path().join("ok");
    let o = curl(srv.addr, "/ok.txt", None, &dst, true).await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"fine");
}

async fn atftp(addr: std::net::SocketAddr, name: &str, out: &Path, options: &[&str]) -> Output {
    let mut cmd = Command::new("atftp");
    cmd.arg("--get").arg("-r").arg(name).arg("-l").arg(out);
    for o in options {
        cmd.arg("--option").arg(o);
    }
    cmd.arg(addr.ip().to_string()).arg(addr.port().to_string());
    cmd.output().await.expect("running atftp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_fetches_identical_files() {
    if !test_support::require("atftp_fetches_identical_files", &[Need::Tool("atftp")]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let f = write_random(root.path(), "r.bin", 3_000_001, 7);
    let empty = write_random(root.path(), "empty.bin", 0, 8);
    let mut srv = TestServer::start(root.path(), |_| {}).await;
    let variants: [&[&str]; 3] = [
        &[],
        &["blksize 1468", "tsize 0"],
        &["blksize 512", "timeout 2"],
    ];
    for (i, opts) in variants.iter().enumerate() {
        let dst = out.path().join(format!("r{i}"));
        let o = atftp(srv.addr, "r.bin", &dst, opts).await;
        assert!(o.status.success(), "atftp {opts:?}: {o:?}");
        assert_same(&dst, &f);
        assert_eq!(srv.finished("r.bin").await, (3_000_001, Ok(())));
    }
    let dst = out.path().join("empty");
    let o = atftp(srv.addr, "empty.bin", &dst, &["tsize 0"]).await;
    assert!(o.status.success(), "atftp empty: {o:?}");
    assert_same(&dst, &empty);
    assert_eq!(srv.finished("empty.bin").await, (0, Ok(())));
    // Missing file: atftp reports the error and exits non-zero.
    let o = atftp(srv.addr, "missing", &out.path().join("m"), &[]).await;
    assert!(!o.status.success(), "{o:?}");
    let (_, r) = srv.finished("missing").await;
    assert!(r.unwrap_err().contains("error 1"));
}
