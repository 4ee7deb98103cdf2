//! The boot plan: the one seam where policy meets the protocols.
//!
//! Node identity and firmware facts go in; what to serve comes out: the
//! loader or URL a DHCP answer carries ([`BootPlan::dhcp_answer`]) and the
//! per-node iPXE script ([`BootPlan::script`]). Protocol adapters never decide
//! what a node boots; they ask here. Which image a node gets is read from the
//! store (assignment by MAC, then by SMBIOS UUID, then the default image),
//! which the admin commands and the engine write.

use crate::config::Config;
use crate::store::{BootImage, ImageKind, Node, Selector, Sighting, Store};
use anyhow::{Context, Result};
use minijinja::Environment;
use rand::RngCore;
use serde_json::json;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Firmware kind derived from DHCP option 93 (client system architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    UefiIa32,
    UefiX64,
    UefiArm64,
    /// x86-64 UEFI HTTP boot (no TFTP, wants option 60 `HTTPClient` and a URL).
    UefiHttpX64,
    UefiHttpArm64,
}

impl Firmware {
    /// Option 93 → firmware. 7 and 9 are both x86-64 UEFI (RFC 4578 errata).
    pub fn from_client_arch(arch: u16) -> Option<Firmware> {
        Some(match arch {
            0 => Firmware::Bios,
            6 => Firmware::UefiIa32,
            7 | 9 => Firmware::UefiX64,
            0x0b => Firmware::UefiArm64,
            0x10 => Firmware::UefiHttpX64,
            0x13 => Firmware::UefiHttpArm64,
            _ => return None,
        })
    }

    /// Name stored on the node and matched against an image's `archs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::UefiIa32 => "uefi-ia32",
            Firmware::UefiX64 | Firmware::UefiHttpX64 => "uefi-x64",
            Firmware::UefiArm64 | Firmware::UefiHttpArm64 => "uefi-arm64",
        }
    }

    /// From iPXE's `${platform}` and `${buildarch}` settings.
    pub fn from_ipxe(platform: &str, buildarch: &str) -> Option<Firmware> {
        match (platform, buildarch) {
            ("pcbios", _) => Some(Firmware::Bios),
            ("efi", "arm64") => Some(Firmware::UefiArm64),
            ("efi", "i386") => Some(Firmware::UefiIa32),
            ("efi", _) => Some(Firmware::UefiX64),
            _ => None,
        }
    }
}

/// What a network-boot client told DHCP about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DhcpFacts {
    pub mac: String,
    pub uuid: Option<String>,
    pub firmware: Option<Firmware>,
    /// iPXE already runs (option 77 `iPXE` or option 175 present).
    pub is_ipxe: bool,
}

/// The boot part of a DHCP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpBoot {
    /// TFTP file name of a loader, or an HTTP URL.
    pub filename: String,
    pub next_server: Ipv4Addr,
    /// Option 60: `PXEClient` or `HTTPClient`.
    pub vendor_class: &'static str,
}

/// Hints iPXE passes on the script URL.
#[derive(Debug, Clone, Default)]
pub struct ScriptHints {
    pub uuid: Option<String>,
    pub firmware: Option<Firmware>,
}

/// A rendered script and what it boots.
#[derive(Debug, Clone)]
pub struct Script {
    pub text: String,
    pub node: Node,
    pub image: Option<String>,
}

struct LinuxBoot {
    kernel_url: String,
    initrd_url: Option<String>,
    cmdline: String,
}

pub struct BootPlan {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    templates: Environment<'static>,
}

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
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>) -> Result<BootPlan> {
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
        Ok(BootPlan {
            store,
            config,
            templates,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What a DHCP answer to this client carries; `None` for clients that are
    /// not network booting (no option 93 and not iPXE).
    pub async fn dhcp_answer(&self, facts: &DhcpFacts) -> Result<Option<DhcpBoot>> {
        let Some(server) = self.config.server_ip else {
            return Ok(None);
        };
        if facts.firmware.is_none() && !facts.is_ipxe {
            return Ok(None);
        }
        let node = self
            .observe(&facts.mac, facts.uuid.clone(), facts.firmware)
            .await?;
        let base = self.config.public_url();
        let loaders = &self.config.loaders;
        let (filename, vendor_class) = if facts.is_ipxe {
            (format!("{base}/ipxe/{}", node.mac), "PXEClient")
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
        self.store
            .record_event(
                Some(&node.id),
                "dhcp-boot",
                json!({"filename": filename, "ipxe": facts.is_ipxe, "firmware": facts.firmware.map(Firmware::as_str)}),
            )
            .await?;
        Ok(Some(DhcpBoot {
            filename,
            next_server: server,
            vendor_class,
        }))
    }

    /// The iPXE script for the node with this MAC.
    pub async fn script(&self, mac: &str, hints: &ScriptHints) -> Result<Script> {
        let node = self
            .observe(mac, hints.uuid.clone(), hints.firmware)
            .await?;
        let base = self.config.public_url();
        let mut ctx = json!({ "base": base, "node": node.id, "mac": node.mac });
        let image = self.image_for(&node).await?;
        let (template, image_name) = match image {
            Err(reason) => {
                ctx["reason"] = json!(reason);
                self.store
                    .record_event(Some(&node.id), "script-wait", json!({ "reason": reason }))
                    .await?;
                ("wait.ipxe", None)
            }
            Ok(image) => {
                ctx["image"] = json!(image.name);
                let template = match image.kind {
                    ImageKind::Linux => {
                        let boot = self.linux_boot(&node, &image).await?;
                        ctx["kernel_url"] = json!(boot.kernel_url);
                        ctx["initrd_url"] = json!(boot.initrd_url);
                        ctx["cmdline"] = json!(boot.cmdline);
                        "linux.ipxe"
                    }
                    ImageKind::Localdisk => "localdisk.ipxe",
                    ImageKind::Sanboot => {
                        ctx["san_url"] = json!(image.san_url);
                        "sanboot.ipxe"
                    }
                };
                self.store.set_booted_image(&node.id, &image.name).await?;
                self.store
                    .record_event(Some(&node.id), "script", json!({ "image": image.name }))
                    .await?;
                (template, Some(image.name))
            }
        };
        let text = self.render(template, &ctx)?;
        Ok(Script {
            text,
            node,
            image: image_name,
        })
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
        let boot = self.linux_boot(node, &image).await?;
        self.store.set_booted_image(&node.id, &image.name).await?;
        self.store
            .record_event(
                Some(&node.id),
                "kexec-planned",
                json!({ "image": image.name }),
            )
            .await?;
        Ok(boot_proto::CommandKind::Kexec {
            kernel_url: boot.kernel_url,
            initrd_url: boot.initrd_url,
            // The initrd comes in through kexec_file_load, not the command line.
            cmdline: boot.cmdline,
        })
    }

    /// Kernel/initrd URLs and command line for one boot of a Linux image,
    /// with a fresh agent token (the previous boot's token stops working).
    async fn linux_boot(&self, node: &Node, image: &BootImage) -> Result<LinuxBoot> {
        let base = self.config.public_url();
        let token = new_token();
        self.store.set_next_agent_token(&node.id, &token).await?;
        let mut cmdline = kernel_cmdline(image, node, &base, &token);
        // A virtual disk attached to the node becomes its root file system.
        if let (true, Some(ip)) = (self.config.nbd.enabled, self.config.server_ip) {
            let attached = self.store.disk_attachments().await?;
            if let Some(disk) = attached.iter().find(|a| a.node == node.id) {
                let port = self.config.nbd.listen.port();
                cmdline.push_str(&format!(" bootsrv.root=nbd:{ip}:{port}:{}", disk.export));
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

    async fn observe(
        &self,
        mac: &str,
        uuid: Option<String>,
        firmware: Option<Firmware>,
    ) -> Result<Node> {
        let sighting = Sighting {
            mac: mac.to_string(),
            uuid: uuid
                .map(|u| u.to_ascii_lowercase())
                .filter(|u| is_real_uuid(u)),
            arch: firmware.map(|f| f.as_str().to_string()),
        };
        let (node, new) = self.store.observe_node(&sighting).await?;
        if new {
            tracing::info!(node = %node.id, mac = %node.mac, "new node discovered");
            self.store
                .record_event(
                    Some(&node.id),
                    "node-discovered",
                    json!({ "mac": node.mac, "uuid": node.uuid, "arch": node.arch }),
                )
                .await?;
        }
        Ok(node)
    }

    /// The image this node should boot, or why it has none.
    pub async fn image_for(&self, node: &Node) -> Result<std::result::Result<BootImage, String>> {
        let mut name = self
            .store
            .assignment(&Selector::Mac(node.mac.clone()))
            .await?;
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

/// All-zero and all-ones SMBIOS UUIDs are placeholders (QEMU without -uuid,
/// cheap boards): they identify nothing.
fn is_real_uuid(u: &str) -> bool {
    let hex: Vec<char> = u.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex.len() == 32 && !hex.iter().all(|&c| c == '0') && !hex.iter().all(|&c| c == 'f')
}

/// 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image's command-line template with the node's values, plus the keys
/// the agent reads (`bootsrv.*`) and `BOOTIF` (pxelinux convention).
fn kernel_cmdline(image: &BootImage, node: &Node, base: &str, token: &str) -> String {
    use boot_proto::cmdline as k;
    let custom = image
        .cmdline
        .replace("{server}", base)
        .replace("{node}", &node.id)
        .replace("{mac}", &node.mac)
        .replace("{image}", &image.name);
    format!(
        "{custom} {}={base} {}={} {}={token} {}={} BOOTIF=01-{}",
        k::SERVER,
        k::NODE,
        node.id,
        k::TOKEN,
        k::IMAGE,
        image.name,
        node.mac.replace(':', "-")
    )
    .trim()
    .to_string()
}
