//! Attaching the node's disk over iSCSI: parses the server's
//! `bootsrv.root=iscsi:IP:PORT:USER:SECRET:REVERSE-SECRET:TARGET`, logs in through the
//! kernel's `iscsi_tcp` with open-iscsi's `iscsistart` (one session, mutual CHAP: the
//! session lives in the kernel and survives `switch_root`), waits for the session's
//! SCSI disk to appear and mounts it. The login itself is iscsistart's (driving
//! iscsi_tcp over its netlink interface is what iscsid/iscsistart exist for); the
//! image carries it only when it needs it (images/build-lab-image.sh
//! `initrd-iscsi.img`). Logging in again after a dropped connection is iscsid's, which
//! the image's /init starts in the new root (it adopts this session). Secrets never
//! reach the log.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiRoot {
    /// Portal address.
    pub host: String,
    /// Portal port.
    pub port: u16,
    /// CHAP user (the node id).
    pub user: String,
    /// CHAP secret.
    pub secret: String,
    /// Mutual CHAP: the secret the target answers with (its user is the target name).
    pub reverse_secret: String,
    /// Target name.
    pub target: String,
}

impl fmt::Debug for IscsiRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IscsiRoot")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl IscsiRoot {
    /// Parses a `bootsrv.root` value `iscsi:IP:PORT:USER:SECRET:REVERSE-SECRET:TARGET`.
    pub fn parse(spec: &str) -> Result<IscsiRoot> {
        let rest = spec
            .strip_prefix("iscsi:")
            .context("an iSCSI root starts with iscsi:")?;
        let mut p = rest.splitn(6, ':');
        let mut next = |what: &str| {
            p.next()
                .filter(|s| !s.is_empty())
                .with_context(|| format!("iSCSI root has no {what}"))
                .map(str::to_string)
        };
        let host = next("host")?;
        let port = next("port")?;
        let port = port
            .parse()
            .with_context(|| format!("iSCSI root port {port:?}"))?;
        Ok(IscsiRoot {
            host,
            port,
            user: next("CHAP user")?,
            secret: next("CHAP secret")?,
            reverse_secret: next("reverse CHAP secret")?,
            target: next("target name")?,
        })
    }

    /// This node's initiator name (derived from its CHAP user, the node id).
    pub fn initiator(&self) -> String {
        let id: String = self
            .user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!("iqn.2026-12.boot-server.node:{id}")
    }

    /// iscsistart's arguments for one login (secrets included: give them only to
    /// the process, never to the log).
    pub fn iscsistart_args(&self) -> Vec<String> {
        [
            "-i",
            &self.initiator(),
            "-t",
            &self.target,
            "-g",
            "1",
            "-a",
            &self.host,
            "-p",
            &self.port.to_string(),
            "-u",
            &self.user,
            "-w",
            &self.secret,
            "-U",
            &self.target,
            "-W",
            &self.reverse_secret,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// The block devices of every logged-in session to `target` under `sys` (`/sys`):
/// `/sys/class/iscsi_session/session*/targetname` names the target, the session's
/// SCSI devices hang below its `device/target*/*/block/`.
pub fn session_disks(sys: &Path, target: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(sessions) = std::fs::read_dir(sys.join("class/iscsi_session")) else {
        return out;
    };
    for s in sessions.flatten() {
        let dir = s.path();
        let name = std::fs::read_to_string(dir.join("targetname")).unwrap_or_default();
        if name.trim() != target {
            continue;
        }
        for t in read_dir_names(&dir.join("device"), "target") {
            let tdir = dir.join("device").join(&t);
            for lun in read_dir_names(&tdir, "") {
                for b in read_dir_names(&tdir.join(&lun).join("block"), "") {
                    out.push(b);
                }
            }
        }
    }
    out.sort();
    out
}

fn read_dir_names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The iSCSI disk the agent attached.
#[derive(Debug)]
pub struct Attached {
    /// The block device (`/dev/sda`).
    pub device: PathBuf,
    /// The target name.
    pub target: String,
    /// Where it was mounted, with the file system type.
    pub mounted: Option<(PathBuf, String)>,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "iscsi {} attached as {}",
            self.target,
            self.device.display()
        )?;
        if let Some((m, t)) = &self.mounted {
            write!(f, ", mounted on {} ({t})", m.display())?;
        }
        Ok(())
    }
}

/// Logs in with `iscsistart` (retrying for up to `wait`: the NIC may not route yet,
/// the target may appear at the server's next refresh), waits for the session's
/// disk and mounts it on `mount` if given.
pub fn attach(root: &IscsiRoot, mount: Option<&Path>, wait: Duration) -> Result<Attached> {
    let deadline = Instant::now() + wait;
    let mut tries = 0;
    loop {
        tries += 1;
        let out = Command::new("iscsistart")
            .args(root.iscsistart_args())
            .output()
            .context("running iscsistart (is it in the image? images/build-lab-image.sh builds initrd-iscsi.img)")?;
        if out.status.success() {
            break;
        }
        // iscsistart prints no secrets: its own error text is safe to show.
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.trim().lines().last().unwrap_or("").to_string();
        if Instant::now() >= deadline {
            bail!(
                "iSCSI login to {} at {}:{} failed after {tries} tries: {why}",
                root.target,
                root.host,
                root.port
            );
        }
        tracing::info!(
            target_iqn = root.target,
            tries,
            error = why,
            "iSCSI login failed; retrying"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let sys = Path::new("/sys");
    let disk_deadline = Instant::now() + Duration::from_secs(20);
    let name = loop {
        if let Some(d) = session_disks(sys, &root.target).into_iter().next() {
            break d;
        }
        if Instant::now() >= disk_deadline {
            bail!("logged in to {} but no disk appeared", root.target);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let device = PathBuf::from(format!("/dev/{name}"));
    wait_until_openable(&name, &device, Duration::from_secs(10))?;
    let mounted = match mount {
        Some(m) => Some((m.to_path_buf(), crate::nbd::mount_auto(&device, m)?)),
        None => None,
    };
    Ok(Attached {
        device,
        target: root.target.clone(),
        mounted,
    })
}

/// Waits until the session's disk has a size and its node opens. sysfs names the disk,
/// and devtmpfs makes its node, a moment before the kernel has finished adding it: an
/// open (or a mount) in that window fails with ENXIO (seen once in CI: the root mount
/// failed with "ENXIO: No such device or address" right after the login).
fn wait_until_openable(name: &str, device: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let size = PathBuf::from(format!("/sys/block/{name}/size"));
    loop {
        let sized = std::fs::read_to_string(&size)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|s| s > 0);
        let opened = if sized {
            std::fs::File::open(device).map(drop)
        } else {
            Err(std::io::Error::from_raw_os_error(libc::ENXIO))
        };
        match opened {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!(
                        "{} did not become usable within {limit:?}",
                        device.display()
                    )
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str =
        "iscsi:10.77.0.1:3260:node-525400150003:0123456789abcdef0123456789abcdef:fedcba9876543210fedcba9876543210:iqn.2026-12.boot-server:ov-x";

    #[test]
    fn parses_the_root_spec_and_hides_secrets() {
        let r = IscsiRoot::parse(SPEC).unwrap();
        assert_eq!(r.host, "10.77.0.1");
        assert_eq!(r.port, 3260);
        assert_eq!(r.user, "node-525400150003");
        assert_eq!(r.target, "iqn.2026-12.boot-server:ov-x");
        assert_eq!(r.reverse_secret, "fedcba9876543210fedcba9876543210");
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("0123456789abcdef") && !dbg.contains("fedcba98"),
            "{dbg}"
        );
        assert_eq!(
            r.initiator(),
            "iqn.2026-12.boot-server.node:node-525400150003"
        );
        let a = r.iscsistart_args();
        let after = |k: &str| a[a.iter().position(|x| x == k).unwrap() + 1].clone();
        assert_eq!(after("-t"), r.target);
        assert_eq!(after("-w"), r.secret);
        assert_eq!(after("-U"), r.target);
        assert_eq!(after("-W"), r.reverse_secret);
        for bad in [
            "nbd:1:2:x",
            "iscsi:10.0.0.1:port:u:s:r:t",
            "iscsi:10.0.0.1:3260:u:s:r",
            "iscsi:10.0.0.1:3260::s:r:t",
        ] {
            assert!(IscsiRoot::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_sessions_disk_in_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let mk = |session: &str, target: &str, dev: &str| {
            let s = sys.path().join("class/iscsi_session").join(session);
            std::fs::create_dir_all(s.join("device/target2:0:0/2:0:0:0/block").join(dev)).unwrap();
            std::fs::write(s.join("targetname"), format!("{target}\n")).unwrap();
        };
        assert!(session_disks(sys.path(), "iqn.x:a").is_empty());
        mk("session1", "iqn.x:other", "sda");
        mk("session2", "iqn.x:a", "sdb");
        assert_eq!(
            session_disks(sys.path(), "iqn.x:a"),
            vec!["sdb".to_string()]
        );
    }
}
