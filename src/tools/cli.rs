//! The `outrigger` command line: `run` the sidecar, `check` a config,
//! `inject` the sidecar into Kubernetes YAML, `demo` it on this machine.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use actix_rt::signal::unix::SignalKind;
use clap::{Parser, Subcommand};

use crate::reload::{ConfigFile, Trigger};
use crate::tools::check::{check, report, Severity};
use crate::tools::demo::DemoOptions;
use crate::tools::inject::{inject, Options};
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
        /// Make a secret's environment variable that is not set (`JWT_SECRET`,
        /// the API keys') an error, as it is for `run`; by default it is a
        /// warning, so CI can check files without the runtime secrets.
        #[arg(long)]
        strict_env: bool,
    },
    /// Print Kubernetes YAML (Deployment, StatefulSet, DaemonSet, ReplicaSet,
    /// Job, CronJob, Pod, List; several documents) with the sidecar added.
    Inject {
        /// The YAML file, or `-` for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        #[command(flatten)]
        options: Options,
    },
    /// Start three local demo replicas (one flaky, one slow), a demo app and
    /// the sidecar in front of them, and print the curl commands to try.
    Demo {
        /// The share of requests (0 to 1) the flaky replica answers with 503.
        #[arg(long, default_value_t = 0.5, value_parser = parse_rate)]
        failure_rate: f64,
        /// Keep rate limits, revocations and the cache in this Redis
        /// (`redis://host:port/db`) instead of in process.
        #[arg(long)]
        redis: Option<String>,
        /// Run the tour against itself, print each step, and exit 0 only
        /// when every step saw the expected answer.
        #[arg(long)]
        once: bool,
    },
}

impl Cli {
    /// Runs the chosen command and returns the process exit code.
    pub fn execute(self) -> ExitCode {
        match self.command {
            Command::Run { config } => run(&config),
            Command::Check { config, strict_env } => check(&config, strict_env),
            Command::Inject { file, options } => inject_file(&file, &options),
            Command::Demo {
                failure_rate,
                redis,
                once,
            } => {
                init_logging("warn");
                crate::tools::demo::run(DemoOptions {
                    failure_rate,
                    redis,
                    once,
                })
            }
        }
    }
}

fn run(path: &Path) -> ExitCode {
    init_logging("info");
    let file = ConfigFile::new(path);
    let config = match file.load() {
        Ok(config) => config,
        Err(errors) => {
            report(path, &errors, Severity::Error);
            return ExitCode::FAILURE;
        }
    };
    let outcome = actix_rt::System::new().block_on(async move {
        let sidecar = Sidecar::start_from(config, file)
            .await
            .map_err(|err| format!("outrigger cannot start: {err}"))?;
        let signal_error = |err: std::io::Error| format!("outrigger stopped: {err}");
        let mut hangups =
            actix_rt::signal::unix::signal(SignalKind::hangup()).map_err(signal_error)?;
        let mut signals = StopSignals::new().map_err(signal_error)?;
        let reloading = async {
            while hangups.recv().await.is_some() {
                log::info!("SIGHUP received: reloading the config");
                sidecar.reload(Trigger::Signal).await;
            }
        };
        tokio_select(
            tokio_select(signals.next(), sidecar.shutdown_requested()),
            reloading,
        )
        .await;
        sidecar.stop(signals.next()).await;
        Ok::<(), String>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            log::error!("{why}");
            ExitCode::FAILURE
        }
    }
}

fn inject_file(path: &Path, options: &Options) -> ExitCode {
    let name = if path == Path::new("-") {
        String::from("(stdin)")
    } else {
        path.display().to_string()
    };
    let mut input = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut input).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|text| input = text)
    };
    if let Err(err) = read {
        eprintln!("outrigger inject: {name}: cannot read it: {err}");
        return ExitCode::FAILURE;
    }
    let injected = match inject(&input, options) {
        Ok(injected) => injected,
        Err(err) => {
            eprintln!("outrigger inject: {name}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut stderr = std::io::stderr().lock();
    for note in &injected.notes {
        let _ = writeln!(stderr, "outrigger inject: {name}: {note}");
    }
    // Not print!: it panics when the reader of a pipe has gone.
    match std::io::stdout().lock().write_all(injected.yaml.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outrigger inject: cannot write the result: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A share from 0 to 1, for `--failure-rate`.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("expected a number from 0 to 1, got {text:?}")),
    }
}

/// Logs go to stderr; `LOG_LEVEL` sets the level or per-module filters
/// (`info`, `outrigger=debug,actix_server=warn`; `default` when unset),
/// `LOG_FORMAT=json` makes each line a JSON object.
fn init_logging(default: &str) {
    let filters = std::env::var("LOG_LEVEL").unwrap_or_else(|_| default.to_string());
    let format = std::env::var("LOG_FORMAT").ok();
    crate::logging::init(
        &filters,
        crate::logging::LogFormat::from_env(format.as_deref()),
    );
}

/// SIGTERM and SIGINT: the first asks for a graceful stop, a second for
/// an immediate one.
pub(crate) struct StopSignals {
    terminate: actix_rt::signal::unix::Signal,
    interrupt: actix_rt::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn new() -> std::io::Result<Self> {
        use actix_rt::signal::unix::signal;
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub(crate) async fn next(&mut self) {
        tokio_select(self.terminate.recv(), self.interrupt.recv()).await;
        log::info!("stop signal received");
    }
}

/// Waits for whichever of two futures finishes first.
async fn tokio_select<A: std::future::Future, B: std::future::Future>(a: A, b: B) {
    let (a, b) = (std::pin::pin!(a), std::pin::pin!(b));
    futures_util::future::select(a, b).await;
}
