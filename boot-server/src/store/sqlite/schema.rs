//! Versioned schema of the SQLite store (`PRAGMA user_version`, via
//! `rusqlite_migration`). Version numbers are shared with the PostgreSQL
//! backend to come, which will carry its own SQL for each version.
//!
//! - 1: round 1's tables (created with `IF NOT EXISTS`, so a round-1 database,
//!   which has them at `user_version` 0, upgrades in place).
//! - 2: node enrolment (serial, labels, power), observed address, agent tokens
//!   stored as SHA-256 digests (round-1 plaintext tokens are hashed in place),
//!   command redelivery time, DHCP reservations, event index by kind.
//! - 3: the engine: environments, slots (at most one per node), load
//!   samples; what a node's hello said (time, image, agent protocol).
//! - 4: API tokens.
//! - 5: failover hosts and their VMs.
//! - 8: node boot counter, the boot each command is bound to.

use anyhow::{bail, Context, Result};
use rusqlite::Connection;
use rusqlite_migration::{Migrations, SchemaVersion, M};
use std::path::Path;

const V1: &str = r#"
CREATE TABLE IF NOT EXISTS images (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (selector TEXT PRIMARY KEY, image TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    mac TEXT NOT NULL UNIQUE,
    uuid TEXT,
    arch TEXT,
    state TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    last_heartbeat_ms BIGINT,
    booted_image TEXT,
    inventory TEXT,
    heartbeat TEXT,
    agent_token TEXT UNIQUE,
    next_agent_token TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS leases (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL UNIQUE,
    expires_at_ms BIGINT NOT NULL,
    hostname TEXT,
    client_id BLOB
);
CREATE TABLE IF NOT EXISTS disk_attachments (
    overlay TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    export TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_node ON commands(node, status);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    node TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node ON events(node, id);
"#;

const V2: &str = r#"
ALTER TABLE nodes ADD COLUMN enrolled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN serial TEXT;
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN power TEXT;
ALTER TABLE nodes ADD COLUMN observed_ip TEXT;
ALTER TABLE commands ADD COLUMN delivered_ms BIGINT;
CREATE TABLE reservations (
    mac TEXT PRIMARY KEY,
    ip TEXT NOT NULL UNIQUE,
    hostname TEXT
);
CREATE INDEX events_kind ON events(kind, id);
"#;

const V3: &str = r#"
ALTER TABLE nodes ADD COLUMN last_hello_ms BIGINT;
ALTER TABLE nodes ADD COLUMN running_image TEXT;
ALTER TABLE nodes ADD COLUMN agent_protocol INTEGER;
CREATE TABLE environments (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE slots (
    environment TEXT NOT NULL,
    idx INTEGER NOT NULL,
    node TEXT,
    step TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (environment, idx)
);
CREATE UNIQUE INDEX slots_node ON slots(node) WHERE node IS NOT NULL;
CREATE TABLE load_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    node TEXT NOT NULL,
    environment TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX load_samples_env ON load_samples(environment, at_ms);
"#;

const V4: &str = r#"
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    body TEXT NOT NULL
);
"#;

const V5: &str = r#"
CREATE TABLE servers (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
"#;

/// Version 6 (failover hosts): hosts with their secret's digest, and the
/// VMs they run, each as JSON.
const V6: &str = r#"
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX vms_host ON vms(host);
"#;

/// Version 7 (a serving server per overlay): which server holds and serves
/// each overlay, and the disk operations queued for an overlay's server.
const V7: &str = r#"
CREATE TABLE overlays (
    overlay TEXT PRIMARY KEY,
    server TEXT NOT NULL,
    base TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX overlays_server ON overlays(server);
CREATE TABLE disk_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL,
    done_ms BIGINT
);
CREATE INDEX disk_requests_server ON disk_requests(server, status);
"#;

/// Version 8 (commands bound to a boot): each
/// node's boot counter, advanced by every new boot's hello, and the boot
/// each command was queued for.
const V8: &str = r#"
ALTER TABLE nodes ADD COLUMN boot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN boot INTEGER NOT NULL DEFAULT 0;
"#;

/// Version 9: nothing here — PostgreSQL's V9 adds the functions through
/// which several servers allocate DHCP addresses; one server with SQLite
/// allocates in memory. (Kept so both backends count versions alike.)
const V9: &str = "-- nothing to change in SQLite";

/// Round-1 tokens were stored in plain text: store their digests instead.
fn hash_round1_tokens(tx: &rusqlite::Transaction) -> rusqlite_migration::HookResult {
    let rows: Vec<(String, Option<String>, Option<String>)> = {
        let mut st = tx.prepare("SELECT id, agent_token, next_agent_token FROM nodes")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (id, cur, next) in rows {
        let h = |t: Option<String>| t.map(|t| crate::secret::digest(&t));
        tx.execute(
            "UPDATE nodes SET agent_token = ?2, next_agent_token = ?3 WHERE id = ?1",
            rusqlite::params![id, h(cur), h(next)],
        )?;
    }
    Ok(())
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(V1),
        M::up_with_hook(V2, hash_round1_tokens),
        M::up(V3),
        M::up(V4),
        M::up(V5),
        M::up(V6),
        M::up(V7),
        M::up(V8),
        M::up(V9),
    ])
}

/// The schema version this build writes.
pub fn latest_version() -> usize {
    9
}

fn version_of(conn: &Connection) -> Result<usize> {
    Ok(conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .context("reading the schema version")? as usize)
}

/// Brings the database at `path` (open as `conn`) to the latest schema.
/// A database from a newer build is refused; an older one that holds data is
/// first copied next to it (`state.db.v<N>.bak`, SQLite online backup).
pub fn upgrade(conn: &mut Connection, path: &Path) -> Result<()> {
    let version = version_of(conn)?;
    let latest = latest_version();
    if version > latest {
        bail!(
            "{} has schema version {version}, newer than this boot-server understands ({latest}); \
             run the newer boot-server, or restore a backup (boot-server restore FILE)",
            path.display()
        );
    }
    if version == latest {
        return Ok(());
    }
    let has_data: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .context("inspecting the database")?;
    if has_data {
        let backup = path.with_file_name(format!(
            "{}.v{version}.bak",
            path.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("state.db")
        ));
        backup_to(conn, &backup)?;
        tracing::info!(from = version, to = latest, backup = %backup.display(), "upgrading the state database");
    }
    match migrations().current_version(conn) {
        Ok(SchemaVersion::Outside(_)) => {
            bail!("schema version {version} is not one this build knows")
        }
        Ok(_) => {}
        Err(e) => return Err(e).context("reading the schema version"),
    }
    migrations()
        .to_latest(conn)
        .with_context(|| format!("upgrading {} from schema version {version}", path.display()))
}

/// Copies the database into `dest` (online backup; the source may be in use).
pub fn backup_to(conn: &Connection, dest: &Path) -> Result<()> {
    let mut out = Connection::open(dest).with_context(|| format!("creating {}", dest.display()))?;
    {
        let b = rusqlite::backup::Backup::new(conn, &mut out).context("starting the backup")?;
        b.run_to_completion(256, std::time::Duration::from_millis(0), None)
            .with_context(|| format!("backing up into {}", dest.display()))?;
    }
    crate::fsutil::restrict_file(dest)?;
    Ok(())
}
