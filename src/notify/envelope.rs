//! Envelope decoding: CloudEvents HTTP binding, RabbitMQ management publish bodies, generic JSON.

use std::borrow::Cow;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::policy::{Format, Pointers};

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

/// CloudEvents extension attribute that carries ekko's causal hop count.
pub const HOPS_ATTRIBUTE: &str = "ekkohops";

/// AMQP application property (`properties.headers`) that carries the hop count in
/// RabbitMQ publish bodies.
pub const HOPS_AMQP_HEADER: &str = "ekko-hops";

/// The result of decoding a request body.
#[derive(Debug)]
pub enum Decoded {
    /// One notification (structured, binary, RabbitMQ publish or JSON).
    Single(Event),
    /// A CloudEvents batch: each event with its original JSON text.
    Batch(Vec<(Event, Box<RawValue>)>),
}

/// The reason a body could not be decoded. Its message names the field and what was expected.
///
/// Messages quote at most a field name, a JSON type and short protocol values such as a
/// `specversion` or a content type, never the body itself, because bodies may hold personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes a request body according to the route's format.
///
/// - `Format::CloudEvents` picks the content mode of the CloudEvents HTTP binding 1.0.2:
///   structured for `application/cloudevents+json`, batch for
///   `application/cloudevents-batch+json` (the only format that returns `Decoded::Batch`), and
///   binary when a `ce-specversion` header is present with any other content type.
/// - `Format::RabbitmqPublish` reads a RabbitMQ management API publish body. Its payload must be
///   JSON and is read as a structured CloudEvent, as an AMQP binary-mode CloudEvent from
///   `properties.headers`, or through the pointers, in that order. `routing_key` goes to `extra`.
/// - `Format::Json` reads any JSON document through the pointers.
///
/// A field that the envelope does not carry stays `None` so that the caller can report missing
/// template fields. Only `specversion` 1.0 is accepted.
///
/// # Errors
///
/// Returns `DecodeError` when the body or headers do not match the format: a missing or
/// mistyped attribute, a wrong `specversion`, invalid base64, a payload that is not JSON, or a
/// pointer that names an object or array. A batch error names the element's index.
pub fn decode(format: &Format, headers: &HeaderMap, body: &[u8]) -> Result<Decoded, DecodeError> {
    match format {
        Format::CloudEvents => decode_cloudevents(headers, body),
        Format::RabbitmqPublish(pointers) => {
            decode_rabbitmq_publish(pointers, body).map(Decoded::Single)
        }
        Format::Json(pointers) => decode_json(pointers, body).map(Decoded::Single),
    }
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

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Standard base64 alphabet (RFC 4648 §4). Decoding accepts input with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Maximum number of characters of a protocol value that an error message quotes.
const MAX_QUOTED_CHARS: usize = 40;

/// Names every CloudEvents attribute whose JSON value must be a string.
const STRING_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "datacontenttype",
    "dataschema",
    "time",
];

fn decode_error(message: impl Into<String>) -> DecodeError {
    DecodeError(message.into())
}

/// Describes a JSON value's type for error messages, with its article.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts a scalar to text: strings as they are, numbers in decimal, booleans as `true`/`false`.
///
/// Returns `Ok(None)` for null and `Err` with the type description for arrays and objects.
fn scalar_text(value: &Value) -> Result<Option<String>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) => Ok(Some(number.to_string())),
        Value::Bool(flag) => Ok(Some(flag.to_string())),
        Value::Array(_) | Value::Object(_) => Err(json_type(value)),
    }
}

/// Quotes a short protocol value for an error message, cut to `MAX_QUOTED_CHARS` characters and
/// with control characters escaped so that it stays on one log line.
fn quote_value(text: &str) -> String {
    let mut quoted: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        quoted.push('…');
    }
    format!("`{quoted}`")
}

fn describe_base64_error(error: base64::DecodeError) -> String {
    match error {
        base64::DecodeError::InvalidByte(offset, _) => {
            format!("invalid character at offset {offset}")
        }
        base64::DecodeError::InvalidLength(length) => {
            format!("{length} symbols is not a valid length")
        }
        base64::DecodeError::InvalidLastSymbol(offset, _) => {
            format!("invalid last symbol at offset {offset}")
        }
        base64::DecodeError::InvalidPadding => "invalid padding".to_owned(),
    }
}

/// Returns the media type of a Content-Type value, lowercased, without parameters
/// (RFC 9110 §8.3.1).
fn media_type(content_type: &str) -> String {
    let essence = content_type.split(';').next().unwrap_or_default();
    essence.trim().to_ascii_lowercase()
}

/// Reports whether a media type is JSON: `application/json` or any `+json` suffix (RFC 6839).
fn is_json_media_type(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// Reports whether `name` is a valid CloudEvents attribute name: lowercase ASCII letters and
/// digits only.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// Returns the request's Content-Type value, or `None` when the header is absent.
fn content_type(headers: &HeaderMap) -> Result<Option<&str>, DecodeError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        decode_error("header `content-type` is not visible ASCII: send a media type such as application/json")
    })?;
    Ok(Some(text))
}

// ---------------------------------------------------------------------------------------------
// CloudEvents attributes, shared by all bindings
// ---------------------------------------------------------------------------------------------

/// Source of CloudEvents attributes, which picks the wording of error messages.
#[derive(Debug, Clone, Copy)]
enum Binding {
    /// JSON event format (structured and batch mode, RabbitMQ payloads).
    Structured,
    /// HTTP binary mode: `ce-` headers.
    HttpBinary,
    /// AMQP binary mode: `cloudEvents:` or `cloudEvents_` application properties.
    AmqpBinary,
}

impl Binding {
    fn label(self, attribute: &str) -> String {
        match self {
            Binding::Structured => format!("cloudevents attribute `{attribute}`"),
            Binding::HttpBinary => format!("header `ce-{attribute}`"),
            Binding::AmqpBinary => format!("amqp application property `cloudEvents:{attribute}`"),
        }
    }

    fn requirement(self) -> &'static str {
        match self {
            Binding::Structured => "a structured event needs specversion, id, source and type",
            Binding::HttpBinary => {
                "a binary-mode event needs headers ce-specversion, ce-id, ce-source and ce-type"
            }
            Binding::AmqpBinary => {
                "an amqp binary-mode event needs application properties cloudEvents:specversion, \
                 cloudEvents:id, cloudEvents:source and cloudEvents:type (or the cloudEvents_ prefix)"
            }
        }
    }
}

/// Removes the first attribute named `name` and returns its value.
fn take_attribute(attributes: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let position = attributes.iter().position(|(key, _)| key == name)?;
    Some(attributes.remove(position).1)
}

fn take_required(
    attributes: &mut Vec<(String, String)>,
    name: &str,
    binding: Binding,
) -> Result<String, DecodeError> {
    let Some(value) = take_attribute(attributes, name) else {
        let (label, requirement) = (binding.label(name), binding.requirement());
        return Err(decode_error(format!("{label} is missing: {requirement}")));
    };
    if value.is_empty() {
        let label = binding.label(name);
        return Err(decode_error(format!(
            "{label} is empty: expected a non-empty string"
        )));
    }
    Ok(value)
}

/// Builds an event from text attributes. The remaining attributes become `extra` in their order.
///
/// `specversion` must be `1.0`. `id`, `source` and `type` must be present and non-empty, and
/// `subject`, when present, must be non-empty, as the CloudEvents 1.0 core attributes require.
fn event_from_attributes(
    mut attributes: Vec<(String, String)>,
    binding: Binding,
) -> Result<Event, DecodeError> {
    let specversion = take_required(&mut attributes, "specversion", binding)?;
    if specversion != "1.0" {
        let (label, found) = (binding.label("specversion"), quote_value(&specversion));
        return Err(decode_error(format!(
            "{label} is {found}: ekko decodes only cloudevents specversion 1.0"
        )));
    }

    let id = take_required(&mut attributes, "id", binding)?;
    let source = take_required(&mut attributes, "source", binding)?;
    let kind = take_required(&mut attributes, "type", binding)?;
    let subject = take_attribute(&mut attributes, "subject");
    if subject.as_deref() == Some("") {
        let label = binding.label("subject");
        return Err(decode_error(format!(
            "{label} is empty: omit it or send a non-empty string"
        )));
    }

    Ok(Event {
        id: Some(id),
        source: Some(source),
        kind: Some(kind),
        subject,
        extra: attributes,
        data: None,
    })
}

// ---------------------------------------------------------------------------------------------
// CloudEvents HTTP binding
// ---------------------------------------------------------------------------------------------

/// The content modes of the CloudEvents HTTP binding 1.0.2 §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentMode {
    Structured,
    Batch,
    Binary,
}

fn decode_cloudevents(headers: &HeaderMap, body: &[u8]) -> Result<Decoded, DecodeError> {
    match content_mode(headers)? {
        ContentMode::Structured => {
            let value: Value = serde_json::from_slice(body).map_err(|error| {
                decode_error(format!("structured cloudevent body is not JSON: {error}"))
            })?;
            structured_event(value).map(Decoded::Single)
        }
        ContentMode::Batch => decode_batch(body).map(Decoded::Batch),
        ContentMode::Binary => binary_event(headers, body).map(Decoded::Single),
    }
}

/// Picks the content mode. A CloudEvents media type wins over `ce-` headers, as the HTTP binding
/// lets structured requests repeat attributes as headers.
fn content_mode(headers: &HeaderMap) -> Result<ContentMode, DecodeError> {
    let media_type = content_type(headers)?.map(media_type);
    match media_type.as_deref() {
        Some("application/cloudevents+json") => return Ok(ContentMode::Structured),
        Some("application/cloudevents-batch+json") => return Ok(ContentMode::Batch),
        Some(other) if other.starts_with("application/cloudevents") => {
            let found = quote_value(other);
            return Err(decode_error(format!(
                "content type {found} is a cloudevents event format that ekko does not decode: \
                 use application/cloudevents+json or application/cloudevents-batch+json"
            )));
        }
        _ => {}
    }
    if headers.contains_key("ce-specversion") {
        return Ok(ContentMode::Binary);
    }

    let found = match &media_type {
        Some(media_type) => format!("content type {}", quote_value(media_type)),
        None => "no content type".to_owned(),
    };
    Err(decode_error(format!(
        "request is not a cloudevent: expected content type application/cloudevents+json \
         (structured mode), application/cloudevents-batch+json (batch mode) or a ce-specversion \
         header (binary mode), got {found} and no ce-specversion header"
    )))
}

/// Decodes one event in the JSON event format (CloudEvents JSON format §3).
///
/// Attributes other than the reserved ones become `extra` when their name is a valid attribute
/// name, and other members are ignored. A null attribute counts as absent (JSON format §2.2).
fn structured_event(value: Value) -> Result<Event, DecodeError> {
    let Value::Object(mut members) = value else {
        let hint = match value {
            Value::Array(_) => " (a batch needs content type application/cloudevents-batch+json)",
            _ => "",
        };
        let found = json_type(&value);
        return Err(decode_error(format!(
            "structured cloudevent is {found}: expected a JSON object{hint}"
        )));
    };

    let data = members.remove("data").filter(|value| !value.is_null());
    let data_base64 = members
        .remove("data_base64")
        .filter(|value| !value.is_null());
    let attributes = structured_attributes(members)?;
    let mut event = event_from_attributes(attributes, Binding::Structured)?;
    let datacontenttype = take_attribute(&mut event.extra, "datacontenttype");
    event.data = structured_data(data, data_base64, datacontenttype.as_deref())?;
    Ok(event)
}

/// Converts the attribute members of a structured event to text, checking their JSON types.
fn structured_attributes(
    members: Map<String, Value>,
) -> Result<Vec<(String, String)>, DecodeError> {
    let mut attributes = Vec::with_capacity(members.len());
    for (name, value) in members {
        if !is_attribute_name(&name) {
            continue;
        }
        let must_be_string = STRING_ATTRIBUTES.contains(&name.as_str());
        let text = match scalar_text(&value) {
            Ok(None) => continue,
            Ok(Some(text)) if value.is_string() || !must_be_string => text,
            Ok(Some(_)) | Err(_) => {
                let (label, found) = (Binding::Structured.label(&name), json_type(&value));
                let expected = if must_be_string {
                    "a string"
                } else {
                    "a string, number or boolean"
                };
                return Err(decode_error(format!(
                    "{label} is {found}: expected {expected}"
                )));
            }
        };
        attributes.push((name, text));
    }
    Ok(attributes)
}

/// Returns the event data from `data` or `data_base64` (CloudEvents JSON format §3.1).
///
/// `data_base64` is parsed as JSON when `datacontenttype` is JSON. When `datacontenttype` is
/// absent, bytes that parse as JSON become that value. Otherwise the data is the base64 text
/// itself, so that it still counts in the fingerprint.
fn structured_data(
    data: Option<Value>,
    data_base64: Option<Value>,
    datacontenttype: Option<&str>,
) -> Result<Option<Value>, DecodeError> {
    let encoded = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(decode_error(
                "cloudevents attributes `data` and `data_base64` are both present: \
                 an event carries at most one of them",
            ))
        }
        (Some(data), None) => return Ok(Some(data)),
        (None, None) => return Ok(None),
        (None, Some(Value::String(encoded))) => encoded,
        (None, Some(other)) => {
            let found = json_type(&other);
            return Err(decode_error(format!(
                "cloudevents attribute `data_base64` is {found}: expected a base64 string"
            )));
        }
    };

    data_from_base64(encoded, datacontenttype).map(Some)
}

fn data_from_base64(encoded: String, datacontenttype: Option<&str>) -> Result<Value, DecodeError> {
    let bytes = BASE64.decode(&encoded).map_err(|error| {
        let reason = describe_base64_error(error);
        decode_error(format!(
            "cloudevents attribute `data_base64` is not valid base64 (RFC 4648): {reason}"
        ))
    })?;
    let Some(content_type) = datacontenttype else {
        let parsed = serde_json::from_slice(&bytes).ok();
        return Ok(parsed.unwrap_or(Value::String(encoded)));
    };
    if !is_json_media_type(&media_type(content_type)) {
        return Ok(Value::String(encoded));
    }
    let parsed = serde_json::from_slice(&bytes).map_err(|error| {
        let found = quote_value(content_type);
        decode_error(format!(
            "cloudevents attribute `data_base64` does not decode to JSON although \
             datacontenttype is {found}: {error}"
        ))
    })?;
    Ok(parsed)
}

/// Decodes a JSON batch (CloudEvents JSON format §4), keeping each element's text.
fn decode_batch(body: &[u8]) -> Result<Vec<(Event, Box<RawValue>)>, DecodeError> {
    let whole: Box<RawValue> = serde_json::from_slice(body)
        .map_err(|error| decode_error(format!("cloudevents batch body is not JSON: {error}")))?;
    if !whole.get().starts_with('[') {
        let value: Value = serde_json::from_str(whole.get()).unwrap_or(Value::Null);
        let found = json_type(&value);
        return Err(decode_error(format!(
            "cloudevents batch body is {found}: expected a JSON array of structured events"
        )));
    }

    let elements: Vec<Box<RawValue>> = serde_json::from_str(whole.get())
        .map_err(|error| decode_error(format!("cloudevents batch body is invalid: {error}")))?;
    let mut events = Vec::with_capacity(elements.len());
    for (index, raw) in elements.into_iter().enumerate() {
        let value: Value = serde_json::from_str(raw.get()).map_err(|error| {
            decode_error(format!(
                "cloudevents batch element {index} is invalid: {error}"
            ))
        })?;
        let event = structured_event(value)
            .map_err(|error| decode_error(format!("cloudevents batch element {index}: {error}")))?;
        events.push((event, raw));
    }
    Ok(events)
}

/// Decodes a binary-mode event: attributes from `ce-` headers, data from the body
/// (CloudEvents HTTP binding 1.0.2 §3.1).
fn binary_event(headers: &HeaderMap, body: &[u8]) -> Result<Event, DecodeError> {
    let mut attributes = Vec::new();
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            let count = headers.get_all(name).iter().count();
            return Err(decode_error(format!(
                "header `{name}` appears {count} times: send each ce- header once"
            )));
        };
        if !attribute.is_empty() {
            let text = decode_header_value(name.as_str(), value.as_bytes())?;
            attributes.push((attribute.to_owned(), text));
        }
    }

    let mut event = event_from_attributes(attributes, Binding::HttpBinary)?;
    event.data = binary_data(content_type(headers)?, body)?;
    Ok(event)
}

/// Decodes a `ce-` header value (CloudEvents HTTP binding 1.0.2 §3.1.3.2).
///
/// First RFC 7230 §3.2.6 quoted strings are unescaped, then one round of percent-decoding
/// replaces each `%` followed by two hex digits with that byte. A `%` that is not followed by two
/// hex digits stays as it is, because the binding defines only the `%XX` form and does not ask
/// decoders to reject a lone `%`. The result must be valid UTF-8, so overlong forms are rejected.
fn decode_header_value(name: &str, raw: &[u8]) -> Result<String, DecodeError> {
    let unquoted = unquote_header_value(raw).map_err(|reason| {
        decode_error(format!(
            "header `{name}` has an invalid quoted string: {reason}"
        ))
    })?;
    let bytes: Vec<u8> = percent_encoding::percent_decode(&unquoted).collect();
    String::from_utf8(bytes).map_err(|_| {
        decode_error(format!(
            "header `{name}` is not valid UTF-8 after percent-decoding: \
             percent-encode the UTF-8 bytes of the value"
        ))
    })
}

/// Removes RFC 7230 §3.2.6 double quotes and backslash escapes from a header value.
fn unquote_header_value(raw: &[u8]) -> Result<Cow<'_, [u8]>, &'static str> {
    if !raw.contains(&b'"') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut unquoted = Vec::with_capacity(raw.len());
    let mut in_quotes = false;
    let mut bytes = raw.iter().copied();
    while let Some(byte) = bytes.next() {
        match (byte, in_quotes) {
            (b'"', _) => in_quotes = !in_quotes,
            (b'\\', true) => {
                let escaped = bytes.next().ok_or("a backslash ends the value")?;
                unquoted.push(escaped);
            }
            _ => unquoted.push(byte),
        }
    }
    if in_quotes {
        return Err("a double quote is not closed");
    }
    Ok(Cow::Owned(unquoted))
}

/// Returns the data of a binary-mode event (CloudEvents HTTP binding 1.0.2 §3.1.2).
///
/// An empty body means no data. A JSON content type requires a JSON body. Without a content type
/// a body that parses as JSON is JSON. Any other body becomes a JSON string: the text when it is
/// UTF-8, else its base64 encoding.
fn binary_data(content_type: Option<&str>, body: &[u8]) -> Result<Option<Value>, DecodeError> {
    if body.is_empty() {
        return Ok(None);
    }
    match content_type {
        Some(content_type) if is_json_media_type(&media_type(content_type)) => {
            let value = serde_json::from_slice(body).map_err(|error| {
                let found = quote_value(content_type);
                decode_error(format!(
                    "binary-mode body is not JSON although content type is {found}: {error}"
                ))
            })?;
            Ok(Some(value))
        }
        None => match serde_json::from_slice(body) {
            Ok(value) => Ok(Some(value)),
            Err(_) => Ok(Some(opaque_data(body))),
        },
        Some(_) => Ok(Some(opaque_data(body))),
    }
}

/// Represents bytes that are not JSON as a JSON string: the text when UTF-8, else base64.
fn opaque_data(body: &[u8]) -> Value {
    match std::str::from_utf8(body) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => Value::String(BASE64.encode(body)),
    }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ management API publish body
// ---------------------------------------------------------------------------------------------

/// The members of a RabbitMQ management API publish body that ekko reads.
struct PublishBody {
    properties: Map<String, Value>,
    routing_key: String,
    payload: Value,
}

fn decode_rabbitmq_publish(pointers: &Pointers, body: &[u8]) -> Result<Event, DecodeError> {
    let publish = parse_publish_body(body)?;
    let mut event = payload_event(pointers, &publish.properties, publish.payload)?;
    event
        .extra
        .push(("routing_key".to_owned(), publish.routing_key));
    // ekko's causal hop count travels as an AMQP header, so consumers that republish can keep it.
    let hops = publish
        .properties
        .get("headers")
        .and_then(|headers| headers.get(HOPS_AMQP_HEADER))
        .and_then(|value| scalar_text(value).ok().flatten());
    if let Some(hops) = hops {
        if !event.extra.iter().any(|(name, _)| name == HOPS_ATTRIBUTE) {
            event.extra.push((HOPS_ATTRIBUTE.to_owned(), hops));
        }
    }
    Ok(event)
}

/// Parses the body of `POST /api/exchanges/{vhost}/{exchange}/publish`. `properties`,
/// `routing_key`, `payload` and `payload_encoding` are required, other members are ignored.
/// The payload must be JSON after base64 decoding when `payload_encoding` is `base64`.
fn parse_publish_body(body: &[u8]) -> Result<PublishBody, DecodeError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| decode_error(format!("rabbitmq publish body is not JSON: {error}")))?;
    let Value::Object(mut members) = value else {
        let found = json_type(&value);
        return Err(decode_error(format!(
            "rabbitmq publish body is {found}: expected a JSON object with properties, \
             routing_key, payload and payload_encoding"
        )));
    };

    let properties = match publish_member(&mut members, "properties")? {
        Value::Object(properties) => properties,
        other => return Err(publish_member_type_error("properties", &other, "an object")),
    };
    let routing_key = publish_string(&mut members, "routing_key")?;
    let payload = publish_string(&mut members, "payload")?;
    let encoding = publish_string(&mut members, "payload_encoding")?;
    let payload_bytes = payload_bytes(&payload, &encoding)?;

    let payload = serde_json::from_slice(&payload_bytes)
        .map_err(|error| decode_error(format!("rabbitmq payload is not JSON: {error}")))?;
    Ok(PublishBody {
        properties,
        routing_key,
        payload,
    })
}

fn publish_member(members: &mut Map<String, Value>, name: &str) -> Result<Value, DecodeError> {
    members.remove(name).ok_or_else(|| {
        decode_error(format!(
            "rabbitmq publish member `{name}` is missing: a publish body needs properties \
             (may be empty), routing_key, payload and payload_encoding"
        ))
    })
}

fn publish_string(members: &mut Map<String, Value>, name: &str) -> Result<String, DecodeError> {
    match publish_member(members, name)? {
        Value::String(text) => Ok(text),
        other => Err(publish_member_type_error(name, &other, "a string")),
    }
}

fn publish_member_type_error(name: &str, found: &Value, expected: &str) -> DecodeError {
    let found = json_type(found);
    decode_error(format!(
        "rabbitmq publish member `{name}` is {found}: expected {expected}"
    ))
}

fn payload_bytes<'a>(payload: &'a str, encoding: &str) -> Result<Cow<'a, [u8]>, DecodeError> {
    match encoding {
        "string" => Ok(Cow::Borrowed(payload.as_bytes())),
        "base64" => BASE64.decode(payload).map(Cow::Owned).map_err(|error| {
            let reason = describe_base64_error(error);
            decode_error(format!(
                "rabbitmq publish member `payload` is not valid base64 (RFC 4648) although \
                 payload_encoding is `base64`: {reason}"
            ))
        }),
        other => {
            let found = quote_value(other);
            Err(decode_error(format!(
                "rabbitmq publish member `payload_encoding` is {found}: expected `string` or `base64`"
            )))
        }
    }
}

/// Reads the payload as a structured CloudEvent when it is an object with `specversion`, else as
/// an AMQP binary-mode CloudEvent when `properties.headers` has CloudEvents properties, else
/// through the pointers with `properties.message_id` and `properties.app_id` as fallbacks.
fn payload_event(
    pointers: &Pointers,
    properties: &Map<String, Value>,
    payload: Value,
) -> Result<Event, DecodeError> {
    let is_structured = payload
        .as_object()
        .is_some_and(|members| members.contains_key("specversion"));
    if is_structured {
        return structured_event(payload)
            .map_err(|error| decode_error(format!("rabbitmq payload: {error}")));
    }

    let headers = match properties.get("headers") {
        None | Some(Value::Null) => None,
        Some(Value::Object(headers)) => Some(headers),
        Some(other) => {
            let found = json_type(other);
            return Err(decode_error(format!(
                "rabbitmq publish member `properties.headers` is {found}: expected an object"
            )));
        }
    };
    if let Some(attributes) = headers.map(amqp_attributes).transpose()?.flatten() {
        let mut event = event_from_attributes(attributes, Binding::AmqpBinary)?;
        event.data = Some(payload);
        return Ok(event);
    }

    let mut event = pointer_event(pointers, &payload)?;
    if event.id.is_none() {
        event.id = property_text(properties, "message_id")?;
    }
    if event.source.is_none() {
        event.source = property_text(properties, "app_id")?;
    }
    Ok(event)
}

/// Collects CloudEvents attributes from AMQP application properties named `cloudEvents:NAME`
/// (CloudEvents AMQP binding §3.1.3.1). The spelling `cloudEvents_NAME` is accepted as well.
/// Returns `None` when no property has either prefix.
fn amqp_attributes(
    headers: &Map<String, Value>,
) -> Result<Option<Vec<(String, String)>>, DecodeError> {
    let mut attributes: Vec<(String, String)> = Vec::new();
    for (property, value) in headers {
        let attribute = property
            .strip_prefix("cloudEvents:")
            .or_else(|| property.strip_prefix("cloudEvents_"));
        let Some(attribute) = attribute.filter(|name| !name.is_empty()) else {
            continue;
        };
        if attributes.iter().any(|(name, _)| name == attribute) {
            return Err(decode_error(format!(
                "amqp application properties `cloudEvents:{attribute}` and \
                 `cloudEvents_{attribute}` are both present: send one of them"
            )));
        }
        let text = scalar_text(value).map_err(|found| {
            decode_error(format!(
                "amqp application property `{property}` is {found}: expected a string, number or boolean"
            ))
        })?;
        if let Some(text) = text {
            attributes.push((attribute.to_owned(), text));
        }
    }
    Ok((!attributes.is_empty()).then_some(attributes))
}

/// Returns a message property such as `message_id` as text. An absent or empty value is `None`.
fn property_text(
    properties: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, DecodeError> {
    let Some(value) = properties.get(name) else {
        return Ok(None);
    };
    let text = scalar_text(value).map_err(|found| {
        decode_error(format!(
            "rabbitmq publish member `properties.{name}` is {found}: expected a string"
        ))
    })?;
    Ok(text.filter(|text| !text.is_empty()))
}

// ---------------------------------------------------------------------------------------------
// Generic JSON through pointers
// ---------------------------------------------------------------------------------------------

fn decode_json(pointers: &Pointers, body: &[u8]) -> Result<Event, DecodeError> {
    let document: Value = serde_json::from_slice(body)
        .map_err(|error| decode_error(format!("body is not JSON: {error}")))?;
    pointer_event(pointers, &document)
}

/// Reads an event's fields through JSON pointers (RFC 6901). `data` defaults to the whole
/// document; `extra` stays empty.
fn pointer_event(pointers: &Pointers, document: &Value) -> Result<Event, DecodeError> {
    let data = match pointers.data.as_deref() {
        None => Some(document.clone()),
        Some(pointer) => resolve_pointer(document, pointer)?.cloned(),
    };
    Ok(Event {
        id: pointer_text(document, pointers.id.as_deref(), "id")?,
        source: pointer_text(document, pointers.source.as_deref(), "source")?,
        kind: pointer_text(document, pointers.kind.as_deref(), "type")?,
        subject: pointer_text(document, pointers.subject.as_deref(), "subject")?,
        extra: Vec::new(),
        data,
    })
}

/// Returns the text that `pointer` names, or `None` when no pointer is set or the value is
/// missing, null or an empty string. Numbers become their decimal text and booleans
/// `true`/`false`.
///
/// NOTE: integers beyond the 64-bit range are parsed as `f64`, so such numeric ids lose
/// precision and can collide. Send them as JSON strings.
fn pointer_text(
    document: &Value,
    pointer: Option<&str>,
    field: &str,
) -> Result<Option<String>, DecodeError> {
    let Some(pointer) = pointer else {
        return Ok(None);
    };
    let Some(value) = resolve_pointer(document, pointer)? else {
        return Ok(None);
    };
    let text = scalar_text(value).map_err(|found| {
        decode_error(format!(
            "json pointer `{pointer}` for `{field}` names {found}: expected a string or number"
        ))
    })?;
    Ok(text.filter(|text| !text.is_empty()))
}

/// Resolves an RFC 6901 pointer. Returns `Ok(None)` when the document has no such value.
fn resolve_pointer<'a>(
    document: &'a Value,
    pointer: &str,
) -> Result<Option<&'a Value>, DecodeError> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(decode_error(format!(
            "json pointer `{pointer}` is invalid: a pointer is empty or starts with `/` (RFC 6901)"
        )));
    }
    Ok(document.pointer(pointer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_drops_parameters_and_case() {
        assert_eq!(
            media_type("Application/CloudEvents+JSON ; charset=utf-8"),
            "application/cloudevents+json"
        );
        assert_eq!(media_type("text/plain"), "text/plain");
        assert_eq!(media_type(""), "");
    }

    #[test]
    fn json_media_types_are_recognized() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("application/vnd.person+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/jsonl"));
    }

    #[test]
    fn attribute_names_are_lowercase_alphanumerics() {
        assert!(is_attribute_name("traceparent"));
        assert!(is_attribute_name("ext1"));
        assert!(!is_attribute_name("data_base64"));
        assert!(!is_attribute_name("myExt"));
        assert!(!is_attribute_name(""));
    }

    #[test]
    fn scalar_text_converts_scalars() {
        assert_eq!(scalar_text(&Value::from("a")), Ok(Some("a".to_owned())));
        assert_eq!(scalar_text(&Value::from(42)), Ok(Some("42".to_owned())));
        assert_eq!(scalar_text(&Value::from(-1.5)), Ok(Some("-1.5".to_owned())));
        assert_eq!(scalar_text(&Value::from(true)), Ok(Some("true".to_owned())));
        assert_eq!(scalar_text(&Value::Null), Ok(None));
        assert_eq!(scalar_text(&serde_json::json!([1])), Err("an array"));
        assert_eq!(scalar_text(&serde_json::json!({})), Err("an object"));
    }

    #[test]
    fn quote_value_cuts_and_escapes() {
        assert_eq!(quote_value("0.3"), "`0.3`");
        assert_eq!(quote_value("a\nb"), "`a\\nb`");
        let long = "x".repeat(MAX_QUOTED_CHARS + 5);
        let quoted = quote_value(&long);
        assert!(quoted.ends_with("…`"), "{quoted}");
        assert_eq!(
            quoted.chars().filter(|c| *c == 'x').count(),
            MAX_QUOTED_CHARS
        );
    }

    #[test]
    fn unquote_removes_quotes_and_escapes() {
        assert_eq!(unquote_header_value(b"plain").unwrap().as_ref(), b"plain");
        assert_eq!(unquote_header_value(b"\"a b\"").unwrap().as_ref(), b"a b");
        assert_eq!(
            unquote_header_value(br#""say \"hi\"""#).unwrap().as_ref(),
            br#"say "hi""#
        );
        assert_eq!(
            unquote_header_value(br#"x"\\"y"#).unwrap().as_ref(),
            br"x\y"
        );
        assert_eq!(unquote_header_value(br"a\b").unwrap().as_ref(), br"a\b");
    }

    #[test]
    fn unquote_rejects_unclosed_quotes() {
        assert_eq!(
            unquote_header_value(b"\"open"),
            Err("a double quote is not closed")
        );
        assert_eq!(
            unquote_header_value(b"\"end\\"),
            Err("a backslash ends the value")
        );
    }

    #[test]
    fn header_values_are_percent_decoded_once() {
        assert_eq!(
            decode_header_value("ce-subject", b"person%2F123").unwrap(),
            "person/123"
        );
        assert_eq!(decode_header_value("ce-subject", b"%2525").unwrap(), "%25");
        assert_eq!(
            decode_header_value("ce-subject", b"caf%c3%a9").unwrap(),
            "café"
        );
        assert_eq!(
            decode_header_value("ce-subject", b"100%zz").unwrap(),
            "100%zz"
        );
        assert_eq!(decode_header_value("ce-subject", b"50%").unwrap(), "50%");
        assert_eq!(
            decode_header_value("ce-subject", b"\"a%20b\"").unwrap(),
            "a b"
        );
    }

    #[test]
    fn header_values_must_decode_to_utf8() {
        let error = decode_header_value("ce-subject", b"%C0%A0").unwrap_err();
        assert!(
            error.0.contains("header `ce-subject` is not valid UTF-8"),
            "{error}"
        );
    }

    #[test]
    fn opaque_data_keeps_text_or_base64() {
        assert_eq!(opaque_data(b"hello"), Value::from("hello"));
        assert_eq!(opaque_data(&[0xff, 0x00]), Value::from("/wA="));
    }

    #[test]
    fn base64_accepts_missing_padding() {
        assert_eq!(BASE64.decode("/wA").unwrap(), vec![0xff, 0x00]);
        assert_eq!(BASE64.decode("/wA=").unwrap(), vec![0xff, 0x00]);
    }

    #[test]
    fn invalid_pointer_syntax_is_rejected() {
        let error = resolve_pointer(&Value::Null, "id").unwrap_err();
        assert!(error.0.contains("json pointer `id` is invalid"), "{error}");
        assert_eq!(
            resolve_pointer(&Value::Null, "").unwrap(),
            Some(&Value::Null)
        );
    }
}
