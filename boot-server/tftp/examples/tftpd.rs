//! Minimal stand-alone TFTP daemon over boot-tftp (the crate alone, without
//! boot-server around it), used by `qemu-tests/bench/tftp-flood.sh`,
//! `scripts/ovmf-pxe-check.sh` and for
//! manual tests:
//!
//! `cargo run --release -p boot-tftp --example tftpd -- --listen 127.0.0.1:6969 --root DIR [--root DIR2] [--max-blksize N] [--max-windowsize N] [--spin-us N]`
//!
//! Prints `listening on ADDR` on stdout once bound.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use boot_tftp::{NoopObserver, TftpConfig, TftpServer};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = TftpConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => config.listen = val()?.parse().context("--listen")?,
            "--root" => config.roots.push(PathBuf::from(val()?)),
            "--max-blksize" => config.max_blksize = val()?.parse().context("--max-blksize")?,
            "--max-windowsize" => {
                config.max_windowsize = val()?.parse().context("--max-windowsize")?
            }
            "--spin-us" => {
                config.spin = std::time::Duration::from_micros(val()?.parse().context("--spin-us")?)
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let server = TftpServer::bind(config, Arc::new(NoopObserver)).await?;
        println!("listening on {}", server.local_addr());
        std::io::stdout().flush()?;
        server.run().await
    })
}
