//! PostgreSQL backend of the [`Store`](super::Store), for several boot
//! servers sharing one state; one file per aggregate (`images`, `nodes`,
//! `leases`, `reservations`, `disks`, `commands`, `events`, `envs`) over the
//! connection pool here, plus the designated-controller lease
//! ([`controller`]).
//!
//! Semantics are SQLite's, enforced by the database where several servers
//! could race: an address has one lease (unique index) and a MAC one lease
//! (primary key), a refused lease is [`Refused::AddressHeld`](super::Refused);
//! a node holds one slot (unique index); slot compare-and-set writes run in
//! one transaction under the controller row's lock, so a write fenced with an
//! older controller token than the current one is refused. Every write has
//! committed (PostgreSQL's `synchronous_commit`) when its call returns.
//!
//! Selected by `[store] url = "postgres://…"`. Connections are plain TCP or
//! Unix socket (no TLS yet); the URL's `options` may set a `search_path`
//! (one schema per deployment or test).

mod commands;
pub mod controller;
mod disks;
mod envs;
mod events;
mod hosts;
mod images;
mod leases;
pub use leases::OffersBusy;
mod nodes;
pub mod notify;
mod reservations;
pub mod schema;
mod servers;
mod tokens;

use super::Result;
use anyhow::{anyhow, Context};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// Most connections one server holds open.
const POOL_SIZE: usize = 16;

/// Most DHCP address allocations (OFFERs) in the database at once: half the
/// pool, so ACK commits and every other store call always find a connection.
const OFFERS_AT_ONCE: usize = POOL_SIZE / 2;

/// Longest a DISCOVER waits for its turn before it is shed
/// ([`leases::OffersBusy`]): past saturation, work for clients that have
/// long stopped waiting would starve the fresh ones (the server's rate
/// collapsed to 13 exchanges/s at 4,000 offered before this limit).
const OFFER_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// Turns for [`PgStore::allocate_address`] ([`OFFERS_AT_ONCE`]).
    offers: tokio::sync::Semaphore,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`, libpq's URL form)
    /// and brings the schema to this build's version.
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .with_context(|| format!("parsing the store URL {}", redact(url)))?;
        Self::with_config(config).await
    }

    /// Connects to `url` and keeps every table in `schema` (created if
    /// missing): one database can hold several independent stores (tests).
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self> {
        if !schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            anyhow::bail!("schema name {schema:?}: only a-z, 0-9 and _");
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .with_context(|| format!("parsing the store URL {}", redact(url)))?;
        {
            let (client, conn) = config
                .connect(NoTls)
                .await
                .with_context(|| format!("connecting to {}", redact(url)))?;
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .with_context(|| format!("creating schema {schema}"))?;
            drop(client);
            let _ = task.await;
        }
        config.options(format!("-c search_path={schema}"));
        Self::with_config(config).await
    }

    async fn with_config(config: tokio_postgres::Config) -> Result<Self> {
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .context("building the PostgreSQL pool")?;
        let store = PgStore {
            pool,
            config,
            offers: tokio::sync::Semaphore::new(OFFERS_AT_ONCE),
        };
        let mut client = store.client().await?;
        schema::upgrade(&mut client).await?;
        Ok(store)
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            anyhow!(
                "connecting to PostgreSQL at {}: {e}",
                describe(&self.config)
            )
        })
    }

    /// The connection settings (for a dedicated connection, e.g. LISTEN).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

/// Where `config` points, without its password (for logs and errors).
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "{}:{:?}/{}",
        hosts.join(","),
        config.get_ports(),
        config.get_dbname().unwrap_or("")
    )
}

/// The URL without a password (`postgres://user:secret@…` → `postgres://user:***@…`).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &userinfo[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The constraint a unique-violation error names, if it is one.
pub(crate) fn unique_violation(e: &anyhow::Error) -> Option<String> {
    let pg = e.downcast_ref::<tokio_postgres::Error>()?;
    if pg.code() != Some(&SqlState::UNIQUE_VIOLATION) {
        return None;
    }
    Some(
        pg.as_db_error()
            .and_then(|d| d.constraint())
            .unwrap_or("")
            .to_string(),
    )
}

/// A JSON column, `None` when absent or unparsable.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("postgres://boot:s3cret@db:5432/boot"),
            "postgres://boot:***@db:5432/boot"
        );
        assert_eq!(redact("postgres://boot@db/boot"), "postgres://boot@db/boot");
    }
}
