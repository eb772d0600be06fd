//! Shared support for integration tests: external server checks and a throwaway RabbitMQ broker.

// Each test binary compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

pub mod prometheus;
pub mod rabbitmq;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Checks that the external server binary at `binary_path` is installed, reading `CI` from the
/// environment.
///
/// Returns `true` when the file exists and is executable. When it is missing, returns `false`
/// and prints a skip line outside CI, so a developer without the server still gets a green run.
///
/// # Panics
///
/// Panics when the binary is missing and `CI` is set to a non-empty value other than `false`
/// or `0`, because CI must not pass by skipping the tests that need the server.
pub fn require_server(binary_path: &str, what: &str) -> bool {
    let ci = std::env::var("CI").ok();
    require_server_under(binary_path, what, ci.as_deref())
}

/// Checks for the server binary like [`require_server`], with the value of `CI` passed in.
///
/// `ci` is the value of the `CI` variable, `None` when unset. Tests call this form so they do
/// not have to change the process environment, which other tests read at the same time.
///
/// # Panics
///
/// Panics when the binary is missing and `ci` counts as set (see [`ci_is_set`]).
pub fn require_server_under(binary_path: &str, what: &str, ci: Option<&str>) -> bool {
    if is_executable(Path::new(binary_path)) {
        return true;
    }
    if ci_is_set(ci) {
        panic!("{what} is missing under CI: .ci/run must install it (expected at {binary_path})");
    }
    eprintln!("skipping: {what} not installed at {binary_path}");
    false
}

/// Returns whether a `CI` value means "running under CI": any non-empty value except `false`
/// and `0`.
pub fn ci_is_set(ci: Option<&str>) -> bool {
    match ci {
        None => false,
        Some(value) => !matches!(value.trim(), "" | "false" | "0"),
    }
}

fn is_executable(path: &Path) -> bool {
    match path.metadata() {
        Ok(metadata) => metadata.is_file() && metadata.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}
