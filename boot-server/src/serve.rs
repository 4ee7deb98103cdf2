//! `boot-server serve`: wiring only. Opens the store (SQLite, or PostgreSQL
//! shared with other servers: then the engine runs only while this server
//! holds the designated-controller lease), starts the event hub,
//! the boot plan and the control layer, imports image manifests, and runs
//! the protocol servers (HTTP, admin socket, TFTP, DHCP, Router
//! Advertisements, NBD, iSCSI) and the failure watches until SIGTERM / Ctrl-C
//! (then stops accepting, lets requests in flight finish within 10 s, and
//! exits 0) or until a server fails.

use crate::adapters::{DhcpBackend, TftpEvents};
use crate::config::{parse_cidr, Config, DhcpMode};
use crate::control::Control;
use crate::events::EventHub;
use crate::http::{self, AppState};
use crate::images::ImageFiles;
use crate::model::Reservation;
use crate::plan::BootPlan;
use crate::store::postgres::controller::Candidate;
use crate::store::{Fence, PgStore, SqliteStore, Store};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long requests in flight may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs every enabled service from `config` until SIGTERM or SIGINT, then
/// lets requests in flight finish.
pub async fn run(mut config: Config) -> Result<()> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    // URLs in scripts carry the port actually bound (the config may say 0).
    config.http.listen.set_port(listener.local_addr()?.port());
    let agent_tls = match config.agent.tls_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the agent API (TLS) on {addr}"))?;
            config.agent.tls_listen = Some(l.local_addr()?);
            Some((l, crate::tls::server_tls(&config)?))
        }
        None => None,
    };
    let admin_token = admin_token(&config)?;
    let (store, sqlite, pg): (Arc<dyn Store>, _, _) = match &config.store.url {
        Some(url) => {
            let pg = Arc::new(PgStore::connect(url).await.with_context(|| {
                format!(
                    "opening the PostgreSQL store {}",
                    crate::store::postgres::redact(url)
                )
            })?);
            (pg.clone(), None, Some(pg))
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open_with(
                &config.state_dir,
                Duration::from_micros(config.store.commit_delay_us),
            )?);
            (sqlite.clone(), Some(sqlite), None)
        }
    };
    let config = Arc::new(config);
    // A shared store's live feed follows the log every server appends to.
    let events = match &pg {
        Some(_) => EventHub::start_shared(store.clone(), config.events.retain),
        None => EventHub::start(store.clone(), config.events.retain),
    };
    let metrics = Arc::new(crate::metrics::Metrics::new());
    // Commit latency is measured at the SQLite writer (PostgreSQL: not yet).
    if let Some(sqlite) = &sqlite {
        let writer = sqlite.writer_stats().clone();
        let m = metrics.clone();
        let _ = writer
            .on_commit
            .set(Box::new(move |d, _ok| m.store_commit(d)));
        let _ = metrics.sources.store.set(writer);
    }
    let _ = metrics.sources.events_dropped.set(events.dropped.clone());
    let mut plan = BootPlan::new(store.clone(), config.clone(), events.clone())?;
    if let Some((_, tls)) = &agent_tls {
        plan = plan.with_agent_tls_pin(tls.fingerprint.clone());
    }
    let plan = Arc::new(plan);
    let image_files = Arc::new(ImageFiles::new(&config.images_dir));

    // One disk store and one export table for NBD and iSCSI.
    let disks = if config.nbd.enabled || config.iscsi.enabled {
        Some(Arc::new(boot_nbd::DiskStore::open(&config.disks_dir())?))
    } else {
        None
    };
    let exports = disks.as_ref().map(|d| {
        crate::disks::NodeExports::new(store.clone(), plan.clone(), d.clone(), &admin_token)
    });
    if let Some(e) = &exports {
        // A sanboot script brings the node's iSCSI target up before iPXE logs in.
        plan.set_exports(Arc::downgrade(e));
    }
    let control = Arc::new(Control::new(
        store.clone(),
        config.clone(),
        plan.clone(),
        events.clone(),
        image_files.clone(),
        disks.clone(),
        exports
            .clone()
            .map(|e| e as Arc<dyn crate::control::ExportControl>),
    ));
    if let Some(sqlite) = &sqlite {
        control.set_sqlite(sqlite.clone());
    }
    metrics.spawn_observer(&events, control.clone());
    let alerting = crate::alerts::spawn(&config.alerts, &events, metrics.clone())
        .context("starting alert delivery")?;

    match control.recover_imports().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(imports = n, "rolled back imports a stop interrupted"),
        Err(e) => tracing::warn!(error = %e, "interrupted imports not examined"),
    }
    // What is already in the store is served as is: these only write changes,
    // and a failure (read-only or full disk) is reported, not fatal.
    if let Err(e) = control.import_images().await {
        tracing::warn!(error = %e, "image manifests not imported; serving the image table as stored");
    }
    if let Some(name) = &config.default_image {
        if store.default_image().await.ok().flatten().as_deref() != Some(name) {
            if let Err(e) = control.set_default_image(Some(name.clone())).await {
                tracing::warn!(error = %e, "default_image = {name:?} from the config not applied");
            }
        }
    }
    import_config_reservations(&config, &control).await;

    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    // HTTP servers drain gracefully on shutdown; the rest are aborted.
    let mut http_tasks: JoinSet<Result<()>> = JoinSet::new();
    let mut ready = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        control: control.clone(),
        admin_token,
        stopping: stop_rx.clone(),
        metrics: metrics.clone(),
    });

    // HTTP: scripts, files, agent API and admin API.
    ready.push(format!("http={}", listener.local_addr()?));
    let listen_cfg = http::listener::ListenerConfig::default();
    http_tasks.spawn(http::listener::serve_tcp(
        listener,
        http::router(state.clone()),
        listen_cfg.clone(),
        stopped(stop_rx.clone()),
    ));
    let agent_pin = agent_tls.as_ref().map(|(_, t)| t.fingerprint.clone());
    if let Some((l, tls)) = agent_tls {
        tracing::info!(
            listen = %l.local_addr()?,
            sha256 = %tls.fingerprint,
            "agent API over TLS; nodes pin this certificate (bootsrv.tlspin)"
        );
        ready.push(format!("agent-https={}", l.local_addr()?));
        http_tasks.spawn(http::listener::serve_tls(
            l,
            http::agent_tls_router(state.clone()),
            listen_cfg.clone(),
            tls.acceptor,
            stopped(stop_rx.clone()),
        ));
    }
    // Admin API on the Unix socket (file permissions authenticate).
    let socket = config.admin_socket();
    // The state directory holds the socket even when the store is elsewhere.
    crate::fsutil::private_dir(&config.state_dir)?;
    let _ = std::fs::remove_file(&socket);
    let unix = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding the admin socket {}", socket.display()))?;
    crate::fsutil::restrict_file(&socket)?;
    ready.push(format!("admin={}", socket.display()));
    http_tasks.spawn(http::listener::serve_unix(
        unix,
        http::admin_router(state.clone(), true),
        listen_cfg.clone(),
        stopped(stop_rx.clone()),
    ));
    if let Some(addr) = config.admin.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin API on {addr}"))?;
        if config.admin.tls {
            let tls = crate::tls::server_tls(&config)?;
            tracing::info!(
                cert = %tls.cert_path.display(),
                sha256 = %tls.fingerprint,
                "admin API over TLS; clients pin this fingerprint (boot-server --fingerprint) or trust the certificate (--ca-file)"
            );
            println!(
                "admin TLS certificate SHA-256 fingerprint: {}",
                tls.fingerprint
            );
            ready.push(format!("admin-https={}", l.local_addr()?));
            http_tasks.spawn(http::listener::serve_tls(
                l,
                http::admin_router(state.clone(), false),
                listen_cfg.clone(),
                tls.acceptor,
                stopped(stop_rx.clone()),
            ));
        } else {
            ready.push(format!("admin-http={}", l.local_addr()?));
            http_tasks.spawn(http::listener::serve_tcp(
                l,
                http::admin_router(state.clone(), false),
                listen_cfg.clone(),
                stopped(stop_rx.clone()),
            ));
        }
    }

    // TFTP: loaders first, then image files.
    if config.tftp.enabled {
        let tftp_config = boot_tftp::TftpConfig {
            listen: config.tftp.listen,
            roots: vec![config.loaders_dir.clone(), config.images_dir.clone()],
            pinned: config.pinned_loaders(),
            max_blksize: config.tftp.max_blksize,
            spin: std::time::Duration::from_micros(config.tftp.spin_us),
            ..Default::default()
        };
        let server = boot_tftp::TftpServer::bind(
            tftp_config,
            Arc::new(TftpEvents {
                store: store.clone(),
                events: events.clone(),
                runtime: tokio::runtime::Handle::current(),
            }),
        )
        .await
        .with_context(|| format!("binding TFTP on {}", config.tftp.listen))?;
        let _ = metrics.sources.tftp.set(server.stats());
        ready.push(format!("tftp={}", server.local_addr()));
        tasks.spawn(async move { server.run().await.context("TFTP server") });
    }

    // DHCP (full or proxy) and Router Advertisements on the boot interface.
    if config.dhcp.mode != DhcpMode::Off {
        let reservations = store.reservations().await.unwrap_or_default();
        let dhcp_config = dhcp_config(&config, &reservations)?;
        let backend = Arc::new(DhcpBackend {
            plan: plan.clone(),
            store: store.clone(),
            proxy: config.dhcp.mode == DhcpMode::Proxy,
            shared: pg.clone(),
        });
        // Bound on its own thread, so that its sockets belong to that
        // thread's reactor (bound here, each datagram would wake this runtime
        // and then hand over to the DHCP thread).
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        tasks.spawn(on_own_thread("dhcp", move || async move {
            match boot_dhcp::DhcpServer::bind(dhcp_config, backend.clone(), backend).await {
                Ok(server) => {
                    let _ = bound_tx.send(Ok((server.control(), server.stats())));
                    server.run().await.context("DHCP server")
                }
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    Ok(())
                }
            }
        }));
        let (dhcp, stats) = bound_rx
            .await
            .map_err(|_| anyhow::anyhow!("the DHCP thread ended before binding"))?
            .context("starting DHCP")?;
        control.set_dhcp(Arc::new(crate::adapters::DhcpLink(dhcp)));
        let _ = metrics.sources.dhcp.set(stats);
        ready.push(format!("dhcp={:?}", config.dhcp.mode).to_lowercase());
    }
    if let (true, Some(iface)) = (config.ra.enabled, &config.interface) {
        let ra = boot_dhcp::RaResponder::bind(iface)
            .with_context(|| format!("router advertisements on {iface}"))?;
        ready.push(format!("ra={iface}"));
        tasks.spawn(async move { ra.run().await.context("RA responder") });
    }

    // Virtual disks over NBD and iSCSI, both following the export table.
    if let (Some(disks), Some(exports)) = (disks, exports) {
        // Every overlay here is served by this server unless recorded otherwise.
        match control.adopt_local_overlays(pg.is_none()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                overlays = n,
                "recorded this server as the serving server of its unrecorded overlays"
            ),
            Err(e) => tracing::warn!(error = %e.message, "overlays in disks_dir not recorded"),
        }
        if let Err(e) = exports.refresh().await {
            tracing::warn!(error = %format!("{e:#}"), "export table not built yet; retrying every second");
        }
        tasks.spawn(exports.clone().run_refresher());
        if config.nbd.enabled {
            let server =
                boot_nbd::NbdServer::bind(config.nbd.listen, disks.clone(), exports.clone())
                    .await
                    .with_context(|| format!("binding NBD on {}", config.nbd.listen))?;
            exports.set_nbd(server.handle()); // detach: exports.revoke(overlay)
            let _ = metrics.sources.nbd.set(server.handle());
            ready.push(format!("nbd={}", server.local_addr()));
            plan.set_bound_ports(Some(server.local_addr().port()), None);
            // Where nodes reach the overlays this server serves (the boot plans
            // of the other servers read it from the registry).
            if let Some(a) = plan.nbd_address() {
                ready.push(format!("{}{a}", crate::plan::NBD_NODE_PREFIX));
            }
            tasks.spawn(async move { server.run().await.context("NBD server") });
        }
        if config.iscsi.enabled {
            let server = boot_iscsi::IscsiServer::bind(
                config.iscsi.listen,
                disks,
                boot_iscsi::IscsiLimits::default(),
            )
            .await
            .with_context(|| format!("binding iSCSI on {}", config.iscsi.listen))?;
            exports.set_iscsi(server.handle()); // targets follow the table; revoke cuts
            ready.push(format!("iscsi={}", server.local_addr()));
            plan.set_bound_ports(None, Some(server.local_addr().port()));
            if let Some(a) = plan.iscsi_portal() {
                ready.push(format!("{}{a}", crate::plan::ISCSI_NODE_PREFIX));
            }
            tasks.spawn(async move { server.run().await.context("iSCSI server") });
        }
    }

    tasks.spawn(crate::watch::heartbeat_watchdog(control.clone()));
    tasks.spawn(crate::watch::power_watch(control.clone()));
    tasks.spawn(crate::watch::host_watchdog(control.clone()));
    // The lease this server holds as designated controller (shared store).
    let mut controller: Option<(Arc<PgStore>, String, watch::Receiver<Option<Fence>>)> = None;
    if config.engine.enabled {
        match &pg {
            None => {
                let engine = Arc::new(crate::engine::Engine::new(
                    control.clone(),
                    Arc::new(crate::engine::SystemClock),
                ));
                tasks.spawn(engine.run());
                ready.push("engine=on".into());
            }
            Some(pg) => {
                let candidate = Candidate::new(
                    &config.store.server_name(),
                    Duration::from_millis(config.store.controller_ttl_ms),
                );
                let (lease_tx, lease_rx) = watch::channel(None);
                controller = Some((pg.clone(), candidate.holder.clone(), lease_rx.clone()));
                ready.push(format!("engine=when-controller({})", candidate.holder));
                let pg = pg.clone();
                tasks.spawn(async move {
                    candidate.run(pg, lease_tx).await;
                    Ok(())
                });
                tasks.spawn(engine_while_controller(control.clone(), lease_rx));
            }
        }
    }
    if let Some(pg) = &pg {
        // What the other servers change wakes this one's waiters, and its
        // engine wake-ups reach the controller.
        control.set_peers(Arc::new(crate::control::cluster::PgPeers::start(
            pg.clone(),
            controller.as_ref().map(|(_, _, lease)| lease.clone()),
        )));
        // Disk operations other servers queue for the overlays this one serves.
        if control.has_disks() {
            tasks.spawn(crate::control::disks::run_disk_requests(control.clone()));
        }
        tasks.spawn(crate::control::cluster::follow_wakeups(
            control.clone(),
            pg.listen(),
        ));
        ready.push("peers=listen".into());
        // Image files follow the table: what this server lacks it pulls from
        // the others (by SHA-256, verified); peers find it at its public URL.
        let sync = crate::imagesync::ImageSync::new(control.clone(), &config.store.server_name())?;
        tasks.spawn(sync.run());
        ready.push(format!(
            "{}{}",
            crate::imagesync::URL_PREFIX,
            config.public_url()
        ));
    }
    // Agents learn every live server's agent API from the registry.
    ready.push(format!(
        "{}{}",
        crate::http::agent::AGENT_URL_PREFIX,
        config.agent_url()
    ));
    if let Some(pin) = &agent_pin {
        ready.push(format!("{}{pin}", crate::http::agent::AGENT_PIN_PREFIX));
    }
    if alerting {
        ready.push("alerts=on".into());
    }
    // The server registry: who this server is, every second.
    let info = crate::model::ServerInfo {
        name: config.store.server_name(),
        holder: controller
            .as_ref()
            .map(|(_, holder, _)| holder.clone())
            .unwrap_or_default(),
        role: if pg.is_none() && config.engine.enabled {
            crate::model::ServerRole::Controller
        } else {
            crate::model::ServerRole::Member
        },
        segment: config.store.segment.clone().unwrap_or_else(|| {
            config
                .dhcp
                .subnets
                .iter()
                .map(|s| s.network.clone())
                .collect::<Vec<_>>()
                .join(",")
        }),
        version: env!("CARGO_PKG_VERSION").to_string(),
        listen: ready.clone(),
        started_ms: crate::model::now_ms(),
    };
    tasks.spawn(crate::control::servers::run_heartbeat(
        control.clone(),
        info,
        controller.as_ref().map(|(_, _, lease)| lease.clone()),
    ));
    tracing::info!("boot-server ready: {}", ready.join(" "));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = sigterm.recv() => tracing::info!("SIGTERM; stopping"),
        Some(done) = next_done(&mut tasks, &mut http_tasks) => {
            match done {
                Ok(Ok(())) => bail!("a server stopped unexpectedly"),
                Ok(Err(e)) => return Err(e),
                Err(e) => bail!("a server task panicked: {e}"),
            }
        }
    }
    // Stop accepting; requests in flight get DRAIN to finish.
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(&socket);
    let drained = tokio::time::timeout(DRAIN, async {
        while http_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still running after {DRAIN:?}; stopping anyway");
    }
    tasks.shutdown().await;
    if let Some((pg, holder, lease)) = controller {
        let fence = *lease.borrow();
        if let Some(fence) = fence {
            // The engine has stopped: let another server take over at once.
            match pg.resign_controller(&holder, fence).await {
                Ok(_) => tracing::info!("controller lease given up"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "controller lease not given up; it expires on its own")
                }
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs the engine while this server holds the controller lease (with the
/// lease's fence), and stops it (mid-pass: every step is durable) when the
/// lease is lost.
async fn engine_while_controller(
    control: Arc<Control>,
    mut lease: watch::Receiver<Option<Fence>>,
) -> Result<()> {
    loop {
        let fence = *lease.borrow_and_update();
        let running = fence.map(|f| {
            let engine =
                crate::engine::Engine::new(control.clone(), Arc::new(crate::engine::SystemClock))
                    .with_fence(f);
            tokio::spawn(Arc::new(engine).run())
        });
        let changed = lease.changed().await;
        if let Some(task) = running {
            task.abort();
            let _ = task.await;
        }
        changed.context("controller lease task ended")?;
    }
}

/// The first task of either set to end.
async fn next_done(
    a: &mut JoinSet<Result<()>>,
    b: &mut JoinSet<Result<()>>,
) -> Option<std::result::Result<Result<()>, tokio::task::JoinError>> {
    tokio::select! {
        Some(d) = a.join_next() => Some(d),
        Some(d) = b.join_next() => Some(d),
        else => None,
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Reservations still written in a round-1 config file go into the store
/// (where the CLI and the engine manage them), with a warning.
async fn import_config_reservations(config: &Config, control: &Control) {
    let known = control.store.reservations().await.unwrap_or_default();
    for s in &config.dhcp.subnets {
        for r in &s.reservations {
            let Ok(mac) = r.mac.parse() else {
                tracing::warn!(mac = %r.mac, "config reservation with a bad MAC ignored");
                continue;
            };
            if known.iter().any(|k| k.mac == mac) {
                continue;
            }
            tracing::warn!(%mac, ip = %r.ip, "reservation found in the config file: imported into the store; manage it with `boot-server reservation` and remove it from the file");
            let res = Reservation {
                mac,
                ip: r.ip,
                hostname: r.hostname.clone(),
            };
            if let Err(e) = control.put_reservation(res).await {
                tracing::warn!(%mac, error = %e, "config reservation not imported");
            }
        }
    }
}

/// The admin token from the config, else from `state_dir/admin.token`
/// (created with mode 0600 on first start). Refuses weak tokens.
pub fn admin_token(config: &Config) -> Result<String> {
    if let Some(t) = &config.admin_token {
        crate::secret::check_admin_token(t).map_err(|e| anyhow::anyhow!("admin_token: {e}"))?;
        return Ok(t.trim().to_string());
    }
    crate::fsutil::private_dir(&config.state_dir)?;
    let path = config.state_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            crate::secret::check_admin_token(&t)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            crate::fsutil::restrict_file(&path)?;
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = crate::secret::random_token(24);
    crate::fsutil::write_private(&path, token.as_bytes())?;
    Ok(token)
}

fn dhcp_config(config: &Config, reservations: &[Reservation]) -> Result<boot_dhcp::DhcpConfig> {
    let server_ip = config.server_ip.context("DHCP needs server_ip")?;
    let mut subnets = Vec::new();
    for s in &config.dhcp.subnets {
        let (network, prefix_len) = parse_cidr(&s.network)?;
        subnets.push(boot_dhcp::SubnetConfig {
            network,
            prefix_len,
            range: (s.range[0], s.range[1]),
            router: s.router,
            dns: s.dns.clone(),
            domain: s.domain.clone(),
            lease_time: Duration::from_secs(s.lease_secs),
        });
    }
    Ok(boot_dhcp::DhcpConfig {
        mode: match config.dhcp.mode {
            DhcpMode::Proxy => boot_dhcp::Mode::Proxy,
            _ => boot_dhcp::Mode::Full,
        },
        interface: config.interface.clone(),
        server_ip,
        subnets,
        listen_port: config.dhcp.port,
        proxy_port: config.dhcp.proxy_port,
        coalesce: Duration::from_micros(config.dhcp.coalesce_us),
        reservations: reservations.iter().map(dhcp_reservation).collect(),
    })
}

fn dhcp_reservation(r: &Reservation) -> boot_dhcp::Reservation {
    boot_dhcp::Reservation {
        mac: r.mac.octets(),
        ip: r.ip,
        hostname: r.hostname.clone(),
    }
}

/// Runs the future `work` makes on a thread of its own with a single-threaded
/// runtime, until it ends or this future is dropped. For the DHCP server: one
/// task that is woken for every datagram. On the shared runtime each wake could
/// land on the other worker or wake an idle one to look for work; the perf
/// profile of a perfdhcp run showed the scheduler's switches as the largest
/// single cost.
async fn on_own_thread<W, F>(name: &str, work: W) -> Result<()>
where
    W: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = Result<()>>,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let ended = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async {
                    tokio::select! {
                        r = work() => r,
                        _ = stop_rx => Ok(()),
                    }
                }),
                Err(e) => Err(e).context("starting its runtime"),
            };
            let _ = done_tx.send(ended);
        })
        .with_context(|| format!("starting the {name} thread"))?;
    // Dropped with this future (the server stopping): the thread's runtime ends.
    let _stop = stop_tx;
    done_rx
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the {name} thread ended without a word")))
}
