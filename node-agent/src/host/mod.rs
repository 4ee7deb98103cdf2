//! Host mode (`node-agent host`): the agent on a failover host. It
//! registers the host's capacity (CPUs, memory, the VMs it reserves for
//! failover), polls the server with what its VMs do, and starts and stops
//! QEMU VMs on the server's command ([`vm`]); a VM that ends is reported at
//! the next poll. A restarted agent adopts the VMs still running. The server authenticates it by the secret an admin
//! issued (`boot-server host add NAME`), read from a file.

pub mod opts;
pub mod vm;

use crate::client::{Backoff, CallError, Client};
use anyhow::{Context, Result};
use boot_proto::host::{HostCapacity, HostCommand, HostReply, HostReport};
pub use opts::HostOptions;
use std::time::Duration;
use vm::Vms;

/// Longest a poll waits on the server for something to do.
const POLL_WAIT_SECS: u64 = 3;

/// The host's capacity as the kernel reports it, with `reserve` VMs.
pub fn capacity(reserve: u32, kvm: bool) -> HostCapacity {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    HostCapacity {
        cpus,
        memory_bytes,
        reserve,
        kvm,
    }
}

/// One poll: sends the report, returns the server's answer.
fn poll(client: &Client, report: &HostReport) -> Result<HostReply, CallError> {
    let path = format!("/api/host/poll?wait={POLL_WAIT_SECS}");
    client.post_bearer(&path, report, POLL_WAIT_SECS + 10)
}

/// Runs host mode until killed: poll, act, repeat; server errors are
/// retried with backoff, never fatal. VMs keep running across a lost
/// server (the server decides what becomes of them when it is back).
pub fn run(opts: HostOptions) -> Result<()> {
    let secret = std::fs::read_to_string(&opts.credential_file)
        .with_context(|| format!("reading {}", opts.credential_file.display()))?
        .trim()
        .to_string();
    anyhow::ensure!(
        !secret.is_empty(),
        "{} is empty: put the secret `boot-server host add NAME` printed there",
        opts.credential_file.display()
    );
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    let kvm = match opts.accel.as_str() {
        "kvm" => true,
        "tcg" => false,
        _ => vm::kvm_usable(),
    };
    let cap = capacity(opts.reserve, kvm);
    tracing::info!(server = %opts.server, bridge = %opts.bridge, cpus = cap.cpus, memory_mb = cap.memory_bytes >> 20,
        reserve = cap.reserve, kvm, secret = %crate::client::fingerprint(&secret), "host mode");
    let client = Client::new(&opts.server, &secret);
    let mut vms = Vms::new(opts.clone(), kvm);
    let adopted = vms.adopt();
    if !adopted.is_empty() {
        tracing::info!(vms = ?adopted, "adopted VMs an earlier agent started");
    }
    let mut backoff = Backoff::default();
    let mut named = false;
    loop {
        let report = HostReport {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            capacity: cap.clone(),
            vms: vms.report(),
        };
        match poll(&client, &report) {
            Ok(reply) => {
                backoff.reset();
                vms.reported();
                if !named {
                    tracing::info!(host = %reply.host, "registered with the server");
                    named = true;
                }
                for c in reply.commands {
                    match c {
                        HostCommand::StartVm { vm } => vms.start(&vm),
                        HostCommand::StopVm { id } => vms.stop(&id),
                    }
                }
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_ms = d.as_millis() as u64, "poll failed");
                vms.reap();
                std::thread::sleep(d);
            }
        }
        vms.reap();
        std::thread::sleep(Duration::from_millis(50));
    }
}
