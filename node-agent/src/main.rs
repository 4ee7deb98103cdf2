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

fn main() {
    pid1_supervise();
    let level = match std::env::var("NODE_AGENT_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match Config::from_sources(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("node-agent: {e:#}");
            std::process::exit(2);
        }
    };
    node_agent::agent::run(cfg)
}
