//! Standalone NBD server over a DiskStore directory, every export allowed to everyone.
//!
//! nbd-serve --root DIR --listen ADDR [--base NAME=FILE]... [--overlay ID=BASE]...
//!
//! `--base` imports FILE as base NAME unless it exists; `--overlay` creates overlay ID on
//! BASE unless it exists. Prints `listening on ADDR` once ready (ADDR may use port 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use boot_nbd::{AllowAllResolver, DiskStore, NbdServer};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut root: Option<PathBuf> = None;
    let mut listen: SocketAddr = "127.0.0.1:10809".parse()?;
    let mut bases = Vec::new();
    let mut overlays = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(val()?)),
            "--listen" => listen = val()?.parse().context("--listen")?,
            "--base" => bases.push(val()?),
            "--overlay" => overlays.push(val()?),
            other => bail!("unknown argument {other}"),
        }
    }
    let root = root.context("--root DIR is required")?;
    let store = Arc::new(DiskStore::open(&root)?);
    for b in bases {
        let (name, file) = b.split_once('=').context("--base NAME=FILE")?;
        if !store.list_bases()?.iter().any(|x| x.name == name) {
            store.create_base_from_file(name, file.as_ref())?;
        }
    }
    for o in overlays {
        let (id, base) = o.split_once('=').context("--overlay ID=BASE")?;
        if !store.list_overlays()?.iter().any(|x| x.id == id) {
            store.create_overlay(id, base)?;
        }
    }
    let resolver = Arc::new(AllowAllResolver(store.clone()));
    let server = NbdServer::bind(listen, store, resolver).await?;
    println!("listening on {}", server.local_addr());
    server.run().await
}
