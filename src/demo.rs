//! `ekko demo`: a self-contained scenario with an in-process source API and queue.

use std::process::ExitCode;

/// Runs the demonstration and prints its table.
pub fn run() -> ExitCode {
    ExitCode::FAILURE
}
