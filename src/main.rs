//! `outrigger`: parse the command line and run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use outrigger::cli::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    Cli::parse().execute()
}
