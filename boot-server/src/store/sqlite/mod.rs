//! Embedded SQLite backend of the [`Store`](super::Store), one file per
//! aggregate (`images`, `nodes`, `leases`, `reservations`, `disks`,
//! `commands`, `events`) over the shared machinery here.
//!
//! Durability and throughput: the database runs in WAL mode with
//! `synchronous=FULL`, and every write goes through one writer thread that
//! drains all writes queued at that moment into a single transaction (group
//! commit: one fsync for many DHCP ACKs); when writes come from several
//! writers at once it first lets them gather for a millisecond. Each write
//! runs in its own savepoint, so one failing write does not undo its
//! neighbours. A caller's future
//! resolves only after the transaction that holds its write has committed.
//! Reads use a separate connection and never wait for the writer.
//!
//! Failures are reported, not fatal: a locked or full database fails the
//! writes of that batch (their callers see the error) and the writer goes on
//! with the next batch.

mod commands;
mod disks;
mod envs;
mod events;
mod hosts;
mod images;
mod leases;
mod nodes;
mod reservations;
pub mod schema;
mod servers;
mod tokens;

use super::Result;
use anyhow::{anyhow, Context};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Delivers a write's result once the transaction holding it has committed
/// (or failed with the given error).
type Finish = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// A write: runs inside the batch transaction; `true` keeps its savepoint.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 512;
/// How long the writer lets concurrent writes gather before it commits
/// (`[store] commit_delay_us`): fewer fsyncs and writer wake-ups; at 16,000
/// DHCP exchanges/s it saved 1-2 µs of the ~21 µs of CPU per exchange.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(1);

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
    stats: Arc<WriterStats>,
}

/// Counters of the writer thread (group commit is visible as `commits` < `writes`).
#[derive(Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Writes (jobs) that ran in committed transactions.
    pub writes: AtomicU64,
    /// Transactions that failed (their writes were reported as failed).
    pub failures: AtomicU64,
    /// Called after every transaction with its duration (batch start to
    /// commit, fsync included) and whether it committed (metrics hook).
    pub on_commit: std::sync::OnceLock<CommitHook>,
}

/// See [`WriterStats::on_commit`].
pub type CommitHook = Box<dyn Fn(std::time::Duration, bool) + Send + Sync>;

impl std::fmt::Debug for WriterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterStats")
            .field("commits", &self.commits)
            .field("writes", &self.writes)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `state.db` in `state_dir` (made 0700, the
    /// database files 0600) and brings its schema to this build's version.
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::open_with(state_dir, DEFAULT_COMMIT_DELAY)
    }

    /// [`open`](Self::open) with the writer's group-commit delay (see
    /// [`DEFAULT_COMMIT_DELAY`]; zero commits as soon as the writer is free).
    pub fn open_with(state_dir: &Path, commit_delay: Duration) -> Result<Self> {
        crate::fsutil::private_dir(state_dir)?;
        let path = state_dir.join("state.db");
        let mut write_conn = open_connection(&path)?;
        // Every hot write is a cached statement (the default 16 is too few
        // for all aggregates' statements plus the savepoints).
        write_conn.set_prepared_statement_cache_capacity(128);
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let p = state_dir.join(f);
            if p.exists() {
                crate::fsutil::restrict_file(&p)?;
            }
        }
        schema::upgrade(&mut write_conn, &path)?;
        let reader = open_connection(&path)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(write_conn, rx, &writer_stats, commit_delay))
            .context("starting store writer")?;
        Ok(SqliteStore {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            path,
            stats,
        })
    }

    /// Copies the whole database into `dest` (a consistent online backup).
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_path_buf();
        self.read(move |c| schema::backup_to(c, &dest)).await
    }

    /// The writer's counters.
    pub fn writer_stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside the next group-commit transaction; resolves once committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
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
                    Err(e) => Err(anyhow!("store commit failed: {e}")),
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
    pub(crate) async fn exec(
        &self,
        sql: &'static str,
        args: Vec<rusqlite::types::Value>,
    ) -> Result<usize> {
        self.write(move |c| {
            Ok(c.prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(args))?)
        })
        .await
    }

    /// Runs a read on the reader connection off the async runtime.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
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

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Job>,
    stats: &WriterStats,
    commit_delay: Duration,
) {
    let mut concurrent = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        drain(&rx, &mut batch);
        // Writes arriving together (now or in the last batch) mean several
        // writers: give the others `commit_delay` to join this transaction,
        // one fsync and one wake-up for all of them. Writes that come one at
        // a time (an admin command, the engine's steps) never wait. A sleep, not a timed
        // receive: that would wake this thread for every write that joins.
        if !commit_delay.is_zero() && (concurrent || batch.len() > 1) {
            std::thread::sleep(commit_delay);
            drain(&rx, &mut batch);
        }
        concurrent = batch.len() > 1;
        let mut finishers = Vec::with_capacity(batch.len());
        let started = std::time::Instant::now();
        let outcome = run_batch(&mut conn, batch, &mut finishers);
        if let Some(hook) = stats.on_commit.get() {
            hook(started.elapsed(), outcome.is_ok());
        }
        match &outcome {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .writes
                    .fetch_add(finishers.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = &outcome {
            tracing::error!(error = %e, writes = finishers.len(), "store commit failed; those writes are reported as failed");
        }
        for finish in finishers {
            finish(outcome.clone());
        }
    }
}

/// Moves the writes already queued into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    finishers: &mut Vec<Finish>,
) -> std::result::Result<(), String> {
    // IMMEDIATE: take the write lock up front, so a read-then-write job never
    // fails to upgrade while another process holds the database.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    // A job dropped unrun (after an error here) drops its sender: its caller
    // sees the write as failed.
    // The savepoint statements are prepared once and cached: parsing them
    // for every write cost more than the DHCP lease write itself.
    let run = |sql: &str| -> std::result::Result<(), String> {
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute([]).map(|_| ()))
            .map_err(|e| e.to_string())
    };
    for job in batch {
        run("SAVEPOINT job")?;
        let (keep, finish) = job(&tx);
        finishers.push(finish);
        if !keep {
            // this write only; its neighbours stay
            run("ROLLBACK TO job")?;
        }
        run("RELEASE job")?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// A JSON column, `None` when absent or unparsable.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

#[cfg(test)]
mod tests {
    //! SQLite-only behaviour; the semantics every backend shares are in
    //! `store::conformance`.
    use super::*;
    use crate::model::{Sighting, Slot, SlotStep};
    use crate::store::conformance::{lease, mac};
    use crate::store::{EnvStore, Expect, Fence, ImageStore, LeaseStore, NodeStore};

    #[tokio::test]
    async fn slots_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = SqliteStore::open(dir.path()).unwrap();
            let (n, _) = s
                .observe_node(&Sighting {
                    mac: mac(1),
                    ..Default::default()
                })
                .await
                .unwrap();
            let a0 = Slot {
                environment: "a".into(),
                index: 0,
                node: Some(n.id.clone()),
                step: SlotStep::Pending,
                ..Default::default()
            };
            assert!(s
                .write_slots(Fence::default(), &[(a0, Expect::Step(SlotStep::Vacant))])
                .await
                .unwrap());
            n.id
        };
        let s = SqliteStore::open(dir.path()).unwrap();
        let slots = s.slots(None).await.unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].node.as_deref(), Some(id.as_str()));
        assert_eq!(slots[0].step, SlotStep::Pending);
        assert_eq!(s.node(&id).await.unwrap().unwrap().slot, Some(0));
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
                            mac(i),
                            [10, 0, (i >> 8) as u8, (i & 0xff) as u8],
                            60_000,
                        ))
                        .await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let commits = store.writer_stats().commits.load(Ordering::Relaxed);
            let writes = store.writer_stats().writes.load(Ordering::Relaxed);
            // Grouping is the point: far fewer fsynced transactions than writes.
            assert_eq!(writes, 400);
            assert!(
                commits < 200,
                "{commits} commits for {writes} writes: no group commit"
            );
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.leases().await.unwrap().len(), 400);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_write_never_waits_out_the_commit_delay_and_concurrent_ones_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let delay = std::time::Duration::from_millis(500);
        let store = Arc::new(SqliteStore::open_with(dir.path(), delay).unwrap());
        let commits = |s: &SqliteStore| s.writer_stats().commits.load(Ordering::Relaxed);
        // One writer, one write at a time: each commits as soon as it comes.
        for i in 0..3u32 {
            let t = std::time::Instant::now();
            store
                .put_lease(&lease(mac(i), [10, 0, 0, i as u8], 60_000))
                .await
                .unwrap();
            assert!(t.elapsed() < delay, "lone write {i} took {:?}", t.elapsed());
        }
        let before = commits(&store);
        // Four waves of concurrent writes, 100 ms apart: once the writer has
        // seen writes arrive together it waits for more, so the later waves
        // join the first one's transaction. Committing at once would take at
        // least one transaction per wave.
        let mut waves = Vec::new();
        for wave in 0..4u32 {
            let writes: Vec<_> = (0..10u32)
                .map(|i| {
                    let store = store.clone();
                    let i = 100 + wave * 10 + i;
                    async move {
                        store
                            .put_lease(&lease(mac(i), [10, 0, 1, i as u8], 60_000))
                            .await
                    }
                })
                .collect();
            waves.push(tokio::spawn(futures_util::future::join_all(writes)));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for w in waves {
            for r in w.await.unwrap() {
                r.unwrap();
            }
        }
        let used = commits(&store) - before;
        assert!(
            used <= 3,
            "{used} commits for 4 waves of 10 concurrent writes"
        );
        assert_eq!(store.leases().await.unwrap().len(), 43);
    }

    #[tokio::test]
    async fn a_round_one_database_upgrades_with_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let fixture = include_str!("../../../tests/fixtures/round1-state.sql");
        Connection::open(&db)
            .unwrap()
            .execute_batch(fixture)
            .unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert!(
            dir.path().join("state.db.v0.bak").exists(),
            "no backup before the upgrade"
        );
        // Data survives; the plaintext token became a digest that still identifies the node.
        assert_eq!(store.images().await.unwrap()[0].name, "lab");
        assert_eq!(store.default_image().await.unwrap().as_deref(), Some("lab"));
        let token = "712ff2140a73773bff97bd4ba4183234";
        let (node, next) = store
            .node_by_token(&crate::secret::digest(token))
            .await
            .unwrap()
            .expect("round-1 token still valid after the upgrade");
        assert_eq!(node.id, "node-525400aa0001");
        assert!(next);
        assert!(
            store.node_by_token(token).await.unwrap().is_none(),
            "plaintext token kept"
        );
        drop(store);
        // Opening again is a no-op; a database from the future is refused.
        SqliteStore::open(dir.path()).unwrap();
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(dir.path())
            .err()
            .expect("newer schema accepted");
        assert!(
            format!("{err:#}").contains("newer than this boot-server"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn state_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = SqliteStore::open(&state).unwrap();
        store
            .put_lease(&lease(mac(1), [10, 0, 0, 1], 60_000))
            .await
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("state.db")), 0o600);
    }
}
