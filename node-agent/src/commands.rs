//! Carries out one server [`CommandKind`] and says what must happen after
//! its result has been reported (nothing, a cold reboot or a kexec jump).
//! Slot configuration (`Configure` / `Unconfigure`) is [`crate::slot`]'s.

use crate::app::App;
use crate::bootptr::{self, EfiVars};
use crate::config::Config;
use crate::imagecache::ImageCache;
use crate::{clone, freeze, identity, nbd, power, slot};
use boot_proto::CommandKind;
use std::sync::Mutex;
use std::time::Duration;
use tracing::info;

/// What to do once the final result is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Nothing more: keep running.
    Nothing,
    /// Reboot through firmware.
    Reboot,
    /// Jump into the kernel loaded by kexec.
    KexecJump,
}

/// Result of a command: detail text, success flag, follow-up action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the command succeeded.
    pub ok: bool,
    /// What happened, for the operator.
    pub detail: String,
    /// What to do after reporting.
    pub after: After,
}

impl Outcome {
    fn from(r: anyhow::Result<String>, after_ok: After) -> Outcome {
        match r {
            Ok(detail) => Outcome {
                ok: true,
                detail,
                after: after_ok,
            },
            Err(e) => Outcome {
                ok: false,
                detail: format!("{e:#}"),
                after: After::Nothing,
            },
        }
    }
}

/// Executes commands; owns the node-side state commands share.
pub struct Executor {
    /// The agent's configuration.
    pub cfg: Config,
    /// The application hooks.
    pub app: App,
    boot_mac: Option<String>,
    frozen: Mutex<Vec<String>>,
    cloning: clone::Cloning,
    /// Why the application must not start (a clone's identity change
    /// failed); cleared by the next successful `Configure`.
    blocked: Mutex<Option<String>>,
    /// Kernels and initrds by SHA-256.
    cache: ImageCache,
    /// Id of the pre-staged image loaded in the kernel now, if any.
    staged: Mutex<Option<String>>,
}

impl Executor {
    /// An executor for the node configured by `cfg`; `boot_mac` is the interface it booted from, if known.
    pub fn new(cfg: Config, app: App, boot_mac: Option<String>) -> Executor {
        Executor {
            app,
            boot_mac,
            frozen: Mutex::new(Vec::new()),
            cloning: clone::Cloning::default(),
            blocked: Mutex::new(None),
            cache: ImageCache::new(&cfg.image_cache),
            staged: Mutex::new(None),
            cfg,
        }
    }

    /// Id of the pre-staged image loaded now, if any.
    pub fn staged(&self) -> Option<String> {
        self.staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads an image ahead of a decision (replacing any staged before).
    fn prestage(&self, id: &str, img: &power::KexecImage) -> anyhow::Result<String> {
        let mut held = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_deref() == Some(id) {
            return Ok(format!("staged image {id} already loaded"));
        }
        // The kernel holds one kexec image: loading replaces the staged one.
        *held = None;
        let r = power::kexec_prepare_cached(img, Some(&self.cache), self.cfg.dry_run)?;
        *held = Some(id.to_string());
        info!(staged = %id, "image pre-staged");
        Ok(format!("staged image {id}: {r}"))
    }

    /// The jump's image: the staged one when `staged` names it, else the
    /// command's files (through the cache) loaded now.
    fn kexec(&self, img: &power::KexecImage, staged: Option<&str>) -> anyhow::Result<String> {
        let mut held = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(want), Some(have)) = (staged, held.as_deref()) {
            if want == have {
                info!(staged = %want, "kexec: staged image used, nothing to load");
                return Ok(format!("staged image {want} used: already loaded"));
            }
        }
        let note = match (staged, held.as_deref()) {
            (Some(want), Some(have)) => {
                format!("; staged image {want} not held (holding {have}): loaded instead")
            }
            (Some(want), None) => format!("; staged image {want} not held: loaded instead"),
            (None, Some(have)) => format!("; staged image {have} replaced"),
            (None, None) => String::new(),
        };
        *held = None;
        let r = power::kexec_prepare_cached(img, Some(&self.cache), self.cfg.dry_run)?;
        Ok(format!("{r}{note}"))
    }

    fn is_uefi(&self) -> bool {
        self.cfg.efivars_dir.is_dir()
    }

    /// Carries out `kind` (blocking) and says how it went.
    pub fn execute(&self, kind: &CommandKind) -> Outcome {
        match kind {
            CommandKind::Reboot => Outcome {
                ok: true,
                detail: "syncing and rebooting".into(),
                after: After::Reboot,
            },
            CommandKind::Reprovision => Outcome::from(self.reprovision(), After::Reboot),
            CommandKind::Kexec {
                kernel_url,
                initrd_url,
                cmdline,
                kernel_sha256,
                initrd_sha256,
                staged,
            } => {
                let img = power::KexecImage {
                    kernel_url,
                    initrd_url: initrd_url.as_deref(),
                    cmdline,
                    kernel_sha256: kernel_sha256.as_deref(),
                    initrd_sha256: initrd_sha256.as_deref(),
                };
                Outcome::from(self.kexec(&img, staged.as_deref()), After::KexecJump)
            }
            CommandKind::Prestage {
                stage,
                kernel_url,
                initrd_url,
                cmdline,
                kernel_sha256,
                initrd_sha256,
            } => {
                let img = power::KexecImage {
                    kernel_url,
                    initrd_url: initrd_url.as_deref(),
                    cmdline,
                    kernel_sha256: kernel_sha256.as_deref(),
                    initrd_sha256: initrd_sha256.as_deref(),
                };
                Outcome::from(self.prestage(stage, &img), After::Nothing)
            }
            CommandKind::StartApp { timeout_secs } => {
                let blocked = self
                    .blocked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let r = match blocked {
                    Some(why) => Err(anyhow::anyhow!("not started: {why}")),
                    None => self.app.start(Duration::from_secs(*timeout_secs)),
                };
                Outcome::from(r, After::Nothing)
            }
            CommandKind::StopApp { timeout_secs } => Outcome::from(
                self.app.stop(Duration::from_secs(*timeout_secs)),
                After::Nothing,
            ),
            CommandKind::Quiesce => Outcome::from(
                freeze::quiesce().map(|r| {
                    let mut f = self.frozen.lock().unwrap_or_else(|p| p.into_inner());
                    *f = r.done.clone();
                    format!("frozen: {r}")
                }),
                After::Nothing,
            ),
            CommandKind::Thaw => {
                let list =
                    std::mem::take(&mut *self.frozen.lock().unwrap_or_else(|p| p.into_inner()));
                Outcome::from(
                    freeze::thaw(&list).map(|r| format!("thawed: {r}")),
                    After::Nothing,
                )
            }
            CommandKind::Configure { slot } => Outcome::from(self.configure(slot), After::Nothing),
            CommandKind::PrepareClone { force, hold_secs } => Outcome::from(
                self.cloning.prepare(
                    self.app.hooks(),
                    *force,
                    Duration::from_secs((*hold_secs).max(1)),
                ),
                After::Nothing,
            ),
            CommandKind::FinishClone => {
                Outcome::from(self.cloning.finish(self.app.hooks()), After::Nothing)
            }
            CommandKind::Unconfigure => {
                Outcome::from(slot::remove(&self.cfg, self.app.hooks()), After::Nothing)
            }
            CommandKind::AttachDisk {
                export,
                host,
                port,
                mount,
            } => Outcome::from(
                nbd::attach(host, *port, export, mount.as_deref()).map(|a| a.to_string()),
                After::Nothing,
            ),
        }
    }

    /// Installs the slot; on a clone's boot, changes its identity too (a
    /// failure there keeps the application from starting).
    fn configure(&self, s: &boot_proto::SlotConfig) -> anyhow::Result<String> {
        let mut detail = slot::install(&self.cfg, self.app.hooks(), s)?;
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if s.reidentify {
            match identity::reidentify(self.cfg.identity_root.as_deref(), self.app.hooks()) {
                Ok(d) => detail.push_str(&format!("; clone identity: {d}")),
                Err(e) => {
                    let why = format!("clone identity change failed: {e:#}");
                    *blocked = Some(why.clone());
                    anyhow::bail!("{detail}; {why}");
                }
            }
        }
        *blocked = None;
        Ok(detail)
    }

    fn reprovision(&self) -> anyhow::Result<String> {
        if !self.is_uefi() {
            return Ok(
                "BIOS: no firmware boot pointer to change; the server's boot table \
                       decides once the firmware network-boots; rebooting"
                    .into(),
            );
        }
        let vars = EfiVars::new(&self.cfg.efivars_dir);
        let change = bootptr::set_network_boot(
            &vars,
            self.boot_mac.as_deref(),
            self.cfg.http_boot_url.as_deref(),
        )?;
        Ok(format!("UEFI: {change}; rebooting"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::Hooks;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A plain HTTP server answering every GET with `body`; counts requests.
    fn serve(body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(body);
            }
        });
        (url, hits)
    }

    fn executor(dir: &std::path::Path) -> Executor {
        let cmdline = dir.join("cmdline");
        std::fs::write(&cmdline, "bootsrv.server=http://127.0.0.1:1").unwrap();
        let cfg = Config::from_sources(
            &[
                "--cmdline-file".into(),
                cmdline.display().to_string(),
                "--state-dir".into(),
                dir.join("state").display().to_string(),
                "--dry-run".into(),
            ],
            &|_| None,
        )
        .unwrap();
        let app = App::new(
            Hooks::new(dir.join("hooks"), dir.join("slot-hooks")),
            std::sync::Arc::new(|| {}),
        );
        Executor::new(cfg, app, None)
    }

    fn kexec(url: &str, digest: &str, staged: Option<&str>) -> CommandKind {
        CommandKind::Kexec {
            kernel_url: format!("{url}/k"),
            initrd_url: None,
            cmdline: "bootsrv.token=t".into(),
            kernel_sha256: Some(digest.into()),
            initrd_sha256: None,
            staged: staged.map(str::to_string),
        }
    }

    /// Pre-staged: the kexec that names the stage only jumps; one naming
    /// another stage (the decision picked another environment) loads its
    /// own files instead (from the cache when their digest is known).
    #[test]
    fn a_staged_image_is_used_and_another_one_is_loaded_instead() {
        let dir = tempfile::tempdir().unwrap();
        let (url, hits) = serve(b"kernel A");
        let digest = crate::imagecache::sha256_hex(b"kernel A");
        let exec = executor(dir.path());
        let stage = CommandKind::Prestage {
            stage: "s1".into(),
            kernel_url: format!("{url}/k"),
            initrd_url: None,
            cmdline: "bootsrv.handoff=h".into(),
            kernel_sha256: Some(digest.clone()),
            initrd_sha256: None,
        };
        let out = exec.execute(&stage);
        assert!(out.ok, "{out:?}");
        assert_eq!(out.after, After::Nothing);
        assert!(out.detail.contains("staged image s1"), "{}", out.detail);
        assert_eq!(exec.staged().as_deref(), Some("s1"));
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        let out = exec.execute(&kexec(&url, &digest, Some("s1")));
        assert!(out.ok, "{out:?}");
        assert_eq!(out.after, After::KexecJump);
        assert!(
            out.detail.contains("staged image s1 used"),
            "{}",
            out.detail
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1, "nothing downloaded");

        // Fallback: the decision names a stage this agent does not hold.
        let exec = executor(dir.path());
        let out = exec.execute(&kexec(&url, &digest, Some("s2")));
        assert!(out.ok, "{out:?}");
        assert!(
            out.detail.contains("staged image s2 not held"),
            "{}",
            out.detail
        );
        // The image cache (same state dir) had the kernel: no download either.
        assert!(out.detail.contains("(cache)"), "{}", out.detail);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(exec.staged(), None);
    }
}
