//! Quiesce/thaw for live cloning: `sync`, then FIFREEZE on every writable,
//! disk-backed file system in /proc/mounts (root last), FITHAW in reverse.

use anyhow::{Context, Result};
use std::os::fd::AsRawFd;

const FIFREEZE: libc::c_ulong = 0xC004_5877; // _IOWR('X', 119, int)
const FITHAW: libc::c_ulong = 0xC004_5878; // _IOWR('X', 120, int)

/// File systems that are never frozen (virtual, memory-backed or read-only by nature).
const SKIP: &[&str] = &[
    "tmpfs",
    "ramfs",
    "rootfs",
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "autofs",
    "fusectl",
    "configfs",
    "hugetlbfs",
    "binfmt_misc",
    "efivarfs",
    "squashfs",
    "erofs",
    "iso9660",
    "overlay",
    "nsfs",
    "selinuxfs",
    "rpc_pipefs",
    "nfsd",
    "fuse",
    "9p",
    "virtiofs",
];

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Device or source.
    pub source: String,
    /// Mount point.
    pub target: String,
    /// File system type.
    pub fstype: String,
    /// Whether it is mounted read-write.
    pub writable: bool,
}

/// Undoes /proc/mounts octal escapes (`\040` for space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mounts` text (octal escapes decoded).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| MountEntry {
                source: unescape(f[0]),
                target: unescape(f[1]),
                fstype: f[2].to_string(),
                writable: f[3].split(',').any(|o| o == "rw"),
            })
        })
        .collect()
}

/// Mount points to freeze, in freeze order: one per source device, the
/// root file system last.
pub fn candidates(mounts: &[MountEntry]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut v: Vec<String> = Vec::new();
    // Last mount on a point wins; iterate in reverse to keep the visible one.
    for m in mounts.iter().rev() {
        if !m.writable || SKIP.contains(&m.fstype.as_str()) || !m.source.starts_with('/') {
            continue;
        }
        if seen.insert(m.source.clone()) && !v.contains(&m.target) {
            v.push(m.target.clone());
        }
    }
    // Deepest paths first, "/" last: freezing a parent first could block
    // access to the children's mount points.
    v.sort_by_key(|t| std::cmp::Reverse(if t == "/" { 0 } else { t.len() }));
    v
}

fn fs_ioctl(path: &str, req: libc::c_ulong) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: FIFREEZE/FITHAW take an (ignored) int argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), req as _, 0) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Outcome of a quiesce or thaw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FreezeReport {
    /// Mount points frozen (or thawed).
    pub done: Vec<String>,
    /// Mount points whose file system cannot be frozen.
    pub unsupported: Vec<String>,
    /// Mount points where the ioctl failed, with the error.
    pub failed: Vec<String>,
}

impl std::fmt::Display for FreezeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "done [{}] unsupported [{}] failed [{}]",
            self.done.join(" "),
            self.unsupported.join(" "),
            self.failed.join(" ")
        )
    }
}

/// Freezes the given mount points in order.
pub fn freeze_paths(paths: &[String]) -> FreezeReport {
    let mut r = FreezeReport::default();
    for t in paths {
        match fs_ioctl(t, FIFREEZE) {
            Ok(()) => r.done.push(t.clone()),
            // EBUSY: already frozen (e.g. a retried Quiesce); count it as frozen.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => r.done.push(t.clone()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
                ) =>
            {
                r.unsupported.push(t.clone())
            }
            Err(e) => r.failed.push(format!("{t}: {e}")),
        }
    }
    r
}

/// Thaws the given mount points in reverse order.
pub fn thaw_paths(paths: &[String]) -> FreezeReport {
    let mut r = FreezeReport::default();
    for t in paths.iter().rev() {
        match fs_ioctl(t, FITHAW) {
            Ok(()) => r.done.push(t.clone()),
            // EINVAL: was not frozen.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY)
                ) =>
            {
                r.unsupported.push(t.clone())
            }
            Err(e) => r.failed.push(format!("{t}: {e}")),
        }
    }
    r
}

/// Syncs and freezes every candidate of /proc/mounts. The report's `done`
/// list is what [`thaw`] must undo.
pub fn quiesce() -> Result<FreezeReport> {
    nix::unistd::sync();
    let text = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(freeze_paths(&candidates(&parse_mounts(&text))))
}

/// Thaws `frozen` in reverse order; with an empty list, thaws every candidate
/// (after an agent restart the list is lost).
pub fn thaw(frozen: &[String]) -> Result<FreezeReport> {
    if !frozen.is_empty() {
        return Ok(thaw_paths(frozen));
    }
    let text = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    Ok(thaw_paths(&candidates(&parse_mounts(&text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
rootfs / rootfs rw 0 0
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
devtmpfs /dev devtmpfs rw,nosuid,size=1000k 0 0
/dev/vda1 / ext4 rw,relatime 0 0
/dev/nbd0 /srv/data xfs rw,relatime 0 0
/dev/nbd0 /srv/bind xfs rw,relatime 0 0
/dev/vdb /mnt/my\\040disk ext4 rw 0 0
/dev/sr0 /media iso9660 ro 0 0
/dev/vdc /ro ext4 ro,relatime 0 0
tmpfs /run tmpfs rw,nosuid 0 0
";

    #[test]
    fn parses_and_picks_candidates() {
        let m = parse_mounts(SAMPLE);
        assert_eq!(m.len(), 11);
        assert_eq!(m[7].target, "/mnt/my disk");
        assert!(!m[9].writable);
        let c = candidates(&m);
        assert_eq!(c, vec!["/mnt/my disk", "/srv/bind", "/"]);
    }

    #[test]
    fn thaw_of_unfrozen_is_harmless() {
        // /proc is not freezable: reported, never an error.
        let r = thaw(&["/proc".to_string()]).unwrap();
        assert!(r.done.is_empty());
    }

    /// Real FIFREEZE/FITHAW on a loop-mounted ext4 (root only), also
    /// exercising `nbd::mount_auto` on a real block device.
    #[test]
    fn freeze_and_thaw_a_real_ext4() {
        use std::process::Command;
        use test_support::Need;
        const T: &str = "freeze_and_thaw_a_real_ext4";
        if !test_support::require(
            T,
            &[Need::Root, Need::Tool("mkfs.ext4"), Need::Tool("losetup")],
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let ok = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        assert!(
            ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)),
            "mkfs.ext4 failed"
        );
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => {
                test_support::skip(T, "no free loop device (losetup -f failed)");
                return;
            }
        };
        struct Guard(String, std::path::PathBuf);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = fs_ioctl(&self.1.display().to_string(), FITHAW);
                let _ = nix::mount::umount(&self.1);
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let mnt = dir.path().join("mnt");
        let _g = Guard(dev.clone(), mnt.clone());
        let fstype = crate::nbd::mount_auto(std::path::Path::new(&dev), &mnt).unwrap();
        assert_eq!(fstype, "ext4");
        std::fs::write(mnt.join("data"), b"x").unwrap();
        let m = mnt.display().to_string();
        let r = freeze_paths(std::slice::from_ref(&m));
        assert_eq!(r.done, vec![m.clone()], "{r}");
        // A second freeze is EBUSY, still reported as frozen.
        assert_eq!(freeze_paths(std::slice::from_ref(&m)).done, vec![m.clone()]);
        let r = thaw_paths(std::slice::from_ref(&m));
        assert_eq!(r.done, vec![m.clone()], "{r}");
        // Not frozen any more: EINVAL, reported as unsupported/no-op.
        assert_eq!(
            thaw_paths(std::slice::from_ref(&m)).unsupported,
            vec![m.clone()]
        );
        std::fs::write(mnt.join("data2"), b"y").unwrap();
        // Appears among the quiesce candidates of the real /proc/mounts.
        let text = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(candidates(&parse_mounts(&text)).contains(&m));
    }
}
