//! `outrigger`: parse the command line and run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use outrigger::tools::cli::Cli;

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

fn main() -> ExitCode {
    // The one crypto provider every TLS connection of the process uses.
    outrigger::tls::provider();
    Cli::parse().execute()
}
