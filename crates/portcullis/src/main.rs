//! The `portcullis` binary: command line, wiring, signals — nothing else.

mod audit_cli;
mod demo;
mod migrate;
mod openapi;
mod serve;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: the proxy allocates and frees small
/// objects per request on every worker thread, and glibc's allocator was
/// about a tenth of the data plane's user-space instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An API security gateway that speaks APISIX's resource model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file (YAML): a `gateway:` section and APISIX resources.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file; list every error with its field path.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the store's resources as a config file (to stdout) that
    /// `serve` and `validate` accept.
    Export {
        /// The config file whose `gateway.data_dir` holds the store.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load the resources of a config file into the store, all or nothing.
    Import {
        /// The file whose resources are imported.
        file: PathBuf,
        /// The config file whose `gateway.data_dir` holds the store.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The audit store: verify its hash chain, query and summarise it
    /// (docs/audit.md).
    Audit {
        #[command(subcommand)]
        command: Box<audit_cli::AuditCommand>,
    },
    /// Copy every resource from one config source to another:
    /// `file:PATH`, `store:DATA_DIR` or `etcd:HOST[,HOST]/PREFIX`
    /// (docs/etcd.md). The target's existing resources are kept; the result
    /// is validated whole before anything is written.
    Migrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Replace a `file:` target that exists.
        #[arg(long)]
        force: bool,
    },
    /// Routes from an OpenAPI 3.0/3.1 document (docs/openapi-import.md).
    Openapi {
        #[command(subcommand)]
        command: openapi::OpenapiCommand,
    },
    /// Run the gateway on an example config in front of a built-in demo
    /// upstream, and print requests to try.
    Demo {
        /// Data plane port.
        #[arg(long, default_value_t = 9080)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::Validate { config } => return validate(&config),
        Command::Demo { port } => demo::run(port),
        Command::Export { config } => serve::export(&config),
        Command::Import { file, config } => serve::import(&file, &config),
        Command::Migrate { from, to, force } => migrate::run(&from, &to, force),
        Command::Openapi { command } => openapi::run(command),
        Command::Audit { command } => match audit_cli::run(*command) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(2),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match serve::load_and_check(path) {
        Ok(summary) => {
            println!("{}: valid ({summary})", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}
