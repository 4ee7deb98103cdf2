//! Heartbeat probes: runs the `health` and `busy` hooks (see
//! [`crate::hooks`]) once per heartbeat, side by side, each with a
//! [`PROBE_TIMEOUT`], and turns what they say into the heartbeat's
//! `health` pairs and `busy` flag.
//!
//! `health`: the `key=value` pairs of its stdout (whitespace or newline
//! separated; at most [`OUTPUT_CAP`] bytes, [`MAX_PAIRS`] pairs, keys up to
//! [`MAX_KEY`] and values up to [`MAX_VALUE`] characters; other tokens are
//! ignored) plus `health=ok` on exit 0, `health=failed` otherwise (non-zero
//! exit, timeout, cannot run). `busy`: exit 0 is busy, non-zero is not busy,
//! a timeout or a hook that cannot run counts as busy (the safe answer: a
//! busy node is never taken away). No hook: no pairs, `busy` unknown.

use crate::hooks::{self, Hooks};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{debug, warn};

/// How long one heartbeat waits for each hook.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of the health hook's stdout that are read.
pub const OUTPUT_CAP: usize = 4096;
/// Pairs taken from the health hook's output.
pub const MAX_PAIRS: usize = 32;
/// Longest key, in characters.
pub const MAX_KEY: usize = 64;
/// Longest value, in characters.
pub const MAX_VALUE: usize = 256;

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.chars().count() <= MAX_KEY
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
}

/// The `key=value` pairs of a health hook's output. `truncated`: the output
/// was cut at the cap, so its last token may be cut too and is dropped.
/// Later duplicates win; the pair limit counts distinct keys.
pub fn parse_pairs(out: &[u8], truncated: bool) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(out);
    let mut tokens: Vec<&str> = text.split_whitespace().collect();
    if truncated && !text.ends_with(char::is_whitespace) {
        tokens.pop();
    }
    let mut pairs = BTreeMap::new();
    for t in tokens {
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        if !key_ok(k) || v.chars().count() > MAX_VALUE {
            continue;
        }
        if pairs.len() >= MAX_PAIRS && !pairs.contains_key(k) {
            continue;
        }
        pairs.insert(k.to_string(), v.to_string());
    }
    pairs
}

/// Runs the probes heartbeat after heartbeat; remembers the last health
/// pairs for a beat where the health hook is busy elsewhere (the app's
/// readiness check), so a hook never runs concurrently with itself.
pub struct Prober {
    hooks: Hooks,
    last_health: BTreeMap<String, String>,
}

impl Prober {
    /// A prober running `hooks`' health and busy hooks.
    pub fn new(hooks: Hooks) -> Prober {
        Prober {
            hooks,
            last_health: BTreeMap::new(),
        }
    }

    /// The heartbeat's `health` pairs and `busy` flag, within about
    /// [`PROBE_TIMEOUT`] (both hooks run at the same time).
    pub fn probe(&mut self) -> (BTreeMap<String, String>, Option<bool>) {
        let hooks = &self.hooks;
        let (health, busy) = std::thread::scope(|s| {
            let busy = s.spawn(|| busy(hooks));
            let health = health(hooks);
            (health, busy.join().unwrap_or(Some(true)))
        });
        let health = match health {
            Some(h) => {
                self.last_health = h.clone();
                h
            }
            None => self.last_health.clone(),
        };
        (health, busy)
    }
}

/// `None` when the health hook is running elsewhere right now.
fn health(hooks: &Hooks) -> Option<BTreeMap<String, String>> {
    let Some((path, source)) = hooks.find("health") else {
        return Some(BTreeMap::new());
    };
    let _running = hooks.try_lock("health")?;
    let (mut pairs, ok) = match hooks::run_captured(hooks, &path, PROBE_TIMEOUT, OUTPUT_CAP) {
        Ok(r) => {
            let ok = r.status.is_some_and(|s| s.success());
            if !ok {
                debug!(hook = %path.display(), %source, status = ?r.status, "health hook: not healthy");
            }
            (parse_pairs(&r.stdout, r.truncated), ok)
        }
        Err(e) => {
            warn!(hook = %path.display(), error = %format!("{e:#}"), "health hook cannot run");
            (BTreeMap::new(), false)
        }
    };
    pairs.insert("health".into(), if ok { "ok" } else { "failed" }.into());
    Some(pairs)
}

fn busy(hooks: &Hooks) -> Option<bool> {
    let (path, _) = hooks.find("busy")?;
    let Some(_running) = hooks.try_lock("busy") else {
        return Some(true);
    };
    match hooks::run_captured(hooks, &path, PROBE_TIMEOUT, 0) {
        Ok(r) => Some(r.status.is_none_or(|s| s.success())),
        Err(e) => {
            warn!(hook = %path.display(), error = %format!("{e:#}"), "busy hook cannot run; counting the node as busy");
            Some(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Instant;

    fn hook(dir: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn parses_pairs_and_ignores_junk() {
        let p = parse_pairs(
            b"load=0.7 busy=1\nlatency_ms=40\tjunk =x =y k= a=b=c \xff=1 sp\xc3\xa9cial=1 load=0.9",
            false,
        );
        let want: BTreeMap<String, String> = [
            ("load", "0.9"),
            ("busy", "1"),
            ("latency_ms", "40"),
            ("k", ""),
            ("a", "b=c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(p, want);
    }

    #[test]
    fn parse_limits() {
        let long_key = "k".repeat(MAX_KEY + 1);
        let ok_key = "k".repeat(MAX_KEY);
        let long_val = "v".repeat(MAX_VALUE + 1);
        let ok_val = "v".repeat(MAX_VALUE);
        let text = format!("{long_key}=1 {ok_key}=1 a={long_val} b={ok_val}");
        let p = parse_pairs(text.as_bytes(), false);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.contains_key(&ok_key));
        assert_eq!(p["b"], ok_val);

        let many: String = (0..40).map(|i| format!("k{i}=v ")).collect();
        let p = parse_pairs(many.as_bytes(), false);
        assert_eq!(p.len(), MAX_PAIRS);
        assert!(p.contains_key("k31") && !p.contains_key("k32"));

        // A token cut at the output cap is dropped.
        assert_eq!(
            parse_pairs(b"a=1 b=12", true).keys().collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(parse_pairs(b"a=1 b=12\n", true).len(), 2);
    }

    #[test]
    fn probes_health_and_busy() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("local");
        std::fs::create_dir(&local).unwrap();
        let h = Hooks::new(&local, d.path().join("slot-hooks"));
        let mut p = Prober::new(h.clone());
        assert_eq!(p.probe(), (BTreeMap::new(), None));

        hook(
            &local,
            "health",
            "echo \"role=$ROLE lat=4\"; echo health=spoofed",
        );
        hook(&local, "busy", "exit 0");
        h.set_env(vec![("ROLE".into(), "db".into())]);
        let (health, busy) = p.probe();
        assert_eq!(health["role"], "db");
        assert_eq!(health["lat"], "4");
        assert_eq!(health["health"], "ok");
        assert_eq!(busy, Some(true));

        hook(&local, "health", "echo lat=9; exit 1");
        hook(&local, "busy", "exit 1");
        let (health, busy) = p.probe();
        assert_eq!(health["health"], "failed");
        assert_eq!(health["lat"], "9");
        assert_eq!(busy, Some(false));

        // Hanging hooks: both time out together, within the probe timeout.
        hook(&local, "health", "echo lat=1; sleep 30");
        hook(&local, "busy", "sleep 30");
        let t = Instant::now();
        let (health, busy) = p.probe();
        let took = t.elapsed();
        assert!(took >= PROBE_TIMEOUT, "{took:?}");
        assert!(took < PROBE_TIMEOUT + Duration::from_secs(1), "{took:?}");
        assert_eq!(health["health"], "failed");
        assert_eq!(
            busy,
            Some(true),
            "a busy hook that times out counts as busy"
        );

        // The health hook running elsewhere (readiness check): the last
        // pairs are reported again, the hook is not started a second time.
        hook(&local, "health", "echo lat=2");
        let guard = h.lock("health");
        let (health, _) = p.probe();
        assert_eq!(health["lat"], "1");
        drop(guard);
        assert_eq!(p.probe().0["lat"], "2");
    }
}
