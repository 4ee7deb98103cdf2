//! Power transitions: cold reboot through firmware, and warm reboot by kexec
//! (download kernel/initrd into memfds, `kexec_file_load`, falling back to
//! the kexec-tools binary, then `reboot(LINUX_REBOOT_CMD_KEXEC)`).

use crate::client::Client;
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Instant;

const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 4;

/// Syncs and reboots through firmware. In dry-run mode only logs.
pub fn reboot(dry_run: bool) -> Result<()> {
    nix::unistd::sync();
    if dry_run {
        tracing::warn!("dry-run: would reboot(RB_AUTOBOOT) now");
        return Ok(());
    }
    tracing::warn!("rebooting");
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
        .context("reboot(RB_AUTOBOOT)")?;
    Ok(())
}

/// Jumps into the loaded kexec image. In dry-run mode only logs.
pub fn kexec_exec(dry_run: bool) -> Result<()> {
    nix::unistd::sync();
    if dry_run {
        tracing::warn!("dry-run: would reboot(LINUX_REBOOT_CMD_KEXEC) now");
        return Ok(());
    }
    tracing::warn!("kexec: jumping to the new kernel");
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_KEXEC).context("reboot(KEXEC)")?;
    Ok(())
}

/// A file held in memory (memfd), so downloads never need a writable disk.
pub fn memfd(name: &str, data: &[u8]) -> Result<File> {
    let cname = CString::new(name).context("memfd name")?;
    // SAFETY: valid NUL-terminated name; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(data).context("write memfd")?;
    Ok(f)
}

/// What [`kexec_prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexecReport {
    /// Size of the downloaded kernel.
    pub kernel_bytes: usize,
    /// Size of the downloaded initrd (0 without one).
    pub initrd_bytes: usize,
    /// Milliseconds the downloads took.
    pub download_ms: u64,
    /// Milliseconds loading into the kernel took.
    pub load_ms: u64,
    /// How it was loaded (`kexec_file_load`, kexec-tools, or dry run).
    pub method: String,
}

impl std::fmt::Display for KexecReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel {} B, initrd {} B, download {} ms, load {} ms via {}",
            self.kernel_bytes, self.initrd_bytes, self.download_ms, self.load_ms, self.method
        )
    }
}

fn kexec_file_load(kernel: &File, initrd: Option<&File>, cmdline: &CString) -> std::io::Result<()> {
    let (ifd, flags) = match initrd {
        Some(f) => (f.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    let bytes = cmdline.as_bytes_with_nul();
    // SAFETY: fds are open, the cmdline pointer/length (incl. NUL) are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            ifd,
            bytes.len() as libc::c_ulong,
            bytes.as_ptr(),
            flags,
        )
    };
    if r != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn kexec_tools(kernel: &File, initrd: Option<&File>, cmdline: &str) -> Result<()> {
    let bin = [
        "/sbin/kexec",
        "/usr/sbin/kexec",
        "/bin/kexec",
        "/usr/bin/kexec",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .context("kexec_file_load refused and no kexec binary found")?;
    let pid = std::process::id();
    let mut c = std::process::Command::new(bin);
    c.arg("-l")
        .arg(format!("/proc/{pid}/fd/{}", kernel.as_raw_fd()))
        .arg(format!("--command-line={cmdline}"));
    if let Some(i) = initrd {
        c.arg(format!("--initrd=/proc/{pid}/fd/{}", i.as_raw_fd()));
    }
    let out = c.output().with_context(|| format!("run {bin}"))?;
    if !out.status.success() {
        bail!(
            "{bin} -l failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Downloads and loads the kexec image; does not execute it. In dry-run mode
/// the images are downloaded but not loaded.
pub fn kexec_prepare(
    kernel_url: &str,
    initrd_url: Option<&str>,
    cmdline: &str,
    dry_run: bool,
) -> Result<KexecReport> {
    let t0 = Instant::now();
    let kernel = Client::download(kernel_url, 120)?;
    let initrd = match initrd_url {
        Some(u) => Some(Client::download(u, 300)?),
        None => None,
    };
    let kfile = memfd("kexec-kernel", &kernel)?;
    let ifile = initrd
        .as_deref()
        .map(|d| memfd("kexec-initrd", d))
        .transpose()?;
    let download_ms = t0.elapsed().as_millis() as u64;
    let t1 = Instant::now();
    let ccmd = CString::new(cmdline).context("kexec cmdline has a NUL byte")?;
    let method = if dry_run {
        "dry-run (not loaded)".to_string()
    } else {
        match kexec_file_load(&kfile, ifile.as_ref(), &ccmd) {
            Ok(()) => "kexec_file_load".to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "kexec_file_load refused, trying kexec-tools");
                kexec_tools(&kfile, ifile.as_ref(), cmdline)
                    .with_context(|| format!("kexec_file_load: {e}"))?;
                format!("kexec-tools (kexec_file_load: {e})")
            }
        }
    };
    Ok(KexecReport {
        kernel_bytes: kernel.len(),
        initrd_bytes: initrd.as_ref().map_or(0, Vec::len),
        download_ms,
        load_ms: t1.elapsed().as_millis() as u64,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[test]
    fn memfd_holds_data() {
        let mut f = memfd("t", b"hello").unwrap();
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        // Readable by path as kexec-tools would open it.
        let p = format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd());
        assert_eq!(std::fs::read(p).unwrap(), b"hello");
    }
}
