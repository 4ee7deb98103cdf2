//! `DiskStore`: the directory that holds base images and overlays, and the registry that
//! makes every connection to one export share one open `Overlay` object.
//!
//! Layout under the root: `bases/<name>.raw` (read-only raw images) and
//! `overlays/<id>/{data,map}` (see `overlay` for the format). Snapshots are overlays too
//! (their map header names the origin). Names and ids are limited to
//! `[A-Za-z0-9._-]`, 1..=128 bytes, not starting with a dot, so they are safe as paths.
//! Modes whatever the umask: directories 0700, overlay `data`/`map` files 0600, bases
//! 0400 (they hold node data).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};

use crate::overlay::{self, MapHeader, Overlay, CHUNK, ST_DATA};

/// A base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseInfo {
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The raw file.
    pub path: PathBuf,
}

/// An overlay (or snapshot) and how much of it is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayInfo {
    /// Overlay id.
    pub id: String,
    /// Name of the base it is built on.
    pub base: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Bytes held in the overlay (allocated chunks x chunk size).
    pub allocated_bytes: u64,
    /// Set for snapshots: the overlay it was taken from.
    pub origin: Option<String>,
    /// True when the snapshot's data was reflinked (O(1)) rather than copied.
    pub reflinked: bool,
}

/// Read-only raw base, shared by every connection exporting it.
pub struct BaseImage {
    /// Base name.
    pub name: String,
    /// The raw file, opened read-only.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
}

/// Disk store rooted at a directory.
pub struct DiskStore {
    root: PathBuf,
    open_overlays: Mutex<HashMap<String, Weak<Overlay>>>,
    open_bases: Mutex<HashMap<String, Weak<BaseImage>>>,
    /// Serialises create/delete/snapshot so directory changes do not race.
    admin: Mutex<()>,
}

/// Checks a base name or overlay id.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn check_name(kind: &str, name: &str) -> Result<()> {
    if !valid_name(name) {
        bail!("invalid {kind} name {name:?}: use [A-Za-z0-9._-], not starting with '.'");
    }
    Ok(())
}

fn sync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync dir {}", p.display()))
}

/// Guess whether a source image needs `qemu-img convert` (qcow2, vmdk, vhdx, vdi, qed).
fn needs_convert(src: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 72];
    let mut f = File::open(src).with_context(|| format!("open {}", src.display()))?;
    let n = f.read(&mut head)?;
    let h = &head[..n];
    Ok(h.starts_with(b"QFI\xfb")
        || h.starts_with(b"KDMV")
        || h.starts_with(b"vhdxfile")
        || h.starts_with(b"QED\0")
        || h.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe]))
}

impl DiskStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        for d in ["bases", "overlays"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("create {}", root.join(d).display()))?;
        }
        // Disks hold node data and secrets: owner only, whatever the umask.
        for d in [
            root.to_path_buf(),
            root.join("bases"),
            root.join("overlays"),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 {}", d.display()))?;
        }
        // Leftovers of interrupted creations.
        for d in ["bases", "overlays"] {
            for e in std::fs::read_dir(root.join(d))?.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let p = e.path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                }
            }
        }
        Ok(DiskStore {
            root: root.to_path_buf(),
            open_overlays: Mutex::new(HashMap::new()),
            open_bases: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn base_path(&self, name: &str) -> PathBuf {
        self.root.join("bases").join(format!("{name}.raw"))
    }

    fn overlay_dir(&self, id: &str) -> PathBuf {
        self.root.join("overlays").join(id)
    }

    fn admin(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.admin
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned admin lock"))
    }

    /// Imports `src` as base `name`: raw files are copied, other formats converted with
    /// `qemu-img convert -O raw`.
    pub fn create_base_from_file(&self, name: &str, src: &Path) -> Result<BaseInfo> {
        check_name("base", name)?;
        let _a = self.admin()?;
        let dst = self.base_path(name);
        if dst.exists() {
            bail!("base {name} already exists");
        }
        let tmp = self.root.join("bases").join(format!(".tmp-{name}.raw"));
        if needs_convert(src)? {
            let out = Command::new("qemu-img")
                .arg("convert")
                .arg("-O")
                .arg("raw")
                .arg(src)
                .arg(&tmp)
                .output()
                .context("run qemu-img convert")?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&tmp);
                bail!(
                    "qemu-img convert failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        } else {
            std::fs::copy(src, &tmp).with_context(|| format!("copy {}", src.display()))?;
        }
        let f = File::open(&tmp)?;
        f.sync_all()?;
        // Read-only, owner only (a copy would keep the source's mode).
        f.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        std::fs::rename(&tmp, &dst)?;
        sync_dir(&self.root.join("bases"))?;
        self.base_info(name)
    }

    fn base_info(&self, name: &str) -> Result<BaseInfo> {
        let path = self.base_path(name);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("base {name} not found"))?
            .len();
        Ok(BaseInfo {
            name: name.to_string(),
            size,
            path,
        })
    }

    /// Every base, sorted by name.
    pub fn list_bases(&self) -> Result<Vec<BaseInfo>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.root.join("bases"))?.flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            if let Some(name) = f.strip_suffix(".raw") {
                if valid_name(name) {
                    v.push(self.base_info(name)?);
                }
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// Creates an empty overlay `id` on top of base `base`.
    pub fn create_overlay(&self, id: &str, base: &str) -> Result<OverlayInfo> {
        check_name("overlay", id)?;
        check_name("base", base)?;
        let _a = self.admin()?;
        let b = self.base_info(base)?;
        let dir = self.overlay_dir(id);
        if dir.exists() {
            bail!("overlay {id} already exists");
        }
        let tmp = self.root.join("overlays").join(format!(".tmp-{id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        overlay::create_private_dir(&tmp)?;
        let header = MapHeader {
            base: base.to_string(),
            size: b.size,
            origin: None,
        };
        overlay::create_files(&tmp, &header)?;
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, &dir)?;
        sync_dir(&self.root.join("overlays"))?;
        self.overlay_info(id)
    }

    fn overlay_info(&self, id: &str) -> Result<OverlayInfo> {
        let (h, states) = overlay::read_map(&self.overlay_dir(id).join("map"))
            .with_context(|| format!("overlay {id}"))?;
        let allocated = states.iter().filter(|s| **s == ST_DATA).count() as u64 * CHUNK;
        Ok(OverlayInfo {
            id: id.to_string(),
            base: h.base,
            size: h.size,
            allocated_bytes: allocated,
            origin: h.origin,
            reflinked: false,
        })
    }

    /// Opens (or returns the already open) shared overlay object.
    pub fn open_overlay(&self, id: &str) -> Result<Arc<Overlay>> {
        check_name("overlay", id)?;
        let mut reg = self
            .open_overlays
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned registry"))?;
        if let Some(o) = reg.get(id).and_then(Weak::upgrade) {
            return Ok(o);
        }
        let dir = self.overlay_dir(id);
        let (h, _) =
            overlay::read_map(&dir.join("map")).with_context(|| format!("overlay {id}"))?;
        let o = Arc::new(Overlay::open(&dir, &self.base_path(&h.base))?);
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(id.to_string(), Arc::downgrade(&o));
        Ok(o)
    }

    /// Opens (or returns the already open) shared base image.
    pub fn open_base(&self, name: &str) -> Result<Arc<BaseImage>> {
        check_name("base", name)?;
        let mut reg = self
            .open_bases
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned registry"))?;
        if let Some(b) = reg.get(name).and_then(Weak::upgrade) {
            return Ok(b);
        }
        let path = self.base_path(name);
        let file = File::open(&path).with_context(|| format!("base {name} not found"))?;
        let size = file.metadata()?.len();
        let b = Arc::new(BaseImage {
            name: name.to_string(),
            file,
            size,
        });
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(name.to_string(), Arc::downgrade(&b));
        Ok(b)
    }

    /// Freezes the current state of overlay `id` into a new overlay `snapshot_id` on the
    /// same base. Reflinked (O(1)) where the filesystem can, else a copy of allocated
    /// chunks only. Writers to `id` are paused for the duration.
    pub fn snapshot_overlay(&self, id: &str, snapshot_id: &str) -> Result<OverlayInfo> {
        check_name("overlay", snapshot_id)?;
        check_name("overlay", id)?;
        if !self.overlay_dir(id).exists() {
            bail!("overlay {id} not found");
        }
        let src = self.open_overlay(id)?;
        let _a = self.admin()?;
        let dir = self.overlay_dir(snapshot_id);
        if dir.exists() {
            bail!("overlay {snapshot_id} already exists");
        }
        let tmp = self
            .root
            .join("overlays")
            .join(format!(".tmp-{snapshot_id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        overlay::create_private_dir(&tmp)?;
        let reflinked = match src.snapshot_into(&tmp, id) {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!("snapshot {id} -> {snapshot_id}")));
            }
        };
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, &dir)?;
        sync_dir(&self.root.join("overlays"))?;
        let mut info = self.overlay_info(snapshot_id)?;
        info.reflinked = reflinked;
        Ok(info)
    }

    /// Directory of overlay `id` (`overlays/<id>`), whether or not it exists.
    pub fn overlay_path(&self, id: &str) -> Result<PathBuf> {
        check_name("overlay", id)?;
        Ok(self.overlay_dir(id))
    }

    /// The raw file of base `name` (`bases/<name>.raw`), whether or not it exists.
    pub fn base_file(&self, name: &str) -> Result<PathBuf> {
        check_name("base", name)?;
        Ok(self.base_path(name))
    }

    /// Takes a prepared raw file as base `name` (renamed in when on the same file
    /// system, else copied); refused when the base exists. `src` is consumed.
    pub fn adopt_base(&self, name: &str, src: &Path) -> Result<BaseInfo> {
        check_name("base", name)?;
        let _a = self.admin()?;
        let dst = self.base_path(name);
        if dst.exists() {
            bail!("base {name} already exists");
        }
        let tmp = self.root.join("bases").join(format!(".tmp-{name}.raw"));
        if std::fs::rename(src, &tmp).is_err() {
            std::fs::copy(src, &tmp).with_context(|| format!("copy {}", src.display()))?;
            let _ = std::fs::remove_file(src);
        }
        let f = File::open(&tmp)?;
        f.sync_all()?;
        f.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        std::fs::rename(&tmp, &dst)?;
        sync_dir(&self.root.join("bases"))?;
        self.base_info(name)
    }

    /// Takes a prepared overlay directory (`data` + `map` as [`overlay`] describes)
    /// as overlay `id`; its map must name an existing base of the same size.
    /// Refused when the overlay exists. `src` is consumed.
    pub fn adopt_overlay(&self, id: &str, src: &Path) -> Result<OverlayInfo> {
        check_name("overlay", id)?;
        let _a = self.admin()?;
        let dir = self.overlay_dir(id);
        if dir.exists() {
            bail!("overlay {id} already exists");
        }
        let (h, _) = overlay::read_map(&src.join("map")).context("prepared overlay")?;
        let b = self.base_info(&h.base)?;
        if b.size != h.size {
            bail!(
                "prepared overlay is {} bytes but base {} is {}",
                h.size,
                h.base,
                b.size
            );
        }
        let tmp = self.root.join("overlays").join(format!(".tmp-{id}"));
        let _ = std::fs::remove_dir_all(&tmp);
        if std::fs::rename(src, &tmp).is_err() {
            overlay::create_private_dir(&tmp)?;
            for f in ["data", "map"] {
                std::fs::copy(src.join(f), tmp.join(f))
                    .with_context(|| format!("copy {}", src.join(f).display()))?;
            }
            let _ = std::fs::remove_dir_all(src);
        }
        for f in ["data", "map"] {
            let file = File::open(tmp.join(f))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.sync_all()?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, &dir)?;
        sync_dir(&self.root.join("overlays"))?;
        self.overlay_info(id)
    }

    /// Every overlay and snapshot, sorted by id (unreadable ones are skipped with a warning).
    pub fn list_overlays(&self) -> Result<Vec<OverlayInfo>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.root.join("overlays"))?.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if valid_name(&id) {
                match self.overlay_info(&id) {
                    Ok(i) => v.push(i),
                    Err(err) => tracing::warn!("skipping overlay {id}: {err:#}"),
                }
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// Deletes an overlay; refused while a connection has it open.
    pub fn delete_overlay(&self, id: &str) -> Result<()> {
        check_name("overlay", id)?;
        let _a = self.admin()?;
        let dir = self.overlay_dir(id);
        let doomed = self.root.join("overlays").join(format!(".tmp-del-{id}"));
        {
            // Holding the registry lock: no connection can open it while we move it away.
            let reg = self
                .open_overlays
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned registry"))?;
            if reg.get(id).is_some_and(|w| w.strong_count() > 0) {
                bail!("overlay {id} is in use");
            }
            if !dir.exists() {
                bail!("overlay {id} not found");
            }
            std::fs::rename(&dir, &doomed).with_context(|| format!("move {}", dir.display()))?;
        }
        sync_dir(&self.root.join("overlays"))?;
        std::fs::remove_dir_all(&doomed).with_context(|| format!("remove {}", doomed.display()))
    }

    /// Deletes a base; refused while any overlay is built on it or it is exported.
    pub fn delete_base(&self, name: &str) -> Result<()> {
        check_name("base", name)?;
        let _a = self.admin()?;
        if !self.base_path(name).exists() {
            bail!("base {name} not found");
        }
        let users: Vec<String> = self
            .list_overlays()?
            .into_iter()
            .filter(|o| o.base == name)
            .map(|o| o.id)
            .collect();
        if !users.is_empty() {
            bail!("base {name} is used by overlays {}", users.join(", "));
        }
        let open = self
            .open_bases
            .lock()
            .map(|r| r.get(name).map(|w| w.strong_count() > 0).unwrap_or(false))
            .unwrap_or(true);
        if open {
            bail!("base {name} is being exported");
        }
        let p = self.base_path(name);
        std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
        sync_dir(&self.root.join("bases"))
    }
}
