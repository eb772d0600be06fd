//! Black-box tests of the admin listener (`/metrics`, `/healthz`, `/readyz`) over real
//! sockets on 127.0.0.1, and of its separation from the public listener.

mod harness;

use bytes::Bytes;
use harness::{cloudevent, Ekko, HttpClient, MockServer, CE_JSON};
use http::Request;
use http_body_util::Full;
use serde_json::json;

fn policy(queue: &str) -> String {
    format!(
        r#"
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
      ignore: ["/meta/lastModified"]
"#
    )
}

fn request(method: &str, url: &str, accept: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(accept) = accept {
        builder = builder.header("accept", accept);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn metrics_default_to_prometheus_text() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;

    let answer = HttpClient::default()
        .get(&format!("{}/metrics", ekko.admin))
        .await;

    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = answer.text();
    assert!(
        text.contains("# TYPE ekko_notifications_total counter\n"),
        "{text}"
    );
    assert!(text.contains("ekko_build_info{"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
}

#[tokio::test]
async fn metrics_negotiate_openmetrics() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

    let answer = HttpClient::default()
        .send(request(
            "GET",
            &format!("{}/metrics", ekko.admin),
            Some(accept),
        ))
        .await;

    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = answer.text();
    assert!(
        text.contains("# TYPE ekko_notifications counter\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn health_endpoints_answer_ok() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;
    let client = HttpClient::default();

    let health = client.get(&format!("{}/healthz", ekko.admin)).await;
    let ready = client.get(&format!("{}/readyz", ekko.admin)).await;
    let head = client
        .send(request("HEAD", &format!("{}/healthz", ekko.admin), None))
        .await;

    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.text(), "ready\n");
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn admin_paths_not_served_publicly() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;
    let client = HttpClient::default();

    for path in ["/metrics", "/healthz", "/readyz"] {
        let answer = client.get(&ekko.url(path)).await;
        assert_eq!(answer.status, 404, "public {path}");
        assert_eq!(answer.json()["error"], "no_route", "public {path}");
    }
    assert_eq!(queue.count(), 0);
}

#[tokio::test]
async fn admin_rejects_post_with_405() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;

    let answer = HttpClient::default()
        .post(&format!("{}/metrics", ekko.admin), "text/plain", "x")
        .await;

    assert_eq!(answer.status, 405);
    assert_eq!(answer.headers["allow"], "GET, HEAD");
    assert_eq!(answer.json()["error"], "method_not_allowed");
}

#[tokio::test]
async fn unknown_admin_path_is_404() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;

    let answer = HttpClient::default()
        .get(&format!("{}/events", ekko.admin))
        .await;

    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "not_found");
}

#[tokio::test]
async fn metrics_never_contain_entity_id() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;
    let client = HttpClient::default();
    let secret = "secret-person-42";
    let state = |modified: &str| json!({ "name": "Ola", "meta": { "lastModified": modified } });

    client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e1", secret, state("t1")),
        )
        .await;
    client
        .post(
            &ekko.url("/events"),
            CE_JSON,
            cloudevent("e2", secret, state("t2")),
        )
        .await;
    let openmetrics = HttpClient::default()
        .send(request(
            "GET",
            &format!("{}/metrics", ekko.admin),
            Some("application/openmetrics-text"),
        ))
        .await
        .text();
    let prometheus = ekko.metrics().await;

    // The counters moved, so the notifications did reach the metrics.
    assert_eq!(
        ekko.metric(r#"ekko_notifications_total{route="hr",decision="forwarded"}"#)
            .await,
        1.0
    );
    assert_eq!(
        ekko.metric(r#"ekko_notifications_total{route="hr",decision="unchanged"}"#)
            .await,
        1.0
    );
    assert!(!prometheus.contains(secret), "{prometheus}");
    assert!(!openmetrics.contains(secret), "{openmetrics}");
}
