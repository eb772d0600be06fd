//! End-to-end tests of ekko in front of a real RabbitMQ broker's management publish endpoint.

mod harness;
mod support;

use bytes::Bytes;
use harness::{rabbitmq_publish_body, Answer, Ekko, HttpClient, SourceApi};
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::rabbitmq::{Broker, RABBITMQ_SERVER};

const EXCHANGE: &str = "hr";
const QUEUE: &str = "hr-all";
const PUBLISH_PATH: &str = "/api/exchanges/%2F/hr/publish";
const PERSONS_PATH: &str = "/scim/v2/Users";

/// Starts a private broker with the topic exchange `hr` and the queue `hr-all` bound to it
/// with `#`, so the queue receives every message that the exchange routes.
async fn broker_with_queue() -> Broker {
    let broker = Broker::start().await.expect("test broker starts");
    broker.declare_topic_exchange(EXCHANGE).await.unwrap();
    broker.declare_queue(QUEUE).await.unwrap();
    broker.bind(EXCHANGE, QUEUE, "#").await.unwrap();
    broker
}

/// Takes every message from `hr-all` and checks that a second read finds the queue empty.
async fn drain_queue(broker: &Broker) -> Vec<Value> {
    let messages = broker.get_messages(QUEUE, 100).await.unwrap();
    let remaining = broker.get_messages(QUEUE, 100).await.unwrap();
    assert!(remaining.is_empty(), "queue still contains {remaining:?}");
    messages
}

/// Returns a message's payload, which these tests always publish as a UTF-8 string.
fn payload_text(message: &Value) -> &str {
    assert_eq!(message["payload_encoding"], "string", "message {message}");
    message["payload"].as_str().expect("payload is a string")
}

async fn publish(
    client: &HttpClient,
    url: &str,
    authorization: Option<&str>,
    body: String,
) -> Answer {
    let mut request = Request::post(url).header("content-type", "application/json");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    client
        .send(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
}

/// Builds a SCIM 2.0 User (RFC 7643) as an HR system serves it. `meta.lastModified` moves on every
/// save, also when nothing else changed.
fn scim_user(person: &Person, saved_at_minute: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": person.id,
        "userName": person.user_name,
        "name": { "givenName": person.given_name, "familyName": person.family_name },
        "emails": [{ "value": person.email, "type": "work", "primary": true }],
        "meta": {
            "resourceType": "User",
            "created": "2026-03-02T07:00:00Z",
            "lastModified": format!("2026-03-02T08:{saved_at_minute:02}:00Z"),
        },
    })
}

/// The fields of a person that consumers care about.
#[derive(Clone)]
struct Person {
    id: &'static str,
    user_name: &'static str,
    given_name: &'static str,
    family_name: &'static str,
    email: &'static str,
}

const OLA: Person = Person {
    id: "p1",
    user_name: "ola",
    given_name: "Ola",
    family_name: "Nordmann",
    email: "ola.nordmann@example.org",
};
const KARI: Person = Person {
    id: "p2",
    user_name: "kari",
    given_name: "Kari",
    family_name: "Berg",
    email: "kari.berg@example.org",
};
const PER: Person = Person {
    id: "p3",
    user_name: "per",
    given_name: "Per",
    family_name: "Dahl",
    email: "per.dahl@example.org",
};

/// What happens in the HR system before it publishes a step's notification.
enum SourceChange {
    /// The person is saved with these fields, and `meta.lastModified` moves.
    Save(Person),
    /// The person is deleted, so the SCIM API returns 404.
    Delete,
    /// Nothing: the broker client redelivers an earlier notification.
    Redeliver,
}

/// One notification of the HR stream and the decision ekko must make for it.
struct Step {
    person_id: &'static str,
    message_id: &'static str,
    change: SourceChange,
    decision: &'static str,
}

fn step(
    person_id: &'static str,
    message_id: &'static str,
    change: SourceChange,
    decision: &'static str,
) -> Step {
    Step {
        person_id,
        message_id,
        change,
        decision,
    }
}

/// Builds an interleaved HR stream for three persons: creations, re-saves that move only
/// `meta.lastModified`, a redelivered message, an e-mail write-back loop that settles, and a
/// deletion that HR announces twice.
fn hr_stream() -> Vec<Step> {
    use SourceChange::{Delete, Redeliver, Save};

    let ola_married = Person {
        family_name: "Hansen",
        ..OLA
    };
    // Identity management derives the e-mail address from the new name and writes it back.
    let ola_new_email = Person {
        email: "ola.hansen@example.org",
        ..ola_married.clone()
    };
    let kari_promoted = Person {
        user_name: "kari.berg",
        ..KARI
    };
    vec![
        step("p1", "m1", Save(OLA), "forwarded"),
        step("p2", "m2", Save(KARI), "forwarded"),
        step("p1", "m3", Save(OLA), "unchanged"),
        step("p3", "m4", Save(PER), "forwarded"),
        step("p2", "m5", Save(kari_promoted.clone()), "forwarded"),
        step("p2", "m5", Redeliver, "duplicate"),
        step("p1", "m6", Save(ola_married), "forwarded"),
        step("p1", "m7", Save(ola_new_email.clone()), "forwarded"),
        // Identity management reacts to m7 and writes the same address again: HR re-saves.
        step("p1", "m8", Save(ola_new_email), "unchanged"),
        step("p3", "m9", Delete, "forwarded"),
        step("p2", "m10", Save(kari_promoted), "unchanged"),
        // HR's nightly sync announces the deleted person again under a new message id.
        step("p3", "m11", Delete, "unchanged"),
        step("p1", "m3", Redeliver, "duplicate"),
    ]
}

fn lookup_policy(broker_url: &str, source_url: &str) -> String {
    // The producer's own Authorization header passes through ekko. RabbitMQ then authorizes
    // each producer against its own user's permissions on the exchange, and ekko stores no
    // broker credential that would let anyone who reaches ekko publish.
    format!(
        r#"
upstreams:
  mq: {{ url: "{broker_url}", timeout: 10s }}
  hr-api: {{ url: "{source_url}/scim/v2", headers: {{ Authorization: "Bearer ekko-hr-token" }} }}
notifications:
  - name: hr-person
    match: {{ path: "/api/exchanges/{{vhost}}/hr/publish" }}
    upstream: mq
    format: rabbitmq-publish
    pointers: {{ subject: /personId }}
    entity: "hr/person/{{subject}}"
    fingerprint:
      lookup: {{ upstream: hr-api, path: "/Users/{{subject}}" }}
      ignore: ["/meta/lastModified"]
    suppressed_response: {{ status: 200, body: '{{"routed":true}}' }}
"#
    )
}

fn person_notification(step: &Step) -> String {
    let routing_key = match step.change {
        SourceChange::Delete => "person.deleted",
        _ => "person.changed",
    };
    let payload = json!({ "personId": step.person_id }).to_string();
    rabbitmq_publish_body(
        json!({ "message_id": step.message_id, "app_id": "hr", "delivery_mode": 2 }),
        routing_key,
        &payload,
    )
}

/// Applies each step's change to the SCIM API, publishes its notification through ekko with
/// the broker credential, and checks ekko's decision and response.
async fn replay(steps: &[Step], source: &SourceApi, ekko: &Ekko, authorization: &str) {
    let client = HttpClient::default();
    for (index, step) in steps.iter().enumerate() {
        match &step.change {
            SourceChange::Save(person) => source.put(person.id, scim_user(person, index)),
            SourceChange::Delete => source.remove(step.person_id),
            SourceChange::Redeliver => {}
        }

        let body = person_notification(step);
        let answer = publish(&client, &ekko.url(PUBLISH_PATH), Some(authorization), body).await;

        let at = format!("step {index} ({} {})", step.person_id, step.message_id);
        assert_eq!(answer.decision(), step.decision, "{at}: {}", answer.text());
        assert_eq!(answer.status, 200, "{at}: {}", answer.text());
        assert_eq!(answer.json(), json!({ "routed": true }), "{at}");
    }
}

#[tokio::test]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn queue_receives_only_real_changes() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = broker_with_queue().await;
    let source = SourceApi::start(PERSONS_PATH).await;
    let ekko = Ekko::start(&lookup_policy(
        &broker.management_url(),
        &source.server.url(),
    ))
    .await;
    let steps = hr_stream();

    // Without a credential the broker rejects the publish. ekko commits nothing for a
    // rejected forward, so the producer's retry of the same message id is forwarded.
    source.put(OLA.id, scim_user(&OLA, 0));
    let unauthenticated = publish(
        &HttpClient::default(),
        &ekko.url(PUBLISH_PATH),
        None,
        person_notification(&steps[0]),
    )
    .await;
    assert_eq!(unauthenticated.status, 401, "{}", unauthenticated.text());

    replay(&steps, &source, &ekko, broker.authorization()).await;

    let messages = drain_queue(&broker).await;
    let delivered: Vec<(String, String)> = messages
        .iter()
        .map(|message| {
            let payload: Value = serde_json::from_str(payload_text(message)).unwrap();
            let person_id = payload["personId"].as_str().unwrap().to_owned();
            let message_id = message["properties"]["message_id"].as_str().unwrap();
            (person_id, message_id.to_owned())
        })
        .collect();
    let expected = [
        ("p1", "m1"),
        ("p2", "m2"),
        ("p3", "m4"),
        ("p2", "m5"),
        ("p1", "m6"),
        ("p1", "m7"),
        ("p3", "m9"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(person, message)| (person.to_string(), message.to_string()))
        .collect();
    assert_eq!(delivered, expected);

    for message in &messages {
        assert_eq!(message["exchange"], EXCHANGE);
        assert_eq!(message["properties"]["app_id"], "hr");
        assert_eq!(message["redelivered"], false);
    }
    assert_eq!(messages[6]["routing_key"], "person.deleted");
    // One lookup per notification that is not a duplicate, the rejected publish included.
    let lookups = source.server.received();
    assert_eq!(lookups.len(), 12);
    assert!(lookups
        .iter()
        .all(|lookup| lookup.headers["authorization"] == "Bearer ekko-hr-token"));
}

/// Builds a structured CloudEvent (CloudEvents 1.0) announcing a changed HR person.
fn person_event(id: &str, person: &Person, saved_at_minute: usize) -> String {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "urn:example:hr",
        "type": "org.example.hr.person.changed",
        "subject": person.id,
        "time": format!("2026-03-02T08:{saved_at_minute:02}:00Z"),
        "datacontenttype": "application/json",
        "data": scim_user(person, saved_at_minute),
    })
    .to_string()
}

fn cloudevents_policy(broker_url: &str, authorization: &str) -> String {
    // Here ekko adds the broker credential itself, for producers that can only POST to a
    // URL. Any client that reaches ekko's listener can then publish to the exchange.
    format!(
        r#"
upstreams:
  mq: {{ url: "{broker_url}", timeout: 10s, headers: {{ Authorization: "{authorization}" }} }}
notifications:
  - name: hr-person-events
    match: {{ path: "/api/exchanges/{{vhost}}/hr/publish" }}
    upstream: mq
    format: rabbitmq-publish
    entity: "hr/person/{{subject}}"
    fingerprint:
      payload: {{}}
      ignore: ["/meta/lastModified"]
"#
    )
}

#[tokio::test]
#[ignore = "needs rabbitmq-server; run by .ci/run"]
async fn cloudevent_payloads_reach_queue_deduplicated() {
    if !support::require_server(RABBITMQ_SERVER, "rabbitmq-server") {
        return;
    }
    let broker = broker_with_queue().await;
    let ekko = Ekko::start(&cloudevents_policy(
        &broker.management_url(),
        broker.authorization(),
    ))
    .await;
    let client = HttpClient::default();
    let kari_promoted = Person {
        user_name: "kari.berg",
        ..KARI
    };
    let ola_married = Person {
        family_name: "Hansen",
        ..OLA
    };
    // (event, decision): a re-save moves only `time` and `meta.lastModified`, and e2 is
    // redelivered.
    let stream = [
        (person_event("e1", &OLA, 1), "forwarded"),
        (person_event("e2", &KARI, 2), "forwarded"),
        (person_event("e3", &OLA, 3), "unchanged"),
        (person_event("e2", &KARI, 2), "duplicate"),
        (person_event("e4", &ola_married, 4), "forwarded"),
        (person_event("e5", &kari_promoted, 5), "forwarded"),
        (person_event("e6", &kari_promoted, 6), "unchanged"),
    ];

    for (index, (event, decision)) in stream.iter().enumerate() {
        let body = rabbitmq_publish_body(
            json!({ "content_type": "application/cloudevents+json" }),
            "person.changed",
            event,
        );
        let answer = publish(&client, &ekko.url(PUBLISH_PATH), None, body).await;
        assert_eq!(
            answer.decision(),
            *decision,
            "event {index}: {}",
            answer.text()
        );
    }

    let messages = drain_queue(&broker).await;
    let delivered: Vec<(String, String)> = messages
        .iter()
        .map(|message| {
            let event: Value = serde_json::from_str(payload_text(message)).unwrap();
            assert_eq!(event["specversion"], "1.0");
            assert_eq!(
                message["properties"]["content_type"],
                "application/cloudevents+json"
            );
            let subject = event["subject"].as_str().unwrap().to_owned();
            (subject, event["id"].as_str().unwrap().to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> = [("p1", "e1"), ("p2", "e2"), ("p1", "e4"), ("p2", "e5")]
        .iter()
        .map(|(subject, id)| (subject.to_string(), id.to_string()))
        .collect();
    assert_eq!(delivered, expected);
    assert_eq!(payload_text(&messages[2]), stream[4].0);
}
