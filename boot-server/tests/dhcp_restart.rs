//! The real binary as a full DHCP server for real clients in network
//! namespaces: busybox udhcpc gets leases, and after `kill -9` and a restart
//! every client keeps its address (leases are durable before the ACK).

mod common;
use common::{sh, Netns};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn start(ns: &str, config: &std::path::Path) -> Child {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            common::bin(),
            "--config",
            config.to_str().unwrap(),
            "serve",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ready = line.contains("boot-server ready:");
            let _ = tx.send((ready, line));
        }
    });
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((true, _)) => break,
            Ok((false, line)) => log.push(line),
            Err(e) => panic!("server not ready ({e}): {log:#?}"),
        }
    }
    child
}

/// Runs udhcpc once in `ns` with the interface's current MAC; returns the leased address.
fn lease(ns: &str, ifname: &str, dir: &std::path::Path) -> String {
    let script = dir.join("udhcpc.sh");
    let out = dir.join("bound");
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    sh(&format!(
        "ip netns exec {ns} udhcpc -i {ifname} -n -q -f -t 5 -T 1 -s {}",
        script.display()
    ));
    std::fs::read_to_string(&out)
        .expect("udhcpc bound")
        .trim()
        .to_string()
}

#[test]
fn udhcpc_keeps_its_address_across_kill_9() {
    use test_support::Need;
    if !test_support::require(
        "udhcpc_keeps_its_address_across_kill_9",
        &[Need::Root, Need::Tool("ip"), Need::Tool("udhcpc")],
    ) {
        return;
    }
    let tag = format!("bsd{}", std::process::id() % 100_000);
    let (s, c) = (format!("{tag}s"), format!("{tag}c"));
    let _ns = Netns(vec![s.clone(), c.clone()]);
    let (si, ci) = (format!("{tag}a"), format!("{tag}b"));
    sh(&format!(
        "ip netns add {s} && ip netns add {c} && ip link add {si} netns {s} type veth peer name {ci} netns {c} && \
         ip -n {s} addr add 10.9.0.1/24 dev {si} && ip -n {s} link set {si} up && ip -n {s} link set lo up && \
         ip -n {c} link set {ci} up"
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("boot-server.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nimages_dir = \"images\"\nserver_ip = \"10.9.0.1\"\ninterface = \"{si}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[tftp]\nenabled = false\n[nbd]\nenabled = false\n[ra]\nenabled = false\n\
             [dhcp]\nmode = \"full\"\nproxy_port = 0\n[[dhcp.subnet]]\nnetwork = \"10.9.0.0/24\"\nrange = [\"10.9.0.100\", \"10.9.0.150\"]\n"
        ),
    )
    .unwrap();
    let mut server = start(&s, &config);
    let mut got = Vec::new();
    for mac in [
        "02:00:00:00:00:0a",
        "02:00:00:00:00:0b",
        "02:00:00:00:00:0c",
    ] {
        sh(&format!("ip -n {c} link set {ci} down && ip -n {c} link set {ci} address {mac} && ip -n {c} link set {ci} up"));
        got.push((mac, lease(&c, &ci, dir.path())));
    }
    let distinct: std::collections::HashSet<_> = got.iter().map(|g| g.1.clone()).collect();
    assert_eq!(distinct.len(), 3, "three clients, three addresses: {got:?}");

    // kill -9, restart: each client asks again (no requested address) and must get
    // the same one. Asking in reverse order means a server that forgot its
    // leases would hand the first free address to the wrong client.
    server.kill().unwrap();
    server.wait().unwrap();
    let mut server = start(&s, &config);
    for (mac, ip) in got.iter().rev() {
        sh(&format!("ip -n {c} link set {ci} down && ip -n {c} link set {ci} address {mac} && ip -n {c} link set {ci} up"));
        assert_eq!(&lease(&c, &ci, dir.path()), ip, "{mac} after kill -9");
    }
    let _ = server.kill();
    let _ = server.wait();
}
