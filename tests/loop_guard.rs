//! Black-box tests of the loop guard over real sockets on 127.0.0.1: oscillation and hop
//! limits quarantine an entity, the newest held notification is released once, and the
//! admin listener shows and releases quarantines.
//!
//! Most tests run on paused Tokio time. The runtime moves the clock on by itself whenever
//! every task waits, also while loopback IO is in flight, so the gaps between
//! notifications may be longer than the `advance` calls request. The assertions allow that.

mod harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use harness::{
    cloudevent_from, tick_until, Answer, Ekko, HttpClient, MockServer, Recorded, Reply, CE_JSON,
};
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

/// Gap between two notifications of a 10 Hz oscillation.
const FLIP: Duration = Duration::from_millis(100);

/// Maximum wait for a release, in seconds: `max_quarantine` (15 minutes) plus a margin.
const RELEASE_WAIT_SECONDS: u64 = 16 * 60;

const DETECTED_OSCILLATION: &str = r#"ekko_loop_detections_total{route="hr",kind="oscillation"}"#;
const DETECTED_HOPS: &str = r#"ekko_loop_detections_total{route="hr",kind="hops"}"#;
const QUARANTINED: &str = r#"ekko_quarantined_entities{route="hr"}"#;
const HELD: &str = r#"ekko_notifications_total{route="hr",decision="held"}"#;
const RELEASED_DELIVERED: &str = r#"ekko_loop_releases_total{route="hr",outcome="delivered"}"#;
const RELEASED_RETRY: &str = r#"ekko_loop_releases_total{route="hr",outcome="retry"}"#;

/// Event ids are unique across all tests and restarts, so no notification is a duplicate.
static NEXT_EVENT_ID: AtomicUsize = AtomicUsize::new(1);

/// Builds a policy with one CloudEvents route `hr` on `/events` that fingerprints the payload.
/// `loop_guard` is the route's `loop_guard` value in YAML flow style, or empty for none.
fn policy(queue: &str, loop_guard: &str) -> String {
    if loop_guard.is_empty() {
        route_policy(queue, "")
    } else {
        route_policy(queue, &format!("loop_guard: {loop_guard}"))
    }
}

/// Builds the policy of [`policy`] with `route_line` added to the route's keys.
fn route_policy(queue: &str, route_line: &str) -> String {
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
    {route_line}
"#
    )
}

fn state(letter: &str) -> Value {
    json!({ "state": letter })
}

/// Returns state A for an even flip and state B for an odd one.
fn flip_state(flip: usize) -> Value {
    state(if flip % 2 == 0 { "A" } else { "B" })
}

/// Sends structured CloudEvents to the route `hr`, each with a new event id.
struct Producer {
    client: HttpClient,
    url: String,
}

impl Producer {
    fn new(ekko: &Ekko) -> Self {
        Self {
            client: HttpClient::default(),
            url: ekko.url("/events"),
        }
    }

    async fn send(&self, source: &str, subject: &str, data: Value) -> Answer {
        self.send_with(&[], source, subject, data).await
    }

    async fn send_with(
        &self,
        headers: &[(&str, &str)],
        source: &str,
        subject: &str,
        data: Value,
    ) -> Answer {
        let id = format!("e{}", NEXT_EVENT_ID.fetch_add(1, Ordering::Relaxed));
        let body = cloudevent_from(source, &id, subject, data);
        self.send_raw(headers, CE_JSON, body).await
    }

    async fn send_raw(&self, headers: &[(&str, &str)], content_type: &str, body: String) -> Answer {
        let mut request = Request::post(&self.url).header("content-type", content_type);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        self.client.send(request).await
    }
}

/// Sends A, B, A, ... for `subject` at 10 Hz, the sources taking turns, until one
/// notification is not forwarded. Returns its index and the response. Panics when the
/// first `limit + 1` notifications are all forwarded.
async fn oscillate_until_held(
    producer: &Producer,
    sources: &[&str],
    subject: &str,
    limit: usize,
) -> (usize, Answer) {
    for flip in 0..=limit {
        let source = sources[flip % sources.len()];
        let answer = producer.send(source, subject, flip_state(flip)).await;
        if answer.decision() != "forwarded" {
            return (flip, answer);
        }
        assert_eq!(answer.status, 200, "flip {flip}");
        tokio::time::advance(FLIP).await;
    }
    panic!("none of {} flips of {subject} was held", limit + 1);
}

/// Continues the oscillation with flips `from..from + count`, asserting each is held.
async fn keep_oscillating(producer: &Producer, subject: &str, from: usize, count: usize) {
    for flip in from..from + count {
        let answer = producer.send("urn:hr", subject, flip_state(flip)).await;
        assert_eq!(
            answer.decision(),
            "held; reason=oscillation",
            "flip {flip} while quarantined"
        );
        tokio::time::advance(FLIP).await;
    }
}

/// Collects the requests the queue received for `subject`, in order.
fn deliveries(queue: &MockServer, subject: &str) -> Vec<Recorded> {
    queue
        .received()
        .into_iter()
        .filter(|r| r.json()["subject"] == subject)
        .collect()
}

fn state_of(recorded: &Recorded) -> Value {
    recorded.json()["data"].clone()
}

fn header(recorded: &Recorded, name: &str) -> Option<String> {
    recorded
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Polls a metric once per paused second until it reaches `at_least`, and returns the
/// last value read.
async fn metric_reaches(ekko: &Ekko, series: &str, at_least: f64, max_seconds: u64) -> f64 {
    for _ in 0..max_seconds {
        let value = ekko.metric(series).await;
        if value >= at_least {
            return value;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ekko.metric(series).await
}

#[tokio::test(start_paused = true)]
async fn oscillation_is_held_then_released_once() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);

    let (held_at, answer) = oscillate_until_held(&producer, &["urn:hr"], "123", 10).await;

    assert!(held_at <= 10, "first held at flip {held_at}");
    assert_eq!(answer.status, 202);
    assert_eq!(answer.decision(), "held; reason=oscillation");
    assert_eq!(answer.json()["decision"], "held");
    assert_eq!(answer.json()["reason"], "oscillation");
    assert_eq!(answer.json()["entity"], "hr/person/123");
    assert_eq!(queue.count(), held_at);
    assert_eq!(ekko.metric(DETECTED_OSCILLATION).await, 1.0);
    assert_eq!(ekko.metric(QUARANTINED).await, 1.0);

    // An even number of further flips ends on the held state, which differs from the
    // state forwarded last, so the release has something to deliver.
    keep_oscillating(&producer, "123", held_at + 1, 20).await;
    let final_state = flip_state(held_at);
    assert_eq!(
        queue.count(),
        held_at,
        "nothing forwarded while quarantined"
    );
    assert_eq!(ekko.metric(HELD).await, 21.0);

    let waited = tick_until(|| queue.count() > held_at, RELEASE_WAIT_SECONDS).await;
    assert!(waited.is_some(), "no release within 16 minutes");
    tick_until(|| false, 60).await;

    let after_quarantine = &deliveries(&queue, "123")[held_at..];
    let finals: Vec<&Recorded> = after_quarantine
        .iter()
        .filter(|r| state_of(r) == final_state)
        .collect();
    assert_eq!(after_quarantine.len(), 1, "deliveries after the quarantine");
    assert_eq!(finals.len(), 1, "final state delivered once");
    assert_eq!(header(finals[0], "ekko-coalesced").as_deref(), Some("20"));
    assert_eq!(ekko.metric(QUARANTINED).await, 0.0);
    assert_eq!(ekko.metric(RELEASED_DELIVERED).await, 1.0);
}

#[tokio::test(start_paused = true)]
async fn changing_counter_loop_is_cut() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    let mut decisions = Vec::new();

    for counter in 0..60 {
        let data = json!({ "state": "A", "counter": counter });
        let answer = producer.send("urn:hr", "123", data).await;
        decisions.push((answer.decision().to_owned(), queue.count()));
        tokio::time::advance(Duration::from_millis(50)).await;
    }

    let first_held = decisions
        .iter()
        .position(|(decision, _)| decision.starts_with("held"))
        .expect("the loop is held");
    assert!(first_held <= 20, "first held at notification {first_held}");
    assert_eq!(decisions[first_held].0, "held; reason=oscillation");
    for (index, (decision, queued)) in decisions.iter().enumerate().skip(first_held) {
        assert!(
            decision.starts_with("held"),
            "notification {index}: {decision}"
        );
        assert_eq!(*queued, first_held, "queue grew at notification {index}");
    }
    assert_eq!(ekko.metric(HELD).await, (60 - first_held) as f64);
}

#[tokio::test(start_paused = true)]
async fn change_every_ten_seconds_is_never_held() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;

    for step in 0..360 {
        // A new connection each time, so no keep-alive connection outlives ekko's
        // 30 s header timeout whatever the clock does.
        let producer = Producer::new(&ekko);
        let answer = producer
            .send("urn:hr", "123", json!({ "version": step }))
            .await;
        assert_eq!(answer.decision(), "forwarded", "step {step}");
        tokio::time::advance(Duration::from_secs(10)).await;
    }

    assert_eq!(queue.count(), 360);
    assert_eq!(ekko.metric(HELD).await, 0.0);
    assert_eq!(ekko.metric(DETECTED_OSCILLATION).await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn thousand_entities_changing_once_are_never_held() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);

    for entity in 0..1000 {
        let answer = producer
            .send("urn:hr", &entity.to_string(), state("A"))
            .await;
        assert_eq!(
            answer.decision(),
            "forwarded",
            "entity {entity} first state"
        );
    }
    for entity in 0..1000 {
        let answer = producer
            .send("urn:hr", &entity.to_string(), state("B"))
            .await;
        assert_eq!(answer.decision(), "forwarded", "entity {entity} change");
        tokio::time::advance(Duration::from_millis(1)).await;
    }

    assert_eq!(queue.count(), 2000);
    assert_eq!(ekko.metric(HELD).await, 0.0);
}

/// Quarantines an entity, makes the queue fail with `failure`, and checks that the held
/// notification is retried with backoff and delivered once the queue accepts again.
async fn release_retries_until_upstream_recovers(failure: Reply) {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    let (held_at, _) = oscillate_until_held(&producer, &["urn:hr"], "123", 10).await;
    queue.set_handler(move |_| failure.clone());

    let failed = tick_until(|| queue.count() > held_at, RELEASE_WAIT_SECONDS).await;
    assert!(failed.is_some(), "no release attempt within 16 minutes");
    let retries = metric_reaches(&ekko, RELEASED_RETRY, 1.0, 5).await;
    assert!(retries >= 1.0, "{retries} retries counted");
    assert_eq!(ekko.metric(RELEASED_DELIVERED).await, 0.0);
    assert_eq!(ekko.metric(QUARANTINED).await, 1.0);

    queue.set_handler(|_| Reply::Respond(200, r#"{"routed":true}"#.into()));
    // Backoff doubles from 1 s, and the attempts so far took less than a minute.
    let delivered = metric_reaches(&ekko, RELEASED_DELIVERED, 1.0, 120).await;
    tick_until(|| false, 60).await;

    assert_eq!(delivered, 1.0);
    assert_eq!(ekko.metric(RELEASED_DELIVERED).await, 1.0);
    assert_eq!(ekko.metric(QUARANTINED).await, 0.0);
    let attempts = &deliveries(&queue, "123")[held_at..];
    assert!(attempts.len() >= 2, "{} release attempts", attempts.len());
    for attempt in attempts {
        assert_eq!(state_of(attempt), flip_state(held_at));
    }
}

#[tokio::test(start_paused = true)]
async fn release_retries_after_503() {
    release_retries_until_upstream_recovers(Reply::Respond(503, "{}".into())).await;
}

#[tokio::test(start_paused = true)]
async fn release_retries_after_dropped_connection() {
    release_retries_until_upstream_recovers(Reply::Drop).await;
}

fn snapshot_policy(queue: &str, snapshot: &std::path::Path) -> String {
    format!(
        "state: {{ snapshot: \"{}\" }}\n{}",
        snapshot.display(),
        policy(queue, "")
    )
}

#[tokio::test(start_paused = true)]
async fn restart_keeps_held_notification() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = snapshot_policy(&queue.url(), &dir.path().join("state"));
    let first = Ekko::start(&policy).await;
    let (held_at, _) = oscillate_until_held(&Producer::new(&first), &["urn:hr"], "123", 10).await;
    keep_oscillating(&Producer::new(&first), "123", held_at + 1, 2).await;
    first.stop().await.unwrap();

    let second = Ekko::start(&policy).await;
    let quarantined = HttpClient::default()
        .get(&second.admin_url("/admin/quarantine"))
        .await
        .json();
    let waited = tick_until(|| queue.count() > held_at, RELEASE_WAIT_SECONDS).await;
    tick_until(|| false, 60).await;

    assert_eq!(quarantined["quarantined"][0]["entity"], "hr/person/123");
    assert_eq!(quarantined["quarantined"][0]["held"], 3);
    assert!(waited.is_some(), "no release within 16 minutes");
    let after_quarantine = &deliveries(&queue, "123")[held_at..];
    assert_eq!(after_quarantine.len(), 1);
    assert_eq!(state_of(&after_quarantine[0]), flip_state(held_at));
    assert_eq!(
        header(&after_quarantine[0], "ekko-coalesced").as_deref(),
        Some("2")
    );
}

#[tokio::test(start_paused = true)]

async fn restart_restores_quarantine_gauge() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = snapshot_policy(&queue.url(), &dir.path().join("state"));
    let first = Ekko::start(&policy).await;
    oscillate_until_held(&Producer::new(&first), &["urn:hr"], "123", 10).await;
    assert_eq!(first.metric(QUARANTINED).await, 1.0);
    first.stop().await.unwrap();

    let second = Ekko::start(&policy).await;

    assert_eq!(second.metric(QUARANTINED).await, 1.0);
}

/// W3C `traceparent` of the simulated cycle: one trace id, a new parent id per hop.
fn traceparent(parent: usize) -> String {
    format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{parent:016x}-01")
}

#[tokio::test]
async fn trace_chain_cuts_three_system_cycle() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "{ max_hops: 3 }")).await;
    let producer = Producer::new(&ekko);
    let systems = [
        ("urn:hr", "hr-1"),
        ("urn:iga", "iga-1"),
        ("urn:mail", "mail-1"),
    ];
    let mut forwards: HashMap<&str, usize> = HashMap::new();
    let mut cut = None;

    // Each system reacts to the previous system's forwarded notification by changing its
    // own entity, passing on the trace but not the hop count, as tracing libraries do.
    'cycle: for round in 0..10 {
        for (index, (source, subject)) in systems.iter().enumerate() {
            let parent = traceparent(round * systems.len() + index + 1);
            let data = json!({ "counter": round });
            let answer = producer
                .send_with(&[("traceparent", &parent)], source, subject, data)
                .await;
            if answer.decision() != "forwarded" {
                cut = Some((round, *subject, answer));
                break 'cycle;
            }
            *forwards.entry(subject).or_default() += 1;
        }
    }

    let (round, subject, answer) = cut.expect("the cycle is cut");
    assert_eq!(answer.status, 202);
    assert_eq!(answer.decision(), "held; reason=hops");
    assert_eq!(answer.json()["reason"], "hops");
    assert!(round <= 3, "cut in round {round} at {subject}");
    for (_, subject) in systems {
        let count = forwards.get(subject).copied().unwrap_or(0);
        assert!(count <= 3, "{subject} forwarded {count} times");
    }
    let hr_hops: Vec<Option<String>> = deliveries(&queue, "hr-1")
        .iter()
        .map(|r| header(r, "ekko-hops"))
        .collect();
    let expected: Vec<Option<String>> = (1..=hr_hops.len()).map(|n| Some(n.to_string())).collect();
    assert_eq!(hr_hops, expected);
    assert_eq!(queue.count(), forwards.values().sum::<usize>());
    assert_eq!(ekko.metric(DETECTED_HOPS).await, 1.0);
}

#[tokio::test]
async fn carried_hop_count_cuts_cycle() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "{ max_hops: 3 }")).await;
    let producer = Producer::new(&ekko);
    let systems = [
        ("urn:hr", "hr-1"),
        ("urn:iga", "iga-1"),
        ("urn:mail", "mail-1"),
    ];
    let mut hops = "0".to_owned();
    let mut decisions = Vec::new();

    // Each system copies the hop count of the message it consumed into its own notification.
    for (index, (source, subject)) in systems.iter().cycle().take(4).enumerate() {
        let data = json!({ "counter": index });
        let answer = producer
            .send_with(&[("ekko-hops", &hops)], source, subject, data)
            .await;
        decisions.push(answer.decision().to_owned());
        if let Some(last) = queue.received().last() {
            hops = header(last, "ekko-hops").unwrap();
        }
    }

    assert_eq!(
        decisions,
        ["forwarded", "forwarded", "forwarded", "held; reason=hops"]
    );
    assert_eq!(queue.count(), 3);
    assert_eq!(hops, "3");
}

#[tokio::test]
async fn hop_header_at_limit_is_held() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);

    let at_limit = producer
        .send_with(&[("ekko-hops", "10")], "urn:hr", "1", state("A"))
        .await;
    let below_limit = producer
        .send_with(&[("ekko-hops", "9")], "urn:hr", "2", state("A"))
        .await;

    assert_eq!(at_limit.status, 202);
    assert_eq!(at_limit.decision(), "held; reason=hops");
    assert_eq!(at_limit.json()["reason"], "hops");
    assert_eq!(below_limit.decision(), "forwarded");
    assert_eq!(queue.count(), 1);
    assert_eq!(
        header(&queue.received()[0], "ekko-hops").as_deref(),
        Some("10")
    );
    assert_eq!(ekko.metric(DETECTED_HOPS).await, 1.0);
}

#[tokio::test]
async fn hop_attribute_at_limit_is_held() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    let body = json!({
        "specversion": "1.0",
        "id": "hops-attribute",
        "source": "urn:hr",
        "type": "person.changed",
        "subject": "1",
        "ekkohops": 10,
        "data": state("A"),
    });

    let answer = producer.send_raw(&[], CE_JSON, body.to_string()).await;

    assert_eq!(answer.decision(), "held; reason=hops");
    assert_eq!(queue.count(), 0);
}

fn rabbitmq_policy(queue: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}", timeout: 2s }}
notifications:
  - name: hr
    match: {{ path: "/api/exchanges/{{vhost}}/hr/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      payload: {{}}
"#
    )
}

#[tokio::test]
async fn amqp_hop_header_is_read_and_written() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&rabbitmq_policy(&queue.url())).await;
    let client = HttpClient::default();
    let url = ekko.url("/api/exchanges/%2F/hr/publish");
    let publish = |person: &str, hops: u32| {
        harness::rabbitmq_publish_body(
            json!({ "headers": { "ekko-hops": hops } }),
            "person.changed",
            &json!({ "personId": person, "state": "A" }).to_string(),
        )
    };

    let at_limit = client
        .post(&url, "application/json", publish("1", 10))
        .await;
    let below_limit = client.post(&url, "application/json", publish("2", 6)).await;

    assert_eq!(at_limit.decision(), "held; reason=hops");
    assert_eq!(below_limit.decision(), "forwarded");
    assert_eq!(queue.count(), 1);
    let forwarded = &queue.received()[0];
    assert_eq!(forwarded.json()["properties"]["headers"]["ekko-hops"], 7);
    assert_eq!(header(forwarded, "ekko-hops").as_deref(), Some("7"));
}

#[tokio::test]
async fn forwards_carry_incremented_hops() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    let binary_headers = [
        ("ekko-hops", "4"),
        ("ce-specversion", "1.0"),
        ("ce-id", "binary-1"),
        ("ce-source", "urn:hr"),
        ("ce-type", "person.changed"),
        ("ce-subject", "2"),
    ];

    let structured = producer
        .send_with(&[("ekko-hops", "4")], "urn:hr", "1", state("A"))
        .await;
    let binary = producer
        .send_raw(&binary_headers, "application/json", state("A").to_string())
        .await;

    assert_eq!(structured.decision(), "forwarded");
    assert_eq!(binary.decision(), "forwarded");
    let received = queue.received();
    assert_eq!(header(&received[0], "ekko-hops").as_deref(), Some("5"));
    assert_eq!(received[0].json()["ekkohops"], 5);
    assert_eq!(header(&received[1], "ekko-hops").as_deref(), Some("5"));
    assert_eq!(header(&received[1], "ce-ekkohops").as_deref(), Some("5"));
}

#[tokio::test(start_paused = true)]
async fn admin_attributes_ping_pong_and_releases() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    let (held_at, _) = oscillate_until_held(&producer, &["urn:hr", "urn:iga"], "123", 10).await;
    let admin = HttpClient::default();

    let list = admin.get(&ekko.admin_url("/admin/quarantine")).await;
    let entity = admin
        .get(&ekko.admin_url("/admin/entities/hr%2Fperson%2F123"))
        .await;

    assert_eq!(list.status, 200);
    let entries = list.json()["quarantined"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["entity"], "hr/person/123");
    assert_eq!(entry["route"], "hr");
    assert!(entry["since_ms"].as_u64().unwrap() > 0, "{entry}");
    assert!(entry["penalty"].as_f64().unwrap() > 12.0, "{entry}");
    assert_eq!(entry["reason"], "oscillation");
    let sources = entry["sources"].as_array().unwrap();
    assert!(sources.contains(&json!("urn:hr")), "{entry}");
    assert!(sources.contains(&json!("urn:iga")), "{entry}");
    assert_eq!(entry["held"], 1);

    assert_eq!(entity.status, 200);
    let entity = entity.json();
    assert_eq!(entity["entity"], "hr/person/123");
    let fingerprint = entity["last_forwarded"]["fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 64, "{entity}");
    assert!(!entity["transitions"].as_array().unwrap().is_empty());
    assert_eq!(entity["quarantine"]["reason"], "oscillation");
    let decisions: Vec<&str> = entity["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions.last(), Some(&"held"));

    let release = admin
        .post(
            &ekko.admin_url("/admin/quarantine/hr%2Fperson%2F123/release"),
            "application/json",
            "",
        )
        .await;
    let after = admin.get(&ekko.admin_url("/admin/quarantine")).await;

    assert_eq!(release.status, 200);
    assert_eq!(release.json()["outcome"], "delivered");
    assert_eq!(after.json()["quarantined"], json!([]));
    assert_eq!(queue.count(), held_at + 1);
    assert_eq!(ekko.metric(QUARANTINED).await, 0.0);
}

#[tokio::test]

async fn entity_decisions_include_forwards() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    producer.send("urn:hr", "123", state("A")).await;
    producer.send("urn:hr", "123", state("A")).await;

    let entity = HttpClient::default()
        .get(&ekko.admin_url("/admin/entities/hr%2Fperson%2F123"))
        .await
        .json();

    let decisions: Vec<&str> = entity["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["forwarded", "unchanged"]);
}

#[tokio::test]
async fn release_of_unknown_entity_is_404() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;

    let answer = HttpClient::default()
        .post(
            &ekko.admin_url("/admin/quarantine/hr%2Fperson%2Fnobody/release"),
            "application/json",
            "",
        )
        .await;

    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["outcome"], "not_quarantined");
}

/// The entity key template percent-encodes `/` in values, so subject `a/b` gives the key
/// `hr/person/a%2Fb`, and its admin path encodes that key's `%` once more.
#[tokio::test]
async fn entity_path_is_decoded_once() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    Producer::new(&ekko).send("urn:hr", "a/b", state("A")).await;
    let admin = HttpClient::default();

    let once = admin
        .get(&ekko.admin_url("/admin/entities/hr%2Fperson%2Fa%252Fb"))
        .await;
    let twice = admin
        .get(&ekko.admin_url("/admin/entities/hr%2Fperson%2Fa%2Fb"))
        .await;

    assert_eq!(once.status, 200);
    assert_eq!(once.json()["entity"], "hr/person/a%2Fb");
    assert_eq!(twice.status, 404);
}

#[tokio::test]
async fn admin_paths_are_not_public() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let client = HttpClient::default();

    let list = client.get(&ekko.url("/admin/quarantine")).await;
    let entity = client
        .get(&ekko.url("/admin/entities/hr%2Fperson%2F1"))
        .await;
    let release = client
        .post(
            &ekko.url("/admin/quarantine/hr%2Fperson%2F1/release"),
            "application/json",
            "",
        )
        .await;

    assert_eq!(list.status, 404);
    assert_eq!(entity.status, 404);
    assert_eq!(release.status, 404);
}

#[tokio::test(start_paused = true)]
async fn disabled_guard_never_holds() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "{ enabled: false }")).await;
    let producer = Producer::new(&ekko);

    for flip in 0..40 {
        let answer = producer
            .send_with(&[("ekko-hops", "50")], "urn:hr", "123", flip_state(flip))
            .await;
        assert_eq!(answer.decision(), "forwarded", "flip {flip}");
        tokio::time::advance(FLIP).await;
    }

    assert_eq!(queue.count(), 40);
    assert_eq!(ekko.metric(HELD).await, 0.0);
    assert_eq!(ekko.metric(DETECTED_OSCILLATION).await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn shadow_route_reports_hold_and_forwards() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&route_policy(&queue.url(), "mode: shadow")).await;
    let producer = Producer::new(&ekko);
    let mut decisions = Vec::new();

    for flip in 0..12 {
        let answer = producer.send("urn:hr", "123", flip_state(flip)).await;
        assert_eq!(answer.status, 200, "flip {flip}");
        decisions.push(answer.decision().to_owned());
        tokio::time::advance(FLIP).await;
    }

    assert_eq!(queue.count(), 12);
    let first_would_hold = decisions
        .iter()
        .position(|d| d == "forwarded; would=held; reason=oscillation")
        .expect("shadow mode reports the hold");
    assert!(first_would_hold <= 10, "{decisions:?}");
    assert_eq!(ekko.metric(HELD).await, 0.0);
    assert_eq!(ekko.metric(QUARANTINED).await, 0.0);
}

#[tokio::test(start_paused = true)]
async fn full_quarantine_table_forwards_loop() {
    let queue = MockServer::accepting().await;
    let policy = format!(
        "state: {{ max_quarantined: 1 }}\n{}",
        policy(&queue.url(), "")
    );
    let ekko = Ekko::start(&policy).await;
    let producer = Producer::new(&ekko);
    oscillate_until_held(&producer, &["urn:hr"], "1", 10).await;
    let before = queue.count();

    for flip in 0..20 {
        let answer = producer.send("urn:hr", "2", flip_state(flip)).await;
        assert_eq!(
            answer.decision(),
            "forwarded",
            "flip {flip} of the second entity"
        );
        tokio::time::advance(FLIP).await;
    }

    assert_eq!(queue.count(), before + 20);
    assert_eq!(ekko.metric(QUARANTINED).await, 1.0);
}

#[tokio::test(start_paused = true)]
async fn max_quarantine_ends_quarantine_without_decay() {
    let queue = MockServer::accepting().await;
    let guard = "{ half_life: 1h, max_quarantine: 1m }";
    let ekko = Ekko::start(&policy(&queue.url(), guard)).await;
    let producer = Producer::new(&ekko);
    let (held_at, _) = oscillate_until_held(&producer, &["urn:hr"], "123", 10).await;

    let early = tick_until(|| queue.count() > held_at, 55).await;
    let released = tick_until(|| queue.count() > held_at, 10).await;

    assert_eq!(early, None, "released before max_quarantine");
    assert!(released.is_some(), "not released within 65 s");
    assert_eq!(state_of(&queue.received()[held_at]), flip_state(held_at));
}

#[tokio::test(start_paused = true)]
async fn batch_element_is_held_and_released_alone() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    let (held_at, _) = oscillate_until_held(&producer, &["urn:hr"], "123", 10).await;
    let batch = json!([
        serde_json::from_str::<Value>(&cloudevent_from(
            "urn:hr",
            "batch-1",
            "123",
            flip_state(held_at)
        ))
        .unwrap(),
        serde_json::from_str::<Value>(&cloudevent_from("urn:hr", "batch-2", "456", state("A")))
            .unwrap(),
    ]);

    let answer = producer
        .send_raw(&[], "application/cloudevents-batch+json", batch.to_string())
        .await;
    let forwarded_batch = queue.received()[held_at].json();
    let release = HttpClient::default()
        .post(
            &ekko.admin_url("/admin/quarantine/hr%2Fperson%2F123/release"),
            "application/json",
            "",
        )
        .await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.decision(), "held; reason=oscillation, forwarded");
    let subjects: Vec<&str> = forwarded_batch
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["456"]);
    assert_eq!(release.json()["outcome"], "delivered");
    let released = &queue.received()[held_at + 1];
    assert_eq!(header(released, "content-type").as_deref(), Some(CE_JSON));
    assert_eq!(header(released, "ekko-coalesced").as_deref(), Some("1"));
    assert_eq!(released.json()["id"], "batch-1");
    assert_eq!(released.json()["data"], flip_state(held_at));
    assert_eq!(released.json()["ekkohops"], 1);
}

#[tokio::test(start_paused = true)]
async fn redelivered_held_event_is_duplicate() {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url(), "")).await;
    let producer = Producer::new(&ekko);
    oscillate_until_held(&producer, &["urn:hr", "urn:iga"], "9", 10).await;

    let held = cloudevent_from("urn:hr", "held-once", "9", state("C"));
    let first = producer.send_raw(&[], CE_JSON, held.clone()).await;
    let again = producer.send_raw(&[], CE_JSON, held).await;

    assert_eq!(first.decision(), "held; reason=oscillation");
    assert_eq!(again.decision(), "duplicate");
}

/// Starts the `ekko` binary on `policy_path` and returns it with its public and admin URLs,
/// read from its JSON startup log line.
fn spawn_ekko(policy_path: &std::path::Path) -> (std::process::Child, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ekko"))
        .args(["--log-format", "json", "serve", "--policy"])
        .arg(policy_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ekko binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("ekko listening"))
        .expect("ekko reports its listeners");
    // Keep reading the log so that ekko never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let log: Value = serde_json::from_str(&line).unwrap();
    let public = format!("http://{}", log["fields"]["public_addr"].as_str().unwrap());
    let admin = format!("http://{}", log["fields"]["admin_addr"].as_str().unwrap());
    (child, public, admin)
}

#[tokio::test]
async fn held_notification_survives_sigkill() {
    let queue = MockServer::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    let policy_text = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{}",
        snapshot_policy(&queue.url(), &dir.path().join("state"))
    );
    std::fs::write(&policy_path, policy_text).unwrap();

    let (mut first, public, _) = spawn_ekko(&policy_path);
    let client = HttpClient::default();
    let mut held = None;
    for flip in 0..10 {
        let id = format!("k{flip}");
        let body = cloudevent_from("urn:hr", &id, "77", flip_state(flip));
        let answer = client
            .post(&format!("{public}/events"), CE_JSON, body)
            .await;
        if answer.decision().starts_with("held") {
            held = Some(flip);
            break;
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let (mut second, _, admin) = spawn_ekko(&policy_path);
    let listed = HttpClient::default()
        .get(&format!("{admin}/admin/quarantine"))
        .await
        .json();
    second.kill().unwrap();
    second.wait().unwrap();

    assert!(held.is_some(), "the oscillation was never held");
    let entries = listed["quarantined"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["entity"], "hr/person/77");
    assert_eq!(entries[0]["held"], 1);
}
