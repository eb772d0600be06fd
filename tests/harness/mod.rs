//! Test harness: real HTTP servers on 127.0.0.1 standing in for upstreams and source
//! APIs, a client, and ekko started from YAML policy text.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A request that a mock server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("recorded body is JSON")
    }
}

/// What a mock server does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Respond with this status and body.
    Respond(u16, String),
    /// Wait, then respond.
    Delay(Duration, u16, String),
    /// Close the connection without a response.
    Drop,
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A real HTTP/1.1 server on 127.0.0.1 that records requests and answers by a handler
/// that a test can swap at any time.
pub struct MockServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Handler>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let (rec, hand) = (received.clone(), handler.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rec, hand) = (rec.clone(), hand.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (rec, hand) = (rec.clone(), hand.clone());
                        async move { answer(req, rec, hand).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            handler,
            task,
        }
    }

    /// Starts a server that responds 200 `{"routed":true}` to everything, like RabbitMQ's publish.
    pub async fn accepting() -> Self {
        Self::start(|_| Reply::Respond(200, r#"{"routed":true}"#.into())).await
    }

    pub fn set_handler(&self, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    received: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Handler>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method,
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    received.lock().unwrap().push(recorded.clone());
    let handler = handler.lock().unwrap().clone();
    let (status, body) = match handler(&recorded) {
        Reply::Respond(status, body) => (status, body),
        Reply::Delay(wait, status, body) => {
            tokio::time::sleep(wait).await;
            (status, body)
        }
        Reply::Drop => return Err(std::io::Error::other("mock closes the connection")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    Ok(response)
}

/// A source API: serves `GET {prefix}/{id}` from a map of entity states; 404 when absent.
pub struct SourceApi {
    pub server: MockServer,
    pub entities: Arc<Mutex<HashMap<String, serde_json::Value>>>,
}

impl SourceApi {
    pub async fn start(prefix: &'static str) -> Self {
        let entities: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
        let map = entities.clone();
        let server = MockServer::start(move |req| {
            let path = req.path_and_query.split('?').next().unwrap_or("");
            let id = path
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'));
            let decoded = id.map(|id| {
                percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned()
            });
            match decoded.and_then(|id| map.lock().unwrap().get(&id).cloned()) {
                Some(state) => Reply::Respond(200, state.to_string()),
                None => Reply::Respond(404, r#"{"detail":"not found"}"#.into()),
            }
        })
        .await;
        Self { server, entities }
    }

    pub fn put(&self, id: &str, state: serde_json::Value) {
        self.entities.lock().unwrap().insert(id.to_owned(), state);
    }

    pub fn remove(&self, id: &str) {
        self.entities.lock().unwrap().remove(id);
    }
}

/// Returns an address on 127.0.0.1 where nothing listens, so connections are refused.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A response read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn decision(&self) -> &str {
        self.headers
            .get("ekko-decision")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("response body is JSON")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A small HTTP client for tests.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl HttpClient {
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        let response = self
            .client
            .request(request)
            .await
            .expect("request to ekko failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, content_type: &str, body: impl Into<Bytes>) -> Answer {
        let request = Request::post(url)
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .unwrap();
        self.send(request).await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Request::get(url).body(Full::new(Bytes::new())).unwrap())
            .await
    }
}

/// ekko running in-process on loopback ports chosen by the OS.
pub struct Ekko {
    pub running: Option<ekko::server::Running>,
    pub base: String,
    pub admin: String,
}

impl Ekko {
    /// Starts ekko on a policy; `listen` and `admin_listen` are set to 127.0.0.1:0.
    pub async fn start(policy_yaml: &str) -> Self {
        let text = format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{policy_yaml}");
        let policy = ekko::policy::parse(&text, &|_| None)
            .unwrap_or_else(|e| panic!("test policy invalid:\n{e}"));
        let running = ekko::server::start(policy).await.expect("ekko starts");
        Self {
            base: format!("http://{}", running.public_addr),
            admin: format!("http://{}", running.admin_addr),
            running: Some(running),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn metrics(&self) -> String {
        HttpClient::default()
            .get(&format!("{}/metrics", self.admin))
            .await
            .text()
    }

    /// Returns the value of one sample line, such as `ekko_notifications_total{route="r",decision="unchanged"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map(|value| value.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    pub async fn stop(mut self) -> Result<(), ekko::server::ServeError> {
        self.running.take().unwrap().shutdown().await
    }
}

/// Builds a structured CloudEvent body.
pub fn cloudevent(id: &str, subject: &str, data: serde_json::Value) -> String {
    serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "urn:hr",
        "type": "person.changed",
        "subject": subject,
        "data": data,
    })
    .to_string()
}

pub const CE_JSON: &str = "application/cloudevents+json";

/// Builds a RabbitMQ management API publish body, as sent to
/// `POST /api/exchanges/{vhost}/{exchange}/publish`, with `payload` as a UTF-8 string and
/// `properties` as given, such as `{"message_id": "m1"}`.
pub fn rabbitmq_publish_body(
    properties: serde_json::Value,
    routing_key: &str,
    payload: &str,
) -> String {
    serde_json::json!({
        "properties": properties,
        "routing_key": routing_key,
        "payload": payload,
        "payload_encoding": "string",
    })
    .to_string()
}

impl MockServer {
    /// Starts a server that replies like [`MockServer::start`] and adds `extra` to every
    /// response's headers, such as hop-by-hop fields that a proxy must not relay.
    pub async fn start_with_response_headers(
        extra: Vec<(&'static str, &'static str)>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let extra = Arc::new(extra);
        let (rec, hand) = (received.clone(), handler.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rec, hand, extra) = (rec.clone(), hand.clone(), extra.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (rec, hand, extra) = (rec.clone(), hand.clone(), extra.clone());
                        async move {
                            let mut response = answer(req, rec, hand).await?;
                            for (name, value) in extra.iter() {
                                response.headers_mut().append(*name, value.parse().unwrap());
                            }
                            Ok::<_, std::io::Error>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            handler,
            task,
        }
    }
}

impl Ekko {
    /// Address of the public (notification) listener.
    pub fn public_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().public_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().admin_addr
    }
}

/// Sends `request` as raw bytes over a new TCP connection and reads one response.
///
/// Use it for requests that a client library would rewrite: chunked bodies without
/// `Content-Length`, hop-by-hop headers, `..` path segments. The response must carry
/// `Content-Length`: the read stops once the body has that many bytes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buffer = Vec::new();
    loop {
        if let Some(answer) = parse_response(&buffer) {
            return answer;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.unwrap();
        if read == 0 {
            return parse_response(&buffer).expect("connection closed before a full response");
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Parses one HTTP/1.1 response with a `Content-Length` body; `None` while incomplete.
fn parse_response(buffer: &[u8]) -> Option<Answer> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buffer[..head_end]).expect("response head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            http::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    let length: usize = headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or(0);
    let body = &buffer[head_end + 4..];
    if body.len() < length {
        return None;
    }
    Some(Answer {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::copy_from_slice(&body[..length]),
    })
}

/// Yields to the runtime until `condition` holds, so a test can wait for a mock to see a
/// request without sleeping. Panics with `what` after 100 000 rounds.
pub async fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("gave up waiting until {what}");
}

impl Ekko {
    /// Returns the admin listener's URL for `path`, such as `/admin/quarantine`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{}", self.admin, path)
    }
}

/// Lets paused Tokio time run one second at a time, so ekko's 1 s release tick fires,
/// until `condition` holds. Returns the number of seconds that passed, or `None` when
/// `condition` still fails after `max_seconds`.
///
/// Needs a runtime with paused time, because with real time it would really sleep.
pub async fn tick_until(mut condition: impl FnMut() -> bool, max_seconds: u64) -> Option<u64> {
    for second in 0..=max_seconds {
        if condition() {
            return Some(second);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// Builds a structured CloudEvent body with `source` and `subject` of the caller's choice.
pub fn cloudevent_from(source: &str, id: &str, subject: &str, data: serde_json::Value) -> String {
    serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": source,
        "type": "person.changed",
        "subject": subject,
        "data": data,
    })
    .to_string()
}
