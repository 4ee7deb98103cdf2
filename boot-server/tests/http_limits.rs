//! HTTP under abuse, against the real `boot-server serve` binary: clients
//! that open connections and never finish their request must not make
//! `/healthz` (or TFTP) unavailable, half-sent requests are closed after the
//! header deadline, and SIGTERM lets a download in flight finish.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The server under test, started with `nofile` as its open-file limit
/// (soft and hard), as a service manager might.
struct Limited {
    child: std::process::Child,
    http: SocketAddr,
    tftp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_limited(dir: tempfile::TempDir, config: std::path::PathBuf, nofile: u64) -> Limited {
    let mut cmd = Command::new(bin());
    cmd.args(["--config", config.to_str().unwrap(), "serve"])
        .env("RUST_LOG", "warn,boot_server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start boot-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("boot-server ready:") {
                let _ = tx.send(line.clone());
            }
            eprintln!("server: {line}");
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server never became ready");
    let field = |k: &str| -> SocketAddr {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .map(|s| s.trim_end_matches(|c: char| !c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("{k} in {ready}"))
            .parse()
            .unwrap()
    };
    Limited {
        http: field("http"),
        tftp: field("tftp"),
        child,
        _dir: dir,
    }
}

/// Opens a connection from `source` and sends a request head without its
/// final blank line.
async fn half_sent(source: [u8; 4], server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let mut s = socket.connect(server).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: boot\r\nUser-Agent: slow")
        .await?;
    Ok(s)
}

/// One `GET /healthz` on a fresh connection from 127.0.0.1; the time until
/// the whole answer arrived, or None if it did not within `limit`.
async fn healthz(server: SocketAddr, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let attempt = async {
        let mut s = TcpStream::connect(server).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: boot\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        (text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n")).then_some(())
    };
    tokio::time::timeout(limit, attempt).await.ok()??;
    Some(t0.elapsed())
}

fn tftp_get(server: SocketAddr, file: &str) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("tftp://{server}/{file}")])
        .output()
        .expect("curl");
    (out.status.success(), out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_starve_healthz_or_tftp() {
    let (dir, config) = Server::prepare("");
    let payload = random_bytes(70_000);
    std::fs::write(dir.path().join("images/probe.bin"), &payload).unwrap();
    // The soft limit systemd gives services; no headroom to raise it.
    let s = start_limited(dir, config, 1024);

    // 1,100 half-sent requests from 11 addresses (100 each).
    let mut held = Vec::new();
    let mut failed = 0;
    for i in 0..1100u32 {
        match half_sent([127, 0, 0, 2 + (i / 100) as u8], s.http).await {
            Ok(c) => held.push(c),
            Err(_) => failed += 1,
        }
    }
    eprintln!(
        "opened {} half-sent requests ({failed} connects failed)",
        held.len()
    );

    for _ in 0..5 {
        let took = healthz(s.http, Duration::from_secs(1)).await;
        assert!(
            took.is_some(),
            "/healthz did not answer within 1 s while 1,100 half-sent requests were open"
        );
    }
    let (ok, body) = tokio::task::spawn_blocking(move || tftp_get(s.tftp, "probe.bin"))
        .await
        .unwrap();
    assert!(
        ok && body == payload,
        "TFTP failed while HTTP was under attack"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_is_closed_after_header_timeout() {
    let (dir, config) = Server::prepare("");
    let s = start_limited(dir, config, 4096);
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(half_sent([127, 0, 0, 1], s.http).await.unwrap());
    }
    let t0 = Instant::now();
    for mut c in conns {
        let mut rest = Vec::new();
        // The header deadline is 5 s; allow scheduling slack, not forever.
        let closed = tokio::time::timeout(Duration::from_secs(9), c.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "half-sent request still open after {:?}",
            t0.elapsed()
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "closed too early ({took:?}): the deadline must give slow links time"
    );
    // A client that finishes its request in time is still served.
    assert!(healthz(s.http, Duration::from_secs(1)).await.is_some());
}

#[test]
fn sigterm_lets_a_download_in_flight_finish() {
    let (dir, config) = Server::prepare("");
    // Larger than what loopback socket buffers hold, so the server must still
    // be sending when the signal comes.
    let data = random_bytes(32_000_000);
    std::fs::write(dir.path().join("images/big.bin"), &data).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("big.bin");
    let mut s = Server::start_in(dir, config);
    // About 4 s at 8 MB/s: still running when the server is told to stop.
    let curl = Command::new("curl")
        .args(["-s", "--limit-rate", "8M", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", &s.url("/images/big.bin")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 1_000_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "download never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let code = curl.wait_with_output().unwrap();
    let got = std::fs::read(&out).unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "200");
    assert!(
        got.len() == data.len() && got == data,
        "download cut at {} of {} bytes by shutdown",
        got.len(),
        data.len()
    );
    let stopped = Instant::now();
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "server exit status {status}");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(12),
            "server did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !s.path().join("state/admin.sock").exists(),
        "admin socket left behind"
    );
}

/// Sends a request with a `len`-byte body the way Python's `requests` does:
/// the whole body first, then the answer is read. Returns the status line,
/// or the error the client saw.
fn post_body_first(server: &str, path: &str, headers: &str, len: usize) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(server).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n{headers}\r\n"
    );
    let sent = c
        .write_all(head.as_bytes())
        .and_then(|()| c.write_all(&vec![0x55; len]));
    if let Err(e) = sent {
        return format!("sending the body: {e}");
    }
    let mut answer = [0u8; 512];
    match c.read(&mut answer) {
        Ok(n) => String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        Err(e) => format!("reading the answer: {e}"),
    }
}

#[test]
fn an_answer_before_the_body_is_read_reaches_a_client_that_sends_it_all_first() {
    let s = Server::start("");
    let auth = format!("Authorization: Bearer {}\r\n", s.admin_token());
    // Far more than the socket buffers hold: unread, it would be lost with a reset.
    let len = 24 << 20;
    // Refused on its query before the handler reads a byte.
    let bad_query = post_body_first(&s.http, "/api/bundles?map_addresses=bad", &auth, len);
    assert!(bad_query.contains(" 400 "), "bad query: {bad_query}");
    // The import reads a little, finds no bundle, stops reading.
    let not_a_bundle = post_body_first(&s.http, "/api/bundles", &auth, len);
    assert!(
        not_a_bundle.contains(" 400 "),
        "not a bundle: {not_a_bundle}"
    );
    // Refused by authentication, before any handler.
    let no_token = post_body_first(&s.http, "/api/bundles", "", len);
    assert!(no_token.contains(" 401 "), "no token: {no_token}");
    // A client that asks to continue has sent nothing: it gets the answer
    // without being invited to send the body.
    let mut c = std::net::TcpStream::connect(&s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /api/bundles?map_addresses=bad HTTP/1.1\r\nHost: t\r\n{auth}\
         Content-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    );
    std::io::Write::write_all(&mut c, head.as_bytes()).unwrap();
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut c, &mut answer).unwrap();
    let line = String::from_utf8_lossy(&answer[..n]);
    assert!(line.starts_with("HTTP/1.1 400 "), "with Expect: {line}");
}

/// Figure for the report, not a pass/fail test: `/healthz` latency while
/// 2,000 half-open connections (40 addresses x 50) are held.
/// `cargo test --release -p boot-server --test http_limits -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn healthz_latency_under_2000_half_open() {
    let (dir, config) = Server::prepare("");
    let s = start_limited(dir, config, 8192);
    let opened = Instant::now();
    let mut held = Vec::new();
    for i in 0..2000u32 {
        if let Ok(c) = half_sent([127, 0, 1, 1 + (i / 50) as u8], s.http).await {
            held.push(c);
        }
    }
    let opening = opened.elapsed();
    let mut times = Vec::new();
    let mut failures = 0;
    for _ in 0..300 {
        match healthz(s.http, Duration::from_secs(2)).await {
            Some(t) => times.push(t),
            None => failures += 1,
        }
    }
    let window = opened.elapsed();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "healthz during {} half-open connections (opened in {:.0} ms, measured within {:.0} ms of the first): n={} median={:.2} ms p99={:.2} ms max={:.2} ms failures={failures}",
        held.len(),
        ms(opening),
        ms(window),
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        ms(*times.last().unwrap()),
    );
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_keep_server_memory_flat() {
    let (dir, config) = Server::prepare("");
    let data = random_bytes(4_000_000);
    std::fs::write(dir.path().join("images/initrd.img"), &data).unwrap();
    let s = Server::start_in(dir, config);
    let pid = s.child.id();
    let addr: SocketAddr = s.http.parse().unwrap();
    let before = peak_rss_kb(pid);

    // 200 downloads whose clients stop reading after the first bytes: every
    // response is stuck with full socket buffers, the worst case for the
    // server's own buffering.
    let clients = 200;
    let mut conns = Vec::new();
    for i in 0..clients {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 2, 1 + (i % 200) as u8], 0)))
            .unwrap();
        let mut c = socket.connect(addr).await.unwrap();
        c.write_all(b"GET /images/initrd.img HTTP/1.1\r\nHost: boot\r\n\r\n")
            .await
            .unwrap();
        conns.push(c);
    }
    let mut first = vec![0u8; 1];
    for c in &mut conns {
        c.read_exact(&mut first).await.unwrap();
    }
    // Let the server fill what it will fill: until its peak stops growing.
    let mut peak = peak_rss_kb(pid);
    let mut stable = 0;
    while stable < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = peak_rss_kb(pid);
        stable = if now == peak { stable + 1 } else { 0 };
        peak = now;
    }
    let grown_kb = peak.saturating_sub(before);
    eprintln!("peak RSS {before} kB -> {peak} kB with {clients} stalled downloads");

    // Every download still completes with the right bytes.
    let mut readers = Vec::new();
    for mut c in conns {
        readers.push(tokio::spawn(async move {
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.map(|_| rest)
        }));
    }
    // Connection: keep-alive means read_to_end would wait for the idle
    // timeout; the header deadline (5 s) closes them.
    for r in readers {
        let rest = r.await.unwrap().unwrap();
        let text = &rest[..rest.len().min(400)];
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(text)));
        assert_eq!(&rest[head_end + 4..], &data[..], "body differs");
    }
    assert!(
        grown_kb < 40 * 1024,
        "server memory grew by {grown_kb} kB for {clients} downloads"
    );
}
