//! The agent's life: hello (until accepted), a heartbeat thread (with the
//! health and busy probes of [`crate::health`]), and the
//! long-poll command loop that reports Started then Succeeded/Failed for each
//! command through the [`Outbox`] (kept until acknowledged). Never exits on
//! network trouble: every failure is retried with exponential backoff; a 401
//! or a vanished server leads to re-reading the credentials and a new hello.

use crate::app::App;
use crate::client::{Backoff, CallError, Client};
use crate::commands::{After, Executor};
use crate::config::Config;
use crate::health::Prober;
use crate::hooks::Hooks;
use crate::outbox::Outbox;
use crate::slot::{self, SlotFiles};
use crate::{inventory, power};
use boot_proto::{Command, CommandResult, CommandStatus, Heartbeat, Hello, HelloReply};
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

/// The agent's standing with the server: the shared client, the hello body
/// and the credentials' sources. Every thread that gets a 401 (or finds the
/// server gone) calls [`Session::rehello`]; one of them re-reads the
/// credentials and says hello again, the others wait for it.
pub struct Session {
    client: Client,
    cfg: Config,
    hello: Mutex<Hello>,
    /// Counts accepted hellos; doubles as the lock that serialises re-hellos.
    generation: Mutex<u64>,
}

impl Session {
    /// A session for the node described by `hello`, talking to `cfg.server` with `cfg.token`.
    pub fn new(cfg: Config, hello: Hello) -> Arc<Session> {
        Arc::new(Session {
            client: Client::pinned(&cfg.server, &cfg.token, cfg.tls_pin.as_deref()),
            cfg,
            hello: Mutex::new(hello),
            generation: Mutex::new(0),
        })
    }

    /// The HTTP client of this session (its token can change on reload).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Number of hellos accepted so far.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the credentials (credentials file, environment, kernel command
    /// line) and points the client at them.
    fn refresh_credentials(&self) {
        match self.cfg.reload(&|k| std::env::var(k).ok()) {
            Ok(c) => {
                if self
                    .client
                    .set_endpoint(&c.server, &c.token, c.tls_pin.as_deref())
                {
                    info!(server = %c.server, token = %self.client.token_fingerprint(), "credentials changed");
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot re-read credentials; keeping the current ones")
            }
        }
    }

    /// Says hello (re-reading the credentials before every attempt) until the
    /// server accepts it, with backoff, forever. `seen` is the generation the
    /// caller saw fail: when another thread has said hello since, this returns
    /// at once with `None`.
    pub fn rehello(&self, seen: u64) -> Option<HelloReply> {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        if *g != seen {
            return None;
        }
        let mut backoff = Backoff::default();
        loop {
            self.refresh_credentials();
            let body = {
                let mut h = self.hello.lock().unwrap_or_else(|p| p.into_inner());
                h.uptime_ms = Some(inventory::uptime_ms());
                h.clone()
            };
            match self.client.hello(&body) {
                Ok(r) => {
                    *g += 1;
                    info!(node_id = %r.node_id, token = %self.client.token_fingerprint(), hellos = *g, "hello accepted");
                    return Some(r);
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    log_call_error("hello", &e, d);
                    std::thread::sleep(d);
                }
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
        health: Default::default(),
        busy: None,
    }
}

/// The hello this agent sends: its protocol version, version and inventory.
pub fn hello_body(cfg: &Config, inventory: boot_proto::Inventory) -> Hello {
    Hello {
        protocol_version: boot_proto::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        inventory,
        uptime_ms: None,
        image: cfg.image.clone(),
        init_ms: start_ms_of("/proc/1/stat"),
        agent_start_ms: start_ms_of("/proc/self/stat"),
    }
}

/// When a process started, in milliseconds since the kernel started: field
/// 22 (`starttime`, clock ticks) of its `/proc/PID/stat`.
fn start_ms_of(stat: &str) -> Option<u64> {
    let ticks = starttime_ticks(&fs::read_to_string(stat).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks * 1000 / hz as u64)
}

/// `starttime` of a `/proc/PID/stat` line (the command name, in
/// parentheses, may hold spaces: fields are counted after its last `)`).
fn starttime_ticks(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A command for the log: the kexec kinds without their command line (it
/// holds the boot's token or hand-off credential).
fn describe(kind: &boot_proto::CommandKind) -> String {
    use boot_proto::CommandKind as K;
    match kind {
        K::Kexec {
            kernel_url, staged, ..
        } => format!("kexec {kernel_url} (staged: {staged:?})"),
        K::Prestage {
            stage, kernel_url, ..
        } => format!("prestage {stage} {kernel_url}"),
        other => format!("{other:?}"),
    }
}

/// A pre-staged boot (command line with `bootsrv.handoff`, no token):
/// exchanges the hand-off credential for this boot's token, retrying until
/// the server gives it, and writes it to the credentials file (0600) where
/// every later reload finds it. Returns the configuration re-read.
fn take_handoff(cfg: Config) -> Config {
    let Some(handoff) = cfg.handoff.clone() else {
        return cfg;
    };
    if !cfg.token.is_empty() {
        return cfg;
    }
    let client = Client::pinned(&cfg.server, &handoff, cfg.tls_pin.as_deref());
    let t = Instant::now();
    let mut backoff = Backoff::default();
    let token = loop {
        match client.handoff() {
            Ok(r) => break r.token,
            Err(e) => {
                let d = backoff.next_delay().min(Duration::from_secs(2));
                warn!(error = %e, handoff = %crate::client::fingerprint(&handoff), "hand-off refused or failed, retrying");
                std::thread::sleep(d);
            }
        }
    };
    let line = format!("{}={token}\n", boot_proto::cmdline::TOKEN);
    if let Err(e) = write_private(&cfg.credentials_file, line.as_bytes()) {
        warn!(error = %format!("{e:#}"), "cannot store the handed-off token; using it for this process only");
        let mut c = cfg;
        c.token = token;
        return c;
    }
    info!(token = %crate::client::fingerprint(&token), handoff_ms = t.elapsed().as_millis() as u64, "hand-off: token received");
    match cfg.reload(&|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot re-read the configuration");
            let mut c = cfg;
            c.token = token;
            c
        }
    }
}

fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("new");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(data)?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// How long a reboot or kexec waits for its result to reach the server.
pub const POWER_RESULT_WAIT: Duration = Duration::from_secs(10);

/// Runs the agent forever.
pub fn run(cfg: Config) -> ! {
    let started = Instant::now();
    let cfg = take_handoff(cfg);
    let inv = inventory::collect(cfg.bootif_mac.as_deref());
    let boot_mac = inv.boot_mac.clone();
    let session = Session::new(cfg.clone(), hello_body(&cfg, inv));
    // The other servers learned by an earlier agent process of this boot.
    session
        .client()
        .keep_servers_in(cfg.state_dir.join("servers"));
    info!(server = %cfg.server, node = ?cfg.node, token = %session.client().token_fingerprint(), inventory_ms = started.elapsed().as_millis() as u64, "agent starting");
    let reply = loop {
        if let Some(r) = session.rehello(session.generation()) {
            break r;
        }
    };
    info!(
        node_id = %reply.node_id,
        heartbeat_secs = reply.heartbeat_interval_secs,
        uptime_ms = inventory::uptime_ms(),
        since_start_ms = started.elapsed().as_millis() as u64,
        "agent ready (hello accepted)"
    );

    let outbox = Outbox::open(Some(cfg.state_dir.join("results.json")));
    {
        let s = session.clone();
        // The poster saw a 401 while the generation was g: re-hello once.
        let on_401 = Arc::new(move || {
            let g = s.generation();
            s.rehello(g);
        });
        if let Err(e) = outbox.spawn_poster(session.client().clone(), on_401) {
            warn!(error = %format!("{e:#}"), "results will not be posted");
        }
    }

    let (kick_tx, kick_rx) = mpsc::channel::<()>();
    let kick_tx = Mutex::new(kick_tx);
    let hooks = Hooks::new(&cfg.hooks_dir, SlotFiles::new(&cfg.state_dir).hooks_dir);
    // An agent restarted in the same boot keeps the slot it was given.
    slot::restore(&cfg, &hooks);
    let app = App::new(
        hooks,
        Arc::new(move || {
            let _ = kick_tx.lock().map(|t| t.send(()));
        }),
    );
    let interval = Duration::from_secs(reply.heartbeat_interval_secs.max(1));
    {
        let app = app.clone();
        let session = session.clone();
        let spawned = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || heartbeat_loop(&session, app, interval, kick_rx));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot spawn heartbeat thread");
        }
    }

    let exec = Executor::new(cfg.clone(), app, boot_mac);
    let mut backoff = Backoff::default();
    loop {
        let g = session.generation();
        match session.client().commands(cfg.poll_wait_secs) {
            Ok(cmds) => {
                backoff.reset();
                for c in cmds {
                    handle(&exec, &outbox, c);
                }
            }
            Err(e @ (CallError::Unauthorized(_) | CallError::Transport(_))) => {
                // Token rejected, or the server went away (restart, network):
                // re-read the credentials and introduce ourselves again.
                log_call_error("command poll", &e, Duration::ZERO);
                session.rehello(g);
            }
            Err(e) => {
                let d = backoff.next_delay();
                log_call_error("command poll", &e, d);
                std::thread::sleep(d);
            }
        }
    }
}

fn heartbeat_loop(session: &Session, app: App, interval: Duration, kick: mpsc::Receiver<()>) {
    let mut prev = None;
    let mut prober = Prober::new(app.hooks().clone());
    // Prime the CPU sample so the first heartbeat has a real delta.
    let _ = sample_heartbeat(&mut prev, app.state());
    loop {
        // Wake at the interval, or early when the app state changes.
        let _ = kick.recv_timeout(interval);
        while kick.try_recv().is_ok() {}
        let mut hb = sample_heartbeat(&mut prev, app.state());
        (hb.health, hb.busy) = prober.probe();
        let g = session.generation();
        match session.client().heartbeat(&hb) {
            Ok(()) => {}
            Err(CallError::Status { status: 404, .. }) => {
                warn!("server does not know this node any more: saying hello again");
                session.rehello(g);
            }
            Err(e @ CallError::Unauthorized(_)) => {
                warn!(error = %e, "heartbeat: token rejected; renewing credentials");
                session.rehello(g);
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

fn handle(exec: &Executor, outbox: &Outbox, c: Command) {
    if let Some(prev) = outbox.done(c.id) {
        // Redelivered (our result was lost, or we restarted): report again,
        // do not run twice.
        info!(id = c.id, "command already done; re-reporting result");
        outbox.repost(prev);
        return;
    }
    info!(id = c.id, kind = %describe(&c.kind), "command started");
    outbox.push(CommandResult {
        id: c.id,
        status: CommandStatus::Started,
        detail: String::new(),
    });
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
    outbox.finish(result);
    if out.after == After::Nothing {
        return;
    }
    // Before a power transition give the result a bounded time to reach the
    // server; if it does not, the next boot's hello tells the server anyway.
    if !outbox.wait_idle(POWER_RESULT_WAIT) {
        warn!(
            id = c.id,
            wait_ms = POWER_RESULT_WAIT.as_millis() as u64,
            "result not acknowledged before the power transition"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A redelivered command is re-reported, never run twice, also by a new
    /// agent process of the same boot (the record is read back from the state dir).
    #[test]
    fn redelivered_command_runs_once_across_agent_restarts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks");
        fs::create_dir(&hooks).unwrap();
        let runs = dir.path().join("runs");
        let hook = hooks.join("start");
        fs::write(
            &hook,
            format!("#!/bin/sh\necho run >> {}\nexit 0\n", runs.display()),
        )
        .unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        let cmdline = dir.path().join("cmdline");
        fs::write(&cmdline, "bootsrv.server=http://127.0.0.1:1").unwrap();
        let cfg = Config::from_sources(
            &[
                "--cmdline-file".into(),
                cmdline.display().to_string(),
                "--hooks-dir".into(),
                hooks.display().to_string(),
                "--dry-run".into(),
            ],
            &|_| None,
        )
        .unwrap();
        let record = dir.path().join("state/results.json");
        let cmd = Command {
            id: 41,
            kind: boot_proto::CommandKind::StartApp { timeout_secs: 5 },
        };
        let runs_now = || {
            fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count()
        };
        for process in 0..2 {
            // A new process: fresh executor and app, the record from disk.
            let app = App::new(
                Hooks::new(&hooks, dir.path().join("slot-hooks")),
                Arc::new(|| {}),
            );
            let exec = Executor::new(cfg.clone(), app, None);
            let outbox = Outbox::open(Some(record.clone()));
            handle(&exec, &outbox, cmd.clone());
            handle(&exec, &outbox, cmd.clone());
            assert_eq!(runs_now(), 1, "process {process}: the hook ran again");
            let done = outbox.done(41).expect("command recorded as done");
            assert_eq!(done.status, CommandStatus::Succeeded, "{done:?}");
            // Started + final, each once: the re-report does not pile up.
            assert_eq!(outbox.pending(), 2);
        }
    }

    #[test]
    fn process_start_times_are_read_from_proc_stat() {
        let line = "1 (init (x) y) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 137 1000 10";
        assert_eq!(starttime_ticks(line), Some(137));
        assert_eq!(starttime_ticks("garbage"), None);
        let me = start_ms_of("/proc/self/stat").expect("own start time");
        assert!(me <= inventory::uptime_ms(), "{me}");
    }

    #[test]
    fn kexec_commands_are_logged_without_their_command_line() {
        let k = boot_proto::CommandKind::Prestage {
            stage: "s1".into(),
            kernel_url: "http://s/k".into(),
            initrd_url: None,
            cmdline: "bootsrv.handoff=SECRET".into(),
            kernel_sha256: None,
            initrd_sha256: None,
        };
        assert!(!describe(&k).contains("SECRET"));
        let k = boot_proto::CommandKind::Kexec {
            kernel_url: "http://s/k".into(),
            initrd_url: None,
            cmdline: "bootsrv.token=SECRET".into(),
            kernel_sha256: None,
            initrd_sha256: None,
            staged: None,
        };
        assert!(!describe(&k).contains("SECRET"));
    }

    #[test]
    fn hello_carries_the_protocol_version() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        fs::write(
            &cmdline,
            "bootsrv.server=http://127.0.0.1:1 bootsrv.image=lab",
        )
        .unwrap();
        let cfg = Config::from_sources(
            &["--cmdline-file".into(), cmdline.display().to_string()],
            &|_| None,
        )
        .unwrap();
        let h = hello_body(&cfg, inventory::collect(None));
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["protocol_version"], boot_proto::PROTOCOL_VERSION);
        // Slot configuration and heartbeat health/busy are protocol 3; cloning 4.
        assert_eq!(v["protocol_version"], 4);
        assert_eq!(v["image"], "lab");
    }
}
