//! Decision path: a suppressed notification through `Gateway::handle`, beside
//! serde_json's parse of the same body as the peer measurement.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Request;
use http_body_util::Full;

use ekko::metrics::Metrics;
use ekko::notify::Gateway;
use ekko::state::StateStore;

const POLICY: &str = r#"
upstreams:
  mq: { url: "http://127.0.0.1:9" }
notifications:
  - name: hr
    match: { path: "/events" }
    upstream: mq
    format: cloudevents
    entity: "hr/person/{subject}"
    duplicate_window: 0s
    fingerprint:
      payload: {}
      ignore: ["/meta/lastModified"]
"#;

fn body() -> Bytes {
    let event = serde_json::json!({
        "specversion": "1.0", "id": "e1", "source": "urn:hr", "type": "person.changed",
        "subject": "123", "datacontenttype": "application/json",
        "data": { "id": "123", "userName": "ola.nordmann",
                  "name": { "givenName": "Ola", "familyName": "Nordmann" },
                  "emails": [{ "value": "ola@example.org", "primary": true }],
                  "meta": { "lastModified": "2026-12-04T10:00:00Z" } }
    });
    Bytes::from(event.to_string())
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/events")
        .header("content-type", "application/cloudevents+json")
        .body(Full::new(body.clone()))
        .expect("valid request")
}

fn suppressed_notification(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = ekko::policy::parse(POLICY, &|_| None).expect("bench policy is valid");
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(StateStore::new(
        policy.state.max_entities,
        policy.state.max_event_ids,
    ));
    let guard = Arc::new(ekko::guard::LoopGuard::new(&policy.state));
    let gateway = runtime.block_on(async {
        Gateway::new(&policy, state.clone(), guard, metrics).expect("routes compile")
    });
    let body = body();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();

    runtime.block_on(seed(&gateway, &state, &body, peer));

    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("serde_json_parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(&body).unwrap())
    });
    group.bench_function("suppressed_notification", |b| {
        b.iter(|| runtime.block_on(gateway.handle(request(&body), peer)))
    });
    group.finish();
}

/// Stores the real fingerprint of the bench body, so `handle` returns `unchanged`.
async fn seed(gateway: &Gateway, state: &StateStore, body: &Bytes, peer: SocketAddr) {
    let data: serde_json::Value = serde_json::from_slice(body).unwrap();
    let mask = ekko::notify::mask::Mask::parse(&["/meta/lastModified".to_owned()]).unwrap();
    let computed = ekko::notify::fingerprint::compute(data["data"].clone(), &mask);
    let spec = gateway.route_spec("hr").expect("route exists");
    state.commit(
        "hr/person/123",
        ekko::state::EntityRecord {
            fingerprint: computed.fingerprint,
            spec,
            forwarded_at_ms: 0,
        },
    );
    let response = gateway.handle(request(body), peer).await;
    assert_eq!(
        response.status(),
        202,
        "the bench measures the suppressed path"
    );
}

criterion_group!(benches, suppressed_notification);
criterion_main!(benches);
