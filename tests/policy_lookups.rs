//! Policy `lookups` and `cache` sections: defaults, every error kind with its line and key.

use std::time::Duration;

use ekko::policy::{parse, CacheScope, Policy, PolicyErrors, Problem};

/// A valid policy whose only lookup ends on line 14; `lookup_with` appends lookup keys at
/// line 15.
const BASE: &str = "\
upstreams:
  mq: { url: \"http://127.0.0.1:15672\" }
  api: { url: \"http://127.0.0.1:8081\" }
notifications:
  - name: hr-person
    match: { path: \"/api/exchanges/{vhost}/hr/publish\" }
    upstream: mq
    format: rabbitmq-publish
    entity: \"hr/person/{subject}\"
lookups:
  - name: hr-person
    match: { path: \"/hr/v1/persons/{id}\" }
    upstream: api
    entity: \"hr/person/{id}\"
";

/// The policy up to and including `notifications`, nine lines.
const NOTIFICATIONS: &str = "\
upstreams:
  mq: { url: \"http://127.0.0.1:15672\" }
  api: { url: \"http://127.0.0.1:8081\" }
notifications:
  - name: hr-person
    match: { path: \"/api/exchanges/{vhost}/hr/publish\" }
    upstream: mq
    format: rabbitmq-publish
    entity: \"hr/person/{subject}\"
";

const SECRET: &str = "s3cr3t-Value-9f8e7d";

fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some(SECRET.to_owned()),
        "EKKO_API_TOKEN" => Some("token-123".to_owned()),
        "MQ_AUTH" => Some("Z3Vlc3Q6Z3Vlc3Q=".to_owned()),
        _ => None,
    }
}

fn lookup_with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// Appends a second lookup, which starts on line 15, with the given path and entity.
fn second_lookup(name: &str, path: &str, entity: &str) -> String {
    format!("{BASE}  - name: {name}\n    match: {{ path: \"{path}\" }}\n    upstream: api\n    entity: \"{entity}\"\n")
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, &env) {
        Ok(_) => Vec::new(),
        Err(PolicyErrors(problems)) => problems,
    }
}

fn valid(text: &str) -> Policy {
    match parse(text, &env) {
        Ok(policy) => policy,
        Err(errors) => panic!("policy rejected:\n{errors}"),
    }
}

/// (case, policy text, line, key, part of the message)
fn error_cases() -> Vec<(&'static str, String, u64, &'static str, &'static str)> {
    vec![
        (
            "lookups not a list",
            format!("{NOTIFICATIONS}lookups: {{ name: hr-person }}\n"),
            10,
            "lookups",
            "`lookups` must be a list of lookup routes, got a mapping",
        ),
        (
            "lookup not a mapping",
            format!("{NOTIFICATIONS}lookups:\n  - hr-person\n"),
            11,
            "lookups[0]",
            "must be a mapping with the keys name, match",
        ),
        (
            "unknown key with suggestion",
            lookup_with("    tll: 5m\n"),
            15,
            "lookups[0].tll",
            "did you mean `ttl`?",
        ),
        (
            "unknown key without suggestion",
            lookup_with("    vary: [Accept]\n"),
            15,
            "lookups[0].vary",
            "allowed keys: name, match, upstream, entity, ttl",
        ),
        (
            "duplicate key",
            lookup_with("    ttl: 1m\n    ttl: 2m\n"),
            16,
            "lookups[0].ttl",
            "duplicate key `ttl`; the first one is on line 15",
        ),
        (
            "missing name",
            BASE.replace("  - name: hr-person\n    match: { path: \"/hr", "  - match: { path: \"/hr"),
            11,
            "lookups[0].name",
            "missing required key `name`",
        ),
        (
            "missing match",
            BASE.replace("    match: { path: \"/hr/v1/persons/{id}\" }\n", ""),
            11,
            "lookups[0].match",
            "missing required key `match`",
        ),
        (
            "missing upstream",
            BASE.replace("    upstream: api\n", ""),
            11,
            "lookups[0].upstream",
            "missing required key `upstream`",
        ),
        (
            "missing entity",
            BASE.replace("    entity: \"hr/person/{id}\"\n", ""),
            11,
            "lookups[0].entity",
            "missing required key `entity`",
        ),
        (
            "name that is no metric label",
            BASE.replace("  - name: hr-person\n    match: { path: \"/hr", "  - name: HR Person\n    match: { path: \"/hr"),
            11,
            "lookups[0].name",
            "route name `HR Person` must use only lowercase letters, digits, `-` and `_`",
        ),
        (
            "name from a variable",
            BASE.replace("  - name: hr-person\n    match: { path: \"/hr", "  - name: \"${SECRET}\"\n    match: { path: \"/hr"),
            11,
            "lookups[0].name",
            "`name` must be written out, because it is a metric label",
        ),
        (
            "duplicate name",
            second_lookup("hr-person", "/hr/v1/units/{id}", "hr/unit/{id}"),
            15,
            "lookups[1].name",
            "lookup name `hr-person` is already used on line 11; lookup names must be unique",
        ),
        (
            "method in match",
            BASE.replace("{ path: \"/hr/v1", "{ method: GET, path: \"/hr/v1"),
            12,
            "lookups[0].match.method",
            "`method` cannot be set on a lookup route: GET and HEAD requests are cached",
        ),
        (
            "missing path",
            BASE.replace("{ path: \"/hr/v1/persons/{id}\" }", "{}"),
            12,
            "lookups[0].match.path",
            "missing required key `path`",
        ),
        (
            "relative path",
            BASE.replace("\"/hr/v1/persons/{id}\"", "\"hr/v1/persons/{id}\"")
                .replace("\"hr/person/{id}\"", "\"hr/person\""),
            12,
            "lookups[0].match.path",
            "`path` is not a valid path pattern, got `hr/v1/persons/{id}`: it must start with `/`",
        ),
        (
            "path with query",
            BASE.replace("persons/{id}\"", "persons/{id}?full=1\""),
            12,
            "lookups[0].match.path",
            "cannot contain `?` or `#`",
        ),
        (
            "unknown upstream",
            BASE.replace("    upstream: api\n", "    upstream: apii\n"),
            13,
            "lookups[0].upstream",
            "unknown upstream `apii`; defined upstreams: api, mq",
        ),
        (
            "entity with unknown capture",
            BASE.replace("\"hr/person/{id}\"", "\"hr/person/{ids}\""),
            14,
            "lookups[0].entity",
            "`entity` uses `{ids}`, which is not a capture of `match.path`; did you mean `{id}`? a lookup's entity key can use only the path's captures: id.",
        ),
        (
            "entity with event field",
            BASE.replace("\"hr/person/{id}\"", "\"hr/person/{subject}\""),
            14,
            "lookups[0].entity",
            "only the path's captures: id. A lookup request carries no notification, so `{subject}` has no value there.",
        ),
        (
            "entity without captures in path",
            BASE.replace("\"/hr/v1/persons/{id}\"", "\"/hr/v1/persons/me\""),
            14,
            "lookups[0].entity",
            "`entity` uses `{id}`, but `match.path` has no captures",
        ),
        (
            "entity with unbalanced braces",
            BASE.replace("\"hr/person/{id}\"", "\"hr/person/{id\""),
            14,
            "lookups[0].entity",
            "`entity` is not a valid template, got `hr/person/{id`: braces must come in pairs",
        ),
        (
            "zero ttl",
            lookup_with("    ttl: 0s\n"),
            15,
            "lookups[0].ttl",
            "`ttl` must be longer than zero, such as `5m`",
        ),
        (
            "ttl without unit",
            lookup_with("    ttl: 300\n"),
            15,
            "lookups[0].ttl",
            "`ttl` must be a duration such as `5m`, got `300`: a bare number has no unit",
        ),
        (
            "stale_if_error with unknown unit",
            lookup_with("    stale_if_error: 1hour\n"),
            15,
            "lookups[0].stale_if_error",
            "`stale_if_error` must be a duration such as `1h`, got `1hour`",
        ),
        (
            "unknown scope",
            lookup_with("    scope: public\n"),
            15,
            "lookups[0].scope",
            "`scope` must be one of private, shared, got `public`",
        ),
        (
            "zero authorize_ttl",
            lookup_with("    scope: shared\n    authorize_ttl: 0s\n"),
            16,
            "lookups[0].authorize_ttl",
            "`authorize_ttl` must be longer than zero, such as `60s`",
        ),
        (
            "credential header with space",
            lookup_with("    credential_header: \"X Api Key\"\n"),
            15,
            "lookups[0].credential_header",
            "`credential_header` must be a header name such as `X-Api-Key`, got `X Api Key`",
        ),
        (
            "credential header that is a number",
            lookup_with("    credential_header: 42\n"),
            15,
            "lookups[0].credential_header",
            "got the integer `42`; put it in quotes",
        ),
        (
            "hop-by-hop credential header",
            lookup_with("    credential_header: Connection\n"),
            15,
            "lookups[0].credential_header",
            "`credential_header` cannot be `Connection`, because ekko removes hop-by-hop fields (RFC 9110 section 7.6.1)",
        ),
        (
            "host as credential header",
            lookup_with("    credential_header: host\n"),
            15,
            "lookups[0].credential_header",
            "`credential_header` cannot be `host`",
        ),
        (
            "content-length as credential header",
            lookup_with("    credential_header: Content-Length\n"),
            15,
            "lookups[0].credential_header",
            "`credential_header` cannot be `Content-Length`",
        ),
        (
            "zero max_body",
            lookup_with("    max_body: 0B\n"),
            15,
            "lookups[0].max_body",
            "`max_body` must be larger than zero",
        ),
        (
            "max_body without unit",
            lookup_with("    max_body: 8388608\n"),
            15,
            "lookups[0].max_body",
            "`max_body` must be a size such as `8MiB`, got `8388608`: a bare number has no unit",
        ),
        (
            "zero waiter_timeout",
            lookup_with("    waiter_timeout: 0ms\n"),
            15,
            "lookups[0].waiter_timeout",
            "`waiter_timeout` must be longer than zero, such as `5s`",
        ),
        (
            "uncacheable_ttl without unit",
            lookup_with("    uncacheable_ttl: 10\n"),
            15,
            "lookups[0].uncacheable_ttl",
            "`uncacheable_ttl` must be a duration such as `10s`, got `10`",
        ),
        (
            "same path pattern",
            second_lookup("hr-person-copy", "/hr/v1/persons/{person}", "hr/person/{person}"),
            16,
            "lookups[1].match.path",
            "lookup `hr-person-copy` has the same path pattern as lookup `hr-person` on line 12, so it can never match",
        ),
        (
            "path shadowed by earlier capture",
            second_lookup("hr-me", "/hr/v1/persons/me", "hr/me"),
            16,
            "lookups[1].match.path",
            "lookup `hr-me` can never match, because lookup `hr-person` on line 12 comes first and matches every path that it matches; move it above lookup `hr-person`",
        ),
        (
            "cache not a mapping",
            format!("{BASE}cache: 256MiB\n"),
            15,
            "cache",
            "`cache` must be a mapping with the keys max_bytes, got `256MiB`",
        ),
        (
            "cache unknown key",
            format!("{BASE}cache: {{ max_byte: 1GiB }}\n"),
            15,
            "cache.max_byte",
            "did you mean `max_bytes`?",
        ),
        (
            "zero cache size",
            format!("{BASE}cache: {{ max_bytes: 0MiB }}\n"),
            15,
            "cache.max_bytes",
            "`max_bytes` must be larger than zero",
        ),
        (
            "cache size without unit",
            format!("{BASE}cache: {{ max_bytes: 268435456 }}\n"),
            15,
            "cache.max_bytes",
            "`max_bytes` must be a size such as `256MiB`, got `268435456`",
        ),
    ]
}

#[test]
fn base_lookup_is_valid() {
    let policy = valid(BASE);
    assert_eq!(policy.lookups.len(), 1);
    assert_eq!(policy.lookups[0].name, "hr-person");
}

#[test]
fn each_lookup_error_names_line_and_key() {
    for (case, text, line, key, fragment) in error_cases() {
        let found = problems(&text);
        assert_eq!(
            found.len(),
            1,
            "{case}: expected one problem, got {found:#?}"
        );
        let problem = &found[0];
        assert_eq!(problem.line, line, "{case}: line of {problem:?}");
        assert_eq!(problem.key, key, "{case}: key of {problem:?}");
        assert!(
            problem.message.contains(fragment),
            "{case}: message {:?} lacks {fragment:?}",
            problem.message
        );
    }
}

#[test]
fn missing_sections_give_defaults() {
    let policy = valid(NOTIFICATIONS);
    assert!(policy.lookups.is_empty());
    assert_eq!(policy.cache.max_bytes, 256 * 1024 * 1024);
}

#[test]
fn empty_lookups_are_accepted() {
    let empty_value = valid(&format!("{NOTIFICATIONS}lookups:\ncache: {{}}\n"));
    assert!(empty_value.lookups.is_empty());
    assert_eq!(empty_value.cache.max_bytes, 256 * 1024 * 1024);
    let empty_list = valid(&format!("{NOTIFICATIONS}lookups: []\n"));
    assert!(empty_list.lookups.is_empty());
}

#[test]
fn lookup_defaults_are_filled_in() {
    let policy = valid(BASE);
    let lookup = &policy.lookups[0];
    assert_eq!(lookup.path.to_string(), "/hr/v1/persons/{id}");
    assert_eq!(lookup.upstream, "api");
    assert_eq!(lookup.entity.to_string(), "hr/person/{id}");
    assert_eq!(lookup.ttl, Duration::from_secs(300));
    assert_eq!(lookup.stale_if_error, Duration::ZERO);
    assert_eq!(lookup.scope, CacheScope::Private);
    assert_eq!(lookup.authorize_ttl, Duration::from_secs(60));
    assert_eq!(lookup.credential_header, None);
    assert_eq!(lookup.max_body, 8 * 1024 * 1024);
    assert_eq!(lookup.waiter_timeout, Duration::from_secs(10));
    assert_eq!(lookup.uncacheable_ttl, Duration::from_secs(10));
    assert_eq!(policy.cache.max_bytes, 256 * 1024 * 1024);
}

#[test]
fn every_lookup_key_is_read() {
    let text = lookup_with(
        "    ttl: 2m
    stale_if_error: 1h
    scope: shared
    authorize_ttl: 30s
    credential_header: X-Api-Key
    max_body: 2MiB
    waiter_timeout: 1500ms
    uncacheable_ttl: 0s
cache: { max_bytes: 1GiB }
",
    );
    let policy = valid(&text);
    let lookup = &policy.lookups[0];
    assert_eq!(lookup.ttl, Duration::from_secs(120));
    assert_eq!(lookup.stale_if_error, Duration::from_secs(3600));
    assert_eq!(lookup.scope, CacheScope::Shared);
    assert_eq!(lookup.authorize_ttl, Duration::from_secs(30));
    let header = lookup
        .credential_header
        .as_ref()
        .expect("credential header");
    assert_eq!(header.as_str(), "x-api-key");
    assert_eq!(lookup.max_body, 2 * 1024 * 1024);
    assert_eq!(lookup.waiter_timeout, Duration::from_millis(1500));
    assert_eq!(lookup.uncacheable_ttl, Duration::ZERO);
    assert_eq!(policy.cache.max_bytes, 1 << 30);
}

#[test]
fn authorize_ttl_is_accepted_when_private() {
    let policy = valid(&lookup_with("    scope: private\n    authorize_ttl: 5m\n"));
    assert_eq!(policy.lookups[0].scope, CacheScope::Private);
    assert_eq!(policy.lookups[0].authorize_ttl, Duration::from_secs(300));
}

#[test]
fn null_credential_header_means_none() {
    let policy = valid(&lookup_with("    credential_header: null\n"));
    assert_eq!(policy.lookups[0].credential_header, None);
}

#[test]
fn lookups_keep_policy_order() {
    let text = second_lookup("hr-unit", "/hr/v1/units/{unit}/members", "hr/unit/{unit}");
    let policy = valid(&text);
    let names: Vec<&str> = policy.lookups.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["hr-person", "hr-unit"]);
    assert_eq!(policy.lookups[1].entity.to_string(), "hr/unit/{unit}");
}

#[test]
fn literal_path_before_capture_is_accepted() {
    let text = format!(
        "{NOTIFICATIONS}lookups:
  - name: hr-me
    match: {{ path: \"/hr/v1/persons/me\" }}
    upstream: api
    entity: \"hr/me\"
  - name: hr-person
    match: {{ path: \"/hr/v1/persons/{{id}}\" }}
    upstream: api
    entity: \"hr/person/{{id}}\"
"
    );
    let policy = valid(&text);
    assert_eq!(policy.lookups.len(), 2);
    assert!(policy.lookups[0].entity.fields().next().is_none());
}

#[test]
fn entity_may_use_several_captures() {
    let text = BASE
        .replace("\"/hr/v1/persons/{id}\"", "\"/{tenant}/persons/{id}\"")
        .replace("\"hr/person/{id}\"", "\"{tenant}/person/{id}\"");
    let policy = valid(&text);
    let fields: Vec<&str> = policy.lookups[0].entity.fields().collect();
    assert_eq!(fields, ["tenant", "id"]);
}

/// Builds a policy with one notification route matching `method` on `/hr/v1/persons/{person}`
/// (path on line 6) and the lookup `hr-person` on `/hr/v1/persons/{id}` (path on line 13).
fn with_read_route(method: &str) -> String {
    format!(
        "upstreams:
  mq: {{ url: \"http://127.0.0.1:15672\" }}
  api: {{ url: \"http://127.0.0.1:8081\" }}
notifications:
  - name: hr-read
    match: {{ method: {method}, path: \"/hr/v1/persons/{{person}}\" }}
    upstream: api
    format: json
    entity: \"hr/person/{{person}}\"
    fingerprint: none
lookups:
  - name: hr-person
    match: {{ path: \"/hr/v1/persons/{{id}}\" }}
    upstream: api
    entity: \"hr/person/{{id}}\"
"
    )
}

#[test]
fn get_notification_path_conflicts() {
    for method in ["GET", "HEAD"] {
        let found = problems(&with_read_route(method));
        assert_eq!(found.len(), 1, "{method}: {found:#?}");
        assert_eq!(found[0].line, 13, "{method}: {:?}", found[0]);
        assert_eq!(found[0].key, "lookups[0].match.path", "{method}");
        let expected = format!("lookup `hr-person` has the same path pattern as notification route `hr-read` on line 6, which matches {method} requests, so it is unclear which of the two would answer them");
        assert!(
            found[0].message.contains(&expected),
            "{method}: {}",
            found[0].message
        );
    }
}

#[test]
fn post_notification_path_is_no_conflict() {
    let policy = valid(&with_read_route("POST"));
    assert_eq!(policy.lookups.len(), 1);
    let put = valid(&with_read_route("PUT"));
    assert_eq!(put.lookups.len(), 1);
}

#[test]
fn conflict_reported_beside_route_problems() {
    // The notification route has an unknown format, but its path still conflicts.
    let text = with_read_route("GET").replace("format: json", "format: xml");
    let found = problems(&text);
    let at: Vec<(u64, &str)> = found.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        at,
        [
            (8, "notifications[0].format"),
            (13, "lookups[0].match.path")
        ]
    );
}

#[test]
fn lookup_name_may_equal_route_name() {
    let policy = valid(BASE);
    assert_eq!(policy.notifications[0].name, policy.lookups[0].name);
}

#[test]
fn all_problems_of_one_lookup_are_reported() {
    let text = format!(
        "{NOTIFICATIONS}lookups:
  - name: hr-person
    match: {{ method: GET, path: \"/hr/v1/persons/{{id}}\" }}
    upstream: nowhere
    entity: \"hr/person/{{subject}}\"
    ttl: 5
    scope: public
    credential_header: Upgrade
    max_body: 0MiB
    waitr_timeout: 5s
"
    );
    let found = problems(&text);
    let at: Vec<(u64, &str)> = found.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        at,
        [
            (12, "lookups[0].match.method"),
            (13, "lookups[0].upstream"),
            (14, "lookups[0].entity"),
            (15, "lookups[0].ttl"),
            (16, "lookups[0].scope"),
            (17, "lookups[0].credential_header"),
            (18, "lookups[0].max_body"),
            (19, "lookups[0].waitr_timeout"),
        ]
    );
}

#[test]
fn invalid_path_skips_entity_field_check() {
    let text = BASE.replace("\"/hr/v1/persons/{id}\"", "\"/hr/v1/persons/x{id}\"");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "lookups[0].match.path");
    assert!(found[0].message.contains("must fill a whole path segment"));
}

#[test]
fn secret_values_never_appear_in_lookup_errors() {
    let text = format!(
        "{NOTIFICATIONS}lookups:
  - name: hr-person
    match: {{ path: \"/hr/${{SECRET}}/x{{id}}\" }}
    upstream: \"${{SECRET}}\"
    entity: \"hr/${{SECRET}}/{{id\"
    ttl: \"${{SECRET}}\"
    scope: \"${{SECRET}}\"
    credential_header: \"${{SECRET}} x\"
    max_body: \"${{SECRET}}\"
cache: {{ max_bytes: \"${{SECRET}}\" }}
"
    );
    let err = parse(&text, &env).unwrap_err();
    assert_eq!(err.0.len(), 8, "expected one problem per value:\n{err}");
    let rendered = err.to_string().to_lowercase();
    assert!(
        !rendered.contains(&SECRET.to_lowercase()),
        "secret in:\n{err}"
    );
}

#[test]
fn documented_lookups_parse() {
    let doc = include_str!("../docs/policy.md");
    let start = doc
        .find("## Full example")
        .expect("docs lack the full example");
    let block = doc[start..]
        .split("```yaml\n")
        .nth(1)
        .expect("no yaml block");
    let text = block.split("```").next().expect("unclosed yaml block");
    let policy = valid(text);
    assert_eq!(policy.cache.max_bytes, 256 * 1024 * 1024);
    let lookup = &policy.lookups[0];
    assert_eq!(lookup.name, "hr-person");
    assert_eq!(lookup.entity.to_string(), "hr/person/{id}");
    assert_eq!(lookup.scope, CacheScope::Shared);
    assert_eq!(lookup.stale_if_error, Duration::from_secs(3600));
    let header = lookup
        .credential_header
        .as_ref()
        .expect("credential header");
    assert_eq!(header.as_str(), "x-api-key");
}
