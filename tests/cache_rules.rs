//! Table tests for the RFC 9111, RFC 9110 and RFC 9211 rules of the lookup cache.

use std::time::Duration;

use ekko::lookup::rules::{
    age, cache_status, freshness_lifetime, if_none_match, normalise_query, not_storable,
    request_directives, response_directives, vary, CacheOutcome, RequestDirectives,
    ResponseDirectives, Vary, DELTA_SECONDS_MAX, STORABLE_STATUSES,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Builds a header map, appending so that repeated names become separate field lines.
fn headers(fields: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name is valid");
        let value = HeaderValue::from_str(value).expect("test header value is valid");
        map.append(name, value);
    }
    map
}

fn cache_control(lines: &[&str]) -> HeaderMap {
    let fields: Vec<(&str, &str)> = lines.iter().map(|line| ("cache-control", *line)).collect();
    headers(&fields)
}

/// One table row: a label, the `Cache-Control` field lines and the expected result.
type ResponseCase = (&'static str, &'static [&'static str], ResponseDirectives);

/// Asserts each field of the parsed directives on its own, so a failure names it.
fn assert_response_case((label, lines, expected): &ResponseCase) {
    let parsed = response_directives(&cache_control(lines));
    assert_eq!(
        parsed.no_store, expected.no_store,
        "{label}: no-store of {lines:?}"
    );
    assert_eq!(
        parsed.no_cache, expected.no_cache,
        "{label}: no-cache of {lines:?}"
    );
    assert_eq!(
        parsed.private, expected.private,
        "{label}: private of {lines:?}"
    );
    assert_eq!(
        parsed.public, expected.public,
        "{label}: public of {lines:?}"
    );
    assert_eq!(
        parsed.must_revalidate, expected.must_revalidate,
        "{label}: must-revalidate of {lines:?}"
    );
    assert_eq!(
        parsed.proxy_revalidate, expected.proxy_revalidate,
        "{label}: proxy-revalidate of {lines:?}"
    );
    assert_eq!(
        parsed.max_age, expected.max_age,
        "{label}: max-age of {lines:?}"
    );
    assert_eq!(
        parsed.s_maxage, expected.s_maxage,
        "{label}: s-maxage of {lines:?}"
    );
    assert_eq!(
        parsed.stale_if_error, expected.stale_if_error,
        "{label}: stale-if-error of {lines:?}"
    );
}

const NONE: ResponseDirectives = ResponseDirectives {
    no_store: false,
    no_cache: false,
    private: false,
    public: false,
    must_revalidate: false,
    proxy_revalidate: false,
    max_age: None,
    s_maxage: None,
    stale_if_error: None,
};

#[test]
fn response_directives_flags_parse() {
    let cases: &[ResponseCase] = &[
        (
            "no-store",
            &["no-store"],
            ResponseDirectives {
                no_store: true,
                ..NONE
            },
        ),
        (
            "no-cache",
            &["no-cache"],
            ResponseDirectives {
                no_cache: true,
                ..NONE
            },
        ),
        (
            "private",
            &["private"],
            ResponseDirectives {
                private: true,
                ..NONE
            },
        ),
        (
            "public",
            &["public"],
            ResponseDirectives {
                public: true,
                ..NONE
            },
        ),
        (
            "must-revalidate",
            &["must-revalidate"],
            ResponseDirectives {
                must_revalidate: true,
                ..NONE
            },
        ),
        (
            "proxy-revalidate",
            &["proxy-revalidate"],
            ResponseDirectives {
                proxy_revalidate: true,
                ..NONE
            },
        ),
        (
            "upper case name",
            &["NO-STORE"],
            ResponseDirectives {
                no_store: true,
                ..NONE
            },
        ),
        (
            "mixed case name",
            &["Private"],
            ResponseDirectives {
                private: true,
                ..NONE
            },
        ),
        (
            "spaces around list",
            &["  public ,  no-cache  "],
            ResponseDirectives {
                public: true,
                no_cache: true,
                ..NONE
            },
        ),
        (
            "tab separators",
            &["public,\tno-store"],
            ResponseDirectives {
                public: true,
                no_store: true,
                ..NONE
            },
        ),
        (
            "second field line",
            &["public", "no-store"],
            ResponseDirectives {
                public: true,
                no_store: true,
                ..NONE
            },
        ),
        (
            "quoted private list",
            &["private=\"set-cookie, x-user\""],
            ResponseDirectives {
                private: true,
                ..NONE
            },
        ),
        (
            "quoted no-cache list",
            &["no-cache=\"set-cookie\""],
            ResponseDirectives {
                no_cache: true,
                ..NONE
            },
        ),
        (
            "unquoted private field",
            &["private=set-cookie"],
            ResponseDirectives {
                private: true,
                ..NONE
            },
        ),
        (
            "quoted list hides commas",
            &["private=\"no-store, public\""],
            ResponseDirectives {
                private: true,
                ..NONE
            },
        ),
        (
            "empty members",
            &[",,public,,"],
            ResponseDirectives {
                public: true,
                ..NONE
            },
        ),
        (
            "unknown directives",
            &["immutable, x-ext=\"no-store\", foo"],
            NONE,
        ),
        ("absent", &[], NONE),
    ];
    for case in cases {
        assert_response_case(case);
    }
}

/// Expected directives with only the delta-seconds fields set.
fn seconds(max_age: Option<u64>, s_maxage: Option<u64>, stale: Option<u64>) -> ResponseDirectives {
    ResponseDirectives {
        max_age,
        s_maxage,
        stale_if_error: stale,
        ..NONE
    }
}

#[test]
fn response_directives_delta_seconds() {
    let max = DELTA_SECONDS_MAX;
    let cases: &[ResponseCase] = &[
        (
            "absent",
            &["public"],
            ResponseDirectives {
                public: true,
                ..NONE
            },
        ),
        ("plain", &["max-age=60"], seconds(Some(60), None, None)),
        (
            "upper case",
            &["MAX-AGE=60, S-MAXAGE=30"],
            seconds(Some(60), Some(30), None),
        ),
        ("quoted", &["max-age=\"60\""], seconds(Some(60), None, None)),
        (
            "whitespace around =",
            &["max-age = 60"],
            seconds(Some(60), None, None),
        ),
        (
            "leading zeros",
            &["max-age=007"],
            seconds(Some(7), None, None),
        ),
        ("s-maxage", &["s-maxage=30"], seconds(None, Some(30), None)),
        (
            "stale-if-error",
            &["stale-if-error=300"],
            seconds(None, None, Some(300)),
        ),
        (
            "smallest same line",
            &["max-age=60, max-age=10"],
            seconds(Some(10), None, None),
        ),
        (
            "smallest across lines",
            &["max-age=10", "max-age=60"],
            seconds(Some(10), None, None),
        ),
        (
            "conflicting s-maxage",
            &["s-maxage=5", "s-maxage=50"],
            seconds(None, Some(5), None),
        ),
        (
            "conflicting stale-if-error",
            &["stale-if-error=9, stale-if-error=90"],
            seconds(None, None, Some(9)),
        ),
        ("letters", &["max-age=abc"], seconds(Some(0), None, None)),
        ("negative", &["max-age=-5"], seconds(Some(0), None, None)),
        ("plus sign", &["max-age=+5"], seconds(Some(0), None, None)),
        ("fraction", &["max-age=1.5"], seconds(Some(0), None, None)),
        ("missing value", &["max-age"], seconds(Some(0), None, None)),
        ("empty value", &["max-age="], seconds(Some(0), None, None)),
        (
            "invalid beats valid",
            &["max-age=60, max-age=x"],
            seconds(Some(0), None, None),
        ),
        (
            "above 2^31",
            &["max-age=9999999999"],
            seconds(Some(max), None, None),
        ),
        (
            "beyond u64",
            &["s-maxage=999999999999999999999999"],
            seconds(None, Some(max), None),
        ),
    ];
    for case in cases {
        assert_response_case(case);
    }
}

/// One table row: a label, the request's fields and the expected directives.
type RequestCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    RequestDirectives,
);

#[test]
fn request_directives_parse() {
    let cases: &[RequestCase] = &[
        ("none", &[], RequestDirectives::default()),
        (
            "no-store",
            &[("cache-control", "No-Store")],
            RequestDirectives {
                no_store: true,
                ..Default::default()
            },
        ),
        (
            "no-cache",
            &[("cache-control", "no-cache")],
            RequestDirectives {
                no_cache: true,
                ..Default::default()
            },
        ),
        (
            "only-if-cached",
            &[("cache-control", " ONLY-IF-CACHED ")],
            RequestDirectives {
                only_if_cached: true,
                ..Default::default()
            },
        ),
        (
            "max-age across lines",
            &[
                ("cache-control", "max-age=30"),
                ("cache-control", "max-age=\"3\""),
            ],
            RequestDirectives {
                max_age: Some(3),
                ..Default::default()
            },
        ),
        (
            "invalid max-age",
            &[("cache-control", "max-age=soon")],
            RequestDirectives {
                max_age: Some(0),
                ..Default::default()
            },
        ),
        (
            "pragma without cache-control",
            &[("pragma", "no-cache")],
            RequestDirectives {
                no_cache: true,
                ..Default::default()
            },
        ),
        (
            "pragma upper case in list",
            &[("pragma", "x-trace=1, NO-CACHE")],
            RequestDirectives {
                no_cache: true,
                ..Default::default()
            },
        ),
        (
            "pragma ignored beside cache-control",
            &[("pragma", "no-cache"), ("cache-control", "max-age=5")],
            RequestDirectives {
                max_age: Some(5),
                ..Default::default()
            },
        ),
        (
            "other pragma",
            &[("pragma", "x-trace")],
            RequestDirectives::default(),
        ),
        (
            "response-only directive",
            &[("cache-control", "private, public")],
            RequestDirectives::default(),
        ),
    ];
    for (label, fields, expected) in cases {
        let parsed = request_directives(&headers(fields));
        assert_eq!(parsed.no_store, expected.no_store, "{label}: no-store");
        assert_eq!(parsed.no_cache, expected.no_cache, "{label}: no-cache");
        assert_eq!(parsed.max_age, expected.max_age, "{label}: max-age");
        assert_eq!(
            parsed.only_if_cached, expected.only_if_cached,
            "{label}: only-if-cached"
        );
    }
}

fn names(list: &[&'static str]) -> Vary {
    Vary::Headers(
        list.iter()
            .map(|name| HeaderName::from_static(name))
            .collect(),
    )
}

#[test]
fn vary_parses_names() {
    let cases: &[(&str, &[&str], Vary)] = &[
        ("absent", &[], Vary::None),
        ("empty line", &[""], Vary::None),
        ("one name", &["Accept"], names(&["accept"])),
        (
            "lowercased and sorted",
            &["User-Agent, Accept"],
            names(&["accept", "user-agent"]),
        ),
        (
            "deduplicated",
            &["accept, ACCEPT", "Accept"],
            names(&["accept"]),
        ),
        ("several lines", &["x-b", " x-a "], names(&["x-a", "x-b"])),
        ("star alone", &["*"], Vary::Any),
        ("star among names", &["accept, *, origin"], Vary::Any),
        ("star on second line", &["accept", "*"], Vary::Any),
        (
            "invalid names ignored",
            &["accept, bad name, (x)"],
            names(&["accept"]),
        ),
        ("only invalid names", &["bad name"], Vary::None),
    ];
    for (label, lines, expected) in cases {
        let fields: Vec<(&str, &str)> = lines.iter().map(|line| ("vary", *line)).collect();
        assert_eq!(vary(&headers(&fields)), *expected, "{label}: {lines:?}");
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("test status code is valid")
}

#[test]
fn storable_statuses_are_accepted() {
    let directives = ResponseDirectives::default();
    for code in STORABLE_STATUSES {
        let reason = not_storable(status(code), false, false, &directives, &Vary::None);
        assert_eq!(reason, None, "status {code} must be storable");
    }
}

#[test]
fn other_statuses_are_rejected() {
    let directives = ResponseDirectives::default();
    for code in [
        100, 201, 202, 206, 302, 303, 304, 307, 400, 401, 403, 429, 500, 502, 503,
    ] {
        let reason = not_storable(status(code), false, false, &directives, &Vary::None);
        assert_eq!(reason, Some("status"), "status {code} must not be storable");
    }
}

#[test]
fn not_storable_directive_reasons() {
    let ok = StatusCode::OK;
    let none = Vary::None;
    let no_store = ResponseDirectives {
        no_store: true,
        ..Default::default()
    };
    let private = ResponseDirectives {
        private: true,
        ..Default::default()
    };
    let plain = ResponseDirectives::default();

    assert_eq!(
        not_storable(ok, false, false, &no_store, &none),
        Some("no-store")
    );
    assert_eq!(
        not_storable(ok, false, true, &no_store, &none),
        Some("no-store")
    );
    assert_eq!(
        not_storable(ok, false, false, &plain, &Vary::Any),
        Some("vary-any")
    );
    assert_eq!(
        not_storable(ok, false, true, &plain, &Vary::Any),
        Some("vary-any")
    );
    assert_eq!(
        not_storable(ok, false, false, &private, &none),
        Some("private")
    );
    assert_eq!(not_storable(ok, false, true, &private, &none), None);
    assert_eq!(
        not_storable(ok, false, false, &plain, &names(&["accept"])),
        None
    );
    assert_eq!(not_storable(ok, false, false, &plain, &none), None);
}

#[test]
fn not_storable_reason_order() {
    let everything = ResponseDirectives {
        no_store: true,
        private: true,
        ..Default::default()
    };

    let partial = not_storable(
        StatusCode::PARTIAL_CONTENT,
        true,
        false,
        &everything,
        &Vary::Any,
    );
    let no_store = not_storable(StatusCode::OK, true, false, &everything, &Vary::Any);
    let without_no_store = ResponseDirectives {
        no_store: false,
        ..everything.clone()
    };
    let vary_any = not_storable(StatusCode::OK, true, false, &without_no_store, &Vary::Any);
    let private = not_storable(StatusCode::OK, true, false, &without_no_store, &Vary::None);

    assert_eq!(partial, Some("status"));
    assert_eq!(no_store, Some("no-store"));
    assert_eq!(vary_any, Some("vary-any"));
    assert_eq!(private, Some("private"));
}

#[test]
fn authorization_rule_by_scope() {
    let cases: &[(&str, ResponseDirectives, Option<&str>)] = &[
        (
            "plain",
            ResponseDirectives::default(),
            Some("authorization"),
        ),
        (
            "public",
            ResponseDirectives {
                public: true,
                ..Default::default()
            },
            None,
        ),
        (
            "s-maxage",
            ResponseDirectives {
                s_maxage: Some(0),
                ..Default::default()
            },
            None,
        ),
        (
            "must-revalidate",
            ResponseDirectives {
                must_revalidate: true,
                ..Default::default()
            },
            None,
        ),
        (
            "max-age only",
            ResponseDirectives {
                max_age: Some(60),
                ..Default::default()
            },
            Some("authorization"),
        ),
        (
            "proxy-revalidate only",
            ResponseDirectives {
                proxy_revalidate: true,
                ..Default::default()
            },
            Some("authorization"),
        ),
    ];
    for (label, directives, shared_expected) in cases {
        let shared = not_storable(StatusCode::OK, true, false, directives, &Vary::None);
        let private = not_storable(StatusCode::OK, true, true, directives, &Vary::None);
        let anonymous = not_storable(StatusCode::OK, false, false, directives, &Vary::None);
        assert_eq!(
            shared, *shared_expected,
            "{label}: shared scope with Authorization"
        );
        assert_eq!(private, None, "{label}: private scope with Authorization");
        assert_eq!(
            anonymous, None,
            "{label}: shared scope without Authorization"
        );
    }
}

#[test]
fn freshness_lifetime_cases() {
    let ttl = Duration::from_secs(60);
    let cases: &[(&str, ResponseDirectives, bool, u64)] = &[
        ("no directives", ResponseDirectives::default(), true, 60),
        (
            "shorter max-age",
            ResponseDirectives {
                max_age: Some(10),
                ..Default::default()
            },
            true,
            10,
        ),
        (
            "longer max-age",
            ResponseDirectives {
                max_age: Some(600),
                ..Default::default()
            },
            true,
            60,
        ),
        (
            "zero max-age",
            ResponseDirectives {
                max_age: Some(0),
                ..Default::default()
            },
            false,
            0,
        ),
        (
            "s-maxage wins when shared",
            ResponseDirectives {
                max_age: Some(10),
                s_maxage: Some(30),
                ..Default::default()
            },
            true,
            30,
        ),
        (
            "s-maxage ignored when private",
            ResponseDirectives {
                max_age: Some(10),
                s_maxage: Some(30),
                ..Default::default()
            },
            false,
            10,
        ),
        (
            "s-maxage alone when private",
            ResponseDirectives {
                s_maxage: Some(5),
                ..Default::default()
            },
            false,
            60,
        ),
        (
            "longer s-maxage",
            ResponseDirectives {
                s_maxage: Some(600),
                ..Default::default()
            },
            true,
            60,
        ),
        (
            "no-cache overrides",
            ResponseDirectives {
                no_cache: true,
                max_age: Some(30),
                ..Default::default()
            },
            true,
            0,
        ),
        (
            "saturated max-age",
            ResponseDirectives {
                max_age: Some(DELTA_SECONDS_MAX),
                ..Default::default()
            },
            true,
            60,
        ),
    ];
    for (label, directives, shared, expected) in cases {
        let lifetime = freshness_lifetime(directives, ttl, *shared);
        assert_eq!(lifetime, Duration::from_secs(*expected), "{label}");
    }
}

#[test]
fn age_parses_first_valid() {
    let cases: &[(&str, &[&str], u64)] = &[
        ("absent", &[], 0),
        ("plain", &["42"], 42),
        ("whitespace", &["  42 "], 42),
        ("invalid", &["soon"], 0),
        ("negative", &["-3"], 0),
        ("fraction", &["1.5"], 0),
        ("first of two lines", &["7", "9"], 7),
        ("skips invalid line", &["x", "9"], 9),
        ("first list member", &["5, 6"], 5),
        ("saturates", &["99999999999999999999999"], DELTA_SECONDS_MAX),
    ];
    for (label, lines, expected) in cases {
        let fields: Vec<(&str, &str)> = lines.iter().map(|line| ("age", *line)).collect();
        assert_eq!(age(&headers(&fields)), *expected, "{label}: {lines:?}");
    }
}

#[test]
fn if_none_match_comparison() {
    let cases: &[(&str, &[&str], &str, bool)] = &[
        ("absent", &[], "\"a\"", false),
        ("star", &["*"], "\"a\"", true),
        ("star with spaces", &[" * "], "W/\"a\"", true),
        ("strong equals strong", &["\"a\""], "\"a\"", true),
        ("weak equals strong", &["W/\"a\""], "\"a\"", true),
        ("strong equals weak", &["\"a\""], "W/\"a\"", true),
        ("weak equals weak", &["W/\"a\""], "W/\"a\"", true),
        ("different tag", &["\"b\""], "\"a\"", false),
        ("case matters", &["\"A\""], "\"a\"", false),
        ("in list", &["\"x\", W/\"a\" , \"y\""], "\"a\"", true),
        ("on second line", &["\"x\"", "\"a\""], "\"a\"", true),
        ("no match in list", &["\"x\", \"y\""], "\"a\"", false),
        ("comma inside tag", &["\"a,b\""], "\"a,b\"", true),
        ("comma tag not split", &["\"a,b\""], "\"a\"", false),
        ("empty tag", &["\"\""], "\"\"", true),
        ("lower case w prefix", &["w/\"a\""], "\"a\"", false),
        ("unquoted", &["a"], "\"a\"", false),
        ("missing comma", &["\"x\" \"a\""], "\"a\"", false),
        ("unterminated", &["\"a"], "\"a\"", false),
        ("space inside tag", &["\"a b\""], "\"a b\"", false),
        (
            "malformed line beside match",
            &["\"a\"", "junk"],
            "\"a\"",
            false,
        ),
        ("malformed stored tag", &["\"a\""], "a", false),
        ("stored list of tags", &["\"a\""], "\"a\", \"b\"", false),
        ("empty field", &[""], "\"a\"", false),
    ];
    for (label, lines, etag, expected) in cases {
        let fields: Vec<(&str, &str)> = lines.iter().map(|line| ("if-none-match", *line)).collect();
        let etag = HeaderValue::from_str(etag).expect("test etag is a valid header value");
        assert_eq!(
            if_none_match(&headers(&fields), &etag),
            *expected,
            "{label}: {lines:?}"
        );
    }
}

#[test]
fn normalise_query_orders_parameters() {
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("none", None, ""),
        ("empty", Some(""), ""),
        ("only separators", Some("&&&"), ""),
        ("single", Some("a=1"), "a=1"),
        ("by name", Some("b=2&a=1"), "a=1&b=2"),
        (
            "repeated names keep order",
            Some("a=2&a=10&a=1"),
            "a=2&a=10&a=1",
        ),
        ("empty parts dropped", Some("&b=2&&a=1&"), "a=1&b=2"),
        ("encoding kept", Some("q=a%20b&p=x+y"), "p=x+y&q=a%20b"),
        ("no decoding", Some("a=%41&a=B"), "a=%41&a=B"),
        (
            "repeated name order matters",
            Some("id=b1&id=s1"),
            "id=b1&id=s1",
        ),
        ("bare name keeps order", Some("a=&a"), "a=&a"),
        ("name is before =", Some("ab=1&a=2"), "a=2&ab=1"),
        ("value keeps =", Some("b=x=y&a=1"), "a=1&b=x=y"),
        ("duplicates kept", Some("a=1&a=1"), "a=1&a=1"),
    ];
    for (label, query, expected) in cases {
        assert_eq!(normalise_query(*query), *expected, "{label}: {query:?}");
    }
}

#[test]
fn normalise_query_is_order_independent() {
    assert_eq!(
        normalise_query(Some("b=2&a=1&c=3")),
        normalise_query(Some("c=3&a=1&b=2"))
    );
}

#[test]
fn cache_status_formats() {
    let cases: &[(&str, CacheOutcome, &str)] = &[
        (
            "fresh hit",
            CacheOutcome::Hit { ttl: 42 },
            "ekko; hit; ttl=42",
        ),
        (
            "stale hit",
            CacheOutcome::Stale { ttl: -3 },
            "ekko; hit; ttl=-3; detail=stale-if-error",
        ),
        (
            "stored miss",
            CacheOutcome::Miss {
                stored: true,
                collapsed: false,
            },
            "ekko; fwd=miss; stored",
        ),
        (
            "unstored miss",
            CacheOutcome::Miss {
                stored: false,
                collapsed: false,
            },
            "ekko; fwd=miss",
        ),
        (
            "collapsed stored miss",
            CacheOutcome::Miss {
                stored: true,
                collapsed: true,
            },
            "ekko; fwd=miss; stored; collapsed",
        ),
        (
            "collapsed unstored miss",
            CacheOutcome::Miss {
                stored: false,
                collapsed: true,
            },
            "ekko; fwd=miss; collapsed",
        ),
        (
            "bypass token",
            CacheOutcome::Bypass { detail: "no-store" },
            "ekko; fwd=bypass; detail=no-store",
        ),
        (
            "bypass not a token",
            CacheOutcome::Bypass {
                detail: "bad \"value\"",
            },
            "ekko; fwd=bypass; detail=\"bad \\\"value\\\"\"",
        ),
        (
            "bypass leading digit",
            CacheOutcome::Bypass { detail: "9x" },
            "ekko; fwd=bypass; detail=\"9x\"",
        ),
        (
            "bypass non-ascii",
            CacheOutcome::Bypass {
                detail: "caf\u{e9}\n",
            },
            "ekko; fwd=bypass; detail=\"caf\"",
        ),
        (
            "ttl clamped",
            CacheOutcome::Hit { ttl: i64::MAX },
            "ekko; hit; ttl=999999999999999",
        ),
        (
            "negative ttl clamped",
            CacheOutcome::Stale { ttl: i64::MIN },
            "ekko; hit; ttl=-999999999999999; detail=stale-if-error",
        ),
    ];
    for (label, outcome, expected) in cases {
        let value = cache_status(outcome);
        assert_eq!(value.to_str().ok(), Some(*expected), "{label}");
    }
}
