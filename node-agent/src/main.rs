//! `node-agent` binary: logging, configuration, optional PID-1 supervision,
//! then the agent loop (see `node_agent::agent`).

use node_agent::config::Config;

/// When started as PID 1 (`exec node-agent` from an initramfs /init), fork:
/// the parent stays PID 1, reaps every orphan and restarts the agent if it
/// ever dies; the child runs the agent. Must run before any thread exists.
fn pid1_supervise() {
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult};
    if std::process::id() != 1 {
        return;
    }
    loop {
        // SAFETY: called first thing in main, while the process is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => return,
            Ok(ForkResult::Parent { child }) => loop {
                match waitpid(None, None) {
                    Ok(st) if st.pid() == Some(child) => {
                        eprintln!("node-agent: agent exited ({st:?}); restarting in 1 s");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        break;
                    }
                    Ok(_) => {}
                    Err(nix::errno::Errno::ECHILD) => break,
                    Err(_) => {}
                }
            },
            Err(e) => {
                eprintln!("node-agent: fork failed ({e}); running without a reaper");
                return;
            }
        }
    }
}

/// `attach-disk --persist`: hands the attached device to a background
/// keeper process that reconnects it whenever the link dies, for as long as
/// the device exists. Everything the keeper needs is opened before the fork,
/// so it survives the initramfs's `switch_root` (its binary and files stay in
/// the old rootfs's memory, never on the disk it keeps alive). The caller
/// (this process) returns once the keeper exists.
fn keep_disk(
    a: &node_agent::nbd::Attached,
    host: String,
    port: u16,
    export: String,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use nix::unistd::{fork, setsid, ForkResult};
    if a.via != "netlink" {
        // The ioctl path has no reconnect; its NBD_DO_IT thread must stay.
        println!("{a}");
        eprintln!(
            "node-agent: {a}: attached through ioctls, no reconnect; staying in the foreground"
        );
        let w = node_agent::nbd::DeviceWatch::open(a.index)?;
        while w.connected() {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        anyhow::bail!("nbd{} disconnected", a.index);
    }
    let r = node_agent::nbd::Reconnector::prepare(a.index, host, port, export)
        .context("prepare the reconnector")?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: no thread was started in this process (netlink attach, no
    // reconnector thread); the child only runs the reconnector loop.
    match unsafe { fork() }.context("fork the disk keeper")? {
        ForkResult::Parent { child } => {
            eprintln!("node-agent: nbd{} kept connected by pid {child}", a.index);
            Ok(())
        }
        ForkResult::Child => {
            let _ = setsid();
            tracing::info!(index = a.index, "disk keeper running");
            r.run();
            std::process::exit(0);
        }
    }
}

/// One-shot tools for operators and the QEMU smoke test: the same code paths
/// the commands use, run directly.
fn tool(args: &[String]) -> Option<anyhow::Result<String>> {
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let r = match args.first().map(String::as_str)? {
        "attach-disk" => (|| {
            let host = get("--host").unwrap_or_else(|| "127.0.0.1".into());
            let port = get("--port").unwrap_or_else(|| "10809".into()).parse()?;
            let export = get("--export").unwrap_or_default();
            let persist = args.iter().any(|a| a == "--persist");
            let mut opts = node_agent::nbd::AttachOptions {
                reconnect_thread: !persist,
                ..Default::default()
            };
            if let Some(t) = get("--wait") {
                let secs: u64 = t
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--wait {t:?}: {e}"))?;
                opts.connect_wait = std::time::Duration::from_secs(secs);
            }
            if let Some(t) = get("--dead-timeout") {
                opts.dead_conn_timeout_secs = t
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--dead-timeout {t:?}: {e}"))?;
            }
            let a = node_agent::nbd::attach_with(
                &host,
                port,
                &export,
                get("--mount").as_deref(),
                opts,
            )?;
            if persist {
                keep_disk(&a, host, port, export)?;
            }
            Ok(a.to_string())
        })(),
        "attach-iscsi" => (|| {
            let spec = get("--root").ok_or_else(|| anyhow::anyhow!("--root iscsi:..."))?;
            let root = node_agent::iscsi::IscsiRoot::parse(&spec)?;
            let wait = match get("--wait") {
                Some(t) => t
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--wait {t:?}: {e}"))?,
                None => 0,
            };
            let a = node_agent::iscsi::attach(
                &root,
                get("--mount").as_deref().map(std::path::Path::new),
                std::time::Duration::from_secs(wait),
            )?;
            Ok(a.to_string())
        })(),
        "detach-disk" => (|| {
            let index = get("--index").unwrap_or_else(|| "0".into()).parse()?;
            node_agent::nbd::netlink::disconnect(index)?;
            Ok(format!("nbd{index} disconnected"))
        })(),
        "set-netboot" => (|| {
            let dir = get("--efivars-dir").unwrap_or_else(|| "/sys/firmware/efi/efivars".into());
            let vars = node_agent::bootptr::EfiVars::new(dir);
            let c = node_agent::bootptr::set_network_boot(
                &vars,
                get("--mac").as_deref(),
                get("--http-boot-url").as_deref(),
            )?;
            Ok(c.to_string())
        })(),
        "kexec" => (|| {
            let k = get("--kernel").ok_or_else(|| anyhow::anyhow!("--kernel URL"))?;
            let cmdline = get("--cmdline").unwrap_or_default();
            let r =
                node_agent::power::kexec_prepare(&k, get("--initrd").as_deref(), &cmdline, false)?;
            eprintln!("node-agent: {r}");
            if args.iter().any(|a| a == "--exec") {
                node_agent::power::kexec_exec(false)?;
            }
            Ok(r.to_string())
        })(),
        _ => return None,
    };
    Some(r)
}

fn init_logging() {
    let level = match std::env::var("NODE_AGENT_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The HTTP and TLS crates log request preludes (the token header) at
    // debug level when `log` records reach tracing: never below warn.
    let quiet = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("ureq", tracing::Level::WARN)
        .with_target("rustls", tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(quiet)
        .init();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("attach-disk" | "attach-iscsi" | "detach-disk" | "set-netboot" | "kexec")
    ) {
        init_logging();
    }
    if let Some(r) = tool(&args) {
        match r {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("node-agent: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    if args.first().map(String::as_str) == Some("host") {
        init_logging();
        let r = node_agent::host::HostOptions::parse(&args[1..]).and_then(node_agent::host::run);
        if let Err(e) = r {
            eprintln!("node-agent host: {e:#}");
            std::process::exit(2);
        }
        return;
    }
    pid1_supervise();
    init_logging();
    let cfg = match Config::from_sources(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node-agent: {e:#}");
            std::process::exit(2);
        }
    };
    node_agent::agent::run(cfg)
}
