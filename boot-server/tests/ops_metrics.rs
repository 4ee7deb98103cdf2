//! Operations, against the real binary and real peers: `/metrics` counts
//! what udhcpc, curl (TFTP and HTTP) and nbdinfo did in a network
//! namespace, times a whole boot (DHCP, script, kernel, initrd, agent
//! hello) by phase, and passes `promtool check metrics`.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use test_support::Need;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server in `ns`; returns it and its ready line.
fn start(ns: &str, config: &std::path::Path) -> (Killed, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, bin(), "--config"])
        .arg(config)
        .args(["serve", "--log-format", "json"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let child = Killed(child);
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("server not ready ({e}): {log:#?}"));
        // --log-format json: every line is one JSON object.
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        let msg = v["fields"]["message"].as_str().unwrap_or("").to_string();
        if msg.starts_with("boot-server ready:") {
            return (child, msg);
        }
        log.push(line);
    }
}

fn port_of(ready: &str, key: &str) -> u16 {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no {key} port in {ready}"))
}

/// The value of the sample `series` (name with its labels, as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_a_real_boot_and_pass_promtool() {
    let name = "metrics_count_a_real_boot_and_pass_promtool";
    if !test_support::require(
        name,
        &[
            Need::Root,
            Need::Tool("ip"),
            Need::Tool("udhcpc"),
            Need::Tool("curl"),
            Need::Tool("bash"),
            Need::Tool("nbdinfo"),
            Need::Tool("promtool"),
        ],
    ) {
        return;
    }
    let started = Instant::now();
    let tag = format!("opsm{}", std::process::id() % 100_000);
    let (s, c) = (format!("{tag}s"), format!("{tag}c"));
    let _ns = Netns(vec![s.clone(), c.clone()]);
    let (si, ci) = (format!("{tag}a"), format!("{tag}b"));
    sh(&format!(
        "ip netns add {s} && ip netns add {c} && ip link add {si} netns {s} type veth peer name {ci} netns {c} && \
         ip -n {s} addr add 10.213.7.1/24 dev {si} && ip -n {s} link set {si} up && ip -n {s} link set lo up && \
         ip -n {c} link set {ci} address 02:0d:07:00:00:01 && ip -n {c} link set {ci} up && ip -n {c} link set lo up"
    ));
    let dir = tempfile::tempdir().unwrap();
    let loaders = dir.path().join("loaders");
    std::fs::create_dir_all(&loaders).unwrap();
    let loader = random_bytes(70_000);
    std::fs::write(loaders.join("undionly.kpxe"), &loader).unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    write_image(&dir.path().join("images"), "lab", &["bios"]);
    let config = dir.path().join("boot-server.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nimages_dir = \"images\"\nloaders_dir = \"loaders\"\nserver_ip = \"10.213.7.1\"\n\
             interface = \"{si}\"\ndefault_image = \"lab\"\n\
             [http]\nlisten = \"0.0.0.0:0\"\n[tftp]\nlisten = \"0.0.0.0:0\"\n[nbd]\nlisten = \"0.0.0.0:0\"\n[ra]\nenabled = false\n\
             [dhcp]\nmode = \"full\"\nproxy_port = 0\n[[dhcp.subnet]]\nnetwork = \"10.213.7.0/24\"\nrange = [\"10.213.7.100\", \"10.213.7.150\"]\n"
        ),
    )
    .unwrap();
    let (_server, ready) = start(&s, &config);
    let (http, tftp, nbd) = (
        port_of(&ready, "http"),
        port_of(&ready, "tftp"),
        port_of(&ready, "nbd"),
    );
    let base = format!("http://10.213.7.1:{http}");
    let in_c = |cmd: &str| sh(&format!("ip netns exec {c} {cmd}"));

    // DHCP: a PXE client (vendor class PXEClient, arch 0 = BIOS) gets a
    // lease with boot options; one garbage datagram is malformed.
    let script = dir.path().join("udhcpc.sh");
    let bound = dir.path().join("bound");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}\nexit 0\n",
            bound.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    in_c(&format!(
        "udhcpc -i {ci} -n -q -f -t 5 -T 1 -V PXEClient:Arch:00000:UNDI:002001 -x 0x5d:0000 -s {}",
        script.display()
    ));
    let ip = std::fs::read_to_string(&bound)
        .expect("udhcpc bound")
        .trim()
        .to_string();
    in_c(&format!("ip addr add {ip}/24 dev {ci}"));
    in_c("bash -c 'printf \"\\x01\\x01garbage\" > /dev/udp/10.213.7.1/67'");

    // The loader over TFTP, the script, kernel and initrd over HTTP, then the agent's hello.
    in_c(&format!(
        "curl -sf -o /dev/null tftp://10.213.7.1:{tftp}/undionly.kpxe"
    ));
    let text = in_c(&format!("curl -sf {base}/ipxe/02:0d:07:00:00:01"));
    let token = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bootsrv.token="))
        .unwrap_or_else(|| panic!("no agent token for the node's own address: {text}"))
        .to_string();
    in_c(&format!("curl -sf -o /dev/null {base}/images/lab/vmlinuz"));
    in_c(&format!(
        "curl -sf -o /dev/null {base}/images/lab/initrd.img"
    ));
    let hello = r#"{"protocol_version":2,"agent_version":"t","inventory":{"nics":[],"cpus":1,"memory_bytes":1,"firmware":"bios"}}"#;
    in_c(&format!(
        "curl -sf -o /dev/null -X POST -H 'content-type: application/json' -H 'x-node-token: {token}' -d '{hello}' {base}/api/agent/hello"
    ));
    in_c(&format!("curl -s -o /dev/null {base}/no-such-route"));
    // NBD: a real client lists the exports (none are open to it).
    let _ = Command::new("ip")
        .args(["netns", "exec", &c, "nbdinfo", "--list"])
        .arg(format!("nbd://10.213.7.1:{nbd}"))
        .output();

    // Events reach the metrics through the log's writer: wait for the hello.
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = in_c(&format!("curl -sf {base}/metrics"));
        if value(&m, "boot_duration_seconds_count") == Some(1.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "boot never timed:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    };
    promtool_check(&m);

    let received = must(&m, "boot_dhcp_packets_received_total");
    assert!(received >= 3.0, "discover, request, garbage: {received}");
    assert!(must(&m, "boot_dhcp_malformed_packets_total") >= 1.0);
    assert!(must(&m, "boot_dhcp_replies_total{type=\"offer\"}") >= 1.0);
    assert!(must(&m, "boot_dhcp_replies_total{type=\"ack\"}") >= 1.0);
    assert!(must(&m, "boot_dhcp_sent_bytes_total") >= 300.0);
    assert!(must(&m, "boot_dhcp_received_bytes_total") >= 600.0);
    assert_eq!(must(&m, "boot_tftp_requests_total"), 1.0);
    assert_eq!(must(&m, "boot_tftp_transfers_completed_total"), 1.0);
    assert!(must(&m, "boot_tftp_sent_bytes_total") >= loader.len() as f64);
    assert!(
        must(&m, "boot_nbd_connections_total") >= 1.0,
        "nbdinfo's connection"
    );
    let node_http = |route: &str, code: &str| {
        value(
            &m,
            &format!(
                "boot_http_requests_total{{listener=\"node\",route=\"{route}\",code=\"{code}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(node_http("/ipxe/{mac}", "2xx"), 1.0);
    assert_eq!(node_http("/images/{*path}", "2xx"), 2.0);
    assert_eq!(node_http("/api/agent/hello", "2xx"), 1.0);
    assert_eq!(node_http("unmatched", "4xx"), 1.0);
    assert!(
        must(
            &m,
            "boot_http_response_bytes_total{listener=\"node\",route=\"/images/{*path}\"}"
        ) >= 400_000.0,
        "kernel + initrd bytes"
    );
    // No MAC, address or token in any label.
    for secret in ["02:0d:07", &ip, &token, "10.213.7.1"] {
        assert!(!m.contains(secret), "{secret} in the metrics");
    }
    for phase in [
        "dhcp_to_script",
        "script_to_kernel",
        "kernel_to_initrd",
        "initrd_to_agent",
    ] {
        assert_eq!(
            must(
                &m,
                &format!("boot_phase_duration_seconds_count{{phase=\"{phase}\"}}")
            ),
            1.0,
            "{phase}"
        );
    }
    assert_eq!(must(&m, "boot_events_total{kind=\"agent-ready\"}"), 1.0);
    assert_eq!(
        must(&m, "boot_nodes{state=\"idle\"}"),
        1.0,
        "up in no environment"
    );
    assert!(must(&m, "boot_store_commit_duration_seconds_count") >= 1.0);
    assert!(must(&m, "boot_store_commits_total") >= 1.0);

    // The admin socket serves the same metrics (its requests counted as admin).
    let sock = dir.path().join("state/admin.sock");
    let (code, body) = curl(&[
        "--unix-socket",
        sock.to_str().unwrap(),
        "http://admin/metrics",
    ]);
    assert_eq!(code, 200);
    let admin = String::from_utf8(body).unwrap();
    promtool_check(&admin);
    assert!(must(&admin, "boot_tftp_requests_total") >= 1.0);
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
}
