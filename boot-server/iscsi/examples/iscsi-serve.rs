//! Serves a disk store over iSCSI, for manual tests and the benchmark script.
//!
//! `iscsi-serve --root DIR --listen 127.0.0.1:3260 [--base NAME=FILE]... [--overlay ID=BASE]...
//!  --target IQN=overlay:ID|base:NAME ...`  (`--base`/`--overlay` create what is missing)
//! Prints `listening on ADDR` once ready. CHAP: `--chap IQN=USER:SECRET[:TUSER:TSECRET]`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use boot_iscsi::{Chap, ChapSecret, DiskRef, IscsiLimits, IscsiServer, TargetConfig};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut root = None;
    let mut listen = "127.0.0.1:3260".to_string();
    let mut targets = Vec::new();
    let mut chaps = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    let mut overlays: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--root" => root = Some(val()?),
            "--listen" => listen = val()?,
            "--target" => targets.push(val()?),
            "--chap" => chaps.push(val()?),
            "--base" => bases.push(val()?),
            "--overlay" => overlays.push(val()?),
            _ => bail!("unknown argument {a}"),
        }
    }
    let root = root.context("--root DIR is required")?;
    let store = Arc::new(boot_disk::DiskStore::open(root.as_ref())?);
    for b in &bases {
        let (name, file) = b.split_once('=').context("--base NAME=FILE")?;
        if !store.list_bases()?.iter().any(|x| x.name == name) {
            store.create_base_from_file(name, file.as_ref())?;
        }
    }
    for o in &overlays {
        let (id, base) = o.split_once('=').context("--overlay ID=BASE")?;
        if !store.list_overlays()?.iter().any(|x| x.id == id) {
            store.create_overlay(id, base)?;
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let server = IscsiServer::bind(listen.parse()?, store, IscsiLimits::default()).await?;
        let h = server.handle();
        for t in targets {
            let (iqn, d) = t.split_once('=').context("--target IQN=KIND:NAME")?;
            let disk = match d.split_once(':') {
                Some(("overlay", n)) => DiskRef::Overlay(n.into()),
                Some(("base", n)) => DiskRef::Base(n.into()),
                _ => bail!("--target {t}: want overlay:ID or base:NAME"),
            };
            let chap = chaps
                .iter()
                .filter_map(|c| c.split_once('='))
                .find(|(i, _)| *i == iqn)
                .map(|(_, c)| {
                    let p: Vec<&str> = c.split(':').collect();
                    Chap {
                        initiator: ChapSecret {
                            user: p[0].into(),
                            secret: p.get(1).copied().unwrap_or_default().into(),
                        },
                        target: (p.len() >= 4).then(|| ChapSecret {
                            user: p[2].into(),
                            secret: p[3].into(),
                        }),
                    }
                });
            h.add_target(
                iqn,
                TargetConfig {
                    disk,
                    allowed_initiator: None,
                    chap,
                },
            )?;
        }
        println!("listening on {}", server.local_addr());
        server.run().await
    })
}
