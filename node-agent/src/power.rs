//! Power transitions: cold reboot through firmware, and warm reboot by kexec
//! (download kernel/initrd into memfds, `kexec_file_load`, falling back to
//! the kexec-tools binary, then `reboot(LINUX_REBOOT_CMD_KEXEC)`).

use crate::client::Client;
use crate::imagecache::{ImageCache, Source};
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
    /// Size of the kernel.
    pub kernel_bytes: usize,
    /// Size of the initrd (0 without one).
    pub initrd_bytes: usize,
    /// Where the kernel came from (cache or download).
    pub kernel_from: Source,
    /// Where the initrd came from, if there is one.
    pub initrd_from: Option<Source>,
    /// Milliseconds getting the files took (downloads or cache reads).
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
            "kernel {} B ({}), initrd {} B ({}), download {} ms, load {} ms via {}",
            self.kernel_bytes,
            self.kernel_from.as_str(),
            self.initrd_bytes,
            self.initrd_from.map_or("none", Source::as_str),
            self.download_ms,
            self.load_ms,
            self.method
        )
    }
}

/// One kexec image: where its files are, their digests and its command line.
#[derive(Debug, Clone, Copy)]
pub struct KexecImage<'a> {
    /// URL of the kernel.
    pub kernel_url: &'a str,
    /// URL of the initrd, if any.
    pub initrd_url: Option<&'a str>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// SHA-256 of the kernel, when the server named it.
    pub kernel_sha256: Option<&'a str>,
    /// SHA-256 of the initrd, when the server named it.
    pub initrd_sha256: Option<&'a str>,
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
    let img = KexecImage {
        kernel_url,
        initrd_url,
        cmdline,
        kernel_sha256: None,
        initrd_sha256: None,
    };
    kexec_prepare_cached(&img, None, dry_run)
}

/// Gets the image's files (from `cache` when it holds their digests, else
/// downloaded, verified and cached) and loads them; does not execute. In
/// dry-run mode the files are fetched but not loaded.
pub fn kexec_prepare_cached(
    img: &KexecImage,
    cache: Option<&ImageCache>,
    dry_run: bool,
) -> Result<KexecReport> {
    let t0 = Instant::now();
    let fetch = |url: &str, digest: Option<&str>, timeout: u64| -> Result<(Vec<u8>, Source)> {
        let dl = move |u: &str| Client::download(u, timeout);
        match cache {
            Some(c) => c.fetch(url, digest, &dl),
            None => Ok((dl(url)?, Source::Download)),
        }
    };
    let (kernel, kernel_from) = fetch(img.kernel_url, img.kernel_sha256, 120)?;
    let (initrd, initrd_from) = match img.initrd_url {
        Some(u) => {
            let (d, s) = fetch(u, img.initrd_sha256, 300)?;
            (Some(d), Some(s))
        }
        None => (None, None),
    };
    let kfile = memfd("kexec-kernel", &kernel)?;
    let ifile = initrd
        .as_deref()
        .map(|d| memfd("kexec-initrd", d))
        .transpose()?;
    let download_ms = t0.elapsed().as_millis() as u64;
    let t1 = Instant::now();
    let ccmd = CString::new(img.cmdline).context("kexec cmdline has a NUL byte")?;
    let method = if dry_run {
        "dry-run (not loaded)".to_string()
    } else {
        match kexec_file_load(&kfile, ifile.as_ref(), &ccmd) {
            Ok(()) => "kexec_file_load".to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "kexec_file_load refused, trying kexec-tools");
                kexec_tools(&kfile, ifile.as_ref(), img.cmdline)
                    .with_context(|| format!("kexec_file_load: {e}"))?;
                format!("kexec-tools (kexec_file_load: {e})")
            }
        }
    };
    Ok(KexecReport {
        kernel_bytes: kernel.len(),
        initrd_bytes: initrd.as_ref().map_or(0, Vec::len),
        kernel_from,
        initrd_from,
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
