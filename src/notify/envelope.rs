//! Envelope decoding: CloudEvents HTTP binding, RabbitMQ management publish bodies, generic JSON.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::policy::Format;

/// One decoded notification.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// Event id (CloudEvents `id`, AMQP `message_id`, or the `id` pointer).
    pub id: Option<String>,
    /// Producing system (CloudEvents `source`).
    pub source: Option<String>,
    /// Event type (CloudEvents `type`).
    pub kind: Option<String>,
    /// Entity id within the source (CloudEvents `subject`).
    pub subject: Option<String>,
    /// Other named values that entity templates may use, such as `routing_key`.
    pub extra: Vec<(String, String)>,
    /// The entity state carried by the notification, for `fingerprint: payload`.
    pub data: Option<Value>,
}

impl Event {
    /// Looks up a template field: `id`, `source`, `type`, `subject`, or an extra value.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "id" => self.id.as_deref(),
            "source" => self.source.as_deref(),
            "type" => self.kind.as_deref(),
            "subject" => self.subject.as_deref(),
            _ => self
                .extra
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// The result of decoding a request body.
#[derive(Debug)]
pub enum Decoded {
    /// One notification (structured, binary, RabbitMQ publish or JSON).
    Single(Event),
    /// A CloudEvents batch: each event with its original JSON text.
    Batch(Vec<(Event, Box<RawValue>)>),
}

/// Why a body could not be decoded; the message names the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes a request body according to the route's format.
pub fn decode(format: &Format, headers: &HeaderMap, body: &[u8]) -> Result<Decoded, DecodeError> {
    let _ = (format, headers, body);
    todo!("envelope decoding")
}

/// Builds a batch body from the kept events' original JSON text, in order.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a RawValue>) -> Bytes {
    let mut out = Vec::from(&b"["[..]);
    for (i, raw) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(raw.get().as_bytes());
    }
    out.push(b']');
    Bytes::from(out)
}
