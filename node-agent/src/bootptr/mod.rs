//! UEFI firmware boot pointer: points the next boot (`BootNext`) and the
//! default order (`BootOrder`) at a network boot option, reusing the
//! firmware's own `Boot####` entry for the boot NIC or creating one, through
//! efivarfs (each file = 4-byte LE attributes + data; each write() is one
//! SetVariable, so every variable is written whole in a single call).

pub mod loadopt;

use anyhow::{bail, Context, Result};
use loadopt::{parse_mac, DpNode, LoadOption, NetKind, DP_MESSAGING, MSG_MAC};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// EFI_GLOBAL_VARIABLE vendor GUID.
pub const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const ATTR_NV_BS_RT: u32 = 7;
const EFIVARFS_MAGIC: u64 = 0xde5e81e4;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Decoded `Boot####` options, and the numbers of those that did not decode.
pub type BootEntries = (Vec<(u16, LoadOption)>, Vec<u16>);

/// An efivarfs mount (or a test directory laid out the same way).
#[derive(Debug, Clone)]
pub struct EfiVars {
    dir: PathBuf,
}

impl EfiVars {
    /// Variables under `dir` (normally `/sys/firmware/efi/efivars`).
    pub fn new(dir: impl Into<PathBuf>) -> EfiVars {
        EfiVars { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{GLOBAL_GUID}"))
    }

    /// `(attributes, data)` of a global variable, `None` if absent.
    pub fn read(&self, name: &str) -> Result<Option<(u32, Vec<u8>)>> {
        let p = self.path(name);
        let mut f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("open {}", p.display())),
        };
        let mut b = Vec::new();
        f.read_to_end(&mut b)
            .with_context(|| format!("read {}", p.display()))?;
        if b.len() < 4 {
            bail!("{}: {} bytes, no attribute word", p.display(), b.len());
        }
        let attrs = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        Ok(Some((attrs, b.split_off(4))))
    }

    fn is_efivarfs(&self) -> bool {
        nix::sys::statfs::statfs(&self.dir)
            .map(|s| s.filesystem_type().0 as u64 == EFIVARFS_MAGIC)
            .unwrap_or(false)
    }

    /// Writes attributes + data in ONE write() call (one SetVariable).
    pub fn write(&self, name: &str, attrs: u32, data: &[u8]) -> Result<()> {
        let p = self.path(name);
        let mut buf = Vec::with_capacity(4 + data.len());
        buf.extend_from_slice(&attrs.to_le_bytes());
        buf.extend_from_slice(data);
        let mut opts = OpenOptions::new();
        opts.write(true).create(true);
        // efivarfs replaces the variable on write; a plain directory (tests)
        // needs truncation to drop a longer old value.
        if !self.is_efivarfs() {
            opts.truncate(true);
        }
        let mut f = match opts.open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && p.exists() => {
                clear_immutable(&p)?;
                opts.open(&p)
                    .with_context(|| format!("open {} after chattr -i", p.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("open {}", p.display())),
        };
        let n = f
            .write(&buf)
            .with_context(|| format!("write {} ({} bytes)", p.display(), buf.len()))?;
        if n != buf.len() {
            bail!("short write to {}: {n} of {}", p.display(), buf.len());
        }
        Ok(())
    }

    /// All `Boot####` load options, sorted by number. Options that do not
    /// decode are returned as errors in the second list (they still occupy
    /// their number).
    pub fn boot_entries(&self) -> Result<BootEntries> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let rd =
            fs::read_dir(&self.dir).with_context(|| format!("read_dir {}", self.dir.display()))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(num) = boot_number(&name) else {
                continue;
            };
            match self.read(&format!("Boot{num:04X}")) {
                Ok(Some((_, data))) => match LoadOption::decode(&data) {
                    Ok(o) => ok.push((num, o)),
                    Err(err) => {
                        tracing::warn!(entry = %format!("Boot{num:04X}"), %err, "undecodable load option");
                        bad.push(num);
                    }
                },
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, "unreadable load option");
                    bad.push(num);
                }
            }
        }
        ok.sort_by_key(|(n, _)| *n);
        Ok((ok, bad))
    }
}

/// `Boot0003-<global guid>` → 3 (exactly four hex digits, as the kernel requires).
pub fn boot_number(file_name: &str) -> Option<u16> {
    let rest = file_name.strip_prefix("Boot")?;
    let (hex, guid) = rest.split_at_checked(4)?;
    if guid != format!("-{GLOBAL_GUID}") || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// `BootNext` payload: u16 LE.
pub fn boot_next_bytes(n: u16) -> [u8; 2] {
    n.to_le_bytes()
}

/// Decodes a `BootOrder` value (little-endian u16 entry numbers).
pub fn decode_order(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Encodes entry numbers as a `BootOrder` value.
pub fn encode_order(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// `order` with `first` moved (or inserted) at the front.
pub fn order_with_first(order: &[u16], first: u16) -> Vec<u16> {
    std::iter::once(first)
        .chain(order.iter().copied().filter(|&n| n != first))
        .collect()
}

fn clear_immutable(p: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(p).with_context(|| format!("open {} for chattr", p.display()))?;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS take a pointer to a long on a valid fd.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) != 0 {
            return Err(std::io::Error::last_os_error()).context("FS_IOC_GETFLAGS");
        }
        flags &= !FS_IMMUTABLE_FL;
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) != 0 {
            return Err(std::io::Error::last_os_error()).context("FS_IOC_SETFLAGS");
        }
    }
    Ok(())
}

fn fmt_order(v: &[u16]) -> String {
    if v.is_empty() {
        return "(none)".into();
    }
    v.iter()
        .map(|n| format!("{n:04X}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What [`set_network_boot`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The `Boot####` entry now pointed at.
    pub entry: u16,
    /// Its description.
    pub description: String,
    /// Whether the entry was created (no matching one existed).
    pub created: bool,
    /// Whether an existing inactive entry was activated.
    pub activated: bool,
    /// `BootNext` before the change, if it was set.
    pub boot_next_old: Option<u16>,
    /// `BootOrder` before the change.
    pub boot_order_old: Vec<u16>,
    /// `BootOrder` after the change.
    pub boot_order_new: Vec<u16>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Boot{:04X} {:?} ({}{}); BootNext {} -> {:04X}; BootOrder {} -> {}",
            self.entry,
            self.description,
            if self.created { "created" } else { "existing" },
            if self.activated { ", activated" } else { "" },
            self.boot_next_old
                .map_or("(none)".to_string(), |n| format!("{n:04X}")),
            self.entry,
            fmt_order(&self.boot_order_old),
            fmt_order(&self.boot_order_new),
        )
    }
}

/// The option to boot and whether it must be written first.
enum Pick {
    Existing(u16, LoadOption),
    Create(LoadOption),
}

fn choose(
    entries: &[(u16, LoadOption)],
    order: &[u16],
    mac: Option<[u8; 6]>,
    http_url: Option<&str>,
    pci_prefix: Option<&[DpNode]>,
) -> Result<Pick> {
    let pos = |n: u16| order.iter().position(|&o| o == n).unwrap_or(usize::MAX);
    let net: Vec<&(u16, LoadOption)> = entries
        .iter()
        .filter(|(_, o)| o.network_kind().is_some())
        .collect();
    let best = |c: &[&(u16, LoadOption)]| -> Option<(u16, LoadOption)> {
        c.iter()
            .min_by_key(|(n, o)| {
                // OVMF lists a bare PciRoot/Pci/MAC option next to the
                // MAC/IPv4 one; the explicit IPv4 path is the unambiguous one.
                let explicit = o.nodes().iter().any(|d| {
                    d.typ == DP_MESSAGING && matches!(d.sub, loadopt::MSG_IPV4 | loadopt::MSG_URI)
                });
                (o.network_kind(), !explicit, !o.is_active(), pos(*n), *n)
            })
            .map(|(n, o)| (*n, o.clone()))
    };
    if let Some(mac) = mac {
        let mine: Vec<_> = net
            .iter()
            .copied()
            .filter(|(_, o)| o.mac() == Some(mac))
            .collect();
        if let Some((n, o)) = best(&mine) {
            if o.network_kind() == Some(NetKind::PxeV6) {
                // Only an IPv6 option for this NIC: derive the IPv4 one from its
                // device path (same PCI prefix up to the MAC node).
                let mut nodes: Vec<DpNode> = o
                    .nodes()
                    .into_iter()
                    .take_while(|d| !(d.typ == DP_MESSAGING && d.sub == MSG_MAC))
                    .collect();
                nodes.push(DpNode::mac(mac));
                nodes.push(DpNode::ipv4_dhcp());
                return Ok(Pick::Create(LoadOption::new(
                    &format!("bootsrv PXEv4 (MAC:{})", hex(&mac)),
                    &nodes,
                )));
            }
            return Ok(Pick::Existing(n, o));
        }
        let anon: Vec<_> = net
            .iter()
            .copied()
            .filter(|(_, o)| o.mac().is_none())
            .collect();
        if let Some((n, o)) = best(&anon) {
            return Ok(Pick::Existing(n, o));
        }
    } else if let Some((n, o)) = best(&net) {
        return Ok(Pick::Existing(n, o));
    }
    if let (Some(mac), Some(prefix)) = (mac, pci_prefix) {
        // The firmware's own layout: PciRoot/Pci.../MAC/IPv4.
        let mut nodes = prefix.to_vec();
        nodes.push(DpNode::mac(mac));
        nodes.push(DpNode::ipv4_dhcp());
        return Ok(Pick::Create(LoadOption::new(
            &format!("bootsrv PXEv4 (MAC:{})", hex(&mac)),
            &nodes,
        )));
    }
    if let Some(url) = http_url {
        // Short-form URI device path: edk2 expands it over any HTTP-boot NIC.
        return Ok(Pick::Create(LoadOption::new(
            "bootsrv HTTP boot",
            &[DpNode::uri(url)],
        )));
    }
    if let Some(mac) = mac {
        tracing::warn!(
            "no firmware network option and no PCI path for this NIC: \
             creating a MAC+IPv4 path without PCI prefix"
        );
        return Ok(Pick::Create(LoadOption::new(
            &format!("bootsrv PXEv4 (MAC:{})", hex(&mac)),
            &[DpNode::mac(mac), DpNode::ipv4_dhcp()],
        )));
    }
    bail!("no network boot option in the firmware and no boot MAC or HTTP-boot URL to build one")
}

/// PciRoot + Pci nodes of a sysfs device path such as
/// `/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/virtio2`.
pub fn pci_prefix_from_sysfs(path: &str) -> Option<Vec<DpNode>> {
    let mut nodes = Vec::new();
    for comp in path.split('/') {
        if let Some(root) = comp.strip_prefix("pci") {
            let (_domain, bus) = root.split_once(':')?;
            let bus = u32::from_str_radix(bus, 16).ok()?;
            // ACPI HID PNP0A03 (EISA-compressed 0x0A0341D0), UID = root bus.
            let mut data = 0x0A03_41D0u32.to_le_bytes().to_vec();
            data.extend_from_slice(&bus.to_le_bytes());
            nodes.push(DpNode {
                typ: 2,
                sub: 1,
                data,
            });
        } else if !nodes.is_empty() {
            // "DDDD:BB:dd.f"
            let Some((head, func)) = comp.rsplit_once('.') else {
                continue;
            };
            let parts: Vec<&str> = head.split(':').collect();
            if parts.len() != 3 || parts[2].len() != 2 || func.len() != 1 {
                continue;
            }
            let (Ok(dev), Ok(func)) = (
                u8::from_str_radix(parts[2], 16),
                u8::from_str_radix(func, 16),
            ) else {
                continue;
            };
            nodes.push(DpNode {
                typ: loadopt::DP_HARDWARE,
                sub: 1,
                data: vec![func, dev],
            });
        }
    }
    (nodes.len() >= 2).then_some(nodes)
}

/// PCI device-path prefix of the local NIC with this MAC, from sysfs.
pub fn nic_pci_prefix(mac: &str) -> Option<Vec<DpNode>> {
    for e in fs::read_dir("/sys/class/net").ok()?.flatten() {
        let addr = fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(mac) {
            let dev = fs::canonicalize(e.path().join("device")).ok()?;
            return pci_prefix_from_sysfs(&dev.to_string_lossy());
        }
    }
    None
}

fn hex(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02X}")).collect()
}

/// Points the firmware at network boot: picks or creates the `Boot####`
/// network option for `boot_mac`, sets `BootNext` to it and moves it to the
/// front of `BootOrder`.
pub fn set_network_boot(
    vars: &EfiVars,
    boot_mac: Option<&str>,
    http_url: Option<&str>,
) -> Result<Change> {
    let prefix = boot_mac.and_then(nic_pci_prefix);
    set_network_boot_with(vars, boot_mac, http_url, prefix.as_deref())
}

/// [`set_network_boot`] with the NIC's PCI device-path prefix given (tests).
pub fn set_network_boot_with(
    vars: &EfiVars,
    boot_mac: Option<&str>,
    http_url: Option<&str>,
    pci_prefix: Option<&[DpNode]>,
) -> Result<Change> {
    let (entries, bad) = vars.boot_entries()?;
    let (order_attrs, order_old) = match vars.read("BootOrder")? {
        Some((a, d)) => (a, decode_order(&d)),
        None => (ATTR_NV_BS_RT, Vec::new()),
    };
    let boot_next_old = vars
        .read("BootNext")
        .ok()
        .flatten()
        .and_then(|(_, d)| (d.len() == 2).then(|| u16::from_le_bytes([d[0], d[1]])));
    let mac = boot_mac.and_then(parse_mac);
    let (entry, description, created, activated) =
        match choose(&entries, &order_old, mac, http_url, pci_prefix)? {
            Pick::Existing(n, mut o) => {
                let activated = !o.is_active();
                if activated {
                    o.attributes |= loadopt::LOAD_OPTION_ACTIVE;
                    vars.write(&format!("Boot{n:04X}"), ATTR_NV_BS_RT, &o.encode())?;
                }
                (n, o.description, false, activated)
            }
            Pick::Create(o) => {
                // Reuse an identical option from an earlier run.
                let enc = o.encode();
                if let Some((n, _)) = entries.iter().find(|(_, e)| e.encode() == enc) {
                    (*n, o.description, false, false)
                } else {
                    let used = |n: u16| {
                        entries.iter().any(|(e, _)| *e == n)
                            || bad.contains(&n)
                            || order_old.contains(&n)
                    };
                    let n = (0..=0xffffu16)
                        .find(|&n| !used(n))
                        .context("no free Boot#### number")?;
                    vars.write(&format!("Boot{n:04X}"), ATTR_NV_BS_RT, &enc)?;
                    (n, o.description, true, false)
                }
            }
        };
    vars.write("BootNext", ATTR_NV_BS_RT, &boot_next_bytes(entry))?;
    let order_new = order_with_first(&order_old, entry);
    if order_new != order_old {
        vars.write("BootOrder", order_attrs, &encode_order(&order_new))?;
    }
    Ok(Change {
        entry,
        description,
        created,
        activated,
        boot_next_old,
        boot_order_old: order_old,
        boot_order_new: order_new,
    })
}

#[cfg(test)]
mod tests {
    use super::loadopt::encode_path;
    use super::loadopt::tests::ovmf_pxe4;
    use super::*;

    fn put(dir: &Path, name: &str, attrs: u32, data: &[u8]) {
        let mut b = attrs.to_le_bytes().to_vec();
        b.extend_from_slice(data);
        fs::write(dir.join(format!("{name}-{GLOBAL_GUID}")), b).unwrap();
    }

    fn get(dir: &Path, name: &str) -> Vec<u8> {
        fs::read(dir.join(format!("{name}-{GLOBAL_GUID}"))).unwrap()
    }

    fn disk_option() -> Vec<u8> {
        // "UEFI QEMU HARDDISK": PCI path + End, optional data.
        let mut p = vec![
            2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0, 1, 1, 6, 0, 0, 4,
        ];
        p.extend([0x7f, 0xff, 4, 0]);
        LoadOption {
            attributes: 1,
            description: "UEFI QEMU HARDDISK QM00001".into(),
            file_path: p,
            optional_data: vec![],
        }
        .encode()
    }

    #[test]
    fn pci_prefix_from_sysfs_paths() {
        let n = pci_prefix_from_sysfs("/sys/devices/pci0000:00/0000:00:03.0/virtio2").unwrap();
        assert_eq!(
            encode_path(&n),
            [2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0, 1, 1, 6, 0, 0, 3, 0x7f, 0xff, 4, 0]
        );
        let n = pci_prefix_from_sysfs("/sys/devices/pci0000:80/0000:80:1c.4/0000:81:00.1/net/eth3")
            .unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].data[4], 0x80);
        assert_eq!(
            (n[1].data.clone(), n[2].data.clone()),
            (vec![4, 0x1c], vec![1, 0])
        );
        assert_eq!(pci_prefix_from_sysfs("/sys/devices/virtual/net/br0"), None);
        // Created entry uses the prefix: same layout OVMF itself writes.
        let d = tempfile::tempdir().unwrap();
        let v = EfiVars::new(d.path());
        let prefix = pci_prefix_from_sysfs("/sys/devices/pci0000:00/0000:00:03.0/virtio2").unwrap();
        let c = set_network_boot_with(&v, Some("52:54:00:12:34:56"), None, Some(&prefix)).unwrap();
        let o = LoadOption::decode(&get(d.path(), &format!("Boot{:04X}", c.entry))[4..]).unwrap();
        let fw = LoadOption::decode(&ovmf_pxe4()).unwrap();
        assert_eq!(o.file_path, fw.file_path);
    }

    /// Boot options OVMF (Debian ovmf, QEMU virtio-net 52:54:00:12:34:56)
    /// wrote itself, captured from efivarfs by tests/qemu-smoke.sh.
    fn real_ovmf_options() -> Vec<(String, Vec<u8>)> {
        include_str!("ovmf-boot-options.txt")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, h)| {
                let b = (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                (n.to_string(), b)
            })
            .collect()
    }

    #[test]
    fn real_ovmf_options_decode_and_pick_pxe4() {
        let opts = real_ovmf_options();
        assert_eq!(opts.len(), 8);
        let d = tempfile::tempdir().unwrap();
        for (name, raw) in &opts {
            let o = LoadOption::decode(&raw[4..]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(o.encode(), raw[4..], "{name} round trip");
            fs::write(d.path().join(format!("{name}-{GLOBAL_GUID}")), raw).unwrap();
        }
        let kinds: Vec<_> = opts
            .iter()
            .map(|(_, r)| LoadOption::decode(&r[4..]).unwrap().network_kind())
            .collect();
        use NetKind::*;
        assert_eq!(
            kinds,
            [
                None,
                None,
                Some(PxeV4),
                Some(PxeV4),
                Some(PxeV6),
                Some(Http),
                Some(Http),
                None
            ]
        );
        put(
            d.path(),
            "BootOrder",
            7,
            &encode_order(&[0, 2, 3, 4, 5, 6, 7, 8]),
        );
        let v = EfiVars::new(d.path());
        let c = set_network_boot_with(&v, Some("52:54:00:12:34:56"), None, None).unwrap();
        assert_eq!((c.entry, c.created), (4, false), "{c}");
        assert_eq!(c.description, "UEFI PXEv4 (MAC:525400123456) 2");
        // What the agent would build from sysfs is byte-identical to OVMF's.
        let prefix = pci_prefix_from_sysfs("/sys/devices/pci0000:00/0000:00:03.0/virtio1").unwrap();
        let mut nodes = prefix;
        nodes.push(DpNode::mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        nodes.push(DpNode::ipv4_dhcp());
        let fw = LoadOption::decode(&opts[3].1[4..]).unwrap();
        assert_eq!(encode_path(&nodes), fw.file_path);
    }

    #[test]
    fn bytes_of_bootnext_and_order() {
        assert_eq!(boot_next_bytes(0x0003), [3, 0]);
        assert_eq!(boot_next_bytes(0x1a2b), [0x2b, 0x1a]);
        assert_eq!(encode_order(&[1, 0x1000]), [1, 0, 0, 0x10]);
        assert_eq!(decode_order(&[1, 0, 0, 0x10, 9]), vec![1, 0x1000]);
        assert_eq!(order_with_first(&[1, 2, 3], 3), vec![3, 1, 2]);
        assert_eq!(order_with_first(&[1, 2], 7), vec![7, 1, 2]);
        assert_eq!(boot_number(&format!("Boot000A-{GLOBAL_GUID}")), Some(10));
        assert_eq!(boot_number(&format!("BootOrder-{GLOBAL_GUID}")), None);
        assert_eq!(
            boot_number(&format!(
                "Boot0001-{}",
                "12345678-93ca-11d2-aa0d-00e098032b8c"
            )),
            None
        );
    }

    #[test]
    fn picks_firmware_pxe_entry_and_sets_pointer() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "Boot0001", 7, &disk_option());
        put(d.path(), "Boot0002", 7, &ovmf_pxe4());
        put(d.path(), "BootOrder", 7, &encode_order(&[1, 2]));
        let v = EfiVars::new(d.path());
        let c = set_network_boot(&v, Some("52:54:00:12:34:56"), None).unwrap();
        assert_eq!(c.entry, 2);
        assert!(!c.created);
        assert_eq!(get(d.path(), "BootNext"), [7, 0, 0, 0, 2, 0]);
        assert_eq!(get(d.path(), "BootOrder"), [7, 0, 0, 0, 2, 0, 1, 0]);
        assert_eq!(
            c.to_string(),
            "Boot0002 \"UEFI PXEv4 (MAC:525400123456)\" (existing); BootNext (none) -> 0002; BootOrder 0001,0002 -> 0002,0001"
        );
        // Idempotent: second run changes nothing more.
        let c2 = set_network_boot(&v, Some("52:54:00:12:34:56"), None).unwrap();
        assert_eq!(c2.boot_next_old, Some(2));
        assert_eq!(c2.boot_order_old, c2.boot_order_new);
    }

    #[test]
    fn other_nic_only_creates_entry_for_boot_nic() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "Boot0000", 7, &disk_option());
        put(d.path(), "Boot0001", 7, &ovmf_pxe4()); // MAC ...123456
        put(d.path(), "BootOrder", 7, &encode_order(&[0, 1]));
        put(d.path(), "BootNext", 7, &[0, 0]);
        let v = EfiVars::new(d.path());
        let c = set_network_boot(&v, Some("52:54:00:aa:bb:cc"), None).unwrap();
        assert!(c.created);
        assert_eq!(c.entry, 2);
        assert_eq!(c.boot_next_old, Some(0));
        let raw = get(d.path(), "Boot0002");
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        let o = LoadOption::decode(&raw[4..]).unwrap();
        assert_eq!(o.mac(), Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(o.network_kind(), Some(NetKind::PxeV4));
        assert_eq!(get(d.path(), "BootOrder")[4..], [2, 0, 0, 0, 1, 0]);
        // A rerun finds the created entry instead of creating another.
        let c2 = set_network_boot(&v, Some("52:54:00:aa:bb:cc"), None).unwrap();
        assert_eq!((c2.entry, c2.created), (2, false));
    }

    #[test]
    fn http_uri_and_inactive_and_empty_cases() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "Boot0000", 7, &disk_option());
        let v = EfiVars::new(d.path());
        assert!(set_network_boot(&v, None, None).is_err());
        let c = set_network_boot(&v, None, Some("http://10.77.0.1:8080/ipxe.efi")).unwrap();
        assert!(c.created);
        assert_eq!(c.entry, 1);
        let o = LoadOption::decode(&get(d.path(), "Boot0001")[4..]).unwrap();
        assert_eq!(o.nodes()[0], DpNode::uri("http://10.77.0.1:8080/ipxe.efi"));
        assert_eq!(get(d.path(), "BootOrder"), [7, 0, 0, 0, 1, 0]);

        // An inactive firmware PXE option gets activated.
        let d = tempfile::tempdir().unwrap();
        let mut o = LoadOption::decode(&ovmf_pxe4()).unwrap();
        o.attributes = 0;
        put(d.path(), "Boot0005", 7, &o.encode());
        put(d.path(), "Boot0006", 7, b"garbage");
        let v = EfiVars::new(d.path());
        let c = set_network_boot(&v, Some("52:54:00:12:34:56"), None).unwrap();
        assert_eq!((c.entry, c.activated), (5, true));
        assert!(LoadOption::decode(&get(d.path(), "Boot0005")[4..])
            .unwrap()
            .is_active());
    }

    #[test]
    fn ipv6_only_entry_yields_derived_ipv4_with_pci_prefix() {
        let d = tempfile::tempdir().unwrap();
        let mut o = LoadOption::decode(&ovmf_pxe4()).unwrap();
        let mut nodes = o.nodes();
        nodes[3] = DpNode {
            typ: 3,
            sub: loadopt::MSG_IPV6,
            data: vec![0; 56],
        };
        o.file_path = loadopt::encode_path(&nodes);
        o.description = "UEFI PXEv6 (MAC:525400123456)".into();
        put(d.path(), "Boot0003", 7, &o.encode());
        let v = EfiVars::new(d.path());
        let c = set_network_boot(&v, Some("52:54:00:12:34:56"), None).unwrap();
        assert!(c.created);
        let n = LoadOption::decode(&get(d.path(), &format!("Boot{:04X}", c.entry))[4..])
            .unwrap()
            .nodes();
        assert_eq!(n.len(), 5, "ACPI, PCI, MAC, IPv4, End: {n:?}");
        assert_eq!((n[0].typ, n[1].typ), (2, 1));
        assert_eq!(n[3].sub, loadopt::MSG_IPV4);
    }
}
