//! The boot plan: the one seam where policy meets the protocols.
//!
//! Node identity and firmware facts go in; what to serve comes out: the
//! loader or URL a DHCP answer carries ([`BootPlan::dhcp_answer`]), the
//! per-node iPXE script ([`BootPlan::script`]) and the kexec command of a warm
//! reprovision. Which image a node gets is read from the store (assignment by
//! MAC, then by SMBIOS UUID, then the default image).
//!
//! **Who gets a boot's secrets.** A script carries the node's per-boot agent
//! token and the secret name of its virtual disk. It is handed out only to the
//! node's *observed address*: its live lease (full DHCP), the address it showed
//! in the DHCP exchange the server saw (proxy/relay: option 50 or ciaddr), or,
//! for an admin-enrolled node the server never saw in DHCP, the address of its
//! first script fetch. Any other requester gets the wait script and an
//! `access-refused` event. With `trust_boot_network = true` every requester is
//! trusted (off by default). A script fetch never revokes the token of a
//! running agent: it only replaces the next boot's token.

use crate::config::Config;
use crate::events::EventHub;
use crate::model::{BootImage, EventKind, Firmware, ImageKind, MacAddr, Node, Selector, Sighting};
use crate::store::Store;
use anyhow::{Context, Result};
use minijinja::Environment;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a network-boot client told DHCP about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DhcpFacts {
    /// MAC of the booting interface (`chaddr`).
    pub mac: MacAddr,
    /// SMBIOS UUID (option 97), if sent.
    pub uuid: Option<String>,
    /// Firmware derived from option 93, if sent.
    pub firmware: Option<Firmware>,
    /// iPXE already runs (option 77 `iPXE` or option 175 present).
    pub is_ipxe: bool,
    /// Proxy/relay mode: the address the client asked for or uses
    /// (option 50, else ciaddr), which becomes its observed address.
    pub observed_ip: Option<Ipv4Addr>,
}

/// The boot part of a DHCP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpBoot {
    /// TFTP file name of a loader, or an HTTP URL.
    pub filename: String,
    /// Server to fetch the loader from (siaddr).
    pub next_server: Ipv4Addr,
    /// Option 60: `PXEClient` or `HTTPClient`.
    pub vendor_class: &'static str,
}

/// Hints iPXE passes on the script URL.
#[derive(Debug, Clone, Default)]
pub struct ScriptHints {
    /// SMBIOS UUID from `${uuid}`, if iPXE knows it.
    pub uuid: Option<String>,
    /// Firmware from `${platform}`/`${buildarch}`, if given.
    pub firmware: Option<Firmware>,
}

/// A rendered script and what it boots.
#[derive(Debug, Clone)]
pub struct Script {
    /// The iPXE script.
    pub text: String,
    /// The node, when the server knows (or now records) it.
    pub node: Option<Node>,
    /// Image it boots (none for a local-boot or wait script).
    pub image: Option<String>,
}

struct LinuxBoot {
    kernel_url: String,
    initrd_url: Option<String>,
    cmdline: String,
}

/// The SAN a sanboot image boots, with the node's iSCSI login if it has one.
struct SanBoot {
    url: String,
    login: Option<crate::iscsi::NodeTarget>,
}

/// Facts last written for a node, so the DHCP path writes only changes.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    uuid: Option<String>,
    arch: Option<String>,
    observed_ip: Option<Ipv4Addr>,
}

/// The boot plan.
pub struct BootPlan {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    events: EventHub,
    templates: Environment<'static>,
    seen: Mutex<HashMap<MacAddr, Seen>>,
    /// Nodes recorded from a script fetch alone (no DHCP): bounded.
    http_discovered: AtomicUsize,
    /// SHA-256 of the agent API's TLS certificate (`[agent] tls_listen`).
    agent_tls_pin: Option<String>,
    /// The NBD/iSCSI export table (weak: it holds the plan), refreshed before a
    /// sanboot script goes out.
    exports: std::sync::OnceLock<std::sync::Weak<crate::disks::NodeExports>>,
    /// Pre-staged boots and their hand-off credentials.
    pub handoffs: crate::handoff::Handoffs,
    /// This server's registry name (overlays it serves point at its own address).
    me: String,
    /// The ports NBD and iSCSI are bound to (`listen` may say port 0).
    bound_nbd: std::sync::OnceLock<u16>,
    bound_iscsi: std::sync::OnceLock<u16>,
}

/// Where a server's NBD export is reached by nodes, as it registers it
/// among its addresses in the server registry (`nbd-node=IP:PORT`).
pub const NBD_NODE_PREFIX: &str = "nbd-node=";
/// Where a server's iSCSI portal is reached by nodes (`iscsi-node=IP:PORT`).
pub const ISCSI_NODE_PREFIX: &str = "iscsi-node=";

const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("linux.ipxe", include_str!("../../ipxe-scripts/linux.ipxe")),
    (
        "localdisk.ipxe",
        include_str!("../../ipxe-scripts/localdisk.ipxe"),
    ),
    (
        "sanboot.ipxe",
        include_str!("../../ipxe-scripts/sanboot.ipxe"),
    ),
    ("wait.ipxe", include_str!("../../ipxe-scripts/wait.ipxe")),
    ("chain.ipxe", include_str!("../../ipxe-scripts/chain.ipxe")),
];

impl BootPlan {
    /// Nodes' agents talk to `[agent] tls_listen` and pin this certificate
    /// fingerprint (put on their kernel command line).
    pub fn with_agent_tls_pin(mut self, fingerprint: String) -> BootPlan {
        self.agent_tls_pin = Some(fingerprint);
        self
    }

    /// Loads the script templates (built-in, or from `scripts_dir`).
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, events: EventHub) -> Result<BootPlan> {
        let mut templates = Environment::new();
        templates.set_keep_trailing_newline(true);
        for (name, builtin) in BUILTIN_TEMPLATES {
            let text = match &config.scripts_dir {
                Some(dir) => std::fs::read_to_string(dir.join(name)).with_context(|| {
                    format!("reading script template {}", dir.join(name).display())
                })?,
                None => builtin.to_string(),
            };
            templates
                .add_template_owned(name.to_string(), text)
                .with_context(|| format!("parsing script template {name}"))?;
        }
        let me = config.store.server_name();
        Ok(BootPlan {
            agent_tls_pin: None,
            store,
            config,
            events,
            templates,
            seen: Mutex::new(HashMap::new()),
            http_discovered: AtomicUsize::new(0),
            exports: std::sync::OnceLock::new(),
            handoffs: Default::default(),
            me,
            bound_nbd: std::sync::OnceLock::new(),
            bound_iscsi: std::sync::OnceLock::new(),
        })
    }

    /// Connects the export table, so that a sanboot script brings the node's
    /// iSCSI target up at once (a node that has just taken its lease is otherwise
    /// reachable only after the table's next periodic refresh, and iPXE logs in
    /// right after the script). Only the first call takes effect.
    pub fn set_exports(&self, exports: std::sync::Weak<crate::disks::NodeExports>) {
        let _ = self.exports.set(exports);
    }

    /// What a DHCP answer to this client carries; `None` for clients that are
    /// not network booting (no option 93 and not iPXE). Writes nothing on
    /// the way (an OFFER promises nothing): new nodes and changed facts are
    /// recorded in the background.
    pub async fn dhcp_answer(&self, facts: &DhcpFacts) -> Result<Option<DhcpBoot>> {
        let Some(server) = self.config.server_ip else {
            return Ok(None);
        };
        if facts.firmware.is_none() && !facts.is_ipxe {
            return Ok(None);
        }
        self.note_dhcp_sighting(facts);
        let base = self.config.public_url();
        let loaders = &self.config.loaders;
        let (filename, vendor_class) = if facts.is_ipxe {
            (format!("{base}/ipxe/{}", facts.mac), "PXEClient")
        } else {
            match facts.firmware {
                Some(Firmware::Bios) => (loaders.bios.clone(), "PXEClient"),
                Some(Firmware::UefiX64) => (loaders.uefi_x64.clone(), "PXEClient"),
                Some(Firmware::UefiArm64) => (loaders.uefi_arm64.clone(), "PXEClient"),
                Some(Firmware::UefiHttpX64) => {
                    (format!("{base}/loaders/{}", loaders.uefi_x64), "HTTPClient")
                }
                Some(Firmware::UefiHttpArm64) => (
                    format!("{base}/loaders/{}", loaders.uefi_arm64),
                    "HTTPClient",
                ),
                Some(Firmware::UefiIa32) | None => return Ok(None),
            }
        };
        self.events.emit(
            Some(facts.mac.node_id()),
            EventKind::DhcpBoot,
            json!({"filename": filename, "ipxe": facts.is_ipxe, "firmware": facts.firmware.map(Firmware::as_str)}),
        );
        Ok(Some(DhcpBoot {
            filename,
            next_server: server,
            vendor_class,
        }))
    }

    /// Records a DHCP sighting in the background when it tells something new.
    fn note_dhcp_sighting(&self, facts: &DhcpFacts) {
        let sighting = sighting(
            facts.mac,
            facts.uuid.clone(),
            facts.firmware,
            facts.observed_ip,
        );
        let seen = Seen {
            uuid: sighting.uuid.clone(),
            arch: sighting.arch.clone(),
            observed_ip: sighting.observed_ip,
        };
        {
            let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&facts.mac) == Some(&seen) {
                return;
            }
            map.insert(facts.mac, seen);
        }
        let (store, events) = (self.store.clone(), self.events.clone());
        tokio::spawn(async move {
            if let Err(e) = observe(&store, &events, &sighting).await {
                tracing::warn!(mac = %sighting.mac, error = %format!("{e:#}"), "node sighting not recorded");
            }
        });
    }

    /// Proxy/relay mode: the node takes `ip` from another DHCP server (its
    /// REQUEST showed it). Recorded before the answer, so the script fetch
    /// that follows finds it.
    pub async fn record_observed_address(&self, mac: MacAddr, ip: Ipv4Addr) -> Result<()> {
        let known = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&mac)
            .cloned();
        if known.as_ref().and_then(|k| k.observed_ip) == Some(ip) {
            return Ok(());
        }
        let s = sighting(mac, None, None, Some(ip));
        observe(&self.store, &self.events, &s).await?;
        let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(mac).or_insert(Seen {
            uuid: None,
            arch: None,
            observed_ip: None,
        });
        entry.observed_ip = Some(ip);
        Ok(())
    }

    /// The iPXE script for the node with this MAC, as requested from `peer`.
    pub async fn script(&self, mac: MacAddr, hints: &ScriptHints, peer: IpAddr) -> Result<Script> {
        let base = self.config.public_url();
        let mut ctx = json!({ "base": base, "node": mac.node_id(), "mac": mac.to_string() });
        let node = match self.store.node_by_mac(mac).await? {
            Some(n) => Some(n),
            None if self.may_discover_over_http() => Some(
                observe(
                    &self.store,
                    &self.events,
                    &sighting(mac, hints.uuid.clone(), hints.firmware, None),
                )
                .await?,
            ),
            None => None,
        };
        let Some(mut node) = node else {
            return self.wait(ctx, None, "this server has not seen the node in DHCP; enrol it (boot-server node add --mac MAC)".into());
        };
        if hints.uuid.is_some() || hints.firmware.is_some() {
            node = observe(
                &self.store,
                &self.events,
                &sighting(mac, hints.uuid.clone(), hints.firmware, None),
            )
            .await?;
        }
        ctx["node"] = json!(node.id);
        if let Err(reason) = self.grant(&mut node, peer).await? {
            self.events.emit(
                Some(node.id.clone()),
                EventKind::AccessRefused,
                json!({ "what": "boot script", "peer": peer.to_string(), "reason": reason }),
            );
            tracing::warn!(node = %node.id, %peer, "boot script refused: {reason}");
            return self.wait(ctx, Some(node), reason);
        }
        let image = match self.image_for(&node).await? {
            Ok(image) => image,
            Err(reason) => return self.wait(ctx, Some(node), reason),
        };
        ctx["image"] = json!(image.name);
        let template = match image.kind {
            ImageKind::Linux => {
                let token = crate::secret::random_token(16);
                let boot = self
                    .linux_boot(&node, &image, Credential::Token(&token))
                    .await?;
                ctx["kernel_url"] = json!(boot.kernel_url);
                ctx["initrd_url"] = json!(boot.initrd_url);
                ctx["cmdline"] = json!(boot.cmdline);
                "linux.ipxe"
            }
            ImageKind::Localdisk => "localdisk.ipxe",
            ImageKind::Sanboot => match self.san_boot(&node, &image).await? {
                Ok(san) => {
                    ctx["san_url"] = json!(san.url);
                    if let Some(t) = san.login {
                        ctx["chap_user"] = json!(t.chap_user);
                        ctx["chap_secret"] = json!(t.chap_secret);
                        ctx["reverse_user"] = json!(t.reverse_user);
                        ctx["reverse_secret"] = json!(t.reverse_secret);
                    }
                    "sanboot.ipxe"
                }
                Err(reason) => return self.wait(ctx, Some(node), reason),
            },
        };
        self.store.set_booted_image(&node.id, &image.name).await?;
        self.events.emit(
            Some(node.id.clone()),
            EventKind::Script,
            json!({ "image": image.name }),
        );
        Ok(Script {
            text: self.render(template, &ctx)?,
            node: Some(node),
            image: Some(image.name),
        })
    }

    fn wait(
        &self,
        mut ctx: serde_json::Value,
        node: Option<Node>,
        reason: String,
    ) -> Result<Script> {
        ctx["reason"] = json!(reason);
        if let Some(n) = &node {
            self.events.emit(
                Some(n.id.clone()),
                EventKind::ScriptWait,
                json!({ "reason": reason }),
            );
        }
        Ok(Script {
            text: self.render("wait.ipxe", &ctx)?,
            node,
            image: None,
        })
    }

    fn may_discover_over_http(&self) -> bool {
        if self.config.trust_boot_network {
            return true;
        }
        // Bounded: arbitrary MACs in URLs cannot grow the node table for ever.
        self.http_discovered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.config.discovery_limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// The address a node's boot secrets may go to: its live lease, else the
    /// address seen in its DHCP exchange or first script fetch.
    pub async fn node_address(&self, node: &Node) -> Result<Option<Ipv4Addr>> {
        if let Some(l) = self.store.lease_of(node.mac).await? {
            return Ok(Some(l.ip));
        }
        Ok(node.observed_ip)
    }

    /// Whether `peer` may receive this node's boot secrets (and bind the
    /// observed address of an enrolled node seen for the first time).
    async fn grant(
        &self,
        node: &mut Node,
        peer: IpAddr,
    ) -> Result<std::result::Result<(), String>> {
        if self.config.trust_boot_network {
            return Ok(Ok(()));
        }
        match self.node_address(node).await? {
            Some(ip) if IpAddr::V4(ip) == peer => Ok(Ok(())),
            Some(ip) => Ok(Err(format!("request from {peer}, but the node's address is {ip}"))),
            None if node.enrolled => match peer {
                IpAddr::V4(v4) => {
                    // First fetch of an enrolled node the server never saw in DHCP.
                    self.store.set_observed_ip(&node.id, Some(v4)).await?;
                    node.observed_ip = Some(v4);
                    Ok(Ok(()))
                }
                IpAddr::V6(_) => Ok(Err("IPv6 script fetches are not supported".into())),
            },
            None => Ok(Err(
                "this server has not seen the node in DHCP and nobody enrolled it; enrol it (boot-server node add --mac MAC)".into(),
            )),
        }
    }

    /// A warm reprovision of `node` into its assigned image: the agent
    /// downloads the kernel and initrd and kexecs into them.
    pub async fn kexec_command(&self, node: &Node) -> Result<boot_proto::CommandKind> {
        let image = match self.image_for(node).await? {
            Ok(i) if i.kind == ImageKind::Linux => i,
            Ok(i) => anyhow::bail!(
                "image {} is not a linux image; kexec needs kernel + initrd",
                i.name
            ),
            Err(reason) => anyhow::bail!("node {} has no image: {reason}", node.id),
        };
        let token = crate::secret::random_token(16);
        let boot = self
            .linux_boot(node, &image, Credential::Token(&token))
            .await?;
        self.store.set_booted_image(&node.id, &image.name).await?;
        // The image staged on the node, when this boot is that one: the new
        // boot fetches this token with the stage's hand-off credential.
        let files = crate::handoff::BootFiles {
            kernel_url: boot.kernel_url.clone(),
            initrd_url: boot.initrd_url.clone(),
            cmdline: boot.cmdline.clone(),
        };
        let staged = self
            .handoffs
            .bind(&node.id, &files, &token, crate::model::now_ms());
        let (staged, why) = match staged {
            Ok(id) => (Some(id), None),
            Err(why) => (None, Some(why)),
        };
        self.events.emit(
            Some(node.id.clone()),
            EventKind::KexecPlanned,
            json!({ "image": image.name, "staged": staged, "not_staged": why }),
        );
        let (kernel_sha256, initrd_sha256) = file_digests(&image);
        Ok(boot_proto::CommandKind::Kexec {
            kernel_url: boot.kernel_url,
            initrd_url: boot.initrd_url,
            cmdline: boot.cmdline,
            kernel_sha256,
            initrd_sha256,
            staged,
        })
    }

    /// A `prestage` command that loads `image` on `node` ahead of a decision:
    /// its command line is what a kexec into `image` would carry now, with a
    /// one-time hand-off credential instead of a token; the stage is
    /// remembered for [`BootPlan::kexec_command`] to bind.
    pub async fn prestage_command(
        &self,
        node: &Node,
        image: &str,
    ) -> Result<boot_proto::CommandKind> {
        let Some(image) = self.store.image(image).await? else {
            anyhow::bail!("no image {image}");
        };
        if image.kind != ImageKind::Linux {
            anyhow::bail!(
                "image {} is not a linux image: nothing to stage",
                image.name
            );
        }
        if let (Some(arch), false) = (&node.arch, image.archs.is_empty()) {
            if !image.archs.iter().any(|a| a == arch) {
                anyhow::bail!("image {} does not support {arch}", image.name);
            }
        }
        let handoff = crate::secret::random_token(16);
        let boot = self
            .linux_boot(node, &image, Credential::Handoff(&handoff))
            .await?;
        let files = crate::handoff::BootFiles {
            kernel_url: boot.kernel_url.clone(),
            initrd_url: boot.initrd_url.clone(),
            cmdline: boot.cmdline.clone(),
        };
        let id = self.handoffs.stage(
            &node.id,
            &image.name,
            &files,
            &crate::secret::digest(&handoff),
            crate::model::now_ms(),
        );
        let (kernel_sha256, initrd_sha256) = file_digests(&image);
        Ok(boot_proto::CommandKind::Prestage {
            stage: id,
            kernel_url: boot.kernel_url,
            initrd_url: boot.initrd_url,
            cmdline: boot.cmdline,
            kernel_sha256,
            initrd_sha256,
        })
    }

    /// Kernel/initrd URLs and command line for one boot of a Linux image,
    /// with a fresh token for that boot (stored as a digest; the running
    /// boot's token keeps working until the new boot says hello).
    async fn linux_boot(
        &self,
        node: &Node,
        image: &BootImage,
        cred: Credential<'_>,
    ) -> Result<LinuxBoot> {
        let base = self.config.public_url();
        let staged = matches!(cred, Credential::Handoff(_));
        let (key, secret) = match cred {
            Credential::Token(token) => {
                self.store
                    .set_next_token(&node.id, &crate::secret::digest(token))
                    .await?;
                (boot_proto::cmdline::TOKEN, token)
            }
            // No token yet: the decision binds one to the credential.
            Credential::Handoff(h) => (boot_proto::cmdline::HANDOFF, h),
        };
        let mut cmdline = kernel_cmdline(image, node, &base, key, secret);
        // The agent's server, and the certificate it pins when that is TLS.
        cmdline.push_str(&format!(
            " {}={}",
            boot_proto::cmdline::SERVER,
            self.config.agent_url()
        ));
        if let Some(pin) = &self.agent_tls_pin {
            cmdline.push_str(&format!(" {}={pin}", boot_proto::cmdline::TLS_PIN));
        }
        // A virtual disk attached to the node becomes its root file system, over the
        // image's disk transport. Not for a pre-staged boot: the disk attached now is
        // the node's present slot's, detached at the decision (environments with slot
        // disks are never staged).
        let attached = match staged {
            false => self.store.disk_attachments().await?,
            true => Vec::new(),
        };
        // The disk is reached on the server that serves it (from the registry),
        // whichever server answers this boot.
        if let Some(disk) = attached.iter().find(|a| a.node == node.id) {
            let transport = image.disk_transport;
            let addr = self.disk_address(&disk.server, transport).await?;
            match (transport, addr) {
                (crate::model::DiskTransport::Nbd, Some(addr)) => {
                    cmdline.push_str(&format!(
                        " {}=nbd:{}:{}:{}",
                        boot_proto::cmdline::ROOT,
                        addr.ip(),
                        addr.port(),
                        disk.export
                    ));
                }
                (crate::model::DiskTransport::Iscsi, Some(portal)) => {
                    if let Some(login) =
                        crate::iscsi::node_target(&disk.overlay, &node.id, &disk.export)
                    {
                        cmdline.push_str(&format!(
                            " {}={}",
                            boot_proto::cmdline::ROOT,
                            crate::iscsi::root_spec(portal, &login)
                        ));
                        // The node may log in seconds after its lease: bring its
                        // target up now rather than at the next refresh.
                        self.refresh_exports_of(&disk.server).await?;
                    }
                }
                (transport, None) => {
                    tracing::warn!(node = node.id, image = image.name, overlay = disk.overlay,
                        server = disk.server, ?transport,
                        "the node's disk has no address to reach it by (the protocol is off, or its serving server has none); no root disk");
                }
            }
        }
        Ok(LinuxBoot {
            kernel_url: format!(
                "{base}/images/{}",
                image.kernel.as_deref().unwrap_or_default()
            ),
            initrd_url: image.initrd.as_ref().map(|i| format!("{base}/images/{i}")),
            cmdline,
        })
    }

    /// What a sanboot image boots for `node`: the image's fixed `san_url` (shared,
    /// no credentials) when it names one; else the iSCSI target of the overlay
    /// attached to the node (its slot's disk) with the node's CHAP login; else why
    /// there is nothing to boot. The caller has already checked that the script
    /// goes to the node's own address (the login is a boot secret).
    async fn san_boot(
        &self,
        node: &Node,
        image: &BootImage,
    ) -> Result<std::result::Result<SanBoot, String>> {
        if let Some(url) = &image.san_url {
            return Ok(Ok(SanBoot {
                url: url.clone(),
                login: None,
            }));
        }
        let attached = self.store.disk_attachments().await?;
        let Some(disk) = attached.iter().find(|a| a.node == node.id) else {
            return Ok(Err(format!(
                "image {} boots the node's iSCSI disk, and none is attached (boot-server disk attach OVERLAY --node {})",
                image.name, node.mac
            )));
        };
        let Some(portal) = self
            .disk_address(&disk.server, crate::model::DiskTransport::Iscsi)
            .await?
        else {
            return Ok(Err(format!(
                "image {} boots the node's iSCSI disk, but iSCSI is off ([iscsi] enabled) or the disk's server {} has no address",
                image.name,
                if disk.server.is_empty() { &self.me } else { &disk.server }
            )));
        };
        let Some(login) = crate::iscsi::node_target(&disk.overlay, &node.id, &disk.export) else {
            return Ok(Err(format!(
                "overlay {} has no iSCSI name (id too long)",
                disk.overlay
            )));
        };
        self.refresh_exports_of(&disk.server).await?;
        Ok(Ok(SanBoot {
            // RFC 4173 root path: iscsi:<server>:<proto>:<port>:<lun>:<target>
            url: format!("iscsi:{}::{}::{}", portal.ip(), portal.port(), login.target),
            login: Some(login),
        }))
    }

    /// Where nodes reach a disk served by `server` over `transport`: this
    /// server's own address when it is this one (or unrecorded, `""`), else
    /// the address that server registered (`nbd-node=`/`iscsi-node=` in
    /// `server list`). None when the protocol is off here, or the other
    /// server is unknown or registered none. A server that is down is still
    /// named (the node cannot reach its disk until it is back; logged).
    pub async fn disk_address(
        &self,
        server: &str,
        transport: crate::model::DiskTransport,
    ) -> Result<Option<std::net::SocketAddr>> {
        if server.is_empty() || server == self.me {
            return Ok(match transport {
                crate::model::DiskTransport::Nbd => self.nbd_address(),
                crate::model::DiskTransport::Iscsi => self.iscsi_portal(),
            });
        }
        let prefix = match transport {
            crate::model::DiskTransport::Nbd => NBD_NODE_PREFIX,
            crate::model::DiskTransport::Iscsi => ISCSI_NODE_PREFIX,
        };
        let servers = self.store.servers().await?;
        let Some(r) = servers.iter().find(|r| r.info.name == server) else {
            tracing::warn!(%server, "a node's disk is served by a server that is not registered");
            return Ok(None);
        };
        if r.age_ms >= crate::model::SERVER_DOWN_AFTER_MS {
            tracing::warn!(%server, heartbeat_age_ms = r.age_ms,
                "a node's disk is served by a server that is down: the node cannot reach it until that server is back");
        }
        Ok(r.info
            .listen
            .iter()
            .find_map(|l| l.strip_prefix(prefix)?.parse().ok()))
    }

    /// Brings the export table of the server serving a disk up to date: this
    /// server's at once, another's by a request queued for it (heard at once
    /// over the shared store; not awaited).
    async fn refresh_exports_of(&self, server: &str) -> Result<()> {
        if server.is_empty() || server == self.me {
            if let Some(exports) = self.exports.get().and_then(std::sync::Weak::upgrade) {
                exports
                    .refresh()
                    .await
                    .context("refreshing the iSCSI targets")?;
            }
        } else {
            self.store
                .queue_disk_request(server, &crate::model::DiskOp::Refresh)
                .await
                .with_context(|| format!("asking server {server} to refresh its exports"))?;
        }
        Ok(())
    }

    /// This server's registry name.
    pub fn server_name(&self) -> &str {
        &self.me
    }

    /// The ports the NBD and iSCSI servers are bound to (their `listen` may
    /// say port 0). Only the first call takes effect.
    pub fn set_bound_ports(&self, nbd: Option<u16>, iscsi: Option<u16>) {
        if let Some(p) = nbd {
            let _ = self.bound_nbd.set(p);
        }
        if let Some(p) = iscsi {
            let _ = self.bound_iscsi.set(p);
        }
    }

    /// The address nodes reach this server's NBD exports on (None when NBD
    /// is off or the server has no address).
    pub fn nbd_address(&self) -> Option<std::net::SocketAddr> {
        let nbd = &self.config.nbd;
        if !nbd.enabled {
            return None;
        }
        let port = self.bound_nbd.get().copied().unwrap_or(nbd.listen.port());
        Some(std::net::SocketAddr::new(
            IpAddr::V4(self.config.server_ip?),
            port,
        ))
    }

    /// The address nodes reach the iSCSI target on (None when iSCSI is off or
    /// the server has no address).
    pub fn iscsi_portal(&self) -> Option<std::net::SocketAddr> {
        let iscsi = &self.config.iscsi;
        if !iscsi.enabled {
            return None;
        }
        let ip = match iscsi.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(self.config.server_ip?),
            ip => ip,
        };
        let port = self
            .bound_iscsi
            .get()
            .copied()
            .unwrap_or(iscsi.listen.port());
        Some(std::net::SocketAddr::new(ip, port))
    }

    /// The generic entry script (`/boot.ipxe`) for iPXE sent here by other means.
    pub fn chain_script(&self) -> Result<String> {
        self.render("chain.ipxe", &json!({ "base": self.config.public_url() }))
    }

    fn render(&self, template: &str, ctx: &serde_json::Value) -> Result<String> {
        self.templates
            .get_template(template)
            .and_then(|t| t.render(ctx))
            .with_context(|| format!("rendering {template}"))
    }

    /// The image this node should boot, or why it has none.
    pub async fn image_for(&self, node: &Node) -> Result<std::result::Result<BootImage, String>> {
        let mut name = self.store.assignment(&Selector::Mac(node.mac)).await?;
        if name.is_none() {
            if let Some(uuid) = &node.uuid {
                name = self.store.assignment(&Selector::Uuid(uuid.clone())).await?;
            }
        }
        if name.is_none() {
            name = self.store.default_image().await?;
        }
        let Some(name) = name else {
            return Ok(Err("no assignment and no default image".into()));
        };
        let Some(image) = self.store.image(&name).await? else {
            return Ok(Err(format!(
                "assigned image {name} is not in the image table"
            )));
        };
        if let (Some(arch), false) = (&node.arch, image.archs.is_empty()) {
            if !image.archs.iter().any(|a| a == arch) {
                return Ok(Err(format!("image {name} does not support {arch}")));
            }
        }
        Ok(Ok(image))
    }
}

fn sighting(
    mac: MacAddr,
    uuid: Option<String>,
    firmware: Option<Firmware>,
    observed_ip: Option<Ipv4Addr>,
) -> Sighting {
    Sighting {
        mac,
        uuid: uuid
            .map(|u| u.to_ascii_lowercase())
            .filter(|u| is_real_uuid(u)),
        arch: firmware.map(|f| f.as_str().to_string()),
        observed_ip,
    }
}

/// Records a sighting; a new node gets a `node-discovered` event.
async fn observe(store: &Arc<dyn Store>, events: &EventHub, s: &Sighting) -> Result<Node> {
    let (node, new) = store.observe_node(s).await?;
    if new {
        tracing::info!(node = %node.id, mac = %node.mac, "new node discovered");
        events.emit(
            Some(node.id.clone()),
            EventKind::NodeDiscovered,
            json!({ "mac": node.mac, "uuid": node.uuid, "arch": node.arch }),
        );
    }
    Ok(node)
}

/// All-zero and all-ones SMBIOS UUIDs are placeholders (QEMU without -uuid,
/// cheap boards): they identify nothing.
fn is_real_uuid(u: &str) -> bool {
    let hex: Vec<char> = u.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex.len() == 32 && !hex.iter().all(|&c| c == '0') && !hex.iter().all(|&c| c == 'f')
}

/// The image's command-line template with the node's values, plus the keys
/// the agent reads (`bootsrv.*` but the server, which the caller adds) and
/// `BOOTIF` (pxelinux convention).
/// The per-boot credential a kernel command line carries.
enum Credential<'a> {
    /// The boot's agent token (stored as the node's next token).
    Token(&'a str),
    /// A pre-staged boot's one-time hand-off credential.
    Handoff(&'a str),
}

/// SHA-256 of an image's kernel and initrd, as recorded when it was added.
fn file_digests(image: &BootImage) -> (Option<String>, Option<String>) {
    let of = |path: &Option<String>| {
        let p = path.as_deref()?;
        image
            .files
            .iter()
            .find(|f| f.path == p)
            .map(|f| f.sha256.clone())
    };
    (of(&image.kernel), of(&image.initrd))
}

fn kernel_cmdline(image: &BootImage, node: &Node, base: &str, key: &str, secret: &str) -> String {
    use boot_proto::cmdline as k;
    let custom = image
        .cmdline
        .replace("{server}", base)
        .replace("{node}", &node.id)
        .replace("{mac}", &node.mac.to_string())
        .replace("{image}", &image.name);
    format!(
        "{custom} {}={} {key}={secret} {}={} {}={}",
        k::NODE,
        node.id,
        k::IMAGE,
        image.name,
        k::BOOTIF,
        node.mac.bootif()
    )
    .trim()
    .to_string()
}
