//! Checks the test harness itself: the server requirement check and a real private broker.

mod support;

use serde_json::Value;
use support::rabbitmq::{Broker, RABBITMQ_SERVER};

const MISSING_SERVER: &str = "/nonexistent/rabbitmq/bin/rabbitmq-server";

#[test]
fn missing_server_skips_outside_ci() {
    for ci in [None, Some(""), Some("false"), Some("0")] {
        let required = support::require_server_under(MISSING_SERVER, "rabbitmq-server", ci);
        assert!(!required, "CI={ci:?} must skip, not run");
    }
}

#[test]
#[should_panic(expected = "rabbitmq-server is missing under CI: .ci/run must install it")]
fn missing_server_fails_under_ci() {
    support::require_server_under(MISSING_SERVER, "rabbitmq-server", Some("true"));
}

#[test]
#[should_panic(expected = "is missing under CI")]
fn missing_server_fails_under_any_ci_value() {
    support::require_server_under(MISSING_SERVER, "rabbitmq-server", Some("1"));
}

#[test]
fn installed_binary_is_required() {
    let this_test = std::env::current_exe().expect("test binary path is readable");
    let path = this_test.to_str().expect("test binary path is UTF-8");
    assert!(support::require_server_under(path, "test binary", None));
    assert!(support::require_server_under(
        path,
        "test binary",
        Some("true")
    ));
}

#[test]
fn non_executable_file_counts_as_missing() {
    let file = tempfile::NamedTempFile::new().expect("temporary file can be created");
    let path = file.path().to_str().expect("temporary path is UTF-8");
    assert!(!support::require_server_under(path, "plain file", None));
}

#[tokio::test]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn broker_routes_published_messages_in_order() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = Broker::start().await.expect("test broker starts");
    broker.declare_topic_exchange("ekko.hr").await.unwrap();
    broker.declare_queue("ekko.hr.people").await.unwrap();
    broker
        .bind("ekko.hr", "ekko.hr.people", "person.#")
        .await
        .unwrap();

    let first = broker.publish("ekko.hr", "person.changed", r#"{"id":1,"seq":1}"#);
    assert!(first.await.unwrap(), "first message must be routed");
    let second = broker.publish("ekko.hr", "person.changed", r#"{"id":1,"seq":2}"#);
    assert!(second.await.unwrap(), "second message must be routed");

    let messages = broker.get_messages("ekko.hr.people", 10).await.unwrap();
    let payloads: Vec<&str> = messages.iter().map(payload).collect();
    assert_eq!(payloads, [r#"{"id":1,"seq":1}"#, r#"{"id":1,"seq":2}"#]);
    for message in &messages {
        assert_eq!(message["routing_key"], "person.changed");
        assert_eq!(message["exchange"], "ekko.hr");
    }

    let remaining = broker.get_messages("ekko.hr.people", 10).await.unwrap();
    assert!(
        remaining.is_empty(),
        "messages taken with ack_requeue_false must leave the queue"
    );
}

#[tokio::test]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn broker_drops_unbound_routing_keys() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = Broker::start().await.expect("test broker starts");
    broker.declare_topic_exchange("ekko/hr x").await.unwrap();
    broker.declare_queue("ekko/hr x.people").await.unwrap();
    broker
        .bind("ekko/hr x", "ekko/hr x.people", "person.*")
        .await
        .unwrap();

    let routed = broker
        .publish("ekko/hr x", "course.changed", "{}")
        .await
        .unwrap();
    assert!(
        !routed,
        "a routing key matching no binding must not be routed"
    );

    let messages = broker.get_messages("ekko/hr x.people", 10).await.unwrap();
    assert!(
        messages.is_empty(),
        "queue must stay empty, got {messages:?}"
    );
}

fn payload(message: &Value) -> &str {
    assert_eq!(message["payload_encoding"], "string", "message: {message}");
    message["payload"].as_str().expect("payload is a string")
}
