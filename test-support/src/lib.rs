//! Helpers shared by the workspace's tests.
//!
//! **Honest skips.** A test that needs a tool, root or a kernel module calls
//! [`require`] (or [`skip`]) before doing anything else. When the need is not
//! met:
//! - under CI (the `CI` environment variable is set to anything but `""`,
//!   `0` or `false`) the test **fails** with the reason: CI installs what the
//!   tests need, so a missing tool is a broken CI machine, not a pass;
//! - otherwise it writes one line `SKIP: <test>: <reason>` straight to the
//!   process's standard error (past cargo's output capture, so the line is
//!   seen even for a passing test) and the caller returns early.
//!
//! `qemu-tests/test-all.sh` counts the `SKIP:` lines and reports them as
//! skipped, not passed.
//!
//! **CPU time.** [`process_cpu_secs`] is what the benches' load tools
//! (`pxestorm`, `dhcpgen`) report of their own cost.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Whether this run is a CI run (`CI` set to something other than empty, `0` or `false`).
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Reports `test` as skipped for `reason` and returns `true` (the caller then
/// returns); under CI it panics instead, failing the test.
pub fn skip(test: &str, reason: &str) -> bool {
    if under_ci() {
        panic!("{test}: {reason} (required under CI, where skipping is a failure)");
    }
    // Straight to fd 2: `eprintln!` would be swallowed by the test harness.
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
    true
}

/// What a test may need.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// An executable on `PATH`.
    Tool(&'a str),
    /// Effective uid 0 (network namespaces, taps, NBD devices...).
    Root,
    /// A kernel module that is loaded or can be loaded (`modprobe`), e.g. `nbd`.
    Module(&'a str),
    /// A path that must exist (a device, a built image...).
    Path(&'a str),
}

/// Whether `tool` is an executable on `PATH`.
pub fn have_tool(tool: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let p = dir.join(tool);
        p.is_file()
            && std::fs::metadata(&p)
                .map(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
                .unwrap_or(false)
    })
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn module_available(name: &str) -> bool {
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    is_root()
        && Command::new("modprobe")
            .arg(name)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

/// Checks every need; on the first one missing, reports the skip (or fails
/// under CI) and returns `false`. Use as
/// `if !test_support::require("my_test", &[Need::Tool("nbdinfo")]) { return; }`.
pub fn require(test: &str, needs: &[Need]) -> bool {
    for need in needs {
        let missing = match need {
            Need::Tool(t) if !have_tool(t) => Some(format!("{t} is not installed")),
            Need::Root if !is_root() => Some("needs root".to_string()),
            Need::Module(m) if !module_available(m) => {
                Some(format!("kernel module {m} is not available"))
            }
            Need::Path(p) if !Path::new(p).exists() => Some(format!("{p} does not exist")),
            _ => None,
        };
        if let Some(reason) = missing {
            skip(test, &reason);
            return false;
        }
    }
    true
}

/// User + system CPU seconds this process has used so far: fields 14 and 15
/// (`utime`, `stime`, in clock ticks) of `/proc/self/stat`, counted after the
/// command name's last `)` (the name may hold spaces); 0 when unreadable.
pub fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(have_tool("sh"));
        assert!(!have_tool("no-such-tool-here-xyz"));
    }
}
