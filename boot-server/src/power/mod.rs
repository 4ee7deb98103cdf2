//! Power control of nodes through their baseboard management: one
//! [`PowerDriver`] trait, an IPMI-over-LAN driver (`ipmitool`, RMCP+) and a
//! QEMU driver (QMP) for lab guests without a BMC. A node's power URI (set at
//! enrolment, `ipmi://HOST[:PORT]` or `qmp:///PATH`) names its driver; the
//! credentials live apart from it, in a file only the server reads
//! ([`Credentials`]), and never reach a log or an API answer.

mod ipmi;
mod qmp;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// What a BMC says of a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    /// Running.
    On,
    /// Off, or halted so that it can neither run nor write (QEMU paused or gone).
    Off,
}

impl PowerState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        }
    }
}

/// What the engine and admins ask of a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    /// Power on.
    On,
    /// Hard power off (a fence: the machine stops at once).
    Off,
    /// Off then on (a hard reset).
    Cycle,
    /// Boot from the network next time (IPMI chassis boot device PXE).
    Pxe,
}

impl std::str::FromStr for PowerAction {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "on" => PowerAction::On,
            "off" => PowerAction::Off,
            "cycle" => PowerAction::Cycle,
            "pxe" => PowerAction::Pxe,
            other => bail!("power action {other:?}: use on, off, cycle or pxe"),
        })
    }
}

/// One node's power control.
#[async_trait::async_trait]
pub trait PowerDriver: Send + Sync {
    /// The machine's power state as its BMC reports it.
    async fn status(&self) -> Result<PowerState>;
    /// Carries out `action`.
    async fn act(&self, action: PowerAction) -> Result<()>;
    /// The driver's name for events ("ipmi", "qmp").
    fn kind(&self) -> &'static str;
}

/// BMC user names and passwords by host (`[ipmi."HOST:PORT"]`, or
/// `[ipmi.default]`), read from a TOML file readable only by the server.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    ipmi: HashMap<String, IpmiLogin>,
}

/// An IPMI user and password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpmiLogin {
    /// User name.
    pub user: String,
    /// Password (never logged; `Debug` hides it).
    pub password: String,
    /// RMCP+ cipher suite (ipmitool `-C`); ipmitool's default when unset.
    #[serde(default)]
    pub cipher_suite: Option<u8>,
}

impl std::fmt::Debug for IpmiLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiLogin")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("cipher_suite", &self.cipher_suite)
            .finish()
    }
}

impl Credentials {
    /// Reads the credentials file; a missing file means no credentials. A
    /// file that others may read is refused: it holds BMC passwords.
    pub fn load(path: &Path) -> Result<Credentials> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} holds BMC passwords but others may read it (mode {:o}): chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn ipmi_login(&self, host: &str, port: u16) -> Option<&IpmiLogin> {
        self.ipmi
            .get(&format!("{host}:{port}"))
            .or_else(|| self.ipmi.get(host))
            .or_else(|| self.ipmi.get("default"))
    }
}

/// The driver a power URI names, or a clear error.
pub fn driver(uri: &str, creds: &Credentials, timeout: Duration) -> Result<Box<dyn PowerDriver>> {
    if let Some(path) = uri.strip_prefix("qmp://") {
        if !path.starts_with('/') {
            bail!("power {uri:?}: a QMP URI is qmp:///ABSOLUTE/PATH of the monitor socket");
        }
        return Ok(Box::new(qmp::Qmp::new(path.into(), timeout)));
    }
    if let Some(rest) = uri.strip_prefix("ipmi://") {
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            bail!("power {uri:?}: credentials do not go in the URI; put them in the power credentials file");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .with_context(|| format!("power {uri:?}: bad port"))?,
            ),
            None => (rest.to_string(), 623),
        };
        if host.is_empty() {
            bail!("power {uri:?}: no host");
        }
        let login = creds.ipmi_login(&host, port).cloned().with_context(|| {
            format!("power {uri:?}: no IPMI credentials for {host}:{port} in the power credentials file")
        })?;
        return Ok(Box::new(ipmi::Ipmi::new(host, port, login, timeout)));
    }
    bail!("power {uri:?}: use ipmi://HOST[:PORT] or qmp:///PATH")
}

/// Checks a power URI's form (at enrolment; credentials come later).
pub fn check_uri(uri: &str) -> Result<()> {
    let creds = Credentials {
        ipmi: HashMap::from([(
            "default".to_string(),
            IpmiLogin {
                user: String::new(),
                password: String::new(),
                cipher_suite: None,
            },
        )]),
    };
    driver(uri, &creds, Duration::from_secs(1)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_their_driver_and_keep_credentials_out() {
        assert!(check_uri("qmp:///run/lab/g1.qmp").is_ok());
        assert!(check_uri("ipmi://10.0.0.5").is_ok());
        assert!(check_uri("ipmi://10.0.0.5:9623").is_ok());
        assert!(check_uri("qmp://relative").is_err());
        assert!(check_uri("ipmi://admin:pw@10.0.0.5").is_err());
        assert!(check_uri("ipmi://10.0.0.5:x").is_err());
        assert!(check_uri("redfish://x").is_err());
        let none = Credentials::default();
        let e = driver("ipmi://10.0.0.5", &none, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("no IPMI credentials"));
    }

    #[test]
    fn credentials_file_must_be_private_and_hides_passwords() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("power.toml");
        std::fs::write(
            &p,
            "[ipmi.default]\nuser = \"admin\"\npassword = \"s3cret\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(format!("{:#}", Credentials::load(&p).unwrap_err()).contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::load(&p).unwrap();
        let login = c.ipmi_login("10.0.0.9", 623).unwrap();
        assert_eq!(login.user, "admin");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(Credentials::load(&dir.path().join("absent.toml")).is_ok());
    }
}
