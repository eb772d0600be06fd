//! `ekko demo`: the bundled HR policy against in-process stand-ins for RabbitMQ and a
//! SCIM source API, replaying re-saves, redeliveries and an e-mail write-back.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

mod echo;
mod standins;

use standins::{serve, Hr, Person, Queue};

use crate::policy::{self, Policy};

/// The policy that `ekko demo` runs, also shipped as `deploy/examples/hr-person.yaml`.
pub const POLICY: &str = include_str!("../../deploy/examples/hr-person.yaml");

/// The demo's loop-guard half-life, so a quarantine ends within seconds rather than minutes.
const DEMO_HALF_LIFE: Duration = Duration::from_millis(500);

/// ekko's credential for the stand-in SCIM API.
const DEMO_TOKEN: &str = "demo-token";

/// The whole demonstration must finish within this time.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs the demonstration, prints its table and returns 0 when every count matches.
pub fn run() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ekko demo: cannot start the Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(DEADLINE, scenario()).await }) {
        Ok(Ok(report)) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(message)) => {
            eprintln!("ekko demo failed: {message}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("ekko demo did not finish within {} s", DEADLINE.as_secs());
            ExitCode::FAILURE
        }
    }
}

/// Loads the bundled policy and points it at the stand-ins, on loopback ports.
fn demo_policy(queue: SocketAddr, hr: SocketAddr) -> Result<Policy, String> {
    let env = |name: &str| (name == "EKKO_HR_TOKEN").then(|| DEMO_TOKEN.to_owned());
    let mut policy =
        policy::parse(POLICY, &env).map_err(|e| format!("bundled policy is invalid:\n{e}"))?;
    policy.listen = ([127, 0, 0, 1], 0).into();
    policy.admin_listen = ([127, 0, 0, 1], 0).into();
    policy.state.snapshot = None;
    for route in &mut policy.notifications {
        route.loop_guard.half_life = DEMO_HALF_LIFE;
    }
    for (name, addr) in [("mq", queue), ("hr-api", hr)] {
        let upstream = policy
            .upstreams
            .get_mut(name)
            .ok_or_else(|| format!("bundled policy has no upstream `{name}`"))?;
        upstream.authority = addr.to_string().parse().map_err(|e| format!("{e}"))?;
    }
    Ok(policy)
}

/// One row of the table: what a step sent and what ekko did with it.
#[derive(Default, Clone, Copy)]
struct Row {
    sent: u64,
    forwarded: u64,
    unchanged: u64,
    duplicate: u64,
    lookups: u64,
}

struct Producer {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: String,
    next_id: u64,
    consumers: Consumers,
}

/// The systems that react to each forwarded change by reading the person through ekko.
struct Consumers {
    base: String,
    hr: Arc<Hr>,
    reads: u64,
    from_cache: u64,
    authorisations: u64,
    source_fetches: u64,
}

/// Names of the demo's consumers; each sends its own bearer token.
const CONSUMERS: [&str; 5] = ["directory", "email", "lms", "library", "printing"];

impl Consumers {
    /// Every consumer reads the person once, as it would after a notification.
    async fn react(
        &mut self,
        client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        person: &str,
    ) -> Result<(), String> {
        let before = self.hr.lookups();
        for consumer in CONSUMERS {
            let request = Request::get(format!("{}/Users/{person}", self.base))
                .header("authorization", format!("Bearer {consumer}-token"))
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!(
                    "consumer {consumer} got {} for person {person}",
                    response.status()
                ));
            }
            let status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            self.reads += 1;
            if status.starts_with("ekko; hit") {
                self.from_cache += 1;
            } else if status.contains("detail=authorize") {
                self.authorisations += 1;
            }
        }
        self.source_fetches += self.hr.lookups() - before;
        Ok(())
    }
}

impl Producer {
    /// Publishes "person changed" through ekko and returns ekko's decision.
    async fn notify(
        &mut self,
        person: &str,
        writer: &str,
        event_id: Option<&str>,
    ) -> Result<String, String> {
        let id = match event_id {
            Some(id) => id.to_owned(),
            None => {
                self.next_id += 1;
                format!("hr-{}", self.next_id)
            }
        };
        let body = json!({
            "properties": { "message_id": id, "app_id": writer, "content_type": "application/json" },
            "routing_key": "person.updated",
            "payload": json!({ "personId": person, "event": "updated" }).to_string(),
            "payload_encoding": "string",
        });
        let request = Request::post(&self.url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "ekko answered {} for person {person}",
                response.status()
            ));
        }
        let decision = response
            .headers()
            .get(crate::notify::DECISION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if decision == "forwarded" {
            self.consumers.react(&self.client, person).await?;
        }
        Ok(decision)
    }
}

fn tally(row: &mut Row, decision: &str) {
    row.sent += 1;
    match decision {
        "forwarded" => row.forwarded += 1,
        "unchanged" => row.unchanged += 1,
        "duplicate" => row.duplicate += 1,
        _ => {}
    }
}

fn person<'a>(id: &'a str, given: &'a str, family: &'a str, email: Option<&'a str>) -> Person<'a> {
    Person {
        id,
        given,
        family,
        email,
        display_name: None,
    }
}

async fn scenario() -> Result<String, String> {
    let hr = Arc::new(Hr::default());
    let queue = Arc::new(Queue::default());
    let hr_handler = hr.clone();
    let hr_addr = serve(Arc::new(
        move |path: &str, headers: &HeaderMap, _: &[u8]| hr_handler.get(path, headers, DEMO_TOKEN),
    ))
    .await?;
    let queue_handler = queue.clone();
    let queue_addr = serve(Arc::new(
        move |_: &str, headers: &HeaderMap, body: &[u8]| queue_handler.publish(headers, body),
    ))
    .await?;
    let running = crate::server::start(demo_policy(queue_addr, hr_addr)?)
        .await
        .map_err(|e| e.to_string())?;
    let mut producer = Producer {
        client: Client::builder(TokioExecutor::new()).build_http(),
        url: format!(
            "http://{}/api/exchanges/%2F/hr/publish",
            running.public_addr
        ),
        next_id: 0,
        consumers: Consumers {
            base: format!("http://{}", running.public_addr),
            hr: hr.clone(),
            reads: 0,
            from_cache: 0,
            authorisations: 0,
            source_fetches: 0,
        },
    };

    let mut rows: Vec<(&str, Row)> = Vec::new();
    let people = [
        ("1001", "Ola", "Nordmann"),
        ("1002", "Kari", "Hansen"),
        ("1003", "Per", "Olsen"),
    ];

    let mut row = Row::default();
    let before = hr.own_lookups();
    for (id, given, family) in people {
        hr.save(&person(id, given, family, None));
        tally(&mut row, &producer.notify(id, "hr", None).await?);
    }
    row.lookups = hr.own_lookups() - before;
    rows.push(("new persons", row));

    let mut row = Row::default();
    let before = hr.own_lookups();
    for round in 0..2 {
        for (id, given, family) in people.iter().take(2 + round) {
            hr.save(&person(id, given, family, None));
            tally(&mut row, &producer.notify(id, "hr", None).await?);
        }
    }
    row.lookups = hr.own_lookups() - before;
    rows.push(("re-saves (only lastModified moves)", row));

    let mut row = Row::default();
    let before = hr.own_lookups();
    for _ in 0..3 {
        tally(
            &mut row,
            &producer.notify("1002", "hr", Some("hr-2")).await?,
        );
    }
    row.lookups = hr.own_lookups() - before;
    rows.push(("redelivered event id", row));

    // The identity system reacts to every forwarded change by deriving the e-mail address
    // and writing it back to HR, which notifies again. The second write-back changes nothing.
    let mut row = Row::default();
    let before = hr.own_lookups();
    hr.save(&person("1001", "Ola", "Berg", None));
    tally(&mut row, &producer.notify("1001", "hr", None).await?);
    for _ in 0..2 {
        hr.save(&person("1001", "Ola", "Berg", Some("ola.berg@example.org")));
        tally(&mut row, &producer.notify("1001", "iga", None).await?);
    }
    row.lookups = hr.own_lookups() - before;
    rows.push(("name change + e-mail write-back", row));
    let mut out = report(&rows, queue.len())?;
    let consumers = &producer.consumers;
    if consumers.from_cache + consumers.authorisations != consumers.reads {
        return Err(format!(
            "{out}\n{} of {} consumer reads missed the cache after a change",
            consumers.reads - consumers.from_cache - consumers.authorisations,
            consumers.reads
        ));
    }
    let total_sent: u64 = rows.iter().map(|(_, row)| row.sent).sum();
    let own: u64 = rows.iter().map(|(_, row)| row.lookups).sum();
    out.push_str(&format!(
        "\nConsumers: {} systems read the person through ekko's cache after each forwarded change.\n\
         {} reads: {} from the cache, {} passed to the SCIM API once to authorise a new consumer\n\
         credential. Without ekko the SCIM API would serve {} reads (every notification, every\n\
         consumer); here it served {} for consumers plus ekko's own {} fingerprint lookups.\n",
        CONSUMERS.len(),
        consumers.reads,
        consumers.from_cache,
        consumers.authorisations,
        total_sent * CONSUMERS.len() as u64,
        consumers.source_fetches,
        own
    ));

    let echo = echo::Echo {
        hr: &hr,
        queue: &queue,
        admin: format!("http://{}", running.admin_addr),
    };
    out.push_str(&echo.run(&mut producer).await?);
    let _ = running.shutdown().await;
    Ok(out)
}

fn report(rows: &[(&str, Row)], queued: usize) -> Result<String, String> {
    let mut total = Row::default();
    for (_, row) in rows {
        total.sent += row.sent;
        total.forwarded += row.forwarded;
        total.unchanged += row.unchanged;
        total.duplicate += row.duplicate;
        total.lookups += row.lookups;
    }
    let mut out =
        String::from("ekko demo: HR -> ekko -> RabbitMQ, fingerprints from HR's SCIM API\n\n");
    out.push_str(&format!(
        "{:<36} {:>5} {:>10} {:>10} {:>10} {:>8}\n",
        "step", "sent", "forwarded", "unchanged", "duplicate", "lookups"
    ));
    for (name, row) in rows.iter().chain(std::iter::once(&("total", total))) {
        out.push_str(&format!(
            "{:<36} {:>5} {:>10} {:>10} {:>10} {:>8}\n",
            name, row.sent, row.forwarded, row.unchanged, row.duplicate, row.lookups
        ));
    }
    out.push_str(&format!(
        "\nThe queue received {queued} of {} notifications: consumers hear of the real changes only.\n",
        total.sent
    ));
    if queued as u64 != total.forwarded {
        return Err(format!(
            "{out}\nthe queue holds {queued} messages but ekko reported {} forwarded",
            total.forwarded
        ));
    }
    Ok(out)
}
