//! Black-box tests of envelope formats, error responses, route modes, header hygiene and
//! per-entity timing, over real sockets on 127.0.0.1.

mod harness;

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use harness::{
    cloudevent, raw_exchange, wait_until, Ekko, HttpClient, MockServer, Reply, SourceApi, CE_JSON,
};
use http::Request;
use http_body_util::Full;
use serde_json::json;
use serde_json::value::RawValue;

const CE_BATCH: &str = "application/cloudevents-batch+json";

/// A CloudEvents route `hr` on `path` that fingerprints the payload without
/// `/meta/lastModified`. `route_keys` contains extra route keys, one per line, indented by
/// four spaces.
fn cloudevents_route(queue: &str, path: &str, route_keys: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}", timeout: 2s }}
notifications:
  - name: hr
    match: {{ path: "{path}" }}
    upstream: mq
    format: cloudevents
    entity: "hr/person/{{subject}}"
    fingerprint:
      payload: {{}}
      ignore: ["/meta/lastModified"]
{route_keys}"#
    )
}

/// Builds the CloudEvents route of [`cloudevents_route`] on `/events`.
fn cloudevents_policy(queue: &str, route_keys: &str) -> String {
    cloudevents_route(queue, "/events", route_keys)
}

fn person(name: &str, modified: &str) -> serde_json::Value {
    json!({ "name": name, "meta": { "lastModified": modified } })
}

/// Returns the elements of a forwarded batch body, each as its exact JSON text.
fn batch_elements(body: &[u8]) -> Vec<String> {
    let elements: Vec<&RawValue> = serde_json::from_slice(body).expect("forwarded batch is JSON");
    elements.iter().map(|raw| raw.get().to_owned()).collect()
}

/// Builds a raw structured-mode CloudEvents POST with `extra_headers` (each ending in CRLF).
fn raw_post(path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CE_JSON}\r\n\
         Content-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Builds a raw structured-mode CloudEvents POST whose body is sent in `chunks` with
/// `Transfer-Encoding: chunked` and no `Content-Length` (RFC 9112 section 7.1).
fn raw_chunked_post(path: &str, chunks: &[&str]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CE_JSON}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    request.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// CloudEvents batch mode
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn batch_forwards_only_passing_events() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let client = HttpClient::default();
    client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", person("Ola", "t1")),
        )
        .await;

    let unchanged = cloudevent("e2", "1", person("Ola", "t2"));
    // Spacing, member order, `1.50` and a `\u` escape would all change under
    // re-serialisation, so they show that the forwarded text is the original.
    let changed = r#"{ "specversion" : "1.0", "id": "e3", "source": "urn:hr",
        "type": "person.changed", "subject": "2", "data": { "score": 1.50, "name": "Kari" } }"#;
    let duplicate = cloudevent("e1", "1", person("Ola", "t1"));
    let created = r#"{"subject":"3","data":{"name":"Bj\u00f8rn"},"id":"e4","type":"person.created","source":"urn:hr","specversion":"1.0"}"#;
    let batch = format!("[{unchanged},\n  {changed} , {duplicate},{created}]");
    let answer = client.post(&ekko.url("/events"), CE_BATCH, batch).await;

    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.decision(),
        "unchanged, forwarded, duplicate, forwarded"
    );
    assert_eq!(queue.count(), 2);
    let forwarded = &queue.received()[1];
    assert_eq!(forwarded.headers["content-type"], CE_BATCH);
    let elements = batch_elements(&forwarded.body);
    assert_eq!(elements.len(), 2);
    assert_eq!(elements[0], with_hops(changed, 1));
    assert_eq!(elements[1], with_hops(created, 1));
}

#[tokio::test]
async fn batch_with_nothing_passing_is_suppressed() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let client = HttpClient::default();
    let seed = cloudevent("e1", "1", person("Ola", "t1"));
    client
        .post(&ekko.url("/events"), CE_JSON, seed.clone())
        .await;

    let resave = cloudevent("e2", "1", person("Ola", "t2"));
    let answer = client
        .post(&ekko.url("/events"), CE_BATCH, format!("[{seed},{resave}]"))
        .await;

    assert_eq!(answer.status, 202);
    assert_eq!(answer.decision(), "duplicate, unchanged");
    assert_eq!(queue.count(), 1);
    let body = answer.json();
    assert_eq!(body["decision"], "suppressed");
    assert_eq!(body["events"][0]["decision"], "duplicate");
    assert_eq!(body["events"][1]["decision"], "unchanged");
    assert_eq!(body["events"][1]["entity"], "hr/person/1");
}

#[tokio::test]
async fn batch_repeat_of_same_state_is_unchanged() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let first = cloudevent("e1", "7", person("Ola", "t1"));
    let second = cloudevent("e2", "7", person("Ola", "t2"));

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_BATCH,
            format!("[{first},{second}]"),
        )
        .await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.decision(), "forwarded, unchanged");
    assert_eq!(queue.count(), 1);
    assert_eq!(
        batch_elements(&queue.received()[0].body),
        vec![with_hops(&first, 1)]
    );
}

#[tokio::test]
async fn batch_invalid_element_names_index() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let valid = cloudevent("e1", "1", person("Ola", "t1"));
    let without_id =
        r#"{"specversion":"1.0","source":"urn:hr","type":"person.changed","subject":"2"}"#;

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_BATCH,
            format!("[{valid},{without_id}]"),
        )
        .await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "undecodable");
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("element 1"), "message: {message}");
    assert_eq!(queue.count(), 0);
}

#[tokio::test]

async fn batch_element_missing_field_names_index() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let valid = cloudevent("e1", "1", person("Ola", "t1"));
    // A valid CloudEvent, but the route's entity template needs its `subject`.
    let without_subject =
        r#"{"specversion":"1.0","id":"e2","source":"urn:hr","type":"person.changed"}"#;

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_BATCH,
            format!("[{valid},{without_subject}]"),
        )
        .await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "missing_field");
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("`subject`"), "message: {message}");
    assert!(message.contains("element 1"), "message: {message}");
    assert_eq!(queue.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Binary mode, RabbitMQ publish and generic JSON
// ---------------------------------------------------------------------------------------------

fn binary_request(url: &str, id: &str, subject: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "urn:hr")
        .header("ce-type", "person.changed")
        .header("ce-subject", subject)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

#[tokio::test]
async fn binary_mode_subject_is_percent_decoded() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let client = HttpClient::default();
    let body = person("Ola", "t1").to_string();

    let first = client
        .send(binary_request(
            &ekko.url("/events"),
            "b1",
            "Ola%20Nordmann%2F1",
            &body,
        ))
        .await;
    // The same subject written without percent-encoding names the same entity.
    let resave = client
        .send(binary_request(
            &ekko.url("/events"),
            "b2",
            "Ola Nordmann/1",
            &person("Ola", "t2").to_string(),
        ))
        .await;

    assert_eq!(first.decision(), "forwarded");
    assert_eq!(resave.decision(), "unchanged");
    // `/` inside a value is escaped in the entity key so it cannot imitate a separator.
    assert_eq!(resave.json()["entity"], "hr/person/Ola Nordmann%2F1");
    let forwarded = &queue.received()[0];
    assert_eq!(forwarded.body, body.as_bytes());
    assert_eq!(forwarded.headers["ce-subject"], "Ola%20Nordmann%2F1");
    assert_eq!(queue.count(), 1);
}

fn publish_policy(queue: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
notifications:
  - name: hr
    match: {{ path: "/api/exchanges/{{vhost}}/hr/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId, data: /person }}
    entity: "hr/{{routing_key}}/{{subject}}"
    fingerprint:
      payload: {{}}
      ignore: ["/meta/lastModified"]
"#
    )
}

/// Builds a RabbitMQ management API publish body whose payload is base64 of a JSON document.
fn publish_base64(person_id: &str, state: serde_json::Value) -> String {
    let payload = json!({ "personId": person_id, "person": state }).to_string();
    json!({
        "properties": { "delivery_mode": 2 },
        "routing_key": "person.changed",
        "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        "payload_encoding": "base64",
    })
    .to_string()
}

#[tokio::test]
async fn rabbitmq_base64_payload_is_decoded() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&publish_policy(&queue.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");
    let first_body = publish_base64("123", person("Ola", "t1"));

    let first = client
        .post(&url, "application/json", first_body.clone())
        .await;
    let resave = client
        .post(
            &url,
            "application/json",
            publish_base64("123", person("Ola", "t2")),
        )
        .await;
    let change = client
        .post(
            &url,
            "application/json",
            publish_base64("123", person("Kari", "t3")),
        )
        .await;

    assert_eq!(first.decision(), "forwarded");
    assert_eq!(resave.decision(), "unchanged");
    assert_eq!(resave.json()["entity"], "hr/person.changed/123");
    assert_eq!(change.decision(), "forwarded");
    assert_eq!(queue.count(), 2);
    let forwarded = queue.received()[0].json();
    let mut expected: serde_json::Value = serde_json::from_str(&first_body).unwrap();
    expected["properties"]["headers"] = json!({ "ekko-hops": 1 });
    assert_eq!(forwarded, expected);
}

fn json_policy(queue: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
notifications:
  - name: people
    match: {{ path: "/hooks/person" }}
    upstream: mq
    format: json
    pointers: {{ id: /eventId, subject: /person/number, data: /person }}
    entity: "hr/person/{{subject}}"
    fingerprint: payload
"#
    )
}

fn person_hook(event_id: u64, number: u64, name: &str) -> String {
    json!({ "eventId": event_id, "person": { "number": number, "name": name } }).to_string()
}

#[tokio::test]
async fn json_format_reads_numeric_pointers() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&json_policy(&queue.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/hooks/person");

    let first = client
        .post(&url, "application/json", person_hook(9001, 42, "Ola"))
        .await;
    let redelivery = client
        .post(&url, "application/json", person_hook(9001, 42, "Ola"))
        .await;
    let resave = client
        .post(&url, "application/json", person_hook(9002, 42, "Ola"))
        .await;

    assert_eq!(first.decision(), "forwarded");
    assert_eq!(redelivery.decision(), "duplicate");
    assert_eq!(resave.decision(), "unchanged");
    assert_eq!(resave.json()["entity"], "hr/person/42");
    assert_eq!(queue.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn body_over_max_body_is_413() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "    max_body: 1KiB\n")).await;
    let body = cloudevent("e1", "1", json!({ "note": "x".repeat(2000) }));

    let answer = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, body)
        .await;

    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"], "body_too_large");
    assert_eq!(queue.count(), 0);
}

#[tokio::test]
async fn body_at_max_body_is_accepted() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "    max_body: 1KiB\n")).await;
    let empty_note = cloudevent("e1", "1", json!({ "note": "" }));
    let body = cloudevent(
        "e1",
        "1",
        json!({ "note": "x".repeat(1024 - empty_note.len()) }),
    );

    let answer = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, body.clone())
        .await;

    assert_eq!(body.len(), 1024);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.decision(), "forwarded");
}

#[tokio::test]
async fn chunked_body_over_max_body_is_413() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "    max_body: 1KiB\n")).await;
    let part = "x".repeat(600);

    let answer = raw_exchange(
        ekko.public_addr(),
        &raw_chunked_post("/events", &[&part, &part, &part]),
    )
    .await;

    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["error"], "body_too_large");
    assert_eq!(queue.count(), 0);
}

#[tokio::test]
async fn chunked_body_within_max_body_is_forwarded() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "    max_body: 1KiB\n")).await;
    let body = cloudevent("e1", "1", person("Ola", "t1"));
    let (head, tail) = body.split_at(body.len() / 2);

    let answer = raw_exchange(
        ekko.public_addr(),
        &raw_chunked_post("/events", &[head, tail]),
    )
    .await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.decision(), "forwarded");
    assert_eq!(queue.received()[0].body, with_hops(&body, 1).as_bytes());
}

#[tokio::test]
async fn undecodable_body_gets_json_400() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;

    let answer = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, "{not json")
        .await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["error"], "undecodable");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
    assert_eq!(queue.count(), 0);
}

#[tokio::test]
async fn undecodable_forward_passes_raw_body() {
    let queue = MockServer::accepting().await;
    let policy = cloudevents_policy(&queue.url(), "    on_undecodable: forward\n");
    let ekko = Ekko::start(&policy).await;
    let body = Bytes::from_static(b"\x00\xffnot json at all");

    let answer = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, body.clone())
        .await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.decision(), "forwarded");
    assert_eq!(queue.count(), 1);
    assert_eq!(queue.received()[0].body, body);
    assert_eq!(
        ekko.metric(r#"ekko_fail_open_total{route="hr",reason="undecodable"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn unknown_path_is_404() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;

    let answer = HttpClient::default()
        .post(
            &ekko.url("/nowhere"),
            CE_JSON,
            cloudevent("e1", "1", json!({})),
        )
        .await;

    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "no_route");
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("/nowhere"), "message: {message}");
    assert_eq!(queue.count(), 0);
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;

    let answer = HttpClient::default().get(&ekko.url("/events")).await;

    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers["allow"], "POST");
    assert_eq!(answer.json()["error"], "method_not_allowed");
}

#[tokio::test]
async fn missing_template_field_is_named() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let without_subject = json!({
        "specversion": "1.0", "id": "e1", "source": "urn:hr", "type": "person.changed",
        "data": person("Ola", "t1"),
    });

    let answer = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, without_subject.to_string())
        .await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "missing_field");
    let message = answer.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("`subject`"), "message: {message}");
    assert_eq!(queue.count(), 0);
}

#[tokio::test]
async fn dot_segments_are_rejected() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_route(&queue.url(), "/events/{topic}", "")).await;
    let body = cloudevent("e1", "1", person("Ola", "t1"));

    for path in [
        "/events/..",
        "/events/%2e%2e",
        "/events/%2E%2E",
        "/events/.",
    ] {
        let answer = raw_exchange(ekko.public_addr(), &raw_post(path, "", &body)).await;
        assert_eq!(answer.status, 400, "path {path}");
        assert_eq!(answer.json()["error"], "undecodable", "path {path}");
    }
    let control = raw_exchange(ekko.public_addr(), &raw_post("/events/hr", "", &body)).await;

    assert_eq!(control.decision(), "forwarded");
    assert_eq!(queue.count(), 1);
}

#[tokio::test]
async fn entity_key_limit_is_1024_bytes() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let client = HttpClient::default();
    // `hr/person/` is 10 bytes, so these subjects give keys of 1024 and 1025 bytes.
    let at_limit = "a".repeat(1014);
    let over_limit = "b".repeat(1015);

    let accepted = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", &at_limit, json!({})),
        )
        .await;
    let rejected = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e2", &over_limit, json!({})),
        )
        .await;

    assert_eq!(accepted.decision(), "forwarded");
    assert_eq!(rejected.status, 400);
    assert_eq!(rejected.json()["error"], "entity_key_too_long");
    assert_eq!(queue.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Shadow mode and suppressed responses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shadow_mode_forwards_and_reports() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "    mode: shadow\n")).await;
    let client = HttpClient::default();
    let url = ekko.url("/events");
    let resave = cloudevent("e2", "1", person("Ola", "t2"));

    let first = client
        .post(&url, CE_JSON, cloudevent("e1", "1", person("Ola", "t1")))
        .await;
    let unchanged = client.post(&url, CE_JSON, resave.clone()).await;
    let duplicate = client.post(&url, CE_JSON, resave).await;

    assert_eq!(first.decision(), "forwarded; would=forwarded");
    assert_eq!(unchanged.status, 200);
    assert_eq!(unchanged.decision(), "forwarded; would=unchanged");
    assert_eq!(duplicate.decision(), "forwarded; would=duplicate");
    assert_eq!(queue.count(), 3);
    let shadow = |decision: &str| {
        format!(r#"ekko_shadow_decisions_total{{route="hr",decision="{decision}"}}"#)
    };
    assert_eq!(ekko.metric(&shadow("forwarded")).await, 1.0);
    assert_eq!(ekko.metric(&shadow("unchanged")).await, 1.0);
    assert_eq!(ekko.metric(&shadow("duplicate")).await, 1.0);
    assert_eq!(
        ekko.metric(r#"ekko_notifications_total{route="hr",decision="forwarded"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn custom_suppressed_response_is_sent() {
    let queue = MockServer::accepting().await;
    let route_keys =
        "    suppressed_response: { status: 200, body: \"ok, skipped\", content_type: text/plain }\n";
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), route_keys)).await;
    let client = HttpClient::default();

    client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", person("Ola", "t1")),
        )
        .await;
    let resave = client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e2", "1", person("Ola", "t2")),
        )
        .await;

    assert_eq!(resave.status, 200);
    assert_eq!(resave.text(), "ok, skipped");
    assert_eq!(resave.headers["content-type"], "text/plain");
    assert_eq!(resave.decision(), "unchanged");
    assert_eq!(queue.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Header hygiene
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forward_drops_hop_by_hop_headers() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = format!(
        "Connection: close, X-Drop\r\nX-Drop: secret\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic c2VjcmV0\r\nTE: trailers\r\ntraceparent: {traceparent}\r\n\
         X-Kept: yes\r\n"
    );
    let body = cloudevent("e1", "1", person("Ola", "t1"));

    let answer = raw_exchange(ekko.public_addr(), &raw_post("/events", &headers, &body)).await;

    assert_eq!(answer.decision(), "forwarded");
    let forwarded = &queue.received()[0].headers;
    assert!(forwarded.get("x-drop").is_none(), "{forwarded:?}");
    assert!(forwarded.get("keep-alive").is_none(), "{forwarded:?}");
    assert!(
        forwarded.get("proxy-authorization").is_none(),
        "{forwarded:?}"
    );
    assert!(forwarded.get("te").is_none(), "{forwarded:?}");
    let connection = forwarded
        .get("connection")
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .unwrap_or_default();
    assert!(!connection.contains("x-drop"), "connection: {connection}");
    assert!(!connection.contains("close"), "connection: {connection}");
    assert_eq!(forwarded["via"], "1.1 ekko");
    let forwarded_for = forwarded["forwarded"].to_str().unwrap();
    assert!(
        forwarded_for.starts_with("for=127.0.0.1;"),
        "forwarded: {forwarded_for}"
    );
    assert_eq!(forwarded["traceparent"], traceparent);
    assert_eq!(forwarded["x-kept"], "yes");
    assert_eq!(forwarded["host"], queue.addr.to_string().as_str());
}

#[tokio::test]
async fn upstream_hop_by_hop_headers_not_relayed() {
    let response_headers = vec![
        ("connection", "x-upstream-hop"),
        ("x-upstream-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic realm=\"mq\""),
        ("x-upstream-kept", "1"),
    ];
    let queue = MockServer::start_with_response_headers(response_headers, |_| {
        Reply::Respond(200, r#"{"routed":true}"#.into())
    })
    .await;
    let ekko = Ekko::start(&cloudevents_policy(&queue.url(), "")).await;
    let body = cloudevent("e1", "1", person("Ola", "t1"));

    // The mock itself must send the fields, or the checks below would pass vacuously.
    let direct = raw_exchange(queue.addr, &raw_post("/events", "", &body)).await;
    let relayed = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, body)
        .await;

    assert_eq!(direct.headers["x-upstream-hop"], "1");
    assert_eq!(direct.headers["keep-alive"], "timeout=5");
    assert_eq!(relayed.decision(), "forwarded");
    assert!(relayed.headers.get("x-upstream-hop").is_none());
    assert!(relayed.headers.get("keep-alive").is_none());
    assert!(relayed.headers.get("proxy-authenticate").is_none());
    assert_eq!(relayed.headers["x-upstream-kept"], "1");
}

fn lookup_policy(queue: &str, source: &str, route_keys: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}", headers: {{ Authorization: "Basic bXE6c2VjcmV0" }} }}
  api: {{ url: "{source}", headers: {{ X-Api-Key: "ekko-key-1" }} }}
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
{route_keys}"#
    )
}

/// Builds a RabbitMQ publish body with a string payload that names only the person.
fn publish(person_id: &str) -> String {
    json!({
        "properties": {},
        "routing_key": "person.changed",
        "payload": json!({ "personId": person_id }).to_string(),
        "payload_encoding": "string",
    })
    .to_string()
}

fn publish_request(url: &str, person_id: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer producer-token")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Full::new(Bytes::from(publish(person_id))))
        .unwrap()
}

#[tokio::test]
async fn lookup_sends_only_configured_headers() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("123", person("Ola", "t1"));
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url(), "")).await;

    HttpClient::default()
        .send(publish_request(
            &ekko.url("/api/exchanges/%2F/hr/publish"),
            "123",
        ))
        .await;

    let lookup = &source.server.received()[0];
    assert_eq!(lookup.headers["x-api-key"], "ekko-key-1");
    assert!(lookup.headers.get("authorization").is_none());
    assert!(lookup.headers.get("traceparent").is_none());
}

#[tokio::test]
async fn forward_uses_configured_upstream_header() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("123", person("Ola", "t1"));
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.server.url(), "")).await;

    HttpClient::default()
        .send(publish_request(
            &ekko.url("/api/exchanges/%2F/hr/publish"),
            "123",
        ))
        .await;

    let forwarded = &queue.received()[0];
    assert_eq!(forwarded.headers["authorization"], "Basic bXE6c2VjcmV0");
    assert!(forwarded.headers.get("x-api-key").is_none());
}

// ---------------------------------------------------------------------------------------------
// Duplicate window and fingerprint settings
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn redelivery_inside_window_is_duplicate() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(
        &queue.url(),
        "    duplicate_window: 1m\n",
    ))
    .await;
    let client = HttpClient::default();
    let event = cloudevent("e1", "1", person("Ola", "t1"));

    client
        .post(&ekko.url("/events"), CE_JSON, event.clone())
        .await;
    tokio::time::advance(Duration::from_secs(30)).await;
    // A new client: ekko closes idle keep-alive connections after 30 s without a request.
    let redelivery = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, event)
        .await;

    assert_eq!(redelivery.decision(), "duplicate");
    assert_eq!(queue.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn redelivery_after_window_is_decided_on_state() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(
        &queue.url(),
        "    duplicate_window: 1m\n",
    ))
    .await;
    let client = HttpClient::default();
    let event = cloudevent("e1", "1", person("Ola", "t1"));

    client
        .post(&ekko.url("/events"), CE_JSON, event.clone())
        .await;
    tokio::time::advance(Duration::from_secs(120)).await;
    // A new client: ekko closes idle keep-alive connections after 30 s without a request.
    let redelivery = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, event)
        .await;

    assert_eq!(redelivery.decision(), "unchanged");
    assert_eq!(queue.count(), 1);
}

#[tokio::test]
async fn zero_window_disables_duplicates() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(
        &queue.url(),
        "    duplicate_window: 0s\n",
    ))
    .await;
    let client = HttpClient::default();
    let url = ekko.url("/events");

    client
        .post(&url, CE_JSON, cloudevent("e1", "1", person("Ola", "t1")))
        .await;
    let same_state = client
        .post(&url, CE_JSON, cloudevent("e1", "1", person("Ola", "t1")))
        .await;
    let new_state = client
        .post(&url, CE_JSON, cloudevent("e1", "1", person("Kari", "t1")))
        .await;

    assert_eq!(same_state.decision(), "unchanged");
    assert_eq!(new_state.decision(), "forwarded");
    assert_eq!(queue.count(), 2);
}

#[tokio::test]

async fn zero_window_batch_keeps_repeated_ids() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&cloudevents_policy(
        &queue.url(),
        "    duplicate_window: 0s\n",
    ))
    .await;
    // Two entities' events that share an id: with duplicate detection off, only state counts.
    let first = cloudevent("e1", "1", person("Ola", "t1"));
    let second = cloudevent("e1", "2", person("Kari", "t1"));

    let answer = HttpClient::default()
        .post(
            &ekko.url("/events"),
            CE_BATCH,
            format!("[{first},{second}]"),
        )
        .await;

    assert_eq!(answer.decision(), "forwarded, forwarded");
    assert_eq!(queue.count(), 1);
    assert_eq!(
        batch_elements(&queue.received()[0].body),
        vec![with_hops(&first, 1), with_hops(&second, 1)]
    );
}

fn snapshot_policy(queue: &str, snapshot: &std::path::Path, ignore: &str) -> String {
    format!(
        r#"
state: {{ snapshot: "{}" }}
upstreams:
  mq: {{ url: "{queue}" }}
notifications:
  - name: hr
    match: {{ path: "/events" }}
    upstream: mq
    format: cloudevents
    entity: "hr/person/{{subject}}"
    fingerprint:
      payload: {{}}
      ignore: {ignore}
"#,
        snapshot.display()
    )
}

#[tokio::test]
async fn changed_mask_forwards_next_notification_once() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state");
    let client = HttpClient::default();
    let state = json!({ "name": "Ola", "meta": { "lastModified": "t1", "version": 3 } });

    let before = Ekko::start(&snapshot_policy(
        &queue.url(),
        &snapshot,
        r#"["/meta/lastModified"]"#,
    ))
    .await;
    let first = client
        .post(
            &before.url("/events"),
            CE_JSON,
            cloudevent("e1", "1", state.clone()),
        )
        .await;
    before.stop().await.unwrap();
    let after = Ekko::start(&snapshot_policy(
        &queue.url(),
        &snapshot,
        r#"["/meta/lastModified", "/meta/version"]"#,
    ))
    .await;
    let under_new_mask = client
        .post(
            &after.url("/events"),
            CE_JSON,
            cloudevent("e2", "1", state.clone()),
        )
        .await;
    let next = client
        .post(&after.url("/events"), CE_JSON, cloudevent("e3", "1", state))
        .await;

    assert_eq!(first.decision(), "forwarded");
    assert_eq!(under_new_mask.decision(), "forwarded");
    assert_eq!(next.decision(), "unchanged");
    assert_eq!(queue.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// Per-entity serialisation and lookup reuse
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn busy_entity_gets_503_with_retry_after() {
    let queue = MockServer::accepting().await;
    let source = MockServer::start(|_| {
        Reply::Delay(Duration::from_secs(60), 200, r#"{"name":"Ola"}"#.into())
    })
    .await;
    let policy = lookup_policy(&queue.url(), &source.url(), "    max_entity_wait: 1s\n");
    let ekko = Ekko::start(&policy).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");

    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.post(&url, "application/json", publish("123")).await }
    });
    // The first notification keeps the entity locked while its lookup waits on the source API.
    wait_until(|| source.count() == 1, "the source API receives the lookup").await;
    let second = client.post(&url, "application/json", publish("123")).await;
    let first = first.await.unwrap();

    assert_eq!(second.status, 503);
    assert_eq!(second.headers["retry-after"], "1");
    assert_eq!(second.json()["error"], "entity_busy");
    // The lookup times out after the api upstream's default 5 s, and ekko fails open.
    assert_eq!(first.decision(), "forwarded");
    assert_eq!(queue.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_lookups_for_one_entity_coalesce() {
    let queue = MockServer::accepting().await;
    let source = MockServer::start(|_| {
        Reply::Delay(Duration::from_secs(2), 200, r#"{"name":"Ola"}"#.into())
    })
    .await;
    let ekko = Ekko::start(&lookup_policy(&queue.url(), &source.url(), "")).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            client.post(&url, "application/json", publish("123")).await
        }));
    }
    let mut forwarded = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(answer.status.is_success(), "status {}", answer.status);
        if answer.decision() == "forwarded" {
            forwarded += 1;
        }
    }

    assert_eq!(forwarded, 1);
    assert_eq!(queue.count(), 1);
    // A lock holder reuses the entity's last fetch when that fetch started at or after the
    // holder's arrival. The paused clock only moves once every task waits, so all 20
    // notifications arrive before fetch 1 (2 s at the source) completes. A second fetch,
    // if one is made, starts after fetch 1 completed, so after every arrival, and every
    // later holder reuses it. Hence at most 2 fetches.
    let fetches = source.count();
    assert!(fetches <= 2, "{fetches} fetches for 20 notifications");
    let ok = ekko
        .metric(r#"ekko_fingerprint_lookups_total{route="hr",result="ok"}"#)
        .await;
    let reused = ekko
        .metric(r#"ekko_fingerprint_lookups_total{route="hr",result="reused"}"#)
        .await;
    assert_eq!(ok, fetches as f64);
    assert_eq!(ok + reused, 20.0);
}

/// A structured event as ekko forwards it: `"ekkohops":N` inserted after the opening brace,
/// every other byte as sent.
fn with_hops(event: &str, hops: u32) -> String {
    event.replacen('{', &format!("{{\"ekkohops\":{hops},"), 1)
}
