//! Application lifecycle through hooks (the slot's server-defined hook, else
//! the local one: see [`crate::hooks`]): `start` is spawned in its own
//! process group (it is either the app itself or a launcher), optional
//! `health` decides readiness, `stop` asks it to stop, then SIGTERM and
//! SIGKILL go to the process group. Tracks [`AppState`].

use crate::hooks::Hooks;
use anyhow::{bail, Context, Result};
use boot_proto::AppState;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Without a health hook, a start hook still running after this is "running".
const GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
struct Inner {
    state: AppState,
    pgid: Option<i32>,
    generation: u64,
    /// The start hook is the long-running app (it was alive when declared running).
    leader_is_app: bool,
    stopping: bool,
    /// Exit success of the current start hook, once it exited.
    exited: Option<bool>,
}

/// Application controller shared by the command loop and the heartbeat.
#[derive(Clone)]
pub struct App {
    hooks: Hooks,
    inner: Arc<Mutex<Inner>>,
    on_change: Arc<dyn Fn() + Send + Sync>,
}

fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Runs a hook to completion with a deadline (killing its group on timeout).
fn run_hook(hooks: &Hooks, path: &Path, deadline: Instant) -> Result<String> {
    let mut child = hooks.spawn(path, Stdio::inherit)?;
    loop {
        if let Some(st) = child.try_wait().context("wait hook")? {
            if st.success() {
                return Ok(format!("{} exited 0", path.display()));
            }
            bail!("{} failed: {st}", path.display());
        }
        if Instant::now() >= deadline {
            crate::hooks::kill_group(&mut child);
            bail!("{} timed out", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl App {
    /// An app run by `hooks`; `on_change` is called after every state
    /// change (to send a heartbeat early).
    pub fn new(hooks: Hooks, on_change: Arc<dyn Fn() + Send + Sync>) -> App {
        App {
            hooks,
            inner: Arc::default(),
            on_change,
        }
    }

    /// The hooks this app runs.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// The application's current state.
    pub fn state(&self) -> AppState {
        self.lock().state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, s: AppState) {
        self.lock().state = s;
        (self.on_change)();
    }

    /// Runs the start hook; returns once the app is running (or failed).
    pub fn start(&self, timeout: Duration) -> Result<String> {
        {
            let g = self.lock();
            if g.state == AppState::Running && g.pgid.is_some_and(group_alive) {
                return Ok(format!("already running (pgid {})", g.pgid.unwrap_or(0)));
            }
        }
        let Some((hook, source)) = self.hooks.find("start") else {
            self.set(AppState::Failed);
            bail!(
                "no start hook (neither from the server nor in {})",
                self.hooks.local_dir().display()
            );
        };
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let child: Child = self.hooks.spawn(&hook, Stdio::inherit)?;
        tracing::info!(hook = %hook.display(), %source, "start hook spawned");
        let pid = child.id() as i32;
        let gen = {
            let mut g = self.lock();
            g.generation += 1;
            g.state = AppState::Starting;
            g.pgid = Some(pid);
            g.leader_is_app = false;
            g.stopping = false;
            g.exited = None;
            g.generation
        };
        (self.on_change)();
        let (tx, rx) = mpsc::channel::<bool>();
        let inner = self.inner.clone();
        let notify = self.on_change.clone();
        std::thread::Builder::new()
            .name("app-monitor".into())
            .spawn(move || {
                let mut child = child;
                let ok = child.wait().map(|s| s.success()).unwrap_or(false);
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                if g.generation == gen {
                    g.exited = Some(ok);
                    if g.leader_is_app && !g.stopping {
                        g.state = if ok {
                            AppState::Stopped
                        } else {
                            AppState::Failed
                        };
                        tracing::warn!(pid, ok, "application exited");
                        drop(g);
                        notify();
                    }
                }
                let _ = tx.send(ok);
            })
            .context("spawn app monitor")?;

        let health = self.hooks.find("health").map(|(p, _)| p);
        let has_health = health.is_some();
        let mut ready_detail = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = if has_health {
                Duration::from_millis(200)
            } else {
                GRACE.saturating_sub(t0.elapsed())
            };
            if rx.recv_timeout(wait.min(deadline - now)).is_ok() {
                break; // start hook exited; decided below
            }
            if !has_health {
                if t0.elapsed() >= GRACE {
                    ready_detail = Some("start hook running".to_string());
                    break;
                }
            } else if let Some(h) = &health {
                // Never alongside the heartbeat's run of the same hook.
                let _running = self.hooks.lock("health");
                if run_hook(&self.hooks, h, deadline).is_ok() {
                    ready_detail = Some("health hook passed".to_string());
                    break;
                }
            }
        }
        let ms = t0.elapsed().as_millis();
        let mut g = self.lock();
        let result = match (g.exited, ready_detail) {
            (Some(true), _) => {
                g.state = AppState::Running;
                Ok(format!("start hook exited 0 after {ms} ms (launcher)"))
            }
            (Some(false), _) => {
                g.state = AppState::Failed;
                Err(anyhow::anyhow!("start hook failed after {ms} ms"))
            }
            (None, Some(d)) => {
                g.leader_is_app = true;
                g.state = AppState::Running;
                Ok(format!("{d} after {ms} ms (pgid {pid})"))
            }
            (None, None) => {
                g.state = AppState::Failed;
                g.stopping = true;
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                Err(anyhow::anyhow!(
                    "app not ready within {timeout:?}; killed group {pid}"
                ))
            }
        };
        drop(g);
        (self.on_change)();
        result
    }

    /// Stop hook with the timeout, then SIGTERM, then SIGKILL to the group.
    pub fn stop(&self, timeout: Duration) -> Result<String> {
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let pgid = {
            let mut g = self.lock();
            g.stopping = true;
            g.state = AppState::Stopping;
            g.pgid
        };
        (self.on_change)();
        let mut steps = Vec::new();
        if let Some((hook, _)) = self.hooks.find("stop") {
            let _running = self.hooks.lock("stop");
            match run_hook(&self.hooks, &hook, deadline) {
                Ok(s) => steps.push(s),
                Err(e) => steps.push(format!("{e:#}")),
            }
        }
        if let Some(pg) = pgid {
            let wait_gone = |until: Instant| {
                while group_alive(pg) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                !group_alive(pg)
            };
            if group_alive(pg) {
                let _ = killpg(Pid::from_raw(pg), Signal::SIGTERM);
                let grace = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1));
                if wait_gone(Instant::now() + grace) {
                    steps.push(format!("group {pg} exited on SIGTERM"));
                } else {
                    let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
                    wait_gone(Instant::now() + Duration::from_secs(2));
                    steps.push(format!("group {pg} SIGKILLed"));
                }
            } else {
                steps.push("app process group already gone".into());
            }
        }
        let gone = pgid.is_none_or(|pg| !group_alive(pg));
        self.set(if gone {
            AppState::Stopped
        } else {
            AppState::Failed
        });
        let d = format!(
            "{} in {} ms",
            if steps.is_empty() {
                "nothing to stop".into()
            } else {
                steps.join("; ")
            },
            t0.elapsed().as_millis()
        );
        if gone {
            Ok(d)
        } else {
            bail!("app group still alive after SIGKILL: {d}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hook(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn app(dir: &Path) -> App {
        App::new(Hooks::new(dir, dir.join("slot-hooks")), Arc::new(|| {}))
    }

    #[test]
    fn long_running_app_stops_on_sigterm() {
        let d = tempfile::tempdir().unwrap();
        hook(d.path(), "start", "exec sleep 60");
        let a = app(d.path());
        assert_eq!(a.state(), AppState::None);
        let s = a.start(Duration::from_secs(5)).unwrap();
        assert!(s.contains("start hook running"), "{s}");
        assert_eq!(a.state(), AppState::Running);
        let s = a.stop(Duration::from_secs(2)).unwrap();
        assert!(s.contains("exited on SIGTERM"), "{s}");
        assert_eq!(a.state(), AppState::Stopped);
    }

    #[test]
    fn stubborn_app_gets_sigkill_and_stop_hook_runs() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("stopped");
        hook(
            d.path(),
            "start",
            "trap '' TERM; while :; do sleep 0.05; done",
        );
        hook(d.path(), "stop", &format!("touch {}", marker.display()));
        let a = app(d.path());
        a.start(Duration::from_secs(5)).unwrap();
        let s = a.stop(Duration::from_millis(100)).unwrap();
        assert!(marker.exists());
        assert!(s.contains("SIGKILL"), "{s}");
        assert_eq!(a.state(), AppState::Stopped);
    }

    /// StopApp's timeout: a stop hook that hangs is killed with its process
    /// group, then the app's group is force-killed, and the result says so.
    #[test]
    fn hanging_stop_hook_and_stubborn_app_are_force_killed() {
        let d = tempfile::tempdir().unwrap();
        let app_pid = d.path().join("app.pid");
        let hook_child = d.path().join("hook-child.pid");
        hook(
            d.path(),
            "start",
            &format!(
                "trap '' TERM; echo $$ > {}; while :; do sleep 0.05; done",
                app_pid.display()
            ),
        );
        hook(
            d.path(),
            "stop",
            &format!("sleep 60 & echo $! > {}; wait", hook_child.display()),
        );
        let a = app(d.path());
        a.start(Duration::from_secs(5)).unwrap();
        let t = Instant::now();
        let s = a.stop(Duration::from_millis(300)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(s.contains("stop timed out"), "{s}");
        assert!(s.contains("SIGKILLed"), "{s}");
        assert_eq!(a.state(), AppState::Stopped);
        for f in [&app_pid, &hook_child] {
            let pid: i32 = std::fs::read_to_string(f).unwrap().trim().parse().unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                stat.is_empty() || stat.contains(") Z"),
                "{} still alive: {stat}",
                f.display()
            );
        }
    }

    #[test]
    fn launcher_health_and_failure() {
        let d = tempfile::tempdir().unwrap();
        // A launcher that daemonises a child in the same process group.
        hook(d.path(), "start", "sleep 60 >/dev/null 2>&1 &\nexit 0");
        let a = app(d.path());
        let s = a.start(Duration::from_secs(5)).unwrap();
        assert!(s.contains("launcher"), "{s}");
        assert_eq!(a.state(), AppState::Running);
        a.stop(Duration::from_secs(2)).unwrap();

        let d = tempfile::tempdir().unwrap();
        let flag = d.path().join("up");
        hook(
            d.path(),
            "start",
            &format!("sleep 0.2; touch {}; exec sleep 60", flag.display()),
        );
        hook(d.path(), "health", &format!("test -e {}", flag.display()));
        let a = app(d.path());
        let s = a.start(Duration::from_secs(5)).unwrap();
        assert!(s.contains("health hook passed"), "{s}");
        a.stop(Duration::from_secs(2)).unwrap();

        let d = tempfile::tempdir().unwrap();
        hook(d.path(), "start", "exit 3");
        let a = app(d.path());
        assert!(a.start(Duration::from_secs(5)).is_err());
        assert_eq!(a.state(), AppState::Failed);

        let d = tempfile::tempdir().unwrap();
        let a = app(d.path());
        assert!(a.start(Duration::from_secs(1)).is_err(), "no hook");
    }

    #[test]
    fn app_exit_is_noticed() {
        let d = tempfile::tempdir().unwrap();
        hook(d.path(), "start", "sleep 0.5; exit 4");
        let a = app(d.path());
        a.start(Duration::from_secs(5)).unwrap();
        assert_eq!(a.state(), AppState::Running);
        let t = Instant::now();
        while a.state() == AppState::Running {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(a.state(), AppState::Failed);
    }
}
