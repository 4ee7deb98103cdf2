//! `boot-server serve`: opens the store, imports image manifests, and runs
//! the protocol servers (HTTP, TFTP, DHCP, Router Advertisements, NBD) and
//! the heartbeat watchdog until Ctrl-C / SIGTERM or a server fails.

use crate::adapters::{DhcpBackend, TftpEvents};
use crate::config::{parse_cidr, Config, DhcpMode};
use crate::http::{self, AppState, CommandWakeups};
use crate::plan::BootPlan;
use crate::store::{now_ms, parse_mac, NodeState, SqliteStore, Store};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

pub async fn run(mut config: Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http.listen))?;
    // URLs in scripts carry the port actually bound (the config may say 0).
    config.http.listen.set_port(listener.local_addr()?.port());
    let config = Arc::new(config);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.state_dir)?);
    import_images(&store, &config.images_dir).await?;
    if let Some(name) = &config.default_image {
        store
            .set_default_image(Some(name))
            .await
            .with_context(|| format!("setting default_image = {name:?} from the config"))?;
    }
    let admin_token = admin_token(&config)?;
    let nbd_admin_token = admin_token.clone();
    let plan = Arc::new(BootPlan::new(store.clone(), config.clone())?);
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    let mut ready = Vec::new();

    // HTTP: scripts, files, agent and admin API.
    let state = Arc::new(AppState {
        plan: plan.clone(),
        store: store.clone(),
        config: config.clone(),
        admin_token,
        commands: CommandWakeups::default(),
    });
    ready.push(format!("http={}", listener.local_addr()?));
    let (stop_http, http_stop) = tokio::sync::watch::channel(false);
    let mut http_task = tokio::spawn(http::listener::serve_tcp(
        listener,
        http::router(state),
        http::listener::ListenerConfig::default(),
        async move {
            let mut stop = http_stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    ));

    // TFTP: loaders first, then image files.
    if config.tftp.enabled {
        let tftp_config = boot_tftp::TftpConfig {
            listen: config.tftp.listen,
            roots: vec![config.loaders_dir.clone(), config.images_dir.clone()],
            max_blksize: config.tftp.max_blksize,
            ..Default::default()
        };
        let server = boot_tftp::TftpServer::bind(
            tftp_config,
            Arc::new(TftpEvents {
                store: store.clone(),
                runtime: tokio::runtime::Handle::current(),
            }),
        )
        .await
        .with_context(|| format!("binding TFTP on {}", config.tftp.listen))?;
        ready.push(format!("tftp={}", server.local_addr()));
        tasks.spawn(async move { server.run().await.context("TFTP server") });
    }

    // DHCP (full or proxy) and Router Advertisements on the boot interface.
    if config.dhcp.mode != DhcpMode::Off {
        let dhcp_config = dhcp_config(&config)?;
        let backend = Arc::new(DhcpBackend {
            plan: plan.clone(),
            store: store.clone(),
        });
        let server = boot_dhcp::DhcpServer::bind(dhcp_config, backend.clone(), backend)
            .await
            .context("starting DHCP")?;
        ready.push(format!("dhcp={:?}", config.dhcp.mode).to_lowercase());
        tasks.spawn(async move { server.run().await.context("DHCP server") });
    }
    if let (true, Some(iface)) = (config.ra.enabled, &config.interface) {
        let ra = boot_dhcp::RaResponder::bind(iface)
            .with_context(|| format!("router advertisements on {iface}"))?;
        ready.push(format!("ra={iface}"));
        tasks.spawn(async move { ra.run().await.context("RA responder") });
    }

    // NBD virtual disks.
    if config.nbd.enabled {
        let disks = Arc::new(boot_nbd::DiskStore::open(&config.disks_dir())?);
        let exports =
            crate::disks::NodeExports::new(store.clone(), disks.clone(), &nbd_admin_token);
        exports.refresh().await?;
        tasks.spawn(exports.clone().run_refresher());
        let server = boot_nbd::NbdServer::bind(config.nbd.listen, disks, exports)
            .await
            .with_context(|| format!("binding NBD on {}", config.nbd.listen))?;
        ready.push(format!("nbd={}", server.local_addr()));
        tasks.spawn(async move { server.run().await.context("NBD server") });
    }

    tasks.spawn(heartbeat_watchdog(store.clone(), config.clone()));
    tracing::info!("boot-server ready: {}", ready.join(" "));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = sigterm.recv() => tracing::info!("SIGTERM; stopping"),
        done = &mut http_task => {
            return match done {
                Ok(Ok(())) => bail!("the HTTP server stopped unexpectedly"),
                Ok(Err(e)) => Err(e),
                Err(e) => bail!("the HTTP server task panicked: {e}"),
            };
        }
        Some(done) = tasks.join_next() => {
            match done {
                Ok(Ok(())) => bail!("a server stopped unexpectedly"),
                Ok(Err(e)) => return Err(e),
                Err(e) => bail!("a server task panicked: {e}"),
            }
        }
    }
    // HTTP drains requests in flight (bounded by its shutdown grace).
    let _ = stop_http.send(true);
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %format!("{e:#}"), "HTTP server shutdown");
    }
    tasks.shutdown().await;
    Ok(())
}

/// Imports every `images/*/image.toml` into the image table.
pub async fn import_images(store: &Arc<dyn Store>, images_dir: &Path) -> Result<()> {
    for manifest in crate::images::find_manifests(images_dir)? {
        match crate::images::load_manifest(&manifest, images_dir) {
            Ok(image) => {
                tracing::info!(image = %image.name, size = image.size_bytes, "image table: {}", manifest.display());
                store.put_image(&image).await?;
            }
            // A manifest whose files are not built yet must not stop the server.
            Err(e) => {
                tracing::warn!(manifest = %manifest.display(), error = %format!("{e:#}"), "skipping image")
            }
        }
    }
    Ok(())
}

/// The admin token from the config, else from `state_dir/admin.token`
/// (created with mode 0600 on first start).
pub fn admin_token(config: &Config) -> Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.state_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(&config.state_dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

fn dhcp_config(config: &Config) -> Result<boot_dhcp::DhcpConfig> {
    let server_ip = config.server_ip.context("DHCP needs server_ip")?;
    let mut subnets = Vec::new();
    for s in &config.dhcp.subnets {
        let (network, prefix_len) = parse_cidr(&s.network)?;
        let mut reservations = Vec::new();
        for r in &s.reservations {
            let mac = parse_mac(&r.mac).with_context(|| format!("reservation MAC {}", r.mac))?;
            reservations.push((mac, r.ip));
        }
        subnets.push(boot_dhcp::SubnetConfig {
            network,
            prefix_len,
            range: (s.range[0], s.range[1]),
            router: s.router,
            dns: s.dns.clone(),
            domain: s.domain.clone(),
            lease_time: Duration::from_secs(s.lease_secs),
            reservations,
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
    })
}

/// Marks ready nodes failed when their heartbeats stop.
async fn heartbeat_watchdog(store: Arc<dyn Store>, config: Arc<Config>) -> Result<()> {
    let limit_ms = (config.agent.heartbeat_timeout_secs * 1000) as i64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = now_ms();
        let nodes = match store.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "watchdog could not list nodes");
                continue;
            }
        };
        for node in nodes {
            let Some(last) = node.last_heartbeat_ms else {
                continue;
            };
            if node.state == NodeState::Ready && now - last > limit_ms {
                tracing::warn!(node = %node.id, silent_ms = now - last, "no heartbeat: node failed");
                store.set_node_state(&node.id, NodeState::Failed).await?;
                store
                    .record_event(
                        Some(&node.id),
                        "node-failed",
                        json!({ "reason": "heartbeat timeout", "silent_ms": now - last }),
                    )
                    .await?;
            }
        }
    }
}
