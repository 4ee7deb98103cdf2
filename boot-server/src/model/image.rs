//! Boot images (the boot-image table's rows) and firmware kinds.

use serde::{Deserialize, Serialize};

/// How an image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// Kernel + initrd over HTTP.
    Linux,
    /// Boot from the node's local disk (iPXE `sanboot --no-describe --drive 0x80` / exit).
    Localdisk,
    /// SAN boot from a URL (iSCSI / HTTP SAN).
    Sanboot,
}

impl ImageKind {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Linux => "linux",
            ImageKind::Localdisk => "localdisk",
            ImageKind::Sanboot => "sanboot",
        }
    }
}

/// How a Linux image's node reaches its attached disk (its root file system).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DiskTransport {
    /// NBD: `bootsrv.root=nbd:HOST:PORT:EXPORT` (the agent's kernel NBD client).
    #[default]
    Nbd,
    /// iSCSI: `bootsrv.root=iscsi:HOST:PORT:USER:SECRET:TARGET`, the node's CHAP login
    /// (the image's initramfs must carry a login tool: `iscsistart`).
    Iscsi,
}

/// A row of the boot-image table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootImage {
    /// Unique name nodes and assignments refer to.
    pub name: String,
    /// Free-form version from the manifest.
    #[serde(default)]
    pub version: String,
    /// How the image boots.
    pub kind: ImageKind,
    /// Kernel path relative to the images directory (linux images).
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initrd path relative to the images directory, if any.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command-line template; `{server}`, `{node}`, `{mac}`, `{image}` are substituted.
    #[serde(default)]
    pub cmdline: String,
    /// Supported firmware kinds (`bios`, `uefi-x64`, ...); empty = any.
    #[serde(default)]
    pub archs: Vec<String>,
    /// SAN URL for sanboot images: a shared disk every node boots without
    /// credentials. None: the node boots the iSCSI target of its attached overlay
    /// with its own CHAP login.
    #[serde(default)]
    pub san_url: Option<String>,
    /// Linux images: how the node's attached disk becomes its root (default NBD).
    #[serde(default, skip_serializing_if = "is_nbd")]
    pub disk_transport: DiskTransport,
    /// SHA-256 of kernel then initrd, hex, computed when the image is added.
    #[serde(default)]
    pub checksum: Option<String>,
    /// Total size of the image's files in bytes.
    #[serde(default)]
    pub size_bytes: u64,
    /// SHA-256 of each file (path relative to the images directory, hex):
    /// files are verified against it at import and at start, and a file that
    /// changed since is not served.
    #[serde(default)]
    pub files: Vec<ImageFile>,
}

fn is_nbd(t: &DiskTransport) -> bool {
    *t == DiskTransport::Nbd
}

/// One file of an image with its size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageFile {
    /// Path relative to the images directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// Firmware kind derived from DHCP option 93 (client system architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// Legacy BIOS PXE.
    Bios,
    /// 32-bit x86 UEFI.
    UefiIa32,
    /// x86-64 UEFI.
    UefiX64,
    /// arm64 UEFI.
    UefiArm64,
    /// x86-64 UEFI HTTP boot (no TFTP, wants option 60 `HTTPClient` and a URL).
    UefiHttpX64,
    /// arm64 UEFI HTTP boot.
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
