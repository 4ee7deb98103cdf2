//! Human-readable tables of the admin API's JSON answers (`--json` prints
//! the answers themselves).

use crate::model::EventKind;
use serde_json::Value;

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn now_ms() -> i64 {
    crate::model::now_ms()
}

pub fn images(v: &Value) {
    println!(
        "{:<16} {:<10} {:<10} {:>12}  ARCHS",
        "NAME", "KIND", "VERSION", "BYTES"
    );
    for i in v.as_array().into_iter().flatten() {
        let archs: Vec<String> = i["archs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let mark = if i["default"] == true {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<16} {:<10} {:<10} {:>12}  {}{mark}",
            s(i, "name"),
            s(i, "kind"),
            s(i, "version"),
            s(i, "size_bytes"),
            archs.join(",")
        );
    }
}

/// Environment and slot a node serves, e.g. `web/2` (`-` in the pool).
fn env_slot(n: &Value) -> String {
    match (n["environment"].as_str(), n["slot"].as_u64()) {
        (Some(e), Some(i)) => format!("{e}/{i}"),
        (Some(e), None) => e.to_string(),
        _ => "-".into(),
    }
}

pub fn nodes(v: &Value) {
    let now = now_ms();
    println!(
        "{:<18} {:<17} {:<12} {:<9} {:<12} {:<16} {:>8}",
        "ID", "MAC", "STATE", "ARCH", "IMAGE", "ENV/SLOT", "HB_AGO_S"
    );
    for n in v.as_array().into_iter().flatten() {
        let ago = n["last_heartbeat_ms"]
            .as_i64()
            .map(|t| format!("{:.1}", (now - t) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<18} {:<17} {:<12} {:<9} {:<12} {:<16} {:>8}",
            s(n, "id"),
            s(n, "mac"),
            s(n, "state"),
            s(n, "arch"),
            s(n, "booted_image"),
            env_slot(n),
            ago
        );
    }
}

/// One node's fields (`node show`; `--json` has everything).
pub fn node(n: &Value) {
    let now = now_ms();
    let ago = |k: &str| {
        n[k].as_i64()
            .map(|t| format!("{:.1} s ago", (now - t) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let line = |k: &str, v: String| println!("{:<15}{v}", format!("{k}:"));
    line("id", s(n, "id"));
    line("mac", s(n, "mac"));
    line("state", s(n, "state"));
    line("environment", env_slot(n));
    line("arch", s(n, "arch"));
    line("booted image", s(n, "booted_image"));
    line("running image", s(n, "running_image"));
    line("address", s(n, "observed_ip"));
    line("serial", s(n, "serial"));
    line("uuid", s(n, "uuid"));
    let labels: Vec<String> = n["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect();
    line(
        "labels",
        if labels.is_empty() {
            "-".into()
        } else {
            labels.join(" ")
        },
    );
    line("power", s(n, "power"));
    line("agent hello", ago("last_hello_ms"));
    line("heartbeat", ago("last_heartbeat_ms"));
    let hb = &n["heartbeat"];
    if !hb.is_null() {
        let health: Vec<String> = hb["health"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
            .collect();
        line(
            "load",
            format!(
                "{} (busy: {}){}",
                hb["load1"],
                s(hb, "busy"),
                if health.is_empty() {
                    String::new()
                } else {
                    format!("   health: {}", health.join(" "))
                }
            ),
        );
    }
    line("first seen", ago("first_seen_ms"));
    line("last seen", ago("last_seen_ms"));
}

pub fn leases(v: &Value) {
    let now = now_ms();
    println!("{:<17} {:<15} {:>10}  HOSTNAME", "MAC", "IP", "EXPIRES_S");
    for l in v.as_array().into_iter().flatten() {
        println!(
            "{:<17} {:<15} {:>10}  {}",
            s(l, "mac"),
            s(l, "ip"),
            (l["expires_at_ms"].as_i64().unwrap_or(0) - now) / 1000,
            l["hostname"].as_str().unwrap_or("")
        );
    }
}

pub fn reservations(v: &Value) {
    println!("{:<17} {:<15} HOSTNAME", "MAC", "IP");
    for r in v.as_array().into_iter().flatten() {
        println!(
            "{:<17} {:<15} {}",
            s(r, "mac"),
            s(r, "ip"),
            r["hostname"].as_str().unwrap_or("")
        );
    }
}

pub fn disks(v: &Value) {
    println!(
        "{:<8} {:<20} {:<16} {:>14} {:>14}  {:<18} SERVER",
        "KIND", "NAME", "BASE", "SIZE", "ALLOCATED", "NODE"
    );
    for d in v.as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<20} {:<16} {:>14} {:>14}  {:<18} {}",
            s(d, "kind"),
            s(d, "name"),
            s(d, "base"),
            s(d, "size"),
            s(d, "allocated_bytes"),
            s(d, "node"),
            s(d, "server")
        );
    }
}

pub fn commands(v: &Value) {
    println!(
        "{:>6} {:<18} {:<12} {:<12} DETAIL",
        "ID", "NODE", "KIND", "STATUS"
    );
    for c in v.as_array().into_iter().flatten() {
        println!(
            "{:>6} {:<18} {:<12} {:<12} {}",
            s(c, "id"),
            s(c, "node"),
            c["command"]["kind"].as_str().unwrap_or("?"),
            s(c, "status"),
            c["detail"].as_str().unwrap_or("")
        );
    }
}

/// A node's boot events after `since` as a readable timeline.
pub fn timeline(node: &Value, image: Option<&Value>, events: &[Value], since: i64) {
    let events: Vec<&Value> = events
        .iter()
        .filter(|e| e["at_ms"].as_i64().unwrap_or(0) >= since)
        .collect();
    let Some(first) = events.first() else {
        println!("no events for {} yet", s(node, "id"));
        return;
    };
    let t0 = if since > 0 {
        since
    } else {
        first["at_ms"].as_i64().unwrap_or(0)
    };
    println!(
        "boot timeline of {} ({}), seconds since {}",
        s(node, "id"),
        s(node, "mac"),
        if since > 0 {
            "power-on"
        } else {
            "the first event"
        }
    );
    for e in events {
        let d = &e["detail"];
        let ds = |k: &str| d[k].as_str().unwrap_or("").to_string();
        let kind = EventKind::parse(e["kind"].as_str().unwrap_or("?"));
        let (what, text) = match kind {
            EventKind::DhcpBoot => (
                "dhcp",
                format!(
                    "offer/ack -> {} ({}{})",
                    ds("filename"),
                    ds("firmware"),
                    if d["ipxe"] == true { ", iPXE" } else { "" }
                ),
            ),
            EventKind::TftpFile => ("tftp", format!("{} ({} bytes)", ds("path"), d["bytes"])),
            EventKind::Script => ("script", format!("iPXE script for image {}", ds("image"))),
            EventKind::ScriptWait => ("script", format!("wait: {}", ds("reason"))),
            EventKind::HttpFile => {
                let path = ds("path");
                let label = match image {
                    Some(i) if i["kernel"].as_str() == Some(path.as_str()) => "kernel",
                    Some(i) if i["initrd"].as_str() == Some(path.as_str()) => "initrd",
                    _ => "http",
                };
                (label, path)
            }
            EventKind::AgentReady => (
                "agent",
                format!(
                    "ready on {} (node uptime {:.2} s)",
                    ds("image"),
                    d["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
                ),
            ),
            other => (other.as_str(), d.to_string()),
        };
        println!(
            "{:>9.3} s  {:<8} {}",
            (e["at_ms"].as_i64().unwrap_or(0) - t0) as f64 / 1000.0,
            what,
            text
        );
    }
}
