//! Host mode's command line: `node-agent host --server URL
//! --credential-file F --bridge BR [--reserve M] [--qemu PATH]
//! [--state-dir D] [--accel auto|kvm|tcg] [--ovmf-code F --ovmf-vars F]`.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// What `node-agent host` was told.
#[derive(Debug, Clone, PartialEq)]
pub struct HostOptions {
    /// The server's base URL (`http://10.0.0.1:8080`).
    pub server: String,
    /// File holding the host's secret.
    pub credential_file: PathBuf,
    /// Bridge the VMs' taps join (the boot network).
    pub bridge: String,
    /// VMs reserved for failover (m).
    pub reserve: u32,
    /// QEMU binary.
    pub qemu: String,
    /// `auto` (KVM when `/dev/kvm` opens, else TCG), `kvm` or `tcg`.
    pub accel: String,
    /// Where VM serial logs, QMP sockets and UEFI variables live.
    pub state_dir: PathBuf,
    /// OVMF code image for UEFI VMs.
    pub ovmf_code: PathBuf,
    /// OVMF variables template for UEFI VMs (copied per VM).
    pub ovmf_vars: PathBuf,
}

/// The usage text.
pub const USAGE: &str =
    "usage: node-agent host --server URL --credential-file FILE --bridge BRIDGE \
[--reserve M] [--qemu PATH] [--state-dir DIR] [--accel auto|kvm|tcg] [--ovmf-code FILE] [--ovmf-vars FILE]";

impl HostOptions {
    /// Parses the arguments after `host`.
    pub fn parse(args: &[String]) -> Result<HostOptions> {
        let mut o = HostOptions {
            server: String::new(),
            credential_file: PathBuf::new(),
            bridge: String::new(),
            reserve: 2,
            qemu: "qemu-system-x86_64".into(),
            accel: "auto".into(),
            state_dir: PathBuf::from("/var/lib/node-agent/host"),
            ovmf_code: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            ovmf_vars: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value; {USAGE}"))
            };
            match a.as_str() {
                "--server" => o.server = val()?,
                "--credential-file" => o.credential_file = val()?.into(),
                "--bridge" => o.bridge = val()?,
                "--reserve" => {
                    let v = val()?;
                    o.reserve = v
                        .parse()
                        .with_context(|| format!("--reserve {v:?}: a count of VMs"))?
                }
                "--qemu" => o.qemu = val()?,
                "--accel" => {
                    let v = val()?;
                    if !matches!(v.as_str(), "auto" | "kvm" | "tcg") {
                        bail!("--accel {v:?}: auto, kvm or tcg");
                    }
                    o.accel = v
                }
                "--state-dir" => o.state_dir = val()?.into(),
                "--ovmf-code" => o.ovmf_code = val()?.into(),
                "--ovmf-vars" => o.ovmf_vars = val()?.into(),
                other => bail!("unknown argument {other:?}; {USAGE}"),
            }
        }
        if o.server.is_empty() || o.credential_file.as_os_str().is_empty() || o.bridge.is_empty() {
            bail!("--server, --credential-file and --bridge are required; {USAGE}");
        }
        if !o.server.starts_with("http://") {
            bail!("--server {:?}: give an http:// URL", o.server);
        }
        if o.bridge.len() > 15 || o.bridge.contains('/') {
            bail!("--bridge {:?}: not an interface name", o.bridge);
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_and_refuses() {
        let o = HostOptions::parse(&args(
            "--server http://10.0.0.1:8080 --credential-file /c --bridge br0 --reserve 3 --state-dir /s",
        ))
        .unwrap();
        assert_eq!(o.reserve, 3);
        assert_eq!(o.bridge, "br0");
        assert_eq!(o.state_dir, PathBuf::from("/s"));
        assert_eq!(o.qemu, "qemu-system-x86_64");
        assert_eq!(o.accel, "auto");
        for bad in [
            "--server http://x --bridge br0",
            "--server ftp://x --credential-file /c --bridge br0",
            "--server http://x --credential-file /c --bridge br0 --reserve many",
            "--server http://x --credential-file /c --bridge br0 --frob",
            "--server http://x --credential-file /c --bridge averyveryverylongname",
            "--server",
            "--server http://x --credential-file /c --bridge br0 --accel hvf",
        ] {
            let e = HostOptions::parse(&args(bad)).unwrap_err();
            assert!(!format!("{e:#}").is_empty(), "{bad}");
        }
    }
}
