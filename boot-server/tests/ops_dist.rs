//! Operations files and alert delivery: the packaged config parses with the
//! real parser and says the truth about the defaults, the Prometheus rules
//! pass `promtool check rules` and `promtool test rules`, the systemd unit
//! passes `systemd-analyze verify`, and alerts reach a webhook (a local
//! HTTP receiver) with retries, routed by kind, with no secret in the log.

mod common;
use boot_server::config::Config;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::Need;

fn dist(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(file)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn packaged_config_loads_and_documents_the_defaults() {
    let loaded = Config::load(Some(&dist("boot-server.toml"))).expect("dist/boot-server.toml");
    assert_eq!(loaded.state_dir, Path::new("/var/lib/boot-server"));
    assert_eq!(loaded.images_dir, Path::new("/var/lib/boot-server/images"));
    // Apart from the keys marked "packaged", every value written is the default.
    let mut same = loaded.clone();
    let default = Config::default();
    same.state_dir = default.state_dir.clone();
    same.images_dir = default.images_dir.clone();
    assert_eq!(format!("{same:?}"), format!("{default:?}"));
    // And every table of the config is in the file (so it documents them all).
    let text = std::fs::read_to_string(dist("boot-server.toml")).unwrap();
    for table in [
        "http",
        "admin",
        "metrics",
        "alerts",
        "alerts.kinds",
        "events",
        "tftp",
        "dhcp",
        "store",
        "ra",
        "nbd",
        "agent",
        "engine",
        "loaders",
    ] {
        assert!(
            text.contains(&format!("\n[{table}]\n")),
            "[{table}] missing"
        );
    }
}

#[test]
fn alerting_rules_pass_promtool() {
    if !test_support::require("alerting_rules_pass_promtool", &[Need::Tool("promtool")]) {
        return;
    }
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dist("alerts.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alerts.test.yml");
    let out = run(Command::new("promtool").args(["test", "rules"]).arg(tests));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !test_support::require(
        "systemd_unit_verifies_and_is_hardened",
        &[Need::Tool("systemd-analyze")],
    ) {
        return;
    }
    // verify checks that ExecStart exists: point it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(dist("boot-server.service"))
        .unwrap()
        .replace(
            "ExecStart=/usr/bin/boot-server",
            &format!("ExecStart={}", bin()),
        );
    let path = dir.path().join("boot-server.service");
    std::fs::write(&path, unit).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(
        !out.contains("boot-server.service:"),
        "unit warnings: {out}"
    );
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("boot-server.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score}: {out}");
}

/// What the receiver saw: (path, authorization header, body).
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// A local webhook receiver that answers 503 to its first request (the
/// server must retry) and 200 after.
fn receiver(rt: &tokio::runtime::Runtime) -> (u16, Seen) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode};
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{*path}",
            axum::routing::post(
                |State(seen): State<Seen>,
                 UrlPath(path): UrlPath<String>,
                 headers: HeaderMap,
                 body: String| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    let mut s = seen.lock().unwrap();
                    s.push((path, auth, json));
                    if s.len() == 1 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

#[test]
fn alerts_reach_their_webhook_with_retries() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (port, seen) = receiver(&rt);
    let secret = "hook-secret-4f9c2a";
    let (dir, config) = Server::prepare(&format!(
        "[alerts]\nurl = \"http://127.0.0.1:{port}/default/{secret}\"\nbearer_token = \"bearer-{secret}\"\n\
         [alerts.kinds]\nenv-below-minimum = \"http://127.0.0.1:{port}/short/{secret}\"\nenv-started = \"\"\n"
    ));
    write_image(&dir.path().join("images"), "lab", &["bios"]);
    let s = Server::start_in(dir, config);
    // An environment that wants a node while the pool has none: env-below-minimum.
    s.cli(&[
        "env", "create", "web", "--image", "lab", "--min", "1", "--nodes", "1",
    ]);

    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no retried delivery: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = seen.lock().unwrap().clone();
    for (path, auth, body) in &got[..2] {
        assert_eq!(path, &format!("short/{secret}"), "routed by kind");
        assert_eq!(auth, &format!("Bearer bearer-{secret}"));
        assert_eq!(body["alert"], "env-below-minimum", "{body}");
        assert_eq!(body["detail"]["env"], "web", "{body}");
        assert!(body["event_id"].as_i64().is_some() && body["at_ms"].as_i64().is_some());
    }
    assert_eq!(got[0].2, got[1].2, "the retry posts the same alert");

    let (code, m) = curl(&[&s.url("/metrics")]);
    assert_eq!(code, 200);
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("boot_alert_webhook_deliveries_total{result=\"delivered\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("boot_alerts_total{alert=\"env-below-minimum\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("boot_alerts_active{alert=\"env-below-minimum\"} 1\n"),
        "{m}"
    );
    // The log names the webhook by host and fingerprint only.
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log.lock().unwrap().join("\n");
    assert!(log.contains("alert delivery failed; retrying"), "{log}");
    assert!(!log.contains(secret), "webhook secret in the log:\n{log}");
}
