//! Checks ekko's `/metrics` exposition with Prometheus's `promtool check metrics`.

mod harness;
mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{closed_port, rabbitmq_publish_body, Ekko, HttpClient, MockServer, SourceApi};
use serde_json::json;

const PROMTOOL: &str = "/usr/bin/promtool";

/// A snapshot is written every 100 ms. The test waits up to this long for the first one.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// Four routes that between them produce every decision and every metric family: `hr`
/// (lookup against a working source API), `hr-api-down` (lookup against a closed port, so it
/// fails open), `hr-mq-down` (queue on a closed port) and `hr-trial` (shadow mode).
fn policy(queue: &str, source: &str, closed: &str, snapshot: &str) -> String {
    format!(
        r#"
state: {{ snapshot: "{snapshot}", snapshot_interval: 100ms }}
upstreams:
  mq: {{ url: "{queue}" }}
  mq-down: {{ url: "{closed}" }}
  hr-api: {{ url: "{source}" }}
  hr-api-down: {{ url: "{closed}" }}
notifications:
  - name: hr
    match: {{ path: "/hr/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: hr-api, path: "/persons/{{subject}}" }}
      ignore: ["/meta/lastModified"]
  - name: hr-api-down
    match: {{ path: "/api-down/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: hr-api-down, path: "/persons/{{subject}}" }}
  - name: hr-mq-down
    match: {{ path: "/mq-down/publish" }}
    upstream: mq-down
    format: rabbitmq-publish
    pointers: {{ subject: /personId }}
    entity: "hr/person/{{subject}}"
  - name: hr-trial
    match: {{ path: "/trial/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId, data: /person }}
    entity: "trial/person/{{subject}}"
    mode: shadow
"#
    )
}

fn notification(message_id: &str, payload: serde_json::Value) -> String {
    rabbitmq_publish_body(
        json!({ "message_id": message_id }),
        "person.changed",
        &payload.to_string(),
    )
}

/// Sends one notification and checks the `Ekko-Decision` header, or the status when ekko
/// returns an error status.
async fn send(ekko: &Ekko, path: &str, body: String, expected: &str) {
    let answer = HttpClient::default()
        .post(&ekko.url(path), "application/json", body)
        .await;
    let outcome = if answer.status.is_client_error() || answer.status.is_server_error() {
        answer.status.as_str().to_owned()
    } else {
        answer.decision().to_owned()
    };
    assert_eq!(outcome, expected, "{path}: {}", answer.text());
}

/// Sends traffic that gives every labelled family at least one series.
async fn send_every_kind(ekko: &Ekko, source: &SourceApi) {
    let person =
        |modified: &str| json!({ "id": "p1", "name": "Ola", "meta": { "lastModified": modified } });
    source.put("p1", person("1"));
    send(
        ekko,
        "/hr/publish",
        notification("m1", json!({ "personId": "p1" })),
        "forwarded",
    )
    .await;
    source.put("p1", person("2"));
    send(
        ekko,
        "/hr/publish",
        notification("m2", json!({ "personId": "p1" })),
        "unchanged",
    )
    .await;
    send(
        ekko,
        "/hr/publish",
        notification("m2", json!({ "personId": "p1" })),
        "duplicate",
    )
    .await;
    send(ekko, "/hr/publish", "not json".to_owned(), "400").await;

    let api_down = notification("m3", json!({ "personId": "p2" }));
    send(ekko, "/api-down/publish", api_down, "forwarded").await;
    let mq_down = notification("m4", json!({ "personId": "p3" }));
    send(ekko, "/mq-down/publish", mq_down, "502").await;

    let trial = |id| {
        notification(
            id,
            json!({ "personId": "p4", "person": { "name": "Kari" } }),
        )
    };
    send(
        ekko,
        "/trial/publish",
        trial("m5"),
        "forwarded; would=forwarded",
    )
    .await;
    send(
        ekko,
        "/trial/publish",
        trial("m6"),
        "forwarded; would=unchanged",
    )
    .await;
}

/// Polls the metrics until `series` appears, because snapshots are written by a timer.
async fn wait_for_series(ekko: &Ekko, series: &str) {
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    while !ekko.metrics().await.contains(series) {
        assert!(
            Instant::now() < deadline,
            "{series} did not appear within {SNAPSHOT_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `promtool check metrics` with `text` on its standard input.
fn promtool_check(text: &str) -> Output {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    // Dropping stdin at the end of this statement closes it, so promtool reads to the end of input.
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("promtool reads the exposition");
    child.wait_with_output().expect("promtool finishes")
}

/// Series that only appear when the traffic reached every family and every decision.
const EXPECTED_SERIES: &[&str] = &[
    "ekko_build_info{version=\"",
    r#"ekko_notifications_total{route="hr",decision="forwarded"} 1"#,
    r#"ekko_notifications_total{route="hr",decision="unchanged"} 1"#,
    r#"ekko_notifications_total{route="hr",decision="duplicate"} 1"#,
    r#"ekko_notifications_total{route="hr",decision="rejected"} 1"#,
    r#"ekko_notifications_total{route="hr-mq-down",decision="upstream_error"} 1"#,
    r#"ekko_notification_duration_seconds_bucket{le="+Inf",route="hr"} 4"#,
    r#"ekko_upstream_requests_total{upstream="mq",code="200"} 4"#,
    r#"ekko_upstream_requests_total{upstream="mq-down",code="connect_error"} 1"#,
    r#"ekko_upstream_duration_seconds_count{upstream="mq"} 4"#,
    r#"ekko_fingerprint_lookups_total{route="hr",result="ok"} 2"#,
    r#"ekko_fingerprint_lookups_total{route="hr-api-down",result="connect_error"} 1"#,
    r#"ekko_fail_open_total{route="hr-api-down",reason="connect_error"} 1"#,
    r#"ekko_shadow_decisions_total{route="hr-trial",decision="forwarded"} 1"#,
    r#"ekko_shadow_decisions_total{route="hr-trial",decision="unchanged"} 1"#,
    "ekko_state_entities 2",
    "ekko_state_evictions_total 0",
    r#"ekko_snapshot_writes_total{result="ok"} "#,
];

#[tokio::test]
#[ignore = "needs promtool; run by .ci/run"]
async fn metrics_pass_promtool_check() {
    if !support::require_server(PROMTOOL, "promtool") {
        return;
    }
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    let closed = format!("http://{}", closed_port().await);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state");
    let policy = policy(
        &queue.url(),
        &source.server.url(),
        &closed,
        &snapshot.display().to_string(),
    );
    let ekko = Ekko::start(&policy).await;

    send_every_kind(&ekko, &source).await;
    wait_for_series(&ekko, r#"ekko_snapshot_writes_total{result="ok"}"#).await;

    let response = HttpClient::default()
        .get(&format!("{}/metrics", ekko.admin))
        .await;
    assert_eq!(
        response.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text();
    for series in EXPECTED_SERIES {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    let checked = promtool_check(&text);
    assert!(
        checked.status.success(),
        "promtool check metrics failed ({}):\nstdout:\n{}\nstderr:\n{}\nexposition:\n{text}",
        checked.status,
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
    );
}

#[test]
#[ignore = "needs promtool; run by .ci/run"]
fn promtool_rejects_counter_without_help() {
    if !support::require_server(PROMTOOL, "promtool") {
        return;
    }
    let checked = promtool_check("# TYPE ekko_example_total counter\nekko_example_total 1\n");

    // promtool 2.42 prints lint problems on standard error.
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success(), "promtool accepted it: {stderr}");
    assert!(stderr.contains("no help text"), "stderr: {stderr}");
}
