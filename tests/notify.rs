//! Black-box tests of the notification path over real sockets on 127.0.0.1.

mod harness;

use std::time::Duration;

use harness::{closed_port, cloudevent, Ekko, HttpClient, MockServer, Reply, SourceApi, CE_JSON};
use serde_json::json;

fn payload_policy(queue: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}", timeout: 2s }}
notifications:
  - name: hr
    match: {{ path: "/events" }}
    upstream: mq
    format: cloudevents
    entity: "hr/person/{{subject}}"
    fingerprint:
      payload: {{}}
      ignore: ["/meta/lastModified"]
"#
    )
}

fn person(name: &str, modified: &str) -> serde_json::Value {
    json!({ "id": "123", "name": name, "meta": { "lastModified": modified } })
}

#[tokio::test]
async fn unchanged_state_is_suppressed() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let client = HttpClient::default();

    let first = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "123", person("Ola", "2026-01-01")),
        )
        .await;
    let resave = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e2", "123", person("Ola", "2026-01-02")),
        )
        .await;

    assert_eq!(first.status, 200);
    assert_eq!(first.decision(), "forwarded");
    assert_eq!(resave.status, 202);
    assert_eq!(resave.decision(), "unchanged");
    assert_eq!(resave.json()["entity"], "hr/person/123");
    assert_eq!(queue.count(), 1);
    assert_eq!(
        ekko.metric(r#"ekko_notifications_total{route="hr",decision="unchanged"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn real_change_is_forwarded_with_original_body() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let client = HttpClient::default();
    let second = cloudevent("e2", "123", person("Kari", "2026-01-02"));

    client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "123", person("Ola", "2026-01-01")),
        )
        .await;
    let answer = client
        .post(&ekko.url("/events"), CE_JSON, second.clone())
        .await;

    assert_eq!(answer.decision(), "forwarded");
    let received = queue.received();
    assert_eq!(received.len(), 2);
    let expected = second.replacen('{', r#"{"ekkohops":1,"#, 1);
    assert_eq!(received[1].body, expected.as_bytes());
    assert_eq!(received[1].headers["ekko-hops"], "1");
    assert_eq!(received[1].path_and_query, "/events");
}

#[tokio::test]
async fn repeated_event_id_is_duplicate() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let client = HttpClient::default();
    let event = cloudevent("e1", "123", person("Ola", "2026-01-01"));

    client
        .post(&ekko.url("/events"), CE_JSON, event.clone())
        .await;
    let again = client.post(&ekko.url("/events"), CE_JSON, event).await;

    assert_eq!(again.decision(), "duplicate");
    assert_eq!(queue.count(), 1);
}

#[tokio::test]
async fn retry_after_failed_forward_is_forwarded() {
    let queue = MockServer::start(|_| Reply::Drop).await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let client = HttpClient::default();
    let event = cloudevent("e1", "123", person("Ola", "2026-01-01"));

    let failed = client
        .post(&ekko.url("/events"), CE_JSON, event.clone())
        .await;
    queue.set_handler(|_| Reply::Respond(200, "{}".into()));
    let retry = client.post(&ekko.url("/events"), CE_JSON, event).await;

    assert_eq!(failed.status, 502);
    assert_eq!(failed.json()["error"], "upstream_unavailable");
    assert_eq!(retry.status, 200);
    assert_eq!(retry.decision(), "forwarded");
}

#[tokio::test]
async fn upstream_error_status_commits_nothing() {
    let queue = MockServer::start(|_| Reply::Respond(500, r#"{"error":"boom"}"#.into())).await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let client = HttpClient::default();

    let first = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "123", person("Ola", "1")),
        )
        .await;
    let second = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e2", "123", person("Ola", "2")),
        )
        .await;

    assert_eq!(first.status, 500);
    assert_eq!(second.status, 500);
    assert_eq!(second.decision(), "forwarded");
    assert_eq!(queue.count(), 2);
}

#[tokio::test]
async fn refused_connection_gives_502() {
    let closed = closed_port().await;
    let ekko = Ekko::start(&payload_policy(&format!("http://{closed}"))).await;

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", json!({})),
        )
        .await;

    assert_eq!(answer.status, 502);
    assert!(answer.json()["message"].as_str().unwrap().contains("mq"));
}

#[tokio::test(start_paused = true)]
async fn slow_upstream_gives_504() {
    let queue =
        MockServer::start(|_| Reply::Delay(Duration::from_secs(60), 200, "{}".into())).await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", json!({})),
        )
        .await;

    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["error"], "upstream_timeout");
}

/// Sends notification 1 and drops it after 100 ms, while `queue` delays its reply by one
/// second, then waits until the upstream has replied and returns the answer to notification 2.
async fn abandon_then_resend<F, Fut>(queue: &MockServer, send: F) -> harness::Answer
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = harness::Answer>,
{
    assert!(
        tokio::time::timeout(Duration::from_millis(100), send(1))
            .await
            .is_err(),
        "the upstream replies after one second"
    );
    harness::wait_until(|| queue.count() == 1, "the upstream received the forward").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(2).await
}

#[tokio::test(start_paused = true)]
async fn producer_disconnect_still_commits_forward() {
    let queue = MockServer::start(|_| Reply::Delay(Duration::from_secs(1), 200, "{}".into())).await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let (client, url) = (HttpClient::default(), ekko.url("/events"));

    // Both notifications carry the same state; only the masked timestamp differs.
    let answer = abandon_then_resend(&queue, |n| {
        let body = cloudevent(&format!("e{n}"), "1", person("Ada", &format!("t{n}")));
        client.post(&url, CE_JSON, body)
    })
    .await;

    assert_eq!(
        answer.decision(),
        "unchanged",
        "the forward the upstream took was committed although its producer left"
    );
    assert_eq!(queue.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn get_producer_disconnect_still_commits() {
    let queue = MockServer::start(|_| Reply::Delay(Duration::from_secs(1), 200, "{}".into())).await;
    let policy = format!(
        r#"
upstreams:
  mq: {{ url: "{}", timeout: 5s }}
notifications:
  - name: hook
    match: {{ method: GET, path: "/hooks/{{id}}" }}
    upstream: mq
    format: json
    entity: "hook/{{id}}"
    fingerprint: {{ payload: {{}} }}
"#,
        queue.url()
    );
    let ekko = Ekko::start(&policy).await;
    let client = HttpClient::default();

    // A GET notification commits like a POST one, so it must not run inline like a read.
    let answer = abandon_then_resend(&queue, |_| {
        let request = http::Request::get(ekko.url("/hooks/7"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"v":1}"#)))
            .unwrap();
        client.send(request)
    })
    .await;

    assert_eq!(
        answer.decision(),
        "unchanged",
        "the forward the upstream took was committed although its producer left"
    );
    assert_eq!(queue.count(), 1);
}

#[tokio::test]
async fn hundred_concurrent_identical_notifications_forward_once() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let client = HttpClient::default();

    let mut tasks = Vec::new();
    for i in 0..100 {
        let (client, url) = (client.clone(), ekko.url("/events"));
        let body = cloudevent(&format!("e{i}"), "123", person("Ola", &format!("t{i}")));
        tasks.push(tokio::spawn(async move {
            client.post(&url, CE_JSON, body).await
        }));
    }
    let mut forwarded = 0;
    for task in tasks {
        if task.await.unwrap().decision() == "forwarded" {
            forwarded += 1;
        }
    }

    assert_eq!(forwarded, 1);
    assert_eq!(queue.count(), 1);
}

fn lookup_policy(queue: &str, source: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
  api: {{ url: "{source}", headers: {{ Authorization: "Bearer ekko-token" }} }}
notifications:
  - name: hr
    match: {{ path: "/api/exchanges/{{vhost}}/hr/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: api, path: "/persons/{{subject}}" }}
      ignore: ["/meta/lastModified"]
"#
    )
}

fn publish(person_id: &str) -> String {
    json!({
        "properties": {},
        "routing_key": "person.changed",
        "payload": json!({ "personId": person_id }).to_string(),
        "payload_encoding": "string",
    })
    .to_string()
}

#[tokio::test]
async fn lookup_fingerprint_suppresses_resave() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("123", person("Ola", "1"));
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");

    let first = client.post(&url, "application/json", publish("123")).await;
    source.put("123", person("Ola", "2"));
    let resave = client.post(&url, "application/json", publish("123")).await;
    source.put("123", person("Kari", "3"));
    let change = client.post(&url, "application/json", publish("123")).await;

    assert_eq!(first.decision(), "forwarded");
    assert_eq!(resave.decision(), "unchanged");
    assert_eq!(change.decision(), "forwarded");
    assert_eq!(queue.count(), 2);
    assert_eq!(
        queue.received()[0].path_and_query,
        "/api/exchanges/%2F/hr/publish"
    );
    let lookups = source.server.received();
    assert_eq!(lookups.len(), 3);
    assert_eq!(lookups[0].headers["authorization"], "Bearer ekko-token");
}

#[tokio::test]
async fn lookup_failure_forwards_and_counts() {
    let queue = MockServer::accepting().await;
    let source = MockServer::start(|_| Reply::Respond(503, "{}".into())).await;
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");

    let first = client.post(&url, "application/json", publish("123")).await;
    let second = client.post(&url, "application/json", publish("123")).await;

    assert_eq!(first.decision(), "forwarded");
    assert_eq!(second.decision(), "forwarded");
    assert_eq!(queue.count(), 2);
    assert_eq!(
        ekko.metric(r#"ekko_fail_open_total{route="hr",reason="status_5xx"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn deleted_entity_is_forwarded_once() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("123", person("Ola", "1"));
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");

    client.post(&url, "application/json", publish("123")).await;
    source.remove("123");
    let deleted = client.post(&url, "application/json", publish("123")).await;
    let again = client.post(&url, "application/json", publish("123")).await;

    assert_eq!(deleted.decision(), "forwarded");
    assert_eq!(again.decision(), "unchanged");
    assert_eq!(
        ekko.metric(r#"ekko_fingerprint_lookups_total{route="hr",result="deleted"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn lookup_path_value_stays_one_segment() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url())).await;

    HttpClient::default()
        .post(
            &ekko.url("/api/exchanges/%2F/hr/publish"),
            "application/json",
            publish("../admin?x=1"),
        )
        .await;

    let lookups = source.server.received();
    assert_eq!(lookups[0].path_and_query, "/persons/..%2Fadmin%3Fx%3D1");
}

#[tokio::test]
async fn max_entities_bound_holds() {
    let queue = MockServer::accepting().await;
    let policy = format!(
        "state: {{ max_entities: 10 }}\n{}",
        payload_policy(&queue.url())
    );
    let ekko = Ekko::start(&policy).await;
    let client = HttpClient::default();

    for i in 0..200 {
        let body = cloudevent(&format!("e{i}"), &i.to_string(), person("Ola", "1"));
        client.post(&ekko.url("/events"), CE_JSON, body).await;
    }
    let entities = ekko.metric("ekko_state_entities").await;
    let evictions = ekko.metric("ekko_state_evictions_total").await;

    assert!(entities <= 10.0, "{entities} entities kept");
    assert!(entities >= 5.0, "{entities} entities kept");
    assert_eq!(entities + evictions, 200.0);
}

#[tokio::test]
async fn evicted_entity_is_forwarded_again() {
    let queue = MockServer::accepting().await;
    let policy = format!(
        "state: {{ max_entities: 1 }}\n{}",
        payload_policy(&queue.url())
    );
    let ekko = Ekko::start(&policy).await;
    let client = HttpClient::default();
    let url = ekko.url("/events");

    client
        .post(&url, CE_JSON, cloudevent("e1", "1", person("Ola", "1")))
        .await;
    client
        .post(&url, CE_JSON, cloudevent("e2", "2", person("Kari", "1")))
        .await;
    let again = client
        .post(&url, CE_JSON, cloudevent("e3", "1", person("Ola", "2")))
        .await;

    assert_eq!(again.decision(), "forwarded");
    assert_eq!(queue.count(), 3);
    assert_eq!(ekko.metric("ekko_state_entities").await, 1.0);
}

#[tokio::test]
async fn restart_with_snapshot_keeps_fingerprints() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state");
    let policy = format!(
        "state: {{ snapshot: \"{}\" }}\n{}",
        snapshot.display(),
        payload_policy(&queue.url())
    );
    let client = HttpClient::default();

    let first = Ekko::start(&policy).await;
    client
        .post(
            &first.url("/events"),
            CE_JSON,
            cloudevent("e1", "123", person("Ola", "1")),
        )
        .await;
    first.stop().await.unwrap();
    let second = Ekko::start(&policy).await;
    let resave = client
        .post(
            &second.url("/events"),
            CE_JSON,
            cloudevent("e2", "123", person("Ola", "2")),
        )
        .await;

    assert_eq!(resave.decision(), "unchanged");
    assert_eq!(queue.count(), 1);
}

#[tokio::test]
async fn corrupt_snapshot_starts_empty() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state");
    std::fs::write(&snapshot, b"not a snapshot").unwrap();
    let policy = format!(
        "state: {{ snapshot: \"{}\" }}\n{}",
        snapshot.display(),
        payload_policy(&queue.url())
    );

    let ekko = Ekko::start(&policy).await;
    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", json!({})),
        )
        .await;

    assert_eq!(answer.decision(), "forwarded");
}

#[tokio::test]
async fn unrouted_publish_commits_nothing() {
    let queue = MockServer::start(|_| Reply::Respond(200, r#"{"routed":false}"#.into())).await;
    let source = SourceApi::start("/persons").await;
    source.put("123", person("Ola", "1"));
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");

    let unrouted = client.post(&url, "application/json", publish("123")).await;
    queue.set_handler(|_| Reply::Respond(200, r#"{"routed":true}"#.into()));
    let retry = client.post(&url, "application/json", publish("123")).await;

    assert_eq!(unrouted.status, 200);
    assert_eq!(unrouted.json()["routed"], false);
    assert_eq!(retry.decision(), "forwarded");
    assert_eq!(queue.count(), 2);
}

#[tokio::test]
async fn dot_segment_subject_skips_lookup() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url())).await;

    let answer = HttpClient::default()
        .post(
            &ekko.url("/api/exchanges/%2F/hr/publish"),
            "application/json",
            publish(".."),
        )
        .await;

    assert_eq!(answer.decision(), "forwarded");
    assert_eq!(source.server.count(), 0);
    assert_eq!(
        ekko.metric(r#"ekko_fail_open_total{route="hr",reason="dot_segment"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn error_responses_carry_decision() {
    let closed = closed_port().await;
    let ekko = Ekko::start(&payload_policy(&format!("http://{closed}"))).await;
    let client = HttpClient::default();

    let bad = client.post(&ekko.url("/events"), CE_JSON, "not json").await;
    let unknown = client.post(&ekko.url("/nowhere"), CE_JSON, "{}").await;
    let refused = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", json!({})),
        )
        .await;

    assert_eq!(bad.status, 400);
    assert_eq!(bad.decision(), "rejected");
    assert_eq!(unknown.decision(), "rejected");
    assert_eq!(refused.status, 502);
    assert_eq!(refused.decision(), "upstream_error");
}

#[tokio::test]
async fn large_batch_gets_decision_summary() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&payload_policy(&queue.url())).await;
    let events: Vec<String> = (0..40)
        .map(|i| cloudevent(&format!("b{i}"), &(i % 20).to_string(), person("Ola", "1")))
        .collect();
    let batch = format!("[{}]", events.join(","));

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            "application/cloudevents-batch+json",
            batch,
        )
        .await;

    assert_eq!(
        answer.decision(),
        "batch; events=40; forwarded=20; unchanged=20; duplicate=0; held=0"
    );
    assert_eq!(queue.count(), 1);
}
