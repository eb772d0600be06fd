//! HTTP caching rules: RFC 9111 directives and storability, RFC 5861 stale-if-error,
//! RFC 9211 Cache-Status and validator comparison.

use std::time::Duration;

use http::header::{AGE, CACHE_CONTROL, IF_NONE_MATCH, PRAGMA, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Status codes whose responses this cache stores: the codes that RFC 9110 §15.1 lists as
/// heuristically cacheable, except 206. A cache without `Range` support must not store
/// partial content (RFC 9111 §3.3), and this one has none.
///
/// NOTE: RFC 9111 §3 also allows storing other codes when the response has explicit
/// freshness, such as a 302 with `max-age`. This cache does not store those.
pub const STORABLE_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Upper bound of a parsed delta-seconds value: 2^31 seconds, about 68 years. RFC 9111
/// §1.2.2 lets a cache use it for any larger value, which it effectively treats as infinity.
pub const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// Largest magnitude of a Structured Field Integer (RFC 8941 §3.3.1). `Cache-Status`
/// `ttl` values are clamped to it.
const SF_INTEGER_MAX: i64 = 999_999_999_999_999;

/// `Cache-Control` response directives that the cache acts on (RFC 9111 §5.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (unqualified or with field names: both mean revalidate).
    pub no_cache: bool,
    /// `private` (unqualified or with field names).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `stale-if-error` (RFC 5861), seconds.
    pub stale_if_error: Option<u64>,
}

/// Parses every `Cache-Control` field line of a response (RFC 9111 §5.2).
///
/// Directive names are case-insensitive and arguments may be tokens or quoted strings
/// (§5.2). Unknown directives are ignored. `no-cache` and `private` with a field-name
/// list count as unqualified, which is the stricter reading. A delta-seconds argument
/// that is missing or not all digits becomes 0, so the response is stale (§4.2.1), and
/// one above 2^31 saturates to 2^31 (§1.2.2). When a directive repeats, the smallest
/// value wins. §4.2.1 allows using the first occurrence or treating the response as
/// stale, and the smallest value never gives more freshness than the first.
pub fn response_directives(headers: &HeaderMap) -> ResponseDirectives {
    let mut parsed = ResponseDirectives::default();
    for directive in directives(headers, &CACHE_CONTROL) {
        let value = directive.value.as_deref();
        match directive.name.as_str() {
            "no-store" => parsed.no_store = true,
            "no-cache" => parsed.no_cache = true,
            "private" => parsed.private = true,
            "public" => parsed.public = true,
            "must-revalidate" => parsed.must_revalidate = true,
            "proxy-revalidate" => parsed.proxy_revalidate = true,
            "max-age" => keep_smallest(&mut parsed.max_age, delta_seconds(value)),
            "s-maxage" => keep_smallest(&mut parsed.s_maxage, delta_seconds(value)),
            "stale-if-error" => keep_smallest(&mut parsed.stale_if_error, delta_seconds(value)),
            _ => {}
        }
    }
    parsed
}

/// `Cache-Control` request directives (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `only-if-cached`.
    pub only_if_cached: bool,
}

/// Parses every `Cache-Control` field line of a request (RFC 9111 §5.2.1), with the
/// same syntax, number and repetition rules as [`response_directives`].
///
/// `Pragma: no-cache` sets `no_cache` only when the request has no `Cache-Control`
/// field at all, because a cache ignores `Pragma` when `Cache-Control` is present
/// (RFC 9111 §5.4).
pub fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let mut parsed = RequestDirectives::default();
    for directive in directives(headers, &CACHE_CONTROL) {
        let value = directive.value.as_deref();
        match directive.name.as_str() {
            "no-store" => parsed.no_store = true,
            "no-cache" => parsed.no_cache = true,
            "only-if-cached" => parsed.only_if_cached = true,
            "max-age" => keep_smallest(&mut parsed.max_age, delta_seconds(value)),
            _ => {}
        }
    }

    if !headers.contains_key(CACHE_CONTROL) {
        parsed.no_cache = directives(headers, &PRAGMA)
            .iter()
            .any(|directive| directive.name == "no-cache");
    }
    parsed
}

/// The response's `Vary` (RFC 9110 §12.5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary`.
    None,
    /// The listed request header names, lowercased, deduplicated, sorted.
    Headers(Vec<HeaderName>),
    /// `Vary: *`: never served from a cache.
    Any,
}

/// Parses every `Vary` field line (RFC 9110 §12.5.5).
///
/// A `*` member anywhere gives [`Vary::Any`]. Members that are not valid field names
/// are ignored, and when no valid name remains the result is [`Vary::None`].
pub fn vary(headers: &HeaderMap) -> Vary {
    let mut names = Vec::new();
    for line in headers.get_all(VARY) {
        for member in list_members(line.as_bytes()) {
            if member == b"*" {
                return Vary::Any;
            }
            if let Ok(name) = HeaderName::from_bytes(member) {
                names.push(name);
            }
        }
    }

    if names.is_empty() {
        return Vary::None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Vary::Headers(names)
}

/// Decides whether a response may be stored by this cache (RFC 9111 §3 and §3.5).
///
/// Returns `None` when it may be stored, or else the first reason that applies, checked
/// in this order: `status` (not in [`STORABLE_STATUSES`]), `no-store`, `vary-any`,
/// `private` and `authorization`. `request_authorized` is whether the request carried
/// `Authorization`. A request with `Authorization` is stored in shared scope only when
/// the response has `public`, `s-maxage` or `must-revalidate` (§3.5). In
/// `private_scope` ekko partitions entries by credential, so the `private` and
/// `authorization` rules do not apply there.
pub fn not_storable(
    status: StatusCode,
    request_authorized: bool,
    private_scope: bool,
    directives: &ResponseDirectives,
    vary: &Vary,
) -> Option<&'static str> {
    if !STORABLE_STATUSES.contains(&status.as_u16()) {
        return Some("status");
    }
    if directives.no_store {
        return Some("no-store");
    }
    if *vary == Vary::Any {
        return Some("vary-any");
    }
    if private_scope {
        return None;
    }

    if directives.private {
        return Some("private");
    }
    let shared_allowed =
        directives.public || directives.s_maxage.is_some() || directives.must_revalidate;
    if request_authorized && !shared_allowed {
        return Some("authorization");
    }
    None
}

/// Computes the freshness lifetime of a stored response (RFC 9111 §4.2.1).
///
/// Returns zero for `no-cache`, because every reuse needs revalidation (§5.2.2.4).
/// Otherwise it returns the route's `ttl`, shortened by `s-maxage` when `shared` and
/// present, or else by `max-age` when present. A longer upstream lifetime never extends
/// `ttl`.
pub fn freshness_lifetime(
    directives: &ResponseDirectives,
    ttl: Duration,
    shared: bool,
) -> Duration {
    if directives.no_cache {
        return Duration::ZERO;
    }

    let shared_max_age = directives.s_maxage.filter(|_| shared);
    match shared_max_age.or(directives.max_age) {
        Some(seconds) => ttl.min(Duration::from_secs(seconds)),
        None => ttl,
    }
}

/// Returns the upstream's `Age` in seconds (RFC 9111 §5.1): the first member across
/// the `Age` field lines that is a valid delta-seconds, saturated at 2^31. Returns 0
/// when there is no valid value.
pub fn age(headers: &HeaderMap) -> u64 {
    headers
        .get_all(AGE)
        .iter()
        .flat_map(|line| list_members(line.as_bytes()))
        .find_map(parse_delta_seconds)
        .unwrap_or(0)
}

/// Checks whether `If-None-Match` matches `etag` by weak comparison (RFC 9110 §13.1.2 and
/// §8.8.3.2): two entity-tags match when their opaque tags are equal, whether or not
/// either has the `W/` prefix.
///
/// A field line that is exactly `*` matches any `etag`. Every field line is otherwise a
/// comma-separated list of entity-tags. A malformed line, a malformed `etag` or an
/// absent header gives no match, so the caller sends the full response.
pub fn if_none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let lines = request.get_all(IF_NONE_MATCH);
    if lines.iter().any(|line| trim_ows(line.as_bytes()) == b"*") {
        return true;
    }

    let stored = match entity_tags(etag.as_bytes()).as_deref() {
        Some([single]) => *single,
        _ => return false,
    };
    let mut matched = false;
    for line in lines {
        match entity_tags(line.as_bytes()) {
            Some(tags) => matched |= tags.contains(&stored),
            None => return false,
        }
    }
    matched
}

/// Sorts query parameters by name, keeping their encoding, so `b=2&a=1` and `a=1&b=2`
/// share an entry.
///
/// Parameters are split on `&`, empty ones are dropped, and names are compared as raw
/// bytes without percent-decoding. The sort is stable: parameters that repeat a name keep
/// their order, because many servers read only the first of them, so `id=1&id=2` and
/// `id=2&id=1` are different requests. `None` or an empty query gives "".
pub fn normalise_query(query: Option<&str>) -> String {
    let mut parameters: Vec<(&str, Option<&str>)> = query
        .unwrap_or("")
        .split('&')
        .filter(|parameter| !parameter.is_empty())
        .map(|parameter| match parameter.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (parameter, None),
        })
        .collect();
    parameters.sort_by(|a, b| a.0.cmp(b.0));

    let joined: Vec<String> = parameters
        .into_iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name.to_owned(),
        })
        .collect();
    joined.join("&")
}

/// What the cache did, for the RFC 9211 `Cache-Status` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from the cache, fresh; `ttl` seconds of freshness left.
    Hit {
        /// Remaining freshness, seconds.
        ttl: i64,
    },
    /// Served stale because the upstream failed (`stale-if-error`).
    Stale {
        /// Remaining freshness, negative seconds.
        ttl: i64,
    },
    /// Fetched; `stored` says whether the answer was stored, `collapsed` whether it came
    /// from another request's fetch.
    Miss {
        /// Stored for later requests.
        stored: bool,
        /// Served from another request's fetch.
        collapsed: bool,
    },
    /// Not looked up in the cache; `detail` names why (`method`, `no-store`, ...).
    Bypass {
        /// Reason token.
        detail: &'static str,
    },
}

/// Formats the `Cache-Status` field value for this cache, named `ekko` (RFC 9211 §2).
///
/// The forms are `ekko; hit; ttl=42` for a fresh hit, and `ekko; hit; ttl=-3;
/// detail=stale-if-error` for a stale hit, because RFC 9211 marks staleness only by a
/// negative `ttl` (§2.4). A miss is `ekko; fwd=miss`, followed by `; stored` and
/// `; collapsed` when those hold. A bypass is `ekko; fwd=bypass; detail=<detail>`.
/// `ttl` is clamped to the Structured Field Integer range. A `detail` that is not a
/// valid token is written as a quoted string, without its non-printable characters.
pub fn cache_status(outcome: &CacheOutcome) -> HeaderValue {
    let mut value = String::from("ekko");
    match outcome {
        CacheOutcome::Hit { ttl } => {
            value.push_str(&format!("; hit; ttl={}", sf_integer(*ttl)));
        }
        CacheOutcome::Stale { ttl } => {
            value.push_str(&format!(
                "; hit; ttl={}; detail=stale-if-error",
                sf_integer(*ttl)
            ));
        }
        CacheOutcome::Miss { stored, collapsed } => {
            value.push_str("; fwd=miss");
            if *stored {
                value.push_str("; stored");
            }
            if *collapsed {
                value.push_str("; collapsed");
            }
        }
        CacheOutcome::Bypass { detail } => {
            value.push_str("; fwd=bypass; detail=");
            value.push_str(&sf_token_or_string(detail));
        }
    }

    // Every byte written above is printable ASCII, so the conversion cannot fail. The
    // fallback still names the cache rather than panicking in the response path.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("ekko"))
}

/// One `Cache-Control` or `Pragma` directive: its lowercased name and its argument,
/// with quoted-string escapes removed.
#[derive(Debug)]
struct Directive {
    name: String,
    value: Option<String>,
}

/// Collects the directives of every `field` line, skipping members whose name is not a
/// token (RFC 9110 §5.6.2).
fn directives(headers: &HeaderMap, field: &HeaderName) -> Vec<Directive> {
    let mut parsed = Vec::new();
    for line in headers.get_all(field) {
        for member in list_members(line.as_bytes()) {
            let (name, value) = match member.iter().position(|&byte| byte == b'=') {
                Some(at) => (trim_ows(&member[..at]), Some(trim_ows(&member[at + 1..]))),
                None => (member, None),
            };
            if name.is_empty() || !name.iter().all(|&byte| is_tchar(byte)) {
                continue;
            }
            parsed.push(Directive {
                name: String::from_utf8_lossy(name).to_ascii_lowercase(),
                value: value.map(unquote),
            });
        }
    }
    parsed
}

/// Splits one field line into list members (RFC 9110 §5.6.1): commas inside a quoted
/// string do not split, surrounding whitespace is trimmed and empty members are
/// dropped.
fn list_members(line: &[u8]) -> Vec<&[u8]> {
    let mut members = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (at, &byte) in line.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if in_quotes && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            in_quotes = !in_quotes;
        } else if byte == b',' && !in_quotes {
            members.push(trim_ows(&line[start..at]));
            start = at + 1;
        }
    }
    members.push(trim_ows(&line[start..]));
    members.retain(|member| !member.is_empty());
    members
}

/// Removes the quotes and backslash escapes of a quoted-string (RFC 9110 §5.6.4). A
/// token is returned unchanged.
fn unquote(value: &[u8]) -> String {
    let Some(inner) = value
        .strip_prefix(b"\"")
        .and_then(|rest| rest.strip_suffix(b"\""))
    else {
        return String::from_utf8_lossy(value).into_owned();
    };

    let mut unescaped = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => unescaped.extend(bytes.next()),
            _ => unescaped.push(byte),
        }
    }
    String::from_utf8_lossy(&unescaped).into_owned()
}

/// Reads a directive's delta-seconds argument, treating a missing or invalid one as 0.
fn delta_seconds(value: Option<&str>) -> u64 {
    value
        .and_then(|value| parse_delta_seconds(value.as_bytes()))
        .unwrap_or(0)
}

/// Parses `1*DIGIT` (RFC 9111 §1.2.2), saturating at [`DELTA_SECONDS_MAX`].
fn parse_delta_seconds(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut seconds: u64 = 0;
    for &digit in digits {
        seconds = seconds
            .saturating_mul(10)
            .saturating_add(u64::from(digit - b'0'));
    }
    Some(seconds.min(DELTA_SECONDS_MAX))
}

fn keep_smallest(slot: &mut Option<u64>, seconds: u64) {
    *slot = Some(slot.map_or(seconds, |current| current.min(seconds)));
}

/// Parses a comma-separated list of entity-tags (RFC 9110 §8.8.3) into their opaque
/// tags, quotes included and `W/` removed. Returns `None` when any member is malformed.
fn entity_tags(line: &[u8]) -> Option<Vec<&[u8]>> {
    let mut tags = Vec::new();
    let mut rest = line;
    loop {
        rest = skip_separators(rest);
        if rest.is_empty() {
            return Some(tags);
        }

        let (tag, after) = opaque_tag(rest.strip_prefix(b"W/").unwrap_or(rest))?;
        tags.push(tag);

        rest = trim_ows(after);
        if !rest.is_empty() && rest[0] != b',' {
            return None;
        }
    }
}

/// Splits `"etagc*"` off the front of `input`, returning the quoted opaque tag and the
/// remainder.
fn opaque_tag(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if input.first() != Some(&b'"') {
        return None;
    }
    let close = 1 + input[1..].iter().position(|&byte| byte == b'"')?;
    if !input[1..close].iter().all(|&byte| is_etagc(byte)) {
        return None;
    }
    Some(input.split_at(close + 1))
}

/// `etagc = %x21 / %x23-7E / obs-text` (RFC 9110 §8.8.3).
fn is_etagc(byte: u8) -> bool {
    byte == 0x21 || (0x23..=0x7E).contains(&byte) || byte >= 0x80
}

fn skip_separators(mut input: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b',', rest @ ..] = input {
        input = rest;
    }
    input
}

/// Trims optional whitespace, meaning spaces and tabs (RFC 9110 §5.6.3), from both ends.
fn trim_ows(mut input: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = input {
        input = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = input {
        input = rest;
    }
    input
}

/// `tchar` (RFC 9110 §5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn sf_integer(value: i64) -> i64 {
    value.clamp(-SF_INTEGER_MAX, SF_INTEGER_MAX)
}

/// Writes `text` as a Structured Field Token when it is one (RFC 8941 §3.3.4), or else
/// as a String (§3.3.3) that keeps only printable ASCII.
fn sf_token_or_string(text: &str) -> String {
    let bytes = text.as_bytes();
    let starts_right = bytes
        .first()
        .is_some_and(|&first| first.is_ascii_alphabetic() || first == b'*');
    let is_token = starts_right
        && bytes
            .iter()
            .all(|&byte| is_tchar(byte) || byte == b':' || byte == b'/');
    if is_token {
        return text.to_owned();
    }

    let mut quoted = String::from("\"");
    for character in text.chars().filter(|c| (' '..='~').contains(c)) {
        if character == '"' || character == '\\' {
            quoted.push('\\');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}
