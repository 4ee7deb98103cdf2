//! Hardware inventory (NICs, boot NIC, SMBIOS, CPUs, memory, disks, firmware,
//! kernel) read from /proc and /sys without external tools. The parsers take
//! text so they can be tested with sample files.

use boot_proto::{Disk, FirmwareKind, Inventory, Nic};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `(count, model)` from /proc/cpuinfo.
pub fn parse_cpuinfo(text: &str) -> (u32, Option<String>) {
    let mut count = 0u32;
    let mut model = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            "model name" if model.is_none() => model = Some(v.trim().to_string()),
            _ => {}
        }
    }
    (count, model)
}

/// `(MemTotal, MemAvailable)` in bytes from /proc/meminfo.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let mut total = 0;
    let mut avail = None;
    let mut free = 0;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(k), Some(v)) = (w.next(), w.next()) else {
            continue;
        };
        let Ok(kb) = v.parse::<u64>() else { continue };
        match k {
            "MemTotal:" => total = kb * 1024,
            "MemAvailable:" => avail = Some(kb * 1024),
            "MemFree:" => free = kb * 1024,
            _ => {}
        }
    }
    (total, avail.unwrap_or(free))
}

/// Seconds since boot from /proc/uptime, as milliseconds.
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Milliseconds since boot (0 if `/proc/uptime` is unreadable).
pub fn uptime_ms() -> u64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| parse_uptime_ms(&t))
        .unwrap_or(0)
}

/// 1-minute load average from /proc/loadavg.
pub fn parse_loadavg(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

/// `(busy, total)` jiffies from the aggregate `cpu` line of /proc/stat.
pub fn parse_stat_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest* are already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Busy fraction between two /proc/stat samples, clamped to 0..=1.
pub fn cpu_busy(prev: (u64, u64), now: (u64, u64)) -> f64 {
    let dt = now.1.saturating_sub(prev.1);
    if dt == 0 {
        return 0.0;
    }
    (now.0.saturating_sub(prev.0) as f64 / dt as f64).clamp(0.0, 1.0)
}

/// Interface with the default route from /proc/net/route.
pub fn parse_default_route_iface(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000" && f.get(7).is_none_or(|m| *m == "00000000"))
            .then(|| f[0].to_string())
    })
}

/// Block devices worth reporting: skip loop, ram, zram and device-mapper
/// scratch devices; nbd devices are only listed when they have a size.
pub fn keep_disk(name: &str, size_bytes: u64) -> bool {
    !(name.starts_with("loop")
        || name.starts_with("ram")
        || name.starts_with("zram")
        || name.starts_with("sr")
        || name.starts_with("fd")
        || (name.starts_with("nbd") && size_bytes == 0))
}

fn nics(sys_net: &Path) -> Vec<Nic> {
    let mut addrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for ifa in ifs {
            if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                addrs
                    .entry(ifa.interface_name.clone())
                    .or_default()
                    .push(sin.ip().to_string());
            }
        }
    }
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(sys_net) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "lo" {
            continue;
        }
        let dir = e.path();
        let Some(mac) = read_trim(dir.join("address")) else {
            continue;
        };
        let driver = fs::read_link(dir.join("device/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().to_string()));
        out.push(Nic {
            ipv4: addrs.remove(&name).unwrap_or_default(),
            name,
            mac,
            driver,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Picks the boot NIC's MAC: `BOOTIF=` if given, else the default-route NIC,
/// else the first NIC that is up, else the first NIC.
pub fn pick_boot_mac(
    nics: &[Nic],
    bootif: Option<&str>,
    default_iface: Option<&str>,
    is_up: &dyn Fn(&str) -> bool,
) -> Option<String> {
    if let Some(m) = bootif {
        return Some(m.to_string());
    }
    let real = |n: &&Nic| n.mac != "00:00:00:00:00:00";
    if let Some(d) = default_iface {
        if let Some(n) = nics.iter().filter(real).find(|n| n.name == d) {
            return Some(n.mac.clone());
        }
    }
    nics.iter()
        .filter(real)
        .find(|n| is_up(&n.name))
        .or_else(|| nics.iter().find(real))
        .map(|n| n.mac.clone())
}

fn disks(sys_block: &Path) -> Vec<Disk> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(sys_block) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let sectors: u64 = read_trim(e.path().join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let size_bytes = sectors * 512;
        if !keep_disk(&name, size_bytes) {
            continue;
        }
        out.push(Disk {
            model: read_trim(e.path().join("device/model")),
            name,
            size_bytes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Collects the inventory of this machine. `bootif` is the MAC from `BOOTIF=`.
pub fn collect(bootif: Option<&str>) -> Inventory {
    let nics = nics(Path::new("/sys/class/net"));
    let default_iface = fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| parse_default_route_iface(&t));
    let is_up =
        |n: &str| read_trim(format!("/sys/class/net/{n}/operstate")).is_some_and(|s| s == "up");
    let boot_mac = pick_boot_mac(&nics, bootif, default_iface.as_deref(), &is_up);
    let (cpus, cpu_model) = fs::read_to_string("/proc/cpuinfo")
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or((0, None));
    let cpus = if cpus == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    } else {
        cpus
    };
    let (memory_bytes, _) = fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    let dmi = |f: &str| read_trim(format!("/sys/class/dmi/id/{f}"));
    Inventory {
        nics,
        boot_mac,
        smbios_uuid: dmi("product_uuid").map(|s| s.to_ascii_lowercase()),
        serial: dmi("product_serial"),
        vendor: dmi("sys_vendor"),
        product: dmi("product_name"),
        cpus,
        cpu_model,
        memory_bytes,
        disks: disks(Path::new("/sys/block")),
        firmware: Some(if Path::new("/sys/firmware/efi").exists() {
            FirmwareKind::Uefi
        } else {
            FirmwareKind::Bios
        }),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo() {
        let t = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n\n\
                 processor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n";
        assert_eq!(
            parse_cpuinfo(t),
            (2, Some("QEMU Virtual CPU version 2.5+".into()))
        );
    }

    #[test]
    fn meminfo() {
        let t =
            "MemTotal:        2031616 kB\nMemFree:          100 kB\nMemAvailable:    1500000 kB\n";
        assert_eq!(parse_meminfo(t), (2031616 * 1024, 1500000 * 1024));
        // Old kernels without MemAvailable fall back to MemFree.
        assert_eq!(
            parse_meminfo("MemTotal: 4 kB\nMemFree: 2 kB\n"),
            (4096, 2048)
        );
    }

    #[test]
    fn uptime_loadavg_stat() {
        assert_eq!(parse_uptime_ms("2.53 1.00\n"), Some(2530));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_loadavg("0.52 0.30 0.10 1/100 42\n"), 0.52);
        let a = parse_stat_cpu("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(a, (200, 1000));
        let b = parse_stat_cpu("cpu  200 0 200 800 100 0 0 0 0 0\n").unwrap();
        assert!((cpu_busy(a, b) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(cpu_busy(a, a), 0.0);
        assert_eq!(parse_stat_cpu("intr 1 2\n"), None);
    }

    #[test]
    fn default_route() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth1\t004DA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 eth0\t00000000\t014DA8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_route_iface(t).as_deref(), Some("eth0"));
        assert_eq!(parse_default_route_iface("Iface\n"), None);
        assert_eq!(
            parse_default_route_iface("Iface\neth9 00000000 0\n").as_deref(),
            Some("eth9")
        );
    }

    #[test]
    fn boot_mac_choice() {
        let nics = vec![
            Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".into(),
                ..Default::default()
            },
            Nic {
                name: "eth1".into(),
                mac: "52:54:00:00:00:02".into(),
                ..Default::default()
            },
        ];
        let up1 = |n: &str| n == "eth1";
        assert_eq!(
            pick_boot_mac(&nics, Some("aa:bb:cc:dd:ee:ff"), Some("eth0"), &up1).as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(
            pick_boot_mac(&nics, None, Some("eth0"), &up1).as_deref(),
            Some("52:54:00:00:00:01")
        );
        assert_eq!(
            pick_boot_mac(&nics, None, None, &up1).as_deref(),
            Some("52:54:00:00:00:02")
        );
        assert_eq!(
            pick_boot_mac(&nics, None, None, &|_| false).as_deref(),
            Some("52:54:00:00:00:01")
        );
    }

    #[test]
    fn disk_filter() {
        assert!(keep_disk("vda", 1 << 30));
        assert!(keep_disk("nvme0n1", 1 << 30));
        assert!(!keep_disk("loop0", 1 << 30));
        assert!(!keep_disk("ram0", 1 << 20));
        assert!(!keep_disk("nbd3", 0));
        assert!(keep_disk("nbd0", 1 << 20));
    }

    #[test]
    fn collect_runs_here() {
        let inv = collect(None);
        assert!(inv.cpus >= 1);
        assert!(inv.memory_bytes > 0);
        assert!(inv.kernel.is_some());
    }
}
