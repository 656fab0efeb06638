//! `outrigger`: parse the command line and run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use outrigger::tools::cli::Cli;

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

fn main() -> ExitCode {
    Cli::parse().execute()
}
