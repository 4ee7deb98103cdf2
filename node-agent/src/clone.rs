//! The template's side of a live clone: [`CommandKind::PrepareClone`] runs
//! the `prepare-clone` hook (a refusal stops the clone unless forced),
//! syncs and freezes the file systems ([`crate::freeze`]) and answers;
//! [`CommandKind::FinishClone`] thaws and runs `clone-done`, reporting the
//! pause (freeze to thaw) it measured. A watchdog thread thaws by itself
//! (and runs `clone-done`) once the hold time passed without a finish, so
//! neither a lost command nor a server restart leaves a file system frozen.
//!
//! [`CommandKind::PrepareClone`]: boot_proto::CommandKind::PrepareClone
//! [`CommandKind::FinishClone`]: boot_proto::CommandKind::FinishClone

use crate::freeze;
use crate::hooks::{run_captured, Hooks};
use anyhow::{bail, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Longest run of the `prepare-clone` and `clone-done` hooks.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Output of a clone hook kept for the reason / detail.
const HOOK_OUTPUT_CAP: usize = 2048;

/// A freeze in progress.
#[derive(Debug)]
struct Frozen {
    paths: Vec<String>,
    since: Instant,
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    frozen: Option<Frozen>,
    generation: u64,
    /// Pause of the last freeze the watchdog ended (reported by a late finish).
    watchdog_pause_ms: Option<u64>,
}

/// The clone state of this agent, shared with the watchdog thread.
#[derive(Clone, Default)]
pub struct Cloning {
    inner: Arc<Mutex<Inner>>,
}

/// How a hook run ended, in a line for the operator.
fn hook_line(hooks: &Hooks, name: &str) -> Result<(bool, String)> {
    let Some((path, source)) = hooks.find(name) else {
        return Ok((true, format!("no {name} hook")));
    };
    let _g = hooks.lock(name);
    let run = run_captured(hooks, &path, HOOK_TIMEOUT, HOOK_OUTPUT_CAP)?;
    let out = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let out = if out.is_empty() {
        String::new()
    } else {
        format!(": {out}")
    };
    Ok(match run.status {
        Some(st) if st.success() => (true, format!("{name} ({source}) ok{out}")),
        Some(st) => (false, format!("{name} ({source}) {st}{out}")),
        None => (
            false,
            format!("{name} ({source}) timed out after {HOOK_TIMEOUT:?}{out}"),
        ),
    })
}

/// Runs `clone-done`; never an error (the template must resume anyway).
fn clone_done(hooks: &Hooks) -> String {
    match hook_line(hooks, "clone-done") {
        Ok((_, l)) => l,
        Err(e) => format!("clone-done not run: {e:#}"),
    }
}

impl Cloning {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether file systems are frozen for a clone now.
    pub fn frozen(&self) -> bool {
        self.lock().frozen.is_some()
    }

    /// `prepare-clone` hook, then freeze; the watchdog thaws after `hold`.
    pub fn prepare(&self, hooks: &Hooks, force: bool, hold: Duration) -> Result<String> {
        self.prepare_with(hooks, force, hold, freeze::quiesce)
    }

    /// [`Cloning::prepare`] with the freeze step given (tests freeze nothing).
    fn prepare_with(
        &self,
        hooks: &Hooks,
        force: bool,
        hold: Duration,
        quiesce: impl FnOnce() -> Result<freeze::FreezeReport>,
    ) -> Result<String> {
        if self.frozen() {
            return Ok("already frozen for a clone".into());
        }
        let (ok, line) = hook_line(hooks, "prepare-clone")?;
        let mut said = vec![line.clone()];
        if !ok {
            if !force {
                // The application may have half-prepared: let it resume.
                let done = clone_done(hooks);
                bail!("prepare-clone refused the clone ({line}); {done}");
            }
            said.push("forced".into());
        }
        let report = quiesce()?;
        if !report.failed.is_empty() {
            let thawed = freeze::thaw(&report.done)?;
            let done = clone_done(hooks);
            bail!("freeze failed ({report}); thawed again ({thawed}); {done}");
        }
        let generation = {
            let mut g = self.lock();
            g.generation += 1;
            g.frozen = Some(Frozen {
                paths: report.done.clone(),
                since: Instant::now(),
                generation: g.generation,
            });
            g.watchdog_pause_ms = None;
            g.generation
        };
        info!(frozen = ?report.done, hold_secs = hold.as_secs(), "file systems frozen for a clone");
        let me = self.clone();
        let h = hooks.clone();
        let spawned = std::thread::Builder::new()
            .name("clone-watchdog".into())
            .spawn(move || {
                std::thread::sleep(hold);
                me.watchdog(&h, generation);
            });
        if let Err(e) = spawned {
            // Without a watchdog, do not stay frozen on the server's word alone.
            let r = self.finish(hooks);
            bail!("no clone watchdog ({e}); thawed at once: {r:?}");
        }
        said.push(format!("frozen: {report}"));
        Ok(said.join("; "))
    }

    fn watchdog(&self, hooks: &Hooks, generation: u64) {
        let f = {
            let mut g = self.lock();
            if g.frozen.as_ref().map(|f| f.generation) != Some(generation) {
                return;
            }
            g.frozen.take()
        };
        let Some(f) = f else { return };
        let r = freeze::thaw(&f.paths);
        let pause = f.since.elapsed().as_millis() as u64;
        self.lock().watchdog_pause_ms = Some(pause);
        let done = clone_done(hooks);
        warn!(pause_ms = pause, thawed = ?r.map(|r| r.to_string()).map_err(|e| e.to_string()), %done,
            "no finish for the clone within the hold time: thawed by the watchdog");
    }

    /// Thaws (if frozen) and runs `clone-done`. The detail starts with
    /// `pause_ms=N` when a freeze was ended (here or by the watchdog).
    pub fn finish(&self, hooks: &Hooks) -> Result<String> {
        let (f, late) = {
            let mut g = self.lock();
            (g.frozen.take(), g.watchdog_pause_ms.take())
        };
        let Some(f) = f else {
            // Thawed already by the watchdog, or this agent restarted while
            // frozen: thaw every candidate (harmless when not frozen).
            let r = freeze::thaw(&[])?;
            let done = clone_done(hooks);
            return Ok(match late {
                Some(p) => format!("pause_ms={p}; thawed earlier by the watchdog; {done}"),
                None => format!("not frozen by this agent; thaw of every file system: {r}; {done}"),
            });
        };
        let r = freeze::thaw(&f.paths)?;
        let pause = f.since.elapsed().as_millis() as u64;
        info!(
            pause_ms = pause,
            "file systems thawed after the clone's snapshot"
        );
        let done = clone_done(hooks);
        if !r.failed.is_empty() {
            bail!("pause_ms={pause}; thaw failed: {r}; {done}");
        }
        Ok(format!("pause_ms={pause}; thawed: {r}; {done}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hook(dir: &std::path::Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A refusing prepare-clone stops the clone with its reason (and lets the
    /// application resume through clone-done); nothing is frozen.
    #[test]
    fn refusal_stops_the_clone_unless_forced() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        hook(
            d.path(),
            "prepare-clone",
            &format!(
                "echo prepare >> {0}; echo 'sessions open: 3'; exit 1",
                log.display()
            ),
        );
        hook(
            d.path(),
            "clone-done",
            &format!("echo done >> {}", log.display()),
        );
        let h = Hooks::new(d.path(), d.path().join("none"));
        let c = Cloning::default();
        let e = c
            .prepare(&h, false, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused") && e.contains("sessions open: 3"),
            "{e}"
        );
        assert!(!c.frozen());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "prepare\ndone\n");
    }

    /// Forced past a refusal: frozen (nothing, here: the test must not
    /// freeze the machine it runs on; freeze.rs tests a real ext4), then
    /// the watchdog thaws after the hold and runs clone-done; a late finish
    /// still reports the pause, and a second finish finds nothing frozen.
    #[test]
    fn forced_clone_is_thawed_by_the_watchdog() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        hook(d.path(), "prepare-clone", "echo busy; exit 3");
        hook(
            d.path(),
            "clone-done",
            &format!("echo done >> {}", log.display()),
        );
        let h = Hooks::new(d.path(), d.path().join("none"));
        let c = Cloning::default();
        let r = c
            .prepare_with(&h, true, Duration::from_millis(200), || {
                Ok(freeze::FreezeReport::default())
            })
            .unwrap();
        assert!(r.contains("forced") && r.contains("busy"), "{r}");
        assert!(c.frozen());
        let t = Instant::now();
        while c.frozen() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "watchdog never thawed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // clone-done ran (the watchdog's thread may still be in it).
        while std::fs::read_to_string(&log).unwrap_or_default() != "done\n" {
            assert!(t.elapsed() < Duration::from_secs(5), "clone-done not run");
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = c.finish(&h).unwrap();
        let p = boot_proto::clone_pause_ms(&r).expect(&r);
        assert!((200..5000).contains(&p), "{r}");
        assert!(r.contains("watchdog"), "{r}");
        let r = c.finish(&h).unwrap();
        assert_eq!(boot_proto::clone_pause_ms(&r), None, "{r}");
    }

    /// Finish right after prepare: the pause is short and the watchdog of
    /// that freeze does nothing later.
    #[test]
    fn finish_before_the_hold_ends_the_freeze() {
        let d = tempfile::tempdir().unwrap();
        let h = Hooks::new(d.path(), d.path().join("none"));
        let c = Cloning::default();
        c.prepare_with(&h, false, Duration::from_millis(300), || {
            Ok(freeze::FreezeReport::default())
        })
        .unwrap();
        let r = c.finish(&h).unwrap();
        assert!(boot_proto::clone_pause_ms(&r).unwrap() < 300, "{r}");
        std::thread::sleep(Duration::from_millis(400));
        assert!(c.lock().watchdog_pause_ms.is_none());
    }
}
