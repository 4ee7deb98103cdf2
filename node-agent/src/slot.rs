//! The environment slot this node holds for the current boot: installs and
//! removes what the server's `Configure` / `Unconfigure` deliver, under the
//! agent's runtime directory (`/run/node-agent`, a tmpfs that lives one boot):
//!
//! - `slot-hooks/<name>` (start, stop, health, busy, prepare-clone,
//!   clone-done, purge-sessions): the server-defined hooks (dir and
//!   files 0700; `#!/bin/sh` added when the text has no shebang); a hook the
//!   server leaves out is absent, so the local one runs (see [`crate::hooks`]);
//! - `slot.env`: `KEY='value'` lines (`SLOT_ENVIRONMENT`, `SLOT_INDEX`,
//!   `SLOT_HOSTNAME` and the slot's config map), 0600, for hooks to source;
//!   the same pairs are in every hook's environment;
//! - `slot.json`: the agent's own record, read back when the agent restarts
//!   in the same boot;
//! - the host name (`sethostname`, skipped in dry-run; and the hostname file,
//!   `/etc/hostname` unless configured, whose write failure is not fatal).
//!
//! Installing is idempotent (the command is delivered at least once): every
//! install rewrites the whole set, replacing files by rename.

use crate::config::Config;
use crate::hooks::{Hooks, NAMES};
use anyhow::{bail, Context, Result};
use boot_proto::SlotConfig;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// Variables the agent sets itself; the slot's config map cannot use them.
pub const RESERVED: [&str; 3] = ["SLOT_ENVIRONMENT", "SLOT_INDEX", "SLOT_HOSTNAME"];

/// Where the slot's files live, under the runtime directory.
#[derive(Debug, Clone)]
pub struct SlotFiles {
    /// The server's hook scripts (`slot-hooks/`).
    pub hooks_dir: PathBuf,
    /// `slot.env`: `KEY=value` lines for the hooks.
    pub env_file: PathBuf,
    /// `slot.json`: the installed configuration, re-read at agent start.
    pub record: PathBuf,
    runtime: PathBuf,
}

impl SlotFiles {
    /// The slot files under the agent's runtime directory.
    pub fn new(runtime: &Path) -> SlotFiles {
        SlotFiles {
            hooks_dir: runtime.join("slot-hooks"),
            env_file: runtime.join("slot.env"),
            record: runtime.join("slot.json"),
            runtime: runtime.to_path_buf(),
        }
    }
}

/// A name a POSIX shell accepts as a variable.
fn is_var_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A host name `sethostname` and resolvers accept: 1..=64 bytes of letters,
/// digits, `-` and `.`, labels not starting or ending with `-`.
fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Checks a slot before anything is written: a bad one is refused whole.
pub fn validate(slot: &SlotConfig) -> Result<()> {
    if !slot.hostname.is_empty() && !is_hostname(&slot.hostname) {
        bail!(
            "host name {:?} is not valid (letters, digits, '-' and '.', at most 64 bytes)",
            slot.hostname
        );
    }
    for (k, v) in &slot.config {
        if !is_var_name(k) {
            bail!("config key {k:?} is not a shell variable name ([A-Za-z_][A-Za-z0-9_]*)");
        }
        if RESERVED.contains(&k.as_str()) {
            bail!("config key {k} is reserved for the agent");
        }
        if v.contains('\0') {
            bail!("config value of {k} contains a NUL byte");
        }
    }
    if slot.environment.contains('\0') {
        bail!("environment name contains a NUL byte");
    }
    Ok(())
}

/// The `KEY=value` pairs of a slot, as hooks see them.
pub fn env_pairs(slot: &SlotConfig) -> Vec<(String, String)> {
    let mut v = vec![
        (RESERVED[0].to_string(), slot.environment.clone()),
        (RESERVED[1].to_string(), slot.slot.to_string()),
        (RESERVED[2].to_string(), slot.hostname.clone()),
    ];
    v.extend(slot.config.iter().map(|(k, v)| (k.clone(), v.clone())));
    v
}

/// `slot.env`'s text: one `KEY=value` line per pair, the value quoted for
/// a POSIX shell.
pub fn render_env(pairs: &[(String, String)]) -> Result<String> {
    let mut s = String::from("# written by node-agent from the server's slot configuration\n");
    for (k, v) in pairs {
        let q = shlex::try_quote(v).with_context(|| format!("quote the value of {k}"))?;
        s.push_str(&format!("{k}={q}\n"));
    }
    Ok(s)
}

/// A hook's file text: the server's script, with `#!/bin/sh` when it has no
/// interpreter line of its own.
pub fn hook_text(script: &str) -> String {
    if script.starts_with("#!") {
        script.to_string()
    } else {
        format!("#!/bin/sh\n{script}")
    }
}

fn server_hooks(slot: &SlotConfig) -> Vec<(&'static str, Option<&String>)> {
    NAMES.iter().map(|n| (*n, slot.hooks.get(n))).collect()
}

/// Writes `bytes` to `path` with `mode` through a temporary file and a rename.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

fn remove_if_present(path: &Path, dir: bool) -> Result<bool> {
    let r = if dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// Writes the slot's hooks, `slot.env` and record. Returns the names of
/// the server hooks written.
fn write_files(files: &SlotFiles, slot: &SlotConfig) -> Result<Vec<&'static str>> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&files.runtime)
        .with_context(|| format!("create {}", files.runtime.display()))?;
    // Build the new hook set beside the old one, then swap it in: a hook the
    // server no longer defines must not linger.
    let staging = files.hooks_dir.with_extension("new");
    remove_if_present(&staging, true)?;
    DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("create {}", staging.display()))?;
    let mut written = Vec::new();
    for (name, script) in server_hooks(slot) {
        if let Some(s) = script {
            write_file(&staging.join(name), hook_text(s).as_bytes(), 0o700)?;
            written.push(name);
        }
    }
    remove_if_present(&files.hooks_dir, true)?;
    fs::rename(&staging, &files.hooks_dir)
        .with_context(|| format!("rename to {}", files.hooks_dir.display()))?;
    let env = render_env(&env_pairs(slot))?;
    write_file(&files.env_file, env.as_bytes(), 0o600)?;
    let record = serde_json::to_vec_pretty(slot).context("encode the slot record")?;
    write_file(&files.record, &record, 0o600)?;
    Ok(written)
}

/// Sets the kernel's host name (unless `dry_run`) and writes `file` (when
/// given). Only the kernel call's failure is an error.
pub fn apply_hostname(name: &str, dry_run: bool, file: Option<&Path>) -> Result<String> {
    let mut said = Vec::new();
    if dry_run {
        said.push(format!("host name {name} (dry run: kernel name not set)"));
    } else {
        nix::unistd::sethostname(name).with_context(|| format!("sethostname {name}"))?;
        said.push(format!("host name {name}"));
    }
    if let Some(f) = file {
        // Written in place: /etc/hostname is often a bind mount (no rename).
        match fs::write(f, format!("{name}\n")).with_context(|| format!("write {}", f.display())) {
            Ok(()) => said.push(format!("{} written", f.display())),
            Err(e) => {
                warn!(file = %f.display(), error = %format!("{e:#}"), "cannot write the hostname file");
                said.push(format!("{} not written ({e:#})", f.display()));
            }
        }
    }
    Ok(said.join(", "))
}

/// Installs `slot` (see the module doc) and points `hooks` at its
/// environment. Returns what was installed.
pub fn install(cfg: &Config, hooks: &Hooks, slot: &SlotConfig) -> Result<String> {
    validate(slot)?;
    let files = SlotFiles::new(&cfg.state_dir);
    let written = write_files(&files, slot)?;
    hooks.set_env(env_pairs(slot));
    let local: Vec<&str> = NAMES
        .iter()
        .filter(|n| !written.contains(n) && hooks.find(n).is_some())
        .copied()
        .collect();
    let mut detail = format!(
        "slot {}/{} installed in {}: server hooks [{}], local hooks [{}], {} config keys",
        slot.environment,
        slot.slot,
        cfg.state_dir.display(),
        written.join(", "),
        local.join(", "),
        slot.config.len()
    );
    info!(
        environment = %slot.environment,
        slot = slot.slot,
        hostname = %slot.hostname,
        server_hooks = ?written,
        config_keys = ?slot.config.keys().collect::<Vec<_>>(),
        "slot configuration installed"
    );
    if slot.hostname.is_empty() {
        detail.push_str("; no host name given");
    } else {
        let h = apply_hostname(&slot.hostname, cfg.dry_run, cfg.hostname_file.as_deref())
            .with_context(|| format!("{detail}; but the host name"))?;
        detail.push_str(&format!("; {h}"));
    }
    Ok(detail)
}

/// Removes the slot's server hooks, `slot.env` and record; succeeds when
/// nothing was installed.
pub fn remove(cfg: &Config, hooks: &Hooks) -> Result<String> {
    let files = SlotFiles::new(&cfg.state_dir);
    let had = load_record(&files);
    let mut removed = Vec::new();
    for (p, dir) in [
        (&files.hooks_dir, true),
        (&files.hooks_dir.with_extension("new"), true),
        (&files.env_file, false),
        (&files.record, false),
    ] {
        if remove_if_present(p, dir)? {
            removed.push(
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    hooks.set_env(Vec::new());
    info!(removed = ?removed, "slot configuration removed");
    Ok(match (had, removed.is_empty()) {
        (_, true) => "no slot configuration was installed".into(),
        (Some(s), false) => format!(
            "slot {}/{} removed ({})",
            s.environment,
            s.slot,
            removed.join(", ")
        ),
        (None, false) => format!("slot files removed ({})", removed.join(", ")),
    })
}

fn load_record(files: &SlotFiles) -> Option<SlotConfig> {
    let bytes = match fs::read(&files.record) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %files.record.display(), error = %e, "cannot read the slot record");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(file = %files.record.display(), error = %e, "slot record is not valid; ignoring it");
            None
        }
    }
}

/// At agent start: the slot installed earlier in this boot, if any, whose
/// environment `hooks` then get.
pub fn restore(cfg: &Config, hooks: &Hooks) -> Option<SlotConfig> {
    let slot = load_record(&SlotFiles::new(&cfg.state_dir))?;
    hooks.set_env(env_pairs(&slot));
    info!(environment = %slot.environment, slot = slot.slot, hostname = %slot.hostname, "slot configuration of this boot restored");
    Some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::Source;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(dir: &Path) -> Config {
        let cmdline = dir.join("cmdline");
        fs::write(&cmdline, "bootsrv.server=http://127.0.0.1:1").unwrap();
        Config::from_sources(
            &[
                "--cmdline-file".into(),
                cmdline.display().to_string(),
                "--state-dir".into(),
                dir.join("run").display().to_string(),
                "--hooks-dir".into(),
                dir.join("local").display().to_string(),
                "--hostname-file".into(),
                dir.join("hostname").display().to_string(),
                "--dry-run".into(),
            ],
            &|_| None,
        )
        .unwrap()
    }

    fn slot() -> SlotConfig {
        SlotConfig {
            environment: "web".into(),
            slot: 2,
            hostname: "web-2".into(),
            hooks: boot_proto::Hooks {
                start: Some("exec sleep 60".into()),
                health: Some("#!/bin/sh -e\necho \"role=$ROLE\"\n".into()),
                ..Default::default()
            },
            config: [
                ("ROLE".to_string(), "front end".to_string()),
                ("QUOTE".to_string(), "it's $HOME `x` \"y\"\nz".to_string()),
            ]
            .into_iter()
            .collect(),
            reidentify: false,
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn validation_refuses_bad_input() {
        assert!(validate(&slot()).is_ok());
        let mut s = slot();
        s.hostname = "bad host".into();
        assert!(validate(&s).unwrap_err().to_string().contains("host name"));
        let mut s = slot();
        s.hostname = "-x".into();
        assert!(validate(&s).is_err());
        s.hostname = "a".repeat(65);
        assert!(validate(&s).is_err());
        s.hostname = "node-1.lab".into();
        assert!(validate(&s).is_ok());
        for bad in ["1X", "A-B", "", "SLOT_INDEX", "a b"] {
            let mut s = slot();
            s.config.insert(bad.into(), "v".into());
            assert!(validate(&s).is_err(), "{bad:?} accepted");
        }
        let mut s = slot();
        s.config.insert("K".into(), "a\0b".into());
        assert!(validate(&s).is_err());
    }

    #[test]
    fn shebang_is_added_only_when_missing() {
        assert_eq!(hook_text("exit 0"), "#!/bin/sh\nexit 0");
        assert_eq!(hook_text("#!/bin/bash\nexit 0"), "#!/bin/bash\nexit 0");
    }

    /// slot.env read back by a real shell gives the exact values.
    #[test]
    fn slot_env_is_safe_for_sh() {
        let d = tempfile::tempdir().unwrap();
        let s = slot();
        let env = d.path().join("slot.env");
        fs::write(&env, render_env(&env_pairs(&s)).unwrap()).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#". "$1" && printf '%s|%s|%s|%s|%s' "$SLOT_ENVIRONMENT" "$SLOT_INDEX" "$SLOT_HOSTNAME" "$ROLE" "$QUOTE""#)
            .arg("sh")
            .arg(&env)
            .env_remove("QUOTE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("web|2|web-2|front end|{}", s.config["QUOTE"])
        );
    }

    #[test]
    fn install_is_idempotent_restorable_and_removable() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path());
        let local = d.path().join("local");
        fs::create_dir(&local).unwrap();
        for n in ["start", "stop"] {
            fs::write(local.join(n), "#!/bin/sh\nexit 0\n").unwrap();
            fs::set_permissions(local.join(n), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let files = SlotFiles::new(&c.state_dir);
        let h = Hooks::new(&local, &files.hooks_dir);

        // Nothing installed yet: unconfigure still succeeds.
        assert_eq!(
            remove(&c, &h).unwrap(),
            "no slot configuration was installed"
        );

        for round in 0..2 {
            let detail = install(&c, &h, &slot()).unwrap();
            assert!(detail.contains("slot web/2"), "{detail}");
            assert!(detail.contains("server hooks [start, health]"), "{detail}");
            assert!(detail.contains("local hooks [stop]"), "{detail}");
            assert!(detail.contains("dry run"), "round {round}: {detail}");
            assert_eq!(mode(&c.state_dir), 0o700);
            assert_eq!(mode(&files.hooks_dir), 0o700);
            assert_eq!(mode(&files.hooks_dir.join("start")), 0o700);
            assert_eq!(mode(&files.env_file), 0o600);
            assert_eq!(
                fs::read_to_string(files.hooks_dir.join("start")).unwrap(),
                "#!/bin/sh\nexec sleep 60"
            );
            assert!(fs::read_to_string(files.hooks_dir.join("health"))
                .unwrap()
                .starts_with("#!/bin/sh -e\n"));
            assert_eq!(h.find("start").unwrap().1, Source::Server);
            assert_eq!(h.find("stop").unwrap().1, Source::Local);
            assert_eq!(
                fs::read_to_string(d.path().join("hostname")).unwrap(),
                "web-2\n"
            );
            assert!(h.env().contains(&("ROLE".into(), "front end".into())));
        }

        // A reconfiguration without the start hook drops the old one.
        let mut s2 = slot();
        s2.hooks.start = None;
        install(&c, &h, &s2).unwrap();
        assert_eq!(h.find("start").unwrap().1, Source::Local);
        assert_eq!(h.find("health").unwrap().1, Source::Server);

        // A new agent process of the same boot gets the environment back.
        let h2 = Hooks::new(&local, &files.hooks_dir);
        assert_eq!(restore(&c, &h2), Some(s2.clone()));
        assert_eq!(h2.env(), env_pairs(&s2));

        // A refused slot changes nothing.
        let mut bad = slot();
        bad.config.insert("1BAD".into(), "x".into());
        assert!(install(&c, &h, &bad).is_err());
        assert_eq!(restore(&c, &h2), Some(s2));

        let detail = remove(&c, &h).unwrap();
        assert!(detail.contains("slot web/2 removed"), "{detail}");
        assert!(!files.hooks_dir.exists() && !files.env_file.exists());
        assert_eq!(h.find("start").unwrap().1, Source::Local);
        assert_eq!(h.find("health"), None);
        assert!(h.env().is_empty());
        assert_eq!(restore(&c, &h2), None);
    }

    /// The kernel host name, set for real inside a UTS namespace of this
    /// thread only (the machine's name is untouched).
    #[test]
    fn sets_the_kernel_host_name() {
        use test_support::Need;
        if !test_support::require("sets_the_kernel_host_name", &[Need::Root]) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("hostname");
        let got = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).unwrap();
            let detail = apply_hostname("slot-test-7", false, Some(&file)).unwrap();
            (
                detail,
                nix::unistd::gethostname().unwrap(),
                fs::read_to_string(&file).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got.1, "slot-test-7");
        assert_eq!(got.2, "slot-test-7\n");
        assert!(got.0.contains("host name slot-test-7"), "{}", got.0);
        assert_ne!(nix::unistd::gethostname().unwrap(), "slot-test-7");
        // Unwritable hostname file: not fatal.
        let detail = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).unwrap();
            apply_hostname(
                "slot-test-8",
                false,
                Some(Path::new("/nonexistent/dir/hostname")),
            )
        })
        .join()
        .unwrap()
        .unwrap();
        assert!(detail.contains("not written"), "{detail}");
    }
}
