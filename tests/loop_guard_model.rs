//! Property test of the loop guard against a reference model of the last state per entity.
//!
//! For any stream of notifications, once every quarantine has ended, the last state that
//! reached the queue for each entity is the last state its producers sent. No state
//! reaches the queue twice in a row.
//!
//! Each case runs a real ekko and a mock queue on 127.0.0.1 in its own current-thread
//! runtime with paused time, so gaps of seconds and a 15 minute quarantine cost no
//! real time.

mod harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use harness::{cloudevent_from, Ekko, HttpClient, MockServer, CE_JSON};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// Number of generated streams. The whole test stays well under 30 s in a debug build.
const CASES: u32 = 128;

/// Time after the last notification by which every quarantine must have ended:
/// `max_quarantine` (15 minutes) plus a few release ticks.
const SETTLE: Duration = Duration::from_secs(15 * 60 + 5);

/// The fixed states a notification can carry.
const STATES: [&str; 3] = ["A", "B", "C"];

/// The entity state that a notification carries.
#[derive(Debug, Clone, Copy)]
enum Content {
    /// One of a few fixed states, so the stream can return to a recent state.
    Fixed(u8),
    /// A state never seen before: a counter that no mask removes.
    Counter,
}

/// One notification of a generated stream.
#[derive(Debug, Clone)]
struct Notification {
    entity: u8,
    content: Content,
    /// Paused time that passes before it is sent.
    gap: Duration,
    source: &'static str,
}

fn notification() -> impl Strategy<Value = Notification> {
    let content = prop_oneof![
        3 => (0..STATES.len() as u8).prop_map(Content::Fixed),
        1 => Just(Content::Counter),
    ];
    (
        0u8..4,
        content,
        // Mostly a busy loop. Now and then a pause is long enough for a quarantine to end
        // by decay in the middle of the stream.
        prop_oneof![9 => 0u64..5_000, 1 => 60_000u64..180_000],
        prop_oneof![Just("urn:hr"), Just("urn:iga")],
    )
        .prop_map(|(entity, content, gap_ms, source)| Notification {
            entity,
            content,
            gap: Duration::from_millis(gap_ms),
            source,
        })
}

fn policy(queue: &str) -> String {
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
"#
    )
}

/// Builds the entity state carried by notification `index` of a stream.
fn data(content: Content, index: usize) -> Value {
    match content {
        Content::Fixed(state) => json!({ "state": STATES[state as usize] }),
        Content::Counter => json!({ "state": "counting", "counter": index }),
    }
}

/// One request that reached the queue.
struct Delivery {
    id: String,
    subject: String,
    data: Value,
    /// Set only on a release: the number of held notifications it replaced.
    coalesced: Option<String>,
}

fn deliveries(queue: &MockServer) -> Vec<Delivery> {
    queue
        .received()
        .iter()
        .map(|recorded| {
            let event = recorded.json();
            Delivery {
                id: event["id"].as_str().unwrap().to_owned(),
                subject: event["subject"].as_str().unwrap().to_owned(),
                data: event["data"].clone(),
                coalesced: recorded
                    .headers
                    .get("ekko-coalesced")
                    .map(|v| v.to_str().unwrap().to_owned()),
            }
        })
        .collect()
}

/// Groups the states the queue received by entity, in order.
fn queued_states(deliveries: &[Delivery]) -> HashMap<String, Vec<Value>> {
    let mut states: HashMap<String, Vec<Value>> = HashMap::new();
    for delivery in deliveries {
        states
            .entry(delivery.subject.clone())
            .or_default()
            .push(delivery.data.clone());
    }
    states
}

/// Checks one response against what the queue has received so far.
///
/// A release can run at any moment, because paused time moves on while a request waits
/// for loopback IO, so releases (marked by `Ekko-Coalesced`) may appear between two
/// checks. A notification that was not quarantined cannot race with a release of its
/// entity, so after a forward or an unchanged answer the queue's last state is the sent one.
fn check_answer(
    decision: &str,
    id: &str,
    subject: &str,
    state: &Value,
    queue: &MockServer,
) -> Result<(), TestCaseError> {
    let deliveries = deliveries(queue);
    let mine: Vec<&Delivery> = deliveries.iter().filter(|d| d.id == id).collect();
    let last = queued_states(&deliveries)
        .get(subject)
        .and_then(|states| states.last().cloned());
    match decision {
        "forwarded" => {
            prop_assert_eq!(mine.len(), 1, "{} forwarded", id);
            prop_assert_eq!(&mine[0].coalesced, &None, "{} forwarded", id);
            prop_assert_eq!(last.as_ref(), Some(state), "{} forwarded", id);
        }
        "unchanged" => {
            prop_assert!(mine.is_empty(), "unchanged {} reached the queue", id);
            prop_assert_eq!(last.as_ref(), Some(state), "{} unchanged", id);
        }
        "held; reason=oscillation" => {
            for delivery in mine {
                prop_assert!(delivery.coalesced.is_some(), "held {} forwarded", id);
            }
        }
        other => prop_assert!(false, "{}: unexpected decision {:?}", id, other),
    }
    Ok(())
}

/// Sends the stream, checking each response against the queue, then lets every quarantine
/// end and checks the final states. Returns whether any notification was held.
async fn run_stream(stream: Vec<Notification>) -> Result<bool, TestCaseError> {
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;
    let mut produced: HashMap<String, Vec<Value>> = HashMap::new();
    let mut any_held = false;

    for (index, notification) in stream.iter().enumerate() {
        tokio::time::advance(notification.gap).await;
        let id = format!("e{index}");
        let subject = notification.entity.to_string();
        let state = data(notification.content, index);
        let body = cloudevent_from(notification.source, &id, &subject, state.clone());

        // A new connection each time: ekko closes one that idles for 30 s.
        let answer = HttpClient::default()
            .post(&ekko.url("/events"), CE_JSON, body)
            .await;

        let expected_status = if answer.decision() == "forwarded" {
            200
        } else {
            202
        };
        prop_assert_eq!(answer.status, expected_status, "{}", id);
        check_answer(answer.decision(), &id, &subject, &state, &queue)?;
        any_held |= answer.decision().starts_with("held");
        produced.entry(subject).or_default().push(state);
    }

    tokio::time::advance(SETTLE).await;
    let mut remaining = Value::Null;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let list = HttpClient::default()
            .get(&ekko.admin_url("/admin/quarantine"))
            .await
            .json();
        remaining = list["quarantined"].clone();
        if remaining == json!([]) {
            break;
        }
    }
    prop_assert_eq!(remaining, json!([]), "quarantines left after 15 minutes");

    let deliveries = deliveries(&queue);
    let mut ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    ids.sort_unstable();
    let before_dedup = ids.len();
    ids.dedup();
    prop_assert_eq!(
        ids.len(),
        before_dedup,
        "a notification reached the queue twice"
    );
    check_final_states(&produced, &queued_states(&deliveries))?;
    Ok(any_held)
}

/// Checks the reference model: per entity, the last produced state is the last queued state,
/// consecutive queued states differ, and an entity that never changed is queued once.
fn check_final_states(
    produced: &HashMap<String, Vec<Value>>,
    queued: &HashMap<String, Vec<Value>>,
) -> Result<(), TestCaseError> {
    for (subject, states) in produced {
        let delivered = queued.get(subject).cloned().unwrap_or_default();
        prop_assert_eq!(
            delivered.last(),
            states.last(),
            "entity {}: produced {:?}, queued {:?}",
            subject,
            states,
            delivered
        );
        for pair in delivered.windows(2) {
            prop_assert_ne!(&pair[0], &pair[1], "entity {}: {:?}", subject, delivered);
        }
        if states.iter().all(|state| state == &states[0]) {
            prop_assert_eq!(delivered.len(), 1, "entity {} never changed", subject);
        }
    }
    prop_assert_eq!(queued.len(), produced.len());
    Ok(())
}

#[test]
fn last_produced_state_reaches_queue() {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let held_cases = AtomicUsize::new(0);

    let result = runner.run(&prop::collection::vec(notification(), 1..60), |stream| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        if runtime.block_on(run_stream(stream))? {
            held_cases.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });

    if let Err(error) = result {
        panic!("{error}");
    }
    // Without quarantines the property would test nothing about the loop guard.
    let held_cases = held_cases.into_inner();
    assert!(held_cases > 0, "no generated stream was quarantined");
}
