use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ekko::cli::run(ekko::cli::Cli::parse())
}
