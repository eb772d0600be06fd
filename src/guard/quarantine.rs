//! Quarantined entities and the newest notification held for each.

use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::notify::fingerprint::Fingerprint;

/// Why an entity was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The flap penalty crossed `suppress_above`.
    Oscillation,
    /// A notification arrived at or above `max_hops`.
    Hops,
}

impl Reason {
    /// The label and header value: `oscillation` or `hops`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oscillation => "oscillation",
            Self::Hops => "hops",
        }
    }
}

/// A notification kept for delivery when its entity is released. Bodies and header
/// values are stored as base64 in snapshots, so any bytes survive a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldNotification {
    /// Request method.
    #[serde(with = "method_text")]
    pub method: Method,
    /// Request path and query, as the producer sent them.
    pub path_and_query: String,
    /// Request headers as received (hop-by-hop fields are removed when forwarding).
    #[serde(with = "header_list")]
    pub headers: HeaderMap,
    /// Request body.
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
    /// The producer's address, for `Forwarded`.
    pub peer: SocketAddr,
    /// The entity's state when it arrived; `None` when none could be computed.
    pub fingerprint: Option<Fingerprint>,
    /// `source` + NUL + `id`, when the event had an id.
    pub event_key: Option<String>,
    /// The notification's causal hop count.
    pub hops: u32,
}

/// One quarantined entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Route that quarantined it; releases are forwarded through this route.
    pub route: String,
    /// When the quarantine began, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Why.
    pub reason: Reason,
    /// Sources that alternated, in order of their last appearance.
    pub sources: Vec<String>,
    /// Short fingerprints (16 hex digits) of the states the entity alternated between.
    pub states: Vec<String>,
    /// The newest notification, delivered on release.
    pub held: Option<HeldNotification>,
    /// Notifications held since the quarantine began, including the newest.
    pub held_count: u64,
    /// Short fingerprint of the newest held state, for the penalty of the next one.
    pub last_state: Option<u64>,
    /// Failed release attempts so far.
    pub attempts: u32,
    /// No release is attempted before this time (ms since the epoch); 0 means any time.
    pub next_attempt_ms: u64,
    /// Set by an operator's release request: release at the next chance regardless of penalty.
    pub release_requested: bool,
}

/// Delay before release attempt `attempt` (1-based): 1 s doubling to at most 5 minutes.
pub fn backoff_ms(attempt: u32) -> u64 {
    let exponent = attempt.saturating_sub(1).min(16);
    (1000u64 << exponent).min(300_000)
}

mod method_text {
    use http::Method;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(method: &Method, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(method.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Method, D::Error> {
        let text = String::deserialize(deserializer)?;
        Method::from_bytes(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod base64_bytes {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

mod header_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(headers: &HeaderMap, serializer: S) -> Result<S::Ok, S::Error> {
        let engine = base64::engine::general_purpose::STANDARD;
        let list: Vec<(&str, String)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), engine.encode(value.as_bytes())))
            .collect();
        list.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HeaderMap, D::Error> {
        let list = Vec::<(String, String)>::deserialize(deserializer)?;
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(serde::de::Error::custom)?;
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(serde::de::Error::custom)?;
            let value = HeaderValue::from_bytes(&bytes).map_err(serde::de::Error::custom)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(40), 300_000);
    }

    #[test]
    fn held_notification_survives_serialization() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-binary", HeaderValue::from_bytes(b"\xff\x80").unwrap());
        let held = HeldNotification {
            method: Method::POST,
            path_and_query: "/events?x=1".into(),
            headers,
            body: Bytes::from_static(b"\x00{\"a\":1}"),
            peer: "127.0.0.1:5000".parse().unwrap(),
            fingerprint: Some(Fingerprint([7; 32])),
            event_key: Some("hr\0e1".into()),
            hops: 3,
        };
        let text = serde_json::to_string(&held).unwrap();
        let back: HeldNotification = serde_json::from_str(&text).unwrap();
        assert_eq!(back, held);
    }
}
