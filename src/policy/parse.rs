//! YAML to `Policy`: every problem collected with its line, key and fix.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::model::{
    FingerprintSource, FingerprintSpec, Format, LoopGuardConfig, NotificationRoute, OnUndecodable,
    Pointers, Policy, RouteMode, StateConfig, SuppressedResponse, UpstreamConfig,
};
use super::template::{PathPattern, Template, TemplateError};
use super::units::{self, UnitError};
use super::yaml::{self, join_key, Entry, Node, Scalar, ScalarKind, Value};

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
        .map(|p| match (p.line, p.key.as_str()) {
            (0, "") => format!("policy: {}", p.message),
            _ => format!("policy line {}: `{}`: {}", p.line, p.key, p.message),
        })
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
///
/// `${NAME}` inside a string value is replaced by `env(NAME)`, and `$${` stands for a literal
/// `${`. Mapping keys are never substituted. Every optional key gets the default documented on
/// the [`Policy`] fields.
///
/// # Errors
///
/// Returns every problem found, sorted by line. A YAML syntax error is reported alone.
/// Otherwise the problems include unknown or duplicate keys, values of the wrong type or out
/// of range, unset variables, and references to upstreams or template fields that do not
/// exist. No message contains the value of a substituted variable.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Policy, PolicyErrors> {
    let mut root = yaml::read(text).map_err(|err| {
        PolicyErrors(vec![Problem {
            line: err.line,
            key: String::new(),
            message: format!("invalid YAML: {}", err.message),
        }])
    })?;

    let mut checker = Checker::default();
    let substitution = yaml::substitute_variables(&mut root, env);
    checker.failed_substitutions = substitution
        .failures
        .iter()
        .map(|f| f.path.clone())
        .collect();
    for failure in substitution.failures {
        checker.problems.push(Problem {
            line: failure.line,
            key: failure.path,
            message: failure.message,
        });
    }
    checker.substituted = substitution.used;
    let policy = checker.policy(&root);

    if checker.problems.is_empty() {
        if let Some(policy) = policy {
            return Ok(policy);
        }
    }
    Err(PolicyErrors(checker.into_problems()))
}

mod admin;
mod amqp;
mod lookups;
mod loop_guard;

const TOP_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "shutdown_grace",
    "state",
    "upstreams",
    "notifications",
    "lookups",
    "cache",
    "admin",
];
const STATE_KEYS: &[&str] = &[
    "max_entities",
    "max_event_ids",
    "max_traces",
    "max_quarantined",
    "snapshot",
    "snapshot_interval",
];
const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "upstream",
    "format",
    "pointers",
    "entity",
    "fingerprint",
    "duplicate_window",
    "max_body",
    "on_undecodable",
    "mode",
    "max_entity_wait",
    "suppressed_response",
    "loop_guard",
];
const MATCH_KEYS: &[&str] = &["method", "path"];
const POINTER_KEYS: &[&str] = &["id", "source", "type", "subject", "data"];
const FINGERPRINT_KEYS: &[&str] = &["payload", "lookup", "none", "ignore"];
const LOOKUP_KEYS: &[&str] = &["upstream", "path"];
const RESPONSE_KEYS: &[&str] = &["status", "body", "content_type"];

/// Fields of a decoded notification that entity and lookup templates may use, besides the
/// captures of the route's path pattern.
const EVENT_FIELDS: &[&str] = &["id", "source", "type", "subject", "routing_key"];

/// Headers that ekko sets or removes on every request, so a policy cannot set them.
const MANAGED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_MAX_ENTITIES: NonZeroUsize = NonZeroUsize::new(1_000_000).unwrap();
const DEFAULT_MAX_EVENT_IDS: NonZeroUsize = NonZeroUsize::new(1_000_000).unwrap();
const DEFAULT_MAX_TRACES: NonZeroUsize = NonZeroUsize::new(100_000).unwrap();
const DEFAULT_MAX_QUARANTINED: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();
const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(300);
const DEFAULT_MAX_BODY: usize = 1 << 20;
const DEFAULT_MAX_ENTITY_WAIT: Duration = Duration::from_secs(10);
const DEFAULT_SUPPRESSED_STATUS: StatusCode = StatusCode::ACCEPTED;
const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// A value in the tree with its dotted key path and the line to report problems on: the key's
/// line for a mapping value, the item's line for a sequence item.
#[derive(Clone)]
struct Field<'a> {
    node: &'a Node,
    path: String,
    line: u64,
}

impl<'a> Field<'a> {
    /// Returns the last key of the path, which names the value in a message, or `policy`
    /// for the document itself.
    fn name(&self) -> &str {
        if self.path.is_empty() {
            return "policy";
        }
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    fn child(&self, entry: &'a Entry) -> Field<'a> {
        Field {
            node: &entry.value,
            path: join_key(&self.path, &entry.key),
            line: entry.line,
        }
    }

    fn item(&self, index: usize, node: &'a Node) -> Field<'a> {
        Field {
            node,
            path: format!("{}[{index}]", self.path),
            line: node.line,
        }
    }

    fn is_null(&self) -> bool {
        self.node.value == Value::Null
    }
}

/// The entries of a mapping whose keys were checked against a list of known keys.
struct Fields<'a> {
    parent: Field<'a>,
    entries: &'a [Entry],
}

impl<'a> Fields<'a> {
    /// Returns the first entry with this key. A duplicate was already reported.
    fn get(&self, key: &str) -> Option<Field<'a>> {
        let entry = self.entries.iter().find(|entry| entry.key == key)?;
        Some(self.parent.child(entry))
    }

    /// Returns the entry with this key, or reports it as missing on the mapping's line.
    fn required(&self, checker: &mut Checker, key: &str) -> Option<Field<'a>> {
        let field = self.get(key);
        if field.is_none() {
            let path = join_key(&self.parent.path, key);
            checker.report(
                self.parent.line,
                &path,
                format!("missing required key `{key}`"),
            );
        }
        field
    }
}

/// Names that the templates of one route may refer to.
struct RouteContext<'a> {
    upstreams: &'a [String],
    /// Allowed template fields. `None` when the path pattern is invalid, so that its
    /// problem is not followed by a problem for every template field.
    template_fields: Option<Vec<String>>,
}

/// Collects problems while it walks the tree.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
    /// Substituted variables (name, value), so that no message can contain a value.
    substituted: Vec<(String, String)>,
    /// Keys whose `${VAR}` substitution failed. Further problems on them would only
    /// repeat that one.
    failed_substitutions: Vec<String>,
    /// Upstreams whose `url` is an AMQP URL, with the placeholders of their exchange and
    /// routing key templates once those parsed.
    amqp_upstreams: BTreeMap<String, Option<Vec<String>>>,
}

impl Checker {
    fn report(&mut self, line: u64, path: &str, message: String) {
        if self
            .failed_substitutions
            .iter()
            .any(|failed| failed == path)
        {
            return;
        }
        self.problems.push(Problem {
            line,
            key: path.to_owned(),
            message,
        });
    }

    fn report_at(&mut self, field: &Field<'_>, message: String) {
        self.report(field.line, &field.path, message);
    }

    /// Sorts the problems by line and masks any substituted value that a message contains.
    fn into_problems(self) -> Vec<Problem> {
        let mut problems = self.problems;
        problems.sort_by_key(|problem| problem.line);
        for problem in &mut problems {
            for (name, value) in &self.substituted {
                // Values shorter than four characters would mask ordinary words. Messages are
                // built without substituted values, so this only guards against a mistake.
                if value.len() >= 4 {
                    problem.message = mask_value(&problem.message, value, name);
                }
            }
        }
        problems
    }

    // --- mappings ---

    /// Returns the entries of a mapping and reports each duplicate key.
    fn mapping<'a>(&mut self, field: &Field<'a>, expected: &str) -> Option<&'a [Entry]> {
        let Value::Map(entries) = &field.node.value else {
            let got = describe(&field.node.value);
            self.report_at(
                field,
                format!("`{}` must be {expected}, got {got}", field.name()),
            );
            return None;
        };
        let mut first_lines: HashMap<&str, u64> = HashMap::new();
        for entry in entries {
            if let Some(first) = first_lines.get(entry.key.as_str()) {
                let message = format!(
                    "duplicate key `{}`; the first one is on line {first}, so remove one",
                    entry.key
                );
                self.report(entry.line, &join_key(&field.path, &entry.key), message);
            } else {
                first_lines.insert(&entry.key, entry.line);
            }
        }
        Some(entries)
    }

    /// Returns a mapping whose keys must come from `known`, and reports each other key.
    fn keyed<'a>(&mut self, field: &Field<'a>, known: &[&str]) -> Option<Fields<'a>> {
        let expected = format!("a mapping with the keys {}", known.join(", "));
        let entries = self.mapping(field, &expected)?;
        for entry in entries {
            if !known.contains(&entry.key.as_str()) {
                let message = unknown_key_message(&entry.key, known);
                self.report(entry.line, &join_key(&field.path, &entry.key), message);
            }
        }
        Some(Fields {
            parent: field.clone(),
            entries,
        })
    }

    // --- scalars ---

    /// Returns any scalar. Numbers and booleans are given as their text.
    fn scalar<'a>(&mut self, field: &Field<'a>, expected: &str) -> Option<&'a Scalar> {
        match &field.node.value {
            Value::Scalar(scalar) => Some(scalar),
            other => {
                let got = describe(other);
                self.report_at(
                    field,
                    format!("`{}` must be {expected}, got {got}", field.name()),
                );
                None
            }
        }
    }

    /// Returns a string scalar. An unquoted number or boolean is rejected with a hint to quote it.
    fn string<'a>(&mut self, field: &Field<'a>, expected: &str) -> Option<&'a Scalar> {
        let scalar = self.scalar(field, expected)?;
        if scalar.kind != ScalarKind::Str {
            let message = format!(
                "`{}` must be {expected}, got the {} {}; put it in quotes if it is meant as text",
                field.name(),
                kind_name(scalar.kind),
                scalar.message_text()
            );
            self.report_at(field, message);
            return None;
        }
        Some(scalar)
    }

    fn duration(&mut self, field: &Field<'_>, example: &str) -> Option<Duration> {
        let expected = format!("a duration such as `{example}`");
        let scalar = self.scalar(field, &expected)?;
        match units::parse_duration(&scalar.text) {
            Ok(duration) => Some(duration),
            Err(err) => {
                let units = units::duration_units();
                let message = unit_message(field.name(), &expected, scalar, err, &units);
                self.report_at(field, message);
                None
            }
        }
    }

    /// Parses a duration that must not be zero, such as a timeout.
    fn positive_duration(&mut self, field: &Field<'_>, example: &str) -> Option<Duration> {
        let duration = self.duration(field, example)?;
        if duration.is_zero() {
            let message = format!(
                "`{}` must be longer than zero, such as `{example}`",
                field.name()
            );
            self.report_at(field, message);
            return None;
        }
        Some(duration)
    }

    fn optional_duration(
        &mut self,
        field: Option<Field<'_>>,
        example: &str,
        default: Duration,
    ) -> Option<Duration> {
        field.map_or(Some(default), |field| self.duration(&field, example))
    }

    fn optional_positive_duration(
        &mut self,
        field: Option<Field<'_>>,
        example: &str,
        default: Duration,
    ) -> Option<Duration> {
        field.map_or(Some(default), |field| {
            self.positive_duration(&field, example)
        })
    }

    /// Parses a size in bytes greater than zero.
    fn size(&mut self, field: &Field<'_>, example: &str) -> Option<usize> {
        let expected = format!("a size such as `{example}`");
        let scalar = self.scalar(field, &expected)?;
        let bytes = match units::parse_size(&scalar.text) {
            Ok(bytes) => bytes,
            Err(err) => {
                let message =
                    unit_message(field.name(), &expected, scalar, err, &units::size_units());
                self.report_at(field, message);
                return None;
            }
        };
        match usize::try_from(bytes) {
            Ok(0) | Err(_) => {
                let message = format!(
                    "`{}` must be larger than zero and fit in memory, got {}",
                    field.name(),
                    scalar.message_text()
                );
                self.report_at(field, message);
                None
            }
            Ok(bytes) => Some(bytes),
        }
    }

    /// Parses a whole number of at least 1, written with digits only.
    fn count(&mut self, field: &Field<'_>, example: &str) -> Option<usize> {
        let expected = format!("a whole number such as `{example}`");
        let scalar = self.scalar(field, &expected)?;
        let digits = !scalar.text.is_empty() && scalar.text.bytes().all(|b| b.is_ascii_digit());
        match scalar.text.parse::<usize>() {
            Ok(count) if digits && count > 0 => Some(count),
            _ => {
                let message = format!(
                    "`{}` must be {expected}, at least 1, got {}",
                    field.name(),
                    scalar.message_text()
                );
                self.report_at(field, message);
                None
            }
        }
    }

    fn optional_count(
        &mut self,
        field: Option<Field<'_>>,
        example: &str,
        default: NonZeroUsize,
    ) -> Option<NonZeroUsize> {
        // `count` rejects zero, so the conversion only fails after a reported problem.
        field.map_or(Some(default), |field| {
            self.count(&field, example).and_then(NonZeroUsize::new)
        })
    }

    /// Parses one of a fixed list of words. The message for any other value lists them.
    fn choice<T: Copy>(&mut self, field: &Field<'_>, choices: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let expected = format!("one of {}", names.join(", "));
        let scalar = self.scalar(field, &expected)?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == scalar.text) {
            return Some(*value);
        }
        let message = format!(
            "`{}` must be {expected}, got {}",
            field.name(),
            scalar.message_text()
        );
        self.report_at(field, message);
        None
    }

    fn optional_choice<T: Copy>(
        &mut self,
        field: Option<Field<'_>>,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        field.map_or(Some(default), |field| self.choice(&field, choices))
    }

    fn socket_addr(&mut self, field: Option<Field<'_>>, default: &str) -> Option<SocketAddr> {
        let Some(field) = field else {
            return default.parse().ok();
        };
        let expected = format!("a socket address such as `{default}`");
        let scalar = self.scalar(&field, &expected)?;
        match scalar.text.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                let message = format!(
                    "`{}` must be {expected} (IP address and port; write an IPv6 address as `[::1]:8080`), got {}",
                    field.name(),
                    scalar.message_text()
                );
                self.report_at(&field, message);
                None
            }
        }
    }

    // --- the policy ---

    fn policy(&mut self, root: &Node) -> Option<Policy> {
        let root = Field {
            node: root,
            path: String::new(),
            line: root.line.max(1),
        };
        if root.is_null() {
            self.report(
                1,
                "",
                "the policy is empty; it needs at least `upstreams` and `notifications`".to_owned(),
            );
            return None;
        }
        let fields = self.keyed(&root, TOP_KEYS)?;

        let listen = self.socket_addr(fields.get("listen"), DEFAULT_LISTEN);
        let admin_listen = self.socket_addr(fields.get("admin_listen"), DEFAULT_ADMIN_LISTEN);
        if let (Some(public), Some(admin)) = (listen, admin_listen) {
            self.check_listeners_differ(&fields, public, admin);
        }
        let shutdown_grace =
            self.optional_duration(fields.get("shutdown_grace"), "30s", DEFAULT_SHUTDOWN_GRACE);
        let state = self.state(fields.get("state"));
        let upstream_names = self.upstream_names(fields.get("upstreams"));
        self.scan_amqp_upstreams(fields.get("upstreams").as_ref());
        let upstreams_field = fields.required(self, "upstreams");
        let upstreams = self.upstreams(upstreams_field);
        let notifications_field = fields.required(self, "notifications");
        let notifications = self.notifications(notifications_field, &upstream_names);
        let lookups = self.lookups(
            fields.get("lookups"),
            fields.get("notifications"),
            &upstream_names,
        );
        let cache = self.cache(fields.get("cache"));
        let admin = self.admin(fields.get("admin"));

        Some(Policy {
            listen: listen?,
            admin_listen: admin_listen?,
            shutdown_grace: shutdown_grace?,
            state: state?,
            upstreams: upstreams?,
            notifications: notifications?,
            lookups: lookups?,
            cache: cache?,
            admin: admin?,
        })
    }

    /// Reports `admin_listen` when it would bind the same port as `listen`.
    fn check_listeners_differ(
        &mut self,
        fields: &Fields<'_>,
        public: SocketAddr,
        admin: SocketAddr,
    ) {
        let same_port = public.port() == admin.port() && public.port() != 0;
        let overlap = public.ip() == admin.ip()
            || public.ip().is_unspecified()
            || admin.ip().is_unspecified();
        if same_port && overlap {
            // The addresses are left out because either may come from a variable.
            let message = "`admin_listen` and `listen` bind the same port on overlapping addresses; give the admin listener its own port".to_owned();
            match fields.get("admin_listen").or_else(|| fields.get("listen")) {
                Some(field) => self.report_at(&field, message),
                None => self.report(1, "admin_listen", message),
            }
        }
    }

    fn state(&mut self, field: Option<Field<'_>>) -> Option<StateConfig> {
        let Some(field) = field else {
            return Some(StateConfig {
                max_entities: DEFAULT_MAX_ENTITIES,
                max_event_ids: DEFAULT_MAX_EVENT_IDS,
                max_traces: DEFAULT_MAX_TRACES,
                max_quarantined: DEFAULT_MAX_QUARANTINED,
                snapshot: None,
                snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            });
        };
        let fields = self.keyed(&field, STATE_KEYS)?;
        let max_entities =
            self.optional_count(fields.get("max_entities"), "1000000", DEFAULT_MAX_ENTITIES);
        let max_event_ids = self.optional_count(
            fields.get("max_event_ids"),
            "1000000",
            DEFAULT_MAX_EVENT_IDS,
        );
        let max_traces =
            self.optional_count(fields.get("max_traces"), "100000", DEFAULT_MAX_TRACES);
        let max_quarantined = self.optional_count(
            fields.get("max_quarantined"),
            "10000",
            DEFAULT_MAX_QUARANTINED,
        );
        let snapshot = self.snapshot_path(fields.get("snapshot"));
        let snapshot_interval = self.optional_positive_duration(
            fields.get("snapshot_interval"),
            "60s",
            DEFAULT_SNAPSHOT_INTERVAL,
        );
        Some(StateConfig {
            max_entities: max_entities?,
            max_event_ids: max_event_ids?,
            max_traces: max_traces?,
            max_quarantined: max_quarantined?,
            snapshot: snapshot?,
            snapshot_interval: snapshot_interval?,
        })
    }

    /// Parses the snapshot file. A missing key or `null` keeps state in memory only.
    fn snapshot_path(&mut self, field: Option<Field<'_>>) -> Option<Option<PathBuf>> {
        let Some(field) = field.filter(|field| !field.is_null()) else {
            return Some(None);
        };
        let scalar = self.string(&field, "a file path such as `/var/lib/ekko/state`")?;
        if scalar.text.is_empty() {
            self.report_at(&field, "`snapshot` is empty; write a file path, or remove the key to keep state in memory only".to_owned());
            return None;
        }
        Some(Some(PathBuf::from(&scalar.text)))
    }

    // --- upstreams ---

    /// Lists the names of the defined upstreams, so that references can be checked even
    /// when an upstream itself has problems.
    fn upstream_names(&self, field: Option<Field<'_>>) -> Vec<String> {
        let Some(Value::Map(entries)) = field.map(|field| &field.node.value) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries.iter().map(|entry| entry.key.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn upstreams(&mut self, field: Option<Field<'_>>) -> Option<BTreeMap<String, UpstreamConfig>> {
        let field = field?;
        let entries = self.mapping(&field, "a mapping from upstream name to upstream, such as `mq: { url: \"http://127.0.0.1:15672\" }`")?;
        if entries.is_empty() {
            self.report_at(
                &field,
                "`upstreams` is empty; define at least one upstream".to_owned(),
            );
            return None;
        }
        let mut upstreams = Some(BTreeMap::new());
        for entry in entries {
            let child = field.child(entry);
            let name_ok = self.check_label(&child, &entry.key, "upstream name");
            let upstream = self.upstream(&entry.key, &child);
            match (upstream, name_ok, upstreams.as_mut()) {
                (Some(upstream), true, Some(map)) => {
                    map.entry(entry.key.clone()).or_insert(upstream);
                }
                _ => upstreams = None,
            }
        }
        upstreams
    }

    fn upstream(&mut self, name: &str, field: &Field<'_>) -> Option<UpstreamConfig> {
        let fields = self.keyed(field, amqp::UPSTREAM_KEYS)?;
        let url_field = fields.required(self, "url")?;
        if matches!(&url_field.node.value, Value::Scalar(s) if amqp::is_amqp_url(&s.text)) {
            return self.amqp_upstream_config(name, &fields, &url_field);
        }
        self.reject_amqp_keys(&fields);
        let url = self.upstream_url(&url_field);
        let timeout = self.optional_positive_duration(fields.get("timeout"), "5s", DEFAULT_TIMEOUT);
        let connect_timeout = self.optional_positive_duration(
            fields.get("connect_timeout"),
            "2s",
            DEFAULT_CONNECT_TIMEOUT,
        );
        let headers = fields
            .get("headers")
            .map_or(Some(Vec::new()), |headers| self.headers(&headers));
        if let (Some(total), Some(connect)) = (timeout, connect_timeout) {
            if connect > total {
                let line = fields.get("connect_timeout").map_or(field.line, |f| f.line);
                let message = "`connect_timeout` is longer than `timeout`, which bounds the whole request; make it shorter".to_owned();
                self.report(line, &join_key(&field.path, "connect_timeout"), message);
            }
        }
        let (authority, base_path) = url?;
        Some(UpstreamConfig {
            name: name.to_owned(),
            authority,
            base_path,
            timeout: timeout?,
            connect_timeout: connect_timeout?,
            headers: headers?,
            amqp: None,
        })
    }

    /// Builds an AMQP upstream. `authority` contains the broker's host and port, so log lines
    /// name it like an HTTP upstream, and `timeout` is the confirm timeout.
    fn amqp_upstream_config(
        &mut self,
        name: &str,
        fields: &Fields<'_>,
        url: &Field<'_>,
    ) -> Option<UpstreamConfig> {
        let connect_timeout = self.optional_positive_duration(
            fields.get("connect_timeout"),
            "2s",
            DEFAULT_CONNECT_TIMEOUT,
        );
        let amqp = self.amqp_upstream(name, fields, url)?;
        let host = if amqp.host.contains(':') {
            format!("[{}]:{}", amqp.host, amqp.port)
        } else {
            format!("{}:{}", amqp.host, amqp.port)
        };
        let authority = Authority::from_str(&host).ok()?;
        Some(UpstreamConfig {
            name: name.to_owned(),
            authority,
            base_path: String::new(),
            timeout: amqp.confirm_timeout,
            connect_timeout: connect_timeout?,
            headers: Vec::new(),
            amqp: Some(amqp),
        })
    }

    /// Parses `http://host[:port][/prefix]` into the authority and the prefix without its
    /// trailing slash.
    fn upstream_url(&mut self, field: &Field<'_>) -> Option<(Authority, String)> {
        let scalar = self.string(field, "an URL such as `http://127.0.0.1:8081`")?;
        let redacted_url = scalar.url_message_text();
        let result = split_upstream_url(&scalar.text);
        match result {
            Ok(parts) => Some(parts),
            Err(err) => {
                let message = match err {
                    UrlProblem::Https => "`url` uses https, but ekko has no TLS client yet; terminate TLS in a sidecar and point `url` at its http address".to_owned(),
                    UrlProblem::UserInfo => "`url` contains user information (`user:password@`), which would leak into logs; send credentials with `headers`, such as `Authorization: \"Basic ${MQ_AUTH}\"`".to_owned(),
                    UrlProblem::QueryOrFragment => format!("`url` must not have a query or fragment, got {redacted_url}; send parameters with `headers`"),
                    UrlProblem::Scheme => format!("`url` must start with `http://`, or `amqp://` for a RabbitMQ broker, got {redacted_url}"),
                    UrlProblem::Authority => format!("`url` has an invalid host or port, got {redacted_url}; write it as `http://host:port/prefix`"),
                    UrlProblem::Path => format!("`url` has an invalid path prefix, got {redacted_url}; percent-encode special characters"),
                };
                self.report_at(field, message);
                None
            }
        }
    }

    fn headers(&mut self, field: &Field<'_>) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let entries = self.mapping(
            field,
            "a mapping from header name to value, such as `Authorization: \"Bearer ${TOKEN}\"`",
        )?;
        let mut headers = Some(Vec::new());
        let mut lines: HashMap<HeaderName, u64> = HashMap::new();
        for entry in entries {
            let child = field.child(entry);
            let header = self.header(&child, &entry.key);
            if let Some((name, _)) = &header {
                if let Some(first) = lines.get(name) {
                    let message = format!("header `{name}` is already set on line {first}; header names are case-insensitive, so keep one");
                    self.report_at(&child, message);
                } else {
                    lines.insert(name.clone(), entry.line);
                }
            }
            match (header, headers.as_mut()) {
                (Some(header), Some(list)) => list.push(header),
                _ => headers = None,
            }
        }
        headers
    }

    /// Parses one header. The value is marked sensitive and never appears in a message.
    fn header(&mut self, field: &Field<'_>, name: &str) -> Option<(HeaderName, HeaderValue)> {
        let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
            let message = format!("`{name}` is not a valid header name; use letters, digits and `-` (RFC 9110 section 5.1)");
            self.report_at(field, message);
            return None;
        };
        if MANAGED_HEADERS.contains(&header_name.as_str()) {
            let message = format!(
                "header `{name}` is set by ekko on each request, so a policy cannot set it"
            );
            self.report_at(field, message);
            return None;
        }
        let scalar = self.string(field, "a header value in quotes")?;
        let Ok(mut value) = HeaderValue::from_str(&scalar.text) else {
            let message = format!("header `{name}` has an invalid value; use visible ASCII characters, spaces and tabs only (RFC 9110 section 5.5)");
            self.report_at(field, message);
            return None;
        };
        value.set_sensitive(true);
        Some((header_name, value))
    }

    /// Checks a name that becomes a metric label: `[a-z0-9_-]+`.
    fn check_label(&mut self, field: &Field<'_>, name: &str, kind: &str) -> bool {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            let message = format!(
                "{kind} `{name}` must use only lowercase letters, digits, `-` and `_`, because it is a metric label"
            );
            self.report_at(field, message);
        }
        valid
    }

    // --- notification routes ---

    fn notifications(
        &mut self,
        field: Option<Field<'_>>,
        upstreams: &[String],
    ) -> Option<Vec<NotificationRoute>> {
        let field = field?;
        let Value::Seq(items) = &field.node.value else {
            let got = describe(&field.node.value);
            self.report_at(
                &field,
                format!("`notifications` must be a list of routes, got {got}"),
            );
            return None;
        };
        if items.is_empty() {
            self.report_at(
                &field,
                "`notifications` is empty; define at least one route".to_owned(),
            );
            return None;
        }
        let mut routes = Some(Vec::new());
        let mut seen: Vec<(String, String, u64)> = Vec::new();
        for (index, node) in items.iter().enumerate() {
            let item = field.item(index, node);
            let route = self.route(&item, upstreams);
            if let Some(route) = &route {
                self.check_route_unique(&item, route, &mut seen);
            }
            match (route, routes.as_mut()) {
                (Some(route), Some(list)) => list.push(route),
                _ => routes = None,
            }
        }
        routes
    }

    /// Reports a route whose name, or whose method and path, an earlier route already has.
    fn check_route_unique(
        &mut self,
        item: &Field<'_>,
        route: &NotificationRoute,
        seen: &mut Vec<(String, String, u64)>,
    ) {
        let matcher = format!("{} {}", route.method, route.path);
        for (name, earlier_matcher, line) in seen.iter() {
            if *name == route.name {
                let message = format!("route name `{name}` is already used on line {line}; route names must be unique");
                self.report(item.line, &join_key(&item.path, "name"), message);
            }
            if *earlier_matcher == matcher {
                let message = format!("route `{}` matches `{matcher}` like route `{name}` on line {line}, so it can never match; change its `match`", route.name);
                self.report(item.line, &join_key(&item.path, "match"), message);
            }
        }
        seen.push((route.name.clone(), matcher, item.line));
    }

    fn route(&mut self, field: &Field<'_>, upstreams: &[String]) -> Option<NotificationRoute> {
        let fields = self.keyed(field, ROUTE_KEYS)?;

        let name = fields
            .required(self, "name")
            .and_then(|name| self.route_name(&name));
        let matcher = fields
            .required(self, "match")
            .and_then(|m| self.route_match(&m));
        let upstream = fields
            .required(self, "upstream")
            .and_then(|u| self.upstream_ref(&u, upstreams));
        let format = self.format(&fields);
        let context = RouteContext {
            upstreams,
            template_fields: matcher.as_ref().map(|(_, path)| template_fields(path)),
        };
        if let (Some(name), Some(field)) = (&upstream, fields.get("upstream")) {
            self.check_amqp_route(&field, name, &fields, context.template_fields.as_deref());
        }
        let entity = fields
            .required(self, "entity")
            .and_then(|e| self.template(&e, &context, false));
        let fingerprint = self.fingerprint(fields.get("fingerprint"), &context);
        let limits = self.route_limits(&fields);
        let suppressed_response = self.suppressed_response(fields.get("suppressed_response"));
        let loop_guard = self.loop_guard(fields.get("loop_guard"));

        let (method, path) = matcher?;
        let (duplicate_window, max_body, on_undecodable, mode, max_entity_wait) = limits?;
        Some(NotificationRoute {
            name: name?,
            method,
            path,
            upstream: upstream?,
            format: format?,
            entity: entity?,
            fingerprint: fingerprint?,
            duplicate_window,
            max_body,
            on_undecodable,
            mode,
            suppressed_response: suppressed_response?,
            max_entity_wait,
            loop_guard: loop_guard?,
        })
    }

    /// Parses the route's scalar settings and fills in their defaults.
    #[allow(clippy::type_complexity)]
    fn route_limits(
        &mut self,
        fields: &Fields<'_>,
    ) -> Option<(Duration, usize, OnUndecodable, RouteMode, Duration)> {
        let duplicate_window = self.optional_duration(
            fields.get("duplicate_window"),
            "5m",
            DEFAULT_DUPLICATE_WINDOW,
        );
        let max_body = fields
            .get("max_body")
            .map_or(Some(DEFAULT_MAX_BODY), |f| self.size(&f, "1MiB"));
        let on_undecodable = self.optional_choice(
            fields.get("on_undecodable"),
            &[
                ("reject", OnUndecodable::Reject),
                ("forward", OnUndecodable::Forward),
            ],
            OnUndecodable::Reject,
        );
        let mode = self.optional_choice(
            fields.get("mode"),
            &[
                ("enforce", RouteMode::Enforce),
                ("shadow", RouteMode::Shadow),
            ],
            RouteMode::Enforce,
        );
        let max_entity_wait = self.optional_positive_duration(
            fields.get("max_entity_wait"),
            "10s",
            DEFAULT_MAX_ENTITY_WAIT,
        );
        Some((
            duplicate_window?,
            max_body?,
            on_undecodable?,
            mode?,
            max_entity_wait?,
        ))
    }

    fn route_name(&mut self, field: &Field<'_>) -> Option<String> {
        let scalar = self.string(field, "a route name such as `hr-person`")?;
        if scalar.source.is_some() {
            self.report_at(field, "`name` must be written out, because it is a metric label; remove the `${...}` reference".to_owned());
            return None;
        }
        self.check_label(field, &scalar.text, "route name")
            .then(|| scalar.text.clone())
    }

    fn route_match(&mut self, field: &Field<'_>) -> Option<(Method, PathPattern)> {
        let fields = self.keyed(field, MATCH_KEYS)?;
        let method = fields
            .get("method")
            .map_or(Some(Method::POST), |m| self.method(&m));
        let path = fields
            .required(self, "path")
            .and_then(|path| self.path_pattern(&path));
        Some((method?, path?))
    }

    fn method(&mut self, field: &Field<'_>) -> Option<Method> {
        let scalar = self.string(field, "an HTTP method such as `POST`")?;
        let upper = scalar.text.to_ascii_uppercase();
        if upper != scalar.text && Method::from_bytes(upper.as_bytes()).is_ok() {
            // The uppercase text would reveal a substituted value, so it is shown only for
            // text written in the policy.
            let fix = match scalar.source {
                None => format!("`{upper}`"),
                Some(_) => "it in uppercase".to_owned(),
            };
            let message =
                format!("HTTP methods are case-sensitive (RFC 9110 section 9.1); write {fix}");
            self.report_at(field, message);
            return None;
        }
        match Method::from_bytes(scalar.text.as_bytes()) {
            Ok(method) => Some(method),
            Err(_) => {
                let message = format!(
                    "`method` must be an HTTP method such as `POST`, got {}",
                    scalar.message_text()
                );
                self.report_at(field, message);
                None
            }
        }
    }

    fn path_pattern(&mut self, field: &Field<'_>) -> Option<PathPattern> {
        let scalar = self.string(field, "a path pattern such as `/events/{vhost}`")?;
        if scalar.text.contains(['?', '#']) {
            let message = format!(
                "`path` matches the request path only, so it cannot contain `?` or `#`, got {}",
                scalar.message_text()
            );
            self.report_at(field, message);
            return None;
        }
        match PathPattern::parse(&scalar.text) {
            Ok(pattern) => Some(pattern),
            Err(err) => {
                let message = template_message("path", "path pattern", scalar, &err);
                self.report_at(field, message);
                None
            }
        }
    }

    /// Checks a reference to a defined upstream.
    fn upstream_ref(&mut self, field: &Field<'_>, upstreams: &[String]) -> Option<String> {
        let scalar = self.string(field, "the name of an upstream")?;
        if upstreams.contains(&scalar.text) {
            return Some(scalar.text.clone());
        }
        let defined = if upstreams.is_empty() {
            "none".to_owned()
        } else {
            upstreams.join(", ")
        };
        let message = format!(
            "unknown upstream {}; defined upstreams: {defined}",
            scalar.message_text()
        );
        self.report_at(field, message);
        None
    }

    fn format(&mut self, fields: &Fields<'_>) -> Option<Format> {
        #[derive(Clone, Copy)]
        enum Kind {
            CloudEvents,
            RabbitmqPublish,
            Json,
        }
        let choices = [
            ("cloudevents", Kind::CloudEvents),
            ("rabbitmq-publish", Kind::RabbitmqPublish),
            ("json", Kind::Json),
        ];
        let kind = fields
            .required(self, "format")
            .and_then(|f| self.choice(&f, &choices));
        let pointers_field = fields.get("pointers");
        let pointers = pointers_field
            .as_ref()
            .map_or(Some(Pointers::default()), |f| self.pointers(f));
        match kind? {
            Kind::CloudEvents => {
                if let Some(field) = pointers_field {
                    let message = "`pointers` applies only to the formats json and rabbitmq-publish, because CloudEvents attributes have fixed names; remove it".to_owned();
                    self.report_at(&field, message);
                    return None;
                }
                Some(Format::CloudEvents)
            }
            Kind::RabbitmqPublish => Some(Format::RabbitmqPublish(pointers?)),
            Kind::Json => Some(Format::Json(pointers?)),
        }
    }

    fn pointers(&mut self, field: &Field<'_>) -> Option<Pointers> {
        let fields = self.keyed(field, POINTER_KEYS)?;
        let pointer = |checker: &mut Self, key: &str| match fields.get(key) {
            None => Some(None),
            Some(field) => checker.json_pointer(&field, false).map(Some),
        };
        let id = pointer(self, "id");
        let source = pointer(self, "source");
        let kind = pointer(self, "type");
        let subject = pointer(self, "subject");
        let data = pointer(self, "data");
        Some(Pointers {
            id: id?,
            source: source?,
            kind: kind?,
            subject: subject?,
            data: data?,
        })
    }

    /// Parses a JSON pointer (RFC 6901) that starts with `/`. `wildcard` documents that a `*` segment
    /// matches every element or member.
    fn json_pointer(&mut self, field: &Field<'_>, wildcard: bool) -> Option<String> {
        let scalar = self.string(field, "a JSON pointer such as `/data/id`")?;
        let text = &scalar.text;
        let problem = if !text.starts_with('/') {
            Some("a JSON pointer starts with `/`, as in `/data/id` (RFC 6901)")
        } else if !valid_pointer_escapes(text) {
            Some("`~` must be followed by `0` (for `~`) or `1` (for `/`) in a JSON pointer (RFC 6901 section 3)")
        } else {
            None
        };
        if let Some(problem) = problem {
            let star = if wildcard {
                "; a `*` segment matches every array element or object member"
            } else {
                ""
            };
            let message = format!(
                "`{}` is not a valid JSON pointer, got {}: {problem}{star}",
                field.name(),
                scalar.message_text()
            );
            self.report_at(field, message);
            return None;
        }
        Some(text.clone())
    }

    /// Parses a template whose fields must be event fields or captures of the route's path.
    /// `is_path` requires a leading `/`.
    fn template(
        &mut self,
        field: &Field<'_>,
        context: &RouteContext<'_>,
        is_path: bool,
    ) -> Option<Template> {
        let scalar = self.string(field, "a template such as `hr/person/{subject}`")?;
        if is_path && !scalar.text.starts_with('/') {
            let message = format!(
                "`{}` must start with `/`, got {}",
                field.name(),
                scalar.message_text()
            );
            self.report_at(field, message);
            return None;
        }
        let template = match Template::parse(&scalar.text) {
            Ok(template) => template,
            Err(err) => {
                let message = template_message(field.name(), "template", scalar, &err);
                self.report_at(field, message);
                return None;
            }
        };
        let allowed = context.template_fields.as_ref()?;
        let mut valid = true;
        for name in template.fields() {
            if !allowed.iter().any(|allowed| allowed == name) {
                let message = unknown_field_message(field.name(), name, allowed);
                self.report_at(field, message);
                valid = false;
            }
        }
        valid.then_some(template)
    }

    // --- fingerprint ---

    fn fingerprint(
        &mut self,
        field: Option<Field<'_>>,
        context: &RouteContext<'_>,
    ) -> Option<FingerprintSpec> {
        let Some(field) = field else {
            return Some(FingerprintSpec {
                source: FingerprintSource::Payload,
                ignore: Vec::new(),
            });
        };
        if let Value::Scalar(scalar) = &field.node.value {
            let source = self.fingerprint_shorthand(&field, scalar)?;
            return Some(FingerprintSpec {
                source,
                ignore: Vec::new(),
            });
        }
        let fields = self.keyed(&field, FINGERPRINT_KEYS)?;
        let source = self.fingerprint_source(&field, &fields, context);
        let ignore = fields
            .get("ignore")
            .map_or(Some(Vec::new()), |ignore| self.ignore_list(&ignore));
        if let (Some(FingerprintSource::None), Some(ignore_field)) = (&source, fields.get("ignore"))
        {
            let message =
                "`ignore` has no effect with `none`, because no state is hashed; remove it"
                    .to_owned();
            self.report_at(&ignore_field, message);
            return None;
        }
        Some(FingerprintSpec {
            source: source?,
            ignore: ignore?,
        })
    }

    /// Parses the shorthand `fingerprint: payload` or `fingerprint: none`.
    fn fingerprint_shorthand(
        &mut self,
        field: &Field<'_>,
        scalar: &Scalar,
    ) -> Option<FingerprintSource> {
        match scalar.text.as_str() {
            "payload" => Some(FingerprintSource::Payload),
            "none" => Some(FingerprintSource::None),
            "lookup" => {
                let message = "`fingerprint: lookup` needs an upstream and a path; write `fingerprint: { lookup: { upstream: api, path: \"/persons/{subject}\" } }`".to_owned();
                self.report_at(field, message);
                None
            }
            _ => {
                let message = format!("`fingerprint` must be `payload`, `none` or a mapping with one of `payload`, `lookup`, `none`, got {}", scalar.message_text());
                self.report_at(field, message);
                None
            }
        }
    }

    /// Parses exactly one of `payload`, `lookup` and `none`.
    fn fingerprint_source(
        &mut self,
        field: &Field<'_>,
        fields: &Fields<'_>,
        context: &RouteContext<'_>,
    ) -> Option<FingerprintSource> {
        let present: Vec<Field<'_>> = ["payload", "lookup", "none"]
            .iter()
            .filter_map(|key| fields.get(key))
            .collect();
        let [chosen] = present.as_slice() else {
            let message = if present.is_empty() {
                "`fingerprint` must name where the state comes from: `payload: {}`, `lookup: { upstream, path }` or `none: {}`".to_owned()
            } else {
                let names: Vec<&str> = present.iter().map(Field::name).collect();
                format!(
                    "`fingerprint` has {}; keep exactly one",
                    names.join(" and ")
                )
            };
            self.report_at(field, message);
            return None;
        };
        match chosen.name() {
            "lookup" => self.lookup(chosen, context),
            "payload" => self
                .empty_options(chosen)
                .then_some(FingerprintSource::Payload),
            _ => self
                .empty_options(chosen)
                .then_some(FingerprintSource::None),
        }
    }

    /// Checks that `payload` or `none` has no options: `{}` or an empty value.
    fn empty_options(&mut self, field: &Field<'_>) -> bool {
        if field.is_null() {
            return true;
        }
        let count = self.problems.len();
        self.keyed(field, &[]).is_some() && self.problems.len() == count
    }

    fn lookup(
        &mut self,
        field: &Field<'_>,
        context: &RouteContext<'_>,
    ) -> Option<FingerprintSource> {
        let fields = self.keyed(field, LOOKUP_KEYS)?;
        let upstream = fields.required(self, "upstream").and_then(|upstream| {
            self.http_upstream_ref(&upstream, context.upstreams, "`fingerprint: lookup`")
        });
        let path = fields
            .required(self, "path")
            .and_then(|path| self.template(&path, context, true));
        Some(FingerprintSource::Lookup {
            upstream: upstream?,
            path: path?,
        })
    }

    fn ignore_list(&mut self, field: &Field<'_>) -> Option<Vec<String>> {
        let Value::Seq(items) = &field.node.value else {
            let got = describe(&field.node.value);
            let message = format!("`ignore` must be a list of JSON pointers such as `[\"/meta/lastModified\"]`, got {got}");
            self.report_at(field, message);
            return None;
        };
        let mut pointers = Some(Vec::new());
        for (index, node) in items.iter().enumerate() {
            let pointer = self.json_pointer(&field.item(index, node), true);
            match (pointer, pointers.as_mut()) {
                (Some(pointer), Some(list)) => list.push(pointer),
                _ => pointers = None,
            }
        }
        pointers
    }

    // --- suppressed response ---

    fn suppressed_response(&mut self, field: Option<Field<'_>>) -> Option<SuppressedResponse> {
        let Some(field) = field else {
            return Some(SuppressedResponse {
                status: DEFAULT_SUPPRESSED_STATUS,
                body: None,
                content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            });
        };
        let fields = self.keyed(&field, RESPONSE_KEYS)?;
        let status = fields
            .get("status")
            .map_or(Some(DEFAULT_SUPPRESSED_STATUS), |s| self.status(&s));
        let content_type = fields
            .get("content_type")
            .map_or(Some(DEFAULT_CONTENT_TYPE.to_owned()), |c| {
                self.content_type(&c)
            });
        let body = match fields.get("body").filter(|body| !body.is_null()) {
            None => Some(None),
            Some(body) => self.response_body(&body, content_type.as_deref()).map(Some),
        };
        Some(SuppressedResponse {
            status: status?,
            body: body?,
            content_type: content_type?,
        })
    }

    /// Parses a final status code, 200 to 599. A 1xx response is interim and cannot end a request.
    fn status(&mut self, field: &Field<'_>) -> Option<StatusCode> {
        let scalar = self.scalar(field, "an HTTP status code such as `202`")?;
        let code = scalar.text.parse::<u16>().ok();
        let in_range = code.filter(|code| (100..=599).contains(code));
        match in_range.and_then(|code| StatusCode::from_u16(code).ok()) {
            Some(status) if status.as_u16() >= 200 => Some(status),
            Some(_) => {
                let message = "`status` is a 1xx interim status, which cannot end a request; use 200 to 299, such as `202`".to_owned();
                self.report_at(field, message);
                None
            }
            None => {
                let message = format!(
                    "`status` must be an HTTP status code from 200 to 599, such as `202`, got {}",
                    scalar.message_text()
                );
                self.report_at(field, message);
                None
            }
        }
    }

    fn content_type(&mut self, field: &Field<'_>) -> Option<String> {
        let scalar = self.string(field, "a media type such as `application/json`")?;
        let valid = scalar.text.contains('/') && HeaderValue::from_str(&scalar.text).is_ok();
        if !valid {
            let message = format!("`content_type` must be a media type such as `application/json` (RFC 9110 section 8.3), got {}", scalar.message_text());
            self.report_at(field, message);
            return None;
        }
        Some(scalar.text.clone())
    }

    /// Parses a fixed body, which must be valid JSON when the content type is JSON.
    fn response_body(&mut self, field: &Field<'_>, content_type: Option<&str>) -> Option<String> {
        let scalar = self.string(
            field,
            "a response body in quotes, such as `'{\"routed\":true}'`",
        )?;
        if content_type.is_some_and(is_json_media_type) {
            if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&scalar.text) {
                let message = format!("`body` is not valid JSON ({err}) although `content_type` is JSON; fix the body or set `content_type`");
                self.report_at(field, message);
                return None;
            }
        }
        Some(scalar.text.clone())
    }
}

/// The reason an upstream URL was rejected.
enum UrlProblem {
    Https,
    Scheme,
    UserInfo,
    QueryOrFragment,
    Authority,
    Path,
}

fn split_upstream_url(url: &str) -> Result<(Authority, String), UrlProblem> {
    let (scheme, rest) = url.split_once("://").ok_or(UrlProblem::Scheme)?;
    if scheme.eq_ignore_ascii_case("https") {
        return Err(UrlProblem::Https);
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(UrlProblem::Scheme);
    }

    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    if authority.contains('@') {
        return Err(UrlProblem::UserInfo);
    }
    if rest.contains(['?', '#']) {
        return Err(UrlProblem::QueryOrFragment);
    }

    let authority = Authority::from_str(authority).map_err(|_| UrlProblem::Authority)?;
    // `Authority` accepts any characters between brackets, so an IPv6 literal is checked here.
    let host = authority.host();
    if let Some(literal) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| UrlProblem::Authority)?;
    }
    let has_port = authority.as_str().len() > authority.host().len();
    let valid_port = authority.port_u16().is_some_and(|port| port != 0);
    if host.is_empty() || (has_port && !valid_port) {
        return Err(UrlProblem::Authority);
    }
    if !path.is_empty() && PathAndQuery::from_str(path).is_err() {
        return Err(UrlProblem::Path);
    }
    Ok((authority, path.trim_end_matches('/').to_owned()))
}

/// Template fields a route may use: the event fields and the captures of its path.
fn template_fields(path: &PathPattern) -> Vec<String> {
    let mut fields: Vec<String> = EVENT_FIELDS.iter().map(|&field| field.to_owned()).collect();
    fields.extend(path.captures().map(str::to_owned));
    fields
}

fn describe(value: &Value) -> String {
    match value {
        Value::Map(_) => "a mapping".to_owned(),
        Value::Seq(_) => "a list".to_owned(),
        Value::Null => "an empty value".to_owned(),
        Value::Scalar(scalar) => scalar.message_text(),
    }
}

fn kind_name(kind: ScalarKind) -> &'static str {
    match kind {
        ScalarKind::Str => "string",
        ScalarKind::Int => "integer",
        ScalarKind::Float => "number",
        ScalarKind::Bool => "boolean",
    }
}

fn unit_message(
    name: &str,
    expected: &str,
    scalar: &Scalar,
    err: UnitError,
    units: &str,
) -> String {
    format!(
        "`{name}` must be {expected}, got {}: {err}. Units: {units}",
        scalar.message_text()
    )
}

/// Replaces each occurrence of `value` in `message`, ignoring ASCII case, with a placeholder
/// that names the variable.
fn mask_value(message: &str, value: &str, name: &str) -> String {
    let haystack = message.to_ascii_lowercase();
    let needle = value.to_ascii_lowercase();
    let mut masked = String::with_capacity(message.len());
    let mut start = 0;
    while let Some(found) = haystack[start..].find(&needle) {
        masked.push_str(&message[start..start + found]);
        masked.push_str(&format!("<value of ${{{name}}}>"));
        start += found + needle.len();
    }
    masked.push_str(&message[start..]);
    masked
}

/// Describes a template error without repeating the text, which may contain a substituted value.
fn template_message(name: &str, kind: &str, scalar: &Scalar, err: &TemplateError) -> String {
    let reason = match err {
        TemplateError::Unbalanced(_) => "braces must come in pairs, as in `{subject}`",
        TemplateError::BadName(_) => "placeholder names use letters, digits and `_`",
        TemplateError::NotAbsolute(_) => "it must start with `/`",
        TemplateError::PartialSegment(_) => {
            "a placeholder must fill a whole path segment, as in `/a/{id}/b`"
        }
    };
    format!(
        "`{name}` is not a valid {kind}, got {}: {reason}",
        scalar.message_text()
    )
}

fn unknown_key_message(key: &str, known: &[&str]) -> String {
    if known.is_empty() {
        return format!("unknown key `{key}`; this mapping takes no keys, so write `{{}}`");
    }
    match closest(key, known.iter().copied()) {
        Some(suggestion) => format!("unknown key `{key}`; did you mean `{suggestion}`?"),
        None => format!("unknown key `{key}`; allowed keys: {}", known.join(", ")),
    }
}

fn unknown_field_message(name: &str, field: &str, allowed: &[String]) -> String {
    let hint = closest(field, allowed.iter().map(String::as_str))
        .map(|suggestion| format!("did you mean `{{{suggestion}}}`? "))
        .unwrap_or_default();
    format!(
        "`{name}` uses unknown field `{{{field}}}`; {hint}available fields: {}",
        allowed.join(", ")
    )
}

/// Returns the candidate nearest to `word`, if it is within edit distance 2.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Checks that each `~` in a JSON pointer starts the escape `~0` or `~1` (RFC 6901 section 3).
fn valid_pointer_escapes(pointer: &str) -> bool {
    let bytes = pointer.as_bytes();
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'~' || matches!(bytes.get(i + 1), Some(b'0' | b'1')))
}

/// `application/json` and structured `+json` types (RFC 6839), parameters ignored.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("timeout", "timeout"), 0);
        assert_eq!(edit_distance("tiemout", "timeout"), 2);
        assert_eq!(edit_distance("upstrem", "upstream"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn closest_key_is_suggested() {
        assert_eq!(closest("formt", ROUTE_KEYS.iter().copied()), Some("format"));
        assert_eq!(closest("zzzzzz", ROUTE_KEYS.iter().copied()), None);
    }

    #[test]
    fn masking_ignores_ascii_case() {
        let masked = mask_value("write `ABC-DEF` or abc-def", "abc-Def", "KEY");
        assert_eq!(masked, "write `<value of ${KEY}>` or <value of ${KEY}>");
    }

    #[test]
    fn pointer_escapes_follow_rfc_6901() {
        assert!(valid_pointer_escapes("/a~0b/c~1d"));
        assert!(!valid_pointer_escapes("/a~2"));
        assert!(!valid_pointer_escapes("/a~"));
    }

    #[test]
    fn upstream_url_splits_prefix() {
        let Ok((authority, prefix)) = split_upstream_url("http://127.0.0.1:8081/api/v1/") else {
            panic!("valid URL rejected");
        };
        assert_eq!(authority.as_str(), "127.0.0.1:8081");
        assert_eq!(prefix, "/api/v1");
        let Ok((_, root)) = split_upstream_url("http://mq:15672/") else {
            panic!("valid URL rejected");
        };
        assert_eq!(root, "");
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/cloudevents+json"));
        assert!(!is_json_media_type("text/plain"));
    }
}
