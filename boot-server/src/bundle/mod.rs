//! Environment bundles: the file `env export` writes and `env import` reads,
//! one zstd-compressed tar stream that carries a whole environment to
//! another server.
//!
//! # Format (version 1)
//!
//! A tar stream (ustar, crate `tar`) compressed with zstd (crate `zstd`,
//! frame checksums on). Its first entry is `manifest.json` ([`Manifest`]):
//! the format name and version, the source server, when it was made, and
//! every other entry's path, size and SHA-256. Then, in the manifest's order:
//!
//! * `environment.json` ([`EnvRecord`]): the environment definition (policy,
//!   schedules, hooks, requirements, key/values, host-name pattern, address
//!   range), its slots (host names, addresses, overlays, the node that held
//!   each, per-slot key/values) and the access settings: names and roles of
//!   the API tokens that reference the environment. Never a secret: token
//!   secrets, CHAP and BMC credentials are not in the store's records this
//!   reads, and are made anew on the target.
//! * `images/<name>/image.json` and `images/<name>/files/<n>-<file>`: the
//!   image the environment boots (its table row, then each file).
//! * `disks/base/<name>.chunks`: the base disk, sparse ([`chunks`]).
//! * `disks/overlays/slot<i>.chunks`: each slot's overlay, only its allocated
//!   chunks ([`chunks`]).
//!
//! The manifest comes first so that an importer knows every digest before it
//! reads any data: [`write`] therefore reads the sources twice (digests, then
//! the stream), from frozen copies (overlay snapshots, read-only bases and
//! image files). [`read`] stages every entry in a private directory while
//! hashing it, and refuses the bundle (naming the entry) on any size or
//! digest mismatch, unknown, duplicate or missing entry, or a truncated
//! stream, before anything is created.

pub mod chunks;
pub mod read;
pub mod write;

use crate::model::{BootImage, Environment, TokenRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The `format` field of every bundle manifest.
pub const FORMAT: &str = "boot-server-environment-bundle";
/// The bundle format version this server writes and reads.
pub const VERSION: u32 = 1;
/// Path of the manifest, the first entry.
pub const MANIFEST: &str = "manifest.json";
/// Path of the environment record.
pub const ENV_ENTRY: &str = "environment.json";

/// The bundle's table of contents (its first entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Version of the boot-server that wrote it.
    pub server_version: String,
    /// The server it was exported from (host name, and address when known).
    pub source_server: String,
    /// When it was made (ms since the epoch).
    pub created_ms: i64,
    /// The same instant, RFC 3339 (UTC), for people.
    pub created_at: String,
    /// Name of the environment on the source server.
    pub environment: String,
    /// Whether the environment was running when exported (overlays were
    /// snapshotted live, crash-consistent) or halted first.
    pub live: bool,
    /// Every other entry, in stream order.
    pub entries: Vec<EntryInfo>,
}

/// One entry of the stream as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Path inside the tar stream.
    pub path: String,
    /// Size in bytes (as stored in the tar stream).
    pub size: u64,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
}

/// `environment.json`: the environment, its slots and its access settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvRecord {
    /// The definition as stored on the source (its `active` flag is the
    /// source's; an import always creates it inactive).
    pub environment: Environment,
    /// Its slots by index.
    pub slots: Vec<SlotRecord>,
    /// API tokens that reference the environment (operators of it): names
    /// and roles only.
    pub tokens: Vec<TokenRecord>,
    /// The image entry's name (the environment's image).
    pub image: Option<String>,
    /// The base disk, when the environment has one.
    pub base: Option<DiskRecord>,
}

/// A slot as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Position.
    pub index: u32,
    /// Host name on the source.
    pub hostname: String,
    /// Address on the source.
    pub ip: Option<Ipv4Addr>,
    /// Overlay id on the source.
    pub overlay: Option<String>,
    /// Path of its overlay entry, when the overlay existed.
    pub overlay_entry: Option<String>,
    /// Bytes allocated in its overlay.
    pub overlay_allocated: u64,
    /// Node that held it on the source (what `--map-nodes` maps from).
    pub node: Option<String>,
    /// Per-slot key/values.
    pub config: BTreeMap<String, String>,
    /// How its overlay was captured: `halted` (no node held it), `frozen`
    /// (its agent ran `prepare-clone` and froze the file systems) or
    /// `crash-consistent: <why>` (as a power cut would leave it).
    #[serde(default)]
    pub capture: String,
}

/// The base disk as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Base name.
    pub name: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Path of its entry.
    pub entry: String,
    /// SHA-256 of the raw disk content (all `size` bytes, holes as zeros):
    /// an importer reuses an existing base of the same name only when its
    /// content has this digest.
    pub content_sha256: String,
}

/// An API token as exported: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: TokenRole,
    /// For operators: the environments it may operate.
    pub environments: Vec<String>,
}

/// Path of image `name`'s table row.
pub fn image_entry(name: &str) -> String {
    format!("images/{name}/image.json")
}

/// Path of the `n`th file of image `name`.
pub fn image_file_entry(name: &str, n: usize, file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    format!("images/{name}/files/{n}-{base}")
}

/// The image row an importer stores: `image` with each file moved under
/// `dir` (relative to the images directory).
pub fn relocate_image(image: &BootImage, dir: &str) -> BootImage {
    let mut out = image.clone();
    let moved = |p: &str| {
        let base = p.rsplit('/').next().unwrap_or(p);
        format!("{dir}/{base}")
    };
    out.kernel = image.kernel.as_deref().map(moved);
    out.initrd = image.initrd.as_deref().map(moved);
    for f in &mut out.files {
        f.path = moved(&f.path);
    }
    out
}
