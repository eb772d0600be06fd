//! Policy compiler: every error kind with its line and key, defaults, variables, examples.

use std::time::Duration;

use ekko::policy::{
    parse, FingerprintSource, Format, OnUndecodable, Policy, PolicyErrors, Problem, RouteMode,
};

/// A valid policy whose only route ends on line 9; `route_with` appends route keys at line 10.
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
";

const SECRET: &str = "s3cr3t-Value-9f8e7d";

fn env(name: &str) -> Option<String> {
    match name {
        "MQ_AUTH" => Some("Z3Vlc3Q6Z3Vlc3Q=".to_owned()),
        "HR_API_TOKEN" | "SINK_TOKEN" | "EKKO_API_TOKEN" => Some("token-123".to_owned()),
        "SECRET" => Some(SECRET.to_owned()),
        "SECRET_LINE" => Some(format!("{SECRET}\nInjected: 1")),
        "PORT" => Some("8081".to_owned()),
        _ => None,
    }
}

fn route_with(extra: &str) -> String {
    format!("{BASE}{extra}")
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
            "yaml syntax",
            route_with("    mode: [enforce\n    max_body: 1MiB\n"),
            11,
            "",
            "invalid YAML",
        ),
        (
            "unknown key with suggestion",
            route_with("    formt: json\n"),
            10,
            "notifications[0].formt",
            "did you mean `format`?",
        ),
        (
            "unknown key without suggestion",
            format!("{BASE}metrics: {{ path: /metrics }}\n"),
            10,
            "metrics",
            "allowed keys: listen, admin_listen",
        ),
        (
            "duplicate key",
            route_with("    upstream: api\n"),
            10,
            "notifications[0].upstream",
            "duplicate key `upstream`; the first one is on line 7",
        ),
        (
            "duration without unit",
            route_with("    duplicate_window: 30\n"),
            10,
            "notifications[0].duplicate_window",
            "`duplicate_window` must be a duration such as `5m`, got `30`: a bare number has no unit",
        ),
        (
            "duration with unknown unit",
            route_with("    max_entity_wait: 10sec\n"),
            10,
            "notifications[0].max_entity_wait",
            "the unit is unknown. Units: d, h, m, s, ms",
        ),
        (
            "zero timeout",
            BASE.replace("8081\" }", "8081\", timeout: 0s }"),
            3,
            "upstreams.api.timeout",
            "must be longer than zero",
        ),
        (
            "connect timeout above timeout",
            BASE.replace("8081\" }", "8081\", timeout: 1s, connect_timeout: 2s }"),
            3,
            "upstreams.api.connect_timeout",
            "is longer than `timeout`",
        ),
        (
            "size without unit",
            route_with("    max_body: 1048576\n"),
            10,
            "notifications[0].max_body",
            "`max_body` must be a size such as `1MiB`, got `1048576`: a bare number has no unit",
        ),
        (
            "count that is not a number",
            format!("state: {{ max_entities: lots }}\n{BASE}"),
            1,
            "state.max_entities",
            "must be a whole number such as `1000000`, at least 1, got `lots`",
        ),
        (
            "mapping expected",
            format!("state: 5\n{BASE}"),
            1,
            "state",
            "`state` must be a mapping with the keys max_entities",
        ),
        (
            "string expected",
            BASE.replace("upstream: mq", "upstream: 42"),
            7,
            "notifications[0].upstream",
            "got the integer `42`; put it in quotes",
        ),
        (
            "unknown upstream",
            BASE.replace("upstream: mq", "upstream: mqq"),
            7,
            "notifications[0].upstream",
            "unknown upstream `mqq`; defined upstreams: api, mq",
        ),
        (
            "unknown lookup upstream",
            route_with("    fingerprint:\n      lookup: { upstream: apii, path: \"/p/{subject}\" }\n"),
            11,
            "notifications[0].fingerprint.lookup.upstream",
            "unknown upstream `apii`; defined upstreams: api, mq",
        ),
        (
            "https upstream",
            BASE.replace("http://127.0.0.1:8081", "https://127.0.0.1:8081"),
            3,
            "upstreams.api.url",
            "terminate TLS in a sidecar",
        ),
        (
            "upstream with user information",
            BASE.replace("http://127.0.0.1:8081", "http://user:pw@127.0.0.1:8081"),
            3,
            "upstreams.api.url",
            "send credentials with `headers`",
        ),
        (
            "upstream with query",
            BASE.replace("http://127.0.0.1:8081", "http://127.0.0.1:8081/x?key=1"),
            3,
            "upstreams.api.url",
            "must not have a query or fragment",
        ),
        (
            "upstream with other scheme",
            BASE.replace("http://127.0.0.1:8081", "ftp://127.0.0.1:8081"),
            3,
            "upstreams.api.url",
            "must start with `http://`",
        ),
        (
            "upstream with bad port",
            BASE.replace("http://127.0.0.1:8081", "http://127.0.0.1:99999"),
            3,
            "upstreams.api.url",
            "invalid host or port",
        ),
        (
            "upstream name that is no label",
            BASE.replace("  api:", "  API:"),
            3,
            "upstreams.API",
            "upstream name `API` must use only lowercase letters",
        ),
        (
            "invalid header name",
            BASE.replace("8081\" }", "8081\", headers: { \"X Auth\": a } }"),
            3,
            "upstreams.api.headers.X Auth",
            "is not a valid header name",
        ),
        (
            "header managed by ekko",
            BASE.replace("8081\" }", "8081\", headers: { Host: example } }"),
            3,
            "upstreams.api.headers.Host",
            "is set by ekko on each request",
        ),
        (
            "format not in list",
            BASE.replace("format: rabbitmq-publish", "format: xml"),
            8,
            "notifications[0].format",
            "must be one of cloudevents, rabbitmq-publish, json, got `xml`",
        ),
        (
            "mode not in list",
            route_with("    mode: off\n"),
            10,
            "notifications[0].mode",
            "must be one of enforce, shadow, got `off`",
        ),
        (
            "on_undecodable not in list",
            route_with("    on_undecodable: drop\n"),
            10,
            "notifications[0].on_undecodable",
            "must be one of reject, forward, got `drop`",
        ),
        (
            "pointers with cloudevents",
            BASE.replace("format: rabbitmq-publish", "format: cloudevents\n    pointers: { id: /id }"),
            9,
            "notifications[0].pointers",
            "applies only to the formats json and rabbitmq-publish",
        ),
        (
            "pointer without slash",
            route_with("    pointers: { subject: personId }\n"),
            10,
            "notifications[0].pointers.subject",
            "a JSON pointer starts with `/`",
        ),
        (
            "ignore pointer with bad escape",
            route_with("    fingerprint: { payload: {}, ignore: [\"/a\", \"/b~2\"] }\n"),
            10,
            "notifications[0].fingerprint.ignore[1]",
            "`~` must be followed by `0`",
        ),
        (
            "entity with unknown field",
            BASE.replace("{subject}\"", "{subjekt}\""),
            9,
            "notifications[0].entity",
            "unknown field `{subjekt}`; did you mean `{subject}`?",
        ),
        (
            "lookup path with unknown field",
            route_with("    fingerprint:\n      lookup: { upstream: api, path: \"/p/{person}\" }\n"),
            11,
            "notifications[0].fingerprint.lookup.path",
            "available fields: id, source, type, subject, routing_key, vhost",
        ),
        (
            "lookup path without slash",
            route_with("    fingerprint:\n      lookup: { upstream: api, path: \"p/{subject}\" }\n"),
            11,
            "notifications[0].fingerprint.lookup.path",
            "must start with `/`",
        ),
        (
            "entity with unbalanced braces",
            BASE.replace("{subject}\"", "{subject\""),
            9,
            "notifications[0].entity",
            "braces must come in pairs",
        ),
        (
            "match path with partial segment",
            BASE.replace("{vhost}/hr", "v{vhost}/hr"),
            6,
            "notifications[0].match.path",
            "not a valid path pattern",
        ),
        (
            "match path with query",
            BASE.replace("hr/publish\"", "hr/publish?x=1\""),
            6,
            "notifications[0].match.path",
            "cannot contain `?` or `#`",
        ),
        (
            "lowercase method",
            BASE.replace("match: {", "match: { method: post,"),
            6,
            "notifications[0].match.method",
            "write `POST`",
        ),
        (
            "route name that is no label",
            BASE.replace("name: hr-person", "name: HR Person"),
            5,
            "notifications[0].name",
            "route name `HR Person` must use only lowercase letters",
        ),
        (
            "duplicate route name",
            format!("{BASE}  - name: hr-person\n    match: {{ path: /other }}\n    upstream: mq\n    format: json\n    entity: \"x/{{id}}\"\n"),
            10,
            "notifications[1].name",
            "route name `hr-person` is already used on line 5",
        ),
        (
            "route that can never match",
            format!("{BASE}  - name: second\n    match: {{ path: \"/api/exchanges/{{vhost}}/hr/publish\" }}\n    upstream: mq\n    format: json\n    entity: \"x/{{id}}\"\n"),
            10,
            "notifications[1].match",
            "so it can never match",
        ),
        (
            "informational status",
            route_with("    suppressed_response: { status: 101 }\n"),
            10,
            "notifications[0].suppressed_response.status",
            "1xx interim status",
        ),
        (
            "status out of range",
            route_with("    suppressed_response: { status: 700 }\n"),
            10,
            "notifications[0].suppressed_response.status",
            "from 200 to 599",
        ),
        (
            "body that is not json",
            route_with("    suppressed_response: { status: 200, body: \"{routed\" }\n"),
            10,
            "notifications[0].suppressed_response.body",
            "is not valid JSON",
        ),
        (
            "two fingerprint sources",
            route_with("    fingerprint: { payload: {}, none: {} }\n"),
            10,
            "notifications[0].fingerprint",
            "has payload and none; keep exactly one",
        ),
        (
            "no fingerprint source",
            route_with("    fingerprint: { ignore: [/a] }\n"),
            10,
            "notifications[0].fingerprint",
            "must name where the state comes from",
        ),
        (
            "ignore with none",
            route_with("    fingerprint: { none: {}, ignore: [/a] }\n"),
            10,
            "notifications[0].fingerprint.ignore",
            "has no effect with `none`",
        ),
        (
            "lookup shorthand",
            route_with("    fingerprint: lookup\n"),
            10,
            "notifications[0].fingerprint",
            "needs an upstream and a path",
        ),
        (
            "payload with options",
            route_with("    fingerprint: { payload: { data: /x } }\n"),
            10,
            "notifications[0].fingerprint.payload.data",
            "this mapping takes no keys",
        ),
        (
            "missing required key",
            BASE.replace("    entity: \"hr/person/{subject}\"\n", ""),
            5,
            "notifications[0].entity",
            "missing required key `entity`",
        ),
        (
            "missing notifications",
            "upstreams:\n  mq: { url: \"http://127.0.0.1:15672\" }\n".to_owned(),
            1,
            "notifications",
            "missing required key `notifications`",
        ),
        (
            "empty notifications",
            "upstreams:\n  mq: { url: \"http://127.0.0.1:15672\" }\nnotifications: []\n"
                .to_owned(),
            3,
            "notifications",
            "define at least one route",
        ),
        (
            "invalid socket address",
            format!("listen: localhost:80\n{BASE}"),
            1,
            "listen",
            "must be a socket address such as `0.0.0.0:8080`",
        ),
        (
            "listeners on one port",
            format!("listen: 0.0.0.0:9090\n{BASE}"),
            1,
            "listen",
            "give the admin listener its own port",
        ),
        (
            "empty snapshot path",
            format!("state: {{ snapshot: \"\" }}\n{BASE}"),
            1,
            "state.snapshot",
            "`snapshot` is empty",
        ),
        (
            "unset variable",
            BASE.replace("8081\" }", "8081\", headers: { Authorization: \"Bearer ${NOPE}\" } }"),
            3,
            "upstreams.api.headers.Authorization",
            "environment variable `NOPE` is not set",
        ),
        (
            "unclosed variable",
            BASE.replace("8081\" }", "8081\", headers: { Authorization: \"Bearer ${NOPE\" } }"),
            3,
            "upstreams.api.headers.Authorization",
            "`${` has no closing `}`",
        ),
        (
            "policy that is no mapping",
            "- listen: 0.0.0.0:8080\n".to_owned(),
            1,
            "",
            "`policy` must be a mapping with the keys listen, admin_listen",
        ),
        (
            "empty policy",
            "# nothing here\n".to_owned(),
            1,
            "",
            "the policy is empty",
        ),
    ]
}

#[test]
fn base_policy_is_valid() {
    let policy = valid(BASE);
    assert_eq!(policy.notifications.len(), 1);
    assert_eq!(policy.upstreams.len(), 2);
}

#[test]
fn each_error_kind_names_line_and_key() {
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
fn empty_upstreams_are_reported() {
    let text = BASE.replace(
        "\n  mq: { url: \"http://127.0.0.1:15672\" }\n  api: { url: \"http://127.0.0.1:8081\" }",
        " {}",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].line, found[0].key.as_str()), (1, "upstreams"));
    assert!(found[0].message.contains("define at least one upstream"));
    assert_eq!(
        (found[1].line, found[1].key.as_str()),
        (5, "notifications[0].upstream")
    );
    assert!(found[1].message.contains("defined upstreams: none"));
}

#[test]
fn five_mistakes_are_all_reported() {
    let text = "\
listen: 0.0.0.0:8080
shutdown_grace: 30
upstreams:
  mq: { url: \"https://127.0.0.1:15672\" }
notifications:
  - name: hr-person
    match: { path: \"/hr/{id}\" }
    upstream: mq
    format: json
    entity: \"hr/person/{subjekt}\"
    mode: enforced
    tiemout: 5s
";
    let found = problems(text);
    let at: Vec<(u64, &str)> = found.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        at,
        vec![
            (2, "shutdown_grace"),
            (4, "upstreams.mq.url"),
            (10, "notifications[0].entity"),
            (11, "notifications[0].mode"),
            (12, "notifications[0].tiemout"),
        ]
    );
}

#[test]
fn errors_display_one_per_line() {
    let err = parse(&BASE.replace("upstream: mq", "upstream: mqq"), &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy line 7: `notifications[0].upstream`: unknown upstream `mqq`; defined upstreams: api, mq"
    );
}

#[test]
fn defaults_are_filled_in() {
    let policy = valid(BASE);
    assert_eq!(policy.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(policy.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(policy.shutdown_grace, Duration::from_secs(30));
    assert_eq!(policy.state.max_entities.get(), 1_000_000);
    assert_eq!(policy.state.max_event_ids.get(), 1_000_000);
    assert_eq!(policy.state.snapshot, None);
    assert_eq!(policy.state.snapshot_interval, Duration::from_secs(60));

    let api = &policy.upstreams["api"];
    assert_eq!(api.name, "api");
    assert_eq!(api.authority.as_str(), "127.0.0.1:8081");
    assert_eq!(api.base_path, "");
    assert_eq!(api.timeout, Duration::from_secs(5));
    assert_eq!(api.connect_timeout, Duration::from_secs(2));
    assert!(api.headers.is_empty());

    let route = &policy.notifications[0];
    assert_eq!(route.method, http::Method::POST);
    assert_eq!(route.format, Format::RabbitmqPublish(Default::default()));
    assert!(matches!(
        route.fingerprint.source,
        FingerprintSource::Payload
    ));
    assert!(route.fingerprint.ignore.is_empty());
    assert_eq!(route.duplicate_window, Duration::from_secs(300));
    assert_eq!(route.max_body, 1_048_576);
    assert_eq!(route.on_undecodable, OnUndecodable::Reject);
    assert_eq!(route.mode, RouteMode::Enforce);
    assert_eq!(route.max_entity_wait, Duration::from_secs(10));
    assert_eq!(route.suppressed_response.status, http::StatusCode::ACCEPTED);
    assert_eq!(route.suppressed_response.body, None);
    assert_eq!(route.suppressed_response.content_type, "application/json");
}

#[test]
fn shorthand_fingerprints_are_accepted() {
    let none = valid(&route_with("    fingerprint: none\n"));
    assert!(matches!(
        none.notifications[0].fingerprint.source,
        FingerprintSource::None
    ));
    let payload = valid(&route_with("    fingerprint: payload\n"));
    assert!(matches!(
        payload.notifications[0].fingerprint.source,
        FingerprintSource::Payload
    ));
}

#[test]
fn variables_are_substituted() {
    let text = BASE
        .replace("8081\" }", "8081\", headers: { X-Tag: \"a$${b}\" } }")
        .replace("127.0.0.1:8081", "127.0.0.1:${PORT}");
    let policy = valid(&text);
    let api = &policy.upstreams["api"];
    assert_eq!(api.authority.as_str(), "127.0.0.1:8081");
    assert_eq!(api.headers[0].0.as_str(), "x-tag");
    assert_eq!(api.headers[0].1.as_bytes(), b"a${b}");
    assert!(api.headers[0].1.is_sensitive());
}

#[test]
fn unset_variable_is_named() {
    let text = BASE.replace("http://127.0.0.1:8081", "http://${API_HOST}:${API_PORT}");
    let found = problems(&text);
    let messages: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(found.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("`API_HOST` is not set"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("`API_PORT` is not set"),
        "{messages:?}"
    );
    assert_eq!(found[0].line, 3);
}

#[test]
fn secret_values_never_appear_in_errors() {
    let text = "\
listen: \"${SECRET}\"
shutdown_grace: \"${SECRET}\"
state: { max_entities: \"${SECRET}\", snapshot_interval: \"1${SECRET}\" }
upstreams:
  mq: { url: \"http://${SECRET}@127.0.0.1:15672\", timeout: \"${SECRET}\" }
  api: { url: \"https://${SECRET}\", headers: { Authorization: \"${SECRET_LINE}\" } }
  web: { url: \"http://[${SECRET}]:80\" }
notifications:
  - name: \"${SECRET}\"
    match: { method: \"${SECRET}\", path: \"/a/x{${SECRET}}\" }
    upstream: \"${SECRET}\"
    format: \"${SECRET}\"
    pointers: { id: \"${SECRET}\" }
    entity: \"{${SECRET}\"
    fingerprint: { payload: {}, ignore: [\"${SECRET}\"] }
    duplicate_window: \"${SECRET}\"
    max_body: \"${SECRET}\"
    mode: \"${SECRET}\"
    suppressed_response: { status: \"${SECRET}\", content_type: \"${SECRET}\" }
";
    let err = parse(text, &env).unwrap_err();
    assert_eq!(
        err.0.len(),
        22,
        "expected one problem per value, got:\n{err}"
    );
    let rendered = err.to_string();
    let lowercase = rendered.to_lowercase();
    assert!(
        !lowercase.contains(&SECRET.to_lowercase()),
        "secret in:\n{rendered}"
    );
    assert!(!rendered.contains("Injected"), "secret in:\n{rendered}");
    assert!(rendered.contains("`${SECRET}` after substitution (value not shown)"));
}

#[test]
fn cloudevents_example_parses() {
    let text = include_str!("../deploy/examples/cloudevents.yaml");
    let policy = valid(text);
    let route = &policy.notifications[0];
    assert_eq!(route.format, Format::CloudEvents);
    assert_eq!(route.mode, RouteMode::Shadow);
    assert!(matches!(
        route.fingerprint.source,
        FingerprintSource::Payload
    ));
    assert_eq!(
        route.fingerprint.ignore,
        ["/meta/lastModified", "/meta/etag", "/emails/*/verifiedAt"]
    );
    assert_eq!(
        route.entity.to_string(),
        "directory/{tenant}/account/{subject}"
    );
    let sink = &policy.upstreams["sink"];
    assert_eq!(sink.base_path, "/events");
    assert_eq!(sink.headers[0].1.as_bytes(), b"Bearer token-123");
}

#[test]
fn rabbitmq_example_parses() {
    let text = include_str!("../deploy/examples/rabbitmq-publish.yaml");
    let policy = valid(text);
    let route = &policy.notifications[0];
    let Format::RabbitmqPublish(pointers) = &route.format else {
        panic!("format is {:?}", route.format);
    };
    assert_eq!(pointers.subject.as_deref(), Some("/personId"));
    let FingerprintSource::Lookup { upstream, path } = &route.fingerprint.source else {
        panic!("fingerprint is {:?}", route.fingerprint.source);
    };
    assert_eq!(upstream, "hr-api");
    assert_eq!(path.to_string(), "/v1/persons/{subject}");
    assert_eq!(route.max_body, 64 * 1024);
    assert_eq!(route.on_undecodable, OnUndecodable::Forward);
    assert_eq!(route.suppressed_response.status, http::StatusCode::OK);
    assert_eq!(
        route.suppressed_response.body.as_deref(),
        Some("{\"routed\":true}")
    );
    assert_eq!(policy.upstreams["hr-api"].base_path, "/hr");
}

#[test]
fn documented_example_parses() {
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
    let route = &policy.notifications[0];
    assert_eq!(route.suppressed_response.status, http::StatusCode::OK);
    assert_eq!(route.fingerprint.ignore.len(), 2);
    assert_eq!(
        policy.state.snapshot.as_deref(),
        Some(std::path::Path::new("/var/lib/ekko/state"))
    );
}

#[test]
fn example_without_its_variables_fails() {
    let text = include_str!("../deploy/examples/rabbitmq-publish.yaml");
    let err = parse(text, &|_| None).unwrap_err();
    let names: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        names,
        [
            "upstreams.mq.headers.Authorization",
            "upstreams.hr-api.headers.Authorization"
        ]
    );
}

#[test]
fn load_reads_policy_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, BASE).expect("write policy");
    let policy = ekko::policy::load(&path).expect("policy loads");
    assert_eq!(policy.notifications[0].name, "hr-person");

    let missing = ekko::policy::load(&dir.path().join("absent.yaml")).unwrap_err();
    assert_eq!(missing.0.len(), 1);
    assert!(missing.0[0].message.starts_with("cannot read policy file"));
}
