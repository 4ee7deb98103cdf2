//! The agent's life: hello (until accepted), a heartbeat thread, and the
//! long-poll command loop that reports Started then Succeeded/Failed for each
//! command. Never exits on network trouble: every failure is retried with
//! exponential backoff.

use crate::app::App;
use crate::client::{Backoff, CallError, Client};
use crate::commands::{After, Executor};
use crate::config::Config;
use crate::{inventory, power};
use boot_proto::{Command, CommandResult, CommandStatus, Heartbeat, Hello, HelloReply};
use std::collections::VecDeque;
use std::fs;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

fn log_call_error(what: &str, e: &CallError, delay: Duration) {
    match e {
        CallError::Unauthorized(_) => {
            warn!(error = %e, retry_ms = delay.as_millis() as u64, "{what}: token rejected (stale?), retrying")
        }
        _ => warn!(error = %e, retry_ms = delay.as_millis() as u64, "{what} failed, retrying"),
    }
}

/// Sends hello until the server accepts it.
fn hello_until_accepted(client: &Client, hello: &Mutex<Hello>) -> HelloReply {
    let mut backoff = Backoff::default();
    loop {
        let body = {
            let mut h = hello.lock().unwrap_or_else(|p| p.into_inner());
            h.uptime_ms = Some(inventory::uptime_ms());
            h.clone()
        };
        match client.hello(&body) {
            Ok(r) => return r,
            Err(e) => {
                let d = backoff.next_delay();
                log_call_error("hello", &e, d);
                std::thread::sleep(d);
            }
        }
    }
}

fn read(p: &str) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// Samples load, CPU and memory; `prev` keeps the last /proc/stat sample.
pub fn sample_heartbeat(prev: &mut Option<(u64, u64)>, app: boot_proto::AppState) -> Heartbeat {
    let now = inventory::parse_stat_cpu(&read("/proc/stat"));
    let cpu_busy = match (*prev, now) {
        (Some(p), Some(n)) => inventory::cpu_busy(p, n),
        _ => 0.0,
    };
    if now.is_some() {
        *prev = now;
    }
    let (mem_total_bytes, mem_available_bytes) = inventory::parse_meminfo(&read("/proc/meminfo"));
    Heartbeat {
        load1: inventory::parse_loadavg(&read("/proc/loadavg")),
        cpu_busy,
        mem_total_bytes,
        mem_available_bytes,
        app,
        uptime_ms: inventory::uptime_ms(),
    }
}

fn post_result(client: &Client, r: &CommandResult, attempts: u32) -> bool {
    let mut backoff = Backoff::default();
    for i in 0..attempts {
        match client.result(r) {
            Ok(()) => return true,
            Err(e) if e.is_permanent() => {
                warn!(id = r.id, error = %e, "server rejected the result; not retrying");
                return false;
            }
            Err(e) => {
                let d = backoff.next_delay();
                log_call_error("result", &e, d);
                if i + 1 < attempts {
                    std::thread::sleep(d);
                }
            }
        }
    }
    false
}

/// Runs the agent forever.
pub fn run(cfg: Config) -> ! {
    let started = Instant::now();
    let client = Client::new(&cfg.server, &cfg.token);
    let inv = inventory::collect(cfg.bootif_mac.as_deref());
    let boot_mac = inv.boot_mac.clone();
    let hello = Arc::new(Mutex::new(Hello {
        protocol_version: boot_proto::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        inventory: inv,
        uptime_ms: None,
        image: cfg.image.clone(),
    }));
    info!(server = %cfg.server, node = ?cfg.node, inventory_ms = started.elapsed().as_millis() as u64, "agent starting");
    let reply = hello_until_accepted(&client, &hello);
    info!(
        node_id = %reply.node_id,
        heartbeat_secs = reply.heartbeat_interval_secs,
        uptime_ms = inventory::uptime_ms(),
        since_start_ms = started.elapsed().as_millis() as u64,
        "agent ready (hello accepted)"
    );

    let (kick_tx, kick_rx) = mpsc::channel::<()>();
    let kick_tx = Mutex::new(kick_tx);
    let app = App::new(
        &cfg.hooks_dir,
        Arc::new(move || {
            let _ = kick_tx.lock().map(|t| t.send(()));
        }),
    );
    let interval = Duration::from_secs(reply.heartbeat_interval_secs.max(1));
    {
        let client = client.clone();
        let app = app.clone();
        let hello = hello.clone();
        let spawned = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat_loop(client, app, hello, interval, kick_rx));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot spawn heartbeat thread");
        }
    }

    let exec = Executor::new(cfg.clone(), app, boot_mac);
    let mut backoff = Backoff::default();
    let mut done: VecDeque<CommandResult> = VecDeque::new();
    loop {
        match client.commands(cfg.poll_wait_secs) {
            Ok(cmds) => {
                backoff.reset();
                for c in cmds {
                    handle(&client, &exec, &mut done, c);
                }
            }
            Err(e) => {
                let d = backoff.next_delay();
                log_call_error("command poll", &e, d);
                std::thread::sleep(d);
            }
        }
    }
}

fn heartbeat_loop(
    client: Client,
    app: App,
    hello: Arc<Mutex<Hello>>,
    interval: Duration,
    kick: mpsc::Receiver<()>,
) {
    let mut prev = None;
    // Prime the CPU sample so the first heartbeat has a real delta.
    let _ = sample_heartbeat(&mut prev, app.state());
    loop {
        // Wake at the interval, or early when the app state changes.
        let _ = kick.recv_timeout(interval);
        while kick.try_recv().is_ok() {}
        let hb = sample_heartbeat(&mut prev, app.state());
        match client.heartbeat(&hb) {
            Ok(()) => {}
            Err(CallError::Status { status: 404, .. }) => {
                warn!("server does not know this node any more: saying hello again");
                let body = hello.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Err(e) = client.hello(&body) {
                    warn!(error = %e, "re-hello failed");
                }
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

fn handle(client: &Client, exec: &Executor, done: &mut VecDeque<CommandResult>, c: Command) {
    if let Some(prev) = done.iter().find(|r| r.id == c.id) {
        // Redelivered (our result was lost): report again, do not run twice.
        info!(id = c.id, "command already done; re-reporting result");
        post_result(client, &prev.clone(), 5);
        return;
    }
    info!(id = c.id, kind = ?c.kind, "command started");
    let started = CommandResult {
        id: c.id,
        status: CommandStatus::Started,
        detail: String::new(),
    };
    post_result(client, &started, 2);
    let t = Instant::now();
    let out = exec.execute(&c.kind);
    let ms = t.elapsed().as_millis();
    let result = CommandResult {
        id: c.id,
        status: if out.ok {
            CommandStatus::Succeeded
        } else {
            CommandStatus::Failed
        },
        detail: format!("{} ({ms} ms)", out.detail),
    };
    if out.ok {
        info!(id = c.id, detail = %result.detail, "command succeeded");
    } else {
        warn!(id = c.id, detail = %result.detail, "command failed");
    }
    // Before a reboot the report is best effort: do not hold the node hostage.
    let attempts = if out.after == After::Nothing { 20 } else { 3 };
    post_result(client, &result, attempts);
    done.push_back(result);
    if done.len() > 64 {
        done.pop_front();
    }
    let r = match out.after {
        After::Nothing => Ok(()),
        After::Reboot => power::reboot(exec.cfg.dry_run),
        After::KexecJump => power::kexec_exec(exec.cfg.dry_run),
    };
    if let Err(e) = r {
        warn!(error = %format!("{e:#}"), "power transition failed");
    }
}
