//! The `tokengate` binary: parse the command line, set up logging and TLS crypto, run.

use clap::Parser;
use std::process::ExitCode;
use tokengate::cli::{self, Cli};

/// mimalloc: the proxy allocates small short-lived buffers per request, which it serves
/// faster than glibc's allocator (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::run(cli)
}
