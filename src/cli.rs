//! The `outrigger` command line: `run` the sidecar, `check` a config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{format_duration, Config, ConfigError, DiscoverySource};
use crate::Sidecar;

/// A per-pod service-mesh sidecar for plain HTTP services.
#[derive(Debug, Parser)]
#[command(name = "outrigger", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Run {
        /// The config file.
        #[arg(
            long,
            env = "OUTRIGGER_CONFIG",
            default_value = "sidecar-config/sidecar.yaml"
        )]
        config: PathBuf,
    },
    /// Validate a config file: print every error with its key path, or a summary.
    Check {
        /// The config file.
        #[arg(
            long,
            env = "OUTRIGGER_CONFIG",
            default_value = "sidecar-config/sidecar.yaml"
        )]
        config: PathBuf,
    },
}

impl Cli {
    /// Runs the chosen command and returns the process exit code.
    pub fn execute(self) -> ExitCode {
        match self.command {
            Command::Run { config } => run(&config),
            Command::Check { config } => check(&config),
        }
    }
}

fn run(path: &Path) -> ExitCode {
    init_logging();
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            report_errors(path, &errors);
            return ExitCode::FAILURE;
        }
    };
    let outcome = actix_rt::System::new().block_on(async move {
        let sidecar = Sidecar::start(config).await?;
        wait_for_stop_signal().await?;
        sidecar.stop().await;
        Ok::<(), std::io::Error>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("outrigger stopped: {err}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: ok", path.display());
            println!(
                "  listeners: outbound {}, admin {}",
                config.listeners.outbound, config.listeners.admin
            );
            let source = config.discovery.source;
            println!(
                "  discovery: {}, refresh {}",
                source.as_str(),
                format_duration(config.discovery.refresh)
            );
            for service in &config.services {
                let endpoints = match source {
                    DiscoverySource::Static => format!("{} endpoints", service.endpoints.len()),
                    other => format!("endpoints from {}", other.as_str()),
                };
                println!(
                    "  service {}: {endpoints}, timeout {}, {:?}",
                    service.name,
                    format_duration(service.policy.timeout),
                    service.policy.load_balancer
                );
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report_errors(path, &errors);
            ExitCode::FAILURE
        }
    }
}

fn report_errors(path: &Path, errors: &[ConfigError]) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{}: {} problem(s)", path.display(), errors.len());
    for error in errors {
        let _ = writeln!(stderr, "  {error}");
    }
}

/// Logs go to stderr; `LOG_LEVEL` sets the level or per-module filters
/// (`info`, `outrigger=debug,actix_server=warn`).
fn init_logging() {
    let filters = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".to_string());
    env_logger::Builder::new()
        .parse_filters(&filters)
        .format_timestamp_millis()
        .init();
}

async fn wait_for_stop_signal() -> std::io::Result<()> {
    use actix_rt::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio_select(terminate.recv(), interrupt.recv()).await;
    log::info!("stop signal received");
    Ok(())
}

/// Waits for whichever of two futures finishes first.
async fn tokio_select<A: std::future::Future, B: std::future::Future>(a: A, b: B) {
    let (a, b) = (std::pin::pin!(a), std::pin::pin!(b));
    futures_util::future::select(a, b).await;
}
