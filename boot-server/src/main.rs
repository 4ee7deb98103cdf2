//! `boot-server` binary: see [`boot_server::cli`].

use clap::Parser;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = boot_server::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("boot-server: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(boot_server::cli::run(cli));
    // Protocol servers may park threads in blocking receives: do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("boot-server: {:#}", f.error);
            std::process::ExitCode::from(f.code)
        }
    }
}
