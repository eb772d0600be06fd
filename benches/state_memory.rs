//! Resident memory per entity: one changed state for each of many entities, committed
//! through `Gateway::handle` with a payload-fingerprint route and the loop guard on.
//!
//! `cargo bench --bench state_memory` commits 1,000,000 entities; `-- --quick`, and
//! `cargo test --bench state_memory`, commit 10,000. Each scenario runs in a child process
//! of its own, so one scenario's freed memory does not hide the next one's growth:
//!
//! - `default`: default settings but for the entity bound, so every notification's event
//!   id is kept as well.
//! - `fingerprints`: `state.max_event_ids: 1`, so the figure is the fingerprint record and
//!   the loop guard's share alone.
//! - `tables`: the `fingerprints` policy, but committed straight through
//!   `StateStore::commit` and `LoopGuard::commit`, without the gateway's HTTP and JSON
//!   work, so it shows what the tables themselves take.
//!
//! Resident memory is read from `VmRSS` in `/proc/self/status` (Linux only), which gives
//! kilobytes whatever the page size.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use ekko::guard::{LoopGuard, Prior};
use ekko::metrics::Metrics;
use ekko::notify::fingerprint::Fingerprint;
use ekko::notify::Gateway;
use ekko::policy::LoopGuardConfig;
use ekko::state::{EntityRecord, StateStore};

/// Entities committed by a full run.
const FULL_ENTITIES: usize = 1_000_000;

/// Entities committed by a quick run.
const QUICK_ENTITIES: usize = 10_000;

/// Events per CloudEvents batch request.
const BATCH: usize = 1_000;

/// Scenario names and the `state` section each adds to the policy.
/// Both bound the entity tables at 1,100,000, because each of the 16 shards evicts on its
/// own and 1,000,000 random keys fill some shards past a sixteenth of an exact bound.
const SCENARIOS: [(&str, &str); 3] = [
    ("default", "state: { max_entities: 1100000 }\n"),
    (
        "fingerprints",
        "state: { max_entities: 1100000, max_event_ids: 1 }\n",
    ),
    (
        "tables",
        "state: { max_entities: 1100000, max_event_ids: 1 }\n",
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let entities = if quick { QUICK_ENTITIES } else { FULL_ENTITIES };
    if let Some(position) = args.iter().position(|a| a == "--scenario") {
        let name = args.get(position + 1).expect("--scenario needs a name");
        let (_, state) = SCENARIOS
            .iter()
            .find(|(scenario, _)| scenario == name)
            .expect("known scenario");
        run(name, state, entities);
        return;
    }
    let exe = std::env::current_exe().expect("path of this bench");
    for (name, _) in SCENARIOS {
        let mut child = Command::new(&exe);
        child.args(["--scenario", name]);
        if !quick {
            child.arg("--bench");
        }
        let status = child.status().expect("scenario process starts");
        assert!(status.success(), "scenario {name} failed: {status}");
    }
}

/// Commits `entities` changed entities and prints resident memory before and after.
fn run(name: &str, state_section: &str, entities: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let upstream = accepting_upstream().await;
        let policy_text = format!("{state_section}{}", policy(upstream));
        let policy = ekko::policy::parse(&policy_text, &|_| None).expect("bench policy is valid");
        let state = Arc::new(StateStore::new(
            policy.state.max_entities,
            policy.state.max_event_ids,
        ));
        let guard = Arc::new(ekko::guard::LoopGuard::new(&policy.state));
        let metrics = Arc::new(Metrics::new());
        let gateway =
            Gateway::new(&policy, state.clone(), guard.clone(), metrics).expect("routes compile");
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let direct = name == "tables";

        // One batch of other entities first, so connection and route set-up costs fall
        // before the first reading.
        send_batch(&gateway, peer, "warm", 0, BATCH).await;
        let warm = state.entities.len();
        let before_kib = resident_kib();
        let started = Instant::now();
        let mut first = 0;
        while first < entities {
            let count = BATCH.min(entities - first);
            if direct {
                commit_directly(&state, &guard, first, count);
            } else {
                send_batch(&gateway, peer, "person", first, count).await;
            }
            first += count;
        }
        let after_kib = resident_kib();
        let stored = state.entities.len() - warm;
        assert_eq!(stored, entities, "every entity keeps its fingerprint");
        let grown = (after_kib.saturating_sub(before_kib)) * 1024;
        println!(
            "state_memory/{name}: {entities} entities in {:.1} s; RSS {before_kib} KiB -> {after_kib} KiB; {:.1} bytes per entity",
            started.elapsed().as_secs_f64(),
            grown as f64 / entities as f64,
        );
    });
}

/// Commits `count` entities `person/<n>`, numbered from `first`, as the gateway commits an
/// accepted forward: the fingerprint record, then the loop guard with the record before it.
fn commit_directly(state: &StateStore, guard: &LoopGuard, first: usize, count: usize) {
    let config = LoopGuardConfig::default();
    for n in first..first + count {
        let key = format!("person/{n}");
        let fingerprint = Fingerprint(*blake3::hash(key.as_bytes()).as_bytes());
        let prior = state.entities.peek(&key).as_ref().map(Prior::from_record);
        let record = EntityRecord {
            fingerprint,
            spec: 1,
            forwarded_at_ms: n as u64,
        };
        state.commit(&key, record);
        let short = ekko::guard::short(&fingerprint);
        guard.commit(
            &key,
            Some(short),
            prior,
            Some("urn:hr"),
            None,
            n as u64,
            &config,
        );
    }
}

fn policy(upstream: SocketAddr) -> String {
    format!(
        r#"upstreams:
  mq: {{ url: "http://{upstream}" }}
notifications:
  - name: hr
    match: {{ path: "/events" }}
    upstream: mq
    format: cloudevents
    entity: "{{subject}}"
    fingerprint:
      payload: {{}}
"#
    )
}

/// Sends one CloudEvents batch with `count` entities `<prefix>/<n>`, numbered from `first`,
/// and checks that the upstream accepted it.
async fn send_batch(gateway: &Gateway, peer: SocketAddr, prefix: &str, first: usize, count: usize) {
    let events: Vec<serde_json::Value> = (first..first + count)
        .map(|n| {
            serde_json::json!({
                "specversion": "1.0", "id": format!("{prefix}-{n}"), "source": "urn:hr",
                "type": "person.changed", "subject": format!("{prefix}/{n}"),
                "datacontenttype": "application/json",
                "data": { "id": n, "userName": format!("user{n}"), "active": true }
            })
        })
        .collect();
    let body = Bytes::from(serde_json::to_vec(&events).expect("batch encodes"));
    let request = Request::post("/events")
        .header("content-type", "application/cloudevents-batch+json")
        .body(Full::new(body))
        .expect("valid request");
    let response = gateway.handle(request, peer).await;
    assert!(
        response.status().is_success(),
        "upstream accepts the batch: {}",
        response.status()
    );
}

/// Starts an upstream on 127.0.0.1 that responds to every request with 200 and an empty body.
async fn accepting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// Returns the process's resident set size in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}
