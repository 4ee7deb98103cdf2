//! Cross-server wake-ups over PostgreSQL's LISTEN/NOTIFY: the store
//! notifies in the transaction that queues a command (`c:<node id>`) or
//! appends events (`e`) or queues a disk operation for a server
//! (`d:<server>`), and every server listening on the store's channel
//! hears it when that transaction commits. The channel is per schema
//! (`boot_wake_<md5 of the schema>`), so stores sharing one database (tests,
//! deployments) do not wake each other.
//!
//! A notification is a hint, never the data: a listener that reconnects
//! reports [`Wake::Resync`] (notifications sent while it was away are lost),
//! and the receivers re-read the store then.

use super::PgStore;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

/// The SQL expression naming this schema's wake-up channel.
pub(crate) const CHANNEL_SQL: &str = "'boot_wake_' || md5(current_schema())";

/// What another server (or this one) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A command was queued for this node.
    Command(String),
    /// Events were appended.
    Events,
    /// Something the engine decides on changed (the controller's engine
    /// runs a pass).
    Engine,
    /// A disk operation was queued for this server (by name).
    Disks(String),
    /// The listener (re)connected: anything may have changed meanwhile.
    Resync,
}

impl Wake {
    fn parse(payload: &str) -> Option<Wake> {
        match payload.split_once(':') {
            Some(("c", node)) if !node.is_empty() => Some(Wake::Command(node.to_string())),
            Some(("d", server)) if !server.is_empty() => Some(Wake::Disks(server.to_string())),
            _ if payload == "e" => Some(Wake::Events),
            _ if payload == "w" => Some(Wake::Engine),
            _ => None,
        }
    }
}

/// Sends `payload` on the store's channel within `tx`'s transaction (heard
/// when it commits).
pub(crate) async fn notify(
    tx: &impl deadpool_postgres::GenericClient,
    payload: &str,
) -> Result<()> {
    tx.execute(
        format!("SELECT pg_notify({CHANNEL_SQL}, $1)").as_str(),
        &[&payload],
    )
    .await
    .context("notifying the other servers")?;
    Ok(())
}

impl PgStore {
    /// Wakes the engine of whichever server is the controller.
    pub async fn notify_engine(&self) -> Result<()> {
        let client = self.client().await?;
        notify(&client, "w").await
    }

    /// Listens on the store's channel on a dedicated connection (reconnected
    /// after a failure, every second) until the receiver is dropped.
    pub fn listen(self: &Arc<Self>) -> mpsc::Receiver<Wake> {
        let (tx, rx) = mpsc::channel(1024);
        let config = self.config().clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match listen_once(&config, &tx).await {
                    Ok(()) => return, // the receiver is gone
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %format!("{e:#}"), "cross-server wake-ups interrupted; reconnecting every second");
                        }
                        warned = true;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }
}

/// One LISTEN session: Ok when the receiver is gone, Err when the
/// connection failed.
async fn listen_once(config: &tokio_postgres::Config, tx: &mpsc::Sender<Wake>) -> Result<()> {
    let (client, mut conn) = config
        .connect(NoTls)
        .await
        .context("connecting the LISTEN session")?;
    let (ntx, mut nrx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if ntx.send(n.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let channel: String = client
        .query_one(format!("SELECT {CHANNEL_SQL}").as_str(), &[])
        .await
        .context("naming the wake-up channel")?
        .get(0);
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .context("LISTEN")?;
    tracing::debug!(%channel, "listening for cross-server wake-ups");
    if tx.send(Wake::Resync).await.is_err() {
        return Ok(());
    }
    while let Some(payload) = nrx.recv().await {
        if let Some(w) = Wake::parse(&payload) {
            if tx.send(w).await.is_err() {
                return Ok(());
            }
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => anyhow::bail!("the LISTEN session ended"),
        Ok(Err(e)) => Err(e).context("the LISTEN session failed"),
        Err(e) => Err(e).context("the LISTEN session's task"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{pg_schema, pg_store};
    use crate::store::{CommandStore, EventStore, NewEvent};

    #[test]
    fn payloads_parse() {
        assert_eq!(Wake::parse("c:n1"), Some(Wake::Command("n1".into())));
        assert_eq!(Wake::parse("e"), Some(Wake::Events));
        assert_eq!(Wake::parse("w"), Some(Wake::Engine));
        assert_eq!(Wake::parse("c:"), None);
        assert_eq!(Wake::parse("d:srv1"), Some(Wake::Disks("srv1".into())));
        assert_eq!(Wake::parse("d:"), None);
        assert_eq!(Wake::parse("x"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_queued_on_one_server_wakes_another_at_once() {
        let test =
            "store::postgres::notify::tests::a_command_queued_on_one_server_wakes_another_at_once";
        let Some(a) = pg_store(test).await else {
            return;
        };
        let url = std::env::var("BOOT_TEST_PG_URL").unwrap();
        let b = Arc::new(
            PgStore::connect_in_schema(&url, &pg_schema(test))
                .await
                .unwrap(),
        );
        // Another schema in the same database stays quiet.
        let other = PgStore::connect_in_schema(&url, &pg_schema(&format!("{test}_other")))
            .await
            .unwrap();
        let mut rx = b.listen();
        assert_eq!(rx.recv().await, Some(Wake::Resync));
        other
            .queue_command("n0", &boot_proto::CommandKind::Reboot)
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        a.queue_command("n1", &boot_proto::CommandKind::Reboot)
            .await
            .unwrap();
        let w = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("no wake-up");
        assert_eq!(w, Some(Wake::Command("n1".into())));
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(100), "woken after {took:?}");
        a.append_events(vec![NewEvent {
            at_ms: 1,
            node: None,
            kind: crate::model::EventKind::Unknown,
            detail: serde_json::json!({}),
        }])
        .await
        .unwrap();
        let w = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("no wake-up");
        assert_eq!(w, Some(Wake::Events));
    }
}
