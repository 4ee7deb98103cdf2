//! The command line: `serve` and the admin commands. Admin commands work on
//! the state directory directly (SQLite allows it while the server runs), so
//! they need no server; commands for a node's agent are queued in the store
//! and picked up by the server's long poll.

use crate::config::Config;
use crate::plan::BootPlan;
use crate::store::{format_mac, now_ms, parse_mac, Selector, SqliteStore, Store};
use anyhow::{bail, Context, Result};
use boot_proto::CommandKind;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "boot-server",
    version,
    about = "Network boot service: DHCP, TFTP, HTTP iPXE and NBD from a boot-image table"
)]
pub struct Cli {
    /// TOML configuration file (defaults apply without one).
    #[arg(long, short, global = true, env = "BOOT_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the boot server.
    Serve,
    /// Manage the boot-image table.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Set (or with --clear, remove) the image of nodes without an assignment.
    DefaultImage {
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
    /// Assign an image to a node by MAC or SMBIOS UUID (or remove with --clear).
    Assign {
        #[arg(long, required_unless_present = "uuid", conflicts_with = "uuid")]
        mac: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(required_unless_present = "clear")]
        image: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Nodes and their agents.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Virtual disks: raw bases, per-node copy-on-write overlays, snapshots.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// DHCP leases.
    Leases {
        #[arg(long)]
        json: bool,
    },
    /// The event log (audit trail and boot timeline).
    Events {
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Print the admin API token.
    AdminToken,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Add or update images from manifests (image.toml).
    Add {
        manifests: Vec<PathBuf>,
    },
    /// Import every images/*/image.toml of the images directory.
    Import,
    List {
        #[arg(long)]
        json: bool,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Create a read-only base disk from a file (raw copied; qcow2 etc. converted).
    AddBase {
        name: String,
        file: PathBuf,
    },
    /// Create a copy-on-write overlay of a base.
    Create {
        id: String,
        #[arg(long)]
        base: String,
    },
    /// Snapshot an overlay (for cloning): a new overlay with its current contents.
    Snapshot {
        id: String,
        snapshot: String,
    },
    List,
    /// Delete an overlay (refused while attached) or, with --base, a base.
    Delete {
        id: String,
        #[arg(long)]
        base: bool,
    },
    /// Attach an overlay to a node: mints its export name; from the node's next
    /// boot on it is the node's root file system (`bootsrv.root=` on the kernel
    /// command line). With --now, the running agent also attaches it at once.
    Attach {
        id: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        now: bool,
        /// With --now: mount point on the node (none: block device only).
        #[arg(long, requires = "now")]
        mount: Option<String>,
    },
    Detach {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        id: String,
    },
    /// Cold reboot through firmware and PXE.
    Reboot {
        id: String,
    },
    /// Point the firmware at network boot, then reboot.
    Reprovision {
        id: String,
    },
    /// Warm reprovision: kexec straight into IMAGE (also assigns it).
    Kexec {
        id: String,
        image: String,
    },
    /// The node's boot timeline: DHCP, loader, script, kernel, initrd, agent
    /// ready, in seconds since SINCE_MS (e.g. power-on; default the first event shown).
    Timeline {
        id: String,
        /// Only events at or after this time (ms since the Unix epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// First wait up to this many seconds for the agent to report ready.
        #[arg(long)]
        wait: Option<u64>,
    },
}

pub async fn run(cli: Cli) -> Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    if let Cmd::Serve = cli.command {
        return crate::serve::run(config).await;
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.state_dir)?);
    match cli.command {
        Cmd::Serve => unreachable!(),
        Cmd::Image(ImageCmd::Add { manifests }) => {
            if manifests.is_empty() {
                bail!("give one or more image.toml files");
            }
            for m in manifests {
                let image = crate::images::load_manifest(&m, &config.images_dir)?;
                store.put_image(&image).await?;
                println!("added {} ({} bytes)", image.name, image.size_bytes);
            }
        }
        Cmd::Image(ImageCmd::Import) => {
            crate::serve::import_images(&store, &config.images_dir).await?
        }
        Cmd::Image(ImageCmd::List { json }) => {
            let images = store.images().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                let default = store.default_image().await?;
                println!(
                    "{:<16} {:<10} {:<10} {:>12}  {}",
                    "NAME", "KIND", "VERSION", "BYTES", "ARCHS"
                );
                for i in images {
                    let mark = if default.as_deref() == Some(i.name.as_str()) {
                        " (default)"
                    } else {
                        ""
                    };
                    println!(
                        "{:<16} {:<10} {:<10} {:>12}  {}{mark}",
                        i.name,
                        format!("{:?}", i.kind).to_lowercase(),
                        i.version,
                        i.size_bytes,
                        i.archs.join(",")
                    );
                }
            }
        }
        Cmd::Image(ImageCmd::Remove { name }) => store.remove_image(&name).await?,
        Cmd::DefaultImage { name, clear } => {
            if clear {
                store.set_default_image(None).await?;
            } else if let Some(name) = name {
                store.set_default_image(Some(&name)).await?;
            } else {
                println!(
                    "{}",
                    store
                        .default_image()
                        .await?
                        .unwrap_or_else(|| "(none)".into())
                );
            }
        }
        Cmd::Assign {
            mac,
            uuid,
            image,
            clear,
        } => {
            let selector = match (mac, uuid) {
                (Some(m), _) => Selector::Mac(format_mac(
                    parse_mac(&m).with_context(|| format!("not a MAC address: {m}"))?,
                )),
                (None, Some(u)) => Selector::Uuid(u.to_ascii_lowercase()),
                (None, None) => bail!("give --mac or --uuid"),
            };
            let image = if clear { None } else { image };
            store.assign(&selector, image.as_deref()).await?;
            store
                .record_event(
                    None,
                    "assigned",
                    serde_json::json!({ "selector": selector, "image": image }),
                )
                .await?;
        }
        Cmd::Node(cmd) => node_command(cmd, store, config).await?,
        Cmd::Disk(cmd) => disk_command(cmd, store, config).await?,
        Cmd::Leases { json } => {
            let leases = store.leases().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&leases)?);
            } else {
                let now = now_ms();
                println!("{:<17} {:<15} {:>10}  HOSTNAME", "MAC", "IP", "EXPIRES_S");
                for l in leases {
                    println!(
                        "{:<17} {:<15} {:>10}  {}",
                        l.mac,
                        l.ip,
                        (l.expires_at_ms - now) / 1000,
                        l.hostname.unwrap_or_default()
                    );
                }
            }
        }
        Cmd::Events { node, after, limit } => {
            for e in store.events(after, node.as_deref(), limit).await? {
                println!("{}", serde_json::to_string(&e)?);
            }
        }
        Cmd::AdminToken => println!("{}", crate::serve::admin_token(&config)?),
    }
    Ok(())
}

async fn disk_command(cmd: DiskCmd, store: Arc<dyn Store>, config: Config) -> Result<()> {
    let disks = boot_nbd::DiskStore::open(&config.disks_dir())?;
    match cmd {
        DiskCmd::AddBase { name, file } => {
            let b = disks.create_base_from_file(&name, &file)?;
            println!("base {} ({} bytes)", b.name, b.size);
        }
        DiskCmd::Create { id, base } => {
            let o = disks.create_overlay(&id, &base)?;
            println!("overlay {} on {} ({} bytes)", o.id, o.base, o.size);
        }
        DiskCmd::Snapshot { id, snapshot } => {
            let o = disks.snapshot_overlay(&id, &snapshot)?;
            println!(
                "snapshot {} of {id} ({} bytes allocated{})",
                o.id,
                o.allocated_bytes,
                if o.reflinked {
                    ", reflinked"
                } else {
                    ", copied"
                }
            );
        }
        DiskCmd::List => {
            let attached: std::collections::HashMap<String, String> = store
                .disk_attachments()
                .await?
                .into_iter()
                .map(|a| (a.overlay, a.node))
                .collect();
            println!(
                "{:<8} {:<20} {:<16} {:>14} {:>14}  NODE",
                "KIND", "NAME", "BASE", "SIZE", "ALLOCATED"
            );
            for b in disks.list_bases()? {
                println!(
                    "{:<8} {:<20} {:<16} {:>14} {:>14}",
                    "base", b.name, "-", b.size, b.size
                );
            }
            for o in disks.list_overlays()? {
                let kind = if o.origin.is_some() {
                    "snapshot"
                } else {
                    "overlay"
                };
                let node = attached.get(&o.id).map(String::as_str).unwrap_or("-");
                println!(
                    "{:<8} {:<20} {:<16} {:>14} {:>14}  {node}",
                    kind, o.id, o.base, o.size, o.allocated_bytes
                );
            }
        }
        DiskCmd::Delete { id, base } => {
            if base {
                disks.delete_base(&id)?;
            } else {
                if store
                    .disk_attachments()
                    .await?
                    .iter()
                    .any(|a| a.overlay == id)
                {
                    bail!("overlay {id} is attached to a node; detach it first");
                }
                disks.delete_overlay(&id)?;
            }
        }
        DiskCmd::Attach {
            id,
            node,
            now,
            mount,
        } => {
            if !disks.list_overlays()?.iter().any(|o| o.id == id) {
                bail!("no overlay {id}");
            }
            let node = match store.node(&node).await? {
                Some(n) => n,
                None => match parse_mac(&node) {
                    Some(m) => store
                        .node_by_mac(&format_mac(m))
                        .await?
                        .with_context(|| format!("no node {node}"))?,
                    None => bail!("no node {node}"),
                },
            };
            let export = crate::disks::new_export_name(&id);
            store.attach_disk(&id, &node.id, &export).await?;
            let mut command = None;
            if now {
                let host = config
                    .server_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "127.0.0.1".into());
                let kind = CommandKind::AttachDisk {
                    export: export.clone(),
                    host,
                    port: config.nbd.listen.port(),
                    mount,
                };
                command = Some(store.queue_command(&node.id, &kind).await?);
            }
            store
                .record_event(
                    Some(&node.id),
                    "disk-attached",
                    serde_json::json!({ "overlay": id, "command": command }),
                )
                .await?;
            println!("attached {id} to {} as export {export}", node.id);
        }
        DiskCmd::Detach { id } => {
            if !store.detach_disk(&id).await? {
                bail!("overlay {id} is not attached");
            }
        }
    }
    Ok(())
}

/// Prints a node's boot events after `since` as a readable timeline.
async fn print_timeline(
    store: &Arc<dyn Store>,
    node: &crate::store::Node,
    events: &[crate::store::Event],
    since: i64,
) -> Result<()> {
    let events: Vec<_> = events.iter().filter(|e| e.at_ms >= since).collect();
    let Some(first) = events.first() else {
        println!("no events for {} yet", node.id);
        return Ok(());
    };
    let t0 = if since > 0 { since } else { first.at_ms };
    let image = match &node.booted_image {
        Some(name) => store.image(name).await?,
        None => None,
    };
    println!(
        "boot timeline of {} ({}), seconds since {}",
        node.id,
        node.mac,
        if since > 0 {
            "power-on"
        } else {
            "the first event"
        }
    );
    for e in events {
        let d = &e.detail;
        let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let (what, text) = match e.kind.as_str() {
            "dhcp-boot" => (
                "dhcp",
                format!(
                    "offer/ack -> {} ({}{})",
                    s("filename"),
                    s("firmware"),
                    if d["ipxe"] == true { ", iPXE" } else { "" }
                ),
            ),
            "tftp-file" => ("tftp", format!("{} ({} bytes)", s("path"), d["bytes"])),
            "script" => ("script", format!("iPXE script for image {}", s("image"))),
            "script-wait" => ("script", format!("wait: {}", s("reason"))),
            "http-file" => {
                let path = s("path");
                let label = match &image {
                    Some(i) if i.kernel.as_deref() == Some(path.as_str()) => "kernel",
                    Some(i) if i.initrd.as_deref() == Some(path.as_str()) => "initrd",
                    _ => "http",
                };
                (label, path)
            }
            "agent-ready" => (
                "agent",
                format!(
                    "ready on {} (node uptime {:.2} s)",
                    s("image"),
                    d["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0
                ),
            ),
            other => (other, d.to_string()),
        };
        println!(
            "{:>9.3} s  {:<8} {}",
            (e.at_ms - t0) as f64 / 1000.0,
            what,
            text
        );
    }
    Ok(())
}

async fn node_command(cmd: NodeCmd, store: Arc<dyn Store>, config: Config) -> Result<()> {
    let find = |id: String| {
        let store = store.clone();
        async move {
            // Accept a node id or a MAC.
            if let Some(n) = store.node(&id).await? {
                return Ok(n);
            }
            if let Some(mac) = parse_mac(&id) {
                if let Some(n) = store.node_by_mac(&format_mac(mac)).await? {
                    return Ok(n);
                }
            }
            bail!("no node {id}")
        }
    };
    let queue = |node: String, kind: CommandKind| {
        let store = store.clone();
        async move {
            let id = store.queue_command(&node, &kind).await?;
            store
                .record_event(
                    Some(&node),
                    "command-queued",
                    serde_json::json!({ "id": id, "command": kind }),
                )
                .await?;
            println!("queued command {id} for {node}");
            anyhow::Ok(())
        }
    };
    match cmd {
        NodeCmd::List { json } => {
            let nodes = store.nodes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                let now = now_ms();
                println!(
                    "{:<18} {:<17} {:<12} {:<9} {:<12} {:>8}",
                    "ID", "MAC", "STATE", "ARCH", "IMAGE", "HB_AGO_S"
                );
                for n in nodes {
                    let ago = n
                        .last_heartbeat_ms
                        .map(|t| format!("{:.1}", (now - t) as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<18} {:<17} {:<12} {:<9} {:<12} {:>8}",
                        n.id,
                        n.mac,
                        n.state.as_str(),
                        n.arch.as_deref().unwrap_or("-"),
                        n.booted_image.as_deref().unwrap_or("-"),
                        ago
                    );
                }
            }
        }
        NodeCmd::Show { id } => println!("{}", serde_json::to_string_pretty(&find(id).await?)?),
        NodeCmd::Reboot { id } => queue(find(id).await?.id, CommandKind::Reboot).await?,
        NodeCmd::Reprovision { id } => queue(find(id).await?.id, CommandKind::Reprovision).await?,
        NodeCmd::Kexec { id, image } => {
            let node = find(id).await?;
            store
                .assign(&Selector::Mac(node.mac.clone()), Some(&image))
                .await?;
            let plan = BootPlan::new(store.clone(), Arc::new(config))?;
            let kind = plan.kexec_command(&node).await?;
            queue(node.id, kind).await?;
        }
        NodeCmd::Timeline { id, since_ms, wait } => {
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_secs(wait.unwrap_or(0));
            // With --wait, a node that has not booted yet is waited for too.
            let node = loop {
                match find(id.clone()).await {
                    Ok(n) => break n,
                    Err(e) if std::time::Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            };
            let since = since_ms.unwrap_or(0);
            let ready = |events: &[crate::store::Event]| {
                events
                    .iter()
                    .any(|e| e.kind == "agent-ready" && e.at_ms >= since)
            };
            let mut events = store.events(0, Some(&node.id), u32::MAX).await?;
            if let Some(secs) = wait {
                // Another process (the server) writes the events: look every 100 ms.
                while !ready(&events) {
                    if std::time::Instant::now() > deadline {
                        bail!("node {} did not report ready within {secs} s", node.id);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    events = store.events(0, Some(&node.id), u32::MAX).await?;
                }
            }
            // Re-read: the boot may have changed the node's image while we waited.
            let node = store.node(&node.id).await?.unwrap_or(node);
            print_timeline(&store, &node, &events, since).await?;
        }
    }
    Ok(())
}
