//! `boot-server` binary: see [`boot_server::cli`].

use boot_server::cli::LogFormat;
use clap::Parser;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = boot_server::cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format() {
        LogFormat::Json => log.json().with_current_span(false).init(),
        LogFormat::Text => log.init(),
    }
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
