//! Embedded SQLite backend of [`Store`].
//!
//! Durability and throughput: the database runs in WAL mode with
//! `synchronous=FULL`, and every write goes through one writer thread that
//! drains all writes queued at that moment into a single transaction (group
//! commit: one fsync for many DHCP ACKs). Each write runs in its own savepoint,
//! so one failing write does not undo its neighbours. A caller's future
//! resolves only after the transaction that holds its write has committed.
//! Reads use a separate connection and never wait for the writer.

use super::*;
use anyhow::{anyhow, bail, Context};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// Delivers a write's result once the transaction holding it has committed
/// (or failed with the given error).
type Finish = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A write: runs inside the batch transaction; `true` keeps its savepoint.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 512;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    selector TEXT PRIMARY KEY,
    image TEXT NOT NULL
);
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

pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `state.db` in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let path = state_dir.join("state.db");
        let write_conn = open_connection(&path)?;
        write_conn
            .execute_batch(SCHEMA)
            .context("creating schema")?;
        let reader = open_connection(&path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(write_conn, rx))
            .context("starting store writer")?;
        Ok(SqliteStore {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Runs `f` inside the next group-commit transaction; resolves once committed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |conn| {
            let result = f(conn);
            let keep = result.is_ok();
            let finish: Finish = Box::new(move |commit| {
                let outcome = match commit {
                    Err(e) => Err(anyhow!("commit failed: {e}")),
                    Ok(()) => result,
                };
                let _ = done_tx.send(outcome);
            });
            (keep, finish)
        });
        self.writer
            .send(job)
            .map_err(|_| anyhow!("store writer has stopped"))?;
        done_rx
            .await
            .map_err(|_| anyhow!("store writer dropped the write"))?
    }

    /// One statement as a durable write; returns the number of rows changed.
    async fn exec(&self, sql: &'static str, args: Vec<rusqlite::types::Value>) -> Result<usize> {
        self.write(move |c| Ok(c.execute(sql, rusqlite::params_from_iter(args))?))
            .await
    }

    /// Runs a read on the reader connection off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| anyhow!("store reader poisoned"))?;
            f(&conn)
        })
        .await
        .context("store read task")?
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let outcome = run_batch(&mut conn, batch, &mut finishers);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "store commit failed");
        }
        for finish in finishers {
            finish(outcome.clone());
        }
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    finishers: &mut Vec<Finish>,
) -> std::result::Result<(), String> {
    // IMMEDIATE: take the write lock up front, so a read-then-write job never
    // fails to upgrade while the CLI (another process) writes.
    let mut tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    // A job dropped unrun (after an error here) drops its sender: its caller
    // sees the write as failed.
    for job in batch {
        let sp = tx.savepoint().map_err(|e| e.to_string())?;
        let (keep, finish) = job(&sp);
        finishers.push(finish);
        if keep {
            sp.commit().map_err(|e| e.to_string())?;
        } // else: dropping the savepoint rolls back this write only
    }
    tx.commit().map_err(|e| e.to_string())
}

fn json_col<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

const NODE_COLS: &str = "id, mac, uuid, arch, state, first_seen_ms, last_seen_ms, last_heartbeat_ms, booted_image, inventory, heartbeat";

fn node_from_row(r: &Row) -> rusqlite::Result<Node> {
    let state: String = r.get(4)?;
    Ok(Node {
        id: r.get(0)?,
        mac: r.get(1)?,
        uuid: r.get(2)?,
        arch: r.get(3)?,
        state: NodeState::parse(&state).unwrap_or(NodeState::Discovered),
        first_seen_ms: r.get(5)?,
        last_seen_ms: r.get(6)?,
        last_heartbeat_ms: r.get(7)?,
        booted_image: r.get(8)?,
        inventory: json_col(r.get(9)?),
        heartbeat: json_col(r.get(10)?),
    })
}

fn node_where(conn: &Connection, clause: &str, arg: &str) -> Result<Option<Node>> {
    let sql = format!("SELECT {NODE_COLS} FROM nodes WHERE {clause}");
    Ok(conn
        .query_row(&sql, params![arg], node_from_row)
        .optional()?)
}

fn command_from_row(r: &Row) -> rusqlite::Result<(i64, String, String, String, String, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_command(t: (i64, String, String, String, String, i64)) -> Result<QueuedCommand> {
    Ok(QueuedCommand {
        id: t.0,
        node: t.1,
        command: serde_json::from_str(&t.2).context("stored command body")?,
        status: t.3,
        detail: t.4,
        created_ms: t.5,
    })
}

fn lease_from_row(
    r: &Row,
) -> rusqlite::Result<(String, String, i64, Option<String>, Option<Vec<u8>>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_image(&self, image: &BootImage) -> Result<()> {
        let body = serde_json::to_string(image)?;
        let name = image.name.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO images(name, body) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                params![name, body],
            )?;
            Ok(())
        })
        .await
    }

    async fn image(&self, name: &str) -> Result<Option<BootImage>> {
        let name = name.to_string();
        self.read(move |c| {
            let body: Option<String> = c
                .query_row(
                    "SELECT body FROM images WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()?;
            body.map(|b| serde_json::from_str(&b).context("stored image"))
                .transpose()
        })
        .await
    }

    async fn images(&self) -> Result<Vec<BootImage>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT body FROM images ORDER BY name")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|b| Ok(serde_json::from_str(&b?)?)).collect()
        })
        .await
    }

    async fn remove_image(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write(move |c| {
            let used: i64 = c.query_row(
                "SELECT COUNT(*) FROM assignments WHERE image = ?1",
                params![name],
                |r| r.get(0),
            )?;
            let default: Option<String> = c
                .query_row(
                    "SELECT value FROM settings WHERE key = 'default_image'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if used > 0 || default.as_deref() == Some(name.as_str()) {
                bail!(
                    "image {name} is still assigned ({used} assignment(s){}); unassign it first",
                    if default.as_deref() == Some(name.as_str()) {
                        ", and it is the default"
                    } else {
                        ""
                    }
                );
            }
            if c.execute("DELETE FROM images WHERE name = ?1", params![name])? == 0 {
                bail!("no image named {name}");
            }
            Ok(())
        })
        .await
    }

    async fn set_default_image(&self, image: Option<&str>) -> Result<()> {
        let image = image.map(str::to_string);
        self.write(move |c| {
            match image {
                Some(i) => {
                    let exists: i64 = c.query_row("SELECT COUNT(*) FROM images WHERE name = ?1", params![i], |r| r.get(0))?;
                    if exists == 0 {
                        bail!("no image named {i}");
                    }
                    c.execute(
                        "INSERT INTO settings(key, value) VALUES ('default_image', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        params![i],
                    )?
                }
                None => c.execute("DELETE FROM settings WHERE key = 'default_image'", [])?,
            };
            Ok(())
        })
        .await
    }

    async fn default_image(&self) -> Result<Option<String>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT value FROM settings WHERE key = 'default_image'",
                [],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn assign(&self, selector: &Selector, image: Option<&str>) -> Result<()> {
        let key = selector.key();
        let image = image.map(str::to_string);
        self.write(move |c| {
            match image {
                Some(i) => {
                    let exists: i64 = c.query_row("SELECT COUNT(*) FROM images WHERE name = ?1", params![i], |r| r.get(0))?;
                    if exists == 0 {
                        bail!("no image named {i}");
                    }
                    c.execute(
                        "INSERT INTO assignments(selector, image) VALUES (?1, ?2) ON CONFLICT(selector) DO UPDATE SET image = excluded.image",
                        params![key, i],
                    )?
                }
                None => c.execute("DELETE FROM assignments WHERE selector = ?1", params![key])?,
            };
            Ok(())
        })
        .await
    }

    async fn assignment(&self, selector: &Selector) -> Result<Option<String>> {
        let key = selector.key();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT image FROM assignments WHERE selector = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn assignments(&self) -> Result<Vec<(Selector, String)>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT selector, image FROM assignments ORDER BY selector")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (sel, image) = row?;
                let selector = match sel.split_once(':') {
                    Some(("mac", v)) => Selector::Mac(v.to_string()),
                    Some(("uuid", v)) => Selector::Uuid(v.to_string()),
                    _ => continue,
                };
                out.push((selector, image));
            }
            Ok(out)
        })
        .await
    }

    async fn observe_node(&self, s: &Sighting) -> Result<(Node, bool)> {
        let s = s.clone();
        self.write(move |c| {
            let now = now_ms();
            let existing = node_where(c, "mac = ?1", &s.mac)?;
            let new = existing.is_none();
            if new {
                c.execute(
                    "INSERT INTO nodes(id, mac, uuid, arch, state, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, 'discovered', ?5, ?5)",
                    params![Node::id_for_mac(&s.mac), s.mac, s.uuid, s.arch, now],
                )?;
            } else {
                c.execute(
                    "UPDATE nodes SET last_seen_ms = ?2, uuid = COALESCE(?3, uuid), arch = COALESCE(?4, arch) WHERE mac = ?1",
                    params![s.mac, now, s.uuid, s.arch],
                )?;
            }
            let node = node_where(c, "mac = ?1", &s.mac)?.ok_or_else(|| anyhow!("node vanished"))?;
            Ok((node, new))
        })
        .await
    }

    async fn node(&self, id: &str) -> Result<Option<Node>> {
        let id = id.to_string();
        self.read(move |c| node_where(c, "id = ?1", &id)).await
    }

    async fn node_by_mac(&self, mac: &str) -> Result<Option<Node>> {
        let mac = mac.to_string();
        self.read(move |c| node_where(c, "mac = ?1", &mac)).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {NODE_COLS} FROM nodes ORDER BY id"))?;
            let rows = st.query_map([], node_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_node_state(&self, id: &str, state: NodeState) -> Result<()> {
        let id = id.to_string();
        self.write(move |c| {
            if c.execute(
                "UPDATE nodes SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )? == 0
            {
                bail!("no node {id}");
            }
            Ok(())
        })
        .await
    }

    async fn set_booted_image(&self, id: &str, image: &str) -> Result<()> {
        self.exec(
            "UPDATE nodes SET booted_image = ?2, state = CASE WHEN state IN ('quarantined','retired') THEN state ELSE 'provisioning' END WHERE id = ?1",
            vec![id.to_string().into(), image.to_string().into()],
        )
        .await?;
        Ok(())
    }

    async fn record_hello(&self, id: &str, inventory: &serde_json::Value) -> Result<()> {
        self.exec(
            "UPDATE nodes SET inventory = ?2, last_heartbeat_ms = ?3, last_seen_ms = ?3, state = CASE WHEN state IN ('quarantined','retired') THEN state ELSE 'ready' END WHERE id = ?1",
            vec![id.to_string().into(), inventory.to_string().into(), now_ms().into()],
        )
        .await?;
        Ok(())
    }

    async fn record_heartbeat(&self, id: &str, heartbeat: &serde_json::Value) -> Result<()> {
        self.exec(
            "UPDATE nodes SET heartbeat = ?2, last_heartbeat_ms = ?3, last_seen_ms = ?3, state = CASE WHEN state = 'failed' THEN 'ready' ELSE state END WHERE id = ?1",
            vec![id.to_string().into(), heartbeat.to_string().into(), now_ms().into()],
        )
        .await?;
        Ok(())
    }

    async fn set_next_agent_token(&self, id: &str, token: &str) -> Result<()> {
        self.exec(
            "UPDATE nodes SET next_agent_token = ?2 WHERE id = ?1",
            vec![id.to_string().into(), token.to_string().into()],
        )
        .await?;
        Ok(())
    }

    async fn node_by_agent_token(&self, token: &str) -> Result<Option<(Node, bool)>> {
        let token = token.to_string();
        self.read(move |c| {
            if let Some(n) = node_where(c, "agent_token = ?1", &token)? {
                return Ok(Some((n, false)));
            }
            Ok(node_where(c, "next_agent_token = ?1", &token)?.map(|n| (n, true)))
        })
        .await
    }

    async fn promote_agent_token(&self, id: &str, token: &str) -> Result<()> {
        self.exec(
            "UPDATE nodes SET agent_token = next_agent_token, next_agent_token = NULL WHERE id = ?1 AND next_agent_token = ?2",
            vec![id.to_string().into(), token.to_string().into()],
        )
        .await?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT mac, ip, expires_at_ms, hostname, client_id FROM leases ORDER BY ip",
            )?;
            let rows = st.query_map([], lease_from_row)?;
            let mut out = Vec::new();
            for row in rows {
                let (mac, ip, expires_at_ms, hostname, client_id) = row?;
                out.push(Lease {
                    mac,
                    ip: ip.parse().context("stored lease ip")?,
                    expires_at_ms,
                    hostname,
                    client_id,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn put_lease(&self, l: &Lease) -> Result<()> {
        let l = l.clone();
        self.write(move |c| {
            // An address belongs to one MAC: drop any older binding of that address.
            c.execute("DELETE FROM leases WHERE ip = ?1 AND mac <> ?2", params![l.ip.to_string(), l.mac])?;
            c.execute(
                "INSERT INTO leases(mac, ip, expires_at_ms, hostname, client_id) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(mac) DO UPDATE SET ip = excluded.ip, expires_at_ms = excluded.expires_at_ms, hostname = excluded.hostname, client_id = excluded.client_id",
                params![l.mac, l.ip.to_string(), l.expires_at_ms, l.hostname, l.client_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn node_by_lease_ip(&self, ip: Ipv4Addr) -> Result<Option<Node>> {
        let ip = ip.to_string();
        self.read(move |c| node_where(c, "mac = (SELECT mac FROM leases WHERE ip = ?1)", &ip))
            .await
    }

    async fn remove_lease(&self, mac: &str, ip: Ipv4Addr) -> Result<()> {
        self.exec(
            "DELETE FROM leases WHERE mac = ?1 AND ip = ?2",
            vec![mac.to_string().into(), ip.to_string().into()],
        )
        .await?;
        Ok(())
    }

    async fn attach_disk(&self, overlay: &str, node: &str, export: &str) -> Result<()> {
        self.exec(
            "INSERT INTO disk_attachments(overlay, node, export, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(overlay) DO UPDATE SET node = excluded.node, export = excluded.export, created_ms = excluded.created_ms",
            vec![overlay.to_string().into(), node.to_string().into(), export.to_string().into(), now_ms().into()],
        )
        .await?;
        Ok(())
    }

    async fn detach_disk(&self, overlay: &str) -> Result<bool> {
        Ok(self
            .exec(
                "DELETE FROM disk_attachments WHERE overlay = ?1",
                vec![overlay.to_string().into()],
            )
            .await?
            > 0)
    }

    async fn disk_attachments(&self) -> Result<Vec<DiskAttachment>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT overlay, node, export, created_ms FROM disk_attachments ORDER BY overlay",
            )?;
            let rows = st.query_map([], |r| {
                Ok(DiskAttachment {
                    overlay: r.get(0)?,
                    node: r.get(1)?,
                    export: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn queue_command(&self, node: &str, command: &boot_proto::CommandKind) -> Result<i64> {
        let (node, body) = (node.to_string(), serde_json::to_string(command)?);
        self.write(move |c| {
            c.execute(
                "INSERT INTO commands(node, body, status, created_ms) VALUES (?1, ?2, 'queued', ?3)",
                params![node, body, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn take_commands(&self, node: &str) -> Result<Vec<QueuedCommand>> {
        let node = node.to_string();
        self.write(move |c| {
            let mut st = c.prepare(
                "SELECT id, node, body, status, detail, created_ms FROM commands WHERE node = ?1 AND status = 'queued' ORDER BY id",
            )?;
            let rows: Vec<_> = st.query_map(params![node], command_from_row)?.collect::<rusqlite::Result<_>>()?;
            c.execute("UPDATE commands SET status = 'delivered' WHERE node = ?1 AND status = 'queued'", params![node])?;
            rows.into_iter().map(to_command).collect()
        })
        .await
    }

    async fn command(&self, id: i64) -> Result<Option<QueuedCommand>> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, node, body, status, detail, created_ms FROM commands WHERE id = ?1",
                params![id],
                command_from_row,
            )
            .optional()?
            .map(to_command)
            .transpose()
        })
        .await
    }

    async fn update_command(
        &self,
        node: &str,
        id: i64,
        status: &str,
        detail: &str,
    ) -> Result<bool> {
        Ok(self
            .exec(
                "UPDATE commands SET status = ?3, detail = ?4 WHERE id = ?1 AND node = ?2",
                vec![
                    id.into(),
                    node.to_string().into(),
                    status.to_string().into(),
                    detail.to_string().into(),
                ],
            )
            .await?
            > 0)
    }

    async fn record_event(
        &self,
        node: Option<&str>,
        kind: &str,
        detail: serde_json::Value,
    ) -> Result<i64> {
        let (node, kind, detail) = (
            node.map(str::to_string),
            kind.to_string(),
            detail.to_string(),
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO events(at_ms, node, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![now_ms(), node, kind, detail],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn events(&self, after_id: i64, node: Option<&str>, limit: u32) -> Result<Vec<Event>> {
        let node = node.map(str::to_string);
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT id, at_ms, node, kind, detail FROM events WHERE id > ?1 AND (?2 IS NULL OR node = ?2) ORDER BY id LIMIT ?3",
            )?;
            let rows = st.query_map(params![after_id, node, limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    node: r.get(2)?,
                    kind: r.get(3)?,
                    detail: json_col(r.get(4)?).unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac: &str, ip: [u8; 4]) -> Lease {
        Lease {
            mac: mac.into(),
            ip: Ipv4Addr::from(ip),
            expires_at_ms: now_ms() + 60_000,
            hostname: None,
            client_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_commit_in_groups_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
            let mut tasks = Vec::new();
            for i in 0..400u32 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    store
                        .put_lease(&lease(
                            &format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
                            [10, 0, (i >> 8) as u8, (i & 0xff) as u8],
                        ))
                        .await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.leases().await.unwrap().len(), 400);
    }

    #[tokio::test]
    async fn a_failing_write_does_not_undo_its_batch_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let (l1, l2) = (
            lease("02:00:00:00:00:01", [10, 0, 0, 1]),
            lease("02:00:00:00:00:02", [10, 0, 0, 2]),
        );
        let sel = Selector::Mac("02:00:00:00:00:01".into());
        let (a, b, c) = tokio::join!(
            store.put_lease(&l1),
            store.assign(&sel, Some("missing")),
            store.put_lease(&l2)
        );
        a.unwrap();
        assert!(b
            .unwrap_err()
            .to_string()
            .contains("no image named missing"));
        c.unwrap();
        assert_eq!(store.leases().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_address_belongs_to_one_mac() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .put_lease(&lease("02:00:00:00:00:01", [10, 0, 0, 1]))
            .await
            .unwrap();
        store
            .put_lease(&lease("02:00:00:00:00:02", [10, 0, 0, 1]))
            .await
            .unwrap();
        let leases = store.leases().await.unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].mac, "02:00:00:00:00:02");
    }

    #[tokio::test]
    async fn images_in_use_cannot_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let image = BootImage {
            name: "lab".into(),
            version: "1".into(),
            kind: ImageKind::Linux,
            kernel: Some("k".into()),
            initrd: None,
            cmdline: String::new(),
            archs: vec![],
            san_url: None,
            checksum: None,
            size_bytes: 0,
        };
        store.put_image(&image).await.unwrap();
        store.set_default_image(Some("lab")).await.unwrap();
        assert!(store.remove_image("lab").await.is_err());
        store.set_default_image(None).await.unwrap();
        store.remove_image("lab").await.unwrap();
        assert!(store.images().await.unwrap().is_empty());
    }
}
