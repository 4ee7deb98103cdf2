//! End-to-end test of the agent binary against a scripted fake server
//! (std TcpListener): connection refused, 500, 401 and garbage replies are
//! retried; hello → commands → Started/Succeeded results are sequenced; the
//! heartbeat follows the app state; the agent never exits.

use boot_proto::{AppState, Command, CommandKind, CommandResult, CommandStatus, Heartbeat, Hello};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    token: Option<String>,
    body: String,
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_req(s: &mut TcpStream) -> Option<Req> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut len = 0usize;
    let mut token = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "x-node-token" => token = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        token,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn respond(s: &mut TcpStream, code: u16, ctype: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

/// The scripted server: per-endpoint call counters decide the reply.
fn serve(l: TcpListener, tx: mpsc::Sender<Req>, cmds: Vec<Command>) {
    let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let tx = tx.clone();
        let counts = counts.clone();
        let cmds = cmds.clone();
        std::thread::spawn(move || {
            let Some(req) = read_req(&mut s) else { return };
            let key = req.path.split('?').next().unwrap_or("").to_string();
            let n = {
                let mut c = counts.lock().unwrap();
                let e = c.entry(key.clone()).or_default();
                *e += 1;
                *e
            };
            let _ = tx.send(req.clone());
            match (key.as_str(), n) {
                ("/api/agent/hello", 1) => respond(&mut s, 500, "text/plain", b"db busy"),
                ("/api/agent/hello", _) => respond(
                    &mut s,
                    200,
                    "application/json",
                    br#"{"node_id":"n1","heartbeat_interval_secs":1}"#,
                ),
                ("/api/agent/commands", 1) => respond(&mut s, 401, "text/plain", b"bad token"),
                ("/api/agent/commands", 2) => respond(&mut s, 500, "text/plain", b"oops"),
                ("/api/agent/commands", 3) => respond(&mut s, 200, "application/json", b"not json"),
                ("/api/agent/commands", 4) => respond(
                    &mut s,
                    200,
                    "application/json",
                    serde_json::to_string(&cmds).unwrap().as_bytes(),
                ),
                ("/api/agent/commands", 5) => {
                    // Redelivery of an already finished command: must be
                    // re-reported, not run again.
                    let again = vec![cmds[0].clone()];
                    respond(
                        &mut s,
                        200,
                        "application/json",
                        serde_json::to_string(&again).unwrap().as_bytes(),
                    )
                }
                // The server "forgot" the node: the agent must say hello again.
                ("/api/agent/heartbeat", 2) => respond(&mut s, 404, "text/plain", b"unknown node"),
                ("/api/agent/commands", _) => {
                    // Long poll with nothing to do.
                    std::thread::sleep(Duration::from_millis(500));
                    respond(&mut s, 200, "application/json", b"[]")
                }
                ("/api/agent/heartbeat", _) | ("/api/agent/results", _) => {
                    respond(&mut s, 204, "text/plain", b"")
                }
                ("/images/kernel", _) => {
                    respond(&mut s, 200, "application/octet-stream", &[0x4d; 70_000])
                }
                ("/images/initrd", _) => {
                    respond(&mut s, 200, "application/octet-stream", &[0x1f; 30_000])
                }
                _ => respond(&mut s, 404, "text/plain", b"no"),
            }
        });
    }
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn agent_sequences_hello_commands_results_and_survives_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!("quiet bootsrv.server={base} bootsrv.node=n1 bootsrv.token=tok123 bootsrv.image=lab BOOTIF=01-52-54-00-12-34-56\n"),
    )
    .unwrap();
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let start = hooks.join("start");
    std::fs::write(&start, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A firmware-like efivars directory with OVMF's PXE option for the boot NIC.
    let efi = dir.path().join("efivars");
    std::fs::create_dir(&efi).unwrap();
    let guid = node_agent::bootptr::GLOBAL_GUID;
    let mut pxe = vec![
        2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0, 1, 1, 6, 0, 0, 3,
    ];
    pxe.extend(node_agent::bootptr::loadopt::encode_path(&[
        node_agent::bootptr::loadopt::DpNode::mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        node_agent::bootptr::loadopt::DpNode::ipv4_dhcp(),
    ]));
    let opt = node_agent::bootptr::loadopt::LoadOption {
        attributes: 1,
        description: "UEFI PXEv4 (MAC:525400123456)".into(),
        file_path: pxe,
        optional_data: vec![],
    };
    let mut raw = 7u32.to_le_bytes().to_vec();
    raw.extend(opt.encode());
    std::fs::write(efi.join(format!("Boot0004-{guid}")), raw).unwrap();
    std::fs::write(
        efi.join(format!("BootOrder-{guid}")),
        [7, 0, 0, 0, 1, 0, 4, 0],
    )
    .unwrap();

    let cmds = vec![
        Command {
            id: 1,
            kind: CommandKind::StartApp { timeout_secs: 5 },
        },
        Command {
            id: 2,
            kind: CommandKind::StopApp { timeout_secs: 2 },
        },
        Command {
            id: 3,
            kind: CommandKind::Reprovision,
        },
        Command {
            id: 4,
            kind: CommandKind::Kexec {
                kernel_url: format!("{base}/images/kernel"),
                initrd_url: Some(format!("{base}/images/initrd")),
                cmdline: "console=ttyS0".into(),
            },
        },
        Command {
            id: 5,
            kind: CommandKind::AttachDisk {
                export: "x".into(),
                host: "127.0.0.1".into(),
                port: 1,
                mount: None,
            },
        },
        Command {
            id: 6,
            kind: CommandKind::Reboot,
        },
    ];

    // Start the agent before the server exists: connection refused first.
    // NODE_AGENT_BIN lets the same test drive the stripped static release binary.
    let bin =
        std::env::var("NODE_AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_node-agent").into());
    let mut child = std::process::Command::new(&bin)
        .args([
            "--cmdline-file",
            cmdline.to_str().unwrap(),
            "--hooks-dir",
            hooks.to_str().unwrap(),
        ])
        .args([
            "--efivars-dir",
            efi.to_str().unwrap(),
            "--poll-wait",
            "1",
            "--dry-run",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let agent = Kill(child);
    let (log_tx, log_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("agent: {l}");
            let _ = log_tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    // Await the agent's own report of a refused hello, then open the server.
    loop {
        let l = log_rx
            .recv_timeout(deadline - Instant::now())
            .expect("agent never tried hello");
        if l.contains("hello failed") {
            break;
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || serve(listener, tx, cmds));

    let mut seen: Vec<Req> = Vec::new();
    let mut results: Vec<CommandResult> = Vec::new();
    let mut app_states: Vec<AppState> = Vec::new();
    let mut rss = None;
    let mut hellos = 0;
    while results
        .iter()
        .filter(|r| r.status != CommandStatus::Started)
        .count()
        < 7
        || hellos < 3
        || !app_states.contains(&AppState::Stopped)
    {
        let r = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("timed out; results so far {results:#?}"));
        if r.path.starts_with("/api/") {
            assert_eq!(r.token.as_deref(), Some("tok123"), "{r:?}");
            let want = if r.path.starts_with("/api/agent/commands") {
                "GET"
            } else {
                "POST"
            };
            assert_eq!(r.method, want, "{r:?}");
        }
        match r.path.as_str() {
            "/api/agent/results" => results.push(serde_json::from_str(&r.body).unwrap()),
            "/api/agent/heartbeat" => {
                let hb: Heartbeat = serde_json::from_str(&r.body).unwrap();
                assert!(hb.mem_total_bytes > 0 && hb.uptime_ms > 0);
                app_states.push(hb.app);
                rss = rss.max(vm_rss_kb(agent.0.id()));
            }
            "/api/agent/hello" => {
                hellos += 1;
                let h: Hello = serde_json::from_str(&r.body).unwrap();
                assert_eq!(h.image.as_deref(), Some("lab"));
                assert_eq!(h.inventory.boot_mac.as_deref(), Some("52:54:00:12:34:56"));
                assert!(h.inventory.cpus >= 1 && h.uptime_ms.is_some());
            }
            _ => {}
        }
        seen.push(r);
    }
    let order: Vec<&str> = seen
        .iter()
        .map(|r| r.path.split('?').next().unwrap())
        .filter(|p| *p != "/api/agent/heartbeat" && !p.starts_with("/images"))
        .collect();
    // Retries: hello 500 then 200; commands 401, 500, garbage, then the batch.
    assert_eq!(
        &order[..6],
        [
            "/api/agent/hello",
            "/api/agent/hello",
            "/api/agent/commands",
            "/api/agent/commands",
            "/api/agent/commands",
            "/api/agent/commands"
        ]
    );
    // Each command: Started, then its final status, in order.
    let seq: Vec<(u64, CommandStatus)> = results.iter().map(|r| (r.id, r.status.clone())).collect();
    use CommandStatus::*;
    assert_eq!(
        seq,
        vec![
            (1, Started),
            (1, Succeeded),
            (2, Started),
            (2, Succeeded),
            (3, Started),
            (3, Succeeded),
            (4, Started),
            (4, Succeeded),
            (5, Started),
            (5, Failed),
            (6, Started),
            (6, Succeeded),
            (1, Succeeded)
        ],
        "{results:#?}"
    );
    assert_eq!(
        results[12], results[1],
        "redelivered command re-reported verbatim"
    );
    let detail = |id| &results.iter().rfind(|r| r.id == id).unwrap().detail;
    assert!(detail(2).contains("SIGTERM"), "{}", detail(2));
    assert!(
        detail(3).contains("Boot0004") && detail(3).contains("BootOrder 0001,0004 -> 0004,0001"),
        "{}",
        detail(3)
    );
    assert!(
        detail(4).contains("kernel 70000 B, initrd 30000 B"),
        "{}",
        detail(4)
    );
    assert!(detail(5).contains("connect"), "{}", detail(5));
    assert_eq!(
        std::fs::read(efi.join(format!("BootNext-{guid}"))).unwrap(),
        [7, 0, 0, 0, 4, 0]
    );
    assert!(app_states.contains(&AppState::Running), "{app_states:?}");
    // The agent is still alive after every error and command (incl. dry-run reboot).
    let mut agent = agent;
    assert!(agent.0.try_wait().unwrap().is_none(), "agent exited");
    let rss = rss.max(vm_rss_kb(agent.0.id()));
    eprintln!("agent {bin}: peak sampled VmRSS {} kB", rss.unwrap_or(0));
}
