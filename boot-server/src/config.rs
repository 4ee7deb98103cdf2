//! Server configuration: a TOML file with defaults for everything, so
//! `boot-server serve` also starts with no file at all (HTTP and TFTP only,
//! DHCP off until an interface and subnet are given).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The whole configuration file; every table and key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the SQLite state (and the generated admin token).
    pub state_dir: PathBuf,
    /// Directory holding boot images (manifests `*/image.toml` and files).
    pub images_dir: PathBuf,
    /// Directory holding the iPXE loaders (Debian package `ipxe`).
    pub loaders_dir: PathBuf,
    /// Directory of iPXE script templates; the built-in copies are used when unset.
    pub scripts_dir: Option<PathBuf>,
    /// Address nodes reach this server at: DHCP siaddr/option 54 and URLs.
    pub server_ip: Option<Ipv4Addr>,
    /// Boot network interface (DHCP and Router Advertisements bind to it).
    pub interface: Option<String>,
    /// Image booted by nodes without an assignment.
    pub default_image: Option<String>,
    /// Admin API token (at least 128 bits); generated into
    /// `state_dir/admin.token` when unset.
    pub admin_token: Option<String>,
    /// Trust every host on the boot network: hand a node's boot script (its
    /// agent token and disk export name) to whoever asks for it. Off by
    /// default: secrets go only to the node's observed address.
    pub trust_boot_network: bool,
    /// Most nodes recorded from script fetches alone (no DHCP seen, not enrolled).
    pub discovery_limit: usize,
    /// `[http]`: the node-facing HTTP service.
    pub http: HttpConfig,
    /// `[admin]`: where the admin API listens.
    pub admin: AdminConfig,
    /// `[events]`: the event log.
    pub events: EventsConfig,
    /// `[tftp]`: the TFTP server.
    pub tftp: TftpConfig,
    /// `[dhcp]`: the DHCP or proxyDHCP server.
    pub dhcp: DhcpConfig,
    /// `[ra]`: IPv6 Router Advertisements.
    pub ra: RaConfig,
    /// `[nbd]`: the NBD server and its disk store.
    pub nbd: NbdConfig,
    /// `[iscsi]`: the iSCSI target over the same disk store.
    pub iscsi: IscsiConfig,
    /// `[agent]`: what node agents are told and held to.
    pub agent: AgentConfig,
    /// `[engine]`: the dynamic boot engine.
    pub engine: EngineConfig,
    /// `[store]`: where the state lives (SQLite in `state_dir`, or PostgreSQL).
    pub store: StoreConfig,
    /// `[loaders]`: iPXE loader file per firmware.
    pub loaders: LoaderConfig,
    /// `[power]`: BMC power control (fencing, failure detection).
    pub power: PowerConfig,
    /// `[metrics]`: where `/metrics` is served.
    pub metrics: MetricsConfig,
    /// `[alerts]`: webhooks alerts are delivered to.
    pub alerts: AlertsConfig,
}

/// `[power]`: power control of nodes through their BMC or QEMU monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    /// BMC credentials (TOML, mode 0600); default `<state_dir>/power.toml`.
    pub credentials_file: Option<PathBuf>,
    /// How often the power state of nodes holding a slot is read, so that
    /// a machine that lost power is seen at once; 0 turns it off.
    pub poll_ms: u64,
    /// Longest wait for a BMC's answer.
    pub timeout_ms: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            credentials_file: None,
            poll_ms: 1000,
            timeout_ms: 5000,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint `/metrics`. It is always served on
/// the admin listeners (Unix socket, `[admin] listen`); its labels name no
/// node, address or token, so it may also be served on the node-facing port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Also serve `/metrics` (no token) on the node-facing HTTP port; default on.
    pub on_node_port: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { on_node_port: true }
    }
}

/// `[alerts]`: every `alert` event is POSTed as JSON to the webhook of its
/// kind (`[alerts.kinds]`), else to `url`; none configured, none sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Default webhook (http or https) for kinds without their own.
    pub url: Option<String>,
    /// Webhook per alert kind (`node-unavailable = "https://..."`); an empty
    /// string sends that kind nowhere.
    pub kinds: std::collections::BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer ...` with every post.
    pub bearer_token: Option<String>,
    /// Time allowed for one post.
    pub timeout_secs: u64,
    /// Attempts per alert (network errors, 5xx, 408 and 429 are retried).
    pub max_attempts: u32,
    /// Alerts waiting per webhook at most; beyond it they are dropped and counted.
    pub queue: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            url: None,
            kinds: Default::default(),
            bearer_token: None,
            timeout_secs: 5,
            max_attempts: 6,
            queue: 1024,
        }
    }
}

impl AlertsConfig {
    /// The webhook an alert of `kind` goes to, if any.
    pub fn url_for(&self, kind: &str) -> Option<&String> {
        match self.kinds.get(kind) {
            Some(u) => Some(u).filter(|u| !u.is_empty()),
            None => self.url.as_ref().filter(|u| !u.is_empty()),
        }
    }

    fn validate(&self) -> Result<()> {
        for (what, url) in self
            .url
            .iter()
            .map(|u| ("alerts.url".to_string(), u))
            .chain(
                self.kinds
                    .iter()
                    .map(|(k, u)| (format!("alerts.kinds.{k}"), u)),
            )
        {
            if url.is_empty() {
                continue;
            }
            // The URL may hold a secret: the error names the key, not the URL.
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                bail!("{what}: not an http:// or https:// URL");
            }
        }
        Ok(())
    }
}

/// `[http]`: the node-facing HTTP service (scripts, files, agent API).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Base URL written into scripts; default `http://<server_ip>:<port>`.
    pub public_url: Option<String>,
}

/// The admin API's listeners. The Unix socket `state_dir/admin.sock` (0600:
/// file permissions are the authentication) always serves it; `listen`
/// gives it a TCP listener of its own (Bearer token, TLS unless `tls =
/// false`), else it shares the node-facing HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Own TCP listener for the admin API (Bearer token); `None` shares the HTTP listener.
    pub listen: Option<SocketAddr>,
    /// TLS on that listener (default on).
    pub tls: bool,
    /// PEM certificate chain; with `key`. Unset: a self-signed certificate
    /// made at first start in `state_dir/tls/` (its SHA-256 fingerprint is logged).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            tls: true,
            cert: None,
            key: None,
        }
    }
}

/// The event log.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events kept; older ones are pruned.
    pub retain: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { retain: 200_000 }
    }
}

/// `[tftp]`: the TFTP server (serves the loaders and images directories).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TftpConfig {
    /// Run it; default on.
    pub enabled: bool,
    /// Listen address; default `0.0.0.0:69`.
    pub listen: SocketAddr,
    /// Largest block size granted to clients; default 1468 (fits a 1500-byte MTU).
    pub max_blksize: u16,
    /// Microseconds a transfer polls for the client's next ACK before it sleeps
    /// (`boot_tftp::spin`); default 50, 0 turns polling off.
    pub spin_us: u64,
}

/// `dhcp.mode`: which DHCP service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// No DHCP (another server does everything, or static setups).
    Off,
    /// Full DHCP server handing out addresses from `[[dhcp.subnet]]`.
    Full,
    /// proxyDHCP: boot information only, next to another DHCP server.
    Proxy,
}

/// `[dhcp]`: the DHCP service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DhcpConfig {
    /// Which service runs; default off.
    pub mode: DhcpMode,
    /// Server port; default 67.
    pub port: u16,
    /// PXE boot-server port (proxy requests); default 4011, 0 disables it.
    pub proxy_port: u16,
    /// Under load (wake-ups closer than this), microseconds the server lets
    /// datagrams gather before it reads the next batch; default 1000, 0 off.
    /// An idle server answers at once.
    pub coalesce_us: u64,
    /// `[[dhcp.subnet]]` tables: the address pools (full mode).
    #[serde(rename = "subnet")]
    pub subnets: Vec<SubnetConfig>,
}

/// `[[dhcp.subnet]]`: one address pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// `10.77.0.0/24`
    pub network: String,
    /// First and last address of the pool.
    pub range: [Ipv4Addr; 2],
    /// Default gateway handed out (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// DNS domain handed out (option 15).
    pub domain: Option<String>,
    /// Lease time in seconds; default 3600.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// `[[dhcp.subnet.reservation]]` tables (round 1; imported into the store).
    #[serde(default, rename = "reservation")]
    pub reservations: Vec<Reservation>,
}

/// A reservation in the config file (round 1). Reservations live in the
/// store now; ones found here are imported once, with a warning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Client MAC.
    pub mac: String,
    /// Reserved address.
    pub ip: Ipv4Addr,
    /// Host name handed out with it.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// `[ra]`: IPv6 Router Advertisements on the boot interface.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaConfig {
    /// Answer IPv6 Router Solicitations on `interface` (saves iPXE 4-16 s).
    pub enabled: bool,
}

/// `[nbd]`: the NBD server.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NbdConfig {
    /// Run it; default on.
    pub enabled: bool,
    /// Listen address; default `0.0.0.0:10809`.
    pub listen: SocketAddr,
    /// Disk store directory; default `<state_dir>/disks`.
    pub disks_dir: Option<PathBuf>,
}

/// `[store]`: the state store. Without `url`, the embedded SQLite database
/// in `state_dir`; with `url = "postgres://user@host/db"`, a PostgreSQL
/// database shared by several boot servers, of which the designated
/// controller (a lease in the database) runs the engine.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// PostgreSQL URL (libpq form); `None` keeps the SQLite store.
    pub url: Option<String>,
    /// Designated-controller lease time: a dead controller is replaced
    /// within about this long (plus 0.5 s); default 3000.
    pub controller_ttl_ms: u64,
    /// This server's name in the server registry (unique among the servers
    /// sharing the store); default the host name.
    pub server_name: Option<String>,
    /// The network segment this server answers (shown by `server list`);
    /// default its DHCP subnets.
    pub segment: Option<String>,
    /// SQLite: microseconds concurrent writes gather before one commit (one
    /// fsync) takes them all; default 1000, 0 commits at once. Writes that
    /// come one at a time never wait.
    pub commit_delay_us: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            controller_ttl_ms: 3000,
            server_name: None,
            segment: None,
            commit_delay_us: crate::store::sqlite::DEFAULT_COMMIT_DELAY.as_micros() as u64,
        }
    }
}

impl StoreConfig {
    /// This server's registry name: `server_name`, else the host name.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "boot-server".into())
        })
    }
}

impl std::fmt::Debug for StoreConfig {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field(
                "url",
                &self.url.as_deref().map(crate::store::postgres::redact),
            )
            .field("controller_ttl_ms", &self.controller_ttl_ms)
            .field("server_name", &self.server_name)
            .field("segment", &self.segment)
            .field("commit_delay_us", &self.commit_delay_us)
            .finish()
    }
}

/// `[iscsi]`: the iSCSI target (attached overlays as targets, see `crate::iscsi`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IscsiConfig {
    /// Run it; default off.
    pub enabled: bool,
    /// Listen address; default `0.0.0.0:3260`.
    pub listen: SocketAddr,
}

/// The dynamic boot engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Run the engine (environments claim pool nodes).
    pub enabled: bool,
    /// Longest pause between two passes (it also runs on every change).
    pub tick_ms: u64,
    /// Only nodes an admin enrolled join the pool (else every node whose
    /// agent said hello does).
    pub manual_enrolment: bool,
    /// Stop hook time before the agent forces the application down.
    pub stop_timeout_secs: u64,
    /// A node not up in the new image after this fails the move.
    pub boot_timeout_secs: u64,
    /// Start hook (and slot configuration) time.
    pub start_timeout_secs: u64,
    /// A node whose move failed is not picked again for this long.
    pub failed_node_cooldown_secs: u64,
    /// Sliding window over which entitlement shares are enforced.
    pub entitlement_window_secs: u64,
    /// Load samples kept this long.
    pub load_retain_secs: u64,
    /// Longest freeze of a clone's template: its agent thaws by itself
    /// after this, and a snapshot not taken by then fails the clone.
    pub clone_hold_secs: u64,
    /// Pre-stage: tell idle and preemptible nodes to download and load the
    /// image they most likely boot next, so a warm move only jumps.
    pub prestage: bool,
    /// Fencing a failed VM node: how long to wait for its host to report
    /// the VM's QEMU gone before its slot's disk goes elsewhere anyway
    /// (the fence event then says unproven).
    pub vm_fence_timeout_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            enabled: true,
            tick_ms: 1000,
            manual_enrolment: false,
            stop_timeout_secs: 20,
            boot_timeout_secs: 300,
            start_timeout_secs: 120,
            failed_node_cooldown_secs: 300,
            entitlement_window_secs: 3600,
            load_retain_secs: 86_400,
            clone_hold_secs: 60,
            prestage: true,
            vm_fence_timeout_secs: 15,
        }
    }
}

/// `[agent]`: timing of node agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Seconds between heartbeats agents are told to keep; default 5.
    pub heartbeat_interval_secs: u64,
    /// A ready node with no heartbeat for this long is marked failed.
    pub heartbeat_timeout_secs: u64,
    /// Serve the agent API over TLS on this address (the server's
    /// certificate, see `[admin] cert`); nodes get its URL and the
    /// certificate's SHA-256 on their kernel command line, and the plain
    /// HTTP listener refuses the agent API. `None` (default): agents talk
    /// plain HTTP on `[http] listen`.
    pub tls_listen: Option<SocketAddr>,
}

/// `[loaders]`: file name of the iPXE loader per firmware, in `loaders_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Legacy BIOS loader; default `undionly.kpxe`.
    pub bios: String,
    /// `ipxe.efi` (own drivers) or `snponly.efi` (firmware's network stack).
    pub uefi_x64: String,
    /// UEFI arm64 loader; default `ipxe-arm64.efi`.
    pub uefi_arm64: String,
}

impl Config {
    /// The configured loaders, served by their names even when they are
    /// symlinks out of `loaders_dir` (Debian's `ipxe.efi`): see
    /// [`boot_fs::Pinned`].
    pub fn pinned_loaders(&self) -> boot_fs::Pinned {
        let l = &self.loaders;
        boot_fs::Pinned::new(
            &self.loaders_dir,
            [l.bios.as_str(), l.uefi_x64.as_str(), l.uefi_arm64.as_str()],
        )
    }
}

fn default_lease_secs() -> u64 {
    3600
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("state"),
            images_dir: PathBuf::from("images"),
            loaders_dir: PathBuf::from("/usr/lib/ipxe"),
            scripts_dir: None,
            server_ip: None,
            interface: None,
            default_image: None,
            admin_token: None,
            trust_boot_network: false,
            discovery_limit: 1024,
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            events: EventsConfig::default(),
            tftp: TftpConfig::default(),
            dhcp: DhcpConfig::default(),
            ra: RaConfig::default(),
            nbd: NbdConfig::default(),
            iscsi: IscsiConfig::default(),
            agent: AgentConfig::default(),
            engine: EngineConfig::default(),
            store: StoreConfig::default(),
            loaders: LoaderConfig::default(),
            power: PowerConfig::default(),
            metrics: MetricsConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            public_url: None,
        }
    }
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: true,
            listen: "0.0.0.0:69".parse().unwrap(),
            max_blksize: 1468,
            spin_us: boot_tftp::spin::DEFAULT_BUDGET.as_micros() as u64,
        }
    }
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: DhcpMode::Off,
            port: 67,
            proxy_port: 4011,
            coalesce_us: boot_dhcp::DEFAULT_COALESCE.as_micros() as u64,
            subnets: Vec::new(),
        }
    }
}

impl Default for RaConfig {
    fn default() -> Self {
        RaConfig { enabled: true }
    }
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            enabled: true,
            listen: "0.0.0.0:10809".parse().unwrap(),
            disks_dir: None,
        }
    }
}

impl Default for IscsiConfig {
    fn default() -> Self {
        IscsiConfig {
            enabled: false,
            listen: "0.0.0.0:3260".parse().unwrap(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            heartbeat_interval_secs: 5,
            heartbeat_timeout_secs: 20,
            tls_listen: None,
        }
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            bios: "undionly.kpxe".into(),
            uefi_x64: "ipxe.efi".into(),
            uefi_arm64: "ipxe-arm64.efi".into(),
        }
    }
}

impl Config {
    /// Loads `path`, or the defaults when `path` is None. Relative directories
    /// in a file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for dir in [
            &mut config.state_dir,
            &mut config.images_dir,
            &mut config.loaders_dir,
        ] {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        for d in [&mut config.scripts_dir, &mut config.power.credentials_file] {
            if let Some(d) = d.as_mut().filter(|d| d.is_relative()) {
                *d = base.join(&*d);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work together: DHCP without `server_ip`,
    /// full mode without a subnet, a bad CIDR, a weak admin token.
    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("store.url must be a postgres:// URL");
            }
            if self.store.controller_ttl_ms < 400 {
                bail!("store.controller_ttl_ms must be at least 400");
            }
        }
        if self.dhcp.mode != DhcpMode::Off {
            if self.server_ip.is_none() {
                bail!("dhcp.mode = {:?} needs server_ip", self.dhcp.mode);
            }
            if self.dhcp.mode == DhcpMode::Full && self.dhcp.subnets.is_empty() {
                bail!("dhcp.mode = \"full\" needs at least one [[dhcp.subnet]]");
            }
        }
        for s in &self.dhcp.subnets {
            parse_cidr(&s.network).with_context(|| format!("subnet {}", s.network))?;
        }
        if self.admin.cert.is_some() != self.admin.key.is_some() {
            bail!("[admin] cert and key go together: give both, or neither for a self-signed certificate");
        }
        if let Some(t) = &self.admin_token {
            crate::secret::check_admin_token(t).map_err(|e| anyhow::anyhow!("admin_token: {e}"))?;
        }
        self.alerts.validate()?;
        Ok(())
    }

    /// Base URL of the HTTP service as nodes see it.
    pub fn public_url(&self) -> String {
        if let Some(u) = &self.http.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let ip =
            self.server_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| match self.http.listen.ip() {
                    ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                    ip => ip.to_string(),
                });
        format!("http://{}:{}", ip, self.http.listen.port())
    }

    /// Base URL of the agent API as nodes see it: `https://` on `[agent]
    /// tls_listen` when set, else the HTTP service's [`Config::public_url`].
    pub fn agent_url(&self) -> String {
        match self.agent.tls_listen {
            Some(a) => {
                let ip = self.server_ip.map(IpAddr::V4).unwrap_or(match a.ip() {
                    ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    ip => ip,
                });
                format!("https://{}", SocketAddr::new(ip, a.port()))
            }
            None => self.public_url(),
        }
    }

    /// The admin API's Unix socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.state_dir.join("admin.sock")
    }

    /// The BMC credentials file: `power.credentials_file`, else `<state_dir>/power.toml`.
    pub fn power_credentials_file(&self) -> PathBuf {
        self.power
            .credentials_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("power.toml"))
    }

    /// Directory of the disk store: `nbd.disks_dir`, else `<state_dir>/disks`.
    pub fn disks_dir(&self) -> PathBuf {
        self.nbd
            .disks_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("disks"))
    }
}

/// `10.77.0.0/24` → (network, prefix length).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (net, len) = s.split_once('/').context("expected ADDRESS/PREFIX")?;
    let len: u8 = len.parse().context("prefix length")?;
    if len > 32 {
        bail!("prefix length {len} > 32");
    }
    Ok((net.parse().context("network address")?, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_full_dhcp_needs_a_subnet() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.dhcp.mode, DhcpMode::Off);
        let bad: Config =
            toml::from_str("server_ip = \"10.0.0.1\"\n[dhcp]\nmode = \"full\"\n").unwrap();
        assert!(bad.validate().is_err());
        let good: Config = toml::from_str(
            "server_ip = \"10.0.0.1\"\n[dhcp]\nmode = \"full\"\n[[dhcp.subnet]]\nnetwork = \"10.0.0.0/24\"\nrange = [\"10.0.0.10\", \"10.0.0.20\"]\n",
        )
        .unwrap();
        good.validate().unwrap();
        assert_eq!(good.public_url(), "http://10.0.0.1:8080");
    }

    #[test]
    fn weak_admin_tokens_are_refused() {
        for weak in ["", "x", "0123456789abcdef"] {
            let c: Config = toml::from_str(&format!("admin_token = \"{weak}\"")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("admin_token"), "{err}");
        }
        let c: Config =
            toml::from_str("admin_token = \"0123456789abcdef0123456789abcdef\"").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn alert_webhooks_by_kind_with_a_default() {
        let c: Config = toml::from_str(
            "[alerts]\nurl = \"http://hooks.example/all\"\n[alerts.kinds]\nnode-unavailable = \"https://pager.example/x\"\nenv-started = \"\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let a = &c.alerts;
        assert_eq!(
            a.url_for("node-unavailable").unwrap(),
            "https://pager.example/x"
        );
        assert_eq!(
            a.url_for("env-below-minimum").unwrap(),
            "http://hooks.example/all"
        );
        assert_eq!(a.url_for("env-started"), None);
        let bad: Config =
            toml::from_str("[alerts.kinds]\nnode-added = \"ftp://secret@x/\"\n").unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("alerts.kinds.node-added") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("stat_dir = \"x\"").is_err());
    }
}
