//! The command line. `serve` runs the server; `admin-token`, `backup` and
//! `restore` are the only commands that touch the state directory (restore
//! only while no server runs); every other command is a client of the
//! running server's admin API ([`client`]): over its Unix socket on the same
//! host, or `--server URL` with a token from elsewhere, so the server's
//! in-use checks, locks and agent wake-ups apply to every change.
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 unauthorised.

mod bundles;
pub mod client;
mod env_print;
mod envs;
mod print;

use crate::config::Config;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use client::{CallError, Client, Endpoint};
use hyper::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The parsed command line.
#[derive(Parser)]
#[command(
    name = "boot-server",
    version,
    about = "Network boot service: DHCP, TFTP, HTTP iPXE and NBD from a boot-image table"
)]
pub struct Cli {
    /// TOML configuration file (defaults apply without one). Admin commands
    /// use it to find the server's state directory and admin socket. Give it
    /// before the command (`boot-server -c FILE node list`), or after `serve`:
    /// after other commands `--config` is theirs (`env create --config KEY=VALUE`).
    #[arg(long, short, env = "BOOT_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory of the server to talk to (its admin socket), instead of the config's.
    #[arg(long, global = true, env = "BOOT_SERVER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Admin API of a remote server, e.g. http://10.0.0.1:8080 (token from
    /// BOOT_SERVER_TOKEN or --token-file).
    #[arg(long, global = true, env = "BOOT_SERVER_URL")]
    pub server: Option<String>,
    /// File holding the admin token (for --server).
    #[arg(long, global = true, env = "BOOT_SERVER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// For an https:// --server: trust the certificates (PEM) in this file
    /// (a CA, or the server's own certificate, e.g. its state_dir/tls/admin-cert.pem).
    #[arg(
        long,
        global = true,
        env = "BOOT_SERVER_CA_FILE",
        conflicts_with = "fingerprint"
    )]
    pub ca_file: Option<PathBuf>,
    /// For an https:// --server: accept exactly the certificate with this
    /// SHA-256 (64 hex digits, colons allowed; the server logs it at start).
    #[arg(long, global = true, env = "BOOT_SERVER_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// How `serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl Cli {
    /// The log format asked for (`serve --log-format`; text for other commands).
    pub fn log_format(&self) -> LogFormat {
        match self.command {
            Cmd::Serve { log_format, .. } => log_format,
            _ => LogFormat::Text,
        }
    }
}

/// The commands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the boot server.
    Serve {
        /// TOML configuration file (as `boot-server --config FILE serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log lines as human-readable text or as one JSON object per line
        /// (for journald / log shippers). Levels come from RUST_LOG (default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "BOOT_SERVER_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Manage the boot-image table.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Show, set or (with --clear) remove the image of nodes without an assignment.
    DefaultImage {
        /// Image to make the default (none: show the current one).
        name: Option<String>,
        /// Remove the default image instead.
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
    /// Assign an image to a node by MAC or SMBIOS UUID (or remove with --clear).
    Assign {
        /// MAC of the node.
        #[arg(long, required_unless_present = "uuid", conflicts_with = "uuid")]
        mac: Option<String>,
        /// SMBIOS UUID of the node.
        #[arg(long)]
        uuid: Option<String>,
        /// Image to assign.
        #[arg(required_unless_present = "clear")]
        image: Option<String>,
        /// Remove the node's assignment instead.
        #[arg(long)]
        clear: bool,
    },
    /// Nodes and their agents.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Application environments: the engine moves pool nodes into their slots.
    #[command(subcommand)]
    Env(Box<envs::EnvCmd>),
    /// Environment slots (host name, address, node, step of its move).
    #[command(subcommand)]
    Slot(envs::SlotCmd),
    /// Load-driven scaling policies of environments.
    #[command(subcommand)]
    Policy(envs::PolicyCmd),
    /// An agent command and its status.
    Command {
        /// Command id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Virtual disks: raw bases, per-node copy-on-write overlays, snapshots.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// DHCP reservations (fixed address and host name per MAC).
    #[command(subcommand)]
    Reservation(ReservationCmd),
    /// DHCP leases.
    Leases {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The event log (audit trail and boot timeline), one JSON object per line.
    Events {
        /// Only events of this node id.
        #[arg(long)]
        node: Option<String>,
        /// Only events with an id above this one.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Print the admin API token (reads the state directory).
    AdminToken,
    /// API tokens: admin, read-only, or operator of named environments.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The boot servers sharing the store: role, segment, version, last heartbeat.
    #[command(subcommand)]
    Server(ServerCmd),
    /// Failover hosts (`node-agent host`) that run VMs for failed-over slots.
    #[command(subcommand)]
    Host(HostCmd),
    /// Write a consistent copy of the server's state database to FILE.
    Backup {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Replace the state database with FILE (server stopped; the current one is kept as state.db.pre-restore).
    Restore {
        /// The backup to restore.
        file: PathBuf,
    },
}

/// Server registry commands.
#[derive(Subcommand)]
pub enum ServerCmd {
    /// List the servers sharing the store (a server silent for 5 s is down).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Designate the preferred controller: it takes the controller lease
    /// whenever it is up.
    Prefer {
        /// A registered server's name.
        #[arg(required_unless_present = "none")]
        name: Option<String>,
        /// Clear the preference (any server may keep the lease).
        #[arg(long, conflicts_with = "name")]
        none: bool,
    },
    /// Remove a down server from the registry.
    Forget {
        /// The server's name.
        name: String,
    },
}

/// API token commands.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token and print its secret (shown this once; the server keeps only a digest).
    Create {
        /// Unique name (the audit log records it).
        name: String,
        /// admin, read-only, or operator.
        #[arg(long, default_value = "read-only")]
        role: String,
        /// For an operator: an environment it may operate (repeatable).
        #[arg(long = "env", value_name = "ENV")]
        environments: Vec<String>,
        /// Print JSON (with the secret) instead of the secret alone.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens (names, roles, environments; never secrets).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: requests carrying it get 401 from now on.
    Revoke {
        /// Token name.
        name: String,
    },
}

/// Failover host commands.
#[derive(Subcommand)]
pub enum HostCmd {
    /// Enrol a host and print its secret (shown this once; give it to
    /// `node-agent host --credential-file`; the server keeps only a digest).
    Add {
        /// Unique name.
        name: String,
        /// Print JSON (with the secret) instead of the secret alone.
        #[arg(long)]
        json: bool,
    },
    /// List the hosts: state, capacity, VMs in use.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one host with its VMs.
    Show {
        /// Host name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a host (refused while it runs VMs); its secret stops working.
    Remove {
        /// Host name.
        name: String,
    },
}

/// Boot-image commands.
#[derive(Subcommand)]
pub enum ImageCmd {
    /// Add or update images from manifests (image.toml): the files they name
    /// are uploaded (paths relative to the manifest's images directory, e.g.
    /// images/ for images/lab/image.toml), or with --server-path the manifest
    /// is a file on the server, its paths relative to the server's images directory.
    Add {
        /// image.toml manifests to add.
        manifests: Vec<PathBuf>,
        /// The manifests are paths on the server (nothing is uploaded).
        #[arg(long)]
        server_path: bool,
    },
    /// Import every images/*/image.toml of the server's images directory.
    Import,
    /// List the images.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image from the table.
    Remove {
        /// Image name.
        name: String,
    },
}

/// Virtual-disk commands.
#[derive(Subcommand)]
pub enum DiskCmd {
    /// Create a read-only base disk from FILE (raw copied; qcow2 etc. converted),
    /// uploaded, or with --server-path a file on the server.
    AddBase {
        /// Name of the new base.
        name: String,
        /// Disk image file (raw, or a format qemu-img converts).
        file: PathBuf,
        /// FILE is a path on the server (nothing is uploaded).
        #[arg(long)]
        server_path: bool,
    },
    /// Create a copy-on-write overlay of a base.
    Create {
        /// Id of the new overlay.
        id: String,
        /// Base disk it starts from.
        #[arg(long)]
        base: String,
    },
    /// Snapshot an overlay (for cloning): a new overlay with its current contents.
    Snapshot {
        /// Overlay to snapshot.
        id: String,
        /// Id of the new overlay.
        snapshot: String,
    },
    /// List bases and overlays.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete an overlay (refused while attached or open) or, with --base, a base.
    Delete {
        /// Overlay (or, with --base, base) to delete.
        id: String,
        /// Delete a base disk instead of an overlay.
        #[arg(long)]
        base: bool,
    },
    /// Attach an overlay to a node: mints its export name; from the node's next
    /// boot on it is the node's root file system (`bootsrv.root=` on the kernel
    /// command line). With --now, the running agent also attaches it at once.
    /// With iSCSI on, also prints the overlay's iSCSI target and CHAP credentials.
    Attach {
        /// Overlay to attach.
        id: String,
        /// Node id.
        #[arg(long)]
        node: String,
        /// Also attach it on the running node now.
        #[arg(long)]
        now: bool,
        /// With --now: mount point on the node (none: block device only).
        #[arg(long, requires = "now")]
        mount: Option<String>,
    },
    /// Detach an overlay: its export (and iSCSI target) stops working and open
    /// connections (NBD and iSCSI) are closed.
    Detach {
        /// Overlay to detach.
        id: String,
    },
}

/// DHCP reservation commands.
#[derive(Subcommand)]
pub enum ReservationCmd {
    /// Reserve IP (and a host name) for MAC; moves the address if another MAC held it.
    Add {
        /// Client MAC.
        #[arg(long)]
        mac: String,
        /// Address to reserve.
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        /// Host name handed out with it (option 12).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// List the reservations.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove the reservation of a MAC.
    Remove {
        /// Client MAC.
        #[arg(long)]
        mac: String,
    },
}

/// Node commands.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// List the nodes.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one node.
    Show {
        /// Node id or MAC.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register a node ahead of its first boot (labels, power control).
    Add {
        /// MAC of the node's boot interface.
        #[arg(long)]
        mac: String,
        /// Serial number (SMBIOS).
        #[arg(long)]
        serial: Option<String>,
        /// KEY=VALUE (repeatable), e.g. rack=r1.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = envs::parse_kv)]
        labels: Vec<(String, String)>,
        /// ipmi://HOST[:PORT] or qmp:///PATH
        #[arg(long)]
        power: Option<String>,
    },
    /// Cold reboot through firmware and PXE.
    Reboot {
        /// Node id or MAC.
        id: String,
    },
    /// Point the firmware at network boot, then reboot.
    Reprovision {
        /// Node id or MAC.
        id: String,
    },
    /// Warm reprovision: kexec straight into IMAGE (also assigns it).
    Kexec {
        /// Node id or MAC.
        id: String,
        /// Image to boot.
        image: String,
    },
    /// Load IMAGE on the node ahead of a decision (no jump): a later
    /// `kexec` into IMAGE only jumps. The engine does this by itself for the
    /// environment an idle node most likely joins next.
    Prestage {
        /// Node id or MAC.
        id: String,
        /// Image to stage.
        image: String,
    },
    /// Power control through the node's BMC or QEMU monitor: status, on,
    /// off (hard), cycle, pxe (boot from the network next).
    Power {
        /// Node id or MAC.
        id: String,
        /// status | on | off | cycle | pxe
        #[arg(default_value = "status")]
        action: String,
    },
    /// Take a node out of service (kept up, never allocated).
    Quarantine {
        /// Node id or MAC.
        id: String,
    },
    /// Return a quarantined node to the pool.
    Release {
        /// Node id or MAC.
        id: String,
    },
    /// Retire a node for good.
    Retire {
        /// Node id or MAC.
        id: String,
    },
    /// Mark a failed node repaired: the slots whose home it is move back
    /// to it (per their environment's failback policy).
    Repaired {
        /// Node id or MAC.
        id: String,
    },
    /// The node's agent commands, newest first.
    Commands {
        /// Node id or MAC.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The node's boot timeline: DHCP, loader, script, kernel, initrd, agent
    /// ready, in seconds since SINCE_MS (e.g. power-on; default the first event shown).
    Timeline {
        /// Node id or MAC.
        id: String,
        /// Only events at or after this time (ms since the Unix epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// First wait up to this many seconds for the agent to report ready.
        #[arg(long)]
        wait: Option<u64>,
    },
}

/// Why the CLI failed, with its exit code.
pub struct Failure {
    /// Process exit code (see the module doc).
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        let code = error
            .downcast_ref::<CallError>()
            .map(CallError::exit_code)
            .unwrap_or(1);
        Failure { code, error }
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure {
            code: e.exit_code(),
            error: anyhow::Error::new(e),
        }
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> std::result::Result<(), Failure> {
    let file = match &cli.command {
        Cmd::Serve {
            config: Some(f), ..
        } => Some(f.as_path()),
        _ => cli.config.as_deref(),
    };
    let mut config = Config::load(file)?;
    if let Some(d) = &cli.state_dir {
        config.state_dir = d.clone();
    }
    match cli.command {
        Cmd::Serve { .. } => return Ok(crate::serve::run(config).await?),
        Cmd::AdminToken => {
            println!("{}", crate::serve::admin_token(&config)?);
            return Ok(());
        }
        Cmd::Restore { file } => return Ok(restore(&config, &file).await?),
        _ => {}
    }
    let endpoint = match &cli.server {
        Some(url) => {
            let url = url.trim_end_matches('/');
            let (authority, https) = if let Some(a) = url.strip_prefix("https://") {
                (a.to_string(), true)
            } else if let Some(a) = url.strip_prefix("http://") {
                (a.to_string(), false)
            } else {
                return Err(anyhow::anyhow!(
                    "--server {url}: give http://HOST:PORT or https://HOST:PORT"
                )
                .into());
            };
            let tls = match (https, &cli.ca_file, &cli.fingerprint) {
                (false, None, None) => None,
                (false, _, _) => {
                    return Err(anyhow::anyhow!(
                        "--ca-file and --fingerprint are for an https:// --server"
                    )
                    .into())
                }
                (true, Some(f), _) => Some(crate::tls::Trust::CaFile(f.clone())),
                (true, None, Some(fp)) => Some(crate::tls::Trust::Fingerprint(
                    crate::tls::parse_fingerprint(fp)?,
                )),
                (true, None, None) => {
                    return Err(anyhow::anyhow!(
                        "an https:// --server needs --ca-file FILE or --fingerprint HEX \
                         (the server logs its certificate's SHA-256 at start)"
                    )
                    .into())
                }
            };
            let tls = match tls {
                Some(t) => Some(client::TlsTarget::new(&authority, &t)?),
                None => None,
            };
            let token = match (std::env::var("BOOT_SERVER_TOKEN"), &cli.token_file) {
                (Ok(t), _) if !t.trim().is_empty() => t.trim().to_string(),
                (_, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading the token file {}", f.display()))?
                    .trim()
                    .to_string(),
                _ => {
                    return Err(anyhow::anyhow!(
                    "--server needs the admin token: set BOOT_SERVER_TOKEN or give --token-file"
                )
                    .into())
                }
            };
            Endpoint::Tcp {
                authority,
                token,
                tls,
            }
        }
        None => Endpoint::Socket(config.admin_socket()),
    };
    let c = Client::new(endpoint);
    command(&c, cli.command).await
}

async fn restore(config: &Config, file: &Path) -> Result<()> {
    if tokio::net::UnixStream::connect(config.admin_socket())
        .await
        .is_ok()
    {
        bail!(
            "a boot-server is running on {}: stop it before restoring",
            config.state_dir.display()
        );
    }
    let db = config.state_dir.join("state.db");
    // Check that the file is a database this build can open (upgrading it if older).
    let check = tempfile::tempdir()?;
    std::fs::copy(file, check.path().join("state.db"))
        .with_context(|| format!("reading {}", file.display()))?;
    crate::store::SqliteStore::open(check.path())
        .with_context(|| format!("{} is not a usable state database", file.display()))?;
    crate::fsutil::private_dir(&config.state_dir)?;
    if db.exists() {
        std::fs::rename(&db, config.state_dir.join("state.db.pre-restore"))?;
    }
    for side in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(config.state_dir.join(side));
    }
    std::fs::copy(check.path().join("state.db"), &db)?;
    crate::fsutil::restrict_file(&db)?;
    println!("restored {} into {}", file.display(), db.display());
    Ok(())
}

fn enc(s: &str) -> String {
    // Path segments: names are [A-Za-z0-9._:-]; escape anything else.
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn server_command(c: &Client, cmd: ServerCmd) -> std::result::Result<(), Failure> {
    match cmd {
        ServerCmd::List { json } => {
            let v = c.json(Method::GET, "/api/servers", None).await?;
            if json {
                show(&v);
                return Ok(());
            }
            println!(
                "{:<16} {:<11} {:<9} {:<18} {:<10} {:>13} LISTEN",
                "NAME", "ROLE", "PREFERRED", "SEGMENT", "VERSION", "HEARTBEAT"
            );
            for s in v.as_array().into_iter().flatten() {
                let listen: Vec<&str> = s["listen"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let age = s["heartbeat_age_ms"].as_i64().unwrap_or(0);
                println!(
                    "{:<16} {:<11} {:<9} {:<18} {:<10} {:>13} {}",
                    s["name"].as_str().unwrap_or("?"),
                    s["role"].as_str().unwrap_or("?"),
                    if s["preferred"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        ""
                    },
                    s["segment"].as_str().unwrap_or(""),
                    s["version"].as_str().unwrap_or(""),
                    format!("{:.1} s ago", age as f64 / 1000.0),
                    listen.join(" ")
                );
            }
        }
        ServerCmd::Prefer { name, none: _ } => {
            c.json(
                Method::PUT,
                "/api/servers/preferred",
                Some(json!({ "name": name })),
            )
            .await?;
            match name {
                Some(n) => println!("preferred controller: {n}"),
                None => println!("no preferred controller"),
            }
        }
        ServerCmd::Forget { name } => {
            c.json(
                Method::DELETE,
                &format!("/api/servers/{}", enc(&name)),
                None,
            )
            .await?;
            println!("forgot {name}");
        }
    }
    Ok(())
}

async fn token_command(c: &Client, cmd: TokenCmd) -> std::result::Result<(), Failure> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            environments,
            json,
        } => {
            let v = c
                .json(
                    Method::POST,
                    "/api/tokens",
                    Some(json!({ "name": name, "role": role, "environments": environments })),
                )
                .await?;
            if json {
                show(&v)
            } else {
                println!("{}", v["secret"].as_str().unwrap_or_default());
            }
        }
        TokenCmd::List { json } => {
            let v = c.json(Method::GET, "/api/tokens", None).await?;
            if json {
                show(&v)
            } else {
                println!(
                    "{:<24} {:<10} {:<10} ENVIRONMENTS",
                    "NAME", "ROLE", "SHA256"
                );
                for t in v.as_array().into_iter().flatten() {
                    let envs: Vec<&str> = t["environments"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<24} {:<10} {:<10} {}",
                        t["name"].as_str().unwrap_or("?"),
                        t["role"].as_str().unwrap_or("?"),
                        t["fingerprint"].as_str().unwrap_or(""),
                        envs.join(",")
                    );
                }
            }
        }
        TokenCmd::Revoke { name } => {
            c.json(Method::DELETE, &format!("/api/tokens/{}", enc(&name)), None)
                .await?;
            println!("revoked {name}");
        }
    }
    Ok(())
}

async fn host_command(c: &Client, cmd: HostCmd) -> std::result::Result<(), Failure> {
    let line = |h: &Value| {
        let cap = &h["capacity"];
        println!(
            "{:<20} {:<6} {:>4} {:>8} {:>3}/{:<3} {:<4} {}",
            h["name"].as_str().unwrap_or("?"),
            h["state"].as_str().unwrap_or("?"),
            cap["cpus"].as_u64().map_or("-".into(), |v| v.to_string()),
            cap["memory_bytes"]
                .as_u64()
                .map_or("-".into(), |v| format!("{}M", v >> 20)),
            h["vms_in_use"].as_u64().unwrap_or(0),
            cap["reserve"]
                .as_u64()
                .map_or("-".into(), |v| v.to_string()),
            if cap["kvm"].as_bool() == Some(true) {
                "kvm"
            } else {
                "tcg"
            },
            h["fingerprint"].as_str().unwrap_or("")
        );
    };
    let header = || {
        println!(
            "{:<20} {:<6} {:>4} {:>8} {:>7} {:<4} SHA256",
            "NAME", "STATE", "CPUS", "MEMORY", "VMS/M", "ACCEL"
        )
    };
    match cmd {
        HostCmd::Add { name, json } => {
            let v = c
                .json(Method::POST, "/api/hosts", Some(json!({ "name": name })))
                .await?;
            if json {
                show(&v)
            } else {
                println!("{}", v["secret"].as_str().unwrap_or_default());
            }
        }
        HostCmd::List { json } => {
            let v = c.json(Method::GET, "/api/hosts", None).await?;
            if json {
                show(&v)
            } else {
                header();
                v.as_array().into_iter().flatten().for_each(line);
            }
        }
        HostCmd::Show { name, json } => {
            let v = c
                .json(Method::GET, &format!("/api/hosts/{}", enc(&name)), None)
                .await?;
            if json {
                show(&v)
            } else {
                header();
                line(&v);
                println!("VMS:");
                for vm in v["vms"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<18} {:<10} {}/{} node {} cpus {} mem {}M {} ({})",
                        vm["id"].as_str().unwrap_or("?"),
                        vm["state"].as_str().unwrap_or("?"),
                        vm["environment"].as_str().unwrap_or("?"),
                        vm["slot"],
                        vm["node"].as_str().unwrap_or("?"),
                        vm["cpus"],
                        vm["memory_mb"],
                        vm["firmware"].as_str().unwrap_or("?"),
                        vm["detail"].as_str().unwrap_or("")
                    );
                }
            }
        }
        HostCmd::Remove { name } => {
            c.json(Method::DELETE, &format!("/api/hosts/{}", enc(&name)), None)
                .await?;
            println!("removed {name}");
        }
    }
    Ok(())
}

fn show(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn command(c: &Client, cmd: Cmd) -> std::result::Result<(), Failure> {
    match cmd {
        Cmd::Serve { .. } | Cmd::AdminToken | Cmd::Restore { .. } => unreachable!("handled before"),
        Cmd::Image(ImageCmd::Add {
            manifests,
            server_path,
        }) => {
            if manifests.is_empty() {
                return Err(anyhow::anyhow!("give one or more image.toml files").into());
            }
            for m in manifests {
                let image = if server_path {
                    c.json(
                        Method::POST,
                        "/api/images",
                        Some(json!({ "server_path": m })),
                    )
                    .await?
                } else {
                    upload_image(c, &m).await?
                };
                println!(
                    "added {} ({} bytes)",
                    image["name"].as_str().unwrap_or("?"),
                    image["size_bytes"]
                );
            }
        }
        Cmd::Image(ImageCmd::Import) => {
            let r = c.json(Method::POST, "/api/images/import", None).await?;
            println!("imported: {}", r["imported"]);
        }
        Cmd::Image(ImageCmd::List { json }) => {
            let v = c.json(Method::GET, "/api/images", None).await?;
            if json {
                show(&v)
            } else {
                print::images(&v)
            }
        }
        Cmd::Image(ImageCmd::Remove { name }) => {
            c.json(Method::DELETE, &format!("/api/images/{}", enc(&name)), None)
                .await?;
        }
        Cmd::DefaultImage { name, clear } => {
            if clear || name.is_some() {
                c.json(
                    Method::PUT,
                    "/api/default-image",
                    Some(json!({ "image": name })),
                )
                .await?;
            } else {
                let v = c.json(Method::GET, "/api/default-image", None).await?;
                println!("{}", v["image"].as_str().unwrap_or("(none)"));
            }
        }
        Cmd::Assign {
            mac,
            uuid,
            image,
            clear,
        } => {
            let image = if clear { None } else { image };
            c.json(
                Method::PUT,
                "/api/assignments",
                Some(json!({ "mac": mac, "uuid": uuid, "image": image })),
            )
            .await?;
        }
        Cmd::Node(cmd) => node_command(c, cmd).await?,
        Cmd::Env(cmd) => envs::env_command(c, *cmd).await?,
        Cmd::Slot(cmd) => envs::slot_command(c, cmd).await?,
        Cmd::Policy(cmd) => envs::policy_command(c, cmd).await?,
        Cmd::Command { id, json } => {
            let v = c
                .json(Method::GET, &format!("/api/commands/{id}"), None)
                .await?;
            if json {
                show(&v)
            } else {
                print::commands(&Value::Array(vec![v]))
            }
        }
        Cmd::Disk(cmd) => disk_command(c, cmd).await?,
        Cmd::Reservation(ReservationCmd::Add { mac, ip, hostname }) => {
            c.json(
                Method::PUT,
                &format!("/api/reservations/{}", enc(&mac)),
                Some(json!({ "ip": ip, "hostname": hostname })),
            )
            .await?;
        }
        Cmd::Reservation(ReservationCmd::List { json }) => {
            let v = c.json(Method::GET, "/api/reservations", None).await?;
            if json {
                show(&v)
            } else {
                print::reservations(&v)
            }
        }
        Cmd::Reservation(ReservationCmd::Remove { mac }) => {
            c.json(
                Method::DELETE,
                &format!("/api/reservations/{}", enc(&mac)),
                None,
            )
            .await?;
        }
        Cmd::Token(t) => token_command(c, t).await?,
        Cmd::Server(t) => server_command(c, t).await?,
        Cmd::Host(h) => host_command(c, h).await?,
        Cmd::Leases { json } => {
            let v = c.json(Method::GET, "/api/leases", None).await?;
            if json {
                show(&v)
            } else {
                print::leases(&v)
            }
        }
        Cmd::Events { node, after, limit } => {
            let mut path = format!("/api/events?after={after}&limit={limit}");
            if let Some(n) = node {
                path.push_str(&format!("&node={}", enc(&n)));
            }
            let v = c.json(Method::GET, &path, None).await?;
            for e in v.as_array().into_iter().flatten() {
                println!("{e}");
            }
        }
        Cmd::Backup { file } => {
            let bytes = c.get_bytes("/api/backup").await?;
            crate::fsutil::write_private(&file, &bytes)?;
            println!(
                "backup written to {} ({} bytes)",
                file.display(),
                bytes.len()
            );
        }
    }
    Ok(())
}

/// Uploads the files a local manifest names, then adds the manifest with
/// its paths pointing at the uploaded copies.
async fn upload_image(c: &Client, manifest: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let name = doc
        .get("name")
        .and_then(|v| v.as_str())
        .context("the manifest has no name")?
        .to_string();
    let dir = manifest.parent().unwrap_or(Path::new("."));
    // Round-1 layout: images/<name>/image.toml with paths relative to images/.
    let bases = [dir.parent().unwrap_or(dir).to_path_buf(), dir.to_path_buf()];
    for key in ["kernel", "initrd"] {
        let Some(rel) = doc.get(key).and_then(|v| v.as_str()).map(str::to_string) else {
            continue;
        };
        let local = bases
            .iter()
            .map(|b| b.join(&rel))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{key} {rel}: not found next to {} (or use --server-path)",
                    manifest.display()
                )
            })?;
        let file = local
            .file_name()
            .and_then(|f| f.to_str())
            .context("file name")?
            .to_string();
        let r = c
            .upload(
                &format!("/api/images/{}/files/{}", enc(&name), enc(&file)),
                &local,
            )
            .await?;
        let path = r["path"]
            .as_str()
            .context("upload answer without a path")?
            .to_string();
        doc.insert(key.to_string(), toml::Value::String(path));
    }
    Ok(c.json(
        Method::POST,
        "/api/images",
        Some(json!({ "manifest": toml::to_string(&doc)? })),
    )
    .await?)
}

async fn disk_command(c: &Client, cmd: DiskCmd) -> std::result::Result<(), Failure> {
    match cmd {
        DiskCmd::AddBase {
            name,
            file,
            server_path,
        } => {
            let v = if server_path {
                c.json(
                    Method::POST,
                    "/api/disks/bases",
                    Some(json!({ "name": name, "server_path": file })),
                )
                .await?
            } else {
                c.upload(&format!("/api/disks/bases/{}", enc(&name)), &file)
                    .await?
            };
            println!(
                "base {} ({} bytes)",
                v["name"].as_str().unwrap_or(&name),
                v["size"]
            );
        }
        DiskCmd::Create { id, base } => {
            let v = c
                .json(
                    Method::POST,
                    "/api/disks/overlays",
                    Some(json!({ "id": id, "base": base })),
                )
                .await?;
            println!("overlay {} on {} ({} bytes)", id, base, v["size"]);
        }
        DiskCmd::Snapshot { id, snapshot } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/api/disks/{}/snapshot", enc(&id)),
                    Some(json!({ "snapshot": snapshot })),
                )
                .await?;
            println!(
                "snapshot {snapshot} of {id} ({} bytes allocated)",
                v["allocated_bytes"]
            );
        }
        DiskCmd::List { json } => {
            let v = c.json(Method::GET, "/api/disks", None).await?;
            if json {
                show(&v)
            } else {
                print::disks(&v)
            }
        }
        DiskCmd::Delete { id, base } => {
            c.json(
                Method::DELETE,
                &format!("/api/disks/{}?base={base}", enc(&id)),
                None,
            )
            .await?;
        }
        DiskCmd::Attach {
            id,
            node,
            now,
            mount,
        } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/api/disks/{}/attach", enc(&id)),
                    Some(json!({ "node": node, "now": now, "mount": mount })),
                )
                .await?;
            println!(
                "attached {id} to {} as export {}",
                v["node"].as_str().unwrap_or(&node),
                v["export"].as_str().unwrap_or("?")
            );
            if let Some(t) = v["iscsi"].as_object() {
                let s = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("?");
                println!(
                    "iscsi target {} chap-user {} chap-secret {} reverse-user {} reverse-secret {}",
                    s("target"),
                    s("chap_user"),
                    s("chap_secret"),
                    s("reverse_user"),
                    s("reverse_secret")
                );
            }
        }
        DiskCmd::Detach { id } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/api/disks/{}/detach", enc(&id)),
                    None,
                )
                .await?;
            println!(
                "detached {id} ({} open connection(s) closed)",
                v["connections_closed"]
            );
        }
    }
    Ok(())
}

async fn node_command(c: &Client, cmd: NodeCmd) -> std::result::Result<(), Failure> {
    let queue = |id: String, body: Value| async move {
        let v = c
            .json(
                Method::POST,
                &format!("/api/nodes/{}/commands", enc(&id)),
                Some(body),
            )
            .await?;
        println!("queued command {} for {id}", v["id"]);
        std::result::Result::<(), Failure>::Ok(())
    };
    let set_state = |id: String, state: &'static str| async move {
        let v = c
            .json(
                Method::PUT,
                &format!("/api/nodes/{}/state", enc(&id)),
                Some(json!({ "state": state })),
            )
            .await?;
        println!(
            "{} is {}",
            v["id"].as_str().unwrap_or(&id),
            v["state"].as_str().unwrap_or(state)
        );
        std::result::Result::<(), Failure>::Ok(())
    };
    match cmd {
        NodeCmd::List { json } => {
            let v = c.json(Method::GET, "/api/nodes", None).await?;
            if json {
                show(&v)
            } else {
                print::nodes(&v)
            }
        }
        NodeCmd::Show { id, json } => {
            let v = c
                .json(Method::GET, &format!("/api/nodes/{}", enc(&id)), None)
                .await?;
            if json {
                show(&v)
            } else {
                print::node(&v)
            }
        }
        NodeCmd::Add {
            mac,
            serial,
            labels,
            power,
        } => {
            let mut map = serde_json::Map::new();
            for (k, v) in labels {
                map.insert(k, Value::String(v));
            }
            let v = c
                .json(
                    Method::POST,
                    "/api/nodes",
                    Some(json!({ "mac": mac, "serial": serial, "labels": map, "power": power })),
                )
                .await?;
            println!(
                "enrolled {} ({}), {}",
                v["id"].as_str().unwrap_or("?"),
                v["mac"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?")
            );
        }
        NodeCmd::Reboot { id } => queue(id, json!({ "kind": "reboot" })).await?,
        NodeCmd::Reprovision { id } => queue(id, json!({ "kind": "reprovision" })).await?,
        NodeCmd::Kexec { id, image } => {
            queue(id, json!({ "kind": "kexec", "image": image })).await?
        }
        NodeCmd::Prestage { id, image } => {
            queue(id, json!({ "kind": "prestage", "image": image })).await?
        }
        NodeCmd::Power { id, action } => {
            let path = format!("/api/nodes/{}/power", enc(&id));
            let v = if action == "status" {
                c.json(Method::GET, &path, None).await?
            } else {
                c.json(Method::POST, &path, Some(json!({ "action": action })))
                    .await?
            };
            println!("{id}: power {}", v["state"].as_str().unwrap_or("unknown"));
        }
        NodeCmd::Quarantine { id } => set_state(id, "quarantined").await?,
        NodeCmd::Release { id } => set_state(id, "idle").await?,
        NodeCmd::Retire { id } => set_state(id, "retired").await?,
        NodeCmd::Repaired { id } => {
            let v = c
                .json(
                    Method::POST,
                    &format!("/api/nodes/{}/repaired", enc(&id)),
                    None,
                )
                .await?;
            println!(
                "{} marked repaired ({})",
                v["id"].as_str().unwrap_or(&id),
                v["state"].as_str().unwrap_or("?")
            );
        }
        NodeCmd::Commands { id, json } => {
            let v = c
                .json(
                    Method::GET,
                    &format!("/api/nodes/{}/commands", enc(&id)),
                    None,
                )
                .await?;
            if json {
                show(&v)
            } else {
                print::commands(&v)
            }
        }
        NodeCmd::Timeline { id, since_ms, wait } => {
            timeline(c, &id, since_ms.unwrap_or(0), wait).await?
        }
    }
    Ok(())
}

/// Prints a node's timeline; with `wait`, first waits (long polls on the
/// event log) until its agent reports ready after `since`.
async fn timeline(
    c: &Client,
    id: &str,
    since: i64,
    wait: Option<u64>,
) -> std::result::Result<(), Failure> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait.unwrap_or(0));
    // With --wait, a node that has not booted yet is waited for too.
    let node = loop {
        match c
            .json(Method::GET, &format!("/api/nodes/{}", enc(id)), None)
            .await
        {
            Ok(n) => break n,
            Err(e) if e.exit_code() == 3 && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    };
    let node_id = node["id"].as_str().unwrap_or(id).to_string();
    let mut events: Vec<Value> = Vec::new();
    let mut after = 0i64;
    loop {
        let left = deadline
            .saturating_duration_since(std::time::Instant::now())
            .as_secs();
        let w = if wait.is_some() { left.min(30) } else { 0 };
        let v = c
            .json(
                Method::GET,
                &format!(
                    "/api/events?node={}&after={after}&limit=10000&wait={w}",
                    enc(&node_id)
                ),
                None,
            )
            .await?;
        let batch = v.as_array().cloned().unwrap_or_default();
        if let Some(last) = batch.last() {
            after = last["id"].as_i64().unwrap_or(after);
        }
        let more = !batch.is_empty();
        events.extend(batch);
        let ready = events.iter().any(|e| {
            e["kind"] == crate::model::EventKind::AgentReady.as_str()
                && e["at_ms"].as_i64().unwrap_or(0) >= since
        });
        if wait.is_none() && !more {
            break;
        }
        if wait.is_some() && ready && !more {
            break;
        }
        if wait.is_some() && std::time::Instant::now() >= deadline && !more {
            return Err(anyhow::anyhow!(
                "node {node_id} did not report ready within {} s",
                wait.unwrap_or(0)
            )
            .into());
        }
    }
    // Re-read: the boot may have changed the node's image while we waited.
    let node = c
        .json(Method::GET, &format!("/api/nodes/{}", enc(&node_id)), None)
        .await?;
    let image = match node["booted_image"].as_str() {
        Some(name) => c
            .json(Method::GET, "/api/images", None)
            .await?
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name).cloned()),
        None => None,
    };
    print::timeline(&node, image.as_ref(), &events, since);
    Ok(())
}
