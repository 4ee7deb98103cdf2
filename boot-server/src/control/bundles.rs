//! Exporting an environment to a bundle and importing one (see
//! [`crate::bundle`] for the format). Export: optionally halt the
//! environment, or (live) freeze each ready slot through its agent as a
//! clone does (see [`super::freeze`]) and snapshot its overlay meanwhile; a
//! slot no agent can freeze is snapshotted crash-consistent and the bundle
//! says so per slot; then size and hash
//! every entry, then stream the bundle. Import: stage and verify the whole
//! bundle, plan (names, addresses, nodes, conflicts), and only then create
//! images, base, overlays, the environment (inactive) and its slots, in an
//! order that is undone in reverse when any step fails.

use super::freeze::Capture;
use super::{Control, Error, ErrorKind, Result};
use crate::bundle::chunks::ChunkPlan;
use crate::bundle::read::Staged;
use crate::bundle::write::{Entry, Source};
use crate::bundle::{
    image_entry, image_file_entry, relocate_image, DiskRecord, EnvRecord, Manifest, SlotRecord,
    TokenRecord, ENV_ENTRY, FORMAT, VERSION,
};
use crate::model::{now_ms, AddressRange, BootImage, Environment, EventKind};
use crate::store::{Expect, Fence};
use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long `--halt` waits for the environment's slots to be released.
const HALT_TIMEOUT: Duration = Duration::from_secs(600);

/// A bundle being streamed: chunks of the compressed stream, an error
/// ending it early (the receiver sees a broken transfer).
pub struct ExportStream {
    /// Suggested file name.
    pub file_name: String,
    /// Bytes of the entries before compression (for progress).
    pub raw_bytes: u64,
    /// The stream.
    pub chunks: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

/// What an import may change about the environment.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImportOptions {
    /// Create the environment under this name (its overlays and host names follow).
    #[serde(rename = "as")]
    pub as_name: Option<String>,
    /// Move the addresses into this subnet (`10.88.0.0/24`), keeping host offsets.
    pub subnet: Option<String>,
    /// Move addresses by this map (old → new); it must keep the slots' order.
    #[schema(value_type = BTreeMap<String, String>)]
    pub map_addresses: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Nodes for slots: a source node id, or `slot<N>`, → a node of this server.
    pub map_nodes: BTreeMap<String, String>,
    /// Verify and plan only; create nothing.
    pub dry_run: bool,
    /// Tests: stop right after this creation step as if the server were
    /// killed there: no rollback; the staging and its journal stay.
    #[serde(skip)]
    #[schema(ignore)]
    pub crash_after: Option<String>,
    /// Tests: fail right after this creation step (`images`, `base`,
    /// `overlays`, `environment`, `slots`) to exercise the rollback.
    #[serde(skip)]
    #[schema(ignore)]
    pub fail_after: Option<String>,
}

/// What an import creates (or, dry-run, would create).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportPlan {
    /// The environment as it is (or would be) created, inactive.
    pub environment: String,
    /// Its name on the source server.
    pub source_environment: String,
    /// The source server.
    pub source_server: String,
    /// When the bundle was made (RFC 3339).
    pub created_at: String,
    /// Every entry's size and SHA-256 matched the manifest.
    pub verified_entries: usize,
    /// Bytes of disk data in the bundle.
    pub disk_bytes: u64,
    /// Images: `create` or `reuse` (same files already here).
    pub images: Vec<PlanItem>,
    /// The base disk: `create` or `reuse` (same content already here).
    pub base: Option<PlanItem>,
    /// Overlays created, one per slot that had one.
    pub overlays: Vec<PlanItem>,
    /// The address range on this server.
    pub addresses: Option<String>,
    /// Slots with their host name, address and node here.
    pub slots: Vec<PlanSlot>,
    /// Tokens that referenced the environment on the source: not created
    /// (their secrets stay there); the commands that make them here.
    pub tokens_to_create: Vec<TokenToCreate>,
    /// What stops the import (nothing is created while any is listed).
    pub conflicts: Vec<String>,
    /// Only a plan: nothing was created.
    pub dry_run: bool,
    /// Everything was created.
    pub created: bool,
}

/// One thing an import creates or reuses.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanItem {
    /// Name or id.
    pub name: String,
    /// `create` or `reuse`.
    pub action: String,
    /// Bytes of data it carries.
    pub bytes: u64,
}

/// A slot as an import creates it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanSlot {
    /// Position.
    pub index: u32,
    /// Host name here.
    pub hostname: String,
    /// Address on the source.
    #[schema(value_type = Option<String>)]
    pub ip_from: Option<Ipv4Addr>,
    /// Address here.
    #[schema(value_type = Option<String>)]
    pub ip: Option<Ipv4Addr>,
    /// Overlay here.
    pub overlay: Option<String>,
    /// Node that held it on the source.
    pub node_from: Option<String>,
    /// Node asked for here (`--map-nodes`); none: the engine allocates.
    pub node: Option<String>,
}

/// A token to make on this server (its secret is new).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenToCreate {
    /// Name, role and environments (renamed to the import's name).
    #[serde(flatten)]
    pub token: TokenRecord,
    /// The CLI command that creates it.
    pub command: String,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Internal, e.to_string())
}

fn server_name(c: &Control) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match c.config.server_ip {
        Some(ip) => format!("{host} ({ip})"),
        None => host,
    }
}

/// Writes into the response channel in 256 KiB pieces.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const PIECE: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}

/// Snapshots taken for an export (overlay → its snapshot), deleted when it
/// ends (however it ends).
struct Snapshots {
    disks: Option<Arc<boot_nbd::DiskStore>>,
    ids: BTreeMap<String, String>,
}

/// The overlays of `slots` to export.
fn overlays_of(slots: &[crate::model::Slot]) -> Vec<String> {
    slots.iter().filter_map(|s| s.overlay.clone()).collect()
}

/// Snapshots each existing overlay of `ids` (one moment when their agents
/// hold a freeze).
fn snapshot_overlays(
    disks: Arc<boot_nbd::DiskStore>,
    ids: Vec<String>,
) -> anyhow::Result<Snapshots> {
    let mut snaps = Snapshots {
        disks: Some(disks.clone()),
        ids: BTreeMap::new(),
    };
    for ov in ids {
        if !disks.overlay_path(&ov)?.exists() {
            continue;
        }
        let snap = format!(
            "{ov}.export-{}",
            crate::secret::random_token(6).to_lowercase()
        );
        disks.snapshot_overlay(&ov, &snap)?;
        snaps.ids.insert(ov, snap);
    }
    Ok(snaps)
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        let Some(disks) = &self.disks else { return };
        for id in self.ids.values() {
            if let Err(e) = disks.delete_overlay(id) {
                tracing::warn!(snapshot = %id, error = %format!("{e:#}"), "export snapshot not deleted");
            }
        }
    }
}

/// The journal an import keeps in its staging directory: every creation is
/// written here (and synced) before it is made, so a server killed during
/// an import undoes what it had begun at its next start
/// ([`Control::recover_imports`]). `committed` is set, durably, before the
/// import reports success; a committed journal is only cleaned up.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    /// The environment being created.
    environment: String,
    /// What was begun, in order.
    undo: Vec<Undo>,
    /// Everything was created; nothing to undo.
    committed: bool,
}

const JOURNAL: &str = "journal.json";

impl Journal {
    /// Records `u` durably before its creation starts.
    async fn intend(&mut self, dir: &std::path::Path, u: Undo) -> Result<()> {
        self.undo.push(u);
        self.save(dir).await
    }

    async fn save(&self, dir: &std::path::Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(internal)?;
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            crate::fsutil::write_private(&dir.join(JOURNAL), &bytes)
        })
        .await
        .map_err(internal)?
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("import journal: {e:#}")))
    }
}

/// A staging directory, removed when dropped.
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if self.0.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.0) {
                tracing::warn!(dir = %self.0.display(), error = %e, "import staging not removed");
            }
        }
    }
}

/// Maps `ip` into `net`, keeping its host offset within `net`'s prefix.
fn into_subnet(ip: Ipv4Addr, net: &ipnet::Ipv4Net) -> Ipv4Addr {
    let host = u32::from(ip) & u32::from(net.hostmask());
    Ipv4Addr::from(u32::from(net.network()) | host)
}

/// The environment's address range on this server.
fn map_range(
    range: &AddressRange,
    opts: &ImportOptions,
) -> std::result::Result<AddressRange, String> {
    if let Some(s) = &opts.subnet {
        let net: ipnet::Ipv4Net = s
            .parse()
            .map_err(|_| format!("--subnet {s:?}: write a CIDR such as 10.88.0.0/24"))?;
        let first = into_subnet(range.first, &net);
        let last = u32::from(first) as u64 + range.len() - 1;
        if last > u32::from(net.broadcast()) as u64 {
            return Err(format!(
                "range {range} does not fit into {net} at the same host offsets"
            ));
        }
        return Ok(AddressRange {
            first,
            last: Ipv4Addr::from(last as u32),
        });
    }
    if !opts.map_addresses.is_empty() {
        let first = *opts.map_addresses.get(&range.first).ok_or_else(|| {
            format!(
                "the address map does not map the range's first address {} (the range {range} moves as one)",
                range.first
            )
        })?;
        for (old, new) in &opts.map_addresses {
            let off = u32::from(*old).wrapping_sub(u32::from(range.first));
            let want = u32::from(first).checked_add(off);
            if u32::from(*old) < u32::from(range.first) || want != Some(u32::from(*new)) {
                return Err(format!(
                    "the address map sends {old} to {new}, but the range {range} moves as one: {old} must go to {}",
                    want.map(|w| Ipv4Addr::from(w).to_string()).unwrap_or_else(|| "?".into())
                ));
            }
        }
        let last = u32::from(first) as u64 + range.len() - 1;
        if last > u32::MAX as u64 {
            return Err(format!("range {range} moved to {first} overflows"));
        }
        return Ok(AddressRange {
            first,
            last: Ipv4Addr::from(last as u32),
        });
    }
    Ok(*range)
}

fn overlaps(a: &AddressRange, b: &AddressRange) -> bool {
    a.first <= b.last && b.first <= a.last
}

impl Control {
    /// Builds the entries of `name`'s bundle (snapshots its overlays) and
    /// measures them; the snapshots live as long as the returned guard.
    async fn prepare_export(
        &self,
        name: &str,
        halt: bool,
    ) -> Result<(Manifest, Vec<Entry>, Snapshots)> {
        let mut env = self.must_env(name).await?;
        let live = !halt;
        if halt {
            if env.active {
                self.set_env_active(name, false).await?;
            }
            let t0 = std::time::Instant::now();
            loop {
                let held = self
                    .store
                    .slots(Some(name))
                    .await?
                    .iter()
                    .filter(|s| s.node.is_some())
                    .count();
                if held == 0 {
                    break;
                }
                if t0.elapsed() > HALT_TIMEOUT {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!("{name} still holds {held} node(s) after {}s; export without --halt or wait", HALT_TIMEOUT.as_secs()),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            env = self.must_env(name).await?;
        }
        let mut slots = self.store.slots(Some(name)).await?;
        // Overlays of slots never stored (made ahead with `disk create`) go too.
        if let (Some(_), Ok(d)) = (&env.disk_base, self.disks()) {
            for i in 0..env.max {
                if slots.iter().any(|s| s.index == i) {
                    continue;
                }
                let Some(id) = env.overlay(i) else { continue };
                if d.overlay_path(&id).map(|p| p.exists()).unwrap_or(false) {
                    slots.push(super::new_slot(&env, i));
                }
            }
            slots.sort_by_key(|s| s.index);
        }
        let image = self.store.image(&env.image).await?;
        let tokens: Vec<TokenRecord> = self
            .store
            .tokens()
            .await?
            .into_iter()
            .filter(|t| t.environments.iter().any(|e| e == name))
            .map(|t| TokenRecord {
                name: t.name,
                role: t.role,
                environments: t.environments,
            })
            .collect();
        let disks = if env.disk_base.is_some() {
            Some(self.disks()?)
        } else {
            None
        };
        // Snapshot the overlays: live, while their agents hold a freeze.
        let captures = match (&disks, live) {
            (Some(_), true) => self.freeze_slots(&env, &slots).await?,
            _ => Vec::new(),
        };
        let snapped = match &disks {
            Some(d) => {
                let (d, ids) = (d.clone(), overlays_of(&slots));
                tokio::task::spawn_blocking(move || snapshot_overlays(d, ids)).await
            }
            None => Ok(Ok(Snapshots {
                disks: None,
                ids: BTreeMap::new(),
            })),
        };
        let pauses = self.thaw_slots(&captures).await;
        let snaps = snapped
            .map_err(internal)?
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("export of {name}: {e:#}")))?;
        let capture_of = |index: u32| -> String {
            match captures.iter().find(|(i, _)| *i == index) {
                Some((_, Capture::Frozen { .. })) => "frozen".into(),
                Some((_, Capture::CrashConsistent(why))) => format!("crash-consistent: {why}"),
                None => "halted".into(),
            }
        };
        let slot_captures: BTreeMap<u32, String> = slots
            .iter()
            .map(|s| (s.index, capture_of(s.index)))
            .collect();
        if live {
            self.events.emit(
                None,
                EventKind::EnvChanged,
                json!({ "env": name, "change": "export-snapshot", "captures": slot_captures, "pause_ms": pauses.iter().map(|(i, p)| (i.to_string(), *p)).collect::<BTreeMap<_, _>>() }),
            );
        }
        let images_dir = self.config.images_dir.clone();
        let server = server_name(self);
        let env_name = name.to_string();
        let work = move || -> anyhow::Result<(Manifest, Vec<Entry>, Snapshots)> {
            let mut entries = Vec::new();
            let mut image_name = None;
            if let Some(img) = &image {
                image_name = Some(img.name.clone());
                let mut files = Vec::new();
                for (n, f) in img.files.iter().enumerate() {
                    let path = crate::images::file_in(&images_dir, &f.path)?;
                    files.push(Entry {
                        path: image_file_entry(&img.name, n, &f.path),
                        source: Source::File(path),
                    });
                }
                entries.push(Entry {
                    path: image_entry(&img.name),
                    source: Source::Bytes(serde_json::to_vec_pretty(img)?),
                });
                entries.extend(files);
            }
            let mut base_rec = None;
            let mut slot_recs = Vec::new();
            let mut disk_entries = Vec::new();
            if let (Some(base), Some(d)) = (&env.disk_base, &disks) {
                let plan =
                    ChunkPlan::base(&d.base_file(base)?).with_context(|| format!("base {base}"))?;
                let entry = format!("disks/base/{base}.chunks");
                base_rec = Some((base.clone(), plan.size, entry.clone()));
                disk_entries.push(Entry {
                    path: entry,
                    source: Source::Chunks(plan),
                });
            }
            for s in &slots {
                let mut rec = SlotRecord {
                    index: s.index,
                    hostname: s.hostname.clone(),
                    ip: s.ip,
                    overlay: s.overlay.clone(),
                    overlay_entry: None,
                    overlay_allocated: 0,
                    node: s.node.clone(),
                    config: s.config.clone(),
                    capture: slot_captures.get(&s.index).cloned().unwrap_or_default(),
                };
                if let (Some(ov), Some(d)) = (&s.overlay, &disks) {
                    if let Some(snap) = snaps.ids.get(ov) {
                        let (_, plan) = ChunkPlan::overlay(&d.overlay_path(snap)?)?;
                        let entry = format!("disks/overlays/slot{}.chunks", s.index);
                        rec.overlay_entry = Some(entry.clone());
                        rec.overlay_allocated = plan.data_bytes();
                        disk_entries.push(Entry {
                            path: entry,
                            source: Source::Chunks(plan),
                        });
                    }
                }
                slot_recs.push(rec);
            }
            // The base's digest is known only after measuring: measure the
            // disks first, then write the record that names it.
            let disk_infos = crate::bundle::write::measure(&disk_entries)?;
            let image_infos = crate::bundle::write::measure(&entries)?;
            let base = base_rec.map(|(name, size, entry)| DiskRecord {
                content_sha256: disk_infos
                    .iter()
                    .find(|i| i.path == entry)
                    .map(|i| i.sha256.clone())
                    .unwrap_or_default(),
                name,
                size,
                entry,
            });
            let record = EnvRecord {
                environment: env.clone(),
                slots: slot_recs,
                tokens,
                image: image_name,
                base,
            };
            let env_entry = Entry {
                path: ENV_ENTRY.into(),
                source: Source::Bytes(serde_json::to_vec_pretty(&record)?),
            };
            let mut infos = vec![env_entry.measure()?];
            infos.extend(image_infos);
            infos.extend(disk_infos);
            let mut all = vec![env_entry];
            all.extend(entries);
            all.extend(disk_entries);
            let now = now_ms();
            let manifest = Manifest {
                format: FORMAT.into(),
                version: VERSION,
                server_version: env!("CARGO_PKG_VERSION").into(),
                source_server: server,
                created_ms: now,
                created_at: chrono::DateTime::from_timestamp_millis(now)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                environment: env_name,
                live,
                entries: infos,
            };
            Ok((manifest, all, snaps))
        };
        let out = tokio::task::spawn_blocking(work)
            .await
            .map_err(internal)?
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("export of {name}: {e:#}")))?;
        Ok(out)
    }

    /// Exports environment `name` as a bundle stream. With `halt` the
    /// environment is deactivated first and its slots' release awaited;
    /// otherwise each ready slot is frozen by its agent while its overlay is
    /// snapshotted (crash-consistent where no agent can freeze it).
    pub async fn export_env(&self, name: &str, halt: bool) -> Result<ExportStream> {
        let (manifest, entries, snaps) = self.prepare_export(name, halt).await?;
        let raw_bytes = manifest.entries.iter().map(|e| e.size).sum();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let err_tx = tx.clone();
        let env = name.to_string();
        self.events.emit(
            None,
            EventKind::EnvChanged,
            json!({ "env": name, "change": "exported", "live": manifest.live, "entries": manifest.entries.len(), "bytes": raw_bytes }),
        );
        tokio::task::spawn_blocking(move || {
            let w = ChannelWriter {
                tx,
                buf: Vec::with_capacity(PIECE),
            };
            let r = crate::bundle::write::write_bundle(&manifest, &entries, w);
            drop(entries);
            drop(snaps);
            if let Err(e) = r {
                tracing::warn!(env = %env, error = %format!("{e:#}"), "export ended early");
                let _ = err_tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
            } else {
                tracing::info!(env = %env, bytes = raw_bytes, "exported");
            }
        });
        Ok(ExportStream {
            file_name: format!("{name}.bundle"),
            raw_bytes,
            chunks: rx,
        })
    }

    /// Imports a bundle read from `input`: stages and verifies it, plans,
    /// and (unless a dry run or a conflict) creates everything or nothing.
    pub async fn import_env(
        &self,
        input: impl std::io::Read + Send + 'static,
        opts: ImportOptions,
    ) -> Result<ImportPlan> {
        let root = self.config.state_dir.join("import-staging");
        let dir = root.join(crate::secret::random_token(8));
        let staging = StagingDir(dir.clone());
        let d = dir.clone();
        let staged = tokio::task::spawn_blocking(move || -> anyhow::Result<Staged> {
            std::fs::create_dir_all(&root)?;
            boot_disk::overlay::create_private_dir(&d)?;
            crate::bundle::read::stage(input, &d)
        })
        .await
        .map_err(internal)?
        .map_err(|e| Error::bad_request(format!("{e:#}")))?;
        let (plan, env) = self.plan_import(&staged, &opts).await?;
        if opts.dry_run || !plan.conflicts.is_empty() {
            if !opts.dry_run {
                return Err(Error::conflict(format!(
                    "import refused, nothing created: {}",
                    plan.conflicts.join("; ")
                )));
            }
            return Ok(plan);
        }
        let mut journal = Journal {
            environment: plan.environment.clone(),
            ..Default::default()
        };
        let applied = self
            .apply_import(&staged, &plan, env, &opts, &dir, &mut journal)
            .await;
        if opts.crash_after.is_some() {
            // As if killed here: no rollback, the staging and journal stay.
            std::mem::forget(staging);
            return Err(Error::new(ErrorKind::Unavailable, "import stopped (test)"));
        }
        let applied = match applied {
            Ok(()) => {
                journal.committed = true;
                journal.save(&dir).await
            }
            e => e,
        };
        match applied {
            Ok(()) => {
                drop(staging);
                let mut plan = plan;
                plan.created = true;
                self.events.emit(
                    None,
                    EventKind::EnvChanged,
                    json!({ "env": plan.environment, "change": "imported", "from": plan.source_server, "source_env": plan.source_environment }),
                );
                self.wake_engine();
                Ok(plan)
            }
            Err(e) => {
                self.roll_back(journal.undo).await;
                drop(staging);
                Err(Error::new(
                    e.kind,
                    format!(
                        "import failed and was rolled back (nothing created): {}",
                        e.message
                    ),
                ))
            }
        }
    }

    async fn plan_import(
        &self,
        st: &Staged,
        opts: &ImportOptions,
    ) -> Result<(ImportPlan, Environment)> {
        let rec = &st.record;
        let src = &rec.environment;
        let name = opts.as_name.clone().unwrap_or_else(|| src.name.clone());
        let mut conflicts = Vec::new();
        let mut env = Environment {
            name: name.clone(),
            active: false,
            created_ms: now_ms(),
            updated_ms: now_ms(),
            ..src.clone()
        };
        if self.store.environment(&name).await?.is_some() {
            conflicts.push(format!(
                "environment {name} exists here (import it under another name with --as NEW_NAME)"
            ));
        }
        if let Some(r) = &src.addresses {
            match map_range(r, opts) {
                Ok(m) => env.addresses = Some(m),
                Err(e) => return Err(Error::bad_request(e)),
            }
        } else if opts.subnet.is_some() || !opts.map_addresses.is_empty() {
            return Err(Error::bad_request(format!(
                "{} gives no addresses: drop --subnet / --map-addresses",
                src.name
            )));
        }
        if let Err(e) = env.validate() {
            return Err(Error::bad_request(format!("the imported environment: {e}")));
        }
        // Images.
        let mut images = Vec::new();
        for (iname, img) in &st.images {
            let bytes = img.size_bytes;
            let action = match self.store.image(iname).await? {
                Some(here) if same_files(&here, img) => "reuse",
                Some(_) => {
                    conflicts.push(format!(
                        "image {iname} exists here with other files (remove or rename one of them)"
                    ));
                    "conflict"
                }
                None => "create",
            };
            images.push(PlanItem {
                name: iname.clone(),
                action: action.into(),
                bytes,
            });
        }
        // Base disk.
        let mut base = None;
        if let Some(b) = &rec.base {
            if !self.config.nbd.enabled {
                conflicts.push("the bundle carries disks but virtual disks are off here ([nbd] enabled = false)".into());
            } else {
                let disks = self.disks()?;
                let (bn, want) = (b.name.clone(), b.content_sha256.clone());
                let here =
                    tokio::task::spawn_blocking(move || -> anyhow::Result<Option<String>> {
                        let path = disks.base_file(&bn)?;
                        if !path.exists() {
                            return Ok(None);
                        }
                        let e = Entry {
                            path: "base".into(),
                            source: Source::Chunks(ChunkPlan::base(&path)?),
                        };
                        Ok(Some(e.measure()?.sha256))
                    })
                    .await
                    .map_err(internal)??;
                let action = match here {
                    None => "create",
                    Some(d) if d == want => "reuse",
                    Some(_) => {
                        conflicts.push(format!(
                            "base disk {} exists here with other content",
                            b.name
                        ));
                        "conflict"
                    }
                };
                let bytes = st
                    .manifest
                    .entries
                    .iter()
                    .find(|e| e.path == b.entry)
                    .map(|e| e.size)
                    .unwrap_or(0);
                base = Some(PlanItem {
                    name: b.name.clone(),
                    action: action.into(),
                    bytes,
                });
            }
        }
        // Addresses against other environments and reservations.
        if let Some(r) = &env.addresses {
            for other in self.store.environments().await? {
                if other.name == name {
                    continue;
                }
                if let Some(o) = &other.addresses {
                    if overlaps(r, o) {
                        conflicts.push(format!(
                            "addresses {r} overlap environment {}'s {o} (move them with --subnet or --map-addresses)",
                            other.name
                        ));
                    }
                }
            }
            for res in self.store.reservations().await? {
                if r.first <= res.ip && res.ip <= r.last {
                    conflicts.push(format!(
                        "address {} is reserved here for {} (move the range with --subnet or --map-addresses)",
                        res.ip, res.mac
                    ));
                }
            }
        }
        // Slots and nodes.
        let existing: Vec<String> = if rec.slots.iter().any(|s| s.overlay_entry.is_some()) {
            self.disks()?
                .list_overlays()
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("{e:#}")))?
                .into_iter()
                .map(|o| o.id)
                .collect()
        } else {
            Vec::new()
        };
        let mut slots = Vec::new();
        let mut overlays = Vec::new();
        let mut used_nodes = std::collections::HashSet::new();
        for s in &rec.slots {
            let overlay = s.overlay_entry.as_ref().and_then(|_| env.overlay(s.index));
            if let Some(o) = &overlay {
                if existing.contains(o) {
                    conflicts.push(format!("overlay {o} exists here"));
                }
                overlays.push(PlanItem {
                    name: o.clone(),
                    action: "create".into(),
                    bytes: s.overlay_allocated,
                });
            }
            let key = format!("slot{}", s.index);
            let mapped = opts
                .map_nodes
                .get(&key)
                .or_else(|| s.node.as_ref().and_then(|n| opts.map_nodes.get(n)))
                .cloned();
            let mut node = None;
            if let Some(m) = mapped {
                match self.find_node(&m).await {
                    Ok(n) => {
                        if let Some(e) = &n.environment {
                            conflicts
                                .push(format!("node {} (slot {}) serves {e} here", n.id, s.index));
                        }
                        if !used_nodes.insert(n.id.clone()) {
                            conflicts.push(format!("node {} is mapped to two slots", n.id));
                        }
                        node = Some(n.id);
                    }
                    Err(_) => {
                        conflicts.push(format!("node {m} (for slot {}) is not known here", s.index))
                    }
                }
            }
            slots.push(PlanSlot {
                index: s.index,
                hostname: env.hostname(s.index),
                ip_from: s.ip,
                ip: env.address(s.index),
                overlay,
                node_from: s.node.clone(),
                node,
            });
        }
        let tokens_to_create = rec
            .tokens
            .iter()
            .map(|t| {
                let environments: Vec<String> = t
                    .environments
                    .iter()
                    .map(|e| {
                        if *e == src.name {
                            name.clone()
                        } else {
                            e.clone()
                        }
                    })
                    .collect();
                let envs: String = environments.iter().map(|e| format!(" --env {e}")).collect();
                TokenToCreate {
                    command: format!(
                        "boot-server token create {} --role {}{envs}",
                        t.name,
                        t.role.as_str()
                    ),
                    token: TokenRecord {
                        name: t.name.clone(),
                        role: t.role,
                        environments,
                    },
                }
            })
            .collect();
        let plan = ImportPlan {
            environment: name,
            source_environment: src.name.clone(),
            source_server: st.manifest.source_server.clone(),
            created_at: st.manifest.created_at.clone(),
            verified_entries: st.manifest.entries.len(),
            disk_bytes: st.disk_bytes,
            images,
            base,
            overlays,
            addresses: env.addresses.map(|a| a.to_string()),
            slots,
            tokens_to_create,
            conflicts,
            dry_run: opts.dry_run,
            created: false,
        };
        Ok((plan, env))
    }

    async fn apply_import(
        &self,
        st: &Staged,
        plan: &ImportPlan,
        env: Environment,
        opts: &ImportOptions,
        dir: &std::path::Path,
        journal: &mut Journal,
    ) -> Result<()> {
        let fail = |step: &str| -> Result<()> {
            if opts.fail_after.as_deref() == Some(step) || opts.crash_after.as_deref() == Some(step)
            {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("injected failure after {step}"),
                ));
            }
            Ok(())
        };
        // 1. Images (files under uploaded/<name>/, then the table row).
        for item in plan.images.iter().filter(|i| i.action == "create") {
            let img = &st.images[&item.name];
            let dir_rel = format!("{}/{}", super::images::UPLOAD_DIR, img.name);
            let dir_abs = self.config.images_dir.join(&dir_rel);
            let placed = relocate_image(img, &dir_rel);
            let mut copies = Vec::new();
            for (n, f) in img.files.iter().enumerate() {
                let from = st
                    .files
                    .get(&image_file_entry(&img.name, n, &f.path))
                    .ok_or_else(|| {
                        Error::bad_request(format!(
                            "bundle lacks file {} of image {}",
                            f.path, img.name
                        ))
                    })?
                    .clone();
                copies.push((from, self.config.images_dir.join(&placed.files[n].path)));
            }
            journal
                .intend(dir, Undo::ImageFiles(dir_abs.clone()))
                .await?;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                std::fs::create_dir_all(&dir_abs)?;
                for (from, to) in copies {
                    if std::fs::rename(&from, &to).is_err() {
                        std::fs::copy(&from, &to)?;
                    }
                    std::fs::File::open(&to)?.sync_all()?;
                }
                Ok(())
            })
            .await
            .map_err(internal)??;
            journal
                .intend(dir, Undo::Image(placed.name.clone()))
                .await?;
            self.store.put_image(&placed).await?;
        }
        self.refresh_image_files().await?;
        fail("images")?;
        // 2. The base disk.
        if let (Some(b), Some(item)) = (&st.record.base, &plan.base) {
            if item.action == "create" {
                let from = st.files.get(&b.entry).cloned().ok_or_else(|| {
                    Error::bad_request(format!("bundle lacks the base disk entry {}", b.entry))
                })?;
                let n = b.name.clone();
                journal.intend(dir, Undo::Base(b.name.clone())).await?;
                self.on_disks(move |d| d.adopt_base(&n, &from)).await?;
            }
        }
        fail("base")?;
        // 3. Overlays.
        for s in &st.record.slots {
            let (Some(entry), Some(id)) = (&s.overlay_entry, env.overlay(s.index)) else {
                continue;
            };
            let from =
                st.files.get(entry).cloned().ok_or_else(|| {
                    Error::bad_request(format!("bundle lacks overlay entry {entry}"))
                })?;
            let i = id.clone();
            journal.intend(dir, Undo::Overlay(id)).await?;
            self.on_disks(move |d| d.adopt_overlay(&i, &from)).await?;
        }
        fail("overlays")?;
        // 4. The environment (inactive) and 5. its slots.
        self.check_env(&env).await?;
        journal
            .intend(dir, Undo::Environment(env.name.clone()))
            .await?;
        self.store.put_environment(&env).await?;
        fail("environment")?;
        let writes: Vec<_> = plan
            .slots
            .iter()
            .map(|p| {
                let mut slot = super::new_slot(&env, p.index);
                slot.config = st
                    .record
                    .slots
                    .iter()
                    .find(|s| s.index == p.index)
                    .map(|s| s.config.clone())
                    .unwrap_or_default();
                slot.preferred_node = p.node.clone();
                slot.step_since_ms = now_ms();
                slot.detail = format!("imported from {}", plan.source_server);
                (slot, Expect::Step(crate::model::SlotStep::Vacant))
            })
            .collect();
        if !writes.is_empty() && !self.store.write_slots(Fence::default(), &writes).await? {
            return Err(Error::conflict("the imported slots changed meanwhile"));
        }
        fail("slots")?;
        Ok(())
    }

    /// Undoes the imports a killed server left half done (their journals
    /// say what they had begun) and removes every leftover staging
    /// directory. Run at start, before anything is served; returns how many
    /// imports were rolled back.
    pub async fn recover_imports(&self) -> Result<usize> {
        let root = self.config.state_dir.join("import-staging");
        let dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
            Ok(r) => r.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(internal(format!("reading {}: {e}", root.display()))),
        };
        let mut undone = 0;
        for dir in dirs {
            let journal: Option<Journal> = std::fs::read(dir.join(JOURNAL))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(j) = journal.filter(|j| !j.committed) {
                tracing::warn!(env = %j.environment, steps = j.undo.len(), "undoing an import the server was stopped in");
                self.roll_back(j.undo).await;
                self.events.emit(
                    None,
                    EventKind::EnvChanged,
                    json!({ "env": j.environment, "change": "import-rolled-back", "why": "the server stopped during the import" }),
                );
                undone += 1;
            }
            tracing::info!(dir = %dir.display(), "removing an interrupted import's staging");
            drop(StagingDir(dir));
        }
        Ok(undone)
    }

    async fn roll_back(&self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            let r: anyhow::Result<()> = match &u {
                Undo::Environment(n) => match self.store.environment(n).await {
                    Ok(Some(_)) => self.store.delete_environment(n).await,
                    other => other.map(|_| ()),
                },
                Undo::Overlay(id) => {
                    let i = id.clone();
                    self.on_disks(move |d| match d.overlay_path(&i)?.exists() {
                        true => d.delete_overlay(&i),
                        false => Ok(()),
                    })
                    .await
                    .map_err(anyhow::Error::from)
                }
                Undo::Base(n) => {
                    let b = n.clone();
                    self.on_disks(move |d| match d.base_file(&b)?.exists() {
                        true => d.delete_base(&b),
                        false => Ok(()),
                    })
                    .await
                    .map_err(anyhow::Error::from)
                }
                Undo::Image(n) => match self.store.image(n).await {
                    Ok(Some(_)) => self.store.remove_image(n).await,
                    other => other.map(|_| ()),
                },
                Undo::ImageFiles(dir) => match std::fs::remove_dir_all(dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => Ok(()),
                },
            };
            if let Err(e) = r {
                tracing::error!(step = ?u, error = %format!("{e:#}"), "import rollback step failed");
            }
        }
        let _ = self.refresh_image_files().await;
    }
}

/// One creation an import began, undone in reverse order on failure (a
/// creation that never happened is undone as a no-op).
#[derive(Debug, Serialize, Deserialize)]
enum Undo {
    ImageFiles(PathBuf),
    Image(String),
    Base(String),
    Overlay(String),
    Environment(String),
}

fn same_files(a: &BootImage, b: &BootImage) -> bool {
    a.kind == b.kind
        && a.files.len() == b.files.len()
        && a.files
            .iter()
            .zip(&b.files)
            .all(|(x, y)| x.sha256 == y.sha256 && x.size == y.size)
}
