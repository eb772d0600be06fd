//! The fixed upstream that every server under test forwards to: a queue's publish endpoint
//! (any POST) and a source API (`GET /entities/{id}`), with configurable latency and a count
//! of the requests served per path.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Path prefix of the source API's entities.
pub const ENTITY_PREFIX: &str = "/entities/";

/// Shared state of the upstream: latencies, entity versions and request counts.
#[derive(Default)]
pub struct Upstream {
    /// Delay before each GET response, in microseconds.
    get_latency_us: AtomicU64,
    /// Current version of each entity that has changed at least once; others are at 0.
    versions: Mutex<HashMap<String, u64>>,
    /// Requests served per method and path, such as `GET /entities/e1`.
    counts: Mutex<HashMap<String, u64>>,
    /// POST requests served, all paths together.
    posts: AtomicU64,
    /// GET requests served, all paths together.
    gets: AtomicU64,
}

impl Upstream {
    /// Sets the delay before each GET response (the source API's latency).
    pub fn set_get_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.get_latency_us.store(micros, Ordering::Relaxed);
    }

    /// Moves the entity `id` to its next version and returns that version.
    pub fn change(&self, id: &str) -> u64 {
        let mut versions = self.versions.lock().expect("versions lock");
        let version = versions.entry(id.to_owned()).or_insert(0);
        *version += 1;
        *version
    }

    /// POST requests served since start.
    pub fn posts(&self) -> u64 {
        self.posts.load(Ordering::Relaxed)
    }

    /// GET requests served since start.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    /// Requests served since start for `method` and `path`, such as `GET` `/entities/e1`.
    pub fn count(&self, method: &str, path: &str) -> u64 {
        let counts = self.counts.lock().expect("counts lock");
        counts
            .get(&format!("{method} {path}"))
            .copied()
            .unwrap_or(0)
    }

    async fn handle(&self, method: &Method, path: &str) -> (StatusCode, String) {
        let key = format!("{method} {path}");
        *self
            .counts
            .lock()
            .expect("counts lock")
            .entry(key)
            .or_insert(0) += 1;
        if method == Method::POST {
            // The queue responds at once.
            self.posts.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::OK, r#"{"routed":true}"#.to_owned());
        }
        self.gets.fetch_add(1, Ordering::Relaxed);
        sleep_micros(self.get_latency_us.load(Ordering::Relaxed)).await;
        match path.strip_prefix(ENTITY_PREFIX) {
            Some(id) if method == Method::GET || method == Method::HEAD => {
                (StatusCode::OK, self.entity_body(id))
            }
            _ => (StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.to_owned()),
        }
    }

    /// A SCIM-like person of about 600 bytes whose `version` is the entity's current version.
    fn entity_body(&self, id: &str) -> String {
        let version = self
            .versions
            .lock()
            .expect("versions lock")
            .get(id)
            .copied()
            .unwrap_or(0);
        format!(
            concat!(
                r#"{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"{id}","#,
                r#""version":{version},"userName":"{id}@example.org","#,
                r#""name":{{"givenName":"Given {id}","familyName":"Family {id}"}},"#,
                r#""displayName":"Person {id}","title":"Engineer","active":true,"#,
                r#""emails":[{{"value":"{id}@example.org","type":"work","primary":true}}],"#,
                r#""phoneNumbers":[{{"value":"+47 22 00 00 00","type":"work"}}],"#,
                r#""addresses":[{{"streetAddress":"Street 1","locality":"Oslo","#,
                r#""postalCode":"0150","country":"NO","type":"work"}}],"#,
                r#""groups":[{{"value":"staff","display":"Staff"}},"#,
                r#"{{"value":"engineering","display":"Engineering"}}],"#,
                r#""meta":{{"resourceType":"User","location":"/entities/{id}"}}}}"#
            ),
            id = id,
            version = version
        )
    }
}

async fn sleep_micros(micros: u64) {
    if micros > 0 {
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
}

/// Serves `upstream` over HTTP/1.1 with keep-alive on 127.0.0.1 with an OS-chosen port and
/// returns that address. The server runs until the Tokio runtime stops.
pub async fn serve(upstream: Arc<Upstream>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let upstream = upstream.clone();
                    async move { Ok::<_, Infallible>(answer(&upstream, request).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(upstream: &Upstream, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The body is read to the end so that the connection can be reused.
    let _ = request.into_body().collect().await;
    let (status, body) = upstream.handle(&method, &path).await;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
