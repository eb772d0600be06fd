//! AMQP messages built from forwarded notifications (CloudEvents AMQP protocol binding 1.0).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::guard::HOPS_HEADER;
use crate::notify::envelope::{HOPS_AMQP_HEADER, HOPS_ATTRIBUTE};
use crate::policy::Format;

/// Prefix of the AMQP application properties that carry CloudEvents attributes
/// (CloudEvents AMQP protocol binding 1.0, section 3.1.3.1).
pub const ATTRIBUTE_PREFIX: &str = "cloudEvents:";

/// Media type of a JSON body, and of CloudEvents data without `datacontenttype`
/// (CloudEvents JSON event format 1.0, section 3.1.1).
const JSON_MEDIA_TYPE: &str = "application/json";

/// The value of one AMQP header (a field-table entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// A long string.
    Text(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// A message to publish: headers, properties and body. Exchange and routing key are
/// rendered separately, from the route's templates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Headers (application properties) in the order they are written.
    pub headers: Vec<(String, HeaderValue)>,
    /// The `content-type` property; `None` for an event without data.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// The `message-id` property: the event id where the notification has one.
    pub message_id: Option<String>,
    /// The `timestamp` property in seconds since the Unix epoch: the CloudEvents `time`.
    pub timestamp: Option<u64>,
}

impl Message {
    /// Returns the value of the header `name`.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

/// Failure to turn a forwarded notification into AMQP messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The body is not the JSON that its content mode needs.
    #[error("cloudevent body is not valid JSON for its content mode: {0}")]
    InvalidJson(String),
    /// A structured event or batch element is not a JSON object.
    #[error("cloudevent {0} is not a JSON object")]
    NotAnObject(String),
    /// `data_base64` is not valid base64 (RFC 4648 section 4).
    #[error("cloudevent `data_base64` is not valid base64; send the standard alphabet")]
    InvalidBase64,
    /// A `ce-` header is not visible ASCII or does not decode to UTF-8.
    #[error("header `{0}` does not decode to UTF-8 text")]
    InvalidHeader(String),
}

/// Builds the messages for a forwarded request whose hop count is already written into
/// `headers` and `body`: one message per event, in order.
///
/// - CloudEvents: attributes become `cloudEvents:` headers, `datacontenttype` becomes the
///   content type, and the data, with `data_base64` decoded, becomes the body. A batch
///   (`application/cloudevents-batch+json`) gives one message per element.
/// - JSON: the body as it is, content type `application/json`, and the hop count of the
///   `Ekko-Hops` header as the `ekko-hops` header.
///
/// # Errors
///
/// Returns [`MessageError`] when the body does not fit its content mode. Bodies reach this
/// point only after the envelope decoded, so an error means the two disagree.
pub fn build(
    format: &Format,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<Message>, MessageError> {
    match format {
        Format::CloudEvents => match media_type(headers).as_deref() {
            Some("application/cloudevents-batch+json") => batch(body),
            Some("application/cloudevents+json") => structured(body).map(|m| vec![m]),
            _ => binary(headers, body).map(|m| vec![m]),
        },
        Format::Json(_) | Format::RabbitmqPublish(_) => Ok(vec![json(headers, body)]),
    }
}

/// Builds a JSON message: the body as it is, with the `Ekko-Hops` header carried over.
fn json(headers: &HeaderMap, body: &[u8]) -> Message {
    let hops = headers
        .get(&HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    Message {
        headers: hops
            .map(|hops| vec![(HOPS_AMQP_HEADER.to_owned(), HeaderValue::Int(hops))])
            .unwrap_or_default(),
        content_type: Some(JSON_MEDIA_TYPE.to_owned()),
        body: body.to_vec(),
        message_id: None,
        timestamp: None,
    }
}

fn batch(body: &[u8]) -> Result<Vec<Message>, MessageError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| MessageError::InvalidJson(e.to_string()))?;
    let Value::Array(elements) = value else {
        return Err(MessageError::NotAnObject("batch".to_owned()));
    };
    elements
        .into_iter()
        .enumerate()
        .map(|(index, element)| match element {
            Value::Object(members) => structured_members(members),
            _ => Err(MessageError::NotAnObject(format!("batch element {index}"))),
        })
        .collect()
}

fn structured(body: &[u8]) -> Result<Message, MessageError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(members)) => structured_members(members),
        Ok(_) => Err(MessageError::NotAnObject("event".to_owned())),
        Err(error) => Err(MessageError::InvalidJson(error.to_string())),
    }
}

/// Builds a message from the members of one event in the JSON event format.
fn structured_members(mut members: Map<String, Value>) -> Result<Message, MessageError> {
    let data = members.remove("data");
    let data_base64 = members.remove("data_base64");
    let content_type = match members.remove("datacontenttype") {
        Some(Value::String(text)) => Some(text),
        _ => None,
    };
    let mut message = Message::default();
    for (name, value) in members {
        if let Some(value) = attribute_value(&name, value) {
            message
                .headers
                .push((format!("{ATTRIBUTE_PREFIX}{name}"), value));
        }
    }
    match (data_base64, data) {
        (Some(Value::String(encoded)), _) => {
            message.body = STANDARD
                .decode(encoded.trim_end_matches('=').to_owned() + &padding(&encoded))
                .map_err(|_| MessageError::InvalidBase64)?;
            message.content_type = content_type;
        }
        (_, Some(Value::Null)) | (_, None) => message.content_type = content_type,
        (_, Some(Value::String(text))) if !content_type.as_deref().is_none_or(is_json) => {
            message.body = text.into_bytes();
            message.content_type = content_type;
        }
        (_, Some(value)) => {
            message.body = value.to_string().into_bytes();
            message.content_type = content_type.or_else(|| Some(JSON_MEDIA_TYPE.to_owned()));
        }
    }
    fill_properties(&mut message);
    Ok(message)
}

/// Returns the `=` padding that a base64 text without padding needs, so that both padded
/// and unpadded `data_base64` decode.
fn padding(encoded: &str) -> String {
    let length = encoded.trim_end_matches('=').len();
    "=".repeat((4 - length % 4) % 4)
}

/// Converts a JSON attribute to a header value. Strings stay strings, integers become
/// 64-bit integers, booleans stay booleans, and other numbers become their text. A null
/// attribute is absent (CloudEvents JSON format section 2.2) and so are nested values.
fn attribute_value(name: &str, value: Value) -> Option<HeaderValue> {
    match value {
        Value::String(text) if name == HOPS_ATTRIBUTE => Some(
            text.trim()
                .parse()
                .map_or(HeaderValue::Text(text), HeaderValue::Int),
        ),
        Value::String(text) => Some(HeaderValue::Text(text)),
        Value::Bool(flag) => Some(HeaderValue::Bool(flag)),
        Value::Number(number) => Some(
            number
                .as_i64()
                .map_or_else(|| HeaderValue::Text(number.to_string()), HeaderValue::Int),
        ),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Builds a message from an HTTP binary-mode event: `ce-` headers, percent-decoded
/// (CloudEvents HTTP binding section 3.1.3.2), become `cloudEvents:` headers, and the
/// body and content type stay as they are.
fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Message, MessageError> {
    let mut message = Message {
        content_type: headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
        ..Message::default()
    };
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .ok()
            .and_then(|text| percent_decode_str(text).decode_utf8().ok())
            .ok_or_else(|| MessageError::InvalidHeader(name.to_string()))?;
        let value = attribute_value(attribute, Value::String(text.into_owned()));
        if let Some(value) = value {
            message
                .headers
                .push((format!("{ATTRIBUTE_PREFIX}{attribute}"), value));
        }
    }
    fill_properties(&mut message);
    Ok(message)
}

/// Sets `message-id` from the `id` attribute and `timestamp` from the `time` attribute.
fn fill_properties(message: &mut Message) {
    let text = |name: &str| match message.header(&format!("{ATTRIBUTE_PREFIX}{name}")) {
        Some(HeaderValue::Text(text)) => Some(text.clone()),
        _ => None,
    };
    let (id, time) = (text("id"), text("time"));
    message.message_id = id;
    message.timestamp = time.as_deref().and_then(unix_seconds);
}

/// Returns the media type of the request's Content-Type, lowercased, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// Reports whether a content type is JSON: `application/json` or a `+json` suffix (RFC 6839).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(JSON_MEDIA_TYPE) || essence.to_ascii_lowercase().ends_with("+json")
}

/// Converts an RFC 3339 date-time such as `2024-05-01T12:00:00.5+02:00` to whole seconds
/// since the Unix epoch; `None` for other text or a time before 1970.
pub fn unix_seconds(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' {
        return None;
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') || bytes[16] != b':' {
        return None;
    }

    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }

    // Fractional seconds are dropped, and the offset must be `Z` or `±hh:mm`.
    let rest = text[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(seconds).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date, by Howard Hinnant's
/// `days_from_civil` algorithm.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Pointers;
    use http::header::HeaderValue as HttpValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HttpValue::from_static(value));
        }
        map
    }

    fn text(value: &str) -> HeaderValue {
        HeaderValue::Text(value.to_owned())
    }

    #[test]
    fn structured_attributes_become_headers() {
        let body = br#"{"specversion":"1.0","id":"e1","source":"/hr","type":"person.changed",
            "subject":"123","time":"2024-05-01T12:00:00Z","ekkohops":2,
            "datacontenttype":"application/json","data":{"name":"Ada"}}"#;
        let type_header = headers(&[("content-type", "application/cloudevents+json")]);
        let messages = build(&Format::CloudEvents, &type_header, body).unwrap();
        let [message] = messages.as_slice() else {
            panic!("expected one message, got {}", messages.len());
        };
        assert_eq!(message.header("cloudEvents:id"), Some(&text("e1")));
        assert_eq!(
            message.header("cloudEvents:type"),
            Some(&text("person.changed"))
        );
        assert_eq!(
            message.header("cloudEvents:ekkohops"),
            Some(&HeaderValue::Int(2))
        );
        assert_eq!(message.header("cloudEvents:datacontenttype"), None);
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(message.body, br#"{"name":"Ada"}"#);
        assert_eq!(message.message_id.as_deref(), Some("e1"));
        assert_eq!(message.timestamp, Some(1_714_564_800));
    }

    #[test]
    fn data_base64_is_decoded() {
        let body = br#"{"specversion":"1.0","id":"e1","source":"/s","type":"t",
            "datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#;
        let message = structured(body).unwrap();
        assert_eq!(message.body, vec![0, 1, 2]);
        assert_eq!(
            message.content_type.as_deref(),
            Some("application/octet-stream")
        );
        let unpadded = br#"{"id":"e","data_base64":"YWI"}"#;
        assert_eq!(structured(unpadded).unwrap().body, b"ab");
        let invalid = br#"{"id":"e","data_base64":"**"}"#;
        assert_eq!(structured(invalid), Err(MessageError::InvalidBase64));
    }

    #[test]
    fn text_data_keeps_its_content_type() {
        let body = br#"{"id":"e","datacontenttype":"text/plain","data":"hello"}"#;
        let message = structured(body).unwrap();
        assert_eq!(message.body, b"hello");
        assert_eq!(message.content_type.as_deref(), Some("text/plain"));
        let json_string = br#"{"id":"e","data":"hello"}"#;
        assert_eq!(structured(json_string).unwrap().body, br#""hello""#);
    }

    #[test]
    fn batch_gives_one_message_per_event() {
        let body = br#"[{"id":"a","data":1},{"id":"b","data":2}]"#;
        let type_header = headers(&[("content-type", "application/cloudevents-batch+json")]);
        let messages = build(&Format::CloudEvents, &type_header, body).unwrap();
        let ids: Vec<_> = messages.iter().map(|m| m.message_id.as_deref()).collect();
        assert_eq!(ids, vec![Some("a"), Some("b")]);
        assert_eq!(messages[1].body, b"2");
        let not_objects = br#"[{"id":"a"}, 3]"#;
        assert_eq!(
            build(&Format::CloudEvents, &type_header, not_objects),
            Err(MessageError::NotAnObject("batch element 1".to_owned()))
        );
    }

    #[test]
    fn binary_headers_are_percent_decoded() {
        let request = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "e%2F1"),
            ("ce-ekkohops", "3"),
            ("content-type", "text/plain"),
            ("x-other", "kept out"),
        ]);
        let messages = build(&Format::CloudEvents, &request, b"raw").unwrap();
        let message = &messages[0];
        assert_eq!(message.header("cloudEvents:id"), Some(&text("e/1")));
        assert_eq!(
            message.header("cloudEvents:ekkohops"),
            Some(&HeaderValue::Int(3))
        );
        assert_eq!(message.header("cloudEvents:other"), None);
        assert_eq!(message.headers.len(), 3);
        assert_eq!(message.body, b"raw");
        assert_eq!(message.content_type.as_deref(), Some("text/plain"));
        assert_eq!(message.message_id.as_deref(), Some("e/1"));
    }

    #[test]
    fn json_body_carries_hops_header() {
        let request = headers(&[("ekko-hops", "4")]);
        let format = Format::Json(Pointers::default());
        let messages = build(&format, &request, br#"{"id":1}"#).unwrap();
        assert_eq!(messages[0].header("ekko-hops"), Some(&HeaderValue::Int(4)));
        assert_eq!(
            messages[0].content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(messages[0].body, br#"{"id":1}"#);
    }

    #[test]
    fn rfc3339_times_convert_to_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            unix_seconds("2024-05-01T14:00:00.250+02:00"),
            Some(1_714_564_800)
        );
        assert_eq!(unix_seconds("1969-12-31T23:59:59Z"), None);
        assert_eq!(unix_seconds("2024-13-01T00:00:00Z"), None);
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
