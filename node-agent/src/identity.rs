//! A clone's first boot: the node takes its own identity before its
//! application starts (the server's `Configure` with `reidentify`). Under
//! the identity root (`/` unless `--identity-root`; nothing in dry-run
//! unless given): a new `/etc/machine-id` (and `/var/lib/dbus/machine-id`
//! when it is a file of its own), the SSH host keys removed and, where
//! `ssh-keygen` exists, regenerated; then the environment's
//! `purge-sessions` hook. Host name and address come with the slot itself
//! (`Configure`, the DHCP reservation).

use crate::hooks::{run_captured, Hooks};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Longest run of the `purge-sessions` hook.
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(120);

/// 32 lower-case hex digits from the kernel's random source.
fn new_machine_id() -> Result<String> {
    let mut b = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom")?;
    // A v4 UUID's version and variant bits, as systemd writes it.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes a new machine id (the file is created when missing: the clone
/// must not share its template's, whatever the image had).
fn machine_id(root: &Path) -> Result<String> {
    let id = new_machine_id()?;
    let etc = root.join("etc");
    fs::create_dir_all(&etc).with_context(|| format!("create {}", etc.display()))?;
    let f = etc.join("machine-id");
    fs::write(&f, format!("{id}\n")).with_context(|| format!("write {}", f.display()))?;
    let mut said = format!("machine-id {}…", &id[..8]);
    let dbus = root.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus).is_ok_and(|m| m.file_type().is_file()) {
        fs::write(&dbus, format!("{id}\n")).with_context(|| format!("write {}", dbus.display()))?;
        said.push_str(" (dbus too)");
    }
    Ok(said)
}

/// Removes `ssh_host_*` keys; regenerates them with `ssh-keygen -A` when
/// there were some and the tool exists.
fn ssh_host_keys(root: &Path) -> Result<String> {
    let dir = root.join("etc/ssh");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok("no /etc/ssh".into());
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub")) {
            fs::remove_file(e.path()).with_context(|| format!("remove {}", e.path().display()))?;
            removed += 1;
        }
    }
    if removed == 0 {
        return Ok("no SSH host keys".into());
    }
    let out = std::process::Command::new("ssh-keygen")
        .arg("-A")
        .arg("-f")
        .arg(root)
        .stdin(std::process::Stdio::null())
        .output();
    Ok(match out {
        Ok(o) if o.status.success() => format!("{removed} SSH host key files regenerated"),
        Ok(o) => format!(
            "{removed} SSH host key files removed; ssh-keygen -A failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(_) => format!(
            "{removed} SSH host key files removed (no ssh-keygen: the SSH server makes new ones)"
        ),
    })
}

/// Gives this node its own identity and runs `purge-sessions`; `root` is
/// the identity root (None: files untouched, the hook still runs).
pub fn reidentify(root: Option<&Path>, hooks: &Hooks) -> Result<String> {
    let mut said = Vec::new();
    match root {
        Some(r) => {
            said.push(machine_id(r)?);
            said.push(ssh_host_keys(r)?);
        }
        None => said.push("identity files untouched (dry run)".into()),
    }
    match hooks.find("purge-sessions") {
        None => said.push("no purge-sessions hook".into()),
        Some((path, source)) => {
            let _g = hooks.lock("purge-sessions");
            let run = run_captured(hooks, &path, PURGE_TIMEOUT, 2048)?;
            let out = String::from_utf8_lossy(&run.stdout).trim().to_string();
            match run.status {
                Some(s) if s.success() => said.push(format!("purge-sessions ({source}) ok")),
                Some(s) => bail!("{}; purge-sessions ({source}) {s}: {out}", said.join(", ")),
                None => bail!("{}; purge-sessions ({source}) timed out", said.join(", ")),
            }
        }
    }
    tracing::info!(said = %said.join(", "), "clone identity changed");
    Ok(said.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_identity_under_a_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("etc/ssh")).unwrap();
        fs::create_dir_all(root.join("var/lib/dbus")).unwrap();
        let old = "0123456789abcdef0123456789abcdef\n";
        fs::write(root.join("etc/machine-id"), old).unwrap();
        fs::write(root.join("var/lib/dbus/machine-id"), old).unwrap();
        fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        fs::write(root.join("etc/ssh/ssh_host_ed25519_key.pub"), "pub").unwrap();
        fs::write(root.join("etc/ssh/sshd_config"), "keep").unwrap();
        let hooks_dir = d.path().join("hooks");
        fs::create_dir_all(&hooks_dir).unwrap();
        let purge = hooks_dir.join("purge-sessions");
        let log = d.path().join("purged");
        fs::write(
            &purge,
            format!("#!/bin/sh\necho \"$SLOT_INDEX\" > {}\n", log.display()),
        )
        .unwrap();
        fs::set_permissions(&purge, fs::Permissions::from_mode(0o755)).unwrap();
        let h = Hooks::new(&hooks_dir, d.path().join("none"));
        h.set_env(vec![("SLOT_INDEX".into(), "3".into())]);
        let said = reidentify(Some(&root), &h).unwrap();
        let id = fs::read_to_string(root.join("etc/machine-id")).unwrap();
        assert_ne!(id, old);
        assert_eq!(id.trim().len(), 32);
        assert!(id.trim().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            fs::read_to_string(root.join("var/lib/dbus/machine-id")).unwrap(),
            id
        );
        // The old private key is gone (regenerated or not, never the template's).
        let key = fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key")).unwrap_or_default();
        assert_ne!(key, "secret");
        assert_eq!(
            fs::read_to_string(root.join("etc/ssh/sshd_config")).unwrap(),
            "keep"
        );
        assert_eq!(fs::read_to_string(&log).unwrap(), "3\n");
        assert!(said.contains("purge-sessions (local) ok"), "{said}");

        // A failing purge-sessions is an error that says so.
        fs::write(&purge, "#!/bin/sh\necho 'db locked'\nexit 4\n").unwrap();
        let e = reidentify(Some(&root), &h).unwrap_err().to_string();
        assert!(
            e.contains("purge-sessions") && e.contains("db locked"),
            "{e}"
        );
    }
}
