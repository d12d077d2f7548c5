//! The `tokengate` binary: parse the command line, set up logging and TLS crypto, run.

use clap::Parser;
use std::process::ExitCode;
use tokengate::cli::{self, Cli};

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::run(cli)
}
