//! In-process stand-ins for the demo: an HTTP server helper, HR's SCIM API and a
//! RabbitMQ-compatible publish endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Request handler: path, headers and body to status and body.
pub type Handler = Arc<dyn Fn(&str, &HeaderMap, &[u8]) -> (u16, String) + Send + Sync>;

/// Serves `handler` over HTTP/1.1 on 127.0.0.1 with an OS-chosen port.
pub async fn serve(handler: Handler) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let headers = req.headers().clone();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let (status, text) = handler(&path, &headers, &body);
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One HR person as the demo saves it.
pub struct Person<'a> {
    /// SCIM `id`.
    pub id: &'a str,
    /// `name.givenName`.
    pub given: &'a str,
    /// `name.familyName`.
    pub family: &'a str,
    /// The work e-mail address, once the identity system has derived it.
    pub email: Option<&'a str>,
    /// SCIM `displayName`, which the echo scenario lets two systems fight over.
    pub display_name: Option<&'a str>,
}

/// HR's person register, served as SCIM 2.0 users; every save moves `meta.lastModified`
/// and `meta.version`, as real HR systems do.
#[derive(Default)]
pub struct Hr {
    persons: Mutex<HashMap<String, Value>>,
    saves: Mutex<u64>,
    lookups: Mutex<u64>,
    own_lookups: Mutex<u64>,
}

impl Hr {
    /// Saves a person, moving its modification time and version.
    pub fn save(&self, person: &Person<'_>) {
        let mut saves = self.saves.lock().unwrap_or_else(|p| p.into_inner());
        *saves += 1;
        let mut user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": person.id,
            "userName": format!("{}.{}", person.given.to_lowercase(), person.family.to_lowercase()),
            "name": { "givenName": person.given, "familyName": person.family },
            "active": true,
            "meta": {
                "resourceType": "User",
                "lastModified": format!("2026-12-04T09:{:02}:{:02}Z", *saves / 60 % 60, *saves % 60),
                "version": format!("W/\"{saves}\""),
            },
        });
        if let Some(email) = person.email {
            user["emails"] = json!([{ "value": email, "type": "work", "primary": true }]);
        }
        if let Some(display_name) = person.display_name {
            user["displayName"] = json!(display_name);
        }
        self.persons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(person.id.to_owned(), user);
    }

    /// Serves `GET /scim/v2/Users/{id}`; `ekko_token` tells ekko's own lookups apart.
    pub fn get(&self, path: &str, headers: &HeaderMap, ekko_token: &str) -> (u16, String) {
        *self.lookups.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let bearer = format!("Bearer {ekko_token}");
        if headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == bearer.as_bytes())
        {
            *self.own_lookups.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        let id = path.rsplit('/').next().unwrap_or("");
        match self
            .persons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            Some(user) => (200, user.to_string()),
            None => (
                404,
                json!({ "status": "404", "detail": "no such user" }).to_string(),
            ),
        }
    }

    /// Lookups served so far, ekko's and consumers'.
    pub fn lookups(&self) -> u64 {
        *self.lookups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// ekko's own fingerprint lookups so far.
    pub fn own_lookups(&self) -> u64 {
        *self.own_lookups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A message the stand-in broker accepted.
pub struct Message {
    /// The publish body.
    pub body: Value,
    /// The `Ekko-Coalesced` header of a released notification.
    pub coalesced: Option<u64>,
}

/// Messages received by the stand-in broker.
#[derive(Default)]
pub struct Queue {
    messages: Mutex<Vec<Message>>,
}

impl Queue {
    /// Accepts a management API publish and responds as RabbitMQ does.
    pub fn publish(&self, headers: &HeaderMap, body: &[u8]) -> (u16, String) {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return (
                400,
                r#"{"error":"bad_request","reason":"not json"}"#.to_owned(),
            );
        };
        let coalesced = headers
            .get(crate::notify::COALESCED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let message = Message { body, coalesced };
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
        (200, r#"{"routed":true}"#.to_owned())
    }

    /// Messages received so far.
    pub fn len(&self) -> usize {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Person ids and coalesced counts of the messages from index `from` on.
    pub fn since(&self, from: usize) -> Vec<(String, Option<u64>)> {
        let messages = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        messages
            .iter()
            .skip(from)
            .map(|m| {
                let payload: Value = m.body["payload"]
                    .as_str()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                let person = payload["personId"].as_str().unwrap_or("").to_owned();
                (person, m.coalesced)
            })
            .collect()
    }
}
