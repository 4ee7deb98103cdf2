//! The designated controller: a leader lease in the database (row
//! `controller`: holder, fencing token, expiry), so that of several boot
//! servers sharing one store exactly one runs the engine.
//!
//! Why a lease row and not an advisory lock held on a dedicated connection:
//! an advisory lock lives as long as its session, so a paused (SIGSTOP,
//! swapped, partitioned) holder keeps it until TCP gives up — minutes, not
//! seconds — and it carries no fencing token. The row expires on the
//! database's clock (no skew between servers), every takeover increments
//! the fence, slot writes lock the same row and refuse an older fence (see
//! `envs`), and the row says who holds it for `server list`.
//!
//! Timing: the holder renews every `ttl / 4`; a candidate tries every
//! `min(ttl / 4, 500 ms)`; so a dead holder is replaced within `ttl` plus
//! one try (3 s + 0.5 s by default, within the 5 s target). A holder that
//! cannot renew before its own deadline (measured from the start of its
//! last successful renewal, on its monotonic clock) stops its engine; if
//! it is paused past that point instead, its fenced writes are refused.

use super::PgStore;
use crate::model::SERVER_DOWN_AFTER_MS;
use crate::store::{Fence, Result};
use deadpool_postgres::GenericClient;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Who holds the controller lease, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerLease {
    /// Holder id (`host:pid:random`), empty before the first takeover.
    pub holder: String,
    /// The fencing token of the current holder (0: nobody yet).
    pub fence: u64,
    /// Milliseconds until it expires (negative: expired).
    pub expires_in_ms: i64,
}

impl PgStore {
    /// Takes the controller lease if it is free (expired), or renews it if
    /// `holder` holds it with `held`. Returns the fence while held. Server
    /// `name` neither takes nor renews it while another server is the
    /// preferred controller and up: a candidate whose heartbeat is younger
    /// than the lease time (at most [`SERVER_DOWN_AFTER_MS`]), so that a dead
    /// preferred controller is replaced as fast as any other (its heartbeat
    /// goes stale with its lease, not 5 s later).
    pub async fn claim_controller(
        &self,
        holder: &str,
        name: &str,
        held: Option<Fence>,
        ttl: Duration,
    ) -> Result<Option<Fence>> {
        let held = held.map(|f| f.0 as i64).unwrap_or(-1);
        let ttl_s = ttl.as_secs_f64();
        let preferred_up_ms = (ttl.as_millis() as i64).min(SERVER_DOWN_AFTER_MS);
        let row = self
            .client()
            .await?
            .query_opt(
                "WITH preferred AS (
                     SELECT EXISTS (
                         SELECT 1 FROM settings s JOIN servers v ON v.name = s.value
                         WHERE s.key = 'preferred_controller' AND s.value <> $4
                           AND (v.body::jsonb ->> 'holder') <> ''
                           AND v.heartbeat_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - $5
                     ) AS elsewhere)
                 UPDATE controller SET
                     fence = CASE WHEN holder = $1 AND fence = $2 THEN fence ELSE fence + 1 END,
                     taken_at = CASE WHEN holder = $1 AND fence = $2 THEN taken_at ELSE now() END,
                     holder = $1,
                     expires_at = now() + $3::FLOAT8 * interval '1 second'
                 FROM preferred
                 WHERE id = 1 AND NOT preferred.elsewhere
                   AND ((holder = $1 AND fence = $2) OR expires_at <= now())
                 RETURNING fence",
                &[&holder, &held, &ttl_s, &name, &preferred_up_ms],
            )
            .await?;
        Ok(row.map(|r| Fence(r.get::<_, i64>(0) as u64)))
    }

    /// Gives the lease up at once (clean shutdown), so another server takes
    /// over without waiting for the expiry.
    pub async fn resign_controller(&self, holder: &str, fence: Fence) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE controller SET expires_at = now() WHERE id = 1 AND holder = $1 AND fence = $2",
                &[&holder, &(fence.0 as i64)],
            )
            .await?
            > 0)
    }

    /// The lease as stored.
    pub async fn controller_lease(&self) -> Result<ControllerLease> {
        let r = self
            .client()
            .await?
            .query_one(
                "SELECT holder, fence, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT FROM controller WHERE id = 1",
                &[],
            )
            .await?;
        Ok(ControllerLease {
            holder: r.get(0),
            fence: r.get::<_, i64>(1) as u64,
            expires_in_ms: r.get(2),
        })
    }
}

/// A server's claim on the designated-controller role.
pub struct Candidate {
    /// This server's holder id.
    pub holder: String,
    /// The server's name in the registry.
    pub name: String,
    /// Lease time.
    pub ttl: Duration,
}

impl Candidate {
    /// Server `name`'s candidate, with a holder id unique to this run
    /// (`name:pid:random`, so a restarted server waits for its
    /// predecessor's lease to expire).
    pub fn new(name: &str, ttl: Duration) -> Candidate {
        Candidate {
            holder: format!(
                "{name}:{}:{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            name: name.to_string(),
            ttl,
        }
    }

    /// Keeps trying to take, then to renew, the lease until the task is
    /// dropped; publishes `Some(fence)` while this server is the
    /// controller and `None` while it is not.
    pub async fn run(self, store: std::sync::Arc<PgStore>, tx: watch::Sender<Option<Fence>>) {
        let renew_every = self.ttl / 4;
        let try_every = (self.ttl / 4).min(Duration::from_millis(500));
        let mut held: Option<Fence> = None;
        let mut deadline = Instant::now();
        loop {
            let started = Instant::now();
            // While holding, an attempt never runs past the lease's deadline.
            let limit = if held.is_some() {
                deadline
            } else {
                started + self.ttl
            };
            let attempt = tokio::time::timeout_at(
                limit,
                store.claim_controller(&self.holder, &self.name, held, self.ttl),
            )
            .await;
            match attempt {
                Ok(Ok(Some(fence))) => {
                    if held != Some(fence) {
                        tracing::info!(holder = %self.holder, fence = fence.0, "this server is the designated controller");
                        let _ = tx.send(Some(fence));
                    }
                    held = Some(fence);
                    deadline = started + self.ttl;
                }
                Ok(Ok(None)) => {
                    if let Some(fence) = held.take() {
                        tracing::warn!(holder = %self.holder, "controller lease lost to another server, or the preferred controller is up; engine stopped");
                        let _ = tx.send(None);
                        // Free it at once for the preferred controller (a
                        // no-op when another server holds it already).
                        let _ = store.resign_controller(&self.holder, fence).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "controller lease not renewed");
                }
                Err(_) => tracing::warn!("controller lease renewal timed out"),
            }
            if held.is_some() && Instant::now() >= deadline {
                held = None;
                tracing::warn!(holder = %self.holder, "controller lease expired before it was renewed; engine stopped");
                let _ = tx.send(None);
            }
            let next = started
                + if held.is_some() {
                    renew_every
                } else {
                    try_every
                };
            tokio::time::sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sighting, Slot, SlotStep};
    use crate::store::conformance::{mac, pg_schema, pg_store};
    use crate::store::{EnvStore, Expect, NodeStore, Refused};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_controller_is_fenced_out_after_takeover() {
        let test =
            "store::postgres::controller::tests::a_paused_controller_is_fenced_out_after_takeover";
        let Some(a) = pg_store(test).await else {
            return;
        };
        // A second server: its own handle (own pool) on the same store.
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        let ttl = Duration::from_millis(600);
        let fa = a
            .claim_controller("a", "a", None, ttl)
            .await
            .unwrap()
            .unwrap();
        // While a holds it, b cannot take it; a renews with the same fence.
        assert_eq!(b.claim_controller("b", "b", None, ttl).await.unwrap(), None);
        assert_eq!(
            a.claim_controller("a", "a", Some(fa), ttl).await.unwrap(),
            Some(fa)
        );
        let (n, _) = a
            .observe_node(&Sighting {
                mac: mac(1),
                ..Default::default()
            })
            .await
            .unwrap();
        let pending = Slot {
            environment: "e".into(),
            index: 0,
            node: Some(n.id.clone()),
            step: SlotStep::Pending,
            ..Default::default()
        };
        assert!(a
            .write_slots(fa, &[(pending.clone(), Expect::Step(SlotStep::Vacant))])
            .await
            .unwrap());
        // a pauses (stops renewing); b takes over once the lease expires.
        let t0 = std::time::Instant::now();
        let fb = loop {
            if let Some(f) = b.claim_controller("b", "b", None, ttl).await.unwrap() {
                break f;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no takeover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(fb.0 > fa.0, "takeover must raise the fence");
        let lease = b.controller_lease().await.unwrap();
        assert_eq!((lease.holder.as_str(), lease.fence), ("b", fb.0));
        // a wakes up: its renewal fails and its fenced write is refused...
        assert_eq!(
            a.claim_controller("a", "a", Some(fa), ttl).await.unwrap(),
            None
        );
        let mut ready = pending.clone();
        ready.step = SlotStep::Booting;
        let err = a
            .write_slots(fa, &[(ready.clone(), Expect::Step(SlotStep::Pending))])
            .await
            .unwrap_err();
        assert!(
            matches!(err.downcast_ref::<Refused>(), Some(Refused::Fenced { .. })),
            "{err:#}"
        );
        assert_eq!(a.slots(None).await.unwrap()[0].step, SlotStep::Pending);
        // ...while the new controller's goes through, and so do unfenced
        // admin writes.
        assert!(b
            .write_slots(fb, &[(ready, Expect::Step(SlotStep::Pending))])
            .await
            .unwrap());
        // Resigning frees it at once.
        assert!(b.resign_controller("b", fb).await.unwrap());
        let fa2 = a
            .claim_controller("a", "a", None, ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(fa2.0 > fb.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn candidates_elect_one_controller_and_take_over_within_the_ttl() {
        let test = "store::postgres::controller::tests::candidates_elect_one_controller_and_take_over_within_the_ttl";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        let ttl = Duration::from_millis(1000);
        let (ta, mut ra) = watch::channel(None);
        let (tb, mut rb) = watch::channel(None);
        let ca = Candidate::new("a", ttl);
        let task_a = tokio::spawn(ca.run(std::sync::Arc::new(a), ta));
        tokio::time::timeout(Duration::from_secs(5), ra.wait_for(|f| f.is_some()))
            .await
            .expect("no controller elected")
            .unwrap();
        let task_b = tokio::spawn(Candidate::new("b", ttl).run(std::sync::Arc::new(b), tb));
        // b stays a candidate while a renews (three lease times).
        let steady = tokio::time::timeout(ttl * 3, rb.wait_for(|f| f.is_some()))
            .await
            .is_err();
        assert!(steady, "two controllers at once");
        // a dies: b takes over within ttl + one try.
        let fa = ra.borrow().unwrap();
        task_a.abort();
        let died = std::time::Instant::now();
        let fb = tokio::time::timeout(Duration::from_secs(5), rb.wait_for(|f| f.is_some()))
            .await
            .expect("no takeover within 5 s")
            .map(|f| f.unwrap())
            .unwrap();
        let took = died.elapsed();
        assert!(fb.0 > fa.0);
        assert!(
            took <= ttl + Duration::from_millis(900),
            "takeover took {took:?}"
        );
        eprintln!(
            "controller takeover after {} ms (ttl {} ms)",
            took.as_millis(),
            ttl.as_millis()
        );
        task_b.abort();
    }

    #[test]
    fn both_backends_are_at_one_schema_version() {
        assert_eq!(
            crate::store::postgres::schema::latest_version(),
            crate::store::sqlite::schema::latest_version()
        );
    }

    #[tokio::test]
    async fn a_fresh_store_is_at_the_latest_version_and_reopens() {
        let test = "store::postgres::controller::tests::a_fresh_store_is_at_the_latest_version_and_reopens";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let c = a.client().await.unwrap();
        assert_eq!(
            crate::store::postgres::schema::version(&c).await.unwrap(),
            crate::store::sqlite::schema::latest_version()
        );
        // Opening again is a no-op; a schema from the future is refused.
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        c.execute("UPDATE boot_schema SET version = 99", &[])
            .await
            .unwrap();
        let err = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .err()
            .expect("newer schema accepted");
        assert!(
            format!("{err:#}").contains("newer than this boot-server"),
            "{err:#}"
        );
    }
}

#[cfg(test)]
mod preferred_tests {
    use super::*;
    use crate::model::{ServerInfo, ServerRole};
    use crate::store::conformance::{pg_schema, pg_store};
    use crate::store::ServerStore;

    fn info(name: &str) -> ServerInfo {
        ServerInfo {
            name: name.into(),
            holder: format!("{name}:1:x"),
            role: ServerRole::Member,
            segment: String::new(),
            version: "1".into(),
            listen: vec![],
            started_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_preferred_controller_takes_the_lease_while_it_is_up() {
        let test = "store::postgres::controller::preferred_tests::the_preferred_controller_takes_the_lease_while_it_is_up";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = PgStore::connect_in_schema(&url, &pg_schema(test))
            .await
            .unwrap();
        let ttl = Duration::from_secs(30);
        a.heartbeat_server(&info("a")).await.unwrap();
        b.heartbeat_server(&info("b")).await.unwrap();
        let fa = a
            .claim_controller("a:1:x", "a", None, ttl)
            .await
            .unwrap()
            .unwrap();
        // b is preferred and up: a's renewal is refused, a steps down...
        b.set_preferred_controller(Some("b")).await.unwrap();
        assert_eq!(
            a.claim_controller("a:1:x", "a", Some(fa), ttl)
                .await
                .unwrap(),
            None
        );
        assert!(a.resign_controller("a:1:x", fa).await.unwrap());
        // ...and b takes it at once (no waiting for the 30 s lease).
        let fb = b
            .claim_controller("b:1:x", "b", None, ttl)
            .await
            .unwrap()
            .unwrap();
        assert!(fb.0 > fa.0);
        assert_eq!(b.controller_lease().await.unwrap().holder, "b:1:x");
        // b goes silent past the down time: a may take over once the lease
        // has expired.
        a.client()
            .await
            .unwrap()
            .execute(
                "UPDATE servers SET heartbeat_ms = heartbeat_ms - 60000 WHERE name = 'b'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            a.claim_controller("a:1:x", "a", None, ttl).await.unwrap(),
            None
        );
        a.client()
            .await
            .unwrap()
            .execute("UPDATE controller SET expires_at = now()", &[])
            .await
            .unwrap();
        assert!(a
            .claim_controller("a:1:x", "a", None, ttl)
            .await
            .unwrap()
            .is_some());
        let listed = a.servers().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[1].age_ms >= 60_000, "{listed:?}");
    }
}
