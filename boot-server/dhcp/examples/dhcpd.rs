//! Example DHCP daemon around the boot-dhcp library, used by the netns tests
//! and the benchmark: a static boot advisor and a durable, group-committed,
//! append-only JSON-lines lease log (one fdatasync per batch of commits).
//!
//! ```text
//! dhcpd --interface veth0 --server-ip 10.9.0.1 --subnet 10.9.0.0/24 \
//!       --range 10.9.0.100-10.9.0.200 --leases /tmp/leases.jsonl \
//!       [--mode proxy] [--boot-file undionly.kpxe] [--ipxe-url http://...] \
//!       [--lease-secs 3600] [--port 67] [--proxy-port 4011] [--ra veth0]
//! ```
//! Prints `READY` on stdout once bound; prints the counters on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use boot_dhcp::*;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

/// Static advisor: iPXE gets the script URL, PXE ROMs the loader file,
/// UEFI HTTP boot (arch 0x10) an HTTP URL.
struct StaticAdvisor {
    server: Ipv4Addr,
    boot_file: String,
    ipxe_url: String,
}

#[async_trait::async_trait]
impl BootAdvisor for StaticAdvisor {
    async fn client_config(&self, f: &ClientFacts) -> ClientConfig {
        ClientConfig {
            boot: self.boot_answer(f),
            ..ClientConfig::default()
        }
    }
}

impl StaticAdvisor {
    fn boot_answer(&self, f: &ClientFacts) -> Option<BootAnswer> {
        let vc = f.vendor_class.as_deref().unwrap_or("");
        if f.is_ipxe {
            return Some(BootAnswer {
                filename: self.ipxe_url.clone(),
                next_server: self.server,
                vendor_class: "PXEClient",
            });
        }
        if vc.starts_with("HTTPClient") {
            return Some(BootAnswer {
                filename: format!("http://{}/ipxe.efi", self.server),
                next_server: self.server,
                vendor_class: "HTTPClient",
            });
        }
        if vc.starts_with("PXEClient") {
            let file = match f.client_arch {
                Some(7) | Some(9) => "ipxe.efi".to_string(),
                _ => self.boot_file.clone(),
            };
            return Some(BootAnswer {
                filename: file,
                next_server: self.server,
                vendor_class: "PXEClient",
            });
        }
        None
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    op: String,
    mac: [u8; 6],
    ip: Ipv4Addr,
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    cid: Option<Vec<u8>>,
}

#[derive(Default)]
struct LogState {
    pending: Vec<u8>,
    generation: u64,
}

/// The leases as the log says now (for the conditional operations).
#[derive(Default)]
struct Current {
    by_mac: HashMap<[u8; 6], (Ipv4Addr, u64)>,
    by_ip: HashMap<Ipv4Addr, [u8; 6]>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Append-only lease log with group commit: commits append a line and wait
/// until a flusher has written and fdatasync'ed a batch containing it.
struct FileStore {
    path: PathBuf,
    current: Mutex<Current>,
    state: Mutex<LogState>,
    dirty: Notify,
    durable: watch::Sender<u64>,
    /// fsync'ed batches, records written, total and worst fsync time (µs).
    flushes: AtomicU64,
    records: AtomicU64,
    fsync_us: AtomicU64,
    fsync_max_us: AtomicU64,
}

impl FileStore {
    fn open(path: PathBuf) -> Arc<Self> {
        let (durable, _) = watch::channel(0);
        let store = Arc::new(FileStore {
            path,
            current: Mutex::new(Current::default()),
            state: Mutex::new(LogState::default()),
            dirty: Notify::new(),
            durable,
            flushes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            fsync_us: AtomicU64::new(0),
            fsync_max_us: AtomicU64::new(0),
        });
        let s = store.clone();
        tokio::spawn(async move { s.flusher().await });
        store
    }

    async fn flusher(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
            let (gen, batch, n) = {
                let mut st = self.state.lock().unwrap();
                let n = st.generation - *self.durable.borrow();
                (st.generation, std::mem::take(&mut st.pending), n)
            };
            if batch.is_empty() {
                continue;
            }
            let path = self.path.clone();
            let res = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                f.write_all(&batch)?;
                let t = std::time::Instant::now();
                f.sync_data()?;
                Ok(t.elapsed().as_micros() as u64)
            })
            .await;
            match res {
                Ok(Ok(us)) => {
                    self.flushes.fetch_add(1, Relaxed);
                    self.records.fetch_add(n, Relaxed);
                    self.fsync_us.fetch_add(us, Relaxed);
                    self.fsync_max_us.fetch_max(us, Relaxed);
                    let _ = self.durable.send(gen);
                }
                Ok(Err(e)) => eprintln!("lease log write failed: {e:#}"),
                Err(e) => eprintln!("lease log task failed: {e}"),
            }
        }
    }

    /// Queue a record for the next batch; returns its generation. Callers
    /// hold `current` so the log order matches the decisions.
    fn enqueue(&self, rec: &Record) -> anyhow::Result<u64> {
        let mut line = serde_json::to_vec(rec)?;
        line.push(b'\n');
        let mut st = self.state.lock().unwrap();
        st.pending.extend_from_slice(&line);
        st.generation += 1;
        Ok(st.generation)
    }

    /// Wait until the batch holding generation `gen` is durable.
    async fn wait_durable(&self, gen: u64) -> anyhow::Result<()> {
        self.dirty.notify_one();
        let mut rx = self.durable.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|g| *g >= gen))
            .await
            .context("lease log fsync timed out")?
            .context("lease log flusher gone")?;
        Ok(())
    }

    /// Replay the log, then rewrite it compacted.
    fn replay(&self) -> anyhow::Result<Vec<Lease>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context("reading lease log"),
        };
        let mut map: HashMap<[u8; 6], Record> = HashMap::new();
        for line in text.lines() {
            let Ok(r) = serde_json::from_str::<Record>(line) else {
                continue; // torn last line after a crash
            };
            if r.op == "commit" {
                map.insert(r.mac, r);
            } else if map.get(&r.mac).is_some_and(|x| x.ip == r.ip) {
                map.remove(&r.mac);
            }
        }
        {
            let mut cur = self.current.lock().unwrap();
            for r in map.values() {
                cur.by_mac.insert(r.mac, (r.ip, r.exp));
                cur.by_ip.insert(r.ip, r.mac);
            }
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for r in map.values() {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(map
            .into_values()
            .map(|r| Lease {
                mac: r.mac,
                ip: r.ip,
                expires_at: UNIX_EPOCH + Duration::from_secs(r.exp),
                hostname: r.host,
                client_id: r.cid,
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl LeaseStore for FileStore {
    async fn load(&self) -> anyhow::Result<Vec<Lease>> {
        self.replay()
    }
    async fn commit(&self, l: &Lease) -> anyhow::Result<()> {
        let exp = unix_secs(l.expires_at);
        let gen = {
            let mut cur = self.current.lock().unwrap();
            if let Some(other) = cur.by_ip.get(&l.ip).copied().filter(|m| *m != l.mac) {
                let live = cur
                    .by_mac
                    .get(&other)
                    .is_some_and(|(ip, e)| *ip == l.ip && *e > unix_secs(SystemTime::now()));
                if live {
                    bail!("{} is leased to another client", l.ip);
                }
            }
            let gen = self.enqueue(&Record {
                op: "commit".into(),
                mac: l.mac,
                ip: l.ip,
                exp,
                host: l.hostname.clone(),
                cid: l.client_id.clone(),
            })?;
            if let Some((old, _)) = cur.by_mac.insert(l.mac, (l.ip, exp)) {
                if cur.by_ip.get(&old) == Some(&l.mac) {
                    cur.by_ip.remove(&old);
                }
            }
            cur.by_ip.insert(l.ip, l.mac);
            gen
        };
        self.wait_durable(gen).await
    }
    async fn remove(&self, mac: [u8; 6], ip: Ipv4Addr) -> anyhow::Result<()> {
        let gen = {
            let mut cur = self.current.lock().unwrap();
            if cur.by_mac.get(&mac).is_some_and(|(i, _)| *i == ip) {
                cur.by_mac.remove(&mac);
            }
            if cur.by_ip.get(&ip) == Some(&mac) {
                cur.by_ip.remove(&ip);
            }
            self.enqueue(&Record {
                op: "remove".into(),
                mac,
                ip,
                exp: 0,
                host: None,
                cid: None,
            })?
        };
        self.wait_durable(gen).await
    }
    async fn expire(
        &self,
        mac: [u8; 6],
        ip: Ipv4Addr,
        expires_at: SystemTime,
    ) -> anyhow::Result<bool> {
        let gen = {
            let mut cur = self.current.lock().unwrap();
            match cur.by_mac.get(&mac) {
                Some((i, e)) if *i == ip => {
                    if *e > unix_secs(expires_at) {
                        return Ok(false);
                    }
                }
                _ => return Ok(true),
            }
            cur.by_mac.remove(&mac);
            if cur.by_ip.get(&ip) == Some(&mac) {
                cur.by_ip.remove(&ip);
            }
            self.enqueue(&Record {
                op: "remove".into(),
                mac,
                ip,
                exp: 0,
                host: None,
                cid: None,
            })?
        };
        self.wait_durable(gen).await?;
        Ok(true)
    }
}

fn parse_ip(s: &str) -> anyhow::Result<Ipv4Addr> {
    Ipv4Addr::from_str(s).with_context(|| format!("bad IPv4 address {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(k) = k.strip_prefix("--") else {
            bail!("unexpected argument {k}");
        };
        let v = it.next().with_context(|| format!("--{k} needs a value"))?;
        args.insert(k.to_string(), v);
    }
    let get = |k: &str| args.get(k).cloned();
    let server_ip = parse_ip(&get("server-ip").context("--server-ip is required")?)?;
    let mode = match get("mode").as_deref() {
        None | Some("full") => Mode::Full,
        Some("proxy") => Mode::Proxy,
        Some(m) => bail!("unknown mode {m}"),
    };
    let mut config = DhcpConfig::new(mode, server_ip);
    config.interface = get("interface");
    if let Some(p) = get("port") {
        config.listen_port = p.parse()?;
    }
    if let Some(p) = get("proxy-port") {
        config.proxy_port = p.parse()?;
    }
    if let Some(net) = get("subnet") {
        let (n, p) = net.split_once('/').context("--subnet a.b.c.d/len")?;
        let range = get("range").context("--range first-last is required with --subnet")?;
        let (a, b) = range.split_once('-').context("--range first-last")?;
        let lease_secs: u64 = get("lease-secs").as_deref().unwrap_or("3600").parse()?;
        config.subnets.push(SubnetConfig {
            network: parse_ip(n)?,
            prefix_len: p.parse()?,
            range: (parse_ip(a)?, parse_ip(b)?),
            router: get("router").map(|r| parse_ip(&r)).transpose()?,
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(lease_secs),
        });
    }
    let leases_path = PathBuf::from(get("leases").context("--leases FILE is required")?);
    let advisor = Arc::new(StaticAdvisor {
        server: server_ip,
        boot_file: get("boot-file").unwrap_or_else(|| "undionly.kpxe".into()),
        ipxe_url: get("ipxe-url").unwrap_or_else(|| format!("http://{server_ip}/boot.ipxe")),
    });
    let store = FileStore::open(leases_path);
    let server = DhcpServer::bind(config, advisor, store.clone()).await?;
    let stats = server.stats();
    if let Some(ifc) = get("ra") {
        let ra = RaResponder::bind(&ifc)?;
        tokio::spawn(async move {
            if let Err(e) = ra.run().await {
                eprintln!("RA responder: {e:#}");
            }
        });
    }
    println!("READY");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = server.run() => r?,
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    let c = |a: &std::sync::atomic::AtomicU64| DhcpStats::get(a);
    println!(
        "STATS received={} offers={} acks={} naks={} proxy_offers={} proxy_acks={} malformed={} pool_exhausted={} commit_failures={} send_errors={} at={:?}",
        c(&stats.received), c(&stats.offers), c(&stats.acks), c(&stats.naks),
        c(&stats.proxy_offers), c(&stats.proxy_acks), c(&stats.malformed_dropped),
        c(&stats.pool_exhausted), c(&stats.commit_failures), c(&stats.send_errors),
        SystemTime::now()
    );
    let flushes = store.flushes.load(Relaxed).max(1);
    println!(
        "STORE fsync_batches={} records={} avg_batch={:.1} avg_fsync_ms={:.2} max_fsync_ms={:.1}",
        store.flushes.load(Relaxed),
        store.records.load(Relaxed),
        store.records.load(Relaxed) as f64 / flushes as f64,
        store.fsync_us.load(Relaxed) as f64 / flushes as f64 / 1000.0,
        store.fsync_max_us.load(Relaxed) as f64 / 1000.0
    );
    Ok(())
}
