//! Causal hop count: read from and written to notifications, and W3C trace ids.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::notify::envelope::{Event, HOPS_AMQP_HEADER, HOPS_ATTRIBUTE};
use crate::policy::Format;

/// HTTP header that carries ekko's hop count on every forwarded notification.
pub const HOPS_HEADER: HeaderName = HeaderName::from_static("ekko-hops");

/// Returns the hop count a notification carries: the larger of the `Ekko-Hops` header and
/// the event's own `ekkohops` attribute or AMQP header. Values too large for 32 bits count
/// as the maximum, so an oversized count can never slip under `max_hops`.
pub fn carried_hops(headers: &HeaderMap, event: &Event) -> u32 {
    let header = headers
        .get(&HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or(0, parse_hops);
    let attribute = event.field(HOPS_ATTRIBUTE).map_or(0, parse_hops);
    header.max(attribute)
}

/// Parses a hop count written as an integer or a number such as `10.0`; other text is 0.
fn parse_hops(text: &str) -> u32 {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u32>().unwrap_or(u32::MAX);
    }
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() && number >= 0.0 => number.min(u32::MAX as f64) as u32,
        Ok(number) if number == f64::INFINITY => u32::MAX,
        _ => 0,
    }
}

/// The trace id of a W3C `traceparent` (Trace Context, version 00 format:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), from the HTTP header or the
/// CloudEvents distributed-tracing attribute. An all-zero or malformed id gives `None`.
pub fn trace_id<'a>(headers: &'a HeaderMap, event: &'a Event) -> Option<&'a str> {
    let value = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .or_else(|| event.field("traceparent"))?;
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let valid = version.len() == 2
        && version != "ff"
        && trace.len() == 32
        && parent.len() == 16
        && trace
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && trace.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

/// Writes `hops` into a forwarded single notification: the `Ekko-Hops` header always, and
/// inside the body where the format has a place for it, so consumers that republish can
/// carry it on. Returns the body unchanged when it cannot be rewritten.
pub fn stamp(format: &Format, headers: &mut HeaderMap, body: Bytes, hops: u32) -> Bytes {
    headers.insert(HOPS_HEADER, HeaderValue::from(hops));
    match format {
        Format::CloudEvents if headers.contains_key("ce-specversion") => {
            headers.insert(
                HeaderName::from_static("ce-ekkohops"),
                HeaderValue::from(hops),
            );
            body
        }
        Format::CloudEvents => stamp_structured(&body, hops).unwrap_or(body),
        Format::RabbitmqPublish(_) => stamp_publish(&body, hops).unwrap_or(body),
        Format::Json(_) => body,
    }
}

/// Sets `ekkohops` in a structured CloudEvent. Without an `ekkohops` member the attribute
/// is inserted right after the opening brace and every other byte stays as sent. With one,
/// the object is rewritten: member values keep their exact text, members are sorted.
pub fn stamp_structured(body: &[u8], hops: u32) -> Option<Bytes> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    let quoted = format!("\"{HOPS_ATTRIBUTE}\"");
    if !body.windows(quoted.len()).any(|w| w == quoted.as_bytes()) {
        let rest = &body[start + 1..];
        let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
        let separator = if empty { "" } else { "," };
        let mut out = Vec::with_capacity(body.len() + 24);
        out.extend_from_slice(&body[..=start]);
        out.extend_from_slice(format!("{quoted}:{hops}{separator}").as_bytes());
        out.extend_from_slice(rest);
        return Some(Bytes::from(out));
    }
    let mut members: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(body).ok()?;
    members.insert(
        HOPS_ATTRIBUTE.to_owned(),
        RawValue::from_string(hops.to_string()).ok()?,
    );
    serde_json::to_vec(&members).ok().map(Bytes::from)
}

/// Sets `properties.headers["ekko-hops"]` in a RabbitMQ management publish body.
fn stamp_publish(body: &[u8], hops: u32) -> Option<Bytes> {
    let mut publish: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let properties = publish.get_mut("properties")?.as_object_mut()?;
    let headers = properties
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    if headers.is_null() {
        *headers = Value::Object(Map::new());
    }
    headers
        .as_object_mut()?
        .insert(HOPS_AMQP_HEADER.to_owned(), Value::from(hops));
    serde_json::to_vec(&publish).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_with(name: &str, value: &str) -> Event {
        Event {
            extra: vec![(name.to_owned(), value.to_owned())],
            ..Event::default()
        }
    }

    #[test]
    fn carried_hops_takes_the_larger_value() {
        let mut headers = HeaderMap::new();
        headers.insert(HOPS_HEADER, HeaderValue::from_static("3"));
        assert_eq!(carried_hops(&headers, &event_with("ekkohops", "5")), 5);
        assert_eq!(carried_hops(&headers, &Event::default()), 3);
        assert_eq!(
            carried_hops(&HeaderMap::new(), &event_with("ekkohops", "x")),
            0
        );
    }

    #[test]
    fn oversized_hop_counts_saturate() {
        assert_eq!(parse_hops("18446744073709551616"), u32::MAX);
        assert_eq!(parse_hops("4294967296"), u32::MAX);
        assert_eq!(parse_hops("10.0"), 10);
        assert_eq!(parse_hops("1e1"), 10);
        assert_eq!(parse_hops(" 7 "), 7);
        assert_eq!(parse_hops("-3"), 0);
        assert_eq!(parse_hops("x"), 0);
    }

    #[test]
    fn trace_id_is_read_from_valid_traceparent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(
            trace_id(&headers, &Event::default()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn invalid_traceparent_has_no_trace_id() {
        for value in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", HeaderValue::from_static(value));
            assert_eq!(trace_id(&headers, &Event::default()), None, "{value}");
        }
    }

    #[test]
    fn structured_event_without_hops_keeps_its_bytes() {
        let body = br#" {"specversion":"1.0", "data":{"n":1.50}}"#;
        let stamped = stamp_structured(body, 1).unwrap();
        assert_eq!(
            &stamped[..],
            br#" {"ekkohops":1,"specversion":"1.0", "data":{"n":1.50}}"#
        );
        assert_eq!(
            &stamp_structured(b"{ }", 2).unwrap()[..],
            br#"{"ekkohops":2 }"#
        );
    }

    #[test]
    fn structured_event_gets_hops_and_keeps_values() {
        let body =
            br#"{"specversion":"1.0","id":"1","data":{"n":1.50,"big":12345678901234567890}}"#;
        let stamped = stamp_structured(body, 4).unwrap();
        let text = std::str::from_utf8(&stamped).unwrap();
        assert!(text.contains(r#""ekkohops":4"#), "{text}");
        assert!(
            text.contains(r#"{"n":1.50,"big":12345678901234567890}"#),
            "{text}"
        );
    }

    #[test]
    fn publish_body_gets_amqp_header() {
        let body =
            br#"{"properties":{},"routing_key":"k","payload":"{}","payload_encoding":"string"}"#;
        let mut headers = HeaderMap::new();
        let stamped = stamp(
            &Format::RabbitmqPublish(Default::default()),
            &mut headers,
            Bytes::from_static(body),
            2,
        );
        let value: Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(value["properties"]["headers"]["ekko-hops"], 2);
        assert_eq!(value["payload"], "{}");
        assert_eq!(headers[HOPS_HEADER], "2");
    }
}
