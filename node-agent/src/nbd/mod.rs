//! Virtual disk attach: NBD handshake in userspace, then the socket is handed
//! to the kernel nbd driver over generic netlink (falling back to the legacy
//! ioctl interface), then optionally mounted.

pub mod handshake;
pub mod netlink;

use anyhow::{bail, Context, Result};
use std::fs;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
const NBD_SET_TIMEOUT: libc::c_ulong = 0xab09;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

/// Result of [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// NBD device index (`/dev/nbdN`).
    pub index: u32,
    /// Device path, e.g. `/dev/nbd0`.
    pub device: PathBuf,
    /// Export size in bytes.
    pub size: u64,
    /// How the device was configured: `netlink` or `ioctl`.
    pub via: &'static str,
    /// Mount point and file system type, when mounted.
    pub mounted: Option<(String, String)>,
    /// Milliseconds the NBD handshake took.
    pub handshake_ms: u64,
    /// Milliseconds the kernel attach took.
    pub attach_ms: u64,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} size={} via {} (handshake {} ms, attach {} ms)",
            self.device.display(),
            self.size,
            self.via,
            self.handshake_ms,
            self.attach_ms
        )?;
        if let Some((m, t)) = &self.mounted {
            write!(f, "; mounted {t} at {m}")?;
        }
        Ok(())
    }
}

/// Connects and negotiates with the NBD server (transmission phase on return).
pub fn connect(host: &str, port: u16, export: &str) -> Result<handshake::Negotiated> {
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}:{port}"))?
        .next()
        .with_context(|| format!("no address for {host}:{port}"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    handshake::handshake(s, export)
        .with_context(|| format!("NBD handshake with {addr} export {export:?}"))
}

/// [`connect`], retried with backoff until it works or `wait` has passed.
pub fn connect_with_wait(
    host: &str,
    port: u16,
    export: &str,
    wait: Duration,
) -> Result<handshake::Negotiated> {
    let t0 = Instant::now();
    let mut backoff = crate::client::Backoff::default();
    loop {
        match connect(host, port, export) {
            Ok(n) => return Ok(n),
            Err(e) if t0.elapsed() < wait => {
                let d = backoff.next_delay();
                tracing::warn!(error = %format!("{e:#}"), retry_ms = d.as_millis() as u64, "nbd connect failed; retrying");
                std::thread::sleep(d);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Block size for the kernel: 512 unless the server's minimum is larger
/// (power of two, at most 4096 = PAGE_SIZE).
pub fn kernel_block_size(server: Option<(u32, u32, u32)>) -> u64 {
    let min = server.map_or(512, |(m, _, _)| m.max(512));
    if min.is_power_of_two() && min <= 4096 {
        u64::from(min)
    } else {
        512
    }
}

/// How [`attach_with`] sets up the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    /// How long the kernel holds requests on a dead link for a RECONFIGURE
    /// before failing them with EIO.
    pub dead_conn_timeout_secs: u64,
    /// Start a reconnector thread in this process (netlink attach only).
    pub reconnect_thread: bool,
    /// Keep retrying the connection and handshake (with backoff) for this
    /// long: early boot may try before the network or the server is ready.
    pub connect_wait: Duration,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            dead_conn_timeout_secs: 30,
            reconnect_thread: true,
            connect_wait: Duration::ZERO,
        }
    }
}

/// Full attach with the default options: handshake, kernel hand-off, a
/// reconnector thread, optional mount.
pub fn attach(host: &str, port: u16, export: &str, mount: Option<&str>) -> Result<Attached> {
    attach_with(host, port, export, mount, AttachOptions::default())
}

/// Full attach: handshake, kernel hand-off, optional reconnector, optional mount.
pub fn attach_with(
    host: &str,
    port: u16,
    export: &str,
    mount: Option<&str>,
    opts: AttachOptions,
) -> Result<Attached> {
    let t0 = Instant::now();
    let neg = connect_with_wait(host, port, export, opts.connect_wait)?;
    let handshake_ms = t0.elapsed().as_millis() as u64;
    let t1 = Instant::now();
    let bs = kernel_block_size(neg.block_size);
    let params = netlink::ConnectParams {
        index: None,
        size_bytes: neg.size,
        block_size: bs,
        server_flags: u64::from(neg.flags),
        timeout_secs: 30,
        // Requests wait this long for the reconnector's RECONFIGURE.
        dead_conn_timeout_secs: opts.dead_conn_timeout_secs,
        client_flags: 0,
    };
    let (index, via) = match netlink::connect(&params, neg.stream.as_raw_fd()) {
        Ok(i) => (i, "netlink"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "nbd netlink connect failed, trying ioctls");
            (
                ioctl_attach(neg.stream, neg.size, bs, neg.flags)
                    .context("nbd ioctl fallback (netlink failed too)")?,
                "ioctl",
            )
        }
    };
    let device = ensure_dev_node(index)?;
    wait_for_size(index, Duration::from_secs(5))?;
    if via == "netlink" && opts.reconnect_thread {
        let r = Reconnector::prepare(index, host.to_string(), port, export.to_string())
            .and_then(Reconnector::spawn);
        if let Err(e) = r {
            tracing::warn!(error = %format!("{e:#}"), "no automatic NBD reconnect");
        }
    }
    let attach_ms = t1.elapsed().as_millis() as u64;
    let mounted = match mount {
        Some(m) => {
            let fstype = mount_auto(&device, Path::new(m))?;
            Some((m.to_string(), fstype))
        }
        None => None,
    };
    Ok(Attached {
        index,
        device,
        size: neg.size,
        via,
        mounted,
        handshake_ms,
        attach_ms,
    })
}

/// Whether device `index` is still configured, read through a file handle
/// opened once: it keeps working after the process's view of `/sys` goes away
/// (an initramfs process that outlives `switch_root`).
pub struct DeviceWatch {
    index: u32,
    size: fs::File,
}

impl DeviceWatch {
    /// Opens the size attribute of `/dev/nbd{index}`.
    pub fn open(index: u32) -> Result<DeviceWatch> {
        let p = format!("/sys/block/nbd{index}/size");
        let size = fs::File::open(&p).with_context(|| format!("open {p}"))?;
        Ok(DeviceWatch { index, size })
    }

    /// Size in 512-byte sectors now (0: disconnected).
    pub fn sectors(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 32];
        match self.size.read_at(&mut buf, 0) {
            Ok(n) => std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Whether the device has a size, i.e. is connected.
    pub fn connected(&self) -> bool {
        self.sectors() > 0
    }

    /// The device index.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Keeps netlink-attached device `index` connected: on the kernel's
/// LINK_DEAD notification it redoes the handshake (with backoff, for as long
/// as the device exists) and hands the new socket over with
/// NBD_CMD_RECONFIGURE. Everything it needs from the file system (the event
/// socket, the device's size attribute) is opened by [`Reconnector::prepare`],
/// so [`Reconnector::run`] keeps working in a process that outlives
/// `switch_root` (the initramfs's keeper of a root disk).
pub struct Reconnector {
    genl: netlink::Genl,
    watch: DeviceWatch,
    host: String,
    port: u16,
    export: String,
}

impl Reconnector {
    /// Opens everything the reconnector needs for device `index` attached to `export` at `host:port`.
    pub fn prepare(index: u32, host: String, port: u16, export: String) -> Result<Reconnector> {
        let mut genl = netlink::Genl::open()?;
        let (_, groups) = genl.family("nbd")?;
        let grp = groups
            .iter()
            .find(|(n, _)| n == netlink::NBD_MCAST_GROUP)
            .map(|(_, i)| *i)
            .context("nbd family has no nbd_mc_group")?;
        genl.join_group(grp)?;
        Ok(Reconnector {
            genl,
            watch: DeviceWatch::open(index)?,
            host,
            port,
            export,
        })
    }

    /// Runs [`Reconnector::run`] on its own thread.
    pub fn spawn(self) -> Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("nbd{}-reconnect", self.watch.index()))
            .spawn(move || self.run())
            .context("spawn nbd reconnector")
    }

    /// Returns when the device is disconnected (size 0).
    pub fn run(self) {
        let index = self.watch.index();
        loop {
            if !self.watch.connected() {
                tracing::info!(index, "nbd device disconnected; reconnector exits");
                return;
            }
            let events = match self.genl.recv_events(Duration::from_secs(1)) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "nbd event socket failed");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let dead = events.iter().any(|(cmd, a)| {
                *cmd == netlink::NBD_CMD_LINK_DEAD
                    && netlink::attrs(a).iter().any(|(t, p)| {
                        *t == netlink::NBD_ATTR_INDEX
                            && p.len() >= 4
                            && u32::from_ne_bytes([p[0], p[1], p[2], p[3]]) == index
                    })
            });
            if dead {
                self.reconnect();
            }
        }
    }

    fn reconnect(&self) {
        let index = self.watch.index();
        tracing::warn!(index, "nbd link dead; reconnecting");
        let mut backoff = crate::client::Backoff::default();
        let t0 = Instant::now();
        loop {
            let r = connect(&self.host, self.port, &self.export)
                .and_then(|n| netlink::reconfigure(index, n.stream.as_raw_fd()));
            match r {
                Ok(()) => {
                    tracing::info!(
                        index,
                        ms = t0.elapsed().as_millis() as u64,
                        "nbd reconnected"
                    );
                    return;
                }
                Err(e) => {
                    if !self.watch.connected() {
                        return;
                    }
                    let d = backoff.next_delay();
                    tracing::warn!(index, error = %format!("{e:#}"), retry_ms = d.as_millis() as u64, "nbd reconnect failed");
                    std::thread::sleep(d);
                }
            }
        }
    }
}

/// `/dev/nbdN`, created from `/sys/block/nbdN/dev` if devtmpfs lacks it.
pub fn ensure_dev_node(index: u32) -> Result<PathBuf> {
    let dev = PathBuf::from(format!("/dev/nbd{index}"));
    if dev.exists() {
        return Ok(dev);
    }
    let mm = fs::read_to_string(format!("/sys/block/nbd{index}/dev"))
        .with_context(|| format!("no /sys/block/nbd{index}/dev"))?;
    let (maj, min) = mm
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .with_context(|| format!("bad dev numbers {mm:?}"))?;
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(maj, min),
    )
    .with_context(|| format!("mknod {}", dev.display()))?;
    Ok(dev)
}

fn wait_for_size(index: u32, limit: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let s = fs::read_to_string(format!("/sys/block/nbd{index}/size")).unwrap_or_default();
        if s.trim().parse::<u64>().unwrap_or(0) > 0 {
            return Ok(());
        }
        if t.elapsed() > limit {
            bail!("nbd{index} has no size after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: nbd ioctls take an integer argument.
    if unsafe { libc::ioctl(fd, req as _, arg) } < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Legacy interface: configure a free /dev/nbdN and park a thread in NBD_DO_IT.
fn ioctl_attach(stream: TcpStream, size: u64, bs: u64, flags: u16) -> Result<u32> {
    let mut index = None;
    for i in 0..256u32 {
        let sys = PathBuf::from(format!("/sys/block/nbd{i}"));
        if !sys.exists() {
            break;
        }
        let sz = fs::read_to_string(sys.join("size")).unwrap_or_default();
        if !sys.join("pid").exists() && sz.trim() == "0" {
            index = Some(i);
            break;
        }
    }
    let index = index.context("no free /dev/nbdN (is the nbd module loaded?)")?;
    let dev = ensure_dev_node(index)?;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .with_context(|| format!("open {}", dev.display()))?;
    let fd = f.as_raw_fd();
    ioctl(fd, NBD_SET_BLKSIZE, bs as _).context("NBD_SET_BLKSIZE")?;
    ioctl(fd, NBD_SET_SIZE_BLOCKS, (size / bs) as _).context("NBD_SET_SIZE_BLOCKS")?;
    ioctl(fd, NBD_SET_FLAGS, flags as _).context("NBD_SET_FLAGS")?;
    ioctl(fd, NBD_SET_TIMEOUT, 30).context("NBD_SET_TIMEOUT")?;
    ioctl(fd, NBD_SET_SOCK, stream.as_raw_fd() as _).context("NBD_SET_SOCK")?;
    std::thread::Builder::new()
        .name(format!("nbd{index}-do-it"))
        .spawn(move || {
            let fd = f.as_raw_fd();
            let r = ioctl(fd, NBD_DO_IT, 0);
            tracing::info!(index, result = ?r, "NBD_DO_IT returned (disconnected)");
            let _ = ioctl(fd, NBD_CLEAR_QUE, 0);
            let _ = ioctl(fd, NBD_CLEAR_SOCK, 0);
            drop(stream);
        })
        .context("spawn NBD_DO_IT thread")?;
    Ok(index)
}

/// Block file systems the kernel knows, preferred ones first.
pub fn fs_candidates(proc_filesystems: &str) -> Vec<String> {
    let mut v: Vec<String> = proc_filesystems
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "fuseblk")
        .collect();
    let rank = |f: &str| {
        ["ext4", "xfs", "btrfs", "erofs", "squashfs"]
            .iter()
            .position(|p| *p == f)
            .unwrap_or(99)
    };
    v.sort_by_key(|f| rank(f));
    v
}

/// Mounts `dev` at `target`, trying each block file system in turn.
pub fn mount_auto(dev: &Path, target: &Path) -> Result<String> {
    fs::create_dir_all(target).with_context(|| format!("mkdir {}", target.display()))?;
    let fss = fs_candidates(&fs::read_to_string("/proc/filesystems").unwrap_or_default());
    let mut errs = Vec::new();
    for t in &fss {
        match nix::mount::mount(
            Some(dev),
            target,
            Some(t.as_str()),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => return Ok(t.clone()),
            Err(e) => errs.push(format!("{t}: {e}")),
        }
    }
    bail!(
        "mount {} on {} failed: {}",
        dev.display(),
        target.display(),
        errs.join(", ")
    )
}

#[cfg(test)]
mod tests;
