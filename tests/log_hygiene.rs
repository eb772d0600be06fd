//! The `ekko` binary's log at debug level never contains a credential, a request body or
//! a query string, while it does record each request on the access log target.

mod harness;

use std::io::Read;
use std::process::{Command, Stdio};

use bytes::Bytes;
use harness::{cloudevent, HttpClient, MockServer, SourceApi, CE_JSON};
use http::Request;
use http_body_util::Full;
use serde_json::json;

const PRODUCER_TOKEN: &str = "producer-secret-4711";
const CONSUMER_TOKEN: &str = "consumer-secret-0815";
const UPSTREAM_SECRET: &str = "upstream-secret-2342";
const QUERY_SECRET: &str = "query-secret-1234";
const BODY_MARKER: &str = "body-marker-5678";

fn policy(queue: &str, source: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstreams:
  mq: {{ url: "{queue}" }}
  api: {{ url: "{source}", headers: {{ Authorization: "Bearer ${{EKKO_TEST_SECRET}}" }} }}
notifications:
  - name: hr
    match: {{ path: "/events" }}
    upstream: mq
    format: cloudevents
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: api, path: "/persons/{{subject}}" }}
lookups:
  - name: persons
    match: {{ path: "/persons/{{id}}" }}
    upstream: api
    entity: "hr/person/{{id}}"
"#
    )
}

#[tokio::test]
async fn debug_log_has_no_secrets_or_bodies() {
    let queue = MockServer::accepting().await;
    let source = SourceApi::start("/persons").await;
    source.put("1", json!({ "name": BODY_MARKER }));
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy(&queue.url(), &source.server.url())).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ekko"))
        .args(["--log-format", "json", "serve", "--policy"])
        .arg(&policy_path)
        .env("EKKO_LOG", "debug")
        .env("EKKO_TEST_SECRET", UPSTREAM_SECRET)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let base = read_public_address(&mut stderr);
    let client = HttpClient::default();

    let notification = Request::post(format!("{base}/events?apikey={QUERY_SECRET}"))
        .header("content-type", CE_JSON)
        .header("authorization", format!("Bearer {PRODUCER_TOKEN}"))
        .body(Full::new(Bytes::from(cloudevent(
            "e1",
            "1",
            json!({ "note": BODY_MARKER }),
        ))))
        .unwrap();
    let forwarded = client.send(notification).await;
    let lookup = Request::get(format!("{base}/persons/1?token={QUERY_SECRET}"))
        .header("authorization", format!("Bearer {CONSUMER_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let read = client.send(lookup).await;
    let rejected = client
        .post(
            &format!("{base}/events"),
            CE_JSON,
            format!("{{\"broken\": \"{BODY_MARKER}\""),
        )
        .await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    child.wait().unwrap();

    assert_eq!(forwarded.decision(), "forwarded");
    assert_eq!(read.status, 200);
    assert_eq!(rejected.status, 400);
    assert!(log.contains("ekko::access"), "no access log lines:\n{log}");
    for secret in [
        PRODUCER_TOKEN,
        CONSUMER_TOKEN,
        UPSTREAM_SECRET,
        QUERY_SECRET,
        BODY_MARKER,
    ] {
        assert!(!log.contains(secret), "the log contains `{secret}`:\n{log}");
    }
}

/// Reads log lines until the startup line and returns the public listener's URL.
fn read_public_address(stderr: &mut impl Read) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        assert_eq!(
            stderr.read(&mut byte).unwrap(),
            1,
            "ekko exited before listening"
        );
        if byte[0] != b'\n' {
            seen.push(byte[0]);
            continue;
        }
        let line = String::from_utf8_lossy(&seen).into_owned();
        seen.clear();
        if line.contains("ekko listening") {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            return format!(
                "http://{}",
                value["fields"]["public_addr"].as_str().unwrap()
            );
        }
    }
}
