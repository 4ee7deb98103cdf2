//! Human-readable output of the engine's admin answers: environments, slots
//! with the timings of their last move, policies and history (`--json`
//! prints the answers themselves).

use crate::model::SlotStep;
use serde_json::Value;

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn yes(v: &Value) -> &'static str {
    if v == &Value::Bool(true) {
        "yes"
    } else {
        "no"
    }
}

/// `ms` since the epoch as UTC time of day with milliseconds (and the date).
pub fn time(ms: i64, with_date: bool) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if with_date => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        Some(t) => t.format("%H:%M:%S%.3f").to_string(),
        None => "-".into(),
    }
}

/// Seconds from `ms` to now, e.g. `12.3s`.
fn age(ms: &Value) -> String {
    match ms.as_i64() {
        Some(t) if t > 0 => format!(
            "{:.1}s",
            (crate::model::now_ms() - t).max(0) as f64 / 1000.0
        ),
        _ => "-".into(),
    }
}

/// A policy in one line (`none` when absent).
pub fn policy(p: &Value) -> String {
    if p.is_null() {
        return "no policy".into();
    }
    format!(
        "{} above {} adds a node, below {} removes one, over {} s",
        p["metric"].as_str().unwrap_or("load"),
        p["add_above"],
        p["remove_below"],
        p["window_secs"]
    )
}

fn requirements(r: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(f) = r["firmware"].as_str() {
        parts.push(format!("firmware={f}"));
    }
    if let Some(c) = r["min_cpus"].as_u64() {
        parts.push(format!("cpus>={c}"));
    }
    if let Some(m) = r["min_memory_mib"].as_u64() {
        parts.push(format!("memory>={m}MiB"));
    }
    for (k, v) in r["labels"].as_object().into_iter().flatten() {
        parts.push(format!("label:{k}={}", v.as_str().unwrap_or("?")));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn schedule(s: &Value) -> String {
    let action = match &s["action"] {
        Value::String(a) => a.clone(),
        Value::Object(o) => o
            .get("scale")
            .map(|n| format!("scale:{n}"))
            .unwrap_or_else(|| Value::Object(o.clone()).to_string()),
        other => other.to_string(),
    };
    format!("{}=>{action}", s["cron"].as_str().unwrap_or("?"))
}

/// The environment table of `env list`.
pub fn environments(v: &Value) {
    println!(
        "{:<16} {:<8} {:<14} {:>4} {:>7} {:>4} {:>7} {:>6} {:>5} {:<7} POLICY",
        "NAME", "ACTIVE", "IMAGE", "MIN", "DESIRED", "MAX", "HOLDING", "TARGET", "PRIO", "PREEMPT"
    );
    for e in v.as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<8} {:<14} {:>4} {:>7} {:>4} {:>7} {:>6} {:>5} {:<7} {}",
            s(e, "name"),
            yes(&e["active"]),
            s(e, "image"),
            s(e, "min"),
            s(e, "desired"),
            s(e, "max"),
            s(e, "holding"),
            s(e, "target"),
            s(e, "priority"),
            yes(&e["preemptible"]),
            if e["policy"].is_null() {
                "-".to_string()
            } else {
                policy(&e["policy"])
            }
        );
    }
}

/// `env show`: the environment's fields, its slots, their last move's timings.
pub fn environment(e: &Value) {
    let line = |k: &str, v: String| println!("{:<15}{v}", format!("{k}:"));
    line("name", s(e, "name"));
    line("description", s(e, "description"));
    line("image", s(e, "image"));
    line(
        "active",
        format!("{}   boot: {}", yes(&e["active"]), s(e, "boot")),
    );
    let d = &e["detection"];
    line(
        "detection",
        format!(
            "silence {}   health failures {}   app failure: {}   power watch: {}",
            d["heartbeat_timeout_secs"]
                .as_u64()
                .map_or("server default".to_string(), |s| format!("{s} s")),
            match d["health_failures"].as_u64() {
                Some(0) | None => "off".to_string(),
                Some(n) => format!("{n} in a row"),
            },
            yes(&d["app_failure"]),
            yes(&d["power_watch"])
        ),
    );
    line(
        "nodes",
        format!(
            "holding {}, target {} (min {}, desired {}, max {})",
            s(e, "holding"),
            s(e, "target"),
            s(e, "min"),
            s(e, "desired"),
            s(e, "max")
        ),
    );
    line(
        "priority",
        format!(
            "{}   preemptible: {}   share: {}",
            s(e, "priority"),
            yes(&e["preemptible"]),
            e["share_pct"]
                .as_u64()
                .map(|p| format!("{p}%"))
                .unwrap_or_else(|| "-".into())
        ),
    );
    line("disk base", s(e, "disk_base"));
    line("hostnames", s(e, "hostname_pattern"));
    line("addresses", s(e, "addresses"));
    line("requirements", requirements(&e["requirements"]));
    let hooks: Vec<String> = e["hooks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} ({} bytes)", v.as_str().map_or(0, str::len)))
        .collect();
    line(
        "hooks",
        if hooks.is_empty() {
            "-".into()
        } else {
            hooks.join(", ")
        },
    );
    let config: Vec<String> = e["config"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect();
    line(
        "config",
        if config.is_empty() {
            "-".into()
        } else {
            config.join(" ")
        },
    );
    let schedules: Vec<String> = e["schedules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(schedule)
        .collect();
    line(
        "schedules",
        if schedules.is_empty() {
            "-".into()
        } else {
            schedules.join("; ")
        },
    );
    line("policy", policy(&e["policy"]));
    line("version", s(e, "version"));
    line(
        "changed",
        format!(
            "{} (created {})",
            time(e["updated_ms"].as_i64().unwrap_or(0), true),
            time(e["created_ms"].as_i64().unwrap_or(0), true)
        ),
    );
    println!();
    if e["slots"].as_array().is_none_or(|a| a.is_empty()) {
        println!("no slots yet");
    } else {
        slots(&e["slots"], false);
    }
    let moves: Vec<&Value> = e["slots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|sl| sl["timings"].as_object().is_some_and(|t| !t.is_empty()))
        .collect();
    if !moves.is_empty() {
        println!();
        println!("last move (ms per step):");
        for sl in moves {
            println!(
                "  slot {} ({}): {}",
                s(sl, "index"),
                s(sl, "node"),
                timings(&sl["timings"])
            );
        }
    }
}

/// Step timings in the order a move goes through them, then any others, and the total.
fn timings(t: &Value) -> String {
    let Some(map) = t.as_object() else {
        return "-".into();
    };
    let order = |k: &str| SlotStep::parse(k).map(|s| s as usize).unwrap_or(usize::MAX);
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| (order(k), k.as_str()));
    let total: i64 = map.values().filter_map(Value::as_i64).sum();
    let parts: Vec<String> = keys.iter().map(|k| format!("{k} {}", map[*k])).collect();
    format!("{}; total {total}", parts.join(", "))
}

/// A slot table (`slot list`, and in `env show` without the environment column).
pub fn slots(v: &Value, with_env: bool) {
    let env_col = |x: &str| {
        if with_env {
            format!("{x:<16} ")
        } else {
            String::new()
        }
    };
    println!(
        "{}{:>5} {:<20} {:<15} {:<18} {:<10} {:>8}  DETAIL",
        env_col("ENV"),
        "INDEX",
        "HOSTNAME",
        "IP",
        "NODE",
        "STEP",
        "SINCE"
    );
    for sl in v.as_array().into_iter().flatten() {
        println!(
            "{}{:>5} {:<20} {:<15} {:<18} {:<10} {:>8}  {}",
            env_col(&s(sl, "environment")),
            s(sl, "index"),
            s(sl, "hostname"),
            s(sl, "ip"),
            s(sl, "node"),
            s(sl, "step"),
            age(&sl["step_since_ms"]),
            sl["detail"].as_str().unwrap_or("")
        );
    }
}

/// `env history`: load reports, then decisions.
pub fn history(v: &Value) {
    println!("load reports:");
    println!(
        "{:<23} {:<18} {:>6} {:>5} {:<5} HEALTH",
        "TIME", "NODE", "LOAD1", "CPU", "BUSY"
    );
    for l in v["load"].as_array().into_iter().flatten() {
        let health: Vec<String> = l["health"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
            .collect();
        println!(
            "{:<23} {:<18} {:>6.2} {:>5.2} {:<5} {}",
            time(l["at_ms"].as_i64().unwrap_or(0), true),
            s(l, "node"),
            l["load1"].as_f64().unwrap_or(0.0),
            l["cpu_busy"].as_f64().unwrap_or(0.0),
            s(l, "busy"),
            health.join(" ")
        );
    }
    println!();
    println!("decisions:");
    println!("{:<23} {:<16} DETAIL", "TIME", "KIND");
    for d in v["decisions"].as_array().into_iter().flatten() {
        let mut detail = d["detail"].clone();
        if let Some(m) = detail.as_object_mut() {
            m.remove("env");
        }
        println!(
            "{:<23} {:<16} {}",
            time(d["at_ms"].as_i64().unwrap_or(0), true),
            s(d, "kind"),
            detail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timings_follow_the_move_and_add_up() {
        let t = json!({"ready": 0, "booting": 3100, "pending": 2, "pointing": 40, "starting": 250, "stopping": 9});
        assert_eq!(
            timings(&t),
            "pending 2, stopping 9, pointing 40, booting 3100, starting 250, ready 0; total 3401"
        );
        assert_eq!(
            schedule(&json!({"cron": "0 0 8 * * *", "action": {"scale": 3}})),
            "0 0 8 * * *=>scale:3"
        );
        assert_eq!(
            requirements(&json!({"firmware": "bios", "min_cpus": 2, "labels": {"rack": "r1"}})),
            "firmware=bios cpus>=2 label:rack=r1"
        );
        assert_eq!(policy(&Value::Null), "no policy");
    }
}
