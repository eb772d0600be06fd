//! Scrapes ekko's `/metrics` with a real Prometheus server and checks the stored counters.

mod harness;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::{cloudevent, Ekko, HttpClient, MockServer, CE_JSON};
use serde_json::{json, Value};
use support::prometheus::{Prometheus, JOB, PROMETHEUS};

const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// The first scrape comes within one interval of startup. 30 s leaves room for a loaded
/// machine without letting a broken scrape hang the run.
const SCRAPE_WAIT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(250);

const ROUTE: &str = "hr";

/// Decision counts that the traffic in [`send_traffic`] produces. They differ from each other,
/// so a label that Prometheus or ekko mixes up cannot pass.
const FORWARDED: u64 = 3;
const UNCHANGED: u64 = 2;
const DUPLICATE: u64 = 1;

/// Returns a policy with one CloudEvents route that fingerprints the event's own data and
/// ignores its timestamp.
fn policy(queue: &str) -> String {
    format!(
        r#"
upstreams:
  mq: {{ url: "{queue}" }}
notifications:
  - name: {ROUTE}
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

fn person(name: &str, modified: &str) -> Value {
    json!({ "name": name, "meta": { "lastModified": modified } })
}

/// Sends one CloudEvent and checks the `Ekko-Decision` header of the response.
async fn send(ekko: &Ekko, id: &str, subject: &str, data: Value, expected: &str) {
    let response = HttpClient::default()
        .post(&ekko.url("/events"), CE_JSON, cloudevent(id, subject, data))
        .await;
    assert_eq!(
        response.decision(),
        expected,
        "event {id}: {}",
        response.text()
    );
}

/// Sends traffic for two persons that ends in [`FORWARDED`] forwarded, [`UNCHANGED`]
/// unchanged and [`DUPLICATE`] duplicate decisions.
async fn send_traffic(ekko: &Ekko) {
    send(ekko, "e1", "p1", person("Ola", "1"), "forwarded").await;
    send(ekko, "e2", "p1", person("Ola", "2"), "unchanged").await;
    send(ekko, "e2", "p1", person("Ola", "2"), "duplicate").await;
    send(ekko, "e3", "p2", person("Kari", "1"), "forwarded").await;
    send(ekko, "e4", "p1", person("Ola Nordmann", "3"), "forwarded").await;
    send(ekko, "e5", "p2", person("Kari", "2"), "unchanged").await;
}

/// What one round of queries found: `up` of the target and the route's counters by
/// decision. Values are Prometheus's sample strings, such as `"3"`.
#[derive(Debug, PartialEq)]
struct Scraped {
    up: Option<String>,
    notifications: BTreeMap<String, String>,
}

/// Returns `(labels, value)` for every sample of an instant vector in a query's `data`.
fn samples(data: &Value) -> Vec<(&Value, String)> {
    assert_eq!(data["resultType"], "vector", "query data: {data}");
    let result = data["result"].as_array().expect("result is an array");
    result
        .iter()
        .map(|sample| {
            let value = sample["value"][1]
                .as_str()
                .expect("sample value is a string");
            (&sample["metric"], value.to_owned())
        })
        .collect()
}

async fn scrape_state(prometheus: &Prometheus) -> Scraped {
    let up = prometheus
        .query(&format!("up{{job=\"{JOB}\"}}"))
        .await
        .expect("query up");
    let up = samples(&up).into_iter().next().map(|(_, value)| value);

    let expr = format!("ekko_notifications_total{{job=\"{JOB}\",route=\"{ROUTE}\"}}");
    let counters = prometheus.query(&expr).await.expect("query counters");
    let notifications = samples(&counters)
        .into_iter()
        .map(|(labels, value)| {
            let decision = labels["decision"].as_str().expect("decision label");
            (decision.to_owned(), value)
        })
        .collect();
    Scraped { up, notifications }
}

fn expected_state() -> Scraped {
    let notifications = [
        ("duplicate", DUPLICATE),
        ("forwarded", FORWARDED),
        ("unchanged", UNCHANGED),
    ]
    .into_iter()
    .map(|(decision, count)| (decision.to_owned(), count.to_string()))
    .collect();
    Scraped {
        up: Some("1".to_owned()),
        notifications,
    }
}

/// Polls Prometheus until it has scraped the expected state or [`SCRAPE_WAIT`] passes, and
/// returns the last state seen. Real time is used because Prometheus scrapes on its own clock.
async fn wait_for_scrape(prometheus: &Prometheus, expected: &Scraped) -> Scraped {
    let deadline = Instant::now() + SCRAPE_WAIT;
    loop {
        let state = scrape_state(prometheus).await;
        if state == *expected || Instant::now() >= deadline {
            return state;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test]
#[ignore = "needs prometheus; run by .ci/run"]
async fn prometheus_scrapes_decision_counters() {
    if !support::require_server(PROMETHEUS, "prometheus") {
        return;
    }
    let queue = MockServer::accepting().await;
    let ekko = Ekko::start(&policy(&queue.url())).await;
    send_traffic(&ekko).await;
    assert_eq!(
        queue.count(),
        FORWARDED as usize,
        "requests the queue received"
    );

    let prometheus = Prometheus::start(&[ekko.admin_addr()], SCRAPE_INTERVAL)
        .await
        .expect("prometheus starts");
    let expected = expected_state();
    let state = wait_for_scrape(&prometheus, &expected).await;

    let context = format!(
        "after {SCRAPE_WAIT:?}; targets: {}\nprometheus log tail:\n{}",
        prometheus.targets().await.expect("query targets"),
        prometheus.log_tail()
    );
    assert_eq!(state.up, expected.up, "up{{job=\"{JOB}\"}} {context}");
    for (decision, count) in &expected.notifications {
        assert_eq!(
            state.notifications.get(decision),
            Some(count),
            "ekko_notifications_total decision=\"{decision}\" {context}"
        );
    }
    assert_eq!(
        state.notifications.len(),
        expected.notifications.len(),
        "decisions other than the expected ones: {:?}",
        state.notifications
    );

    let build_info = prometheus
        .query(&format!("ekko_build_info{{job=\"{JOB}\"}}"))
        .await
        .expect("query build info");
    let build_info = samples(&build_info);
    assert_eq!(
        build_info.len(),
        1,
        "ekko_build_info series: {build_info:?}"
    );
    let (labels, value) = &build_info[0];
    assert_eq!(
        labels["version"],
        env!("CARGO_PKG_VERSION"),
        "build info labels"
    );
    assert_eq!(value, "1", "ekko_build_info value");
}
