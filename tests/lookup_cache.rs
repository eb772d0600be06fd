//! Black-box tests of the lookup cache over real sockets on 127.0.0.1.

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{wait_until, Ekko, HttpClient, MockServer, Recorded, Reply, SourceApi};
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;

fn policy(queue: &str, source: &str, scope: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
  api: {{ url: "{source}", headers: {{ Authorization: "Bearer ekko-own" }} }}
notifications:
  - name: hr
    match: {{ path: "/publish" }}
    upstream: mq
    format: json
    pointers: {{ subject: /id }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: api, path: "/persons/{{subject}}" }}
lookups:
  - name: persons
    match: {{ path: "/persons/{{id}}" }}
    upstream: api
    entity: "hr/person/{{id}}"
    scope: {scope}
"#
    )
}

async fn get(client: &HttpClient, url: &str, token: &str) -> harness::Answer {
    let request = Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    client.send(request).await
}

#[tokio::test]
async fn hundred_consumers_after_change_cost_one_fetch() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("7", json!({ "name": "Ola" }));
    let ekko = Ekko::start(&policy(&queue.url(), &source.server.url(), "shared")).await;
    let client = HttpClient::default();

    // Each consumer's credential is authorised once, before the change.
    for consumer in 0..100 {
        get(&client, &ekko.url("/persons/7"), &format!("c{consumer}")).await;
    }
    source.put("7", json!({ "name": "Kari" }));
    let before = source.server.count();
    let notified = client
        .post(&ekko.url("/publish"), "application/json", r#"{"id":"7"}"#)
        .await;
    let mut answers = Vec::new();
    for consumer in 0..100 {
        answers.push(get(&client, &ekko.url("/persons/7"), &format!("c{consumer}")).await);
    }

    assert_eq!(notified.decision(), "forwarded");
    assert_eq!(source.server.count() - before, 1, "only ekko's own fetch");
    for answer in &answers {
        assert_eq!(answer.json()["name"], "Kari");
        assert!(answer.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("ekko; hit"));
    }
}

#[tokio::test]
async fn private_entries_are_not_shared_between_credentials() {
    let queue = MockServer::accepting().await;
    let source = MockServer::start(|req| {
        let who = req.headers["authorization"].to_str().unwrap().to_owned();
        Reply::Respond(200, json!({ "seen_by": who }).to_string())
    })
    .await;
    let ekko = Ekko::start(&policy(&queue.url(), &source.url(), "private")).await;
    let client = HttpClient::default();

    let a1 = get(&client, &ekko.url("/persons/1"), "alice").await;
    let b1 = get(&client, &ekko.url("/persons/1"), "bob").await;
    let a2 = get(&client, &ekko.url("/persons/1"), "alice").await;

    assert_eq!(a1.json()["seen_by"], "Bearer alice");
    assert_eq!(b1.json()["seen_by"], "Bearer bob");
    assert_eq!(a2.json()["seen_by"], "Bearer alice");
    assert!(a2.headers["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("ekko; hit"));
    assert_eq!(source.count(), 2);
}

#[tokio::test]
async fn change_invalidates_cached_copy() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("7", json!({ "name": "Ola" }));
    let ekko = Ekko::start(&policy(&queue.url(), &source.server.url(), "private")).await;
    let client = HttpClient::default();

    let first = get(&client, &ekko.url("/persons/7"), "c").await;
    source.put("7", json!({ "name": "Kari" }));
    client
        .post(&ekko.url("/publish"), "application/json", r#"{"id":"7"}"#)
        .await;
    let after = get(&client, &ekko.url("/persons/7"), "c").await;

    assert_eq!(first.json()["name"], "Ola");
    assert_eq!(after.json()["name"], "Kari");
}

// ---------------------------------------------------------------------------------------
// Helpers for the tests below.
// ---------------------------------------------------------------------------------------

/// The parts of a test policy that differ between tests.
#[derive(Clone, Copy)]
struct Setup {
    /// `private` or `shared`.
    scope: &'static str,
    /// Extra keys of the lookup route, such as `ttl: 1m`.
    route: &'static [&'static str],
    /// Extra keys of the `api` upstream, such as `timeout: 2s`.
    api: &'static [&'static str],
    /// Extra top-level YAML, such as a `cache` section.
    tail: &'static str,
}

const PRIVATE: Setup = Setup {
    scope: "private",
    route: &[],
    api: &[],
    tail: "",
};

const SHARED: Setup = Setup {
    scope: "shared",
    ..PRIVATE
};

/// ekko's own credential on the `api` upstream: an `Authorization` and an API key header.
const OWN_AUTHORIZATION: &str = "Bearer ekko-own";
const OWN_KEY: &str = "own-key";

/// Builds a policy with one notification route that fingerprints `hr/person/{id}` by a
/// lookup of `/persons/{id}`, and one lookup route `persons` on the same path.
fn policy_for(queue: &str, source: &str, setup: Setup) -> String {
    let api_extra: String = setup.api.iter().map(|key| format!(", {key}")).collect();
    let route_extra: String = setup
        .route
        .iter()
        .map(|key| format!("    {key}\n"))
        .collect();
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
  api: {{ url: "{source}", headers: {{ Authorization: "{OWN_AUTHORIZATION}", X-Ekko-Key: "{OWN_KEY}" }}{api_extra} }}
notifications:
  - name: hr
    match: {{ path: "/publish" }}
    upstream: mq
    format: json
    pointers: {{ subject: /id }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: api, path: "/persons/{{subject}}" }}
lookups:
  - name: persons
    match: {{ path: "/persons/{{id}}" }}
    upstream: api
    entity: "hr/person/{{id}}"
    scope: {scope}
{route_extra}{tail}
"#,
        scope = setup.scope,
        tail = setup.tail,
    )
}

/// Starts ekko in front of `source` with an accepting queue, which the caller keeps alive.
async fn start(setup: Setup, source: &MockServer) -> (MockServer, Ekko) {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy_for(&queue.url(), &source.url(), setup)).await;
    (queue, ekko)
}

/// A source API whose responses contain the person's current name and the `Authorization`
/// they were fetched with. It rejects the credentials in `rejected` with 403, and a PUT
/// replaces the name with the body's `name`.
struct EchoSource {
    server: MockServer,
    name: Arc<Mutex<String>>,
    rejected: Arc<Mutex<Vec<String>>>,
}

impl EchoSource {
    /// Starts the source with `name`, rejecting `Bearer mallory`.
    async fn start(name: &str) -> Self {
        let name = Arc::new(Mutex::new(name.to_owned()));
        let rejected = Arc::new(Mutex::new(vec!["Bearer mallory".to_owned()]));
        let server = MockServer::start(echo_handler(name.clone(), rejected.clone())).await;
        Self {
            server,
            name,
            rejected,
        }
    }

    fn set_name(&self, name: &str) {
        *self.name.lock().unwrap() = name.to_owned();
    }

    fn reject(&self, token: &str) {
        self.rejected
            .lock()
            .unwrap()
            .push(format!("Bearer {token}"));
    }

    /// Puts the echoing handler back after a test swapped it.
    fn echo(&self) {
        self.server
            .set_handler(echo_handler(self.name.clone(), self.rejected.clone()));
    }

    /// Number of requests that carried `Authorization: Bearer {token}`.
    fn fetches_by(&self, token: &str) -> usize {
        let expected = format!("Bearer {token}");
        self.server
            .received()
            .iter()
            .filter(|request| authorization(request) == expected)
            .count()
    }
}

fn echo_handler(
    name: Arc<Mutex<String>>,
    rejected: Arc<Mutex<Vec<String>>>,
) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |request| {
        let credential = authorization(request);
        if rejected.lock().unwrap().contains(&credential) {
            return Reply::Respond(403, json!({ "detail": "forbidden" }).to_string());
        }
        if request.method == Method::PUT {
            let new_name = request.json()["name"].as_str().unwrap().to_owned();
            *name.lock().unwrap() = new_name;
        }
        let body = json!({
            "name": *name.lock().unwrap(),
            "seen_by": credential,
            "path": request.path_and_query,
        });
        Reply::Respond(200, body.to_string())
    }
}

/// Returns the request's `Authorization`, or "" without one.
fn authorization(request: &Recorded) -> String {
    request
        .headers
        .get("authorization")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Sends a request, with `Authorization: Bearer {token}` when `token` is set.
async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> harness::Answer {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = Full::new(bytes::Bytes::from(body.to_owned()));
    client.send(builder.body(body).unwrap()).await
}

async fn get_with(
    client: &HttpClient,
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> harness::Answer {
    send(client, Method::GET, url, Some(token), headers, "").await
}

/// Starts a GET in its own task, so the test can act while it runs.
fn spawn_get(
    client: &HttpClient,
    url: String,
    token: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<harness::Answer> {
    let client = client.clone();
    tokio::spawn(async move { get_with(&client, &url, token, headers).await })
}

/// Posts a notification that person `id` changed.
async fn notify_change(client: &HttpClient, ekko: &Ekko, id: &str) -> harness::Answer {
    let body = json!({ "id": id }).to_string();
    client
        .post(&ekko.url("/publish"), "application/json", body)
        .await
}

fn header<'a>(answer: &'a harness::Answer, name: &str) -> &'a str {
    answer
        .headers
        .get(name)
        .map_or("", |value| value.to_str().unwrap())
}

fn cache_status(answer: &harness::Answer) -> &str {
    header(answer, "cache-status")
}

fn is_hit(answer: &harness::Answer) -> bool {
    cache_status(answer).starts_with("ekko; hit")
}

/// Returns the person's name in a JSON response body, or `None` when it has none.
fn name_in(answer: &harness::Answer) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|body| body["name"].as_str().map(str::to_owned))
}

/// Lets paused time pass, as a consumer would wait between requests.
async fn advance(seconds: u64) {
    tokio::time::advance(Duration::from_secs(seconds)).await;
}

// ---------------------------------------------------------------------------------------
// Credentials and scopes.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn private_scope_fetches_once_per_credential() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let tokens: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for token in &tokens {
        get(&client, &ekko.url("/persons/7"), token).await;
    }

    source.set_name("Kari");
    let before_change = source.server.count();
    let notified = notify_change(&client, &ekko, "7").await;
    let before_reads = source.server.count();
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..10 {
        for token in &tokens {
            let (client, url, token) = (client.clone(), ekko.url("/persons/7"), token.clone());
            reads.spawn(async move { (get(&client, &url, &token).await, token) });
        }
    }
    let answers = reads.join_all().await;

    assert_eq!(notified.decision(), "forwarded");
    assert_eq!(before_reads - before_change, 1, "ekko's own lookup");
    assert_eq!(source.fetches_by("ekko-own"), 1);
    assert_eq!(
        source.server.count() - before_reads,
        10,
        "one fetch per credential"
    );
    for token in &tokens {
        assert_eq!(source.fetches_by(token), 2, "{token}: before and after");
    }
    assert_eq!(answers.len(), 100);
    for (answer, token) in &answers {
        assert_eq!(answer.status, 200, "{token}");
        assert_eq!(answer.json()["name"], "Kari", "{token}");
        assert_eq!(answer.json()["seen_by"], format!("Bearer {token}"));
    }
}

#[tokio::test]
async fn shared_scope_withholds_body_from_rejected() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(SHARED, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");

    let mallory_first = get(&client, &url, "mallory").await;
    let alice_first = get(&client, &url, "alice").await;
    let alice_hit = get(&client, &url, "alice").await;
    let mallory_later = get(&client, &url, "mallory").await;
    let alice_after = get(&client, &url, "alice").await;
    let carol = get(&client, &url, "carol").await;

    assert_eq!(mallory_first.status, 403);
    assert_eq!(name_in(&mallory_first), None);
    assert_eq!(alice_first.status, 200);
    assert!(is_hit(&alice_hit), "{}", cache_status(&alice_hit));
    assert_eq!(mallory_later.status, 403, "after alice's answer was cached");
    assert_eq!(name_in(&mallory_later), None);
    assert!(!is_hit(&mallory_later), "{}", cache_status(&mallory_later));
    assert_eq!(source.fetches_by("mallory"), 2, "every mallory read asks");
    assert_eq!(alice_after.status, 200, "mallory's 403 is not cached");
    assert!(is_hit(&alice_after), "{}", cache_status(&alice_after));
    assert_eq!(carol.status, 200, "mallory's 403 is not cached");
    assert_eq!(name_in(&carol).as_deref(), Some("Ola"));
}

#[tokio::test]
async fn unseen_credential_is_authorized_once() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(SHARED, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    get(&client, &url, "alice").await;

    let bob_first = get(&client, &url, "bob").await;
    let bob_second = get(&client, &url, "bob").await;

    assert_eq!(bob_first.status, 200);
    assert_eq!(
        cache_status(&bob_first),
        "ekko; fwd=bypass; detail=authorize"
    );
    assert!(is_hit(&bob_second), "{}", cache_status(&bob_second));
    assert_eq!(name_in(&bob_second).as_deref(), Some("Ola"));
    assert_eq!(source.fetches_by("bob"), 1);
}

#[tokio::test(start_paused = true)]
async fn rejected_writer_does_not_answer_waiters() {
    let source = EchoSource::start("Ola").await;
    let setup = Setup {
        route: &["ttl: 1m", "authorize_ttl: 1h"],
        ..SHARED
    };
    let (_queue, ekko) = start(setup, &source.server).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "alice").await;
    get(&HttpClient::default(), &url, "bob").await;

    advance(61).await;
    let echo = echo_handler(source.name.clone(), source.rejected.clone());
    source
        .server
        .set_handler(move |request| match authorization(request).as_str() {
            "Bearer alice" => Reply::Delay(Duration::from_secs(1), 403, "{}".into()),
            _ => echo(request),
        });
    let client = HttpClient::default();
    let before = source.server.count();
    let alice = spawn_get(&client, url.clone(), "alice", &[]);
    wait_until(
        || source.server.count() > before,
        "alice's refetch reaches the source",
    )
    .await;
    let bob = get(&client, &url, "bob").await;
    let alice = alice.await.unwrap();

    assert_eq!(alice.status, 403);
    assert_eq!(
        cache_status(&bob),
        "ekko; fwd=bypass; detail=coalesce-wait",
        "bob waited for alice's fetch"
    );
    assert_eq!(bob.status, 200, "alice's 403 is not handed to waiters");
    assert_eq!(name_in(&bob).as_deref(), Some("Ola"));
}

#[tokio::test]
async fn per_resource_rejection_is_respected() {
    let source = MockServer::start(|request| {
        let credential = authorization(request);
        let person = request
            .path_and_query
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned();
        if credential == "Bearer alice" && person == "8" {
            return Reply::Respond(403, json!({ "detail": "forbidden" }).to_string());
        }
        Reply::Respond(
            200,
            json!({ "name": format!("person {person}") }).to_string(),
        )
    })
    .await;
    let per_resource = Setup {
        route: &["authorize_by: resource"],
        ..SHARED
    };
    let (_queue, ekko) = start(per_resource, &source).await;
    let client = HttpClient::default();
    let alice_seven = get(&client, &ekko.url("/persons/7"), "alice").await;
    let bob_eight = get(&client, &ekko.url("/persons/8"), "bob").await;

    let alice_eight = get(&client, &ekko.url("/persons/8"), "alice").await;

    assert_eq!(alice_seven.status, 200);
    assert_eq!(bob_eight.status, 200);
    assert_eq!(
        alice_eight.status, 403,
        "the source rejects alice for person 8"
    );
    assert_eq!(name_in(&alice_eight), None);
}

#[tokio::test(start_paused = true)]
async fn revoked_credential_loses_access_after_authorize_ttl() {
    let source = EchoSource::start("Ola").await;
    let setup = Setup {
        route: &["authorize_ttl: 60s"],
        ..SHARED
    };
    let (_queue, ekko) = start(setup, &source.server).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "alice").await;
    get(&HttpClient::default(), &url, "bob").await;

    source.reject("alice");
    advance(61).await;
    let client = HttpClient::default();
    let alice = get(&client, &url, "alice").await;
    let bob = get(&client, &url, "bob").await;

    assert_eq!(alice.status, 403);
    assert_eq!(name_in(&alice), None);
    assert_eq!(bob.status, 200);
    assert_eq!(name_in(&bob).as_deref(), Some("Ola"));
}

#[tokio::test]
async fn consumer_lookups_never_carry_own_credential() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();

    get(&client, &ekko.url("/persons/7"), "alice").await;
    send(&client, Method::GET, &ekko.url("/persons/8"), None, &[], "").await;
    let write = r#"{"name":"Kari"}"#;
    send(
        &client,
        Method::PUT,
        &ekko.url("/persons/9"),
        Some("alice"),
        &[],
        write,
    )
    .await;
    let consumer_requests = source.server.received();
    notify_change(&client, &ekko, "7").await;
    let own_requests = source.server.received()[consumer_requests.len()..].to_vec();

    assert_eq!(consumer_requests.len(), 3);
    assert_eq!(authorization(&consumer_requests[0]), "Bearer alice");
    assert_eq!(authorization(&consumer_requests[1]), "", "anonymous read");
    assert_eq!(authorization(&consumer_requests[2]), "Bearer alice");
    for request in &consumer_requests {
        let path = &request.path_and_query;
        assert!(request.headers.get("x-ekko-key").is_none(), "{path}");
    }
    assert_eq!(own_requests.len(), 1);
    assert_eq!(authorization(&own_requests[0]), OWN_AUTHORIZATION);
    assert_eq!(own_requests[0].headers["x-ekko-key"], OWN_KEY);
}

// ---------------------------------------------------------------------------------------
// Changes and in-flight fetches.
// ---------------------------------------------------------------------------------------

/// What consumers saw around a change forwarded while a slow fetch of the old state ran.
struct Race {
    notified: harness::Answer,
    /// Whether the slow fetch was still running when the notification returned.
    slow_was_pending: bool,
    slow: harness::Answer,
    /// A read sent after the change, while the slow fetch still ran.
    during: harness::Answer,
    /// Reads sent after the slow fetch finished, by its consumer and by another one.
    after: Vec<harness::Answer>,
}

/// Runs consumer `c`'s GET of person 7 while the source delays its response (the old name
/// Ola) by 5 s. Meanwhile the name becomes Kari and the change is forwarded. With
/// `warm_up`, `c` reads once before, and the slow GET carries `Cache-Control: no-cache`.
async fn race_slow_fetch_with_change(setup: Setup, warm_up: bool) -> Race {
    let source = EchoSource::start("Ola").await;
    let setup = Setup {
        api: &["timeout: 10s"],
        ..setup
    };
    let (_queue, ekko) = start(setup, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    let mut slow_headers: &'static [(&str, &str)] = &[];
    if warm_up {
        get(&client, &url, "c").await;
        slow_headers = &[("cache-control", "no-cache")];
    }

    let old = json!({ "name": "Ola", "seen_by": "Bearer c" }).to_string();
    source
        .server
        .set_handler(move |_| Reply::Delay(Duration::from_secs(5), 200, old.clone()));
    let before = source.server.count();
    let slow = spawn_get(&client, url.clone(), "c", slow_headers);
    wait_until(
        || source.server.count() > before,
        "the slow fetch reaches the source",
    )
    .await;
    source.echo();
    source.set_name("Kari");
    let notified = notify_change(&client, &ekko, "7").await;
    let slow_was_pending = !slow.is_finished();
    let during = spawn_get(&client, url.clone(), "c", &[]);
    let slow = slow.await.unwrap();
    let during = during.await.unwrap();
    let after = vec![get(&client, &url, "c").await, get(&client, &url, "d").await];
    Race {
        notified,
        slow_was_pending,
        slow,
        during,
        after,
    }
}

fn assert_no_old_body_after_change(race: &Race) {
    assert_eq!(race.notified.decision(), "forwarded");
    assert!(race.slow_was_pending, "the change overtook the slow fetch");
    assert_eq!(name_in(&race.slow).as_deref(), Some("Ola"), "slow answer");
    assert_eq!(name_in(&race.during).as_deref(), Some("Kari"), "during");
    for (index, answer) in race.after.iter().enumerate() {
        assert_eq!(answer.status, 200, "later read {index}");
        assert_eq!(
            name_in(answer).as_deref(),
            Some("Kari"),
            "later read {index}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn slow_private_fetch_is_not_stored() {
    let race = race_slow_fetch_with_change(PRIVATE, false).await;
    assert_no_old_body_after_change(&race);
}

#[tokio::test(start_paused = true)]
async fn slow_authorizing_fetch_is_not_stored() {
    let race = race_slow_fetch_with_change(SHARED, false).await;
    assert_no_old_body_after_change(&race);
}

#[tokio::test(start_paused = true)]
async fn slow_shared_refetch_is_not_stored() {
    let race = race_slow_fetch_with_change(SHARED, true).await;
    assert_no_old_body_after_change(&race);
}

#[tokio::test]
async fn write_passes_through_and_invalidates() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    get(&client, &url, "alice").await;

    let body = r#"{"name":"Kari"}"#;
    let headers = [("content-type", "application/json"), ("if-match", "\"v1\"")];
    let write = send(&client, Method::PUT, &url, Some("alice"), &headers, body).await;
    let received = source.server.received();
    let read = get(&client, &url, "alice").await;

    let put = &received[1];
    assert_eq!(put.method, Method::PUT);
    assert_eq!(authorization(put), "Bearer alice");
    assert_eq!(put.body, body);
    assert_eq!(
        put.headers["if-match"], "\"v1\"",
        "preconditions reach the source"
    );
    assert_eq!(write.status, 200);
    assert_eq!(cache_status(&write), "ekko; fwd=bypass; detail=method");
    assert_eq!(source.server.count(), 3, "the read after the write fetches");
    assert!(
        cache_status(&read).contains("fwd=miss"),
        "{}",
        cache_status(&read)
    );
    assert_eq!(name_in(&read).as_deref(), Some("Kari"));
}

// ---------------------------------------------------------------------------------------
// stale-if-error (RFC 5861).
// ---------------------------------------------------------------------------------------

const STALE_ROUTE: &[&str] = &["ttl: 1m", "stale_if_error: 1h"];

fn fail_with_500(source: &MockServer) {
    source.set_handler(|_| Reply::Respond(500, json!({ "detail": "down" }).to_string()));
}

#[tokio::test(start_paused = true)]
async fn stale_copy_covers_source_outage() {
    let source = EchoSource::start("Ola").await;
    let setup = Setup {
        route: STALE_ROUTE,
        ..PRIVATE
    };
    let (_queue, ekko) = start(setup, &source.server).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "c").await;

    advance(61).await;
    fail_with_500(&source.server);
    let before = source.server.count();
    let on_500 = get(&HttpClient::default(), &url, "c").await;
    let fetched = source.server.count() - before;
    source.server.set_handler(|_| Reply::Drop);
    let on_drop = get(&HttpClient::default(), &url, "c").await;

    assert_eq!(fetched, 1, "the expired entry is refetched first");
    assert_eq!(on_500.status, 200);
    assert_eq!(name_in(&on_500).as_deref(), Some("Ola"));
    assert!(
        cache_status(&on_500).contains("detail=stale-if-error"),
        "{}",
        cache_status(&on_500)
    );
    assert_eq!(on_drop.status, 200);
    assert_eq!(name_in(&on_drop).as_deref(), Some("Ola"));
    assert!(
        cache_status(&on_drop).contains("detail=stale-if-error"),
        "{}",
        cache_status(&on_drop)
    );
}

#[tokio::test(start_paused = true)]
async fn stale_copy_covers_coalesced_waiters() {
    let source = EchoSource::start("Ola").await;
    let setup = Setup {
        route: STALE_ROUTE,
        ..PRIVATE
    };
    let (_queue, ekko) = start(setup, &source.server).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "c").await;

    advance(61).await;
    let down = json!({ "detail": "down" }).to_string();
    source
        .server
        .set_handler(move |_| Reply::Delay(Duration::from_secs(1), 500, down.clone()));
    let client = HttpClient::default();
    let reads: Vec<_> = (0..2)
        .map(|_| spawn_get(&client, url.clone(), "c", &[]))
        .collect();
    let mut answers = Vec::new();
    for read in reads {
        answers.push(read.await.unwrap());
    }

    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", cache_status(answer));
        assert_eq!(name_in(answer).as_deref(), Some("Ola"));
        assert!(
            cache_status(answer).contains("detail=stale-if-error"),
            "{}",
            cache_status(answer)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stale_copy_expires_after_window() {
    let source = EchoSource::start("Ola").await;
    let setup = Setup {
        route: STALE_ROUTE,
        ..PRIVATE
    };
    let (_queue, ekko) = start(setup, &source.server).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "c").await;

    advance(60 + 3600 + 1).await;
    fail_with_500(&source.server);
    let on_500 = get(&HttpClient::default(), &url, "c").await;
    source.server.set_handler(|_| Reply::Drop);
    let on_drop = get(&HttpClient::default(), &url, "c").await;

    assert_eq!(on_500.status, 500, "the source's error is relayed");
    assert_eq!(name_in(&on_500), None);
    assert_eq!(on_drop.status, 502);
    assert_eq!(name_in(&on_drop), None);
}

/// Stores person 7 for consumer `c`, lets its TTL pass, takes the source down and forwards
/// a change (ekko's own lookup fails, so the notification fails open). Returns the
/// responses to `c`'s reads while the source returns 500 and then drops connections.
async fn read_after_change_during_outage(
    setup: Setup,
) -> (harness::Answer, harness::Answer, harness::Answer) {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(setup, &source.server).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "c").await;

    advance(61).await;
    fail_with_500(&source.server);
    let client = HttpClient::default();
    let notified = notify_change(&client, &ekko, "7").await;
    let on_500 = get(&client, &url, "c").await;
    source.server.set_handler(|_| Reply::Drop);
    let on_drop = get(&client, &url, "c").await;
    (notified, on_500, on_drop)
}

#[tokio::test(start_paused = true)]
async fn change_voids_private_stale_copy() {
    let setup = Setup {
        route: STALE_ROUTE,
        ..PRIVATE
    };
    let (notified, on_500, on_drop) = read_after_change_during_outage(setup).await;

    assert_eq!(notified.decision(), "forwarded");
    assert_eq!(on_500.status, 500);
    assert_eq!(name_in(&on_500), None);
    assert_eq!(on_drop.status, 502);
    assert_eq!(name_in(&on_drop), None);
}

#[tokio::test(start_paused = true)]
async fn change_voids_shared_stale_copy() {
    let setup = Setup {
        route: &["ttl: 1m", "stale_if_error: 1h", "authorize_ttl: 2h"],
        ..SHARED
    };
    let (notified, on_500, on_drop) = read_after_change_during_outage(setup).await;

    assert_eq!(notified.decision(), "forwarded");
    assert_eq!(on_500.status, 500);
    assert_eq!(name_in(&on_500), None);
    assert_eq!(on_drop.status, 502);
    assert_eq!(name_in(&on_drop), None);
}

// ---------------------------------------------------------------------------------------
// RFC 9111 storage and freshness.
// ---------------------------------------------------------------------------------------

/// Sends `reads` GETs of person 7 by consumer `c` to a source that adds `headers` to every
/// response. Returns the number of source fetches and the responses ekko sent.
async fn reads_with_response_headers(
    setup: Setup,
    headers: Vec<(&'static str, &'static str)>,
    reads: usize,
) -> (usize, Vec<harness::Answer>) {
    let source = MockServer::start_with_response_headers(headers, |_| {
        Reply::Respond(200, json!({ "name": "Ola" }).to_string())
    })
    .await;
    let (_queue, ekko) = start(setup, &source).await;
    let client = HttpClient::default();
    let mut answers = Vec::new();
    for _ in 0..reads {
        answers.push(get(&client, &ekko.url("/persons/7"), "c").await);
    }
    (source.count(), answers)
}

#[tokio::test]
async fn no_store_answer_is_never_stored() {
    let no_store = vec![("cache-control", "no-store")];
    for setup in [PRIVATE, SHARED] {
        let (fetches, answers) = reads_with_response_headers(setup, no_store.clone(), 3).await;

        assert_eq!(fetches, 3, "{} scope", setup.scope);
        for answer in &answers {
            assert_eq!(name_in(answer).as_deref(), Some("Ola"));
            assert!(!is_hit(answer), "{}", cache_status(answer));
        }
    }
}

#[tokio::test]
async fn private_answer_skips_shared_scope() {
    let private = vec![("cache-control", "private")];
    let (fetches, answers) = reads_with_response_headers(SHARED, private, 3).await;

    assert_eq!(fetches, 3);
    for answer in &answers {
        assert!(!is_hit(answer), "{}", cache_status(answer));
    }
}

#[tokio::test]
async fn private_answer_stored_in_private_scope() {
    let private = vec![("cache-control", "private")];
    let (fetches, answers) = reads_with_response_headers(PRIVATE, private, 2).await;

    assert_eq!(fetches, 1);
    assert!(is_hit(&answers[1]), "{}", cache_status(&answers[1]));
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let vary_any = vec![("vary", "*")];
    for setup in [PRIVATE, SHARED] {
        let (fetches, answers) = reads_with_response_headers(setup, vary_any.clone(), 3).await;

        assert_eq!(fetches, 3, "{} scope", setup.scope);
        for answer in &answers {
            assert!(!is_hit(answer), "{}", cache_status(answer));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn shorter_max_age_beats_route_ttl() {
    let source =
        MockServer::start_with_response_headers(vec![("cache-control", "max-age=5")], |_| {
            Reply::Respond(200, json!({ "name": "Ola" }).to_string())
        })
        .await;
    let (_queue, ekko) = start(PRIVATE, &source).await;
    let url = ekko.url("/persons/7");
    get(&HttpClient::default(), &url, "c").await;

    advance(4).await;
    let within = get(&HttpClient::default(), &url, "c").await;
    let fetches_within = source.count();
    advance(2).await;
    let past = get(&HttpClient::default(), &url, "c").await;

    assert_eq!(cache_status(&within), "ekko; hit; ttl=1");
    assert_eq!(fetches_within, 1);
    assert!(
        cache_status(&past).contains("fwd=miss"),
        "{}",
        cache_status(&past)
    );
    assert_eq!(source.count(), 2);
}

#[tokio::test]
async fn vary_accept_keeps_entry_per_value() {
    let source = MockServer::start_with_response_headers(vec![("vary", "accept")], |request| {
        let accept = request.headers["accept"].to_str().unwrap().to_owned();
        Reply::Respond(200, json!({ "accept": accept }).to_string())
    })
    .await;
    let (_queue, ekko) = start(PRIVATE, &source).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    let mut answers = Vec::new();
    for accept in [
        "application/json",
        "text/plain",
        "application/json",
        "text/plain",
    ] {
        answers.push((
            accept,
            get_with(&client, &url, "c", &[("accept", accept)]).await,
        ));
    }

    assert_eq!(source.count(), 2, "one fetch per Accept value");
    for (accept, answer) in &answers {
        assert_eq!(answer.json()["accept"], *accept);
    }
    assert!(is_hit(&answers[2].1), "{}", cache_status(&answers[2].1));
    assert!(is_hit(&answers[3].1), "{}", cache_status(&answers[3].1));
}

#[tokio::test]
async fn no_cache_request_refetches() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    get(&client, &url, "c").await;

    source.set_name("Kari");
    let refetched = get_with(&client, &url, "c", &[("cache-control", "no-cache")]).await;
    let next = get(&client, &url, "c").await;

    assert_eq!(source.server.count(), 2);
    assert!(
        cache_status(&refetched).contains("fwd=miss"),
        "{}",
        cache_status(&refetched)
    );
    assert_eq!(name_in(&refetched).as_deref(), Some("Kari"));
    assert!(is_hit(&next), "{}", cache_status(&next));
    assert_eq!(
        name_in(&next).as_deref(),
        Some("Kari"),
        "the refetch was stored"
    );
}

#[tokio::test]
async fn only_if_cached_without_entry_is_504() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    let only_if_cached = [("cache-control", "only-if-cached")];

    let empty = get_with(&client, &url, "c", &only_if_cached).await;
    let fetches_for_empty = source.server.count();
    get(&client, &url, "c").await;
    let stored = get_with(&client, &url, "c", &only_if_cached).await;

    assert_eq!(empty.status, 504);
    assert_eq!(fetches_for_empty, 0);
    assert_eq!(stored.status, 200);
    assert!(is_hit(&stored), "{}", cache_status(&stored));
}

#[tokio::test]
async fn only_if_cached_never_contacts_source() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(SHARED, &source.server).await;
    let client = HttpClient::default();
    let only_if_cached = [("cache-control", "only-if-cached")];

    let answer = get_with(&client, &ekko.url("/persons/7"), "c", &only_if_cached).await;

    assert_eq!(answer.status, 504);
    assert_eq!(source.server.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn age_grows_on_hits() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let url = ekko.url("/persons/7");
    let stored = get(&HttpClient::default(), &url, "c").await;

    advance(10).await;
    let after_10 = get(&HttpClient::default(), &url, "c").await;
    advance(20).await;
    let after_30 = get(&HttpClient::default(), &url, "c").await;

    assert_eq!(header(&stored, "age"), "0");
    assert!(is_hit(&after_10), "{}", cache_status(&after_10));
    assert_eq!(header(&after_10, "age"), "10");
    assert_eq!(header(&after_30, "age"), "30");
}

// ---------------------------------------------------------------------------------------
// Validators (RFC 9110 §8.8.3, §13.1.2).
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn weak_etag_added_and_revalidated() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");

    let full = get(&client, &url, "c").await;
    let etag = header(&full, "etag").to_owned();
    let revalidated = get_with(&client, &url, "c", &[("if-none-match", &etag)]).await;

    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(revalidated.status, 304);
    assert_eq!(header(&revalidated, "etag"), etag);
    assert!(is_hit(&revalidated), "{}", cache_status(&revalidated));
    assert!(revalidated.body.is_empty());
    assert_eq!(source.server.count(), 1);
}

#[tokio::test]
async fn upstream_etag_is_preserved() {
    let source = MockServer::start_with_response_headers(vec![("etag", "\"v1\"")], |_| {
        Reply::Respond(200, json!({ "name": "Ola" }).to_string())
    })
    .await;
    let (_queue, ekko) = start(PRIVATE, &source).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");

    let first = get_with(&client, &url, "c", &[("if-none-match", "\"v1\"")]).await;
    let other = get_with(&client, &url, "c", &[("if-none-match", "\"v0\"")]).await;

    assert!(source.received()[0].headers.get("if-none-match").is_none());
    assert_eq!(first.status, 304);
    assert_eq!(header(&first, "etag"), "\"v1\"");
    assert_eq!(other.status, 200);
    assert_eq!(header(&other, "etag"), "\"v1\"");
    assert_eq!(name_in(&other).as_deref(), Some("Ola"));
}

// ---------------------------------------------------------------------------------------
// Coalescing.
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_fetch() {
    let source = MockServer::start(|_| {
        Reply::Delay(
            Duration::from_secs(1),
            200,
            json!({ "name": "Ola" }).to_string(),
        )
    })
    .await;
    let (_queue, ekko) = start(PRIVATE, &source).await;
    let client = HttpClient::default();

    let reads: Vec<_> = (0..50)
        .map(|_| spawn_get(&client, ekko.url("/persons/7"), "c", &[]))
        .collect();
    let mut answers = Vec::new();
    for read in reads {
        answers.push(read.await.unwrap());
    }

    assert_eq!(source.count(), 1);
    for answer in &answers {
        assert_eq!(name_in(answer).as_deref(), Some("Ola"));
    }
    let collapsed = answers
        .iter()
        .filter(|answer| cache_status(answer).contains("collapsed"))
        .count();
    assert_eq!(collapsed, 49, "every request but the writer's");
}

#[tokio::test(start_paused = true)]
async fn hung_writer_releases_waiter_after_timeout() {
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let source = MockServer::start(move |_| {
        let body = json!({ "name": "Ola" }).to_string();
        match counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Reply::Delay(Duration::from_secs(60), 200, body),
            _ => Reply::Respond(200, body),
        }
    })
    .await;
    let setup = Setup {
        route: &["waiter_timeout: 1s"],
        api: &["timeout: 2s"],
        ..PRIVATE
    };
    let (_queue, ekko) = start(setup, &source).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");

    let started = tokio::time::Instant::now();
    let writer = spawn_get(&client, url.clone(), "c", &[]);
    wait_until(
        || source.count() == 1,
        "the writer's fetch reaches the source",
    )
    .await;
    let waiter = get(&client, &url, "c").await;
    let waited = started.elapsed();
    let writer = writer.await.unwrap();

    assert_eq!(waiter.status, 200);
    assert_eq!(name_in(&waiter).as_deref(), Some("Ola"));
    assert_eq!(
        cache_status(&waiter),
        "ekko; fwd=bypass; detail=coalesce-wait"
    );
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(writer.status, 504, "the writer's own fetch timed out");
}

// ---------------------------------------------------------------------------------------
// Byte bound and admin API.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cache_stays_within_max_bytes() {
    let source = MockServer::start(|request| {
        let body = json!({ "path": request.path_and_query, "pad": "x".repeat(1000) });
        Reply::Respond(200, body.to_string())
    })
    .await;
    let setup = Setup {
        tail: "cache: { max_bytes: 2MiB }",
        ..PRIVATE
    };
    let (_queue, ekko) = start(setup, &source).await;
    let client = HttpClient::default();

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (client, base) = (client.clone(), ekko.url("/persons/"));
        workers.spawn(async move {
            for id in (worker..10_000).step_by(8) {
                let answer = get(&client, &format!("{base}{id}"), "c").await;
                assert_eq!(answer.status, 200, "person {id}");
            }
        });
    }
    workers.join_all().await;
    let bytes = ekko.metric("ekko_cache_bytes").await;
    let evictions = ekko.metric("ekko_cache_evictions_total").await;
    let summary = HttpClient::default()
        .get(&ekko.admin_url("/admin/cache"))
        .await
        .json();

    assert_eq!(source.count(), 10_000);
    assert!(bytes > 0.0, "ekko_cache_bytes is reported");
    assert!(bytes <= (2 << 20) as f64, "{bytes}");
    assert!(evictions > 0.0, "{evictions}");
    assert_eq!(summary["bytes"].as_f64().unwrap(), bytes);
    assert!(summary["entries"].as_u64().unwrap() < 10_000);
}

#[tokio::test]
async fn admin_cache_reports_route_summary() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    get(&client, &ekko.url("/persons/7"), "c").await;
    get(&client, &ekko.url("/persons/7"), "c").await;
    get(&client, &ekko.url("/persons/8"), "c").await;

    let answer = client.get(&ekko.admin_url("/admin/cache")).await;
    let summary = answer.json();
    let route = &summary["routes"][0];

    assert_eq!(answer.status, 200);
    assert_eq!(summary["entries"], 2);
    assert_eq!(route["route"], "persons");
    assert_eq!(route["entries"], 2);
    assert!(route["bytes"].as_u64().unwrap() > 0);
    assert_eq!(route["bytes"], summary["bytes"]);
    assert_eq!(route["requests"], 3);
    assert_eq!(route["hits"], 1);
    assert_eq!(route["hit_ratio"], 0.333);
}

async fn purge(client: &HttpClient, ekko: &Ekko, query: &str) -> harness::Answer {
    let url = ekko.admin_url(&format!("/admin/cache/purge{query}"));
    send(client, Method::POST, &url, None, &[], "").await
}

#[tokio::test]
async fn admin_purge_by_entity_forces_fetch() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    get(&client, &ekko.url("/persons/7"), "c").await;
    get(&client, &ekko.url("/persons/7"), "d").await;
    get(&client, &ekko.url("/persons/8"), "c").await;

    let purged = purge(&client, &ekko, "?entity=hr%2Fperson%2F7").await;
    let before = source.server.count();
    let seven = get(&client, &ekko.url("/persons/7"), "c").await;
    let eight = get(&client, &ekko.url("/persons/8"), "c").await;

    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["removed"], 2, "both credentials' entries");
    assert_eq!(source.server.count() - before, 1);
    assert!(
        cache_status(&seven).contains("fwd=miss"),
        "{}",
        cache_status(&seven)
    );
    assert!(is_hit(&eight), "{}", cache_status(&eight));
}

#[tokio::test]
async fn admin_purge_by_path_forces_fetch() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    get(&client, &ekko.url("/persons/7"), "c").await;
    get(&client, &ekko.url("/persons/8"), "c").await;

    let purged = purge(&client, &ekko, "?path=%2Fpersons%2F8").await;
    let seven = get(&client, &ekko.url("/persons/7"), "c").await;
    let eight = get(&client, &ekko.url("/persons/8"), "c").await;

    assert_eq!(purged.status, 200);
    assert_eq!(purged.json()["removed"], 1);
    assert!(is_hit(&seven), "{}", cache_status(&seven));
    assert!(
        cache_status(&eight).contains("fwd=miss"),
        "{}",
        cache_status(&eight)
    );
    assert_eq!(source.server.count(), 3);
}

#[tokio::test]
async fn admin_purge_rejects_bad_requests() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();

    let wrong_method = client
        .get(&ekko.admin_url("/admin/cache/purge?entity=hr%2Fperson%2F7"))
        .await;
    let post_summary = send(
        &client,
        Method::POST,
        &ekko.admin_url("/admin/cache"),
        None,
        &[],
        "",
    )
    .await;
    let missing = purge(&client, &ekko, "").await;
    let unknown = purge(&client, &ekko, "?route=persons").await;

    assert_eq!(wrong_method.status, 405);
    assert_eq!(header(&wrong_method, "allow"), "POST");
    assert_eq!(post_summary.status, 405);
    assert_eq!(missing.status, 400);
    assert_eq!(unknown.status, 400);
}

// ---------------------------------------------------------------------------------------
// HEAD.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn head_is_served_from_get_entry() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");
    let full = get(&client, &url, "c").await;

    let head = send(&client, Method::HEAD, &url, Some("c"), &[], "").await;

    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), full.body.len().to_string());
    assert!(is_hit(&head), "{}", cache_status(&head));
    assert_eq!(source.server.count(), 1);
}

#[tokio::test]
async fn head_miss_stores_entry_for_get() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    let url = ekko.url("/persons/7");

    let head = send(&client, Method::HEAD, &url, Some("c"), &[], "").await;
    let full = get(&client, &url, "c").await;

    assert_eq!(source.server.received()[0].method, Method::GET);
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), full.body.len().to_string());
    assert!(is_hit(&full), "{}", cache_status(&full));
    assert_eq!(name_in(&full).as_deref(), Some("Ola"));
    assert_eq!(source.server.count(), 1);
}

#[tokio::test]
async fn cookie_setting_answer_is_not_shared() {
    let cookie = vec![("set-cookie", "session=secret")];
    let (shared_fetches, _) = reads_with_response_headers(SHARED, cookie.clone(), 3).await;
    let (private_fetches, _) = reads_with_response_headers(PRIVATE, cookie, 3).await;

    // Shared: an authorising read, then two reads that may not use a cookie-bearing entry.
    assert_eq!(shared_fetches, 3);
    assert_eq!(private_fetches, 1);
}

#[tokio::test]
async fn rejected_write_keeps_cached_copy() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(PRIVATE, &source.server).await;
    let client = HttpClient::default();
    get(&client, &ekko.url("/persons/7"), "c").await;
    source
        .server
        .set_handler(|_| Reply::Respond(501, "{}".into()));

    let write = send(
        &client,
        Method::DELETE,
        &ekko.url("/persons/7"),
        Some("c"),
        &[],
        "",
    )
    .await;
    source.echo();
    let read = get(&client, &ekko.url("/persons/7"), "c").await;

    assert_eq!(write.status, 501);
    assert!(is_hit(&read), "{}", cache_status(&read));
}

#[tokio::test]
async fn one_refused_request_keeps_cache_on() {
    let source = EchoSource::start("Ola").await;
    let (_queue, ekko) = start(SHARED, &source.server).await;
    let client = HttpClient::default();
    get(&client, &ekko.url("/persons/7"), "c").await;
    source
        .server
        .set_handler(|_| Reply::Respond(429, "{}".into()));

    let refreshing = get_with(
        &client,
        &ekko.url("/persons/7"),
        "c",
        &[("cache-control", "no-cache")],
    )
    .await;
    source.echo();
    let read = get(&client, &ekko.url("/persons/7"), "c").await;

    assert_eq!(refreshing.status, 429);
    assert!(is_hit(&read), "{}", cache_status(&read));
}

#[tokio::test]
async fn not_found_entry_ignores_if_none_match() {
    let source = MockServer::start(|_| Reply::Respond(404, "{}".into())).await;
    let (_queue, ekko) = start(PRIVATE, &source).await;
    let client = HttpClient::default();
    get(&client, &ekko.url("/persons/9"), "c").await;

    let conditional = get_with(
        &client,
        &ekko.url("/persons/9"),
        "c",
        &[("if-none-match", "*")],
    )
    .await;

    assert_eq!(conditional.status, 404);
}

#[tokio::test]
async fn repeated_query_names_keep_their_order() {
    let source = MockServer::start(|request| {
        let first = request
            .path_and_query
            .split("id=")
            .nth(1)
            .unwrap_or("")
            .to_owned();
        Reply::Respond(
            200,
            json!({ "first": first.trim_end_matches('&') }).to_string(),
        )
    })
    .await;
    let (_queue, ekko) = start(PRIVATE, &source).await;
    let client = HttpClient::default();

    let one = get(&client, &ekko.url("/persons/7?id=a&id=b"), "c").await;
    let other = get(&client, &ekko.url("/persons/7?id=b&id=a"), "c").await;

    assert_eq!(one.json()["first"], "a");
    assert_eq!(other.json()["first"], "b");
}
