//! Carries out one server [`CommandKind`] and says what must happen after
//! its result has been reported (nothing, a cold reboot or a kexec jump).
//! Slot configuration (`Configure` / `Unconfigure`) is [`crate::slot`]'s.

use crate::app::App;
use crate::bootptr::{self, EfiVars};
use crate::config::Config;
use crate::{clone, freeze, identity, nbd, power, slot};
use boot_proto::CommandKind;
use std::sync::Mutex;
use std::time::Duration;

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
}

impl Executor {
    /// An executor for the node configured by `cfg`; `boot_mac` is the interface it booted from, if known.
    pub fn new(cfg: Config, app: App, boot_mac: Option<String>) -> Executor {
        Executor {
            cfg,
            app,
            boot_mac,
            frozen: Mutex::new(Vec::new()),
            cloning: clone::Cloning::default(),
            blocked: Mutex::new(None),
        }
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
            } => Outcome::from(
                power::kexec_prepare(kernel_url, initrd_url.as_deref(), cmdline, self.cfg.dry_run)
                    .map(|r| r.to_string()),
                After::KexecJump,
            ),
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
