//! Black-box tests of the lookup cache over real sockets on 127.0.0.1.

mod harness;

use harness::{Ekko, HttpClient, MockServer, Reply, SourceApi};
use http::Request;
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
