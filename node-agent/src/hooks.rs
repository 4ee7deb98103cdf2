//! Application hooks: which file runs for a hook name and how it runs.
//!
//! Lookup, per hook: the server-defined hook installed with the slot
//! (`<runtime>/slot-hooks/<name>`, see [`crate::slot`]) wins; a hook the
//! server left out falls back to the node's local `<hooks-dir>/<name>`
//! (`/etc/node-agent/hooks`). Every hook runs in its own process group with
//! stdin closed and the slot's `KEY=value` pairs in its environment. One lock
//! per hook name keeps a hook from running concurrently with itself.

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The hook names an environment can define.
pub const NAMES: [&str; boot_proto::HOOK_NAMES.len()] = boot_proto::HOOK_NAMES;

/// Where a hook came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Installed by the server's `Configure` for this slot.
    Server,
    /// The node's own hooks directory.
    Local,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Server => "server",
            Source::Local => "local",
        })
    }
}

struct Inner {
    local: PathBuf,
    server: PathBuf,
    env: Mutex<Vec<(String, String)>>,
    locks: [Mutex<()>; NAMES.len()],
}

/// The hook set shared by the app controller, the heartbeat and the slot
/// installer. Cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    inner: Arc<Inner>,
}

impl Hooks {
    /// `local`: the node's hooks directory; `server`: where the slot's
    /// server-defined hooks are installed (may not exist).
    pub fn new(local: impl Into<PathBuf>, server: impl Into<PathBuf>) -> Hooks {
        Hooks {
            inner: Arc::new(Inner {
                local: local.into(),
                server: server.into(),
                env: Mutex::default(),
                locks: Default::default(),
            }),
        }
    }

    /// The node's own hooks directory.
    pub fn local_dir(&self) -> &Path {
        &self.inner.local
    }

    /// The directory server-defined hooks are installed in.
    pub fn server_dir(&self) -> &Path {
        &self.inner.server
    }

    /// The hook that runs for `name`: the server's if installed, else the
    /// local one, else none.
    pub fn find(&self, name: &str) -> Option<(PathBuf, Source)> {
        let server = self.inner.server.join(name);
        if server.is_file() {
            return Some((server, Source::Server));
        }
        let local = self.inner.local.join(name);
        local.exists().then_some((local, Source::Local))
    }

    /// Replaces the `KEY=value` pairs every hook gets in its environment.
    pub fn set_env(&self, pairs: Vec<(String, String)>) {
        *self.inner.env.lock().unwrap_or_else(|p| p.into_inner()) = pairs;
    }

    /// The pairs hooks currently get.
    pub fn env(&self) -> Vec<(String, String)> {
        self.inner
            .env
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock_of(&self, name: &str) -> &Mutex<()> {
        // An unknown name shares the last lock (never the start hook's).
        let i = NAMES
            .iter()
            .position(|n| *n == name)
            .unwrap_or(NAMES.len() - 1);
        &self.inner.locks[i]
    }

    /// Waits until no other run of hook `name` is in progress.
    pub fn lock(&self, name: &str) -> MutexGuard<'_, ()> {
        self.lock_of(name).lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Like [`Hooks::lock`], but `None` at once when the hook is running.
    pub fn try_lock(&self, name: &str) -> Option<MutexGuard<'_, ()>> {
        match self.lock_of(name).try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Starts a hook in its own process group with the slot environment. A
    /// hook file that was just written can be briefly "text file busy"
    /// (ETXTBSY: a process forked elsewhere still holds its write descriptor
    /// until it execs), so that error is retried.
    pub fn spawn(&self, path: &Path, stdout: impl Fn() -> Stdio) -> Result<Child> {
        let env = self.env();
        let mut tries = 0;
        loop {
            match Command::new(path)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(stdout())
                .process_group(0)
                .spawn()
            {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10 * tries));
                }
                r => return r.with_context(|| format!("spawn {}", path.display())),
            }
        }
    }
}

/// What a hook run to completion (or to its timeout) left behind.
#[derive(Debug)]
pub struct Run {
    /// Exit status; `None` when it timed out and its group was killed.
    pub status: Option<ExitStatus>,
    /// Up to the cap of what it printed on stdout.
    pub stdout: Vec<u8>,
    /// It printed more than the cap (the rest was read and dropped).
    pub truncated: bool,
}

/// Kills the whole process group of a hook that ran out of time.
pub fn kill_group(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// Runs hook `path` with a timeout, keeping at most `cap` bytes of its
/// stdout. On timeout its process group is killed. Never waits much longer
/// than `timeout`, even when a process outside the group keeps stdout open.
pub fn run_captured(hooks: &Hooks, path: &Path, timeout: Duration, cap: usize) -> Result<Run> {
    let deadline = Instant::now() + timeout;
    let mut child = hooks.spawn(path, Stdio::piped)?;
    let mut out = child.stdout.take().context("hook stdout")?;
    let (tx, rx) = mpsc::channel::<(Vec<u8>, bool)>();
    std::thread::Builder::new()
        .name("hook-output".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut truncated = false;
            let mut buf = [0u8; 1024];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = cap.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                        truncated |= n > room;
                    }
                }
            }
            let _ = tx.send((kept, truncated));
        })
        .context("spawn hook output reader")?;
    let mut status = None;
    loop {
        if let Some(st) = child.try_wait().context("wait hook")? {
            status = Some(st);
            break;
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The output ends when every writer is gone; a background process the
    // hook left in its group is killed at the deadline.
    let wait = deadline.saturating_duration_since(Instant::now());
    let (stdout, truncated) = match rx.recv_timeout(wait) {
        Ok(r) => r,
        Err(_) => {
            kill_group(&mut child);
            rx.recv_timeout(Duration::from_millis(100))
                .unwrap_or_default()
        }
    };
    Ok(Run {
        status,
        stdout,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub fn hook(dir: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn server_hook_wins_and_missing_ones_fall_back_to_local() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("local");
        let server = d.path().join("slot-hooks");
        hook(&local, "start", "exit 0");
        hook(&local, "stop", "exit 0");
        let h = Hooks::new(&local, &server);
        assert_eq!(h.find("start"), Some((local.join("start"), Source::Local)));
        assert_eq!(h.find("health"), None);
        hook(&server, "start", "exit 0");
        hook(&server, "health", "exit 0");
        assert_eq!(
            h.find("start"),
            Some((server.join("start"), Source::Server))
        );
        assert_eq!(h.find("stop"), Some((local.join("stop"), Source::Local)));
        assert_eq!(
            h.find("health"),
            Some((server.join("health"), Source::Server))
        );
        assert_eq!(h.find("busy"), None);
        std::fs::remove_dir_all(&server).unwrap();
        assert_eq!(h.find("start"), Some((local.join("start"), Source::Local)));
    }

    #[test]
    fn captured_run_has_env_output_cap_and_timeout() {
        let d = tempfile::tempdir().unwrap();
        hook(d.path(), "health", "echo \"role=$ROLE\"; exit 3");
        let h = Hooks::new(d.path(), d.path().join("none"));
        h.set_env(vec![("ROLE".into(), "db".into())]);
        let r = run_captured(&h, &d.path().join("health"), Duration::from_secs(2), 4096).unwrap();
        assert_eq!(r.status.and_then(|s| s.code()), Some(3));
        assert_eq!(r.stdout, b"role=db\n");
        assert!(!r.truncated);

        hook(d.path(), "big", "yes x=1 | head -c 100000");
        let r = run_captured(&h, &d.path().join("big"), Duration::from_secs(2), 4096).unwrap();
        assert!(r.status.unwrap().success());
        assert_eq!(r.stdout.len(), 4096);
        assert!(r.truncated);

        // A hook that hangs, with a child of its own holding stdout: both
        // die at the timeout, and the call returns close to it.
        let pidfile = d.path().join("bg.pid");
        hook(
            d.path(),
            "hang",
            &format!(
                "echo partial=1; sleep 30 & echo $! > {}; wait",
                pidfile.display()
            ),
        );
        let t = Instant::now();
        let r = run_captured(&h, &d.path().join("hang"), Duration::from_millis(300), 4096).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert!(r.status.is_none());
        assert_eq!(r.stdout, b"partial=1\n");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = Instant::now();
        while nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok() {
            // A zombie until init reaps it is gone enough: check its state.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z") {
                break;
            }
            assert!(
                gone.elapsed() < Duration::from_secs(2),
                "background sleep survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn try_lock_refuses_while_the_hook_runs() {
        let h = Hooks::new("/nonexistent", "/nonexistent");
        let g = h.lock("health");
        assert!(h.try_lock("health").is_none());
        assert!(h.try_lock("busy").is_some());
        drop(g);
        assert!(h.try_lock("health").is_some());
    }
}
