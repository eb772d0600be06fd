//! YAML to `Policy`: every problem collected with its line, key and fix.

use std::path::Path;

use super::model::Policy;

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the policy file; 0 when the problem has no single line.
    pub line: u64,
    /// Dotted key path, such as `notifications[0].fingerprint.ignore[1]`.
    pub key: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Every problem found in a policy; displayed one per line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.0))]
pub struct PolicyErrors(pub Vec<Problem>);

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("policy line {}: `{}`: {}", p.line, p.key, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates a policy file; `${VAR}` is taken from the process environment.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![Problem {
            line: 0,
            key: String::new(),
            message: format!("cannot read policy file {}: {e}", path.display()),
        }])
    })?;
    parse(&text, &|name| std::env::var(name).ok())
}

/// Validates policy text; `env` resolves `${VAR}` references.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Policy, PolicyErrors> {
    let _ = (text, env);
    todo!("policy parser")
}
