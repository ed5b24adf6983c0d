//! `sotto-relay`: run the blind relay. With no arguments it uses embedded
//! defaults (loopback, `./sotto-relay-data`, a generated certificate whose
//! fingerprint it prints for clients to pin). SIGINT/SIGTERM shut it down
//! gracefully, finishing in-flight durable writes. `--check-config` prints
//! the effective configuration and exits; `--version` the version.

/// glibc malloc took about 12 % of the relay's CPU under load (many small,
/// short-lived buffers per request, freed on other threads); mimalloc is
/// built for exactly that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use sotto_relay::server::config::{Config, Flags, LogFormat};
use sotto_relay::server::Relay;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match flags.log_format {
        LogFormat::Json => log.json().init(),
        // Colour only for a person at a terminal, never in a journal or file.
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    if flags.check_config {
        return check_config(&flags);
    }
    match run(flags).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--check-config`: the effective configuration (defaults, file,
/// environment, flags), printed as TOML, or what is wrong with it.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn check_config(flags: &Flags) -> std::process::ExitCode {
    match Config::load(flags) {
        Ok(config) => {
            match toml::to_string_pretty(&config) {
                Ok(text) => print!("{text}"),
                Err(e) => eprintln!("(could not print the configuration: {e})"),
            }
            eprintln!("sotto-relay: configuration OK");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sotto-relay: configuration refused: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(flags: Flags) -> sotto_relay::Result<()> {
    let config = Config::load(&flags)?;
    let relay = Relay::start(config).await?;
    let info = relay.info().clone();
    println!("sotto-relay listening on {}", info.addr);
    println!(
        "certificate sha256 fingerprint {}",
        hex::encode(info.fingerprint)
    );
    if let Some(m) = info.metrics_addr {
        println!("metrics and health on http://{m}/metrics http://{m}/health");
    }
    relay.run_until(shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
