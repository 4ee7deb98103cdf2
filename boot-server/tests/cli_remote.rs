//! The CLI is a client of the admin API: from another directory, with only
//! `BOOT_SERVER_URL` and `BOOT_SERVER_TOKEN`, it lists nodes as JSON,
//! assigns, creates, attaches and deletes disks and adds reservations; exit
//! codes say what went wrong (3 not found, 4 unauthorised).

mod common;
use common::*;
use std::process::{Command, Output};

fn remote(s: &Server, token: &str, args: &[&str]) -> Output {
    let elsewhere = tempfile::tempdir().unwrap();
    Command::new(bin())
        .current_dir(elsewhere.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BOOT_SERVER_URL", format!("http://{}", s.http))
        .env("BOOT_SERVER_TOKEN", token)
        .args(args)
        .output()
        .unwrap()
}

fn ok(s: &Server, token: &str, args: &[&str]) -> String {
    let out = remote(s, token, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_works_remotely_with_url_and_token() {
    let (dir, config) = Server::prepare(
        "server_ip = \"127.0.0.1\"\n[dhcp]\nmode = \"proxy\"\nport = 0\nproxy_port = 0\n[[dhcp.subnet]]\nnetwork = \"127.0.0.0/8\"\nrange = [\"127.0.5.1\", \"127.0.5.9\"]",
    );
    write_image(&dir.path().join("images"), "lab", &[]);
    let base = dir.path().join("base.raw");
    std::fs::write(&base, random_bytes(1 << 20)).unwrap();
    let s = Server::start_in(dir, config);
    let token = s.admin_token();

    ok(&s, &token, &["node", "add", "--mac", "52:54:00:00:00:61"]);
    let nodes: serde_json::Value =
        serde_json::from_str(&ok(&s, &token, &["node", "list", "--json"])).unwrap();
    assert_eq!(nodes[0]["mac"], "52:54:00:00:00:61", "{nodes}");
    ok(&s, &token, &["assign", "--mac", "52:54:00:00:00:61", "lab"]);
    let base_arg = base.to_str().unwrap();
    ok(&s, &token, &["disk", "add-base", "b", base_arg]);
    ok(&s, &token, &["disk", "create", "ov", "--base", "b"]);
    let attached = ok(
        &s,
        &token,
        &["disk", "attach", "ov", "--node", "52:54:00:00:00:61"],
    );
    assert!(attached.contains("as export ov."), "{attached}");
    ok(&s, &token, &["disk", "detach", "ov"]);
    ok(&s, &token, &["disk", "delete", "ov"]);
    ok(
        &s,
        &token,
        &[
            "reservation",
            "add",
            "--mac",
            "52:54:00:00:00:61",
            "--ip",
            "127.0.5.50",
            "--hostname",
            "slot-1",
        ],
    );
    let res = ok(&s, &token, &["reservation", "list", "--json"]);
    assert!(
        res.contains("127.0.5.50") && res.contains("slot-1"),
        "{res}"
    );
    // The server saw every write at once: no second process wrote the state.
    assert!(s.cli(&["disk", "list"]).contains(" b "));

    // Exit codes: not found 3, unauthorised 4, usage 2; one line that says what to do.
    assert_eq!(
        remote(&s, &token, &["node", "show", "nope"]).status.code(),
        Some(3)
    );
    let denied = remote(&s, "0123456789abcdef0123456789abcdef", &["node", "list"]);
    assert_eq!(denied.status.code(), Some(4));
    assert_eq!(
        remote(&s, &token, &["node", "frobnicate"]).status.code(),
        Some(2)
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let no_server = Command::new(bin())
        .current_dir(elsewhere.path())
        .env_remove("BOOT_SERVER_URL")
        .args(["--state-dir", "nothing-here", "node", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&no_server.stderr);
    assert_eq!(no_server.status.code(), Some(1));
    assert!(
        err.contains("no boot-server is answering") && err.lines().count() == 1,
        "{err}"
    );
}
