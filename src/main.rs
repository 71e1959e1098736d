//! The `eddy` command: CLI → configuration → logging → [`eddy::Eddy`], until
//! SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use eddy::config::{Config, LogFormat};
use eddy::Eddy;
use tracing_subscriber::EnvFilter;

/// A short-lived client connection allocates and frees a few dozen small
/// buffers; mimalloc's thread-local free lists make that cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "eddy",
    version,
    about = "A forward-proxy sidecar that pools upstream HTTP connections"
)]
struct Cli {
    /// Configuration file (TOML); without it eddy runs on its embedded default.
    #[arg(
        long,
        short = 'c',
        env = "EDDY_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it, with every default filled in, as TOML.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        None => run(config),
    }
}

fn load(path: Option<&Path>) -> Result<Config, eddy::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded_default()),
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let eddy = match Eddy::start(config).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_stop().await;
        tracing::info!("shutting down");
        eddy.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGTERM or SIGINT. SIGHUP is caught so that it does not kill the process;
/// reloading on it is not implemented yet.
async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => tracing::warn!("SIGHUP received: configuration reload is not supported yet; restart eddy to apply changes"),
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.as_str()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
