//! ekko publishing over AMQP 0-9-1 with publisher confirms to a private RabbitMQ broker, read
//! back by an AMQP consumer.

mod harness;
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::StreamExt;
use harness::{cloudevent, HttpClient, CE_JSON};
use http::Request;
use http_body_util::Full;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use support::rabbitmq::{Broker, RABBITMQ_SERVER};
use tokio::sync::mpsc;

const EXCHANGE: &str = "hr";
const QUEUE: &str = "hr-persons";
const BINDING: &str = "hr.person.#";
const EVENTS_PATH: &str = "/events";

/// Time to wait for a message that should arrive, or to be sure that none does.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);
const QUIET_WAIT: Duration = Duration::from_millis(700);

fn policy(broker: &Broker, ignore: &str) -> String {
    format!(
        r#"upstreams:
  mq:
    url: "{url}"
    exchange: "{EXCHANGE}"
    routing_key: "hr.person.{{type}}"
    reconnect_min: 100ms
    reconnect_max: 400ms
notifications:
  - name: hr-person
    match: {{ path: "{EVENTS_PATH}" }}
    upstream: mq
    format: cloudevents
    entity: "hr/person/{{subject}}"
    fingerprint: {{ payload: {{}}, ignore: [{ignore}] }}
    loop_guard: {{ enabled: false }}
"#,
        url = broker.amqp_url()
    )
}

/// One message as the consumer received it.
#[derive(Debug)]
struct Received {
    routing_key: String,
    headers: FieldTable,
    content_type: Option<String>,
    message_id: Option<String>,
    delivery_mode: Option<u8>,
    body: Vec<u8>,
}

impl Received {
    fn header_text(&self, name: &str) -> Option<String> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongString(text) => Some(text.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    fn header_int(&self, name: &str) -> Option<i64> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongLongInt(number) => Some(*number),
            _ => None,
        }
    }
}

/// An AMQP consumer on `queue` that acknowledges every delivery and hands it to the test.
struct Consumer {
    _connection: Connection,
    deliveries: mpsc::UnboundedReceiver<Received>,
}

impl Consumer {
    async fn start(broker: &Broker, queue: &str) -> Self {
        let connection = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
            .await
            .expect("test consumer connects");
        let channel = connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "ekko-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (sender, deliveries) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let properties = &delivery.properties;
                let received = Received {
                    routing_key: delivery.routing_key.to_string(),
                    headers: properties.headers().clone().unwrap_or_default(),
                    content_type: properties.content_type().as_ref().map(|t| t.to_string()),
                    message_id: properties.message_id().as_ref().map(|t| t.to_string()),
                    delivery_mode: *properties.delivery_mode(),
                    body: delivery.data.clone(),
                };
                if sender.send(received).is_err() {
                    return;
                }
            }
        });
        Self {
            _connection: connection,
            deliveries,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(DELIVERY_WAIT, self.deliveries.recv())
            .await
            .expect("a message arrives within 5 s")
            .expect("consumer is running")
    }

    /// Asserts that no further message arrives within a short wait.
    async fn assert_quiet(&mut self) {
        if let Ok(Some(extra)) = tokio::time::timeout(QUIET_WAIT, self.deliveries.recv()).await {
            panic!("unexpected message: {extra:?}");
        }
    }
}

async fn broker_with_exchange() -> Broker {
    let broker = Broker::start().await.expect("test broker starts");
    broker.declare_topic_exchange(EXCHANGE).await.unwrap();
    broker
}

async fn bound_queue(broker: &Broker) {
    broker.declare_queue(QUEUE).await.unwrap();
    broker.bind(EXCHANGE, QUEUE, BINDING).await.unwrap();
}

async fn post_event(
    client: &HttpClient,
    url: &str,
    id: &str,
    subject: &str,
    name: &str,
) -> harness::Answer {
    let body = cloudevent(id, subject, json!({ "name": name }));
    client.post(url, CE_JSON, body).await
}

async fn readyz(client: &HttpClient, ekko: &harness::Ekko) -> harness::Answer {
    client.get(&format!("{}/readyz", ekko.admin)).await
}

/// Waits until /readyz returns `status`, at most 20 s.
async fn wait_for_readyz(client: &HttpClient, admin: &str, status: u16) {
    for _ in 0..200 {
        if client.get(&format!("{admin}/readyz")).await.status.as_u16() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz did not return {status} within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn changes_arrive_once_as_cloudevents() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = broker_with_exchange().await;
    bound_queue(&broker).await;
    let mut consumer = Consumer::start(&broker, QUEUE).await;
    let ekko = harness::Ekko::start(&policy(&broker, "")).await;
    let client = HttpClient::default();
    let url = ekko.url(EVENTS_PATH);
    wait_for_readyz(&client, &ekko.admin, 200).await;

    let first = post_event(&client, &url, "e1", "p1", "Ola").await;
    assert_eq!(first.status, 200, "body {}", first.text());
    assert_eq!(first.decision(), "forwarded");
    assert_eq!(
        first.json(),
        json!({ "published": 1, "confirmed": 1, "returned": 0 })
    );
    let message = consumer.next().await;
    assert_eq!(message.routing_key, "hr.person.person.changed");
    assert_eq!(message.header_text("cloudEvents:id").as_deref(), Some("e1"));
    assert_eq!(
        message.header_text("cloudEvents:type").as_deref(),
        Some("person.changed")
    );
    assert_eq!(
        message.header_text("cloudEvents:subject").as_deref(),
        Some("p1")
    );
    assert_eq!(
        message.header_text("cloudEvents:source").as_deref(),
        Some("urn:hr")
    );
    assert_eq!(message.header_int("cloudEvents:ekkohops"), Some(1));
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.message_id.as_deref(), Some("e1"));
    assert_eq!(message.delivery_mode, Some(2));
    assert_eq!(message.body, br#"{"name":"Ola"}"#);

    let unchanged = post_event(&client, &url, "e2", "p1", "Ola").await;
    assert_eq!(unchanged.decision(), "unchanged");
    consumer.assert_quiet().await;

    let changed = post_event(&client, &url, "e3", "p1", "Ola Nordmann").await;
    assert_eq!(changed.status, 200);
    assert_eq!(consumer.next().await.message_id.as_deref(), Some("e3"));

    let batch = format!(
        "[{},{}]",
        cloudevent("b1", "p2", json!({ "name": "Kari" })),
        cloudevent("b2", "p3", json!({ "name": "Per" }))
    );
    let answer = client
        .post(&url, "application/cloudevents-batch+json", batch)
        .await;
    assert_eq!(answer.status, 200, "body {}", answer.text());
    assert_eq!(answer.json()["confirmed"], 2);
    let ids = [
        consumer.next().await.message_id,
        consumer.next().await.message_id,
    ];
    assert_eq!(ids, [Some("b1".to_owned()), Some("b2".to_owned())]);
    consumer.assert_quiet().await;

    let confirmed = r#"ekko_amqp_publishes_total{upstream="mq",outcome="confirmed"}"#;
    assert_eq!(ekko.metric(confirmed).await, 4.0);
    assert_eq!(
        ekko.metric(r#"ekko_amqp_connected{upstream="mq"}"#).await,
        1.0
    );
    ekko.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn unroutable_and_outage_commit_nothing() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = broker_with_exchange().await;
    let ekko = harness::Ekko::start(&policy(&broker, "")).await;
    let client = HttpClient::default();
    let url = ekko.url(EVENTS_PATH);
    wait_for_readyz(&client, &ekko.admin, 200).await;

    let unroutable = post_event(&client, &url, "e1", "p1", "Ola").await;
    assert_eq!(unroutable.status, 502, "body {}", unroutable.text());
    assert_eq!(unroutable.decision(), "upstream_error");
    assert_eq!(unroutable.json()["error"], "amqp_unroutable");

    bound_queue(&broker).await;
    let mut consumer = Consumer::start(&broker, QUEUE).await;
    let retried = post_event(&client, &url, "e1", "p1", "Ola").await;
    assert_eq!(
        retried.status, 200,
        "nothing was committed, so the retry is forwarded"
    );
    assert_eq!(consumer.next().await.message_id.as_deref(), Some("e1"));

    tokio::task::block_in_place(|| broker.stop_app()).expect("stop_app");
    wait_for_readyz(&client, &ekko.admin, 503).await;
    let ready = readyz(&client, &ekko).await;
    assert!(ready.text().contains("mq"), "readyz body {}", ready.text());
    let down = post_event(&client, &url, "e2", "p1", "Kari").await;
    assert_eq!(down.status, 503, "body {}", down.text());
    assert_eq!(down.decision(), "upstream_error");
    assert!(down.headers.contains_key("retry-after"));

    tokio::task::block_in_place(|| broker.start_app()).expect("start_app");
    wait_for_readyz(&client, &ekko.admin, 200).await;
    let mut consumer = Consumer::start(&broker, QUEUE).await;
    let after = post_event(&client, &url, "e2", "p1", "Kari").await;
    assert_eq!(after.status, 200, "body {}", after.text());
    let message = consumer.next().await;
    assert_eq!(message.message_id.as_deref(), Some("e2"));
    assert_eq!(message.body, br#"{"name":"Kari"}"#);
    assert!(
        ekko.metric(r#"ekko_amqp_reconnects_total{upstream="mq"}"#)
            .await
            >= 1.0
    );
    ekko.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn reload_keeps_publishing_without_failures() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = broker_with_exchange().await;
    bound_queue(&broker).await;
    let mut consumer = Consumer::start(&broker, QUEUE).await;
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("policy.yaml");
    let plain = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{}",
        policy(&broker, "")
    );
    let masked = plain.replace("ignore: []", "ignore: [\"/stamp\"]");
    std::fs::write(&file, &plain).unwrap();
    let loaded = ekko::policy::load(&file).unwrap();
    let running = ekko::server::start_with_policy_file(loaded, file.clone())
        .await
        .unwrap();
    let base = format!("http://{}", running.public_addr);
    let admin = format!("http://{}", running.admin_addr);
    let client = HttpClient::default();
    wait_for_readyz(&client, &admin, 200).await;

    let mut forwarded = 0;
    for round in 0..20 {
        std::fs::write(&file, if round % 2 == 0 { &masked } else { &plain }).unwrap();
        let reload = client
            .send(
                Request::post(format!("{admin}/admin/reload"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(reload.status, 200, "reload {}", reload.text());
        let body = cloudevent(&format!("r{round}"), "p1", json!({ "round": round }));
        let answer = client
            .post(&format!("{base}{EVENTS_PATH}"), CE_JSON, body)
            .await;
        assert!(
            answer.status.is_success(),
            "round {round}: {} {}",
            answer.status,
            answer.text()
        );
        if answer.decision() == "forwarded" {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 20, "every round changes the state");
    for _ in 0..20 {
        consumer.next().await;
    }
    consumer.assert_quiet().await;
    let reconnects = || {
        running
            .metrics
            .amqp_reconnects
            .get_or_create(&ekko::metrics::UpstreamLabels {
                upstream: "mq".to_owned(),
            })
            .get()
    };
    assert_eq!(
        reconnects(),
        0,
        "an unchanged upstream keeps its connection across reloads"
    );

    let changed = plain.replace("reconnect_max: 400ms", "reconnect_max: 300ms");
    std::fs::write(&file, &changed).unwrap();
    let reload = client
        .send(
            Request::post(format!("{admin}/admin/reload"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(reload.status, 200, "reload {}", reload.text());
    for _ in 0..100 {
        if reconnects() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reconnects(), 1, "a changed upstream opens a new connection");
    wait_for_readyz(&client, &admin, 200).await;
    let body = cloudevent("after-change", "p1", json!({ "round": "changed" }));
    let answer = client
        .post(&format!("{base}{EVENTS_PATH}"), CE_JSON, body)
        .await;
    assert_eq!(answer.status, 200, "body {}", answer.text());
    assert_eq!(
        consumer.next().await.message_id.as_deref(),
        Some("after-change")
    );
    running.shutdown().await.unwrap();
}

const TENANT_EVENTS_PATH: &str = "/tenants";
const GOOD_TENANT: &str = "good";
const GOOD_QUEUE: &str = "hr-good-persons";

/// Builds a policy whose exchange name is rendered from the tenant in the request path.
fn tenant_policy(broker: &Broker) -> String {
    format!(
        r#"upstreams:
  mq:
    url: "{url}"
    exchange: "hr-{{tenant}}"
    routing_key: "hr.person.{{type}}"
    reconnect_min: 100ms
    reconnect_max: 400ms
notifications:
  - name: hr-tenant
    match: {{ path: "{TENANT_EVENTS_PATH}/{{tenant}}" }}
    upstream: mq
    format: cloudevents
    entity: "hr/{{tenant}}/{{subject}}"
    fingerprint: {{ payload: {{}} }}
    loop_guard: {{ enabled: false }}
"#,
        url = broker.amqp_url()
    )
}

/// Declares the exchange `hr-{tenant}` with the queue `queue` bound to every routing key.
async fn tenant_exchange(broker: &Broker, tenant: &str, queue: &str) {
    let exchange = format!("hr-{tenant}");
    broker.declare_topic_exchange(&exchange).await.unwrap();
    broker.declare_queue(queue).await.unwrap();
    broker.bind(&exchange, queue, "#").await.unwrap();
}

async fn delete_exchange(client: &HttpClient, broker: &Broker, name: &str) {
    let request = Request::delete(format!(
        "{}/api/exchanges/%2F/{name}",
        broker.management_url()
    ))
    .header("authorization", broker.authorization())
    .body(Full::new(Bytes::new()))
    .unwrap();
    let answer = client.send(request).await;
    assert!(
        answer.status.is_success(),
        "delete {name}: {}",
        answer.text()
    );
}

/// Polls /readyz every 10 ms until `stop` is set and returns every status other than 200.
fn watch_readyz(
    client: HttpClient,
    admin: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<u16>)> {
    tokio::spawn(async move {
        let (mut polls, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let status = client.get(&format!("{admin}/readyz")).await.status.as_u16();
            polls += 1;
            if status != 200 {
                failures.push(status);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (polls, failures)
    })
}

/// Asserts that `answer` is the 502 for the missing exchange `exchange`.
fn assert_exchange_not_found(answer: &harness::Answer, exchange: &str) {
    assert_eq!(answer.status, 502, "body {}", answer.text());
    assert_eq!(answer.decision(), "upstream_error");
    let body = answer.json();
    assert_eq!(body["error"], "amqp_exchange_not_found", "body {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("`{exchange}`")),
        "message names the exchange: {message}"
    );
    assert!(
        message.contains("declare the exchange"),
        "message says what to do: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn missing_exchange_leaves_others_publishing() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = Broker::start().await.expect("test broker starts");
    tenant_exchange(&broker, GOOD_TENANT, GOOD_QUEUE).await;
    let mut consumer = Consumer::start(&broker, GOOD_QUEUE).await;
    let ekko = harness::Ekko::start(&tenant_policy(&broker)).await;
    let client = HttpClient::default();
    wait_for_readyz(&client, &ekko.admin, 200).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readiness = watch_readyz(client.clone(), ekko.admin.clone(), stop.clone());

    let missing_url = ekko.url(&format!("{TENANT_EVENTS_PATH}/missing"));
    let bad_producer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = format!("m{}", answers.len());
                answers.push(post_event(&client, &missing_url, &id, &id, "Ola").await);
            }
            answers
        })
    };
    let good_url = ekko.url(&format!("{TENANT_EVENTS_PATH}/{GOOD_TENANT}"));
    let mut producers = Vec::new();
    for producer in 0..4 {
        let (client, url) = (client.clone(), good_url.clone());
        producers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for index in 0..50 {
                let id = format!("g{producer}-{index}");
                answers.push((
                    id.clone(),
                    post_event(&client, &url, &id, &id, "Kari").await,
                ));
            }
            answers
        }));
    }
    let mut sent = std::collections::BTreeSet::new();
    for producer in producers {
        for (id, answer) in producer.await.unwrap() {
            assert_eq!(answer.status, 200, "{id}: body {}", answer.text());
            assert_eq!(answer.json()["confirmed"], 1, "{id}");
            sent.insert(id);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let bad_answers = bad_producer.await.unwrap();
    let (polls, not_ready) = readiness.await.unwrap();

    assert!(!bad_answers.is_empty(), "the bad producer posted nothing");
    for answer in &bad_answers {
        assert_exchange_not_found(answer, "hr-missing");
    }
    assert!(polls > 0, "/readyz was never polled");
    assert!(not_ready.is_empty(), "/readyz answered {not_ready:?}");
    assert_eq!(sent.len(), 200);
    let mut received = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let id = consumer.next().await.message_id.expect("message id");
        assert!(received.insert(id.clone()), "{id} arrived twice");
    }
    assert_eq!(received, sent);
    consumer.assert_quiet().await;
    assert_eq!(
        ekko.metric(r#"ekko_amqp_reconnects_total{upstream="mq"}"#)
            .await,
        0.0
    );
    ekko.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn deleted_exchange_fails_only_its_publish() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = Broker::start().await.expect("test broker starts");
    tenant_exchange(&broker, GOOD_TENANT, GOOD_QUEUE).await;
    tenant_exchange(&broker, "gone", "hr-gone-persons").await;
    let mut consumer = Consumer::start(&broker, GOOD_QUEUE).await;
    let ekko = harness::Ekko::start(&tenant_policy(&broker)).await;
    let client = HttpClient::default();
    wait_for_readyz(&client, &ekko.admin, 200).await;
    let gone_url = ekko.url(&format!("{TENANT_EVENTS_PATH}/gone"));
    let good_url = ekko.url(&format!("{TENANT_EVENTS_PATH}/{GOOD_TENANT}"));

    let cached = post_event(&client, &gone_url, "d1", "p1", "Ola").await;
    assert_eq!(cached.status, 200, "body {}", cached.text());
    delete_exchange(&client, &broker, "hr-gone").await;
    let deleted = post_event(&client, &gone_url, "d2", "p1", "Kari").await;
    assert_exchange_not_found(&deleted, "hr-gone");
    let next = post_event(&client, &good_url, "n1", "p1", "Per").await;
    assert_eq!(next.status, 200, "body {}", next.text());
    assert_eq!(consumer.next().await.message_id.as_deref(), Some("n1"));

    // Publishes in flight on the shared channel when the broker closes it are published
    // again on the reopened channel, so none of them fails.
    tenant_exchange(&broker, "gone", "hr-gone-persons").await;
    let cached = post_event(&client, &gone_url, "d3", "p2", "Ola").await;
    assert_eq!(cached.status, 200, "body {}", cached.text());
    delete_exchange(&client, &broker, "hr-gone").await;
    let bad = {
        let (client, url) = (client.clone(), gone_url.clone());
        tokio::spawn(async move { post_event(&client, &url, "d4", "p2", "Kari").await })
    };
    let mut good = Vec::new();
    for index in 0..20 {
        let (client, url) = (client.clone(), good_url.clone());
        let id = format!("c{index}");
        good.push(tokio::spawn(async move {
            let answer = post_event(&client, &url, &id, &id, "Liv").await;
            (id, answer)
        }));
    }
    assert_exchange_not_found(&bad.await.unwrap(), "hr-gone");
    let mut sent = std::collections::BTreeSet::new();
    for task in good {
        let (id, answer) = task.await.unwrap();
        assert_eq!(answer.status, 200, "{id}: body {}", answer.text());
        sent.insert(id);
    }
    // A message that was routed before the channel closed arrives twice, so repeats are
    // allowed here.
    let mut received = std::collections::BTreeSet::new();
    while received != sent {
        let id = consumer.next().await.message_id.expect("message id");
        assert!(sent.contains(&id), "unexpected message {id}");
        received.insert(id);
    }

    assert_eq!(readyz(&client, &ekko).await.status, 200);
    assert_eq!(
        ekko.metric(r#"ekko_amqp_reconnects_total{upstream="mq"}"#)
            .await,
        0.0
    );
    assert_eq!(
        ekko.metric(r#"ekko_amqp_connected{upstream="mq"}"#).await,
        1.0
    );
    ekko.stop().await.unwrap();
}

/// Parses a policy with `EKKO_AMQP_PASSWORD` set and returns every problem message.
fn problems(text: &str) -> Vec<String> {
    let env = |name: &str| (name == "EKKO_AMQP_PASSWORD").then(|| "s3cret-pass".to_owned());
    match ekko::policy::parse(text, &env) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .0
            .into_iter()
            .map(|p| format!("line {}: {}", p.line, p.message))
            .collect(),
    }
}

fn amqp_policy(upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  mq:\n    url: \"amqp://127.0.0.1:5672/%2F\"\n    exchange: \"hr\"\n{upstream_extra}  api: {{ url: \"http://127.0.0.1:8081\" }}\nnotifications:\n  - name: hr\n    match: {{ path: \"/events/{{tenant}}\" }}\n    upstream: mq\n    format: cloudevents\n    entity: \"p/{{subject}}\"\n{route_extra}"
    )
}

#[test]
fn amqp_upstream_defaults_fill_in() {
    let text = amqp_policy(
        "    password: \"${EKKO_AMQP_PASSWORD}\"\n    username: ekko\n",
        "",
    );
    let env = |name: &str| (name == "EKKO_AMQP_PASSWORD").then(|| "s3cret-pass".to_owned());
    let policy = ekko::policy::parse(&text, &env).unwrap();
    let amqp = policy.upstreams["mq"].amqp.as_ref().expect("mq is amqp");
    assert_eq!(amqp.vhost, "/");
    assert_eq!(amqp.port, 5672);
    assert!(amqp.mandatory);
    assert_eq!(amqp.unroutable, ekko::policy::Unroutable::Error);
    assert_eq!(amqp.confirm_timeout, Duration::from_secs(5));
    assert_eq!(amqp.reconnect_min, Duration::from_millis(100));
    assert_eq!(amqp.reconnect_max, Duration::from_secs(30));
    assert_eq!(amqp.password.expose(), "s3cret-pass");
    let debug = format!("{policy:?}");
    assert!(
        !debug.contains("s3cret-pass"),
        "Debug output shows the password"
    );
    assert!(policy.upstreams["api"].amqp.is_none());
}

/// Asserts that one of `found` contains `expected`, and lists them all when none does.
fn assert_problem(found: &[String], expected: &str) {
    assert!(
        found.iter().any(|problem| problem.contains(expected)),
        "no problem contains {expected:?}: {found:?}"
    );
}

#[test]
fn amqps_url_is_rejected() {
    let text = amqp_policy("", "").replace("amqp://", "amqps://");
    let found = problems(&text);
    assert_problem(&found, "terminate TLS in a sidecar");
}

#[test]
fn http_keys_on_amqp_are_rejected() {
    let found = problems(&amqp_policy(
        "    headers: { X-A: \"1\" }\n    timeout: 5s\n",
        "",
    ));
    assert_problem(&found, "`headers` applies only to http upstreams");
    assert_problem(&found, "`timeout` applies only to http upstreams");
}

#[test]
fn amqp_keys_on_http_are_rejected() {
    let text = amqp_policy("", "").replace(
        "api: { url: \"http://127.0.0.1:8081\" }",
        "api: { url: \"http://127.0.0.1:8081\", exchange: hr }",
    );
    let found = problems(&text);
    assert_problem(&found, "`exchange` applies only to amqp upstreams");
}

#[test]
fn lookup_on_amqp_upstream_is_rejected() {
    let lookup = "lookups:\n  - name: people\n    match: { path: \"/people/{id}\" }\n    upstream: mq\n    entity: \"p/{id}\"\n";
    let found = problems(&format!("{}{lookup}", amqp_policy("", "")));
    assert_problem(
        &found,
        "is an amqp upstream, but a lookup route reads over HTTP",
    );
    let fingerprint = "    fingerprint: { lookup: { upstream: mq, path: \"/p/{subject}\" } }\n";
    let found = problems(&amqp_policy("", fingerprint));
    assert_problem(&found, "`fingerprint: lookup` reads over HTTP");
}

#[test]
fn amqp_route_checks_template_fields() {
    let found = problems(&amqp_policy(
        "    routing_key: \"hr.{region}.{type}\"\n",
        "",
    ));
    assert_problem(&found, "`{region}`, which this route does not have");
    let fits = problems(&amqp_policy(
        "    routing_key: \"hr.{tenant}.{type}\"\n",
        "",
    ));
    assert!(fits.is_empty(), "{fits:?}");
}

#[test]
fn amqp_route_rejects_publish_format() {
    let text = amqp_policy("", "    on_undecodable: forward\n")
        .replace("format: cloudevents", "format: rabbitmq-publish");
    let found = problems(&text);
    assert_problem(&found, "format `rabbitmq-publish`");
    assert_problem(&found, "`on_undecodable: forward` cannot work");
}

#[test]
fn amqp_credentials_are_never_echoed() {
    let text = amqp_policy(
        "    password: \"${EKKO_AMQP_PASSWORD}\"\n    heartbeat: 1500ms\n",
        "",
    );
    let found = problems(&text);
    assert_problem(&found, "is set without `username`");
    assert_problem(&found, "`heartbeat` must be whole seconds");
    assert!(
        found.iter().all(|p| !p.contains("s3cret-pass")),
        "{found:?}"
    );
    let userinfo = amqp_policy("", "").replace("amqp://", "amqp://ekko:s3cret-pass@");
    let found = problems(&userinfo);
    assert_problem(&found, "contains user information");
    assert!(
        found.iter().all(|p| !p.contains("s3cret-pass")),
        "{found:?}"
    );
}

#[test]
fn reconnect_bounds_must_be_ordered() {
    let found = problems(&amqp_policy(
        "    reconnect_min: 10s\n    reconnect_max: 1s\n",
        "",
    ));
    assert_problem(&found, "`reconnect_min` is longer than `reconnect_max`");
}

/// Each URL contains user information and a second problem that the check may find first.
#[test]
fn malformed_url_never_echoes_password() {
    let urls = [
        "amqp://ekko:s3cret-pass@127.0.0.1:5672/%2F?heartbeat=5",
        "amqp://ekko:s3cret#pass@127.0.0.1:5672/%2F",
        "amqp://ekko:s3cret/pass@127.0.0.1:5672/%2F",
        "amqq://ekko:s3cret-pass@127.0.0.1:5672/%2F",
    ];
    for url in urls {
        let text = amqp_policy("", "").replace("amqp://127.0.0.1:5672/%2F", url);
        let found = problems(&text);
        assert!(!found.is_empty(), "{url} was accepted");
        assert!(
            found.iter().all(|p| !p.contains("s3cret")),
            "{url}: {found:?}"
        );
    }
}

#[test]
fn unquoted_password_is_not_echoed() {
    let text = amqp_policy("    username: ekko\n    password: 731946\n", "");
    let found = problems(&text);
    assert_problem(&found, "`password` must be");
    assert!(found.iter().all(|p| !p.contains("731946")), "{found:?}");
}

const TRACE_USER: &str = "ekko-trace";
const TRACE_PASSWORD: &str = "pw-trace-5309";

/// Creates the broker user `TRACE_USER` with full rights on vhost `/`.
async fn create_trace_user(client: &HttpClient, broker: &Broker) {
    let calls = [
        (
            format!("/api/users/{TRACE_USER}"),
            json!({ "password": TRACE_PASSWORD, "tags": "" }),
        ),
        (
            format!("/api/permissions/%2F/{TRACE_USER}"),
            json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        ),
    ];
    for (path, body) in calls {
        let request = Request::put(format!("{}{path}", broker.management_url()))
            .header("authorization", broker.authorization())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let answer = client.send(request).await;
        assert!(answer.status.is_success(), "{path}: {}", answer.text());
    }
}

/// Reads the binary's JSON log lines until the startup line and returns the public address.
fn read_listening_address(lines: &mut impl std::io::BufRead, log: &mut String) -> String {
    loop {
        let mut line = String::new();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "ekko exited:\n{log}"
        );
        log.push_str(&line);
        if line.contains("ekko listening") {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            return value["fields"]["public_addr"].as_str().unwrap().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn trace_log_never_shows_amqp_password() {
    use std::io::{BufReader, Read};
    use std::process::{Command, Stdio};

    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = broker_with_exchange().await;
    bound_queue(&broker).await;
    let client = HttpClient::default();
    create_trace_user(&client, &broker).await;
    let credentials = format!(
        "    username: {TRACE_USER}\n    password: \"${{EKKO_AMQP_PASSWORD}}\"\n    exchange:"
    );
    let text = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{}",
        policy(&broker, "").replacen("    exchange:", &credentials, 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, text).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ekko"))
        .args(["--log-format", "json", "serve", "--policy"])
        .arg(&policy_path)
        .env("EKKO_LOG", "trace")
        .env("EKKO_AMQP_PASSWORD", TRACE_PASSWORD)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let address = read_listening_address(&mut stderr, &mut log);
    let url = format!("http://{address}{EVENTS_PATH}");
    let mut answer = post_event(&client, &url, "t1", "p1", "Ola").await;
    for attempt in 0..50 {
        if answer.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = post_event(&client, &url, &format!("t1-{attempt}"), "p1", "Ola").await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    stderr.read_to_string(&mut log).unwrap();
    child.wait().unwrap();

    assert_eq!(answer.status, 200, "body {}", answer.text());
    // lapin prints the SASL PLAIN response of `connection.start-ok` as a list of bytes.
    let as_bytes = TRACE_PASSWORD
        .bytes()
        .map(|byte| byte.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    assert!(log.contains("amqp connection open"), "{log}");
    assert!(!log.contains(TRACE_PASSWORD), "the log shows the password");
    assert!(!log.contains(&as_bytes), "the log shows the password bytes");
}
