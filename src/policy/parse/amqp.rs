//! AMQP 0-9-1 upstreams (`url: amqp://host:port/vhost`) and the routes that publish to them.

use std::str::FromStr;
use std::time::Duration;

use http::uri::Authority;
use percent_encoding::percent_decode_str;

use super::super::model::{AmqpConfig, AmqpPassword, Unroutable};
use super::{template_message, Checker, Field, Fields, ScalarKind, Template, Value};

/// Every key an upstream may have: the first four apply to HTTP upstreams and the rest to
/// AMQP upstreams, except `url` and `connect_timeout`, which apply to both.
pub(super) const UPSTREAM_KEYS: &[&str] = &[
    "url",
    "timeout",
    "connect_timeout",
    "headers",
    "exchange",
    "routing_key",
    "mandatory",
    "unroutable",
    "confirm_timeout",
    "heartbeat",
    "reconnect_min",
    "reconnect_max",
    "username",
    "password",
];

/// Keys that only an HTTP upstream takes, with what to use on an AMQP upstream instead.
const HTTP_ONLY_KEYS: &[(&str, &str)] = &[
    (
        "timeout",
        "the publisher confirm is bounded by `confirm_timeout`",
    ),
    ("headers", "the broker login uses `username` and `password`"),
];

/// Keys that only an AMQP upstream takes.
pub(super) const AMQP_ONLY_KEYS: &[&str] = &[
    "exchange",
    "routing_key",
    "mandatory",
    "unroutable",
    "confirm_timeout",
    "heartbeat",
    "reconnect_min",
    "reconnect_max",
    "username",
    "password",
];

/// The AMQP 0-9-1 port that RabbitMQ listens on by default.
const DEFAULT_PORT: u16 = 5672;
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// RabbitMQ's default user; it may log in from loopback addresses only.
const DEFAULT_CREDENTIAL: &str = "guest";
/// The heartbeat travels as a 16-bit number of seconds (AMQP 0-9-1 `connection.tune`).
const MAX_HEARTBEAT_SECONDS: u64 = u16::MAX as u64;

/// Returns whether an upstream's `url` value names an AMQP broker (`amqp://` or `amqps://`).
pub(super) fn is_amqp_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("amqp") || scheme.eq_ignore_ascii_case("amqps")
}

/// Host, port and virtual host of an `amqp://` URL.
struct BrokerAddress {
    host: String,
    port: u16,
    vhost: String,
}

/// The reason an AMQP URL was rejected.
enum AmqpUrlProblem {
    Tls,
    UserInfo,
    QueryOrFragment,
    Authority,
    Vhost,
}

fn split_amqp_url(url: &str) -> Result<BrokerAddress, AmqpUrlProblem> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    if scheme.eq_ignore_ascii_case("amqps") {
        return Err(AmqpUrlProblem::Tls);
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    // User information is checked first, so that the messages for the other problems,
    // which show the URL, never see a password.
    if authority.contains('@') {
        return Err(AmqpUrlProblem::UserInfo);
    }
    if rest.contains(['?', '#']) {
        return Err(AmqpUrlProblem::QueryOrFragment);
    }

    let authority = Authority::from_str(authority).map_err(|_| AmqpUrlProblem::Authority)?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let has_port = authority.as_str().len() > authority.host().len();
    let port = authority.port_u16();
    if host.is_empty() || (has_port && port.is_none_or(|port| port == 0)) {
        return Err(AmqpUrlProblem::Authority);
    }

    let encoded = path.strip_prefix('/').unwrap_or(path);
    if encoded.contains('/') {
        return Err(AmqpUrlProblem::Vhost);
    }
    let vhost = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| AmqpUrlProblem::Vhost)?;
    Ok(BrokerAddress {
        host: host.to_owned(),
        port: port.unwrap_or(DEFAULT_PORT),
        vhost: if vhost.is_empty() {
            "/".to_owned()
        } else {
            vhost.into_owned()
        },
    })
}

impl Checker {
    /// Lists the upstreams whose `url` is an AMQP URL, even when they have other problems,
    /// so that references to them can be checked.
    pub(super) fn scan_amqp_upstreams(&mut self, field: Option<&Field<'_>>) {
        let Some(Value::Map(entries)) = field.map(|field| &field.node.value) else {
            return;
        };
        for entry in entries {
            let Value::Map(keys) = &entry.value.value else {
                continue;
            };
            let url = keys.iter().find(|key| key.key == "url");
            if let Some(Value::Scalar(scalar)) = url.map(|url| &url.value.value) {
                if is_amqp_url(&scalar.text) {
                    self.amqp_upstreams.insert(entry.key.clone(), None);
                }
            }
        }
    }

    /// Parses the AMQP settings of an upstream whose `url` is an AMQP URL, and remembers the
    /// placeholders of its templates so that each route that publishes to it can be checked.
    pub(super) fn amqp_upstream(
        &mut self,
        name: &str,
        fields: &Fields<'_>,
        url: &Field<'_>,
    ) -> Option<AmqpConfig> {
        for (key, instead) in HTTP_ONLY_KEYS {
            if let Some(field) = fields.get(key) {
                let message = format!("`{key}` applies only to http upstreams, and this upstream is amqp; remove it, because {instead}");
                self.report_at(&field, message);
            }
        }
        let address = self.amqp_url(url);
        let exchange = fields
            .required(self, "exchange")
            .and_then(|field| self.amqp_template(&field, "hr"));
        let routing_key = fields.get("routing_key").map_or_else(
            || Template::parse("").ok(),
            |field| self.amqp_template(&field, "hr.person.{type}"),
        );
        let mandatory = self.optional_choice(
            fields.get("mandatory"),
            &[("true", true), ("false", false)],
            true,
        );
        let unroutable = self.optional_choice(
            fields.get("unroutable"),
            &[
                ("error", Unroutable::Error),
                ("success", Unroutable::Success),
            ],
            Unroutable::Error,
        );
        let confirm_timeout = self.optional_positive_duration(
            fields.get("confirm_timeout"),
            "5s",
            DEFAULT_CONFIRM_TIMEOUT,
        );
        let heartbeat = self.heartbeat(fields.get("heartbeat"));
        let backoff = self.reconnect_backoff(fields);
        let credentials = self.amqp_credentials(fields);

        let (exchange, routing_key) = (exchange?, routing_key?);
        let placeholders = exchange
            .fields()
            .chain(routing_key.fields())
            .map(str::to_owned)
            .collect();
        self.amqp_upstreams
            .insert(name.to_owned(), Some(placeholders));
        let address = address?;
        let (reconnect_min, reconnect_max) = backoff?;
        let (username, password) = credentials?;
        Some(AmqpConfig {
            host: address.host,
            port: address.port,
            vhost: address.vhost,
            exchange,
            routing_key,
            mandatory: mandatory?,
            unroutable: unroutable?,
            confirm_timeout: confirm_timeout?,
            heartbeat: heartbeat?,
            reconnect_min,
            reconnect_max,
            username,
            password,
        })
    }

    /// Reports each AMQP-only key on an HTTP upstream.
    pub(super) fn reject_amqp_keys(&mut self, fields: &Fields<'_>) {
        for key in AMQP_ONLY_KEYS {
            if let Some(field) = fields.get(key) {
                let message = format!("`{key}` applies only to amqp upstreams (`url: amqp://host:port/vhost`), and this upstream is http; remove it");
                self.report_at(&field, message);
            }
        }
    }

    fn amqp_url(&mut self, field: &Field<'_>) -> Option<BrokerAddress> {
        let scalar = self.string(field, "an URL such as `amqp://127.0.0.1:5672/%2F`")?;
        let redacted_url = scalar.url_message_text();
        match split_amqp_url(&scalar.text) {
            Ok(address) => Some(address),
            Err(problem) => {
                let message = match problem {
                    AmqpUrlProblem::Tls => "`url` uses amqps, but ekko has no TLS client yet; terminate TLS in a sidecar and point `url` at its amqp address".to_owned(),
                    AmqpUrlProblem::UserInfo => "`url` contains user information (`user:password@`), which would leak into logs; set `username` and `password` instead, such as `password: \"${EKKO_AMQP_PASSWORD}\"`".to_owned(),
                    AmqpUrlProblem::QueryOrFragment => format!("`url` must not have a query or fragment, got {redacted_url}; set `heartbeat` and `connect_timeout` as keys of the upstream"),
                    AmqpUrlProblem::Authority => format!("`url` has an invalid host or port, got {redacted_url}; write it as `amqp://host:port/vhost`"),
                    AmqpUrlProblem::Vhost => format!("`url` has an invalid virtual host, got {redacted_url}; write one path segment and percent-encode `/` as `%2F`"),
                };
                self.report_at(field, message);
                None
            }
        }
    }

    fn amqp_template(&mut self, field: &Field<'_>, example: &str) -> Option<Template> {
        let scalar = self.string(field, &format!("a template such as `{example}`"))?;
        match Template::parse(&scalar.text) {
            Ok(template) => Some(template),
            Err(err) => {
                let message = template_message(field.name(), "template", scalar, &err);
                self.report_at(field, message);
                None
            }
        }
    }

    fn heartbeat(&mut self, field: Option<Field<'_>>) -> Option<Duration> {
        let Some(field) = field else {
            return Some(DEFAULT_HEARTBEAT);
        };
        let heartbeat = self.duration(&field, "30s")?;
        let seconds = heartbeat.as_secs();
        if seconds == 0 || seconds > MAX_HEARTBEAT_SECONDS || heartbeat.subsec_nanos() != 0 {
            let message = format!("`heartbeat` must be whole seconds from 1s to {MAX_HEARTBEAT_SECONDS}s, because AMQP sends it as a 16-bit number of seconds");
            self.report_at(&field, message);
            return None;
        }
        Some(heartbeat)
    }

    fn reconnect_backoff(&mut self, fields: &Fields<'_>) -> Option<(Duration, Duration)> {
        let min = self.optional_positive_duration(
            fields.get("reconnect_min"),
            "100ms",
            DEFAULT_RECONNECT_MIN,
        );
        let max = self.optional_positive_duration(
            fields.get("reconnect_max"),
            "30s",
            DEFAULT_RECONNECT_MAX,
        );
        let (min, max) = (min?, max?);
        if min > max {
            let field = fields
                .get("reconnect_min")
                .or_else(|| fields.get("reconnect_max"));
            let message = "`reconnect_min` is longer than `reconnect_max`; the delay starts at `reconnect_min` and doubles up to `reconnect_max`".to_owned();
            match field {
                Some(field) => self.report_at(&field, message),
                None => self.report(fields.parent.line, &fields.parent.path, message),
            }
            return None;
        }
        Some((min, max))
    }

    /// Parses `username` and `password`; both default to `guest`, and one without the
    /// other is a problem. No message contains the password.
    fn amqp_credentials(&mut self, fields: &Fields<'_>) -> Option<(String, AmqpPassword)> {
        let username = fields.get("username");
        let password = fields.get("password");
        match (username, password) {
            (None, None) => Some((
                DEFAULT_CREDENTIAL.to_owned(),
                AmqpPassword::new(DEFAULT_CREDENTIAL),
            )),
            (Some(username), Some(password)) => {
                let username = self
                    .string(&username, "a user name in quotes")
                    .map(|scalar| scalar.text.clone());
                let password = self.amqp_password(&password);
                Some((username?, password?))
            }
            (Some(field), None) | (None, Some(field)) => {
                let missing = if field.name() == "username" {
                    "password"
                } else {
                    "username"
                };
                let message = format!("`{}` is set without `{missing}`; set both, or neither to log in as RabbitMQ's default `guest`", field.name());
                self.report_at(&field, message);
                None
            }
        }
    }

    /// Checks the password without ever putting its text in a message, because a password
    /// written in the file is as secret as one taken from a variable.
    fn amqp_password(&mut self, field: &Field<'_>) -> Option<AmqpPassword> {
        let scalar = self.scalar(field, "a password such as `\"${EKKO_AMQP_PASSWORD}\"`")?;
        if scalar.kind != ScalarKind::Str {
            let message = "`password` must be a string; put it in quotes (value not shown)";
            self.report_at(field, message.to_owned());
            return None;
        }
        Some(AmqpPassword::new(&scalar.text))
    }

    /// Reports a reference to an AMQP upstream where only an HTTP upstream can serve:
    /// lookups and `fingerprint: lookup` read over HTTP.
    pub(super) fn http_upstream_ref(
        &mut self,
        field: &Field<'_>,
        upstreams: &[String],
        purpose: &str,
    ) -> Option<String> {
        let name = self.upstream_ref(field, upstreams)?;
        if self.amqp_upstreams.contains_key(&name) {
            let message = format!("upstream `{name}` is an amqp upstream, but {purpose} reads over HTTP; name an upstream whose `url` starts with `http://`");
            self.report_at(field, message);
            return None;
        }
        Some(name)
    }

    /// Checks a notification route whose upstream is AMQP: its format must decode into
    /// events, undecodable bodies cannot be forwarded, and the upstream's templates may use
    /// only the route's template fields.
    pub(super) fn check_amqp_route(
        &mut self,
        upstream_field: &Field<'_>,
        upstream: &str,
        route: &Fields<'_>,
        allowed: Option<&[String]>,
    ) {
        let Some(placeholders) = self.amqp_upstreams.get(upstream).cloned() else {
            return;
        };
        if let Some(format) = route.get("format") {
            if matches!(&format.node.value, Value::Scalar(s) if s.text == "rabbitmq-publish") {
                let message = "format `rabbitmq-publish` is the RabbitMQ management API's HTTP body, but this route's upstream is amqp; publish CloudEvents (`format: cloudevents`) or JSON (`format: json`) to ekko, which publishes them over AMQP".to_owned();
                self.report_at(&format, message);
            }
        }
        if let Some(field) = route.get("on_undecodable") {
            if matches!(&field.node.value, Value::Scalar(s) if s.text == "forward") {
                let message = "`on_undecodable: forward` cannot work with an amqp upstream, because the exchange and routing key are rendered from the decoded notification; use `reject`".to_owned();
                self.report_at(&field, message);
            }
        }
        let (Some(placeholders), Some(allowed)) = (placeholders, allowed) else {
            return;
        };
        for name in placeholders {
            if !allowed.contains(&name) {
                let message = format!("upstream `{upstream}` renders its exchange or routing key with `{{{name}}}`, which this route does not have; route fields: {}", allowed.join(", "));
                self.report_at(upstream_field, message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(url: &str) -> Option<BrokerAddress> {
        split_amqp_url(url).ok()
    }

    #[test]
    fn amqp_url_defaults_port_and_vhost() {
        let parsed = address("amqp://mq.internal").unwrap();
        assert_eq!(parsed.host, "mq.internal");
        assert_eq!(parsed.port, 5672);
        assert_eq!(parsed.vhost, "/");
    }

    #[test]
    fn amqp_url_decodes_vhost() {
        let parsed = address("amqp://127.0.0.1:5673/hr%2Fprod").unwrap();
        assert_eq!(parsed.port, 5673);
        assert_eq!(parsed.vhost, "hr/prod");
        assert_eq!(address("amqp://[::1]:5672/%2F").unwrap().host, "::1");
    }

    #[test]
    fn amqp_url_rejects_tls_and_userinfo() {
        assert!(matches!(
            split_amqp_url("amqps://mq:5671/"),
            Err(AmqpUrlProblem::Tls)
        ));
        assert!(matches!(
            split_amqp_url("amqp://u:p@mq/"),
            Err(AmqpUrlProblem::UserInfo)
        ));
        assert!(matches!(
            split_amqp_url("amqp://mq/?heartbeat=5"),
            Err(AmqpUrlProblem::QueryOrFragment)
        ));
        assert!(matches!(
            split_amqp_url("amqp://mq:0/"),
            Err(AmqpUrlProblem::Authority)
        ));
        assert!(matches!(
            split_amqp_url("amqp://mq/a/b"),
            Err(AmqpUrlProblem::Vhost)
        ));
    }

    #[test]
    fn amqp_scheme_is_recognised() {
        assert!(is_amqp_url("amqp://mq"));
        assert!(is_amqp_url("AMQPS://mq"));
        assert!(!is_amqp_url("http://mq"));
    }
}
