//! The `admin` section: the admin listener's bearer token and whether `/metrics` is open.

use super::super::model::{AdminConfig, AdminToken};
use super::{Checker, Field, ScalarKind};

const ADMIN_KEYS: &[&str] = &["token", "metrics_open"];

/// Shortest accepted token. 16 characters of a random hex or base64 string carry at least
/// 64 bits, too many to guess over the network.
const MIN_TOKEN_CHARS: usize = 16;

impl Checker {
    /// Parses `admin`; a missing section gives no token and an open `/metrics`.
    pub(super) fn admin(&mut self, field: Option<Field<'_>>) -> Option<AdminConfig> {
        let defaults = AdminConfig::default();
        let Some(field) = field else {
            return Some(defaults);
        };
        let fields = self.keyed(&field, ADMIN_KEYS)?;
        let token = match fields.get("token") {
            Some(token) => self.admin_token(&token).map(Some),
            None => Some(None),
        };
        let metrics_open = self.optional_choice(
            fields.get("metrics_open"),
            &[("true", true), ("false", false)],
            defaults.metrics_open,
        );
        Some(AdminConfig {
            token: token?,
            metrics_open: metrics_open?,
        })
    }

    /// Checks the token without ever putting its text in a message, because a token
    /// written in the file is as secret as one taken from a variable.
    fn admin_token(&mut self, field: &Field<'_>) -> Option<AdminToken> {
        let expected = "a bearer token string, such as `${EKKO_ADMIN_TOKEN}`";
        let scalar = self.scalar(field, expected)?;
        let problem = if scalar.kind != ScalarKind::Str {
            Some("`token` must be a string; put it in quotes (value not shown)".to_owned())
        } else if scalar.text.chars().count() < MIN_TOKEN_CHARS {
            Some(format!(
                "`token` must be at least {MIN_TOKEN_CHARS} characters long (value not shown); generate one with `openssl rand -hex 32`"
            ))
        } else if !is_b64token(&scalar.text) {
            Some("`token` may contain only letters, digits and `-._~+/`, optionally followed by `=` padding, as RFC 6750 allows in a bearer token (value not shown)".to_owned())
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.report_at(field, message);
                None
            }
            None => Some(AdminToken::new(&scalar.text)),
        }
    }
}

/// Returns whether `text` matches RFC 6750 §2.1 `b64token`:
/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::is_b64token;

    #[test]
    fn b64token_accepts_padding_only_at_end() {
        assert!(is_b64token("abc-DEF_123.~+/=="));
        assert!(!is_b64token("ab=c"));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("has space"));
        assert!(!is_b64token("quote\"d"));
    }
}
