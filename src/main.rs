//! loglet: the command line. `run` collects the node's container logs; `check-config` validates
//! a config file and prints the effective config; `--version`.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loglet::config::{Config, OwnLogFormat};

/// jemalloc, with its background thread giving freed pages back to the kernel after its decay
/// time: with glibc's malloc, the heap grown by a catch-up (an outage's backlog) stayed resident
/// for good (docs/performance.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "loglet",
    version,
    about = "Kubernetes node-level log collector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tail the node's container logs and ship them to the configured sinks.
    Run {
        /// Config file (YAML); without it, the embedded default: every container log under
        /// /var/log/pods, printed to stdout as JSON lines.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The host's root as seen by loglet (overrides `root` in the config).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config (secrets redacted).
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => match serde_saphyr::to_string(&config) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&anyhow::anyhow!("failed to print the config: {e}")),
            },
            Err(e) => fail(&e.into()),
        },
        Command::Run { config: path, root } => {
            let loaded = match &path {
                Some(path) => Config::load(path),
                None => Ok(Config::embedded_default()),
            };
            let mut config = match loaded {
                Ok(c) => c,
                Err(e) => return fail(&e.into()),
            };
            if let Some(root) = &root {
                config.root = root.clone();
            }
            init_logging(&config);
            let source = path.map(|path| loglet::pipeline::ConfigSource { path, root });
            match loglet::pipeline::run(config, source) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// loglet's own logs go to stderr: stdout carries records when the stdout sink is used.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        OwnLogFormat::Json => builder.json().init(),
        OwnLogFormat::Text => builder.init(),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
