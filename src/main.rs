//! The `eddy` command: CLI → configuration → logging → [`eddy::Eddy`], until
//! SIGTERM or SIGINT; SIGHUP reloads the configuration file.

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
    /// Print the configuration file's JSON Schema (for editors and CI).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Schema) = cli.command {
        print!("{}", Config::json_schema());
        return ExitCode::SUCCESS;
    }
    let config = match load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            if let Err(e) = Eddy::check_files(&config) {
                let file = cli
                    .config
                    .as_deref()
                    .map_or("<default>".into(), |p| p.display().to_string());
                eprintln!("{file}: {e}");
                return ExitCode::FAILURE;
            }
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Schema) => ExitCode::SUCCESS,
        None => run(config, cli.config),
    }
}

fn load(path: Option<&Path>) -> Result<Config, eddy::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded_default()),
    }
}

fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    let log_level = init_logging(&config);
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
        // Before starting: a SIGHUP during start-up must not kill eddy
        // (its default action), and systemd reloads as soon as it likes.
        let signals = Signals::install();
        let eddy = match Eddy::start(config).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        handle_signals(signals, &eddy, path.as_deref(), log_level.as_ref()).await;
        tracing::info!("shutting down");
        eddy.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGTERM, SIGINT and SIGHUP, caught from start-up on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Returns on SIGTERM or SIGINT; reloads the configuration on SIGHUP.
async fn handle_signals(
    signals: Option<Signals>,
    eddy: &Eddy,
    path: Option<&Path>,
    log_level: Option<&LogLevelHandle>,
) {
    let Some(mut s) = signals else {
        tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = s.term.recv() => return,
            _ = s.int.recv() => return,
            _ = s.hup.recv() => reload(eddy, path, log_level),
        }
    }
}

fn reload(eddy: &Eddy, path: Option<&Path>, log_level: Option<&LogLevelHandle>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: eddy runs on its embedded default; there is no file to reload");
        return;
    };
    match eddy.reload_file(path) {
        Ok(reloaded) => {
            if let Some(set_level) = log_level {
                if let Err(e) = set_level(eddy.config().log.level.as_str()) {
                    tracing::warn!(error = %e, "log level not changed");
                }
            }
            for change in &reloaded.needs_restart {
                tracing::warn!(%change, "configuration changed; restart eddy to apply it");
            }
            tracing::info!(file = %path.display(), "configuration reloaded");
        }
        Err(e) => tracing::error!(
            error = %e,
            "configuration reload failed; the running configuration stays in effect"
        ),
    }
}

/// Sets the log level filter (absent when `RUST_LOG` decides it).
type LogLevelHandle = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

fn level_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
) -> LogLevelHandle {
    Box::new(move |level| {
        handle
            .reload(EnvFilter::new(level))
            .map_err(|e| e.to_string())
    })
}

/// Colour only on a terminal, and not if `NO_COLOR` is set (to anything
/// but the empty string, as no-color.org has it): in a file, a pipe or
/// journald, escape codes are noise in every line.
fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

fn init_logging(config: &Config) -> Option<LogLevelHandle> {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_decides = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(config.log.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_wanted());
    let handle = match config.log.format {
        LogFormat::Json => {
            // One flat object per line: the event's fields at the top level
            // (no `fields` wrapper), no span context.
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            level_setter(handle)
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            level_setter(handle)
        }
    };
    (!env_decides).then_some(handle)
}
