//! The `lookups` and `cache` sections: consumers' cached reads of the source API.

use std::time::Duration;

use http::HeaderName;
use percent_encoding::percent_decode_str;

use super::super::model::{AuthorizeBy, CacheConfig, CacheScope, LookupRoute};
use super::{
    closest, describe, join_key, template_message, Checker, Field, Fields, Node, PathPattern,
    Scalar, Template, Value, EVENT_FIELDS, MANAGED_HEADERS,
};

const CACHE_KEYS: &[&str] = &["max_bytes"];
const LOOKUP_ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "upstream",
    "entity",
    "ttl",
    "stale_if_error",
    "scope",
    "authorize_ttl",
    "authorize_by",
    "credential_header",
    "max_body",
    "waiter_timeout",
    "uncacheable_ttl",
];
/// `method` is accepted as a key only to explain that lookups take no method.
const LOOKUP_MATCH_KEYS: &[&str] = &["method", "path"];

const DEFAULT_CACHE_MAX_BYTES: usize = 256 << 20;
const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_STALE_IF_ERROR: Duration = Duration::ZERO;
const DEFAULT_AUTHORIZE_TTL: Duration = Duration::from_secs(60);
const DEFAULT_LOOKUP_MAX_BODY: usize = 8 << 20;
const DEFAULT_WAITER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_UNCACHEABLE_TTL: Duration = Duration::from_secs(10);

/// The cache settings of one lookup route, each with its default filled in.
struct CacheSettings {
    ttl: Duration,
    stale_if_error: Duration,
    scope: CacheScope,
    authorize_ttl: Duration,
    authorize_by: AuthorizeBy,
    credential_header: Option<HeaderName>,
    max_body: usize,
    waiter_timeout: Duration,
    uncacheable_ttl: Duration,
}

/// The name and path of an earlier lookup route, kept to report later routes that repeat them.
struct EarlierLookup {
    name: Option<(String, u64)>,
    path: Option<(PathPattern, u64)>,
}

/// A notification route that matches GET or HEAD, read from the tree whether or not the
/// route is valid, so that a conflict is reported together with the route's own problems.
struct ReadRoute {
    /// The route's name, unless it is missing or came from a variable.
    name: Option<String>,
    method: String,
    path: PathPattern,
    /// Line of the route's `match.path`.
    line: u64,
}

/// A path pattern segment, compared by what it matches, so capture names do not matter.
#[derive(PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture,
}

impl Checker {
    /// Parses `cache`. A missing section gives the defaults.
    pub(super) fn cache(&mut self, field: Option<Field<'_>>) -> Option<CacheConfig> {
        let Some(field) = field else {
            return Some(CacheConfig {
                max_bytes: DEFAULT_CACHE_MAX_BYTES,
            });
        };
        let fields = self.keyed(&field, CACHE_KEYS)?;
        let max_bytes = fields
            .get("max_bytes")
            .map_or(Some(DEFAULT_CACHE_MAX_BYTES), |f| self.size(&f, "256MiB"))?;
        Some(CacheConfig { max_bytes })
    }

    /// Parses `lookups`. A missing or empty value gives no lookup routes.
    ///
    /// Besides each route's own problems, reports a route whose name an earlier route has,
    /// a route that an earlier route shadows, and a route whose path pattern is that of a
    /// notification route matching GET or HEAD.
    pub(super) fn lookups(
        &mut self,
        field: Option<Field<'_>>,
        notifications: Option<Field<'_>>,
        upstreams: &[String],
    ) -> Option<Vec<LookupRoute>> {
        let Some(field) = field.filter(|field| !field.is_null()) else {
            return Some(Vec::new());
        };
        let Value::Seq(items) = &field.node.value else {
            let got = describe(&field.node.value);
            let message = format!("`lookups` must be a list of lookup routes, got {got}");
            self.report_at(&field, message);
            return None;
        };
        let readers = read_routes(notifications);
        let mut earlier = Vec::new();
        let mut routes = Some(Vec::new());
        for (index, node) in items.iter().enumerate() {
            let item = field.item(index, node);
            let route = self.lookup_route(&item, upstreams, &readers, &mut earlier);
            match (route, routes.as_mut()) {
                (Some(route), Some(list)) => list.push(route),
                _ => routes = None,
            }
        }
        routes
    }

    fn lookup_route(
        &mut self,
        item: &Field<'_>,
        upstreams: &[String],
        readers: &[ReadRoute],
        earlier: &mut Vec<EarlierLookup>,
    ) -> Option<LookupRoute> {
        let fields = self.keyed(item, LOOKUP_ROUTE_KEYS)?;

        let name_field = fields.required(self, "name");
        let name = name_field.as_ref().and_then(|n| self.route_name(n));
        let path_field = fields
            .required(self, "match")
            .and_then(|m| self.lookup_match(&m));
        let path = path_field.as_ref().and_then(|path| self.path_pattern(path));
        let current = EarlierLookup {
            name: name.clone().zip(name_field.map(|n| n.line)),
            path: path.clone().zip(path_field.as_ref().map(|p| p.line)),
        };
        if let Some(path_field) = &path_field {
            self.check_lookup_path(path_field, &current, earlier, readers);
        }
        self.check_lookup_name(item, &current, earlier);
        earlier.push(current);

        let upstream = fields
            .required(self, "upstream")
            .and_then(|u| self.http_upstream_ref(&u, upstreams, "a lookup route"));
        let entity = fields
            .required(self, "entity")
            .and_then(|e| self.lookup_entity(&e, path.as_ref()));
        let settings = self.cache_settings(&fields)?;
        Some(LookupRoute {
            name: name?,
            path: path?,
            upstream: upstream?,
            entity: entity?,
            ttl: settings.ttl,
            stale_if_error: settings.stale_if_error,
            scope: settings.scope,
            authorize_ttl: settings.authorize_ttl,
            authorize_by: settings.authorize_by,
            credential_header: settings.credential_header,
            max_body: settings.max_body,
            waiter_timeout: settings.waiter_timeout,
            uncacheable_ttl: settings.uncacheable_ttl,
        })
    }

    /// Returns the `path` field of a lookup's `match`. A `method` is reported, because a
    /// lookup route always serves GET and HEAD and passes other methods through.
    fn lookup_match<'a>(&mut self, field: &Field<'a>) -> Option<Field<'a>> {
        let fields = self.keyed(field, LOOKUP_MATCH_KEYS)?;
        if let Some(method) = fields.get("method") {
            let message = "`method` cannot be set on a lookup route: GET and HEAD requests are cached and other methods are passed through; remove it".to_owned();
            self.report_at(&method, message);
        }
        fields.required(self, "path")
    }

    /// Parses a lookup's entity key template, whose fields can only be captures of the
    /// lookup's path. When the path is missing or invalid, only the template's syntax is
    /// checked, so that the path's problem is not repeated for each field.
    fn lookup_entity(&mut self, field: &Field<'_>, path: Option<&PathPattern>) -> Option<Template> {
        let scalar = self.string(field, "an entity key template such as `hr/person/{id}`")?;
        let template = match Template::parse(&scalar.text) {
            Ok(template) => template,
            Err(err) => {
                let message = template_message("entity", "template", scalar, &err);
                self.report_at(field, message);
                return None;
            }
        };
        let path = path?;
        let captures: Vec<&str> = path.captures().collect();
        let mut valid = true;
        for name in template.fields() {
            if !captures.contains(&name) {
                self.report_at(field, unknown_capture_message(name, &captures));
                valid = false;
            }
        }
        valid.then_some(template)
    }

    /// Parses the optional settings of a lookup route and fills in their defaults.
    fn cache_settings(&mut self, fields: &Fields<'_>) -> Option<CacheSettings> {
        let ttl = self.optional_positive_duration(fields.get("ttl"), "5m", DEFAULT_TTL);
        let stale_if_error =
            self.optional_duration(fields.get("stale_if_error"), "1h", DEFAULT_STALE_IF_ERROR);
        let scope = self.optional_choice(
            fields.get("scope"),
            &[
                ("private", CacheScope::Private),
                ("shared", CacheScope::Shared),
            ],
            CacheScope::Private,
        );
        let authorize_ttl = self.optional_positive_duration(
            fields.get("authorize_ttl"),
            "60s",
            DEFAULT_AUTHORIZE_TTL,
        );
        let authorize_by = self.optional_choice(
            fields.get("authorize_by"),
            &[
                ("route", AuthorizeBy::Route),
                ("resource", AuthorizeBy::Resource),
            ],
            AuthorizeBy::Route,
        );
        let credential_header = match fields.get("credential_header").filter(|f| !f.is_null()) {
            None => Some(None),
            Some(field) => self.credential_header(&field).map(Some),
        };
        let max_body = fields
            .get("max_body")
            .map_or(Some(DEFAULT_LOOKUP_MAX_BODY), |f| self.size(&f, "8MiB"));
        let waiter_timeout = self.optional_positive_duration(
            fields.get("waiter_timeout"),
            "5s",
            DEFAULT_WAITER_TIMEOUT,
        );
        let uncacheable_ttl = self.optional_duration(
            fields.get("uncacheable_ttl"),
            "10s",
            DEFAULT_UNCACHEABLE_TTL,
        );
        Some(CacheSettings {
            ttl: ttl?,
            stale_if_error: stale_if_error?,
            scope: scope?,
            authorize_ttl: authorize_ttl?,
            authorize_by: authorize_by?,
            credential_header: credential_header?,
            max_body: max_body?,
            waiter_timeout: waiter_timeout?,
            uncacheable_ttl: uncacheable_ttl?,
        })
    }

    /// Parses the name of the header that carries a consumer's credential. Fields that ekko
    /// sets or removes on each request are rejected, because they never reach the cache.
    fn credential_header(&mut self, field: &Field<'_>) -> Option<HeaderName> {
        let scalar = self.string(field, "a header name such as `X-Api-Key`")?;
        let Ok(name) = HeaderName::from_bytes(scalar.text.as_bytes()) else {
            let message = format!(
                "`credential_header` must be a header name such as `X-Api-Key`, got {}: use letters, digits and `-` (RFC 9110 section 5.1)",
                scalar.message_text()
            );
            self.report_at(field, message);
            return None;
        };
        if MANAGED_HEADERS.contains(&name.as_str()) {
            let message = format!(
                "`credential_header` cannot be {}, because ekko removes hop-by-hop fields (RFC 9110 section 7.6.1) and sets `Host` and `Content-Length` itself; name the header that carries the consumer's credential, such as `X-Api-Key`",
                scalar.message_text()
            );
            self.report_at(field, message);
            return None;
        }
        Some(name)
    }

    /// Reports a lookup whose name an earlier lookup already has.
    fn check_lookup_name(
        &mut self,
        item: &Field<'_>,
        current: &EarlierLookup,
        earlier: &[EarlierLookup],
    ) {
        let Some((name, line)) = &current.name else {
            return;
        };
        let first = earlier
            .iter()
            .filter_map(|lookup| lookup.name.as_ref())
            .find(|(earlier_name, _)| earlier_name == name);
        if let Some((_, first_line)) = first {
            let message = format!("lookup name `{name}` is already used on line {first_line}; lookup names must be unique");
            self.report(*line, &join_key(&item.path, "name"), message);
        }
    }

    /// Reports a lookup path that can never match, because an earlier lookup matches every
    /// path it matches, and a lookup path that a notification route matches for GET or HEAD.
    ///
    /// Messages name the routes but not the paths, which may come from variables.
    fn check_lookup_path(
        &mut self,
        path_field: &Field<'_>,
        current: &EarlierLookup,
        earlier: &[EarlierLookup],
        readers: &[ReadRoute],
    ) {
        let Some((path, _)) = &current.path else {
            return;
        };
        let this = lookup_label(current);
        let shadowing = earlier.iter().find_map(|lookup| {
            let (earlier_path, line) = lookup.path.as_ref()?;
            covers(earlier_path, path).then(|| (lookup_label(lookup), *line, earlier_path))
        });
        if let Some((other, line, earlier_path)) = shadowing {
            let message = if covers(path, earlier_path) {
                format!("{this} has the same path pattern as {other} on line {line}, so it can never match; change its `match.path` or remove it")
            } else {
                format!("{this} can never match, because {other} on line {line} comes first and matches every path that it matches; move it above {other} or change its `match.path`")
            };
            self.report_at(path_field, message);
        }
        for reader in readers
            .iter()
            .filter(|reader| same_paths(&reader.path, path))
        {
            let other = match &reader.name {
                Some(name) => format!("notification route `{name}`"),
                None => "a notification route".to_owned(),
            };
            let message = format!(
                "{this} has the same path pattern as {other} on line {}, which matches {} requests, so it is unclear which of the two would answer them; change one of the paths",
                reader.line, reader.method
            );
            self.report_at(path_field, message);
        }
    }
}

/// Names a lookup route in a message, by its name when that is valid.
fn lookup_label(lookup: &EarlierLookup) -> String {
    match &lookup.name {
        Some((name, _)) => format!("lookup `{name}`"),
        None => "the lookup".to_owned(),
    }
}

fn unknown_capture_message(field: &str, captures: &[&str]) -> String {
    let event_field = if EVENT_FIELDS.contains(&field) {
        format!(" A lookup request carries no notification, so `{{{field}}}` has no value there.")
    } else {
        String::new()
    };
    if captures.is_empty() {
        return format!("`entity` uses `{{{field}}}`, but `match.path` has no captures; add a `{{name}}` segment to the path or write the entity key without placeholders.{event_field}");
    }
    let hint = closest(field, captures.iter().copied())
        .map(|suggestion| format!("did you mean `{{{suggestion}}}`? "))
        .unwrap_or_default();
    format!(
        "`entity` uses `{{{field}}}`, which is not a capture of `match.path`; {hint}a lookup's entity key can use only the path's captures: {}.{event_field}",
        captures.join(", ")
    )
}

/// Reads the notification routes whose `match.method` is GET or HEAD.
fn read_routes(notifications: Option<Field<'_>>) -> Vec<ReadRoute> {
    let Some(Value::Seq(items)) = notifications.map(|field| &field.node.value) else {
        return Vec::new();
    };
    items.iter().filter_map(read_route).collect()
}

fn read_route(node: &Node) -> Option<ReadRoute> {
    let Value::Map(entries) = &node.value else {
        return None;
    };
    let matcher = entries.iter().find(|entry| entry.key == "match")?;
    let Value::Map(match_entries) = &matcher.value.value else {
        return None;
    };
    // Without `method`, a notification route matches POST only.
    let method_entry = match_entries.iter().find(|entry| entry.key == "method")?;
    let method = &scalar_of(&method_entry.value)?.text;
    if method != "GET" && method != "HEAD" {
        return None;
    }
    let path_entry = match_entries.iter().find(|entry| entry.key == "path")?;
    let path = PathPattern::parse(&scalar_of(&path_entry.value)?.text).ok()?;
    let name = entries
        .iter()
        .find(|entry| entry.key == "name")
        .and_then(|entry| scalar_of(&entry.value))
        .filter(|scalar| scalar.source.is_none())
        .map(|scalar| scalar.text.clone());
    Some(ReadRoute {
        name,
        method: method.clone(),
        path,
        line: path_entry.line,
    })
}

fn scalar_of(node: &Node) -> Option<&Scalar> {
    match &node.value {
        Value::Scalar(scalar) => Some(scalar),
        _ => None,
    }
}

/// Splits a pattern into segments. `PathPattern::parse` only accepts placeholders that fill
/// a whole segment, so a segment that starts with `{` is a capture.
fn segments(pattern: &PathPattern) -> Vec<Segment> {
    let source = pattern.to_string();
    source[1..]
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                Segment::Capture
            } else {
                Segment::Literal(segment.to_owned())
            }
        })
        .collect()
}

/// Checks whether every request path that `later` matches is also matched by `earlier`.
fn covers(earlier: &PathPattern, later: &PathPattern) -> bool {
    let earlier = segments(earlier);
    let later = segments(later);
    earlier.len() == later.len()
        && earlier.iter().zip(&later).all(|pair| match pair {
            (Segment::Capture, Segment::Capture) => true,
            (Segment::Capture, Segment::Literal(text)) => capture_accepts(text),
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::Literal(_), Segment::Capture) => false,
        })
}

/// Checks whether two patterns match the same request paths, which is the case when they are equal
/// apart from the capture names.
fn same_paths(a: &PathPattern, b: &PathPattern) -> bool {
    segments(a) == segments(b)
}

/// Checks whether a capture matches the request segment `text`. A capture takes any
/// non-empty segment whose percent-decoding is UTF-8.
fn capture_accepts(text: &str) -> bool {
    !text.is_empty() && percent_decode_str(text).decode_utf8().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> PathPattern {
        PathPattern::parse(text).expect("valid pattern")
    }

    #[test]
    fn capture_covers_literal_segment() {
        assert!(covers(&pattern("/a/{id}"), &pattern("/a/me")));
        assert!(!covers(&pattern("/a/me"), &pattern("/a/{id}")));
    }

    #[test]
    fn capture_names_do_not_matter() {
        assert!(covers(&pattern("/a/{id}/b"), &pattern("/a/{x}/b")));
        assert!(same_paths(&pattern("/a/{id}/b"), &pattern("/a/{x}/b")));
        assert!(!same_paths(&pattern("/a/{id}"), &pattern("/a/me")));
    }

    #[test]
    fn segment_count_must_agree() {
        assert!(!covers(&pattern("/a/{id}"), &pattern("/a/{id}/b")));
        assert!(!covers(&pattern("/a/{id}/b"), &pattern("/a/{id}")));
    }

    #[test]
    fn capture_skips_empty_and_invalid_segments() {
        assert!(!covers(&pattern("/a/{id}"), &pattern("/a/")));
        assert!(!covers(&pattern("/a/{id}"), &pattern("/a/%FF")));
        assert!(covers(&pattern("/a/{id}"), &pattern("/a/x%2Fy")));
    }
}
